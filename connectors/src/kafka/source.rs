//! One topic-partition, read from our checkpoint by a consumer on its own thread.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use mirador_actors::{Position, Source, SourceBatch, SourceEnd, StageError};
use mirador_proto::retry::Backoff;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::{Message, Offset, TopicPartitionList};

use super::{KafkaSourceSpec, QuietContext};
use crate::event::RawRecord;

/// Between polls while the consumer reports errors (this is the polling thread).
const CONSUMER_RETRY: Backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(1));

/// A consumer for `spec`, reporting through [`QuietContext`].
pub type QuietConsumer = BaseConsumer<QuietContext>;

/// How often the polling thread asks for the partition's high watermark: the end that the
/// partition's lag is measured against.
const WATERMARK_EVERY: Duration = Duration::from_secs(1);
/// How long it waits for it: the thread polls nothing meanwhile.
const WATERMARK_TIMEOUT: Duration = Duration::from_millis(200);

/// How long the polling thread gathers messages into one batch.
const BATCH_WAIT: Duration = Duration::from_millis(20);

/// How long a seek back (see [`Resume`]) may take.
const SEEK_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a resume waits for a first record, or the end, before it seeks back.
const RESUME_PATIENCE: Duration = Duration::from_millis(500);

/// A resume from a checkpoint that the broker has not yet shown it honours.
///
/// A fetch from an offset inside a record batch must return that batch (the client drops
/// the records before the offset asked for). tansu 0.6.0's in-memory storage returns the
/// batches that *start* at or after the offset instead, leaving out the rest of the batch
/// that holds it, or nothing at all when that batch is the partition's last. So until a
/// record at or before the resume point arrives, a first record past it, the end of the
/// partition or [`RESUME_PATIENCE`] without either sends the poller further back, doubling
/// the distance each time, and the records before the resume point are dropped. A broker that honours the fetch never
/// causes a seek; a gap that is really there (compaction) survives the seeks and is
/// reported.
#[derive(Debug)]
struct Resume {
    at: i64,
    /// How far before `at` the poller reads from now.
    back: i64,
    /// A record before `at` arrived: the broker's answer covers `at`.
    covered: bool,
    /// When reading began from where it is now.
    since: Instant,
}

/// What becomes of a record polled while a [`Resume`] is checked.
#[derive(Debug, PartialEq, Eq)]
enum Admit {
    /// It is at or after the resume point, which is now checked (or the end is the end).
    Take,
    /// It comes before the resume point: read again, not wanted.
    Drop,
    /// It is past the resume point and nothing before it came: read from `from` on.
    SeekBack { from: i64 },
}

impl Resume {
    /// The first distance a seek back goes.
    const FIRST_BACK: i64 = 64;

    fn new(at: i64) -> Self {
        Resume {
            at,
            back: 0,
            covered: false,
            since: Instant::now(),
        }
    }

    /// The record polled at `offset`, or the end of the partition (`None`), which is
    /// past the resume point as a record past it is.
    fn admit(&mut self, offset: Option<i64>) -> Admit {
        let past = offset.is_none_or(|offset| offset > self.at);
        if offset.is_some_and(|offset| offset < self.at) {
            self.covered = true;
            Admit::Drop
        } else if past && !self.covered && self.back < self.at {
            let back = (self.back * 2).max(Self::FIRST_BACK).min(self.at);
            Admit::SeekBack {
                from: self.at - back,
            }
        } else {
            Admit::Take
        }
    }

    /// The seek to `from` happened; `floor`: `from` is the log's start, nothing earlier
    /// is left to read.
    fn sought(&mut self, from: i64, floor: bool) {
        self.back = if floor { self.at } else { self.at - from };
        self.since = Instant::now();
    }

    /// Nothing arrived from where reading began for longer than [`RESUME_PATIENCE`].
    fn waited_too_long(&self) -> bool {
        !self.covered && self.since.elapsed() >= RESUME_PATIENCE
    }
}

enum Polled {
    /// (offset, payload) in offset order.
    Batch(Vec<(i64, Bytes)>),
    /// The end of the partition, under `stop_at_end`.
    End,
}

pub struct KafkaSource {
    partition: u32,
    batches: flume::Receiver<Polled>,
    stop: Arc<AtomicBool>,
}

impl KafkaSource {
    /// Starts the polling thread of `partition`, resuming at `resume` (the checkpoint);
    /// the partition's high watermark goes to `end` as the consumer learns it.
    pub fn start(
        spec: &KafkaSourceSpec,
        partition: u32,
        batch_records: usize,
        resume: Option<Position>,
        end: Arc<SourceEnd>,
    ) -> Result<Self, StageError> {
        let consumer: QuietConsumer = super::consumer_config(spec)
            .create_with_context(QuietContext)
            .map_err(|e| StageError::Fatal(format!("source.kafka: {e}")))?;
        let start = resume.map_or(Offset::Beginning, |p| Offset::Offset(p.offset as i64));
        let mut assignment = TopicPartitionList::new();
        assignment
            .add_partition_offset(&spec.topic, partition as i32, start)
            .and_then(|()| consumer.assign(&assignment))
            .map_err(|e| StageError::Fatal(format!("source.kafka: assign {partition}: {e}")))?;
        // Two batches ahead at most: the rest waits in the broker.
        let (tx, batches) = flume::bounded(2);
        let stop = Arc::new(AtomicBool::new(false));
        let poller = Poller {
            consumer,
            tx,
            stop: stop.clone(),
            batch_records,
            stop_at_end: spec.stop_at_end,
            topic: spec.topic.clone(),
            partition,
            expected: match start {
                Offset::Offset(offset) => Some(offset),
                _ => None,
            },
            resume: match start {
                Offset::Offset(offset) if offset > 0 => Some(Resume::new(offset)),
                _ => None,
            },
            floor: match start {
                Offset::Offset(offset) => offset,
                _ => 0,
            },
            end,
            watermark_at: None,
        };
        std::thread::Builder::new()
            .name(format!("kafka-{}-{partition}", spec.topic))
            .spawn(move || poller.run())
            .map_err(|e| StageError::internal(format!("cannot start the kafka thread: {e}")))?;
        Ok(KafkaSource {
            partition,
            batches,
            stop,
        })
    }
}

impl Drop for KafkaSource {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

impl Source for KafkaSource {
    type Out = RawRecord;

    fn name(&self) -> &'static str {
        "source"
    }

    async fn next_batch(&mut self) -> Result<Option<SourceBatch<RawRecord>>, StageError> {
        let polled = self
            .batches
            .recv_async()
            .await
            .map_err(|_| StageError::internal("the kafka polling thread stopped"))?;
        let messages = match polled {
            Polled::Batch(messages) => messages,
            Polled::End => return Ok(None),
        };
        let last = messages.last().map_or(0, |(offset, _)| *offset);
        let end = Position {
            partition: self.partition,
            offset: last as u64 + 1,
        };
        let read_at = Instant::now();
        let items = messages
            .into_iter()
            .map(|(offset, payload)| {
                RawRecord::read(self.partition, offset as u64, payload, read_at)
            })
            .collect();
        Ok(Some(SourceBatch { items, end }))
    }
}

struct Poller {
    consumer: QuietConsumer,
    tx: flume::Sender<Polled>,
    stop: Arc<AtomicBool>,
    batch_records: usize,
    stop_at_end: bool,
    topic: String,
    partition: u32,
    /// The offset the next message should have, once known.
    expected: Option<i64>,
    /// The checkpoint resumed from, until the broker has shown it starts there.
    resume: Option<Resume>,
    /// The checkpoint: a record before it, which a seek back reads again, is never taken.
    floor: i64,
    /// The partition's high watermark, for its lag.
    end: Arc<SourceEnd>,
    /// When the high watermark was last asked for.
    watermark_at: Option<Instant>,
}

impl Poller {
    fn run(mut self) {
        let mut failures = 0u32;
        while !self.stop.load(Ordering::Relaxed) {
            let mut batch = Vec::with_capacity(self.batch_records);
            let mut at_end = false;
            let deadline = Instant::now() + BATCH_WAIT;
            while batch.len() < self.batch_records {
                let left = deadline.saturating_duration_since(Instant::now());
                match self.consumer.poll(left.max(Duration::from_millis(1))) {
                    Some(Ok(message)) => {
                        failures = 0;
                        let offset = message.offset();
                        let payload = message
                            .payload()
                            .map(Bytes::copy_from_slice)
                            .unwrap_or_default();
                        drop(message);
                        if self.admit(Some(offset)) {
                            self.take(offset, payload, &mut batch);
                        }
                    }
                    Some(Err(KafkaError::PartitionEOF(_))) => {
                        // The end, unless the broker left out the batch that holds the
                        // checkpoint.
                        let end = self.admit(None);
                        at_end = self.stop_at_end && end;
                        break;
                    }
                    Some(Err(error)) => {
                        // The broker is away, the topic is gone, a leader moves:
                        // librdkafka reconnects; we report and back off.
                        failures += 1;
                        if failures.is_power_of_two() {
                            tracing::warn!(topic = %self.topic, partition = self.partition,
                                %error, failures, "kafka consumer error, retrying");
                        }
                        std::thread::sleep(CONSUMER_RETRY.delay(failures - 1));
                        break;
                    }
                    None => {
                        if self.resume.as_ref().is_some_and(Resume::waited_too_long) {
                            // As at the end, but only to seek: the broker may be holding
                            // the batch back, or the partition is idle.
                            self.seek_back_if_past(None);
                        }
                        break;
                    }
                }
                if Instant::now() >= deadline {
                    break;
                }
            }
            self.refresh_end();
            if !batch.is_empty() && !self.send(batch) {
                return;
            }
            if at_end {
                let _ = self.tx.send(Polled::End);
                return;
            }
        }
    }

    /// Adds a polled record to the batch.
    fn take(&mut self, offset: i64, payload: Bytes, batch: &mut Vec<(i64, Bytes)>) {
        // Gaps are legal (compaction, transaction markers) but worth saying: a broker
        // that skips records shows here.
        match self.expected {
            Some(expected) if offset > expected => {
                tracing::warn!(topic = %self.topic, partition = self.partition,
                    from = expected, to = offset - 1, "kafka partition skipped offsets");
            }
            Some(_) => {}
            // From the beginning: where the log starts now.
            None => self.end.set_first(offset.max(0) as u64),
        }
        self.expected = Some(offset + 1);
        batch.push((offset, payload));
    }

    /// Whether a polled record at `offset` goes into the batch (`None`: whether the end
    /// of the partition is its end). While the resume point is checked, seeks back when
    /// the broker started past it (see [`Resume`]).
    fn admit(&mut self, offset: Option<i64>) -> bool {
        let Some(resume) = &mut self.resume else {
            return offset.is_none_or(|offset| offset >= self.floor);
        };
        match resume.admit(offset) {
            Admit::Take => {
                self.resume = None;
                true
            }
            Admit::Drop => false,
            Admit::SeekBack { from } => {
                self.seek_back(from, offset);
                false
            }
        }
    }

    /// Seeks back if the resume point is unchecked and the broker is past it (`None`:
    /// at the end of the partition, or silent); takes nothing and settles nothing.
    fn seek_back_if_past(&mut self, offset: Option<i64>) {
        if let Some(Admit::SeekBack { from }) = self.resume.as_mut().map(|r| r.admit(offset)) {
            self.seek_back(from, offset);
        }
    }

    fn seek_back(&mut self, from: i64, given: Option<i64>) {
        tracing::info!(topic = %self.topic, partition = self.partition, asked = self.floor,
            ?given, from, "the broker started past the checkpoint: reading from further back");
        // Never before the log's start, where the consumer would reset.
        let start = self
            .consumer
            .fetch_watermarks(&self.topic, self.partition as i32, WATERMARK_TIMEOUT)
            .map_or(0, |(low, _)| low.max(0));
        let from = from.max(start);
        match self.consumer.seek(
            &self.topic,
            self.partition as i32,
            Offset::Offset(from),
            SEEK_TIMEOUT,
        ) {
            Ok(()) => {
                if let Some(resume) = &mut self.resume {
                    resume.sought(from, from == start);
                }
            }
            // The next record past the checkpoint, or the next wait, tries again.
            Err(error) => tracing::warn!(topic = %self.topic, partition = self.partition,
                %error, "kafka seek failed"),
        }
    }

    /// Hands a batch on, waiting for room as long as the source is wanted; the high
    /// watermark is kept fresh meanwhile, as the lag grows most while the pipeline is
    /// slow. Returns false once the source is gone.
    fn send(&mut self, batch: Vec<(i64, Bytes)>) -> bool {
        let mut polled = Polled::Batch(batch);
        loop {
            match self.tx.send_timeout(polled, WATERMARK_EVERY) {
                Ok(()) => return true,
                Err(flume::SendTimeoutError::Disconnected(_)) => return false,
                Err(flume::SendTimeoutError::Timeout(back)) => {
                    if self.stop.load(Ordering::Relaxed) {
                        return false;
                    }
                    polled = back;
                    self.refresh_end();
                }
            }
        }
    }

    /// Asks the broker for the partition's high watermark, at most once a [`WATERMARK_EVERY`]
    /// counted from the last answer or timeout, so that a slow broker cannot take more
    /// than a fifth of the thread's time. A broker that does not answer leaves the last
    /// one known.
    fn refresh_end(&mut self) {
        if self
            .watermark_at
            .is_some_and(|at| at.elapsed() < WATERMARK_EVERY)
        {
            return;
        }
        let watermarks =
            self.consumer
                .fetch_watermarks(&self.topic, self.partition as i32, WATERMARK_TIMEOUT);
        self.watermark_at = Some(Instant::now());
        match watermarks {
            // The log reaches at least past what was read: tansu 0.6.0 answers the base
            // offset of the last record batch + 1 as the high watermark. The low watermark
            // is not used either; the first record read says where the log starts.
            Ok((_, high)) => {
                let read = self.expected.unwrap_or(0);
                if let Ok(high) = u64::try_from(high.max(read)) {
                    self.end.set_end(high);
                }
            }
            Err(error) => {
                tracing::debug!(topic = %self.topic, partition = self.partition, %error,
                    "kafka high watermark not known");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_broker_that_starts_at_the_checkpoint_causes_no_seek() {
        let mut resume = Resume::new(100);
        assert_eq!(resume.admit(Some(100)), Admit::Take);
    }

    #[test]
    fn a_first_record_past_the_checkpoint_sends_the_poller_back_until_one_before_it_comes() {
        let mut resume = Resume::new(1000);
        assert_eq!(resume.admit(Some(1003)), Admit::SeekBack { from: 936 });
        resume.sought(936, false);
        // Still past: the batch holding 1000 starts before 936.
        assert_eq!(resume.admit(Some(1003)), Admit::SeekBack { from: 872 });
        resume.sought(872, false);
        assert_eq!(resume.admit(Some(880)), Admit::Drop);
        assert_eq!(resume.admit(Some(999)), Admit::Drop);
        assert_eq!(resume.admit(Some(1000)), Admit::Take);
    }

    #[test]
    fn a_gap_that_is_really_there_is_taken_once_a_record_before_the_checkpoint_came() {
        let mut resume = Resume::new(1000);
        assert_eq!(resume.admit(Some(1010)), Admit::SeekBack { from: 936 });
        resume.sought(936, false);
        assert_eq!(resume.admit(Some(990)), Admit::Drop);
        assert_eq!(resume.admit(Some(1010)), Admit::Take);
    }

    #[test]
    fn the_seeks_stop_at_the_log_start() {
        let mut resume = Resume::new(100);
        assert_eq!(resume.admit(Some(150)), Admit::SeekBack { from: 36 });
        resume.sought(36, false);
        assert_eq!(resume.admit(Some(150)), Admit::SeekBack { from: 0 });
        resume.sought(0, true);
        assert_eq!(
            resume.admit(Some(150)),
            Admit::Take,
            "nothing earlier exists"
        );

        // Retention took the log up to 80: the first seek reaches its start.
        let mut resume = Resume::new(100);
        assert_eq!(resume.admit(Some(150)), Admit::SeekBack { from: 36 });
        resume.sought(80, true);
        assert_eq!(resume.admit(Some(150)), Admit::Take);
    }

    #[test]
    fn the_end_of_the_partition_right_after_resuming_is_checked_as_a_record_past_it_is() {
        let mut resume = Resume::new(10);
        assert_eq!(resume.admit(None), Admit::SeekBack { from: 0 });
        resume.sought(0, true);
        assert_eq!(resume.admit(Some(4)), Admit::Drop);
        assert_eq!(resume.admit(Some(10)), Admit::Take);

        let mut at_the_end = Resume::new(10);
        at_the_end.sought(0, true);
        assert_eq!(at_the_end.admit(Some(9)), Admit::Drop);
        assert_eq!(at_the_end.admit(None), Admit::Take, "the end is the end");
    }
}
