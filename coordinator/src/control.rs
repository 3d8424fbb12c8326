//! The leader's duties, which need a clock: executor leases (on monotonic time), the
//! planner loop, and what executors report (progress, the pause of each move). Kept in
//! the leader's memory only; a new leader starts every lease afresh.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mirador_proto::coordinator::PartitionProgress;

use crate::planner::plan;
use crate::raft::RaftNode;
use crate::state::{ClusterState, Command, PartitionKey};
use mirador_proto::sync::Locked;

/// Lease and planning settings of a region.
#[derive(Clone, Debug)]
pub struct ControlConfig {
    /// An executor that has not heartbeated for this long (plus `grace`) is expired.
    pub lease: Duration,
    /// Added on the coordinator's side, so that an executor always fences itself first.
    pub grace: Duration,
    /// How often executors heartbeat.
    pub heartbeat: Duration,
    /// Handover moves per planning round.
    pub max_moves: usize,
    /// How often the leader checks leases and plans.
    pub tick: Duration,
}

impl Default for ControlConfig {
    fn default() -> Self {
        ControlConfig {
            lease: Duration::from_millis(2000),
            grace: Duration::from_millis(500),
            heartbeat: Duration::from_millis(250),
            max_moves: 4,
            tick: Duration::from_millis(100),
        }
    }
}

/// What the leader knows of an executor beyond the replicated state.
#[derive(Clone, Debug)]
pub struct Liveness {
    pub incarnation: u64,
    pub last_heartbeat: Instant,
}

/// The pause of a move, in three measured parts: the old owner stopping at a checkpoint
/// (it reports how long), the new assignment reaching the new owner's stream, and the new
/// owner starting the partition (it reports how long).
#[derive(Clone, Copy, Debug, Default)]
pub struct MovePause {
    pub released_at: Option<Instant>,
    pub stop_ms: u64,
    pub dispatch_ms: Option<u64>,
    /// Set once the new owner reports the partition running.
    pub pause_ms: Option<u64>,
}

#[derive(Default)]
struct Observed {
    liveness: HashMap<String, Liveness>,
    progress: HashMap<PartitionKey, PartitionProgress>,
    moves: HashMap<PartitionKey, MovePause>,
    /// Whether this node was the leader at the last tick.
    leading: bool,
}

/// The leader's volatile view, shared by the services and the control loop.
#[derive(Clone, Default)]
pub struct Observations {
    inner: Arc<Mutex<Observed>>,
}

impl Observations {
    fn lock(&self) -> std::sync::MutexGuard<'_, Observed> {
        self.inner.locked()
    }

    pub fn heartbeat(&self, executor: &str, incarnation: u64, progress: Vec<PartitionProgress>) {
        let now = Instant::now();
        let mut observed = self.lock();
        observed.liveness.insert(
            executor.to_string(),
            Liveness {
                incarnation,
                last_heartbeat: now,
            },
        );
        for p in progress {
            let key = (p.pipeline.clone(), p.partition);
            if let Some(pause) = observed.moves.get_mut(&key) {
                if let (Some(dispatch), None) = (pause.dispatch_ms, pause.pause_ms) {
                    pause.pause_ms = Some(pause.stop_ms + dispatch + p.start_pause_ms);
                    tracing::info!(pipeline = %p.pipeline, partition = p.partition,
                        stop_ms = pause.stop_ms, dispatch_ms = dispatch,
                        start_ms = p.start_pause_ms, "move done");
                }
            }
            observed.progress.insert(key, p);
        }
    }

    /// The new owner's stream carried the partition after its release.
    pub fn dispatched(&self, key: &PartitionKey) {
        if let Some(pause) = self.lock().moves.get_mut(key) {
            if let (Some(released_at), None) = (pause.released_at, pause.dispatch_ms) {
                pause.dispatch_ms = Some(released_at.elapsed().as_millis() as u64);
            }
        }
    }

    pub fn released(&self, key: PartitionKey, stop_ms: u64) {
        self.lock().moves.insert(
            key,
            MovePause {
                released_at: Some(Instant::now()),
                stop_ms,
                dispatch_ms: None,
                pause_ms: None,
            },
        );
    }

    pub fn progress(&self, key: &PartitionKey) -> Option<PartitionProgress> {
        self.lock().progress.get(key).cloned()
    }

    pub fn move_pause(&self, key: &PartitionKey) -> Option<MovePause> {
        self.lock().moves.get(key).copied()
    }

    pub fn last_heartbeat(&self, executor: &str) -> Option<Instant> {
        self.lock().liveness.get(executor).map(|l| l.last_heartbeat)
    }

    /// Executors of `state` whose lease holds, and those whose lease ran out.
    fn split(
        &self,
        state: &ClusterState,
        lease: Duration,
    ) -> (BTreeSet<String>, Vec<(String, u64)>) {
        let now = Instant::now();
        let mut observed = self.lock();
        let mut live = BTreeSet::new();
        let mut expired = Vec::new();
        for (id, executor) in &state.executors {
            // Unknown to this leader (it took over, or the registration just applied): the
            // lease starts now.
            let liveness = observed
                .liveness
                .entry(id.clone())
                .or_insert_with(|| Liveness {
                    incarnation: executor.incarnation,
                    last_heartbeat: now,
                });
            if now.duration_since(liveness.last_heartbeat) > lease {
                expired.push((id.clone(), executor.incarnation));
            } else {
                live.insert(id.clone());
            }
        }
        (live, expired)
    }

    fn took_over(&self, leading: bool) -> bool {
        let mut observed = self.lock();
        let took_over = leading && !observed.leading;
        observed.leading = leading;
        if took_over {
            observed.liveness.clear();
        }
        took_over
    }
}

/// Runs the leader's duties on every tick while this node leads: expire executors whose
/// lease ran out, then commit the planner's moves.
pub async fn control_loop(raft: Arc<RaftNode>, observations: Observations, config: ControlConfig) {
    let mut ticker = tokio::time::interval(config.tick);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let leading = raft.is_leader();
        if observations.took_over(leading) {
            tracing::info!(
                node = raft.id(),
                "leading: every executor lease starts afresh"
            );
        }
        if !leading {
            continue;
        }
        let state = raft.state();
        let (live, expired) = observations.split(&state, config.lease + config.grace);
        for (id, incarnation) in expired {
            tracing::warn!(executor = %id, incarnation, "lease expired");
            if let Err(error) = raft
                .write(Command::ExpireExecutor {
                    id: id.clone(),
                    incarnation,
                })
                .await
            {
                tracing::warn!(executor = %id, %error, "cannot expire");
            }
        }
        let state = raft.state();
        let moves = plan(&state, &live, config.max_moves);
        if moves.is_empty() {
            continue;
        }
        tracing::info!(moves = moves.len(), "applying a plan");
        if let Err(error) = raft.write(Command::ApplyPlan { moves }).await {
            tracing::warn!(%error, "cannot apply the plan");
        }
    }
}
