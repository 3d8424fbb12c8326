//! Checkpoints: a partition's position advances only past records that reached a sink or
//! the dead letter.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::record::Position;
use mirador_proto::sync::Locked;

/// Tracks the source batches of one partition that are still in flight.
///
/// The source opens a batch with its record count and the position to resume from once
/// the whole batch is done; sinks and the dead letter acknowledge records as they make
/// them durable, in any order. The committed position is the end of the longest prefix
/// of batches whose records are all acknowledged.
#[derive(Debug)]
pub struct CheckpointTracker {
    inner: Mutex<TrackerInner>,
}

#[derive(Debug)]
struct TrackerInner {
    /// Sequence number of `pending[0]`.
    front_seq: u64,
    pending: VecDeque<PendingBatch>,
    committed: Option<Position>,
    in_flight_records: usize,
    /// The newest event time among the records before `committed` (ms since the Unix
    /// epoch): the partition's data is fresh up to it.
    newest_committed_event_ms: Option<i64>,
}

#[derive(Debug)]
struct PendingBatch {
    remaining: usize,
    end: Position,
    opened_at: Instant,
    /// The newest event time acknowledged in this batch so far.
    newest_event_ms: Option<i64>,
}

impl CheckpointTracker {
    /// A tracker resuming after `committed` (none: from the source's beginning).
    pub fn new(committed: Option<Position>) -> Self {
        CheckpointTracker {
            inner: Mutex::new(TrackerInner {
                front_seq: 0,
                pending: VecDeque::new(),
                committed,
                in_flight_records: 0,
                newest_committed_event_ms: None,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, TrackerInner> {
        // The state stays consistent across a panic elsewhere: every method updates it
        // without calling out.
        self.inner.locked()
    }

    /// Opens a batch of `count` records (at least one) after which the source resumes at
    /// `end`. Returns the batch's sequence number, the `ack` of its records.
    pub fn open(&self, count: usize, end: Position) -> u64 {
        let mut inner = self.lock();
        let seq = inner.front_seq + inner.pending.len() as u64;
        inner.pending.push_back(PendingBatch {
            remaining: count,
            end,
            opened_at: Instant::now(),
            newest_event_ms: None,
        });
        inner.in_flight_records += count;
        if count == 0 {
            inner.advance();
        }
        seq
    }

    /// Acknowledges records by their batch sequence numbers. Consecutive equal numbers are
    /// counted together, so a sink passes its whole batch in one call.
    pub fn ack<I: IntoIterator<Item = u64>>(&self, acks: I) {
        self.ack_events(acks.into_iter().map(|seq| (seq, None)));
    }

    /// As [`CheckpointTracker::ack`], with each record's event time where it has one (a
    /// scored record; a dead letter has none): the data freshness follows the newest
    /// event time of the committed records.
    pub fn ack_events<I: IntoIterator<Item = (u64, Option<i64>)>>(&self, acks: I) {
        let mut inner = self.lock();
        let mut run: Option<(u64, usize, Option<i64>)> = None;
        for (seq, event_ms) in acks {
            match run {
                Some((current, n, newest)) if current == seq => {
                    run = Some((current, n + 1, newest.max(event_ms)));
                }
                Some((current, n, newest)) => {
                    inner.ack_run(current, n, newest);
                    run = Some((seq, 1, event_ms));
                }
                None => run = Some((seq, 1, event_ms)),
            }
        }
        if let Some((seq, n, newest)) = run {
            inner.ack_run(seq, n, newest);
        }
        inner.advance();
    }

    /// The position to resume from: everything before it is in a sink or the dead letter.
    pub fn committed(&self) -> Option<Position> {
        self.lock().committed
    }

    /// Records read but not yet acknowledged.
    pub fn in_flight(&self) -> usize {
        self.lock().in_flight_records
    }

    /// The newest event time among the committed records, ms since the Unix epoch:
    /// the partition's data freshness is the time since.
    pub fn newest_committed_event_ms(&self) -> Option<i64> {
        self.lock().newest_committed_event_ms
    }

    /// Age of the oldest batch not yet fully acknowledged: the partition's system lag.
    pub fn oldest_pending_age(&self) -> Duration {
        self.lock()
            .pending
            .front()
            .map(|batch| batch.opened_at.elapsed())
            .unwrap_or_default()
    }
}

impl TrackerInner {
    fn ack_run(&mut self, seq: u64, n: usize, newest_event_ms: Option<i64>) {
        let Some(index) = seq.checked_sub(self.front_seq) else {
            // A batch already committed: an acknowledgement from a generation that was
            // replaced. Nothing to do.
            return;
        };
        if let Some(batch) = self.pending.get_mut(index as usize) {
            let n = n.min(batch.remaining);
            batch.remaining -= n;
            self.in_flight_records -= n;
            batch.newest_event_ms = batch.newest_event_ms.max(newest_event_ms);
        }
    }

    fn advance(&mut self) {
        while let Some(front) = self.pending.front() {
            if front.remaining > 0 {
                break;
            }
            self.committed = Some(front.end);
            self.newest_committed_event_ms =
                self.newest_committed_event_ms.max(front.newest_event_ms);
            self.pending.pop_front();
            self.front_seq += 1;
        }
    }
}

/// Where committed positions are kept between runs.
pub trait CheckpointStore: Send + Sync + 'static {
    fn load(&self, partition: u32) -> std::io::Result<Option<Position>>;
    fn save(&self, position: Position) -> std::io::Result<()>;
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn pos(offset: u64) -> Position {
        Position {
            partition: 0,
            offset,
        }
    }

    #[test]
    fn commits_only_a_fully_acknowledged_prefix() {
        let tracker = CheckpointTracker::new(None);
        let a = tracker.open(2, pos(10));
        let b = tracker.open(1, pos(20));
        tracker.ack([b]);
        assert_eq!(tracker.committed(), None, "batch a is not done");
        tracker.ack([a]);
        assert_eq!(tracker.committed(), None, "one record of a is still out");
        tracker.ack([a]);
        assert_eq!(tracker.committed(), Some(pos(20)));
        assert_eq!(tracker.in_flight(), 0);
    }

    #[test]
    fn freshness_follows_the_newest_event_of_the_committed_records_only() {
        let tracker = CheckpointTracker::new(None);
        let a = tracker.open(2, pos(10));
        let b = tracker.open(1, pos(20));
        tracker.ack_events([(b, Some(9_000))]);
        assert_eq!(tracker.newest_committed_event_ms(), None, "b waits for a");
        tracker.ack_events([(a, Some(5_000)), (a, None)]);
        assert_eq!(tracker.committed(), Some(pos(20)));
        assert_eq!(tracker.newest_committed_event_ms(), Some(9_000));
        let c = tracker.open(1, pos(30));
        tracker.ack_events([(c, Some(7_000))]);
        assert_eq!(
            tracker.newest_committed_event_ms(),
            Some(9_000),
            "an older event later does not make the data older"
        );
    }

    #[test]
    fn starts_from_the_loaded_position() {
        let tracker = CheckpointTracker::new(Some(pos(7)));
        assert_eq!(tracker.committed(), Some(pos(7)));
        tracker.open(1, pos(9));
        assert_eq!(tracker.committed(), Some(pos(7)));
    }

    proptest! {
        #[test]
        fn committed_never_passes_an_unacknowledged_record(
            sizes in prop::collection::vec(1usize..5, 1..20),
            order_seed in any::<u64>(),
        ) {
            let tracker = CheckpointTracker::new(None);
            let mut acks = Vec::new();
            for (i, size) in sizes.iter().enumerate() {
                let seq = tracker.open(*size, pos((i as u64 + 1) * 10));
                acks.extend(std::iter::repeat_n(seq, *size));
            }
            // A deterministic shuffle driven by the seed.
            let mut state = order_seed | 1;
            for i in (1..acks.len()).rev() {
                state ^= state << 13; state ^= state >> 7; state ^= state << 17;
                acks.swap(i, (state % (i as u64 + 1)) as usize);
            }
            let mut done = vec![0usize; sizes.len()];
            let mut last = None;
            for seq in acks {
                tracker.ack([seq]);
                done[seq as usize] += 1;
                let prefix = done.iter().zip(&sizes).take_while(|(d, s)| d == s).count();
                let expected = (prefix > 0).then(|| pos(prefix as u64 * 10));
                let committed = tracker.committed();
                prop_assert_eq!(committed, expected);
                prop_assert!(committed >= last, "the checkpoint moved backwards");
                last = committed;
            }
            prop_assert_eq!(tracker.in_flight(), 0);
        }
    }
}
