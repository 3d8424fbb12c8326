//! What an executor shows Prometheus (`mirador executor --metrics-listen`), read from its
//! partitions, pipelines and model batchers when scraped: the stages count per batch, so
//! a scrape costs the node nothing between scrapes.
//!
//! Labels are few and bounded: pipeline, partition, stage, reason, model. A partition that
//! ran to its end here stays in the counters (as `running` 0) while the agent keeps its
//! last snapshot; one that moved away leaves them.

use std::collections::BTreeMap;

use mirador_actors::{PipelineSnapshot, ReasonCode};
use mirador_proto::metrics::{encode, Family};

use crate::infer::BatcherSnapshot;

/// What an executor shows, gathered by [`crate::agent::ExecutorAgent::metrics`].
#[derive(Debug, Default)]
pub struct MetricsView {
    pub executor: String,
    pub region: String,
    pub slots: u32,
    pub partitions: Vec<PartitionMetrics>,
    /// By pipeline name: what its partitions here share.
    pub pipelines: BTreeMap<String, PipelineCounters>,
    pub models: Vec<ModelMetrics>,
}

/// One partition here, running or run to its end.
#[derive(Debug)]
pub struct PartitionMetrics {
    pub snapshot: PipelineSnapshot,
    pub running: bool,
    /// The newest checkpoint saved, and the newest the coordinators accepted.
    pub checkpoint: Option<u64>,
    pub committed: Option<u64>,
    pub lag: Option<u64>,
    /// Under a spec's `slo:`: (target, measured, within the target), in ms.
    pub slo: Option<(u64, u64, u64)>,
}

/// The counters the partitions of one pipeline share here, from its start on this
/// executor (kept when its last partition here stops).
#[derive(Debug, Default, Clone)]
pub struct PipelineCounters {
    pub reasons: BTreeMap<ReasonCode, u64>,
    pub cache_hits: u64,
    pub cache_misses: u64,
    /// Bytes held by the feature cache now.
    pub cache_bytes: u64,
    /// Read-to-sink latency: the count at or under each of [`LATENCY_BOUNDS`].
    pub latency_buckets: Vec<u64>,
    pub latency_count: u64,
    pub latency_sum_secs: f64,
}

/// A model's batcher.
#[derive(Debug)]
pub struct ModelMetrics {
    pub name: String,
    pub version: String,
    pub device: String,
    pub stats: BatcherSnapshot,
}

/// Data freshness: ms from the newest event time committed (ms since the Unix epoch) to
/// now; none before the first.
pub fn freshness_ms(newest_event_ms: Option<i64>) -> Option<u64> {
    let now = chrono::Utc::now().timestamp_millis();
    newest_event_ms.map(|event| now.saturating_sub(event).max(0) as u64)
}

/// [`LATENCY_BOUNDS`] in microseconds, as the latency recorder counts.
pub fn latency_bounds_us() -> Vec<u64> {
    LATENCY_BOUNDS.iter().map(|s| (s * 1e6) as u64).collect()
}

/// Upper bounds of the read-to-sink latency buckets, in seconds.
pub const LATENCY_BOUNDS: [f64; 14] = [
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// The text Prometheus reads, from a view of the executor.
pub fn render(view: &MetricsView) -> String {
    let mut families = Vec::new();
    families.extend(executor(view));
    families.extend(stages(&view.partitions));
    families.extend(partitions(&view.partitions));
    families.extend(pipelines(view));
    families.extend(models(view));
    encode(families)
}

fn executor(view: &MetricsView) -> Vec<Family> {
    let labels = [
        ("executor", view.executor.as_str()),
        ("region", view.region.as_str()),
    ];
    let mut slots = Family::gauge(
        "mirador_executor_slots",
        "Partitions this executor runs at most.",
    );
    slots.add(&labels, f64::from(view.slots));
    let mut running = Family::gauge(
        "mirador_executor_partitions",
        "Partitions running on this executor now.",
    );
    running.add(
        &labels,
        view.partitions.iter().filter(|p| p.running).count() as f64,
    );
    vec![slots, running]
}

fn stages(partitions: &[PartitionMetrics]) -> Vec<Family> {
    type Read = fn(&mirador_actors::StageSnapshot) -> f64;
    let counters: [(&str, &str, Read); 8] = [
        (
            "mirador_stage_batches_total",
            "Batches a stage handled.",
            |s| s.batches as f64,
        ),
        (
            "mirador_stage_records_in_total",
            "Records a stage took in.",
            |s| s.records_in as f64,
        ),
        (
            "mirador_stage_records_out_total",
            "Records a stage passed on (for a sink: wrote).",
            |s| s.records_out as f64,
        ),
        (
            "mirador_stage_dead_lettered_total",
            "Records a stage sent to the dead letter.",
            |s| s.dead_lettered as f64,
        ),
        (
            "mirador_stage_restarts_total",
            "Times a stage was restarted after a failure.",
            |s| s.restarts as f64,
        ),
        (
            "mirador_stage_retries_total",
            "Batches a stage tried again while an outside service was unavailable.",
            |s| s.retries as f64,
        ),
        (
            "mirador_stage_busy_seconds_total",
            "Time a stage spent handling batches.",
            |s| s.busy_ms as f64 / 1000.0,
        ),
        (
            "mirador_stage_blocked_seconds_total",
            "Time a stage waited for room in its output link: the backpressure it felt.",
            |s| s.blocked_ms as f64 / 1000.0,
        ),
    ];
    let gauges: [(&str, &str, Read); 2] = [
        (
            "mirador_stage_queue_batches",
            "Batches waiting in a stage's input link.",
            |s| s.queue_depth as f64,
        ),
        (
            "mirador_stage_queue_capacity_batches",
            "Batches a stage's input link holds at most.",
            |s| s.queue_capacity as f64,
        ),
    ];
    let mut families: Vec<(Family, Read)> = counters
        .iter()
        .map(|(name, help, read)| (Family::counter(name, help), *read))
        .chain(
            gauges
                .iter()
                .map(|(name, help, read)| (Family::gauge(name, help), *read)),
        )
        .collect();
    for p in partitions {
        let partition = p.snapshot.partition.to_string();
        for stage in &p.snapshot.stages {
            let labels = [
                ("pipeline", p.snapshot.name.as_str()),
                ("partition", partition.as_str()),
                ("stage", stage.name.as_str()),
            ];
            for (family, read) in &mut families {
                family.add(&labels, read(stage));
            }
        }
    }
    families.into_iter().map(|(family, _)| family).collect()
}

fn partitions(partitions: &[PartitionMetrics]) -> Vec<Family> {
    let mut running = Family::gauge(
        "mirador_partition_running",
        "1 for a partition running here, 0 for one that ran to its end here.",
    );
    let mut generations = Family::counter(
        "mirador_partition_generation_restarts_total",
        "Times a partition's whole pipeline was rebuilt from its checkpoint.",
    );
    let mut checkpoint = Family::gauge(
        "mirador_partition_checkpoint_offset",
        "The newest checkpoint of a partition: everything before it is in a sink or the dead letter.",
    );
    let mut committed = Family::gauge(
        "mirador_partition_committed_offset",
        "The newest checkpoint the coordinators accepted.",
    );
    let mut in_flight = Family::gauge(
        "mirador_partition_in_flight_records",
        "Records read and not yet in a sink or the dead letter.",
    );
    let mut system_lag = Family::gauge(
        "mirador_partition_system_lag_seconds",
        "The longest time a record of the partition has waited unprocessed (age of its oldest batch in flight).",
    );
    let mut lag = Family::gauge(
        "mirador_partition_lag_records",
        "Records between the partition's checkpoint and the end of its source.",
    );
    let mut freshness = Family::gauge(
        "mirador_partition_data_freshness_seconds",
        "Time since the newest event time among a running partition's committed records: how far behind real time its output is.",
    );
    let mut slo_target = Family::gauge(
        "mirador_slo_freshness_target_seconds",
        "The spec's freshness target: at most this, 90 % of the time.",
    );
    let mut slo_measured = Family::counter(
        "mirador_slo_freshness_measured_seconds_total",
        "Time a partition's freshness was measured against its target here.",
    );
    let mut slo_good = Family::counter(
        "mirador_slo_freshness_good_seconds_total",
        "Time a partition's freshness was within its target here.",
    );
    for p in partitions {
        let number = p.snapshot.partition.to_string();
        let labels = [
            ("pipeline", p.snapshot.name.as_str()),
            ("partition", number.as_str()),
        ];
        running.add(&labels, if p.running { 1.0 } else { 0.0 });
        generations.add(&labels, p.snapshot.generation_restarts as f64);
        if let Some(offset) = p.checkpoint {
            checkpoint.add(&labels, offset as f64);
        }
        if let Some(offset) = p.committed {
            committed.add(&labels, offset as f64);
        }
        in_flight.add(&labels, p.snapshot.in_flight as f64);
        system_lag.add(&labels, p.snapshot.oldest_pending_ms as f64 / 1000.0);
        if let Some(records) = p.lag {
            lag.add(&labels, records as f64);
        }
        if let (true, Some(ms)) = (p.running, freshness_ms(p.snapshot.newest_event_ms)) {
            freshness.add(&labels, ms as f64 / 1000.0);
        }
        if let Some((target, measured, good)) = p.slo {
            slo_target.add(&labels, target as f64 / 1000.0);
            slo_measured.add(&labels, measured as f64 / 1000.0);
            slo_good.add(&labels, good as f64 / 1000.0);
        }
    }
    vec![
        running,
        generations,
        checkpoint,
        committed,
        in_flight,
        system_lag,
        lag,
        freshness,
        slo_target,
        slo_measured,
        slo_good,
    ]
}

fn pipelines(view: &MetricsView) -> Vec<Family> {
    let mut dead = Family::counter(
        "mirador_dead_letters_total",
        "Records written to the dead letter, by reason.",
    );
    let mut hits = Family::counter(
        "mirador_cache_hits_total",
        "Feature lookups answered by the executor's cache.",
    );
    let mut misses = Family::counter(
        "mirador_cache_misses_total",
        "Feature lookups the cache sent on to the feature store.",
    );
    let mut bytes = Family::gauge(
        "mirador_cache_bytes",
        "Bytes the feature cache holds now, by its own account.",
    );
    let mut latency = Family::histogram(
        "mirador_sink_latency_seconds",
        "Time from a record's read to its write in the sink.",
    );
    for (pipeline, counters) in &view.pipelines {
        for (reason, count) in &counters.reasons {
            dead.add(
                &[("pipeline", pipeline.as_str()), ("reason", reason.as_str())],
                *count as f64,
            );
        }
        let labels = [("pipeline", pipeline.as_str())];
        hits.add(&labels, counters.cache_hits as f64);
        misses.add(&labels, counters.cache_misses as f64);
        bytes.add(&labels, counters.cache_bytes as f64);
        let buckets: Vec<(f64, u64)> = LATENCY_BOUNDS
            .iter()
            .zip(&counters.latency_buckets)
            .map(|(bound, count)| (*bound, *count))
            .collect();
        latency.add_histogram(
            &labels,
            &buckets,
            counters.latency_count,
            counters.latency_sum_secs,
        );
    }
    vec![dead, hits, misses, bytes, latency]
}

fn models(view: &MetricsView) -> Vec<Family> {
    let mut passes = Family::counter(
        "mirador_inference_passes_total",
        "Forward passes of a model: batches scored together.",
    );
    let mut rows = Family::counter(
        "mirador_inference_rows_total",
        "Rows scored by a model; over passes, the mean inference batch size.",
    );
    let mut forward = Family::counter(
        "mirador_inference_forward_seconds_total",
        "Time a model spent in forward passes.",
    );
    let mut largest = Family::gauge(
        "mirador_inference_largest_pass_rows",
        "The largest inference batch so far.",
    );
    let mut wait = Family::gauge(
        "mirador_inference_longest_queue_wait_seconds",
        "The longest time a request waited for its forward pass to start.",
    );
    for model in &view.models {
        let labels = [
            ("model", model.name.as_str()),
            ("version", model.version.as_str()),
            ("device", model.device.as_str()),
        ];
        let s = &model.stats;
        passes.add(&labels, s.passes as f64);
        rows.add(&labels, s.rows as f64);
        forward.add(&labels, s.forward_ms as f64 / 1000.0);
        largest.add(&labels, s.largest_pass as f64);
        wait.add(&labels, s.longest_wait_us as f64 / 1e6);
    }
    vec![passes, rows, forward, largest, wait]
}
