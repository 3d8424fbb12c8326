//! Records as messages of a broker: what a Kafka record or a Pub/Sub message carries.

use mirador_actors::DeadLetter;
use mirador_spec::KafkaKey;

use super::{EncodeContext, JsonLine};
use crate::event::ScoredRecord;

/// How a record becomes a broker message: its key, its body, and the attributes that say
/// what happened to it (Kafka headers, Pub/Sub attributes).
pub trait MessageRecord {
    fn key(&self, key: KafkaKey) -> Option<Vec<u8>>;
    fn value(&self, context: &EncodeContext, now: &str) -> Vec<u8>;
    /// Empty for a record that carries none.
    fn attributes(&self, source: &str) -> Vec<(&'static str, String)>;
}

impl MessageRecord for ScoredRecord {
    fn key(&self, key: KafkaKey) -> Option<Vec<u8>> {
        Some(
            match key {
                KafkaKey::CustomerId => &self.event.customer_id,
                KafkaKey::EventId => &self.event.event_id,
            }
            .as_bytes()
            .to_vec(),
        )
    }

    fn value(&self, context: &EncodeContext, now: &str) -> Vec<u8> {
        let mut out = Vec::with_capacity(512);
        self.write_line(context, now, &mut out);
        out
    }

    fn attributes(&self, _source: &str) -> Vec<(&'static str, String)> {
        Vec::new()
    }
}

/// A dead letter travels as its original bytes; what happened to it is in the attributes.
impl MessageRecord for DeadLetter {
    fn key(&self, _key: KafkaKey) -> Option<Vec<u8>> {
        None
    }

    fn value(&self, _context: &EncodeContext, _now: &str) -> Vec<u8> {
        self.origin.payload.to_vec()
    }

    fn attributes(&self, source: &str) -> Vec<(&'static str, String)> {
        vec![
            ("stage", self.stage.to_string()),
            ("reason", self.reason.as_str().to_string()),
            ("message", self.message.clone()),
            ("source", source.to_string()),
            ("partition", self.origin.position.partition.to_string()),
            ("offset", self.origin.position.offset.to_string()),
        ]
    }
}

/// A raw payload, sent as it is: no key, no attributes.
impl MessageRecord for Vec<u8> {
    fn key(&self, _key: KafkaKey) -> Option<Vec<u8>> {
        None
    }

    fn value(&self, _context: &EncodeContext, _now: &str) -> Vec<u8> {
        self.clone()
    }

    fn attributes(&self, _source: &str) -> Vec<(&'static str, String)> {
        Vec::new()
    }
}
