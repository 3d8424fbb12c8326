//! The load: sequence-numbered records at a steady rate, a known share of them poison,
//! each acknowledged by the broker with its partition and offset, which is how the
//! checker finds it again in the sink or the dead letter.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::ClientContext;

/// A record the broker acknowledged.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Sent {
    pub partition: i32,
    pub offset: i64,
    pub sequence: u64,
    pub poison: bool,
}

struct Acks(Arc<Mutex<Vec<Sent>>>);

impl ClientContext for Acks {}

impl ProducerContext for Acks {
    type DeliveryOpaque = Box<(u64, bool)>;

    fn delivery(&self, result: &DeliveryResult<'_>, opaque: Self::DeliveryOpaque) {
        if let Ok(message) = result {
            let (sequence, poison) = *opaque;
            self.0.lock().unwrap_or_else(|e| e.into_inner()).push(Sent {
                partition: message.partition(),
                offset: message.offset(),
                sequence,
                poison,
            });
        }
    }
}

/// The producer's name in every payload.
const PRODUCER: &str = "chaos";

/// The payload of record `sequence`: a valid event, or one of four kinds of poison
/// (malformed JSON, a wrong type, no customer id, oversized), every one carrying
/// (producer, partition, key, sequence).
pub fn payload(sequence: u64, partition: i32, poison: Option<u64>, now: &str) -> Vec<u8> {
    let key = format!("c{:06}", sequence % 12_000);
    let id = format!("{PRODUCER}-{partition}-{sequence}");
    let attributes = format!(
        r#"{{"producer":"{PRODUCER}","partition":"{partition}","key":"{key}","sequence":"{sequence}"}}"#
    );
    let Some(kind) = poison else {
        return format!(
            r#"{{"event_id":"{id}","customer_id":"{key}","event_type":"page_view","channel":"web","value":1.5,"event_time":"{now}","attributes":{attributes}}}"#
        )
        .into_bytes();
    };
    match kind % 4 {
        0 => format!(r#"{{"event_id":"{id}","customer_id":"{key}","event_type":"#).into_bytes(),
        1 => format!(
            r#"{{"event_id":"{id}","customer_id":"{key}","event_type":"purchase","value":"a lot","event_time":"{now}","attributes":{attributes}}}"#
        )
        .into_bytes(),
        2 => format!(
            r#"{{"event_id":"{id}","event_type":"purchase","event_time":"{now}","attributes":{attributes}}}"#
        )
        .into_bytes(),
        _ => format!(
            r#"{{"event_id":"{id}","customer_id":"{key}","event_type":"page_view","event_time":"{now}","channel":"{}"}}"#,
            "x".repeat(70_000)
        )
        .into_bytes(),
    }
}

/// A producer running in a thread of its own until [`Load::stop`].
pub struct Load {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Result<(), String>>>,
    acked: Arc<Mutex<Vec<Sent>>>,
}

impl Load {
    /// `rate` records a second over `partitions` partitions of `topic`; each record is
    /// poison with probability `poison_share` (every `1/share`-th, spread evenly).
    pub fn start(
        brokers: &str,
        topic: &str,
        partitions: i32,
        rate: u32,
        poison_share: f64,
    ) -> Self {
        let acked = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let producer: ThreadedProducer<Acks> = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("linger.ms", "5")
            .set("message.timeout.ms", "60000")
            .set("message.max.bytes", "1000000")
            .create_with_context(Acks(acked.clone()))
            .expect("a Kafka producer");
        let topic = topic.to_string();
        let flag = stop.clone();
        let every = if poison_share > 0.0 {
            (1.0 / poison_share).round() as u64
        } else {
            0
        };
        let thread = std::thread::spawn(move || {
            let started = Instant::now();
            let mut sequence = 0u64;
            while !flag.load(Ordering::SeqCst) {
                let due = (started.elapsed().as_secs_f64() * rate as f64) as u64;
                let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
                while sequence < due {
                    let partition = (sequence % partitions as u64) as i32;
                    let poison = every > 0 && sequence % every == every / 2;
                    let kind = poison.then_some(sequence / every.max(1));
                    let value = payload(sequence, partition, kind, &now);
                    let key = format!("c{:06}", sequence % 12_000);
                    let mut record =
                        BaseRecord::with_opaque_to(&topic, Box::new((sequence, poison)))
                            .partition(partition)
                            .key(&key)
                            .payload(&value);
                    loop {
                        match producer.send(record) {
                            Ok(()) => break,
                            Err((_, back)) => {
                                record = back;
                                std::thread::sleep(Duration::from_millis(5));
                            }
                        }
                    }
                    sequence += 1;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            producer
                .flush(Duration::from_secs(60))
                .map_err(|e| format!("the producer's last records: {e}"))
        });
        Load {
            stop,
            thread: Some(thread),
            acked,
        }
    }

    /// How many records the broker has acknowledged so far.
    pub fn acknowledged(&self) -> usize {
        self.acked.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Stops producing, waits for the last acknowledgements, and returns every record
    /// acknowledged.
    pub fn stop(mut self) -> Result<Vec<Sent>, String> {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            thread
                .join()
                .map_err(|_| "the producer panicked".to_string())??;
        }
        let acked = std::mem::take(&mut *self.acked.lock().unwrap_or_else(|e| e.into_inner()));
        Ok(acked)
    }
}
