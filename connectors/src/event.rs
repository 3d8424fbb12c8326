//! Marketing events, as documented in docs/events.md.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use chrono::{DateTime, SecondsFormat, Utc};
use mirador_actors::{Origin, Position, SourceRecord, Traced};
use serde::{Serialize, Serializer};

/// What a customer did. The one-hot order of the demo model follows this enum.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EventType {
    PageView,
    AdClick,
    AddToCart,
    Purchase,
    StoreVisit,
    EmailOpen,
    EmailClick,
    Mention,
}

impl EventType {
    pub const ALL: [EventType; 8] = [
        EventType::PageView,
        EventType::AdClick,
        EventType::AddToCart,
        EventType::Purchase,
        EventType::StoreVisit,
        EventType::EmailOpen,
        EventType::EmailClick,
        EventType::Mention,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventType::PageView => "page_view",
            EventType::AdClick => "ad_click",
            EventType::AddToCart => "add_to_cart",
            EventType::Purchase => "purchase",
            EventType::StoreVisit => "store_visit",
            EventType::EmailOpen => "email_open",
            EventType::EmailClick => "email_click",
            EventType::Mention => "mention",
        }
    }

    pub fn parse(name: &str) -> Option<EventType> {
        EventType::ALL.into_iter().find(|t| t.as_str() == name)
    }

    /// Index in the model's one-hot block.
    pub fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A decoded, validated customer event.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Event {
    pub event_id: String,
    pub customer_id: String,
    pub event_type: EventType,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub channel: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub campaign_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub product_id: Option<String>,
    pub value: f64,
    #[serde(serialize_with = "serialize_millis")]
    pub event_time: i64,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub attributes: BTreeMap<String, String>,
}

fn serialize_millis<S: Serializer>(millis: &i64, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&format_millis(*millis))
}

/// RFC 3339 with milliseconds, in UTC.
pub fn format_millis(millis: i64) -> String {
    let mut out = Vec::with_capacity(24);
    write_millis(millis, &mut out);
    String::from_utf8(out).expect("ASCII")
}

/// Writes `millis` as RFC 3339 with milliseconds (`2026-11-27T15:04:05.123Z`). Years
/// outside 0..=9999 are written by chrono; the common case is done by hand because the
/// generator and the sinks write one per record.
pub fn write_millis(millis: i64, out: &mut Vec<u8>) {
    const YEAR_0: i64 = -62_167_219_200_000;
    const YEAR_10000: i64 = 253_402_300_800_000;
    if !(YEAR_0..YEAR_10000).contains(&millis) {
        let text = DateTime::<Utc>::from_timestamp_millis(millis)
            .unwrap_or_default()
            .to_rfc3339_opts(SecondsFormat::Millis, true);
        out.extend_from_slice(text.as_bytes());
        return;
    }
    let days = millis.div_euclid(86_400_000);
    let in_day = millis.rem_euclid(86_400_000);
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let digits = |out: &mut Vec<u8>, value: i64, width: u32| {
        for i in (0..width).rev() {
            out.push(b'0' + (value / 10i64.pow(i) % 10) as u8);
        }
    };
    digits(out, year, 4);
    out.push(b'-');
    digits(out, month, 2);
    out.push(b'-');
    digits(out, day, 2);
    out.push(b'T');
    digits(out, in_day / 3_600_000, 2);
    out.push(b':');
    digits(out, in_day / 60_000 % 60, 2);
    out.push(b':');
    digits(out, in_day / 1000 % 60, 2);
    out.push(b'.');
    digits(out, in_day % 1000, 3);
    out.push(b'Z');
}

/// Encodes an event as the protobuf `Event`.
pub fn to_protobuf(event: &Event) -> Vec<u8> {
    prost::Message::encode_to_vec(&mirador_proto::records::Event {
        event_id: event.event_id.clone(),
        customer_id: event.customer_id.clone(),
        event_type: event.event_type.as_str().to_string(),
        channel: event.channel.clone().unwrap_or_default(),
        campaign_id: event.campaign_id.clone().unwrap_or_default(),
        product_id: event.product_id.clone().unwrap_or_default(),
        value: event.value,
        event_time_ms: event.event_time,
        attributes: event.attributes.clone().into_iter().collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_rfc3339_like_chrono() {
        for millis in [
            0,
            1,
            951_782_400_000, // 2000-02-29
            1_790_000_000_123,
            4_102_444_799_999, // 2099-12-31T23:59:59.999
            -1,
            -62_167_219_200_000, // year 0
            253_402_300_799_999, // 9999-12-31T23:59:59.999
            253_402_300_800_000, // year 10000: chrono's form
        ] {
            let expected = DateTime::<Utc>::from_timestamp_millis(millis)
                .unwrap()
                .to_rfc3339_opts(SecondsFormat::Millis, true);
            assert_eq!(format_millis(millis), expected, "{millis}");
        }
    }
}

/// The bytes a source read, not yet decoded.
#[derive(Clone, Debug)]
pub struct RawRecord {
    pub origin: Origin,
}

impl Traced for RawRecord {
    fn origin(&self) -> &Origin {
        &self.origin
    }
}

impl RawRecord {
    /// What a source read at `position`, not yet in a batch (its runner stamps that).
    pub fn read(partition: u32, offset: u64, payload: Bytes, read_at: Instant) -> Self {
        RawRecord {
            origin: Origin {
                ack: 0,
                position: Position { partition, offset },
                payload,
                read_at,
            },
        }
    }
}

impl SourceRecord for RawRecord {
    fn stamp(&mut self, ack: u64) {
        self.origin.ack = ack;
    }
}

#[derive(Clone, Debug)]
pub struct DecodedRecord {
    pub origin: Origin,
    pub event: Arc<Event>,
}

impl Traced for DecodedRecord {
    fn origin(&self) -> &Origin {
        &self.origin
    }
}

/// Where a record's customer features came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FeatureSource {
    /// Looked up for this customer.
    Lookup,
    /// The customer is unknown; the pipeline's default features stand in.
    Default,
}

#[derive(Clone, Debug)]
pub struct EnrichedRecord {
    pub origin: Origin,
    pub event: Arc<Event>,
    /// Customer features in the order of the pipeline's `enrichment.features`.
    pub features: Arc<[f32]>,
    pub feature_source: FeatureSource,
}

impl Traced for EnrichedRecord {
    fn origin(&self) -> &Origin {
        &self.origin
    }
}

/// The model that scored a record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ModelId {
    pub name: String,
    pub version: String,
}

#[derive(Clone, Debug)]
pub struct ScoredRecord {
    pub origin: Origin,
    pub event: Arc<Event>,
    pub features: Arc<[f32]>,
    pub feature_source: FeatureSource,
    pub model: Arc<ModelId>,
    pub scores: Vec<f32>,
}

impl Traced for ScoredRecord {
    fn origin(&self) -> &Origin {
        &self.origin
    }

    fn event_time_ms(&self) -> Option<i64> {
        Some(self.event.event_time)
    }
}
