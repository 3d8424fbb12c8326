//! The checker: every acknowledged input reconciled against the sink and the dead
//! letter by its (partition, offset), which scored records carry as `source` and dead
//! letters as headers.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde_json::Value;

use super::load::Sent;
use crate::services::read_topic;

#[derive(Debug, Default, Clone)]
pub struct Reconciled {
    pub acknowledged: usize,
    pub poison: usize,
    /// Acknowledged inputs found neither in the sink nor in the dead letter.
    pub lost: usize,
    /// Outputs beyond the first for an input, sink and dead letter together.
    pub duplicates: usize,
    /// The widest span of offsets written twice, in any one partition.
    pub largest_duplicate_range: i64,
    /// Distinct inputs in the dead letter.
    pub dead_lettered: usize,
    /// The dead letter holds exactly the poison inputs, and the sink none of them.
    pub dead_letter_is_poison: bool,
    /// Outputs of inputs that were never acknowledged (a send that failed after it was
    /// written): not a fault, reported.
    pub unacknowledged_outputs: usize,
    /// Sink time minus event time, 99th percentile, in ms.
    pub p99_ms: u64,
    /// The first lost inputs, for the report.
    pub lost_sample: Vec<(i32, i64)>,
}

fn position(value: &Value) -> Option<(i32, i64)> {
    let source = &value["source"];
    Some((
        source["partition"].as_i64()? as i32,
        source["offset"].as_i64()?,
    ))
}

fn latency_ms(value: &Value) -> Option<i64> {
    let event =
        chrono::DateTime::parse_from_rfc3339(value["event"]["event_time"].as_str()?).ok()?;
    let done = chrono::DateTime::parse_from_rfc3339(value["processed_at"].as_str()?).ok()?;
    Some((done - event).num_milliseconds())
}

/// Reads the sink (`scored`, `partitions` partitions) and the dead letter
/// (`dead-letter`, one partition) to their ends and reconciles them with `sent`.
pub fn reconcile(brokers: &str, sent: &[Sent], partitions: i32) -> Reconciled {
    let mut outputs: HashMap<(i32, i64), usize> = HashMap::new();
    let mut scored_positions = HashSet::new();
    let mut latencies = Vec::new();
    for (value, _) in read_topic(brokers, "scored", partitions) {
        let Ok(record) = serde_json::from_slice::<Value>(&value) else {
            continue;
        };
        if let Some(at) = position(&record) {
            *outputs.entry(at).or_default() += 1;
            scored_positions.insert(at);
        }
        if let Some(ms) = latency_ms(&record) {
            latencies.push(ms.max(0) as u64);
        }
    }
    let mut dead = HashSet::new();
    for (_, headers) in read_topic(brokers, "dead-letter", 1) {
        let at = (
            headers.get("partition").and_then(|p| p.parse().ok()),
            headers.get("offset").and_then(|o| o.parse().ok()),
        );
        if let (Some(partition), Some(offset)) = at {
            *outputs.entry((partition, offset)).or_default() += 1;
            dead.insert((partition, offset));
        }
    }
    let acked: HashSet<(i32, i64)> = sent.iter().map(|s| (s.partition, s.offset)).collect();
    let poison: HashSet<(i32, i64)> = sent
        .iter()
        .filter(|s| s.poison)
        .map(|s| (s.partition, s.offset))
        .collect();
    let mut lost: Vec<(i32, i64)> = acked
        .iter()
        .filter(|at| !outputs.contains_key(at))
        .copied()
        .collect();
    lost.sort();
    let duplicates = outputs.values().map(|n| n - 1).sum();
    let mut twice: BTreeMap<i32, (i64, i64)> = BTreeMap::new();
    for (&(partition, offset), &n) in &outputs {
        if n > 1 {
            let span = twice.entry(partition).or_insert((offset, offset));
            span.0 = span.0.min(offset);
            span.1 = span.1.max(offset);
        }
    }
    latencies.sort_unstable();
    let p99_ms = latencies
        .get((latencies.len() * 99 / 100).min(latencies.len().saturating_sub(1)))
        .copied()
        .unwrap_or_default();
    Reconciled {
        acknowledged: acked.len(),
        poison: poison.len(),
        lost: lost.len(),
        duplicates,
        largest_duplicate_range: twice.values().map(|(a, b)| b - a + 1).max().unwrap_or(0),
        dead_lettered: dead.len(),
        dead_letter_is_poison: dead
            .iter()
            .filter(|at| acked.contains(at))
            .copied()
            .collect::<HashSet<_>>()
            == poison
            && poison.is_disjoint(&scored_positions),
        unacknowledged_outputs: outputs.keys().filter(|at| !acked.contains(at)).count(),
        p99_ms,
        lost_sample: lost.into_iter().take(10).collect(),
    }
}
