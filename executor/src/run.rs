//! Runs a pipeline spec on this node, one partition pipeline per partition, with live
//! progress and a closing summary.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mirador_actors::{
    ExitStatus, PipelineArgs, PipelineHandle, PipelineSnapshot, ReasonCode, RestartPolicy,
};
use serde::Serialize;

use crate::checkpoint_store::FileCheckpointStore;
use crate::pipeline::{Counts, PartitionFactory, PipelineResources, StageId};
use crate::watch::{watch, Rate};

/// How long a run drains after SIGINT or SIGTERM before it gives up and exits non-zero:
/// below the 30 s that Docker and Kubernetes wait before they kill.
const DRAIN_GRACE: Duration = Duration::from_secs(25);

#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    /// Print a progress line this often; `None`: quiet.
    pub progress: Option<Duration>,
    pub policy: RestartPolicy,
}

/// How a run went.
#[derive(Clone, Debug, Serialize)]
pub struct RunReport {
    pub pipeline: String,
    pub events_in: u64,
    pub scored: u64,
    pub dead_lettered: BTreeMap<ReasonCode, u64>,
    pub elapsed_secs: f64,
    pub events_per_sec: f64,
    pub latency_p50_us: u64,
    pub latency_p99_us: u64,
    pub latency_max_us: u64,
    pub stage_restarts: u64,
    /// Batches tried again because an outside service was unavailable.
    pub stage_retries: u64,
    pub generation_restarts: u64,
    pub peak_rss_mb: f64,
    pub failures: Vec<String>,
}

impl RunReport {
    pub fn dead_lettered_total(&self) -> u64 {
        self.dead_lettered.values().sum()
    }

    pub fn succeeded(&self) -> bool {
        self.failures.is_empty()
    }

    /// The closing summary, for people.
    pub fn render(&self) -> String {
        let mut text = String::new();
        let line = |text: &mut String, key: &str, value: String| {
            text.push_str(&format!("  {key:<22} {value}\n"));
        };
        text.push_str(&format!("pipeline {}\n", self.pipeline));
        line(&mut text, "events in", self.events_in.to_string());
        line(&mut text, "scored", self.scored.to_string());
        line(
            &mut text,
            "dead-lettered",
            self.dead_lettered_total().to_string(),
        );
        for (reason, count) in &self.dead_lettered {
            line(&mut text, &format!("  {reason}"), count.to_string());
        }
        line(&mut text, "elapsed", format!("{:.2} s", self.elapsed_secs));
        line(
            &mut text,
            "throughput",
            format!("{:.0} events/s", self.events_per_sec),
        );
        line(
            &mut text,
            "latency read->sink",
            format!(
                "p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
                self.latency_p50_us as f64 / 1000.0,
                self.latency_p99_us as f64 / 1000.0,
                self.latency_max_us as f64 / 1000.0
            ),
        );
        line(
            &mut text,
            "restarts",
            format!(
                "{} stage, {} generation; {} batches retried",
                self.stage_restarts, self.generation_restarts, self.stage_retries
            ),
        );
        line(
            &mut text,
            "peak memory",
            format!("{:.0} MB", self.peak_rss_mb),
        );
        for failure in &self.failures {
            line(&mut text, "FAILED", failure.clone());
        }
        text
    }
}

/// Peak resident memory of this process, from /proc (0 where there is none).
pub fn peak_rss_mb() -> f64 {
    read_status_kb("VmHWM:") as f64 / 1024.0
}

/// Current resident memory of this process.
pub fn rss_mb() -> f64 {
    read_status_kb("VmRSS:") as f64 / 1024.0
}

fn read_status_kb(key: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// The partition pipelines of one spec, running.
pub struct PipelineRun {
    resources: Arc<PipelineResources>,
    handles: Vec<PipelineHandle>,
    started: Instant,
}

impl PipelineRun {
    pub async fn start(
        resources: Arc<PipelineResources>,
        options: &RunOptions,
    ) -> anyhow::Result<Self> {
        let spec = resources.spec.clone();
        let store = Arc::new(
            FileCheckpointStore::new(&spec.checkpoint.dir, &spec.name).map_err(|e| {
                anyhow::anyhow!("checkpoint.dir: {}: {e}", spec.checkpoint.dir.display())
            })?,
        );
        let policy = RestartPolicy {
            checkpoint_interval: spec.checkpoint_interval(),
            ..options.policy.clone()
        };
        let mut handles = Vec::new();
        for partition in 0..resources.partitions {
            let factory =
                PartitionFactory::new(resources.clone(), partition, policy.max_batch_attempts);
            let handle = PipelineHandle::spawn(PipelineArgs {
                name: spec.name.clone(),
                partition,
                factory: Arc::new(factory),
                store: store.clone(),
                policy: policy.clone(),
            })
            .await
            .map_err(|e| {
                anyhow::anyhow!(
                    "partition {partition} did not start: {e} (checkpoint {})",
                    store.path(partition).display()
                )
            })?;
            handles.push(handle);
        }
        Ok(PipelineRun {
            resources,
            handles,
            started: Instant::now(),
        })
    }

    pub fn snapshots(&self) -> Vec<PipelineSnapshot> {
        self.handles.iter().map(PipelineHandle::snapshot).collect()
    }

    pub fn is_finished(&self) -> bool {
        self.handles.iter().all(PipelineHandle::is_finished)
    }

    /// Stops reading; what is in flight is delivered.
    pub fn stop(&self) {
        for handle in &self.handles {
            handle.stop();
        }
    }

    /// The events read so far, and one line of live progress.
    pub fn progress_line(&self, rate: &mut Rate) -> (u64, String) {
        let snapshots = self.snapshots();
        let Counts {
            read: events_in,
            scored,
            ..
        } = Counts::of(&snapshots);
        let dead: u64 = self.resources.reasons.snapshot().values().sum();
        let rate = rate.update(events_in);
        // The source has no input queue.
        let queues: Vec<String> = StageId::ALL[1..]
            .iter()
            .map(|&stage| {
                let of = |s| stage.of(s).cloned().unwrap_or_default();
                let depth: usize = snapshots.iter().map(|s| of(s).queue_depth).sum();
                let capacity: usize = snapshots.iter().map(|s| of(s).queue_capacity).sum();
                format!("{} {depth}/{capacity}", stage.name())
            })
            .collect();
        let freshness = snapshots
            .iter()
            .map(|s| s.oldest_pending_ms)
            .max()
            .unwrap_or(0);
        let line = format!(
            "[{:>6.1}s] in {events_in} ({rate:.0}/s)  scored {scored}  dead {dead}  | queues {} | oldest in flight {freshness} ms | rss {:.0} MB",
            self.started.elapsed().as_secs_f64(),
            queues.join(", "),
            rss_mb(),
        );
        (events_in, line)
    }

    /// Waits for every partition to end (a bounded source exhausted, or a stop), printing
    /// progress as asked, and reports.
    pub async fn wait(self, options: &RunOptions) -> RunReport {
        let mut reporting = options.progress.map(|every| {
            let total = crate::progress::bounded_total(&self.resources.spec);
            (
                Rate::every(every),
                crate::progress::Progress::start(total, "events"),
            )
        });
        watch(
            Duration::from_millis(10),
            async || {
                if let Some((rate, progress)) = reporting.as_mut().filter(|(rate, _)| rate.due()) {
                    let (read, line) = self.progress_line(rate);
                    progress.show(read, || line);
                }
                self.is_finished()
            },
            || {
                eprintln!("interrupted: draining what is in flight");
                self.stop();
                Some(DRAIN_GRACE)
            },
        )
        .await;
        if let Some((_, progress)) = &reporting {
            progress.finish();
        }
        let drained = self.is_finished();
        let elapsed = self.started.elapsed();
        let snapshots = self.snapshots();
        let Counts {
            read: events_in,
            scored,
            ..
        } = Counts::of(&snapshots);
        let stage_restarts = snapshots
            .iter()
            .flat_map(|s| s.stages.iter().map(|stage| stage.restarts))
            .sum();
        let stage_retries = snapshots
            .iter()
            .flat_map(|s| s.stages.iter().map(|stage| stage.retries))
            .sum();
        let generation_restarts = snapshots.iter().map(|s| s.generation_restarts).sum();
        let mut failures = Vec::new();
        if drained {
            for handle in self.handles {
                let partition = handle.snapshot().partition;
                if let ExitStatus::Failed(reason) = handle.wait().await {
                    failures.push(format!("partition {partition}: {reason}"));
                }
            }
        } else {
            failures.push(format!(
                "the drain did not end within {} s: what was in flight is read again by the \
                 next run",
                DRAIN_GRACE.as_secs()
            ));
        }
        let (p50, p99, max, _) = self.resources.latency.percentiles();
        RunReport {
            pipeline: self.resources.spec.name.clone(),
            events_in,
            scored,
            dead_lettered: self.resources.reasons.snapshot(),
            elapsed_secs: elapsed.as_secs_f64(),
            events_per_sec: events_in as f64 / elapsed.as_secs_f64().max(1e-9),
            latency_p50_us: p50,
            latency_p99_us: p99,
            latency_max_us: max,
            stage_restarts,
            stage_retries,
            generation_restarts,
            peak_rss_mb: peak_rss_mb(),
            failures,
        }
    }
}

/// Runs `resources`' pipeline to its end.
pub async fn run_pipeline(
    resources: Arc<PipelineResources>,
    options: &RunOptions,
) -> anyhow::Result<RunReport> {
    let run = PipelineRun::start(resources, options).await?;
    Ok(run.wait(options).await)
}
