//! The replicated state of a region: executors, pipelines, assignments and checkpoints.
//!
//! Raft commits [`Command`]s; every node applies them in log order with [`ClusterState::apply`],
//! a pure and deterministic function (no clock, no I/O), so every replica holds the same
//! state. Time-based decisions (lease expiry) are taken by the leader on its monotonic clock
//! and enter the log as commands.

use std::collections::BTreeMap;

use mirador_spec::{FailoverMode, FieldError};
use serde::{Deserialize, Serialize};

/// An executor node, as it registered.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Executor {
    pub id: String,
    /// `host:port` of its gRPC endpoint (for operators; coordinators never call it).
    pub address: String,
    pub region: String,
    /// Partitions it runs at most.
    pub slots: u32,
    pub gpu: bool,
    /// Grows at each registration: a heartbeat or a commit from an older incarnation of the
    /// same id is refused.
    pub incarnation: u64,
    /// Drained executors keep what they run until the planner has moved it away, and get
    /// nothing new.
    pub draining: bool,
}

/// A pipeline: its spec and how it is split.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pipeline {
    pub name: String,
    /// Grows at each update.
    pub version: u64,
    /// The pipeline spec, YAML, as validated by the admin API.
    pub spec: String,
    pub partitions: u32,
    /// Scored on a GPU: only GPU executors may run it.
    pub gpu: bool,
    pub paused: bool,
    /// Its spec's `failover:`: whether the other region takes it over by itself when this
    /// one falls silent, or runs it too (active-active).
    #[serde(default)]
    pub failover: FailoverMode,
    /// `None`: this region owns and runs it. `Some(region)`: the other region owns it
    /// (it was handed over or taken over) and this region stands by, running nothing.
    #[serde(default)]
    pub owned_by: Option<String>,
    /// The ownership epoch: grows at every change of region. A region runs a pipeline
    /// only while no ownership record names another region with a higher one.
    #[serde(default)]
    pub region_epoch: u64,
}

impl Pipeline {
    /// Owned and run by this region.
    pub fn is_local(&self) -> bool {
        self.owned_by.is_none()
    }
}

/// Who runs one partition of a pipeline.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Assignment {
    /// The executor that runs it, or `None` while it is unassigned.
    pub owner: Option<String>,
    /// The fencing token: grows at every change of owner. Only the owner, with the current
    /// epoch, may commit a checkpoint.
    pub epoch: u64,
    /// Set when the planner moves the partition: the owner stops at a checkpoint and
    /// releases it, then `target` becomes the owner with `epoch + 1`.
    pub target: Option<String>,
    /// Its bounded source was read to the end and everything committed: it holds no slot
    /// and is not assigned again, until the pipeline's spec is replaced.
    #[serde(default)]
    pub finished: bool,
}

/// A partition's safe resume position and the epoch that wrote it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub position: u64,
    pub epoch: u64,
}

/// (pipeline name, partition).
pub type PartitionKey = (String, u32);

/// One change the planner asks for.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Move {
    pub pipeline: String,
    pub partition: u32,
    /// The owner when the plan was made (`None`: unassigned).
    pub from: Option<String>,
    pub to: String,
}

/// Everything a region's coordinators agree on.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterState {
    pub executors: BTreeMap<String, Executor>,
    pub pipelines: BTreeMap<String, Pipeline>,
    #[serde(with = "pairs")]
    pub assignments: BTreeMap<PartitionKey, Assignment>,
    #[serde(with = "pairs")]
    pub checkpoints: BTreeMap<PartitionKey, Checkpoint>,
    /// The last epoch handed out. Epochs come from this one counter, so that no epoch is
    /// ever handed out twice, even to a pipeline deleted and created again.
    #[serde(default)]
    pub last_epoch: u64,
    /// The last incarnation handed out, for the same reason: an executor that expired and
    /// registers again never gets back an incarnation it had.
    #[serde(default)]
    pub last_incarnation: u64,
    /// The other region's newest whole snapshot in this region's store: what a takeover
    /// would restore. Not part of a snapshot.
    #[serde(default)]
    pub peer_snapshot: Option<PeerSnapshot>,
}

/// The other region's newest whole snapshot, as this region's leader found and checked it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerSnapshot {
    pub region: String,
    pub sequence: u64,
    /// When its state was read, ms since the Unix epoch (the writer's clock).
    pub taken_at_ms: u64,
    pub raft_index: u64,
    pub size: u64,
    /// Of the body, hex.
    pub sha256: String,
    pub pipelines: u32,
    pub partitions: u32,
}

/// A change to the state, committed through Raft.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Command {
    /// An executor (re)joins; a known id gets a new incarnation and keeps nothing it ran.
    RegisterExecutor {
        id: String,
        address: String,
        region: String,
        slots: u32,
        gpu: bool,
    },
    /// The leader saw no heartbeat within the lease: the executor is gone and every
    /// partition it owned is unassigned (epoch + 1), so that its commits are refused.
    ExpireExecutor {
        id: String,
        incarnation: u64,
    },
    SetDraining {
        id: String,
        draining: bool,
    },
    /// Creates a pipeline (version 1) or replaces its spec (version + 1).
    PutPipeline {
        name: String,
        spec: String,
        partitions: u32,
        gpu: bool,
        #[serde(default)]
        failover: FailoverMode,
    },
    SetPaused {
        name: String,
        paused: bool,
    },
    DeletePipeline {
        name: String,
    },
    /// The planner's output: each move assigns an unassigned partition, or asks its owner
    /// to hand it over. A move whose `from` no longer matches is skipped (the plan is
    /// stale).
    ApplyPlan {
        moves: Vec<Move>,
    },
    /// The owner stopped the partition at a checkpoint and lets it go: the target (or
    /// nobody) becomes the owner with epoch + 1. `finished`: it stopped at the end of its
    /// bounded source, and nobody takes it.
    Release {
        pipeline: String,
        partition: u32,
        executor: String,
        epoch: u64,
        #[serde(default)]
        finished: bool,
    },
    /// A partition's position moves forward; refused from anyone but the owner with the
    /// current epoch, and never backwards.
    CommitCheckpoint {
        pipeline: String,
        partition: u32,
        executor: String,
        epoch: u64,
        position: u64,
    },
    /// A snapshot's pipelines and checkpoints come into a region that holds no pipeline.
    /// Its partitions are unassigned, each with a new epoch above every epoch of the
    /// snapshot's region and of this one, and are planned onto this region's executors;
    /// the snapshot's executors (of another region, or gone) are not taken.
    Restore {
        state: Box<ClusterState>,
    },
    /// The leader found a newer whole snapshot of the other region in this region's store.
    RecordPeerSnapshot {
        snapshot: PeerSnapshot,
    },
    /// A planned failover, on the old region: each pipeline's ownership goes to region `to`
    /// with region epoch + 1, and its partitions stop at a checkpoint and are released
    /// (as for a pause); nothing of them is assigned here again.
    HandOver {
        pipelines: Vec<String>,
        to: String,
    },
    /// Ownership comes to this region: each pipeline (with its region epoch set), as
    /// another region's snapshot holds it, with that snapshot's checkpoints. Its
    /// partitions start unassigned, each with an epoch above every one of the snapshot
    /// and of this region. Refused whole when this region knows one of them at an equal
    /// or higher region epoch.
    Adopt {
        pipelines: Vec<Pipeline>,
        #[serde(with = "pairs")]
        checkpoints: BTreeMap<PartitionKey, Checkpoint>,
        /// The snapshot's finished partitions.
        finished: Vec<PartitionKey>,
        /// The snapshot's epoch counter.
        last_epoch: u64,
    },
    /// An ownership record names region `region` with a higher region epoch than this
    /// region's: the pipeline stops here at once (every partition unassigned, its
    /// epoch raised, so that no commit of it is taken) and stands by.
    Disown {
        pipeline: String,
        region: String,
        region_epoch: u64,
    },
}

/// What applying a command produced.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    Done,
    Registered {
        incarnation: u64,
    },
    PipelineVersion {
        version: u64,
    },
    /// The region epoch each handed-over pipeline got.
    HandedOver {
        epochs: Vec<(String, u64)>,
    },
    /// Moves of a plan that were applied.
    Applied {
        moves: usize,
    },
    Refused(Refusal),
}

/// Why a command changed nothing. Each is a client's error, not a coordinator's.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum Refusal {
    #[error("unknown executor {0:?}")]
    UnknownExecutor(String),
    #[error("unknown pipeline {0:?}")]
    UnknownPipeline(String),
    #[error("pipeline {pipeline:?} has no partition {partition}")]
    UnknownPartition { pipeline: String, partition: u32 },
    #[error("stale epoch {given} for {pipeline}/{partition}: the current epoch is {current}")]
    StaleEpoch {
        pipeline: String,
        partition: u32,
        given: u64,
        current: u64,
    },
    #[error("{executor:?} does not own {pipeline}/{partition}")]
    NotOwner {
        pipeline: String,
        partition: u32,
        executor: String,
    },
    #[error("checkpoint of {pipeline}/{partition} would move back from {current} to {given}")]
    Backwards {
        pipeline: String,
        partition: u32,
        given: u64,
        current: u64,
    },
    #[error(
        "pipeline {pipeline:?} is owned by region {region:?}: manage it there, or fail it over"
    )]
    OwnedElsewhere { pipeline: String, region: String },
    #[error(transparent)]
    Invalid(FieldError),
}

impl ClusterState {
    pub fn apply(&mut self, command: &Command) -> Outcome {
        match self.try_apply(command) {
            Ok(outcome) => outcome,
            Err(refusal) => Outcome::Refused(refusal),
        }
    }

    fn try_apply(&mut self, command: &Command) -> Result<Outcome, Refusal> {
        match command {
            Command::RegisterExecutor {
                id,
                address,
                region,
                slots,
                gpu,
            } => Ok(self.register_executor(Executor {
                id: id.clone(),
                address: address.clone(),
                region: region.clone(),
                slots: *slots,
                gpu: *gpu,
                incarnation: 0,
                draining: false,
            })),
            Command::ExpireExecutor { id, incarnation } => self.expire_executor(id, *incarnation),
            Command::SetDraining { id, draining } => {
                let executor = self
                    .executors
                    .get_mut(id)
                    .ok_or_else(|| Refusal::UnknownExecutor(id.clone()))?;
                executor.draining = *draining;
                Ok(Outcome::Done)
            }
            Command::PutPipeline {
                name,
                spec,
                partitions,
                gpu,
                failover,
            } => self.put_pipeline(name, spec, *partitions, *gpu, *failover),
            Command::SetPaused { name, paused } => self.set_paused(name, *paused),
            Command::DeletePipeline { name } => {
                self.pipelines
                    .remove(name)
                    .ok_or_else(|| Refusal::UnknownPipeline(name.clone()))?;
                self.assignments.retain(|(p, _), _| p != name);
                self.checkpoints.retain(|(p, _), _| p != name);
                Ok(Outcome::Done)
            }
            Command::ApplyPlan { moves } => Ok(self.apply_plan(moves)),
            Command::Release {
                pipeline,
                partition,
                executor,
                epoch,
                finished,
            } => self.release(pipeline, *partition, executor, *epoch, *finished),
            Command::CommitCheckpoint {
                pipeline,
                partition,
                executor,
                epoch,
                position,
            } => {
                self.owned(pipeline, *partition, executor, *epoch)?;
                self.commit_checkpoint(pipeline, *partition, *epoch, *position)
            }
            Command::Restore { state } => self.restore(state),
            Command::HandOver { pipelines, to } => self.hand_over(pipelines, to),
            Command::Adopt {
                pipelines,
                checkpoints,
                finished,
                last_epoch,
            } => self.adopt(pipelines, checkpoints, finished, *last_epoch),
            Command::Disown {
                pipeline,
                region,
                region_epoch,
            } => Ok(self.disown(pipeline, region, *region_epoch)),
            Command::RecordPeerSnapshot { snapshot } => {
                let newer = self.peer_snapshot.as_ref().is_none_or(|known| {
                    known.region != snapshot.region || known.sequence < snapshot.sequence
                });
                if newer {
                    self.peer_snapshot = Some(snapshot.clone());
                }
                Ok(Outcome::Done)
            }
        }
    }

    /// The pipeline, if this region owns it.
    fn local(&self, name: &str) -> Result<&Pipeline, Refusal> {
        let pipeline = self
            .pipelines
            .get(name)
            .ok_or_else(|| Refusal::UnknownPipeline(name.to_string()))?;
        match &pipeline.owned_by {
            None => Ok(pipeline),
            Some(region) => Err(Refusal::OwnedElsewhere {
                pipeline: name.to_string(),
                region: region.clone(),
            }),
        }
    }

    fn hand_over(&mut self, pipelines: &[String], to: &str) -> Result<Outcome, Refusal> {
        for name in pipelines {
            self.local(name)?;
        }
        let mut epochs = Vec::new();
        for name in pipelines {
            let pipeline = self.pipelines.get_mut(name).expect("checked above");
            pipeline.region_epoch += 1;
            pipeline.owned_by = Some(to.to_string());
            epochs.push((name.clone(), pipeline.region_epoch));
            // As for a pause: each owner stops at a checkpoint and releases to nobody.
            for ((p, _), a) in self.assignments.iter_mut() {
                if p == name && a.owner.is_some() {
                    a.target = None;
                }
            }
        }
        Ok(Outcome::HandedOver { epochs })
    }

    fn adopt(
        &mut self,
        pipelines: &[Pipeline],
        checkpoints: &BTreeMap<PartitionKey, Checkpoint>,
        finished: &[PartitionKey],
        last_epoch: u64,
    ) -> Result<Outcome, Refusal> {
        for p in pipelines {
            if let Some(known) = self.pipelines.get(&p.name) {
                if known.region_epoch >= p.region_epoch {
                    return Err(Refusal::Invalid(FieldError::new(
                        "region_epoch",
                        format!(
                            "{}: this region knows region epoch {} already, not below {}",
                            p.name, known.region_epoch, p.region_epoch
                        ),
                    )));
                }
            }
        }
        self.last_epoch = self.last_epoch.max(last_epoch);
        for p in pipelines {
            let name = &p.name;
            self.assignments.retain(|(q, _), _| q != name);
            self.checkpoints.retain(|(q, _), _| q != name);
            for partition in 0..p.partitions {
                let key = (name.clone(), partition);
                if let Some(checkpoint) = checkpoints.get(&key) {
                    self.checkpoints.insert(key.clone(), *checkpoint);
                }
                self.last_epoch += 1;
                let assignment = Assignment {
                    owner: None,
                    epoch: self.last_epoch,
                    target: None,
                    finished: finished.contains(&key),
                };
                self.assignments.insert(key, assignment);
            }
            self.pipelines.insert(
                name.clone(),
                Pipeline {
                    owned_by: None,
                    ..p.clone()
                },
            );
        }
        Ok(Outcome::Done)
    }

    fn disown(&mut self, name: &str, region: &str, region_epoch: u64) -> Outcome {
        let Some(pipeline) = self.pipelines.get_mut(name) else {
            return Outcome::Done;
        };
        if pipeline.region_epoch >= region_epoch {
            return Outcome::Done;
        }
        pipeline.region_epoch = region_epoch;
        pipeline.owned_by = Some(region.to_string());
        for ((p, _), a) in self.assignments.iter_mut() {
            if p == name {
                self.last_epoch += 1;
                a.epoch = self.last_epoch;
                a.owner = None;
                a.target = None;
            }
        }
        Outcome::Done
    }

    fn restore(&mut self, snapshot: &ClusterState) -> Result<Outcome, Refusal> {
        if !self.pipelines.is_empty() {
            return Err(Refusal::Invalid(FieldError::new(
                "snapshot",
                format!(
                    "this region runs {} pipelines already: a snapshot is restored into a \
                     region that holds none (delete them first)",
                    self.pipelines.len()
                ),
            )));
        }
        // Every pipeline of the snapshot is this region's now (one it stood by for too).
        self.pipelines = snapshot
            .pipelines
            .values()
            .map(|p| {
                let restored = Pipeline {
                    owned_by: None,
                    ..p.clone()
                };
                (p.name.clone(), restored)
            })
            .collect();
        self.checkpoints = snapshot.checkpoints.clone();
        self.last_epoch = self.last_epoch.max(snapshot.last_epoch);
        self.assignments = snapshot
            .assignments
            .iter()
            .map(|(key, a)| {
                self.last_epoch += 1;
                let assignment = Assignment {
                    owner: None,
                    epoch: self.last_epoch,
                    target: None,
                    finished: a.finished,
                };
                (key.clone(), assignment)
            })
            .collect();
        Ok(Outcome::Done)
    }

    /// A new incarnation of `executor` (its `incarnation` is given here). It starts empty:
    /// whatever an older incarnation ran is unassigned.
    fn register_executor(&mut self, mut executor: Executor) -> Outcome {
        self.last_incarnation += 1;
        let incarnation = self.last_incarnation;
        executor.incarnation = incarnation;
        self.unassign_all_of(&executor.id);
        self.executors.insert(executor.id.clone(), executor);
        Outcome::Registered { incarnation }
    }

    fn expire_executor(&mut self, id: &str, incarnation: u64) -> Result<Outcome, Refusal> {
        match self.executors.get(id) {
            Some(e) if e.incarnation == incarnation => {}
            // An older incarnation's lease: the executor registered again since.
            Some(_) => return Ok(Outcome::Done),
            None => return Err(Refusal::UnknownExecutor(id.to_string())),
        }
        self.executors.remove(id);
        self.unassign_all_of(id);
        Ok(Outcome::Done)
    }

    fn put_pipeline(
        &mut self,
        name: &str,
        spec: &str,
        partitions: u32,
        gpu: bool,
        failover: FailoverMode,
    ) -> Result<Outcome, Refusal> {
        if partitions == 0 {
            return Err(Refusal::Invalid(FieldError::new(
                "partitions",
                "must be at least 1",
            )));
        }
        let (version, paused, region_epoch) = match self.pipelines.get(name) {
            Some(_) => {
                let p = self.local(name)?;
                (p.version + 1, p.paused, p.region_epoch)
            }
            None => (1, false, 1),
        };
        // Fewer partitions than before: the extra ones are dropped with their checkpoints;
        // new ones start unassigned. A new spec may read further: finished partitions run
        // again from their checkpoints.
        for ((p, _), a) in self.assignments.iter_mut() {
            if p == name {
                a.finished = false;
            }
        }
        self.assignments
            .retain(|(p, i), _| p != name || *i < partitions);
        self.checkpoints
            .retain(|(p, i), _| p != name || *i < partitions);
        for partition in 0..partitions {
            let key = (name.to_string(), partition);
            if !self.assignments.contains_key(&key) {
                self.last_epoch += 1;
                let epoch = self.last_epoch;
                self.assignments.insert(
                    key,
                    Assignment {
                        owner: None,
                        epoch,
                        target: None,
                        finished: false,
                    },
                );
            }
        }
        self.pipelines.insert(
            name.to_string(),
            Pipeline {
                name: name.to_string(),
                version,
                spec: spec.to_string(),
                partitions,
                gpu,
                paused,
                failover,
                owned_by: None,
                region_epoch,
            },
        );
        Ok(Outcome::PipelineVersion { version })
    }

    fn set_paused(&mut self, name: &str, paused: bool) -> Result<Outcome, Refusal> {
        self.local(name)?;
        let pipeline = self
            .pipelines
            .get_mut(name)
            .ok_or_else(|| Refusal::UnknownPipeline(name.to_string()))?;
        pipeline.paused = paused;
        if paused {
            // Paused partitions are handed back like a move to nobody: the owners stop at a
            // checkpoint and release.
            for ((p, _), a) in self.assignments.iter_mut() {
                if p == name && a.owner.is_some() {
                    a.target = None;
                }
            }
        }
        Ok(Outcome::Done)
    }

    /// Applies the moves that still hold: an unassigned partition gets its owner (and a
    /// new epoch) at once, an owned one a target its owner hands it to.
    fn apply_plan(&mut self, moves: &[Move]) -> Outcome {
        let mut applied = 0;
        for m in moves {
            let runnable = self
                .pipelines
                .get(&m.pipeline)
                .is_some_and(|p| !p.paused && p.is_local())
                && self.executors.get(&m.to).is_some_and(|e| !e.draining);
            let Some(a) = self.assignments.get_mut(&(m.pipeline.clone(), m.partition)) else {
                continue;
            };
            if !runnable || a.finished || a.owner != m.from || a.owner.as_ref() == Some(&m.to) {
                continue;
            }
            match &a.owner {
                None => {
                    a.owner = Some(m.to.clone());
                    self.last_epoch += 1;
                    a.epoch = self.last_epoch;
                    a.target = None;
                }
                Some(_) => a.target = Some(m.to.clone()),
            }
            applied += 1;
        }
        Outcome::Applied { moves: applied }
    }

    /// The owner hands a partition back: to its target if it has one, with a new epoch.
    fn release(
        &mut self,
        pipeline: &str,
        partition: u32,
        executor: &str,
        epoch: u64,
        finished: bool,
    ) -> Result<Outcome, Refusal> {
        self.owned(pipeline, partition, executor, epoch)?;
        self.last_epoch += 1;
        let a = self
            .assignments
            .get_mut(&(pipeline.to_string(), partition))
            .expect("owned() found it");
        a.epoch = self.last_epoch;
        a.owner = a.target.take();
        if finished {
            a.owner = None;
            a.finished = true;
        }
        Ok(Outcome::Done)
    }

    /// A partition's checkpoint moves forward, never back (its owner was checked).
    fn commit_checkpoint(
        &mut self,
        pipeline: &str,
        partition: u32,
        epoch: u64,
        position: u64,
    ) -> Result<Outcome, Refusal> {
        let checkpoint = self
            .checkpoints
            .entry((pipeline.to_string(), partition))
            .or_default();
        if position < checkpoint.position {
            return Err(Refusal::Backwards {
                pipeline: pipeline.to_string(),
                partition,
                given: position,
                current: checkpoint.position,
            });
        }
        *checkpoint = Checkpoint { position, epoch };
        Ok(Outcome::Done)
    }

    /// The assignment of a partition, if `executor` owns it with `epoch`.
    fn owned(
        &mut self,
        pipeline: &str,
        partition: u32,
        executor: &str,
        epoch: u64,
    ) -> Result<&mut Assignment, Refusal> {
        let a = self
            .assignments
            .get_mut(&(pipeline.to_string(), partition))
            .ok_or_else(|| {
                if self.pipelines.contains_key(pipeline) {
                    Refusal::UnknownPartition {
                        pipeline: pipeline.to_string(),
                        partition,
                    }
                } else {
                    Refusal::UnknownPipeline(pipeline.to_string())
                }
            })?;
        if a.epoch != epoch {
            return Err(Refusal::StaleEpoch {
                pipeline: pipeline.to_string(),
                partition,
                given: epoch,
                current: a.epoch,
            });
        }
        if a.owner.as_deref() != Some(executor) {
            return Err(Refusal::NotOwner {
                pipeline: pipeline.to_string(),
                partition,
                executor: executor.to_string(),
            });
        }
        Ok(a)
    }

    fn unassign_all_of(&mut self, id: &str) {
        for a in self.assignments.values_mut() {
            if a.owner.as_deref() == Some(id) {
                a.owner = None;
                self.last_epoch += 1;
                a.epoch = self.last_epoch;
                a.target = None;
            }
            if a.target.as_deref() == Some(id) {
                a.target = None;
            }
        }
    }

    /// The partitions an executor owns, with their assignment and checkpoint.
    pub fn owned_by<'a>(
        &'a self,
        executor: &'a str,
    ) -> impl Iterator<Item = (&'a PartitionKey, &'a Assignment)> + 'a {
        self.assignments
            .iter()
            .filter(move |(_, a)| a.owner.as_deref() == Some(executor))
    }
}

/// JSON maps need string keys: maps keyed by (pipeline, partition) travel as lists of pairs.
mod pairs {
    use std::collections::BTreeMap;

    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<K: Serialize, V: Serialize, S: Serializer>(
        map: &BTreeMap<K, V>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(map.iter())
    }

    pub fn deserialize<'de, K, V, D>(deserializer: D) -> Result<BTreeMap<K, V>, D::Error>
    where
        K: Deserialize<'de> + Ord,
        V: Deserialize<'de>,
        D: Deserializer<'de>,
    {
        Ok(Vec::<(K, V)>::deserialize(deserializer)?
            .into_iter()
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    fn register(state: &mut ClusterState, id: &str) -> u64 {
        match state.apply(&Command::RegisterExecutor {
            id: id.into(),
            address: String::new(),
            region: "r".into(),
            slots: 4,
            gpu: false,
        }) {
            Outcome::Registered { incarnation } => incarnation,
            other => panic!("{other:?}"),
        }
    }

    fn assign(state: &mut ClusterState, to: &str) {
        let from = state.assignments[&("p".to_string(), 0)].owner.clone();
        state.apply(&Command::ApplyPlan {
            moves: vec![Move {
                pipeline: "p".into(),
                partition: 0,
                from,
                to: to.into(),
            }],
        });
    }

    fn commit(state: &mut ClusterState, executor: &str, epoch: u64, position: u64) -> Outcome {
        state.apply(&Command::CommitCheckpoint {
            pipeline: "p".into(),
            partition: 0,
            executor: executor.into(),
            epoch,
            position,
        })
    }

    fn one_partition() -> ClusterState {
        let mut state = ClusterState::default();
        register(&mut state, "a");
        register(&mut state, "b");
        state.apply(&Command::PutPipeline {
            name: "p".into(),
            spec: String::new(),
            partitions: 1,
            gpu: false,
            failover: mirador_spec::FailoverMode::Manual,
        });
        state
    }

    #[test]
    fn only_the_owner_with_the_current_epoch_moves_a_checkpoint_and_never_back() {
        let mut state = one_partition();
        assign(&mut state, "a");
        let epoch = state.assignments[&("p".to_string(), 0)].epoch;
        assert_eq!(commit(&mut state, "a", epoch, 10), Outcome::Done);
        assert!(matches!(
            commit(&mut state, "a", epoch, 5),
            Outcome::Refused(Refusal::Backwards { .. })
        ));
        assert!(matches!(
            commit(&mut state, "b", epoch, 20),
            Outcome::Refused(Refusal::NotOwner { .. })
        ));
        // A handover: a releases, b owns it with a higher epoch, a's commits are stale.
        assign(&mut state, "b");
        state.apply(&Command::Release {
            pipeline: "p".into(),
            partition: 0,
            executor: "a".into(),
            epoch,
            finished: false,
        });
        let next = state.assignments[&("p".to_string(), 0)].clone();
        assert_eq!(next.owner.as_deref(), Some("b"));
        assert!(next.epoch > epoch);
        assert!(matches!(
            commit(&mut state, "a", epoch, 30),
            Outcome::Refused(Refusal::StaleEpoch { .. })
        ));
        assert_eq!(commit(&mut state, "b", next.epoch, 30), Outcome::Done);
        assert_eq!(state.checkpoints[&("p".to_string(), 0)].position, 30);
    }

    #[test]
    fn a_hand_over_stops_the_pipeline_here_and_its_adoption_resumes_at_the_checkpoints() {
        let key = ("p".to_string(), 0);
        let mut old = one_partition();
        assign(&mut old, "a");
        let epoch = old.assignments[&key].epoch;
        assert_eq!(commit(&mut old, "a", epoch, 10), Outcome::Done);
        let handed = old.apply(&Command::HandOver {
            pipelines: vec!["p".into()],
            to: "west".into(),
        });
        assert_eq!(
            handed,
            Outcome::HandedOver {
                epochs: vec![("p".into(), 2)]
            }
        );
        // The owner stops at a checkpoint and releases; nothing is assigned here again.
        assert_eq!(old.assignments[&key].target, None);
        assert_eq!(commit(&mut old, "a", epoch, 12), Outcome::Done);
        old.apply(&Command::Release {
            pipeline: "p".into(),
            partition: 0,
            executor: "a".into(),
            epoch,
            finished: false,
        });
        assert_eq!(old.assignments[&key].owner, None);
        let live = BTreeSet::from(["a".to_string(), "b".to_string()]);
        assert!(crate::planner::plan(&old, &live, 4).is_empty());
        assert!(matches!(
            old.apply(&Command::SetPaused {
                name: "p".into(),
                paused: true
            }),
            Outcome::Refused(Refusal::OwnedElsewhere { .. })
        ));

        // The other region adopts it from the old region's state.
        let mut new = ClusterState::default();
        register(&mut new, "w1");
        let adopt = Command::Adopt {
            pipelines: vec![old.pipelines["p"].clone()],
            checkpoints: old.checkpoints.clone(),
            finished: Vec::new(),
            last_epoch: old.last_epoch,
        };
        assert_eq!(new.apply(&adopt), Outcome::Done);
        let adopted = &new.pipelines["p"];
        assert!(adopted.is_local());
        assert_eq!(adopted.region_epoch, 2);
        assert_eq!(new.checkpoints[&key].position, 12);
        assert!(new.assignments[&key].epoch > old.last_epoch);
        let live = BTreeSet::from(["w1".to_string()]);
        assert_eq!(crate::planner::plan(&new, &live, 4).len(), 1);
        // The same adoption again (or an older one) is refused whole.
        assert!(matches!(
            new.apply(&adopt),
            Outcome::Refused(Refusal::Invalid(FieldError { ref field, .. })) if field == "region_epoch"
        ));
    }

    #[test]
    fn a_disowned_pipeline_stops_at_once_and_its_old_owner_can_commit_nothing() {
        let key = ("p".to_string(), 0);
        let mut state = one_partition();
        assign(&mut state, "a");
        let epoch = state.assignments[&key].epoch;
        let disown = |region_epoch| Command::Disown {
            pipeline: "p".into(),
            region: "west".into(),
            region_epoch,
        };
        // A record at this region's own epoch changes nothing.
        state.apply(&disown(1));
        assert!(state.pipelines["p"].is_local());
        state.apply(&disown(3));
        let p = &state.pipelines["p"];
        assert_eq!((p.owned_by.as_deref(), p.region_epoch), (Some("west"), 3));
        assert_eq!(state.assignments[&key].owner, None);
        assert!(matches!(
            commit(&mut state, "a", epoch, 10),
            Outcome::Refused(_)
        ));
        let live = BTreeSet::from(["a".to_string()]);
        assert!(crate::planner::plan(&state, &live, 4).is_empty());
    }

    #[test]
    fn a_finished_partition_frees_its_slot_until_the_spec_is_replaced() {
        let mut state = one_partition();
        assign(&mut state, "a");
        let epoch = state.assignments[&("p".to_string(), 0)].epoch;
        assert_eq!(
            state.apply(&Command::Release {
                pipeline: "p".into(),
                partition: 0,
                executor: "a".into(),
                epoch,
                finished: true,
            }),
            Outcome::Done
        );
        let a = state.assignments[&("p".to_string(), 0)].clone();
        assert!(a.finished && a.owner.is_none(), "{a:?}");
        let live = BTreeSet::from(["a".to_string()]);
        assert!(
            crate::planner::plan(&state, &live, 4).is_empty(),
            "a finished partition is not assigned again"
        );
        let spec = state.pipelines["p"].spec.clone();
        state.apply(&Command::PutPipeline {
            name: "p".into(),
            spec,
            partitions: 1,
            gpu: false,
            failover: mirador_spec::FailoverMode::Manual,
        });
        assert!(!state.assignments[&("p".to_string(), 0)].finished);
        assert_eq!(
            crate::planner::plan(&state, &live, 4).len(),
            1,
            "a new spec runs again"
        );
    }

    #[test]
    fn an_expired_executor_loses_its_partitions_and_epochs_are_never_reused() {
        let mut state = one_partition();
        assign(&mut state, "a");
        let first = state.assignments[&("p".to_string(), 0)].epoch;
        let incarnation = state.executors["a"].incarnation;
        state.apply(&Command::ExpireExecutor {
            id: "a".into(),
            incarnation,
        });
        let a = &state.assignments[&("p".to_string(), 0)];
        assert_eq!(a.owner, None);
        assert!(a.epoch > first);
        // Deleted and created again: its partition never gets an epoch seen before.
        state.apply(&Command::DeletePipeline { name: "p".into() });
        state.apply(&Command::PutPipeline {
            name: "p".into(),
            spec: String::new(),
            partitions: 1,
            gpu: false,
            failover: mirador_spec::FailoverMode::Manual,
        });
        assign(&mut state, "b");
        assert!(state.assignments[&("p".to_string(), 0)].epoch > first + 1);
    }

    #[test]
    fn a_snapshot_is_restored_only_into_an_empty_region_and_its_partitions_start_unowned() {
        let mut snapshot = one_partition();
        assign(&mut snapshot, "a");
        let epoch = snapshot.assignments[&("p".to_string(), 0)].epoch;
        assert_eq!(commit(&mut snapshot, "a", epoch, 700), Outcome::Done);

        let mut region = ClusterState::default();
        register(&mut region, "z");
        let restore = Command::Restore {
            state: Box::new(snapshot.clone()),
        };
        assert_eq!(region.apply(&restore), Outcome::Done);
        assert_eq!(region.pipelines, snapshot.pipelines);
        assert_eq!(region.checkpoints[&("p".to_string(), 0)].position, 700);
        let a = &region.assignments[&("p".to_string(), 0)];
        assert_eq!(
            a.owner, None,
            "the snapshot's executors are not this region's"
        );
        assert!(
            a.epoch > snapshot.last_epoch,
            "an old owner's commit is stale here"
        );
        assert_eq!(
            region.executors.keys().collect::<Vec<_>>(),
            ["z"],
            "this region keeps its own executors"
        );
        assert!(matches!(
            commit(&mut region, "a", epoch, 800),
            Outcome::Refused(_)
        ));

        // A region with a pipeline refuses, and nothing changes.
        let before = region.clone();
        match region.apply(&restore) {
            Outcome::Refused(Refusal::Invalid(e)) => assert_eq!(e.field, "snapshot"),
            other => panic!("{other:?}"),
        }
        assert_eq!(region, before);
    }
}
