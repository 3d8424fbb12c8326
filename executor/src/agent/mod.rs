//! The executor agent: registers with the region's coordinators, heartbeats with the
//! progress of its partitions, follows the stream of its assignments, and starts and stops
//! partition pipelines to match it.
//!
//! Safety rests on two rules. A partition is run only under an assignment's epoch, and its
//! checkpoints are committed with that epoch (the coordinators refuse a stale one). And the
//! agent holds a lease: when no heartbeat has been answered for the lease's length, counted
//! from when the last answered one was *sent*, it stops committing and stops every
//! pipeline. The coordinators expire it later than that (counted from when they
//! *received* it), so by then it is silent.

mod client;
mod partition;
mod reconcile;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use mirador_proto::coordinator::{
    AssignmentSet, HeartbeatRequest, LeaveRequest, PartitionAssignment, RegisterRequest,
    ReleaseRequest, WatchRequest,
};
use mirador_proto::retry::Backoff;
use tokio::sync::Mutex as AsyncMutex;

pub use client::{
    AssignmentStream, CoordinatorClient, CoordinatorError, GrpcCoordinators, InProcessCoordinators,
};
pub use partition::{AssignedPartition, PartitionId};
pub use reconcile::{reconcile, Action, Current, Desired, Key};

use crate::infer::InferencePool;
use crate::pipeline::PipelineResources;
use crate::spec::PipelineSpec;
use mirador_proto::sync::Locked;

/// How an executor presents itself to the coordinators.
#[derive(Clone, Debug)]
pub struct AgentConfig {
    pub executor_id: String,
    /// `host:port` where this executor can be reached, shown to operators.
    pub address: String,
    pub region: String,
    /// Partitions it runs at most.
    pub slots: u32,
    pub gpu: bool,
    /// `host:port` of the region's coordinators (for [`ExecutorAgent::new`]).
    pub coordinators: Vec<String>,
}

/// Until when this executor may act on its assignments.
#[derive(Default)]
pub struct Lease {
    valid_until: Mutex<Option<Instant>>,
}

impl Lease {
    fn extend_to(&self, until: Instant) {
        let mut valid_until = self.valid_until.locked();
        if valid_until.is_none_or(|v| v < until) {
            *valid_until = Some(until);
        }
    }

    fn revoke(&self) {
        *self.valid_until.locked() = None;
    }
}

/// One registration: its incarnation and its lease.
pub struct Session {
    pub executor_id: String,
    pub incarnation: u64,
    pub coordinators: Arc<dyn CoordinatorClient>,
    pub lease: Lease,
    lease_length: Duration,
    heartbeat: Duration,
}

/// Partitions running here, by (pipeline, partition).
/// Between attempts at registering.
const REGISTER_RETRY: Backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));

type Running = Arc<AsyncMutex<BTreeMap<Key, AssignedPartition>>>;

pub struct ExecutorAgent {
    config: AgentConfig,
    pool: InferencePool,
    coordinators: Arc<dyn CoordinatorClient>,
    running: Running,
    /// Pipeline resources by (pipeline, version), shared by its partitions here.
    resources: Mutex<HashMap<(String, u64), Arc<PipelineResources>>>,
    /// The last snapshots of the partitions that ran to their end here and were released,
    /// at most [`FINISHED_KEPT`] of them.
    finished: Mutex<BTreeMap<Key, mirador_actors::PipelineSnapshot>>,
    /// What the pipelines whose resources were dropped here had counted, so that their
    /// counters never go back.
    retired: Mutex<HashMap<String, Retired>>,
    /// The epoch each partition was last released under here. A release always moves the
    /// partition to a new epoch, so that epoch is never started again here, even when a
    /// set sent before the release was committed still holds it.
    given_back: Mutex<HashMap<Key, u64>>,
}

/// The shared counters of a pipeline's resources once dropped.
#[derive(Default)]
struct Retired {
    reasons: BTreeMap<mirador_actors::ReasonCode, u64>,
    cache_hits: u64,
    cache_misses: u64,
    latency: crate::sinks::LatencyRecorder,
}

impl Retired {
    fn absorb(&mut self, resources: &PipelineResources) {
        for (reason, count) in resources.reasons.snapshot() {
            *self.reasons.entry(reason).or_default() += count;
        }
        let (hits, misses) = resources.cache.counts();
        self.cache_hits += hits;
        self.cache_misses += misses;
        self.latency.absorb(&resources.latency);
    }
}

/// Snapshots of finished partitions kept for [`ExecutorAgent::snapshots`].
const FINISHED_KEPT: usize = 4096;

impl ExecutorAgent {
    /// An agent that calls the coordinators in `config` over gRPC.
    pub fn new(config: AgentConfig, pool: InferencePool) -> Self {
        let coordinators = Arc::new(GrpcCoordinators::new(
            config.coordinators.clone(),
            Duration::from_secs(3),
        ));
        Self::with_coordinators(config, pool, coordinators)
    }

    /// An agent that calls the coordinators through `coordinators` (in process in tests).
    pub fn with_coordinators(
        config: AgentConfig,
        pool: InferencePool,
        coordinators: Arc<dyn CoordinatorClient>,
    ) -> Self {
        ExecutorAgent {
            config,
            pool,
            coordinators,
            running: Arc::default(),
            resources: Mutex::default(),
            finished: Mutex::default(),
            retired: Mutex::default(),
            given_back: Mutex::default(),
        }
    }

    /// The partitions running now.
    pub async fn running(&self) -> Vec<PartitionId> {
        self.running
            .lock()
            .await
            .values()
            .map(|p| p.id.clone())
            .collect()
    }

    /// What each running partition's pipeline reports now.
    /// The partitions running here, and those that ran to their end here since.
    pub async fn snapshots(&self) -> Vec<mirador_actors::PipelineSnapshot> {
        let running = self.running.lock().await;
        let finished = self.finished.locked();
        running
            .values()
            .map(AssignedPartition::snapshot)
            .chain(finished_elsewhere(&running, &finished).cloned())
            .collect()
    }

    /// Runs until `shutdown` resolves: then every partition stops at a checkpoint and is
    /// released, so that the coordinators can move it at once.
    pub async fn run(self: Arc<Self>, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        loop {
            let session = tokio::select! {
                session = self.register() => Arc::new(session),
                () = &mut shutdown => return,
            };
            tracing::info!(executor = %self.config.executor_id, incarnation = session.incarnation,
                coordinator = %self.coordinators.current(), "registered");
            let lost = tokio::select! {
                () = self.serve(session.clone()) => true,
                () = &mut shutdown => false,
            };
            if lost {
                tracing::warn!(executor = %self.config.executor_id,
                    "lease lost: stopping every partition, committing nothing more");
                self.abandon_all().await;
                continue;
            }
            self.leave(&session).await;
            self.release_all(&session).await;
            return;
        }
    }

    /// Registers, retrying until a coordinator answers.
    async fn register(&self) -> Session {
        let request = RegisterRequest {
            executor_id: self.config.executor_id.clone(),
            address: self.config.address.clone(),
            region: self.config.region.clone(),
            slots: self.config.slots,
            gpu: self.config.gpu,
        };
        let mut attempts = REGISTER_RETRY.attempts();
        loop {
            let sent = Instant::now();
            match self.coordinators.register(request.clone()).await {
                Ok(response) => {
                    let session = Session {
                        executor_id: self.config.executor_id.clone(),
                        incarnation: response.incarnation,
                        coordinators: self.coordinators.clone(),
                        lease: Lease::default(),
                        lease_length: Duration::from_millis(response.lease_ms),
                        heartbeat: Duration::from_millis(response.heartbeat_ms.max(10)),
                    };
                    session.lease.extend_to(sent + session.lease_length);
                    return session;
                }
                Err(error) => {
                    tracing::warn!(executor = %self.config.executor_id, %error,
                        "cannot register, retrying");
                    tokio::time::sleep(attempts.next_delay()).await;
                }
            }
        }
    }

    /// Heartbeats and follows assignments until the lease is lost.
    async fn serve(&self, session: Arc<Session>) {
        tokio::select! {
            () = self.heartbeat_loop(&session) => {}
            () = self.follow_assignments(&session) => {}
        }
    }

    async fn heartbeat_loop(&self, session: &Session) {
        // Per partition: the start of the current rate window and the count then, and
        // the rate, smoothed over windows of a second at least (records come in batches:
        // one window's count alone swings with where the batches fall).
        let mut windows: HashMap<Key, (Instant, u64, f64)> = HashMap::new();
        let mut partitions = Vec::new();
        loop {
            tokio::time::sleep(session.heartbeat).await;
            // While partitions start or stop, the last progress goes out again: the lease
            // must not wait for a pipeline to drain.
            if let Ok(running) = self.running.try_lock() {
                windows.retain(|key, _| running.contains_key(key));
                partitions = running
                    .iter()
                    .map(|(key, p)| {
                        let now = Instant::now();
                        let mut progress = p.progress();
                        let records = progress.records_in;
                        let window = windows.entry(key.clone()).or_insert((now, records, 0.0));
                        let seconds = now.duration_since(window.0).as_secs_f64();
                        if seconds >= 1.0 {
                            let rate = records.saturating_sub(window.1) as f64 / seconds;
                            *window = (now, records, smoothed_rate(window.2, rate, seconds));
                        }
                        progress.events_per_sec = window.2;
                        progress
                    })
                    .collect();
            }
            let request = HeartbeatRequest {
                executor_id: session.executor_id.clone(),
                incarnation: session.incarnation,
                partitions: partitions.clone(),
            };
            let sent = Instant::now();
            let answer = session.coordinators.heartbeat(request).await;
            let took = sent.elapsed();
            if took > session.lease_length / 4 {
                tracing::warn!(
                    took_ms = took.as_millis() as u64,
                    answered = answer.is_ok(),
                    "heartbeat slow: an answer extends the lease from when it was sent"
                );
            }
            match answer {
                Ok(()) => session.lease.extend_to(sent + session.lease_length),
                Err(error) if error.is_fenced() => {
                    // The coordinators expired this incarnation.
                    tracing::warn!(%error, "heartbeat refused");
                    session.lease.revoke();
                    return;
                }
                Err(error) => tracing::warn!(%error, "heartbeat not answered"),
            }
            if !session.lease.is_valid() {
                return;
            }
        }
    }

    /// Opens the assignment stream (again after an error) and applies every set it sends.
    async fn follow_assignments(&self, session: &Arc<Session>) {
        let request = WatchRequest {
            executor_id: session.executor_id.clone(),
            incarnation: session.incarnation,
        };
        loop {
            let mut stream = match session
                .coordinators
                .watch_assignments(request.clone())
                .await
            {
                Ok(stream) => stream,
                Err(error) => {
                    if error.is_fenced() {
                        session.lease.revoke();
                        return;
                    }
                    tracing::warn!(%error, "cannot follow assignments, retrying");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            };
            loop {
                // Wake up now and then to notice a lost lease while the stream is quiet.
                match tokio::time::timeout(session.heartbeat, stream.next()).await {
                    Ok(Some(Ok(set))) => {
                        if !session.lease.is_valid() {
                            return;
                        }
                        self.apply(session, set, Instant::now()).await;
                    }
                    Ok(None) => break,
                    Ok(Some(Err(error))) => {
                        tracing::warn!(%error, "assignment stream ended, reopening");
                        break;
                    }
                    Err(_) => {
                        if !session.lease.is_valid() {
                            return;
                        }
                        self.reap_fenced().await;
                        self.reap_finished(session).await;
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Makes what runs here match `set`.
    async fn apply(&self, session: &Arc<Session>, set: AssignmentSet, received: Instant) {
        let desired: BTreeMap<Key, PartitionAssignment> = set
            .partitions
            .into_iter()
            .map(|a| ((a.pipeline.clone(), a.partition), a))
            .collect();
        let mut running = self.running.lock().await;
        let views: BTreeMap<Key, Current> = running
            .iter()
            .map(|(key, p)| {
                let view = Current {
                    epoch: p.id.epoch,
                    version: p.version,
                    fenced: p.is_fenced(),
                };
                (key.clone(), view)
            })
            .collect();
        let wanted: BTreeMap<Key, Desired> = {
            let mut given_back = self.given_back.locked();
            given_back.retain(|key, _| desired.contains_key(key));
            desired
                .iter()
                .filter(|(key, a)| given_back.get(*key) != Some(&a.epoch))
                .map(|(key, a)| {
                    let d = Desired {
                        epoch: a.epoch,
                        version: a.version,
                        run: a.run,
                    };
                    (key.clone(), d)
                })
                .collect()
        };

        // A partition stopped for a new version restarts from where it stopped, which the
        // set may not show yet.
        let mut stopped_at: HashMap<Key, (u64, u64)> = HashMap::new();
        for action in reconcile(&views, &wanted) {
            match action {
                Action::Stop { key, release } => {
                    let partition = running.remove(&key).expect("reconciled from running");
                    let epoch = partition.id.epoch;
                    let stopping = Instant::now();
                    let position = partition.position();
                    let committed = partition.stop(session).await;
                    if release && committed {
                        self.release(session, &key, epoch, stopping.elapsed(), false)
                            .await;
                    }
                    if let (true, Some(position)) = (committed, position()) {
                        stopped_at.insert(key, (epoch, position));
                    }
                }
                Action::Abandon { key } => {
                    let partition = running.remove(&key).expect("reconciled from running");
                    partition.abandon().await;
                }
                Action::Start { key } => {
                    let a = &desired[&key];
                    let checkpoint = match stopped_at.get(&key) {
                        Some((epoch, position)) if *epoch == a.epoch => {
                            Some(a.checkpoint.unwrap_or(0).max(*position))
                        }
                        _ => a.checkpoint,
                    };
                    if let Some(partition) = self.start(session, a, checkpoint, received).await {
                        running.insert(key, partition);
                    }
                }
            }
        }
        drop(running);
        self.prune_resources().await;
    }

    /// Starts one assigned partition; logs and returns `None` when it cannot.
    async fn start(
        &self,
        session: &Arc<Session>,
        a: &PartitionAssignment,
        checkpoint: Option<u64>,
        received: Instant,
    ) -> Option<AssignedPartition> {
        let building = Instant::now();
        let resources = match self.resources_for(a).await {
            Ok(resources) => resources,
            Err(error) => {
                tracing::error!(pipeline = %a.pipeline, version = a.version, %error,
                    "cannot build the pipeline");
                return None;
            }
        };
        let id = PartitionId {
            pipeline: a.pipeline.clone(),
            partition: a.partition,
            epoch: a.epoch,
        };
        match AssignedPartition::start(
            id,
            a.version,
            checkpoint,
            resources,
            session.clone(),
            received,
        )
        .await
        {
            Ok(partition) => {
                tracing::info!(pipeline = %a.pipeline, partition = a.partition,
                    epoch = a.epoch, checkpoint = ?a.checkpoint,
                    pause_ms = partition.start_pause.as_millis() as u64,
                    start_ms = building.elapsed().as_millis() as u64, "partition started");
                Some(partition)
            }
            Err(error) => {
                tracing::error!(%error, "cannot start the partition");
                None
            }
        }
    }

    async fn release(
        &self,
        session: &Session,
        key: &Key,
        epoch: u64,
        stopped_in: Duration,
        finished: bool,
    ) {
        self.given_back.locked().insert(key.clone(), epoch);
        let request = ReleaseRequest {
            executor_id: session.executor_id.clone(),
            incarnation: session.incarnation,
            pipeline: key.0.clone(),
            partition: key.1,
            epoch,
            stop_ms: stopped_in.as_millis() as u64,
            finished,
        };
        match session.coordinators.release(request).await {
            Ok(()) => {
                tracing::info!(pipeline = %key.0, partition = key.1, epoch, finished, "released")
            }
            Err(error) => {
                tracing::warn!(pipeline = %key.0, partition = key.1, %error, "release refused")
            }
        }
    }

    /// Releases the partitions that read their bounded source to the end, once their last
    /// position is committed: their slots go back to the region.
    async fn reap_finished(&self, session: &Session) {
        let mut running = self.running.lock().await;
        let finished: Vec<Key> = running
            .iter()
            .filter(|(_, p)| p.read_to_the_end())
            .map(|(k, _)| k.clone())
            .collect();
        for key in finished {
            if let Some(partition) = running.remove(&key) {
                let epoch = partition.id.epoch;
                let stopping = Instant::now();
                let snapshot = partition.snapshot();
                if partition.stop(session).await {
                    self.release(session, &key, epoch, stopping.elapsed(), true)
                        .await;
                }
                let mut finished = self.finished.locked();
                if finished.len() >= FINISHED_KEPT {
                    finished.pop_first();
                }
                finished.insert(key, snapshot);
            }
        }
    }

    /// Stops the partitions whose commits were refused.
    async fn reap_fenced(&self) {
        let mut running = self.running.lock().await;
        let fenced: Vec<Key> = running
            .iter()
            .filter(|(_, p)| p.is_fenced())
            .map(|(k, _)| k.clone())
            .collect();
        for key in fenced {
            if let Some(partition) = running.remove(&key) {
                partition.abandon().await;
            }
        }
    }

    async fn abandon_all(&self) {
        let mut running = self.running.lock().await;
        while let Some((_, partition)) = running.pop_first() {
            partition.abandon().await;
        }
    }

    /// Tells the coordinators that this executor shuts down, so that the partitions it
    /// releases next are not planned back onto it.
    async fn leave(&self, session: &Session) {
        let request = LeaveRequest {
            executor_id: session.executor_id.clone(),
            incarnation: session.incarnation,
        };
        if let Err(error) = session.coordinators.leave(request).await {
            tracing::warn!(%error, "cannot announce the shutdown; releasing anyway");
        }
    }

    async fn release_all(&self, session: &Session) {
        let mut running = self.running.lock().await;
        while let Some((key, partition)) = running.pop_first() {
            let epoch = partition.id.epoch;
            let stopping = Instant::now();
            if partition.stop(session).await {
                self.release(session, &key, epoch, stopping.elapsed(), false)
                    .await;
            }
        }
    }

    async fn resources_for(
        &self,
        a: &PartitionAssignment,
    ) -> anyhow::Result<Arc<PipelineResources>> {
        let key = (a.pipeline.clone(), a.version);
        if let Some(resources) = self.resources.locked().get(&key) {
            return Ok(resources.clone());
        }
        let spec = PipelineSpec::from_yaml(&a.spec)?.in_region(&self.config.region)?;
        let mut resources = PipelineResources::build(spec, &self.pool).await?;
        // Each scored record names the region that scored it.
        resources.context.region = self.config.region.as_str().into();
        let resources = Arc::new(resources);
        self.resources.locked().insert(key, resources.clone());
        Ok(resources)
    }

    async fn prune_resources(&self) {
        let used: Vec<(String, u64)> = self
            .running
            .lock()
            .await
            .values()
            .map(|p| (p.id.pipeline.clone(), p.version))
            .collect();
        let mut retired = self.retired.locked();
        self.resources.locked().retain(|key, resources| {
            let keep = used.contains(key);
            if !keep {
                retired.entry(key.0.clone()).or_default().absorb(resources);
            }
            keep
        });
    }

    /// What Prometheus is shown of this executor now (see [`crate::metrics`]).
    pub async fn metrics(&self) -> crate::metrics::MetricsView {
        use crate::metrics::{latency_bounds_us, ModelMetrics, PartitionMetrics, PipelineCounters};
        let mut partitions: Vec<PartitionMetrics> = {
            let running = self.running.lock().await;
            let finished = self.finished.locked();
            running
                .values()
                .map(AssignedPartition::metrics)
                .chain(
                    finished_elsewhere(&running, &finished).map(|snapshot| PartitionMetrics {
                        checkpoint: snapshot.committed.map(|p| p.offset),
                        committed: snapshot.committed.map(|p| p.offset),
                        snapshot: snapshot.clone(),
                        running: false,
                        lag: Some(0),
                        slo: None,
                    }),
                )
                .collect()
        };
        partitions.sort_by(|a, b| {
            (&a.snapshot.name, a.snapshot.partition).cmp(&(&b.snapshot.name, b.snapshot.partition))
        });
        let bounds = latency_bounds_us();
        let mut pipelines: BTreeMap<String, PipelineCounters> = BTreeMap::new();
        let mut add = |name: &str,
                       reasons: BTreeMap<mirador_actors::ReasonCode, u64>,
                       (hits, misses): (u64, u64),
                       bytes: u64,
                       latency: &crate::sinks::LatencyRecorder| {
            let counters = pipelines.entry(name.to_string()).or_default();
            for (reason, count) in reasons {
                *counters.reasons.entry(reason).or_default() += count;
            }
            counters.cache_hits += hits;
            counters.cache_misses += misses;
            counters.cache_bytes += bytes;
            let (buckets, count, sum_us) = latency.cumulative(&bounds);
            if counters.latency_buckets.is_empty() {
                counters.latency_buckets = vec![0; bounds.len()];
            }
            for (total, n) in counters.latency_buckets.iter_mut().zip(buckets) {
                *total += n;
            }
            counters.latency_count += count;
            counters.latency_sum_secs += sum_us / 1e6;
        };
        for ((name, _), resources) in self.resources.locked().iter() {
            add(
                name,
                resources.reasons.snapshot(),
                resources.cache.counts(),
                resources.cache.weighted_size(),
                &resources.latency,
            );
        }
        for (name, retired) in self.retired.locked().iter() {
            add(
                name,
                retired.reasons.clone(),
                (retired.cache_hits, retired.cache_misses),
                0,
                &retired.latency,
            );
        }
        crate::metrics::MetricsView {
            executor: self.config.executor_id.clone(),
            region: self.config.region.clone(),
            slots: self.config.slots,
            partitions,
            pipelines,
            models: self
                .pool
                .models()
                .into_iter()
                .map(|(name, version, device, stats)| ModelMetrics {
                    name,
                    version,
                    device,
                    stats,
                })
                .collect(),
        }
    }
}

/// The last snapshots of the partitions that ran to their end here and run here no more.
fn finished_elsewhere<'a>(
    running: &'a BTreeMap<Key, AssignedPartition>,
    finished: &'a BTreeMap<Key, mirador_actors::PipelineSnapshot>,
) -> impl Iterator<Item = &'a mirador_actors::PipelineSnapshot> {
    finished
        .iter()
        .filter(|(key, _)| !running.contains_key(*key))
        .map(|(_, snapshot)| snapshot)
}

/// How long a change of rate takes to show mostly (63 %) in the smoothed rate.
const RATE_SMOOTHING: Duration = Duration::from_secs(5);

/// The exponentially smoothed rate after a window of `seconds` measured at `rate`.
fn smoothed_rate(previous: f64, rate: f64, seconds: f64) -> f64 {
    if previous == 0.0 {
        return rate;
    }
    let weight = 1.0 - (-seconds / RATE_SMOOTHING.as_secs_f64()).exp();
    previous + weight * (rate - previous)
}

#[cfg(test)]
mod tests {
    use super::smoothed_rate;

    #[test]
    fn the_rate_shown_is_smoothed_not_one_window_alone() {
        // Batches fall unevenly into one-second windows: 1000, 3000, 1000, 3000, ...
        let mut rate = 0.0;
        let mut shown = Vec::new();
        for i in 0..20 {
            let window = if i % 2 == 0 { 1000.0 } else { 3000.0 };
            rate = smoothed_rate(rate, window, 1.0);
            shown.push(rate);
        }
        let last = &shown[10..];
        let (low, high) = last
            .iter()
            .fold((f64::MAX, f64::MIN), |(l, h), r| (l.min(*r), h.max(*r)));
        assert!(
            low > 1600.0 && high < 2400.0,
            "settles near the mean: {last:?}"
        );
        // A real change shows within seconds.
        for _ in 0..15 {
            rate = smoothed_rate(rate, 10_000.0, 1.0);
        }
        assert!(rate > 9000.0, "{rate}");
    }
}
