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
                        // Gaps are legal (compaction, transaction markers) but worth
                        // saying: a broker that skips records shows here.
                        match self.expected {
                            Some(expected) if message.offset() > expected => {
                                tracing::warn!(topic = %self.topic, partition = self.partition,
                                    from = expected, to = message.offset() - 1,
                                    "kafka partition skipped offsets");
                            }
                            Some(_) => {}
                            // From the beginning: where the log starts now.
                            None => self.end.set_first(message.offset().max(0) as u64),
                        }
                        self.expected = Some(message.offset() + 1);
                        let payload = message
                            .payload()
                            .map(Bytes::copy_from_slice)
                            .unwrap_or_default();
                        batch.push((message.offset(), payload));
                    }
                    Some(Err(KafkaError::PartitionEOF(_))) => {
                        at_end = self.stop_at_end;
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
                    None => break,
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
