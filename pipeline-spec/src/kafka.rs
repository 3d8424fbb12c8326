use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::ClientConfig;
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

    /// The librdkafka settings of a consumer of this topic.
    pub fn client_config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        for (key, value) in &self.properties {
            config.set(key, value);
        }
        config
            .set("bootstrap.servers", &self.brokers)
            // assign() needs a group id; no group is ever joined and nothing is committed
            // to Kafka: positions live in Mirador's checkpoints.
            .set("group.id", "mirador")
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("enable.partition.eof", "true");
        config
    }
}

impl KafkaSinkSpec {
    pub fn validate(&self, field: &str) -> Result<(), FieldError> {
        validate(field, &self.brokers, &self.topic, &self.properties)
    }

    /// The librdkafka settings of a producer to this topic.
    pub fn client_config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config
            .set("linger.ms", "5")
            .set("message.timeout.ms", "30000");
        for (key, value) in &self.properties {
            config.set(key, value);
        }
        config
            .set("bootstrap.servers", &self.brokers)
            .set("enable.idempotence", "true");
        config
    }
}

/// A consumer context that reports client errors as warnings, except the end of a
/// partition, which is news rather than an error (the poll loop handles it).
pub struct QuietContext;

impl ClientContext for QuietContext {
    fn error(&self, error: KafkaError, reason: &str) {
        let end_of_partition = matches!(error, KafkaError::PartitionEOF(_))
            || error.rdkafka_error_code() == Some(RDKafkaErrorCode::PartitionEOF);
        if !end_of_partition {
            tracing::warn!(%error, reason, "kafka client error");
        }
    }
}

impl ConsumerContext for QuietContext {}

/// The partitions of the spec's topic, from the brokers' metadata. Blocks.
pub fn partitions_of(spec: &KafkaSourceSpec, timeout: Duration) -> anyhow::Result<u32> {
    let consumer: BaseConsumer<QuietContext> = spec
        .client_config()
        .create_with_context(QuietContext)
        .map_err(|e| anyhow::anyhow!("source.kafka: {e}"))?;
    let metadata = consumer
        .fetch_metadata(Some(&spec.topic), timeout)
        .map_err(|e| anyhow::anyhow!("source.kafka: metadata of {}: {e}", spec.topic))?;
    let partitions = metadata
        .topics()
        .first()
        .filter(|t| t.error().is_none())
        .map_or(0, |t| t.partitions().len());
    anyhow::ensure!(
        partitions > 0,
        "source.kafka.topic: {} has no partitions on {}",
        spec.topic,
        spec.brokers
    );
    Ok(partitions as u32)
}
