//! The partition pipeline: the supervisor of one partition's stages.
//!
//! A stage that fails is restarted alone, with backoff, and retries the batch it failed
//! on. Past the restart budget the whole generation (every stage and link) is torn down
//! and rebuilt from the last checkpoint; past the generation budget the pipeline stops
//! as failed, for its owner to report.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use mirador_proto::retry::Backoff;
use ractor::{Actor, ActorCell, ActorId, ActorProcessingErr, ActorRef, SpawnErr, SupervisionEvent};
use serde::Serialize;
use tokio::task::JoinHandle;

use crate::checkpoint::{CheckpointStore, CheckpointTracker};
use crate::record::Position;
use crate::runner::StageSlot;
use crate::stage::{ExitStatus, StageError};
use crate::stats::{StageSnapshot, StageStats};
use mirador_proto::sync::Locked;

/// Where a generation's source is in [`Generation::slots`]: it comes first, and stopping a
/// pipeline starts there.
const SOURCE: usize = 0;

/// The stages of one generation, the source first.
pub struct Generation {
    pub slots: Vec<Box<dyn StageSlot>>,
}

/// Builds the stages and links of a generation. Called at start and at every generation
/// restart, with a tracker that resumes from the last committed position.
pub trait GenerationFactory: Send + Sync + 'static {
    fn build(
        &self,
        tracker: Arc<CheckpointTracker>,
    ) -> BoxFuture<'_, Result<Generation, StageError>>;
}

/// Budgets and pacing of restarts and checkpoints.
#[derive(Clone, Debug)]
pub struct RestartPolicy {
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    /// Stage restarts allowed within `window` before the generation restarts.
    pub stage_restarts: u32,
    /// Generation restarts allowed within `window` before the pipeline fails.
    pub generation_restarts: u32,
    pub window: Duration,
    /// Attempts at one batch before its records go to the dead letter.
    pub max_batch_attempts: u32,
    pub checkpoint_interval: Duration,
}

impl Default for RestartPolicy {
    fn default() -> Self {
        RestartPolicy {
            backoff_initial: Duration::from_millis(50),
            backoff_max: Duration::from_secs(5),
            stage_restarts: 5,
            generation_restarts: 3,
            window: Duration::from_secs(60),
            max_batch_attempts: 3,
            checkpoint_interval: Duration::from_secs(1),
        }
    }
}

pub struct PipelineArgs {
    pub name: String,
    pub partition: u32,
    pub factory: Arc<dyn GenerationFactory>,
    pub store: Arc<dyn CheckpointStore>,
    pub policy: RestartPolicy,
}

/// What a partition pipeline shows: its stages, checkpoint and health.
#[derive(Clone, Debug, Serialize)]
pub struct PipelineSnapshot {
    pub name: String,
    pub partition: u32,
    pub generation: u64,
    pub generation_restarts: u64,
    pub committed: Option<Position>,
    pub in_flight: usize,
    /// The system lag: how long the oldest batch in flight has waited.
    pub oldest_pending_ms: u64,
    /// The newest event time among the committed records (ms since the Unix epoch);
    /// the data freshness is the time since.
    pub newest_event_ms: Option<i64>,
    pub stages: Vec<StageSnapshot>,
    #[serde(skip)]
    pub exit: ExitStatus,
}

pub(crate) struct Observable {
    stages: Vec<(&'static str, Arc<StageStats>)>,
    tracker: Arc<CheckpointTracker>,
    generation: u64,
    generation_restarts: u64,
    exit: ExitStatus,
}

#[derive(Debug)]
pub enum PipelineMsg {
    Tick,
    RestartStage {
        generation: u64,
        index: usize,
    },
    RestartGeneration {
        generation: u64,
    },
    /// Stop reading and drain what is in flight.
    Stop,
}

/// A running partition pipeline.
pub struct PipelineHandle {
    name: String,
    partition: u32,
    actor: ActorRef<PipelineMsg>,
    join: JoinHandle<()>,
    observable: Arc<Mutex<Observable>>,
}

/// Why a partition pipeline did not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot read its checkpoint: {0}")]
    Checkpoint(std::io::Error),
    /// Its first generation could not be built (a source that cannot open, ...).
    #[error("{0}")]
    Build(String),
}

impl From<SpawnErr> for StartError {
    fn from(error: SpawnErr) -> Self {
        match error {
            // The error returned by `pre_start`, without ractor's words around it.
            SpawnErr::StartupFailed(inner) => StartError::Build(inner.to_string()),
            other => StartError::Build(other.to_string()),
        }
    }
}

impl PipelineHandle {
    pub async fn spawn(args: PipelineArgs) -> Result<Self, StartError> {
        let (name, partition) = (args.name.clone(), args.partition);
        let committed = args
            .store
            .load(args.partition)
            .map_err(StartError::Checkpoint)?;
        let observable = Arc::new(Mutex::new(Observable {
            stages: Vec::new(),
            tracker: Arc::new(CheckpointTracker::new(None)),
            generation: 0,
            generation_restarts: 0,
            exit: ExitStatus::Running,
        }));
        let (actor, join) = Actor::spawn(
            None,
            PartitionPipeline,
            (args, committed, observable.clone()),
        )
        .await?;
        Ok(PipelineHandle {
            name,
            partition,
            actor,
            join,
            observable,
        })
    }

    pub fn snapshot(&self) -> PipelineSnapshot {
        let observable = self.observable.locked();
        PipelineSnapshot {
            name: self.name.clone(),
            partition: self.partition,
            generation: observable.generation,
            generation_restarts: observable.generation_restarts,
            committed: observable.tracker.committed(),
            in_flight: observable.tracker.in_flight(),
            oldest_pending_ms: observable.tracker.oldest_pending_age().as_millis() as u64,
            newest_event_ms: observable.tracker.newest_committed_event_ms(),
            stages: observable
                .stages
                .iter()
                .map(|(name, stats)| stats.snapshot(name))
                .collect(),
            exit: observable.exit.clone(),
        }
    }

    /// Stops reading; the records in flight are delivered, then the pipeline ends.
    pub fn stop(&self) {
        let _ = self.actor.send_message(PipelineMsg::Stop);
    }

    pub fn is_finished(&self) -> bool {
        self.join.is_finished()
    }

    /// Waits for the pipeline to end and returns how it ended.
    pub async fn wait(self) -> ExitStatus {
        let _ = self.join.await;
        let exit = self.observable.locked().exit.clone();
        match exit {
            ExitStatus::Running => ExitStatus::Failed("supervisor stopped unexpectedly".into()),
            other => other,
        }
    }
}

/// The supervisor actor of one partition.
pub(crate) struct PartitionPipeline;

pub(crate) struct PipelineState {
    args: PipelineArgs,
    observable: Arc<Mutex<Observable>>,
    tracker: Arc<CheckpointTracker>,
    generation: u64,
    slots: Vec<Box<dyn StageSlot>>,
    cells: HashMap<ActorId, (usize, ActorCell)>,
    finished: Vec<bool>,
    stage_failures: VecDeque<Instant>,
    generation_failures: VecDeque<Instant>,
    saved: Option<Position>,
    stopping: bool,
}

impl Actor for PartitionPipeline {
    type Msg = PipelineMsg;
    type State = PipelineState;
    type Arguments = (PipelineArgs, Option<Position>, Arc<Mutex<Observable>>);

    async fn pre_start(
        &self,
        myself: ActorRef<PipelineMsg>,
        (args, committed, observable): Self::Arguments,
    ) -> Result<PipelineState, ActorProcessingErr> {
        let mut state = PipelineState {
            tracker: Arc::new(CheckpointTracker::new(committed)),
            saved: committed,
            args,
            observable,
            generation: 0,
            slots: Vec::new(),
            cells: HashMap::new(),
            finished: Vec::new(),
            stage_failures: VecDeque::new(),
            generation_failures: VecDeque::new(),
            stopping: false,
        };
        state.start_generation(&myself).await?;
        myself.send_interval(state.args.policy.checkpoint_interval, || PipelineMsg::Tick);
        Ok(state)
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<PipelineMsg>,
        state: &mut PipelineState,
    ) -> Result<(), ActorProcessingErr> {
        state.kill_generation().await;
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<PipelineMsg>,
        message: PipelineMsg,
        state: &mut PipelineState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            PipelineMsg::Tick => {
                let _ = state.save_checkpoint();
            }
            PipelineMsg::RestartStage { generation, index } if generation == state.generation => {
                let slot = &state.slots[index];
                slot.stats()
                    .restarts
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                match slot.spawn(myself.get_cell()).await {
                    Ok(cell) => {
                        state.cells.insert(cell.get_id(), (index, cell));
                    }
                    Err(error) => {
                        let error = error.to_string();
                        state.on_failure(&myself, index, &error);
                    }
                }
            }
            PipelineMsg::RestartGeneration { generation } if generation == state.generation => {
                state.kill_generation().await;
                let _ = state.save_checkpoint();
                state.tracker = Arc::new(CheckpointTracker::new(state.saved));
                state.observable.locked().generation_restarts += 1;
                if let Err(error) = state.start_generation(&myself).await {
                    state.fail(&myself, format!("cannot rebuild the pipeline: {error}"));
                }
            }
            PipelineMsg::RestartStage { .. } | PipelineMsg::RestartGeneration { .. } => {}
            PipelineMsg::Stop => {
                state.stopping = true;
                if let Some((id, cell)) = state
                    .cells
                    .iter()
                    .find(|(_, (index, _))| *index == SOURCE)
                    .map(|(id, (_, cell))| (*id, cell.clone()))
                {
                    state.slots[SOURCE].close_outputs();
                    let _ = cell.kill_and_wait(Some(Duration::from_secs(5))).await;
                    state.cells.remove(&id);
                    state.finished[SOURCE] = true;
                    state.finish_if_done(&myself).await;
                }
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<PipelineMsg>,
        event: SupervisionEvent,
        state: &mut PipelineState,
    ) -> Result<(), ActorProcessingErr> {
        match event {
            SupervisionEvent::ActorTerminated(cell, _, _) => {
                if let Some((index, _)) = state.cells.remove(&cell.get_id()) {
                    state.finished[index] = true;
                    state.finish_if_done(&myself).await;
                }
            }
            SupervisionEvent::ActorFailed(cell, error) => {
                if let Some((index, _)) = state.cells.remove(&cell.get_id()) {
                    let fatal = matches!(
                        error.downcast_ref::<StageError>(),
                        Some(StageError::Fatal(_))
                    );
                    let error = error.to_string();
                    if fatal {
                        state.fail(&myself, format!("{}: {error}", state.slots[index].name()));
                    } else {
                        state.on_failure(&myself, index, &error);
                    }
                }
            }
            _ => {}
        }
        Ok(())
    }
}

fn prune(failures: &mut VecDeque<Instant>, window: Duration) {
    while failures.front().is_some_and(|at| at.elapsed() > window) {
        failures.pop_front();
    }
}

impl PipelineState {
    async fn start_generation(
        &mut self,
        myself: &ActorRef<PipelineMsg>,
    ) -> Result<(), ActorProcessingErr> {
        self.generation += 1;
        let generation = self.args.factory.build(self.tracker.clone()).await?;
        self.slots = generation.slots;
        self.finished = vec![false; self.slots.len()];
        {
            let mut observable = self.observable.locked();
            observable.stages = self.slots.iter().map(|s| (s.name(), s.stats())).collect();
            observable.tracker = self.tracker.clone();
            observable.generation = self.generation;
        }
        // Spawn from the end of the pipeline back to the source, so that every stage has
        // its consumer running before records arrive.
        for index in (0..self.slots.len()).rev() {
            let cell = self.slots[index].spawn(myself.get_cell()).await?;
            self.cells.insert(cell.get_id(), (index, cell));
        }
        tracing::info!(pipeline = %self.args.name, partition = self.args.partition,
            generation = self.generation, resume = ?self.saved, "generation started");
        Ok(())
    }

    async fn kill_generation(&mut self) {
        for (_, (_, cell)) in self.cells.drain() {
            let _ = cell.kill_and_wait(Some(Duration::from_secs(5))).await;
        }
        for slot in &self.slots {
            slot.close_outputs();
        }
        self.slots.clear();
    }

    /// Saves the committed position if it moved. A failure is logged and tried again at the
    /// next save; it is returned for the last save, which has no next one.
    fn save_checkpoint(&mut self) -> Result<(), String> {
        let committed = self.tracker.committed();
        if committed == self.saved {
            return Ok(());
        }
        let Some(position) = committed else {
            return Ok(());
        };
        match self.args.store.save(position) {
            Ok(()) => {
                self.saved = committed;
                Ok(())
            }
            Err(error) => {
                tracing::warn!(pipeline = %self.args.name, %error,
                    "cannot save checkpoint, will retry");
                Err(format!(
                    "cannot save the checkpoint at offset {}: {error}; the next run resumes \
                     from {}",
                    position.offset,
                    self.saved.map_or("the beginning".to_string(), |p| format!(
                        "offset {}",
                        p.offset
                    ))
                ))
            }
        }
    }

    fn on_failure(&mut self, myself: &ActorRef<PipelineMsg>, index: usize, error: &str) {
        let policy = self.args.policy.clone();
        let name = self.slots[index].name();
        prune(&mut self.stage_failures, policy.window);
        self.stage_failures.push_back(Instant::now());
        let failures = self.stage_failures.len() as u32;
        let backoff = backoff(&policy, failures);
        if self.slots[index].is_source() || failures > policy.stage_restarts {
            prune(&mut self.generation_failures, policy.window);
            self.generation_failures.push_back(Instant::now());
            if self.generation_failures.len() as u32 > policy.generation_restarts {
                self.fail(
                    myself,
                    format!("{name} keeps failing, restart budget spent: {error}"),
                );
                return;
            }
            self.stage_failures.clear();
            tracing::warn!(pipeline = %self.args.name, stage = name, %error, ?backoff,
                "restarting the generation from its checkpoint");
            let generation = self.generation;
            myself.send_after(backoff, move || PipelineMsg::RestartGeneration {
                generation,
            });
        } else {
            tracing::warn!(pipeline = %self.args.name, stage = name, %error, ?backoff,
                "restarting stage");
            let generation = self.generation;
            myself.send_after(backoff, move || PipelineMsg::RestartStage {
                generation,
                index,
            });
        }
    }

    fn fail(&mut self, myself: &ActorRef<PipelineMsg>, reason: String) {
        tracing::error!(pipeline = %self.args.name, partition = self.args.partition,
            %reason, "partition pipeline failed");
        let _ = self.save_checkpoint();
        self.observable.locked().exit = ExitStatus::Failed(reason.clone());
        myself.stop(Some(reason));
    }

    async fn finish_if_done(&mut self, myself: &ActorRef<PipelineMsg>) {
        if self.finished.iter().all(|done| *done) && !self.finished.is_empty() {
            // Every record read was delivered or given back: the source acts on the final
            // checkpoint before the partition counts as stopped (and is released).
            if let Some(source) = self.slots.get(SOURCE) {
                source.finish(self.tracker.committed()).await;
            }
            self.observable.locked().exit = match self.save_checkpoint() {
                Err(error) => ExitStatus::Failed(error),
                Ok(()) if self.stopping => ExitStatus::Stopped,
                Ok(()) => ExitStatus::Success,
            };
            myself.stop(Some("finished".to_string()));
        }
    }
}

fn backoff(policy: &RestartPolicy, failures: u32) -> Duration {
    Backoff::new(policy.backoff_initial, policy.backoff_max).delay(failures.saturating_sub(1))
}
