//! One assigned partition on this executor: its pipeline, and the task that commits its
//! checkpoints to the coordinators with the assignment's epoch.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mirador_actors::{
    CheckpointStore, ExitStatus, PipelineArgs, PipelineHandle, PipelineSnapshot, Position,
    RestartPolicy, SourceEnd,
};
use mirador_proto::coordinator::{CommitRequest, PartitionProgress};
use tokio::sync::watch;

use super::{CoordinatorError, Lease, Session};
use crate::pipeline::{Counts, PartitionFactory, PipelineResources};
use mirador_proto::sync::Locked;

/// Checkpoints of one partition: loaded from the assignment, saved into a slot that the
/// committer sends on. `save` never blocks the pipeline.
struct AssignedCheckpoints {
    initial: Option<u64>,
    latest: watch::Sender<Option<u64>>,
}

impl CheckpointStore for AssignedCheckpoints {
    fn load(&self, partition: u32) -> std::io::Result<Option<Position>> {
        Ok(self.initial.map(|offset| Position { partition, offset }))
    }

    fn save(&self, position: Position) -> std::io::Result<()> {
        self.latest.send_replace(Some(position.offset));
        Ok(())
    }
}

/// (pipeline, partition, epoch): what an assignment names.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PartitionId {
    pub pipeline: String,
    pub partition: u32,
    pub epoch: u64,
}

/// A partition pipeline running under an assignment.
pub struct AssignedPartition {
    pub id: PartitionId,
    pub version: u64,
    handle: PipelineHandle,
    latest: watch::Receiver<Option<u64>>,
    /// The last position the coordinators accepted.
    committed: Arc<AtomicU64>,
    /// Set when the coordinators refused a commit: another owner or epoch took over.
    fenced: Arc<AtomicBool>,
    committer: tokio::task::JoinHandle<()>,
    /// From the assignment's arrival to the pipeline running.
    pub start_pause: Duration,
    /// The extent of the source's input, for the lag.
    source_end: Arc<SourceEnd>,
    /// The spec's freshness target, and the time measured against it.
    slo: Option<(u64, std::sync::Mutex<SloClock>)>,
}

/// The time a partition's freshness was measured against its target, and the part of it
/// within: sampled at each heartbeat, each sample counting the time since the last.
pub struct SloClock {
    last: Instant,
    pub measured_ms: u64,
    pub good_ms: u64,
}

impl SloClock {
    fn sample(&mut self, target_ms: u64, freshness_ms: Option<u64>) {
        let now = Instant::now();
        let elapsed = now.duration_since(self.last).as_millis() as u64;
        self.last = now;
        // Before the first commit there is nothing to measure.
        if let Some(freshness) = freshness_ms {
            self.measured_ms += elapsed;
            if freshness <= target_ms {
                self.good_ms += elapsed;
            }
        }
    }
}

impl AssignedPartition {
    pub async fn start(
        id: PartitionId,
        version: u64,
        checkpoint: Option<u64>,
        resources: Arc<PipelineResources>,
        session: Arc<Session>,
        received: Instant,
    ) -> anyhow::Result<Self> {
        let (latest_tx, latest) = watch::channel(checkpoint);
        let store = Arc::new(AssignedCheckpoints {
            initial: checkpoint,
            latest: latest_tx,
        });
        let policy = RestartPolicy {
            checkpoint_interval: resources.spec.checkpoint_interval(),
            ..RestartPolicy::default()
        };
        let factory =
            PartitionFactory::new(resources.clone(), id.partition, policy.max_batch_attempts);
        let source_end = factory.source_end();
        let handle = PipelineHandle::spawn(PipelineArgs {
            name: id.pipeline.clone(),
            partition: id.partition,
            factory: Arc::new(factory),
            store,
            policy: policy.clone(),
        })
        .await
        .map_err(|e| anyhow::anyhow!("{}/{} did not start: {e}", id.pipeline, id.partition))?;
        let committed = Arc::new(AtomicU64::new(checkpoint.unwrap_or(0)));
        let fenced = Arc::new(AtomicBool::new(false));
        let committer = tokio::spawn(commit_loop(
            id.clone(),
            session,
            latest.clone(),
            committed.clone(),
            fenced.clone(),
            policy.checkpoint_interval,
        ));
        Ok(AssignedPartition {
            id,
            version,
            handle,
            latest,
            committed,
            fenced,
            committer,
            start_pause: received.elapsed(),
            source_end,
            slo: resources.spec.slo.map(|slo| {
                let clock = SloClock {
                    last: Instant::now(),
                    measured_ms: 0,
                    good_ms: 0,
                };
                (slo.freshness_p90_secs * 1000, std::sync::Mutex::new(clock))
            }),
        })
    }

    /// A reader of the newest position saved, for after `stop` has consumed the partition.
    pub fn position(&self) -> impl Fn() -> Option<u64> {
        let latest = self.latest.clone();
        move || *latest.borrow()
    }

    pub fn is_fenced(&self) -> bool {
        self.fenced.load(Ordering::Relaxed)
    }

    pub fn is_finished(&self) -> bool {
        self.handle.is_finished()
    }

    /// It ended by itself, its bounded source read to the end and everything delivered.
    pub fn read_to_the_end(&self) -> bool {
        self.is_finished() && matches!(self.handle.snapshot().exit, ExitStatus::Success)
    }

    pub fn snapshot(&self) -> PipelineSnapshot {
        self.handle.snapshot()
    }

    /// What the metrics show of this partition.
    pub fn metrics(&self) -> crate::metrics::PartitionMetrics {
        let latest = *self.latest.borrow();
        crate::metrics::PartitionMetrics {
            snapshot: self.handle.snapshot(),
            running: true,
            checkpoint: latest,
            committed: latest.map(|_| self.committed.load(Ordering::Relaxed)),
            lag: self.source_end.lag(latest),
            slo: self.slo.as_ref().map(|(target_ms, clock)| {
                let clock = clock.locked();
                (*target_ms, clock.measured_ms, clock.good_ms)
            }),
        }
    }

    /// What the heartbeat reports of this partition; the rate is the caller's, who keeps
    /// the window it is measured over.
    pub fn progress(&self) -> PartitionProgress {
        let snapshot = self.handle.snapshot();
        let freshness_ms = crate::metrics::freshness_ms(snapshot.newest_event_ms);
        let (slo_measured_ms, slo_good_ms) = match &self.slo {
            Some((target_ms, clock)) => {
                let mut clock = clock.locked();
                clock.sample(*target_ms, freshness_ms);
                (clock.measured_ms, clock.good_ms)
            }
            None => (0, 0),
        };
        let counts = Counts::of([&snapshot]);
        PartitionProgress {
            pipeline: self.id.pipeline.clone(),
            partition: self.id.partition,
            epoch: self.id.epoch,
            position: self.committed.load(Ordering::Relaxed),
            records_in: counts.read,
            records_out: counts.scored,
            dead_lettered: counts.dead_lettered,
            events_per_sec: 0.0,
            // Against the newest checkpoint here, which the coordinators see soon after.
            lag: self.source_end.lag(*self.latest.borrow()),
            stage_restarts: snapshot.stages.iter().map(|s| s.restarts as u32).sum(),
            generation_restarts: snapshot.generation_restarts as u32,
            failed: matches!(snapshot.exit, ExitStatus::Failed(_)),
            start_pause_ms: self.start_pause.as_millis() as u64,
            freshness_ms,
            system_lag_ms: snapshot.oldest_pending_ms,
            slo_measured_ms,
            slo_good_ms,
        }
    }

    /// Stops at a checkpoint: reading ends, what is in flight is delivered, and the last
    /// position is committed (unless fenced or the lease is lost). Returns whether the
    /// final position reached the coordinators.
    pub async fn stop(self, session: &Session) -> bool {
        self.handle.stop();
        let exit = self.handle.wait().await;
        self.committer.abort();
        if let ExitStatus::Failed(error) = &exit {
            tracing::warn!(pipeline = %self.id.pipeline, partition = self.id.partition, %error,
                "partition ended failing");
        }
        if self.fenced.load(Ordering::Relaxed) {
            return false;
        }
        let Some(last) = *self.latest.borrow() else {
            return true;
        };
        if last <= self.committed.load(Ordering::Relaxed) {
            return true;
        }
        commit(&self.id, session, last).await.is_ok()
    }

    /// Stops at once, committing nothing more: the lease is lost or the epoch is stale.
    pub async fn abandon(self) {
        self.committer.abort();
        self.handle.stop();
        let _ = tokio::time::timeout(Duration::from_secs(10), self.handle.wait()).await;
    }
}

/// Why a commit did not land.
#[derive(Debug)]
enum CommitError {
    /// Refused for good: the partition has another owner or epoch.
    Fenced(String),
    /// Not now: no lease, or no coordinator answered.
    Later(String),
}

async fn commit(id: &PartitionId, session: &Session, position: u64) -> Result<(), CommitError> {
    if !session.lease.is_valid() {
        return Err(CommitError::Later("the lease is not valid".into()));
    }
    let request = CommitRequest {
        executor_id: session.executor_id.clone(),
        incarnation: session.incarnation,
        pipeline: id.pipeline.clone(),
        partition: id.partition,
        epoch: id.epoch,
        position,
    };
    match session.coordinators.commit_checkpoint(request).await {
        Ok(()) => Ok(()),
        Err(CoordinatorError::Fenced(message)) => Err(CommitError::Fenced(message)),
        Err(error) => Err(CommitError::Later(error.to_string())),
    }
}

/// Sends the newest saved position at most once per checkpoint interval.
async fn commit_loop(
    id: PartitionId,
    session: Arc<Session>,
    mut latest: watch::Receiver<Option<u64>>,
    committed: Arc<AtomicU64>,
    fenced: Arc<AtomicBool>,
    interval: Duration,
) {
    loop {
        if latest.changed().await.is_err() {
            return;
        }
        let Some(position) = *latest.borrow_and_update() else {
            continue;
        };
        if position <= committed.load(Ordering::Relaxed) {
            continue;
        }
        match commit(&id, &session, position).await {
            Ok(()) => committed.store(position, Ordering::Relaxed),
            Err(CommitError::Fenced(message)) => {
                tracing::warn!(pipeline = %id.pipeline, partition = id.partition,
                    epoch = id.epoch, %message, "checkpoint refused, stopping the partition");
                fenced.store(true, Ordering::Relaxed);
                return;
            }
            Err(CommitError::Later(message)) => {
                tracing::debug!(pipeline = %id.pipeline, partition = id.partition, %message,
                    "checkpoint not committed, will retry");
                latest.mark_changed();
            }
        }
        tokio::time::sleep(interval).await;
    }
}

impl Lease {
    pub fn is_valid(&self) -> bool {
        self.valid_until
            .locked()
            .is_some_and(|until| Instant::now() < until)
    }
}
