//! Test support for Mirador: the real services the tests need (the Kafka broker, the
//! Pub/Sub and Bigtable emulators), started on loopback and stopped by their pid; and,
//! as the cluster grows, multi-process cluster harnesses; and pipeline specs over the
//! bundled features and model.

pub mod chaos;
pub mod cluster;
pub mod services;
pub mod spec;

/// The `event_id` a generated payload carries (poison included: every generated payload
/// has one, even where it is not valid JSON).
pub fn event_id(payload: &[u8]) -> String {
    let text = String::from_utf8_lossy(payload);
    let start = text.find("\"event_id\":\"").expect("an event id") + 12;
    let end = start + text[start..].find('"').expect("a closing quote");
    text[start..end].to_string()
}
