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
    links: Mutex<StageLinks>,
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
        }
    }
}
