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

use mirador_proto::sync::Locked;

use crate::event::ScoredRecord;

/// Records a target refused for good, by their index in the batch, with the target's
/// reason. They go to the dead letter as `sink_rejected` instead of being written again.
pub type Refused = Vec<(usize, String)>;

/// Somewhere records are written. `write` returns once the whole batch is durable there
/// (or as durable as the target makes it), less the records the target refused for good;
/// only then are the records acknowledged. An `Err` means the target failed: the whole
/// batch is written again.
pub trait RecordSink<T>: Send + Sync + 'static {
    fn write<'a>(
        &'a self,
        batch: &'a [T],
        context: &'a EncodeContext,
    ) -> BoxFuture<'a, Result<Refused, StageError>>;
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
    ) -> BoxFuture<'a, Result<Refused, StageError>> {
        Box::pin(async move {
            if matches!(self, JsonlTarget::Null) {
                return Ok(Refused::new());
            }
            let now = crate::event::format_millis(chrono::Utc::now().timestamp_millis());
            let mut buffer = Vec::with_capacity(batch.len() * 512);
            for record in batch {
                record.write_line(context, &now, &mut buffer);
                buffer.push(b'\n');
            }
            // One write per batch to the page cache: short enough to do on the runtime.
            let written = match self {
                JsonlTarget::File(file) => file.locked().append(&buffer),
                JsonlTarget::Stdout => {
                    let mut stdout = std::io::stdout().lock();
                    stdout.write_all(&buffer).and_then(|()| stdout.flush())
                }
                JsonlTarget::Null => Ok(()),
            };
            written
                .map(|()| Refused::new())
                .map_err(|e| StageError::Unavailable {
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
        let mut histogram = self.histogram.locked();
        for value in micros {
            histogram.saturating_record(value.max(1));
        }
    }

    /// The count of values at or under each bound (µs), cumulative; the count of all; and
    /// their sum in µs (from the mean: the histogram keeps no exact sum).
    pub fn cumulative(&self, bounds_us: &[u64]) -> (Vec<u64>, u64, f64) {
        let histogram = self.histogram.locked();
        let counts = bounds_us
            .iter()
            .map(|bound| histogram.count_between(0, *bound))
            .collect();
        let count = histogram.len();
        (counts, count, histogram.mean() * count as f64)
    }

    /// Adds what `other` recorded to this one.
    pub fn absorb(&self, other: &LatencyRecorder) {
        let other = other.histogram.locked().clone();
        // Both have the same bounds: adding cannot fail.
        let _ = self.histogram.locked().add(&other);
    }

    /// (p50, p99, max) in microseconds, and the count.
    pub fn percentiles(&self) -> (u64, u64, u64, u64) {
        let histogram = self.histogram.locked();
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
        let mut counts = self.0.locked();
        for reason in reasons {
            *counts.entry(reason).or_default() += 1;
        }
    }

    pub fn snapshot(&self) -> BTreeMap<ReasonCode, u64> {
        self.0.locked().clone()
    }
}

/// What a sink observes of the records it delivered: latency for scored records, reasons
/// for dead letters.
pub trait SinkObserver<T>: Send + Sync + 'static {
    fn observe(&self, delivered: &mut dyn Iterator<Item = &T>);
}

impl SinkObserver<ScoredRecord> for LatencyRecorder {
    fn observe(&self, delivered: &mut dyn Iterator<Item = &ScoredRecord>) {
        let now = std::time::Instant::now();
        self.record_batch(
            delivered.map(|r| now.saturating_duration_since(r.origin.read_at).as_micros() as u64),
        );
    }
}

impl SinkObserver<mirador_actors::DeadLetter> for ReasonCounts {
    fn observe(&self, delivered: &mut dyn Iterator<Item = &mirador_actors::DeadLetter>) {
        self.add(delivered.map(|d| d.reason));
    }
}

/// Writes a batch to every target of the sink, then acknowledges its records. A record a
/// target refused for good goes to the dead letter as `sink_rejected` (the dead letter's
/// own sink, having nowhere further to send one, logs it as an error and drops it).
pub struct SinkStage<T> {
    name: &'static str,
    targets: Vec<Arc<dyn RecordSink<T>>>,
    context: EncodeContext,
    tracker: Arc<CheckpointTracker>,
    observer: Arc<dyn SinkObserver<T>>,
    last_resort: bool,
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
            last_resort: false,
        }
    }

    /// The dead letter's sink: a record its targets refuse has nowhere further to go.
    pub fn last_resort(mut self) -> Self {
        self.last_resort = true;
        self
    }
}

impl<T: Traced + Send + Sync + 'static> Stage for SinkStage<T> {
    type In = T;
    type Out = ();

    fn name(&self) -> &'static str {
        self.name
    }

    async fn handle(&mut self, batch: &[T], out: &mut Output<()>) -> Result<(), StageError> {
        // Targets are written one after the other: a retried batch rewrites them all,
        // which idempotent targets absorb and append-only ones bound by the batch.
        let mut refused = BTreeMap::new();
        for target in &self.targets {
            for (index, message) in target.write(batch, &self.context).await? {
                refused.entry(index).or_insert(message);
            }
        }
        let delivered = || {
            batch
                .iter()
                .enumerate()
                .filter(|(index, _)| !refused.contains_key(index))
                .map(|(_, record)| record)
        };
        self.observer.observe(&mut delivered());
        self.tracker
            .ack_events(delivered().map(|r| (r.origin().ack, r.event_time_ms())));
        for (index, message) in refused {
            let Some(record) = batch.get(index) else {
                continue;
            };
            if self.last_resort {
                tracing::error!(stage = self.name, offset = record.origin().position.offset,
                    %message, "the dead letter's sink refused a record: it is dropped");
                self.tracker.ack([record.origin().ack]);
            } else {
                out.reject(
                    self.name,
                    record.origin(),
                    ReasonCode::SinkRejected,
                    message,
                );
            }
        }
        Ok(())
    }
}
