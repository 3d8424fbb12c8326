use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde::Serialize;

use crate::link::LinkGauge;

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

/// The offset that the next record to arrive at a source will have (a Kafka partition's
/// high watermark, a bounded generator's last event + 1), set by the source as it learns
/// it. A partition's lag is this end minus its checkpoint.
#[derive(Debug, Default)]
pub struct SourceEnd {
    /// The end + 1; 0 while unknown.
    end_plus_one: AtomicU64,
}

impl SourceEnd {
    pub fn set(&self, end: u64) {
        self.end_plus_one
            .store(end.saturating_add(1), Ordering::Relaxed);
    }

    pub fn get(&self) -> Option<u64> {
        self.end_plus_one.load(Ordering::Relaxed).checked_sub(1)
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
    /// See [`SourceEnd`]; `None` for other stages and for sources that cannot tell.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source_end: Option<u64>,
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
        let mut links = self.links.lock().unwrap_or_else(|p| p.into_inner());
        links.input = input;
        links.output = output;
    }

    pub fn snapshot(&self, name: &str) -> StageSnapshot {
        let links = self.links.lock().unwrap_or_else(|p| p.into_inner());
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
            source_end: self.source_end.get(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_source_end_is_unknown_until_set() {
        let end = SourceEnd::default();
        assert_eq!(end.get(), None);
        end.set(0);
        assert_eq!(end.get(), Some(0));
        end.set(1234);
        assert_eq!(end.get(), Some(1234));
        end.set(u64::MAX);
        assert_eq!(
            end.get(),
            Some(u64::MAX - 1),
            "saturates rather than wrapping"
        );
    }
}
