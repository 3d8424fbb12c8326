use std::collections::BTreeMap;

use serde::Deserialize;

use crate::FieldError;

/// A topic to read, in the pipeline spec. Each of its partitions is a partition of the
/// pipeline.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct KafkaSourceSpec {
    /// `host:port[,host:port...]`
    pub brokers: String,
    pub topic: String,
    /// Stop each partition at the end it finds (a bounded source, for replays and tests).
    #[serde(default)]
    pub stop_at_end: bool,
    /// librdkafka settings passed through: `security.protocol`, `sasl.*`, `ssl.*`...
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
}

/// What a produced record is keyed by.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum KafkaKey {
    #[default]
    CustomerId,
    EventId,
}

/// A topic to write, in the pipeline spec.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct KafkaSinkSpec {
    pub brokers: String,
    pub topic: String,
    #[serde(default)]
    pub key: KafkaKey,
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
}

/// Settings that Mirador owns: passing them would break its guarantees.
const OWNED: [&str; 5] = [
    "bootstrap.servers",
    "enable.auto.commit",
    "enable.idempotence",
    "group.id",
    "enable.partition.eof",
];

fn validate(
    field: &str,
    brokers: &str,
    topic: &str,
    properties: &BTreeMap<String, String>,
) -> Result<(), FieldError> {
    let brokers_ok = !brokers.is_empty()
        && brokers.split(',').all(|b| {
            b.rsplit_once(':')
                .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok())
        });
    if !brokers_ok {
        return Err(FieldError::new(
            format!("{field}.brokers"),
            format!("{brokers:?} is invalid: host:port[,host:port...]"),
        ));
    }
    let topic_ok = !topic.is_empty()
        && topic.len() <= 249
        && topic
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if !topic_ok {
        return Err(FieldError::new(
            format!("{field}.topic"),
            format!("{topic:?} is invalid: 1 to 249 letters, digits, '.', '_' or '-'"),
        ));
    }
    if let Some(key) = properties.keys().find(|k| OWNED.contains(&k.as_str())) {
        return Err(FieldError::new(
            format!("{field}.properties.{key}"),
            "is set by Mirador itself",
        ));
    }
    Ok(())
}

impl KafkaSourceSpec {
    pub fn validate(&self, field: &str) -> Result<(), FieldError> {
        validate(field, &self.brokers, &self.topic, &self.properties)
    }
}

impl KafkaSinkSpec {
    pub fn validate(&self, field: &str) -> Result<(), FieldError> {
        validate(field, &self.brokers, &self.topic, &self.properties)
    }
}
