//! Sinks: where scored records and dead letters are written. A record is acknowledged to
//! its partition's checkpoint tracker only after the write that holds it returned.

pub mod json;
mod message;

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::{Arc, Mutex};

use futures::future::BoxFuture;
use hdrhistogram::Histogram;
use mirador_actors::{CheckpointTracker, Output, ReasonCode, Stage, StageError, Traced};

pub use crate::file::JsonlFile;
pub use json::{EncodeContext, JsonLine};
pub use message::MessageRecord;

use crate::event::ScoredRecord;

/// Somewhere records are written. `write` returns once the whole batch is durable there
/// (or as durable as the target makes it); only then are the records acknowledged.
pub trait RecordSink<T>: Send + Sync + 'static {
    fn write<'a>(
        &'a self,
        batch: &'a [T],
        context: &'a EncodeContext,
    ) -> BoxFuture<'a, Result<(), StageError>>;
}

/// JSON lines in a file or on standard output, or nowhere.
#[derive(Clone)]
pub enum JsonlTarget {
    File(Arc<Mutex<JsonlFile>>),
    Stdout,
    /// Counts and drops; for benchmarks.
    Null,
}

impl<T: JsonLine + Send + Sync + 'static> RecordSink<T> for JsonlTarget {
    fn write<'a>(
        &'a self,
        batch: &'a [T],
        context: &'a EncodeContext,
    ) -> BoxFuture<'a, Result<(), StageError>> {
        Box::pin(async move {
            if matches!(self, JsonlTarget::Null) {
                return Ok(());
            }
            let now = crate::event::format_millis(chrono::Utc::now().timestamp_millis());
            let mut buffer = Vec::with_capacity(batch.len() * 512);
            for record in batch {
                record.write_line(context, &now, &mut buffer);
                buffer.push(b'\n');
            }
            // One write per batch to the page cache: short enough to do on the runtime.
            let written = match self {
                JsonlTarget::File(file) => file
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .append(&buffer),
                JsonlTarget::Stdout => {
                    let mut stdout = std::io::stdout().lock();
                    stdout.write_all(&buffer).and_then(|()| stdout.flush())
                }
                JsonlTarget::Null => Ok(()),
            };
            written.map_err(|e| StageError::Unavailable {
                service: "file sink",
                message: e.to_string(),
            })
        })
    }
}

/// Read-to-sink latency of scored records, in microseconds, shared by all partitions.
pub struct LatencyRecorder {
    histogram: Mutex<Histogram<u64>>,
}

impl Default for LatencyRecorder {
    fn default() -> Self {
        LatencyRecorder {
            histogram: Mutex::new(
                Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds"),
            ),
        }
    }
}

impl LatencyRecorder {
    pub fn record_batch(&self, micros: impl Iterator<Item = u64>) {
        let mut histogram = self.histogram.lock().unwrap_or_else(|p| p.into_inner());
        for value in micros {
            histogram.saturating_record(value.max(1));
        }
    }

    /// (p50, p99, max) in microseconds, and the count.
    pub fn percentiles(&self) -> (u64, u64, u64, u64) {
        let histogram = self.histogram.lock().unwrap_or_else(|p| p.into_inner());
        (
            histogram.value_at_quantile(0.5),
            histogram.value_at_quantile(0.99),
            histogram.max(),
            histogram.len(),
        )
    }
}

/// Dead letters counted by reason, shared by all partitions.
#[derive(Default)]
pub struct ReasonCounts(Mutex<BTreeMap<ReasonCode, u64>>);

impl ReasonCounts {
    pub fn add(&self, reasons: impl Iterator<Item = ReasonCode>) {
        let mut counts = self.0.lock().unwrap_or_else(|p| p.into_inner());
        for reason in reasons {
            *counts.entry(reason).or_default() += 1;
        }
    }

    pub fn snapshot(&self) -> BTreeMap<ReasonCode, u64> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// What a sink observes besides writing: latency for scored records, reasons for dead
/// letters.
pub trait SinkObserver<T>: Send + Sync + 'static {
    fn observe(&self, batch: &[T]);
}

impl SinkObserver<ScoredRecord> for LatencyRecorder {
    fn observe(&self, batch: &[ScoredRecord]) {
        let now = std::time::Instant::now();
        self.record_batch(
            batch
                .iter()
                .map(|r| now.saturating_duration_since(r.origin.read_at).as_micros() as u64),
        );
    }
}

impl SinkObserver<mirador_actors::DeadLetter> for ReasonCounts {
    fn observe(&self, batch: &[mirador_actors::DeadLetter]) {
        self.add(batch.iter().map(|d| d.reason));
    }
}

/// Writes a batch to every target of the sink, then acknowledges its records.
pub struct SinkStage<T> {
    name: &'static str,
    targets: Vec<Arc<dyn RecordSink<T>>>,
    context: EncodeContext,
    tracker: Arc<CheckpointTracker>,
    observer: Arc<dyn SinkObserver<T>>,
}

impl<T> SinkStage<T> {
    pub fn new(
        name: &'static str,
        targets: Vec<Arc<dyn RecordSink<T>>>,
        context: EncodeContext,
        tracker: Arc<CheckpointTracker>,
        observer: Arc<dyn SinkObserver<T>>,
    ) -> Self {
        SinkStage {
            name,
            targets,
            context,
            tracker,
            observer,
        }
    }
}

impl<T: Traced + Send + Sync + 'static> Stage for SinkStage<T> {
    type In = T;
    type Out = ();

    fn name(&self) -> &'static str {
        self.name
    }

    async fn handle(&mut self, batch: &[T], _out: &mut Output<()>) -> Result<(), StageError> {
        // Targets are written one after the other: a retried batch rewrites them all,
        // which idempotent targets absorb and append-only ones bound by the batch.
        for target in &self.targets {
            target.write(batch, &self.context).await?;
        }
        self.observer.observe(batch);
        self.tracker.ack(batch.iter().map(|r| r.origin().ack));
        Ok(())
    }
}
