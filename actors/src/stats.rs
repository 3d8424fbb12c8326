use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde::Serialize;

use crate::link::LinkGauge;
use mirador_proto::sync::Locked;

/// Live counters of one stage, shared by every incarnation of it. Updated once per batch.
#[derive(Debug, Default)]
pub struct StageStats {
    pub batches: AtomicU64,
    pub records_in: AtomicU64,
    pub records_out: AtomicU64,
    pub dead_lettered: AtomicU64,
    pub restarts: AtomicU64,
    /// Batches tried again because an outside service was unavailable.
    pub retries: AtomicU64,
    pub busy_ns: AtomicU64,
    /// Where the source's input ends, for a source stage that knows it.
    pub source_end: Arc<SourceEnd>,
    links: Mutex<StageLinks>,
}

/// What a source can tell of its input: the offset it started reading at, and the offset
/// that the next record to arrive will have (for a Kafka partition, the first offset it
/// found and the high watermark; 0 and the event count for a bounded generator). Set by
/// the source as it learns them.
#[derive(Debug, Default)]
pub struct SourceEnd {
    first: AtomicU64,
    /// The end + 1; 0 while unknown.
    end_plus_one: AtomicU64,
}

impl SourceEnd {
    /// The first offset the source read (records before it are gone from the input).
    pub fn set_first(&self, first: u64) {
        self.first.store(first, Ordering::Relaxed);
    }

    pub fn set_end(&self, end: u64) {
        self.end_plus_one
            .store(end.saturating_add(1), Ordering::Relaxed);
    }

    /// The end, once known.
    pub fn end(&self) -> Option<u64> {
        self.end_plus_one.load(Ordering::Relaxed).checked_sub(1)
    }

    /// The records between a partition's checkpoint (none: the start of the input) and
    /// the end, once the end is known. Records gone from the input are not counted.
    pub fn lag(&self, checkpoint: Option<u64>) -> Option<u64> {
        let from = checkpoint
            .unwrap_or(0)
            .max(self.first.load(Ordering::Relaxed));
        self.end().map(|end| end.saturating_sub(from))
    }
}

#[derive(Debug, Default)]
struct StageLinks {
    input: Option<Arc<LinkGauge>>,
    output: Option<Arc<LinkGauge>>,
}

/// A point-in-time view of a stage, for tests, progress lines and the admin API.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct StageSnapshot {
    pub name: String,
    pub batches: u64,
    pub records_in: u64,
    pub records_out: u64,
    pub dead_lettered: u64,
    pub restarts: u64,
    pub retries: u64,
    pub busy_ms: u64,
    /// Batches waiting in the stage's input link.
    pub queue_depth: usize,
    pub queue_capacity: usize,
    /// Time this stage waited for room downstream: the backpressure it felt.
    pub blocked_ms: u64,
}

impl StageStats {
    pub fn count_batch(&self, records_in: usize, records_out: usize, dead: usize, busy_ns: u64) {
        self.batches.fetch_add(1, Ordering::Relaxed);
        self.records_in
            .fetch_add(records_in as u64, Ordering::Relaxed);
        self.records_out
            .fetch_add(records_out as u64, Ordering::Relaxed);
        self.dead_lettered.fetch_add(dead as u64, Ordering::Relaxed);
        self.busy_ns.fetch_add(busy_ns, Ordering::Relaxed);
    }

    /// Points the queue gauges at the links of the current generation.
    pub fn attach(&self, input: Option<Arc<LinkGauge>>, output: Option<Arc<LinkGauge>>) {
        let mut links = self.links.locked();
        links.input = input;
        links.output = output;
    }

    pub fn snapshot(&self, name: &str) -> StageSnapshot {
        let links = self.links.locked();
        let input = links.input.as_ref();
        StageSnapshot {
            name: name.to_string(),
            batches: self.batches.load(Ordering::Relaxed),
            records_in: self.records_in.load(Ordering::Relaxed),
            records_out: self.records_out.load(Ordering::Relaxed),
            dead_lettered: self.dead_lettered.load(Ordering::Relaxed),
            restarts: self.restarts.load(Ordering::Relaxed),
            retries: self.retries.load(Ordering::Relaxed),
            busy_ms: self.busy_ns.load(Ordering::Relaxed) / 1_000_000,
            queue_depth: input.map_or(0, |g| g.depth.load(Ordering::Relaxed)),
            queue_capacity: input.map_or(0, |g| g.capacity.load(Ordering::Relaxed)),
            blocked_ms: links
                .output
                .as_ref()
                .map_or(0, |g| g.blocked_ns.load(Ordering::Relaxed) / 1_000_000),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lag_counts_from_the_checkpoint_or_the_first_record_still_there() {
        let input = SourceEnd::default();
        assert_eq!(input.lag(Some(10)), None, "unknown until the source tells");
        input.set_end(1000);
        assert_eq!(input.end(), Some(1000));
        assert_eq!(input.lag(None), Some(1000));
        assert_eq!(input.lag(Some(400)), Some(600));
        assert_eq!(input.lag(Some(1000)), Some(0));
        // Retention removed the first 700: a partition that never checkpointed, or one
        // whose checkpoint is older, is 300 behind, not more.
        input.set_first(700);
        assert_eq!(input.lag(None), Some(300));
        assert_eq!(input.lag(Some(500)), Some(300));
        assert_eq!(input.lag(Some(900)), Some(100));
        // A checkpoint past a stale end is not behind.
        assert_eq!(input.lag(Some(1200)), Some(0));
    }
}
