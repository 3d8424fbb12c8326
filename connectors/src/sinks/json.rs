//! The JSON forms of scored records and dead letters (docs/events.md).

use std::sync::Arc;

use base64::Engine;
use mirador_actors::DeadLetter;
use serde::Serialize;

use crate::event::{Event, FeatureSource, ModelId, ScoredRecord};

/// What encoding needs beyond the record itself.
#[derive(Clone, Default)]
pub struct EncodeContext {
    /// Names of the customer features, in order.
    pub feature_names: Arc<[String]>,
    /// The region of the executor that scores; empty in one process (`mirador run`).
    pub region: Arc<str>,
}

pub trait JsonLine {
    /// Writes the record as one line of JSON, without the newline.
    fn write_line(&self, context: &EncodeContext, now: &str, out: &mut Vec<u8>);
}

#[derive(Serialize)]
struct SourceRef {
    partition: u32,
    offset: u64,
}

#[derive(Serialize)]
struct ScoredLine<'a> {
    event: &'a Event,
    features: FeatureMap<'a>,
    feature_source: FeatureSource,
    model: &'a ModelId,
    scores: &'a [f32],
    processed_at: &'a str,
    source: SourceRef,
    #[serde(skip_serializing_if = "str::is_empty")]
    region: &'a str,
}

struct FeatureMap<'a> {
    names: &'a [String],
    values: &'a [f32],
}

impl Serialize for FeatureMap<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = serializer.serialize_map(Some(self.values.len()))?;
        for (name, value) in self.names.iter().zip(self.values) {
            map.serialize_entry(name, value)?;
        }
        map.end()
    }
}

impl JsonLine for ScoredRecord {
    fn write_line(&self, context: &EncodeContext, now: &str, out: &mut Vec<u8>) {
        let line = ScoredLine {
            event: &self.event,
            features: FeatureMap {
                names: &context.feature_names,
                values: &self.features,
            },
            feature_source: self.feature_source,
            model: &self.model,
            scores: &self.scores,
            processed_at: now,
            source: SourceRef {
                partition: self.origin.position.partition,
                offset: self.origin.position.offset,
            },
            region: &context.region,
        };
        serde_json::to_writer(out, &line).expect("writing to a Vec cannot fail");
    }
}

#[derive(Serialize)]
struct DeadLetterLine<'a> {
    stage: &'a str,
    reason: mirador_actors::ReasonCode,
    message: &'a str,
    source: SourceRef,
    payload: std::borrow::Cow<'a, str>,
    payload_encoding: &'static str,
    dead_lettered_at: &'a str,
}

impl JsonLine for DeadLetter {
    fn write_line(&self, _context: &EncodeContext, now: &str, out: &mut Vec<u8>) {
        let (payload, payload_encoding) = match std::str::from_utf8(&self.origin.payload) {
            Ok(text) => (text.into(), "utf8"),
            Err(_) => (
                base64::engine::general_purpose::STANDARD
                    .encode(&self.origin.payload)
                    .into(),
                "base64",
            ),
        };
        let line = DeadLetterLine {
            stage: self.stage,
            reason: self.reason,
            message: &self.message,
            source: SourceRef {
                partition: self.origin.position.partition,
                offset: self.origin.position.offset,
            },
            payload,
            payload_encoding,
            dead_lettered_at: now,
        };
        serde_json::to_writer(out, &line).expect("writing to a Vec cannot fail");
    }
}
