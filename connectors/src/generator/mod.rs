//! Synthetic marketing events with realistic skew: Zipf-distributed customers, a mix of
//! channels and event types, and a given share of poison records.
//!
//! Record `seq` of a partition is a pure function of (seed, partition, seq), so a replay
//! from a checkpoint produces the same ids, customers and types again.

use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use mirador_actors::{Position, Source, SourceBatch, SourceEnd, StageError};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Zipf};

use mirador_spec::{GeneratorSpec, PayloadFormat};

use crate::event::{to_protobuf, Event, EventType, RawRecord};

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

/// The random part of one event, drawn without allocating.
struct Draw {
    customer: u64,
    event_type: EventType,
    channel: &'static str,
    campaign: Option<u32>,
    product: Option<u32>,
    value: f64,
    event_time: i64,
}

impl Draw {
    fn event(&self, event_id: String) -> Event {
        Event {
            event_id,
            customer_id: format!("c{:06}", self.customer),
            event_type: self.event_type,
            channel: Some(self.channel.to_string()),
            campaign_id: self.campaign.map(|c| format!("cmp-{c}")),
            product_id: self.product.map(|p| format!("sku-{p}")),
            value: self.value,
            event_time: self.event_time,
            attributes: Default::default(),
        }
    }

    /// The same JSON as `write_json(&self.event(..))`, written straight into `out`: every
    /// string here is plain ASCII that needs no escaping.
    fn write_json(&self, partition: u32, seq: u64, out: &mut Vec<u8>) {
        let _ = write!(
            out,
            r#"{{"event_id":"p{partition}-{seq}","customer_id":"c{:06}","event_type":"{}","channel":"{}""#,
            self.customer,
            self.event_type.as_str(),
            self.channel
        );
        if let Some(campaign) = self.campaign {
            let _ = write!(out, r#","campaign_id":"cmp-{campaign}""#);
        }
        if let Some(product) = self.product {
            let _ = write!(out, r#","product_id":"sku-{product}""#);
        }
        let _ = write!(out, r#","value":{:?},"event_time":""#, self.value);
        crate::event::write_millis(self.event_time, out);
        out.extend_from_slice(b"\"}");
    }
}

/// Customer numbers with a Zipf distribution: a table of the cumulative distribution
/// (searched in O(log n)) up to a million customers, sampling by rejection above that.
#[derive(Clone)]
enum CustomerSampler {
    Table(Arc<[f64]>),
    Zipf(Zipf<f64>),
}

const ZIPF_TABLE_MAX: u64 = 1_000_000;

impl CustomerSampler {
    fn new(customers: u64, exponent: f64) -> Self {
        if customers <= ZIPF_TABLE_MAX {
            let mut total = 0.0;
            let mut cumulative: Vec<f64> = (1..=customers)
                .map(|rank| {
                    total += (rank as f64).powf(-exponent);
                    total
                })
                .collect();
            for value in &mut cumulative {
                *value /= total;
            }
            CustomerSampler::Table(cumulative.into())
        } else {
            CustomerSampler::Zipf(
                Zipf::new(customers as f64, exponent)
                    .expect("validated: customers >= 1 and exponent > 0"),
            )
        }
    }

    /// A customer number, 0 the most frequent.
    fn sample(&self, rng: &mut SmallRng) -> u64 {
        match self {
            CustomerSampler::Table(cumulative) => {
                let u = rng.random::<f64>();
                cumulative
                    .partition_point(|c| *c < u)
                    .min(cumulative.len() - 1) as u64
            }
            CustomerSampler::Zipf(zipf) => zipf.sample(rng) as u64 - 1,
        }
    }
}

/// Makes the events of one partition.
#[derive(Clone)]
pub struct EventFactory {
    seed: u64,
    partition: u32,
    customers: CustomerSampler,
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
            customers: CustomerSampler::new(spec.customers, spec.zipf_exponent),
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
        self.draw(&mut self.rng(seq), now_ms)
            .event(self.event_id(seq))
    }

    fn draw(&self, rng: &mut SmallRng, now_ms: i64) -> Draw {
        let customer = self.customers.sample(rng);
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
        let campaign = matches!(
            event_type,
            EventType::AdClick | EventType::EmailOpen | EventType::EmailClick
        )
        .then(|| rng.random_range(1..40));
        let product = matches!(
            event_type,
            EventType::AddToCart | EventType::Purchase | EventType::PageView
        )
        .then(|| rng.random_range(1000..5000));
        Draw {
            customer,
            event_type,
            channel,
            campaign,
            product,
            value,
            event_time: now_ms - rng.random_range(0..60_000),
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
        let draw = self.draw(&mut self.rng(seq), now_ms);
        let poison = self.poison(seq);
        if poison.is_none() && self.format == PayloadFormat::Json {
            draw.write_json(self.partition, seq, out);
            return;
        }
        let event = draw.event(self.event_id(seq));
        match self.format {
            PayloadFormat::Protobuf => self.protobuf_payload(event, poison, now_ms, out),
            PayloadFormat::Json => self.json_payload(event, poison, now_ms, out),
        }
    }

    /// A protobuf `Event`, spoiled as `poison` says.
    fn protobuf_payload(
        &self,
        mut event: Event,
        poison: Option<Poison>,
        now_ms: i64,
        out: &mut Vec<u8>,
    ) {
        match poison {
            None => {}
            Some(Poison::InvalidJson | Poison::InvalidUtf8 | Poison::WrongType) => {
                out.extend_from_slice(b"\xff\xff\xff\xff not a protobuf message");
                return;
            }
            Some(Poison::MissingCustomerId | Poison::EmptyCustomerId) => event.customer_id.clear(),
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
            let mut proto = <mirador_proto::records::Event as prost::Message>::decode(&message[..])
                .expect("just encoded");
            proto.event_type = "teleport".into();
            message = prost::Message::encode_to_vec(&proto);
        }
        out.extend_from_slice(&message);
    }

    /// A JSON event, spoiled as `poison` says.
    fn json_payload(
        &self,
        mut event: Event,
        poison: Option<Poison>,
        now_ms: i64,
        out: &mut Vec<u8>,
    ) {
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
                write_with(out, &event, r#""event_type":"purchase","value":"a lot""#)
            }
            Some(Poison::UnknownEventType) => write_with(out, &event, r#""event_type":"teleport""#),
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

/// An event's id, customer and time around `members` (JSON members written as they are).
fn write_with(out: &mut Vec<u8>, event: &Event, members: &str) {
    let _ = write!(
        out,
        r#"{{"event_id":"{}","customer_id":"{}",{members},"event_time":"{}"}}"#,
        event.event_id,
        event.customer_id,
        crate::event::format_millis(event.event_time)
    );
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
}

impl GeneratorSource {
    pub fn new(
        spec: &GeneratorSpec,
        partition: u32,
        format: PayloadFormat,
        max_payload_bytes: usize,
        batch_records: usize,
        resume: Option<Position>,
        source_end: &SourceEnd,
    ) -> Self {
        let next = resume.map_or(0, |p| p.offset);
        if let Some(events) = spec.events {
            source_end.set_end(events);
        }
        GeneratorSource {
            factory: EventFactory::new(spec, partition, format, max_payload_bytes),
            partition,
            next,
            end: spec.events,
            batch_records,
            rate_per_sec: spec.rate_per_sec,
            started: Instant::now(),
            emitted: 0,
        }
    }
}

impl Source for GeneratorSource {
    type Out = RawRecord;

    fn name(&self) -> &'static str {
        "source"
    }

    async fn next_batch(&mut self) -> Result<Option<SourceBatch<RawRecord>>, StageError> {
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
        let read_at = Instant::now();
        let mut buf = Vec::with_capacity(512);
        let items = (self.next..end)
            .map(|seq| {
                self.factory.payload(seq, now_ms, &mut buf);
                RawRecord::read(self.partition, seq, Bytes::copy_from_slice(&buf), read_at)
            })
            .collect();
        self.next = end;
        self.emitted += count;
        Ok(Some(SourceBatch {
            items,
            end: Position {
                partition: self.partition,
                offset: end,
            },
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(customers: u64) -> GeneratorSpec {
        GeneratorSpec {
            events: None,
            partitions: 1,
            customers,
            zipf_exponent: 1.1,
            poison_ratio: 0.0,
            seed: 1,
            rate_per_sec: None,
        }
    }

    #[test]
    fn the_fast_json_is_the_json_of_the_event() {
        let factory = EventFactory::new(&spec(12_000), 3, PayloadFormat::Json, 1024);
        let now = 1_790_000_000_000;
        let mut fast = Vec::new();
        let mut slow = Vec::new();
        for seq in 0..5000 {
            factory.payload(seq, now, &mut fast);
            slow.clear();
            write_json(&factory.event(seq, now), &mut slow);
            assert_eq!(
                String::from_utf8_lossy(&fast),
                String::from_utf8_lossy(&slow)
            );
        }
    }

    #[test]
    fn customers_follow_zipf_with_or_without_the_table() {
        for customers in [1000, ZIPF_TABLE_MAX + 1] {
            let sampler = CustomerSampler::new(customers, 1.1);
            let mut rng = SmallRng::seed_from_u64(9);
            let draws: Vec<u64> = (0..20_000).map(|_| sampler.sample(&mut rng)).collect();
            assert!(draws.iter().all(|c| *c < customers));
            let first = draws.iter().filter(|c| **c == 0).count() as f64;
            let tenth = draws.iter().filter(|c| **c == 9).count() as f64;
            // P(rank 1) / P(rank 10) = 10^1.1 ~ 12.6
            let ratio = first / tenth;
            assert!((8.0..20.0).contains(&ratio), "{customers}: ratio {ratio}");
        }
    }
}
