//! Marketing events, as documented in docs/events.md.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use chrono::{DateTime, SecondsFormat, Utc};
use mirador_actors::{Origin, Traced};
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
    DateTime::<Utc>::from_timestamp_millis(millis)
        .unwrap_or_default()
        .to_rfc3339_opts(SecondsFormat::Millis, true)
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
}
