//! Synthetic marketing events with realistic skew: Zipf-distributed customers, a mix of
//! channels and event types, and a given share of poison records.
//!
//! Record `seq` of a partition is a pure function of (seed, partition, seq), so a replay
//! from a checkpoint produces the same ids, customers and types again.

use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use mirador_actors::{CheckpointTracker, Origin, Position, Source, StageError};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Zipf};

use crate::decode::to_protobuf;
use crate::event::{Event, EventType, RawRecord};
use crate::spec::{GeneratorSpec, PayloadFormat};

/// Kinds of poison the generator writes, one reason code each.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Poison {
    InvalidJson,
    InvalidUtf8,
    MissingCustomerId,
    EmptyCustomerId,
    WrongType,
    UnknownEventType,
    Oversized,
    FutureTimestamp,
    AncientTimestamp,
}

impl Poison {
    pub const ALL: [Poison; 9] = [
        Poison::InvalidJson,
        Poison::InvalidUtf8,
        Poison::MissingCustomerId,
        Poison::EmptyCustomerId,
        Poison::WrongType,
        Poison::UnknownEventType,
        Poison::Oversized,
        Poison::FutureTimestamp,
        Poison::AncientTimestamp,
    ];
}

/// Event types with their share of traffic, and the channels each comes through.
const MIX: [(EventType, f64, &[&str]); 8] = [
    (EventType::PageView, 0.42, &["web", "app"]),
    (
        EventType::AdClick,
        0.15,
        &["paid_search", "paid_social", "display"],
    ),
    (EventType::EmailOpen, 0.10, &["email"]),
    (EventType::EmailClick, 0.05, &["email"]),
    (EventType::AddToCart, 0.11, &["web", "app"]),
    (EventType::Purchase, 0.05, &["web", "app", "store"]),
    (EventType::StoreVisit, 0.05, &["store"]),
    (EventType::Mention, 0.07, &["social"]),
];

/// Makes the events of one partition.
#[derive(Clone)]
pub struct EventFactory {
    seed: u64,
    partition: u32,
    zipf: Zipf<f64>,
    poison_ratio: f64,
    format: PayloadFormat,
    oversize_bytes: usize,
}

fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58476d1ce4e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d049bb133111eb);
    z ^ (z >> 31)
}

impl EventFactory {
    pub fn new(
        spec: &GeneratorSpec,
        partition: u32,
        format: PayloadFormat,
        max_payload_bytes: usize,
    ) -> Self {
        EventFactory {
            seed: spec.seed,
            partition,
            zipf: Zipf::new(spec.customers as f64, spec.zipf_exponent)
                .expect("validated: customers >= 1 and exponent > 0"),
            poison_ratio: spec.poison_ratio,
            format,
            oversize_bytes: max_payload_bytes + 1,
        }
    }

    fn rng(&self, seq: u64) -> SmallRng {
        SmallRng::seed_from_u64(mix64(
            self.seed ^ mix64(((self.partition as u64) << 40) ^ seq),
        ))
    }

    /// The event id of record `seq`.
    pub fn event_id(&self, seq: u64) -> String {
        format!("p{}-{}", self.partition, seq)
    }

    /// A well-formed event.
    pub fn event(&self, seq: u64, now_ms: i64) -> Event {
        self.event_with(&mut self.rng(seq), seq, now_ms)
    }

    fn event_with(&self, rng: &mut SmallRng, seq: u64, now_ms: i64) -> Event {
        let customer = self.zipf.sample(rng) as u64 - 1;
        let mut pick = rng.random::<f64>();
        let (event_type, channels) = MIX
            .iter()
            .find(|(_, share, _)| {
                pick -= share;
                pick < 0.0
            })
            .map(|(t, _, c)| (*t, *c))
            .unwrap_or((EventType::PageView, &["web"]));
        let channel = channels[rng.random_range(0..channels.len())];
        let value = match event_type {
            EventType::Purchase | EventType::AddToCart => {
                (rng.random::<f64>().powi(2) * 400.0 * 100.0).round() / 100.0 + 5.0
            }
            _ => 0.0,
        };
        let campaign_id = matches!(
            event_type,
            EventType::AdClick | EventType::EmailOpen | EventType::EmailClick
        )
        .then(|| format!("cmp-{}", rng.random_range(1..40)));
        let product_id = matches!(
            event_type,
            EventType::AddToCart | EventType::Purchase | EventType::PageView
        )
        .then(|| format!("sku-{}", rng.random_range(1000..5000)));
        Event {
            event_id: self.event_id(seq),
            customer_id: format!("c{customer:06}"),
            event_type,
            channel: Some(channel.to_string()),
            campaign_id,
            product_id,
            value,
            event_time: now_ms - rng.random_range(0..60_000),
            attributes: Default::default(),
        }
    }

    /// Which poison, if any, record `seq` is.
    pub fn poison(&self, seq: u64) -> Option<Poison> {
        if self.poison_ratio <= 0.0 {
            return None;
        }
        let mut rng = SmallRng::seed_from_u64(mix64(
            self.seed.rotate_left(17) ^ mix64(((self.partition as u64) << 40) ^ seq),
        ));
        (rng.random::<f64>() < self.poison_ratio)
            .then(|| Poison::ALL[rng.random_range(0..Poison::ALL.len())])
    }

    /// The payload of record `seq`, written into `out`.
    pub fn payload(&self, seq: u64, now_ms: i64, out: &mut Vec<u8>) {
        out.clear();
        let mut rng = self.rng(seq);
        let mut event = self.event_with(&mut rng, seq, now_ms);
        let poison = self.poison(seq);
        if self.format == PayloadFormat::Protobuf {
            match poison {
                None => {}
                Some(Poison::InvalidJson | Poison::InvalidUtf8 | Poison::WrongType) => {
                    out.extend_from_slice(b"\xff\xff\xff\xff not a protobuf message");
                    return;
                }
                Some(Poison::MissingCustomerId | Poison::EmptyCustomerId) => {
                    event.customer_id.clear()
                }
                Some(Poison::UnknownEventType) => {}
                Some(Poison::Oversized) => {
                    event
                        .attributes
                        .insert("padding".into(), "x".repeat(self.oversize_bytes));
                }
                Some(Poison::FutureTimestamp) => event.event_time = now_ms + 86_400_000 * 2,
                Some(Poison::AncientTimestamp) => event.event_time = 1000,
            }
            let mut message = to_protobuf(&event);
            if poison == Some(Poison::UnknownEventType) {
                let mut proto =
                    <mirador_proto::records::Event as prost::Message>::decode(&message[..])
                        .expect("just encoded");
                proto.event_type = "teleport".into();
                message = prost::Message::encode_to_vec(&proto);
            }
            out.extend_from_slice(&message);
            return;
        }
        match poison {
            None => write_json(&event, out),
            Some(Poison::InvalidJson) => {
                write_json(&event, out);
                out.truncate(out.len() / 2);
            }
            Some(Poison::InvalidUtf8) => {
                write_json(&event, out);
                let at = out.len() / 2;
                out[at] = 0xff;
            }
            Some(Poison::MissingCustomerId) => {
                let _ = write!(
                    out,
                    r#"{{"event_id":"{}","event_type":"page_view","event_time":"{}"}}"#,
                    event.event_id,
                    crate::event::format_millis(event.event_time)
                );
            }
            Some(Poison::EmptyCustomerId) => {
                event.customer_id.clear();
                write_json(&event, out);
            }
            Some(Poison::WrongType) => {
                let _ = write!(
                    out,
                    r#"{{"event_id":"{}","customer_id":"{}","event_type":"purchase","value":"a lot","event_time":"{}"}}"#,
                    event.event_id,
                    event.customer_id,
                    crate::event::format_millis(event.event_time)
                );
            }
            Some(Poison::UnknownEventType) => {
                let _ = write!(
                    out,
                    r#"{{"event_id":"{}","customer_id":"{}","event_type":"teleport","event_time":"{}"}}"#,
                    event.event_id,
                    event.customer_id,
                    crate::event::format_millis(event.event_time)
                );
            }
            Some(Poison::Oversized) => {
                event
                    .attributes
                    .insert("padding".into(), "x".repeat(self.oversize_bytes));
                write_json(&event, out);
            }
            Some(Poison::FutureTimestamp) => {
                event.event_time = now_ms + 86_400_000 * 2;
                write_json(&event, out);
            }
            Some(Poison::AncientTimestamp) => {
                event.event_time = 1000;
                write_json(&event, out);
            }
        }
    }
}

/// The JSON form of docs/events.md. The generator's strings need no escaping beyond
/// what serde_json does for attributes.
pub fn write_json(event: &Event, out: &mut Vec<u8>) {
    serde_json::to_writer(&mut *out, event).expect("writing to a Vec cannot fail");
}

pub struct GeneratorSource {
    factory: EventFactory,
    partition: u32,
    next: u64,
    end: Option<u64>,
    batch_records: usize,
    rate_per_sec: Option<f64>,
    started: Instant,
    emitted: u64,
    tracker: Arc<CheckpointTracker>,
}

impl GeneratorSource {
    pub fn new(
        spec: &GeneratorSpec,
        partition: u32,
        format: PayloadFormat,
        max_payload_bytes: usize,
        batch_records: usize,
        tracker: Arc<CheckpointTracker>,
    ) -> Self {
        let next = tracker.committed().map_or(0, |p| p.offset);
        GeneratorSource {
            factory: EventFactory::new(spec, partition, format, max_payload_bytes),
            partition,
            next,
            end: spec.events,
            batch_records,
            rate_per_sec: spec.rate_per_sec,
            started: Instant::now(),
            emitted: 0,
            tracker,
        }
    }
}

impl Source for GeneratorSource {
    type Out = RawRecord;

    fn name(&self) -> &'static str {
        "source"
    }

    async fn next_batch(&mut self) -> Result<Option<Vec<RawRecord>>, StageError> {
        let count = match self.end {
            Some(end) if self.next >= end => return Ok(None),
            Some(end) => (end - self.next).min(self.batch_records as u64),
            None => self.batch_records as u64,
        };
        if let Some(rate) = self.rate_per_sec {
            let due = self.started + Duration::from_secs_f64(self.emitted as f64 / rate);
            tokio::time::sleep_until(due.into()).await;
        }
        let now_ms = chrono::Utc::now().timestamp_millis();
        let end = self.next + count;
        let ack = self.tracker.open(
            count as usize,
            Position {
                partition: self.partition,
                offset: end,
            },
        );
        let read_at = Instant::now();
        let mut buf = Vec::with_capacity(512);
        let batch = (self.next..end)
            .map(|seq| {
                self.factory.payload(seq, now_ms, &mut buf);
                RawRecord {
                    origin: Origin {
                        ack,
                        position: Position {
                            partition: self.partition,
                            offset: seq,
                        },
                        payload: Bytes::copy_from_slice(&buf),
                        read_at,
                    },
                }
            })
            .collect();
        self.next = end;
        self.emitted += count;
        Ok(Some(batch))
    }
}
