//! Kafka: a source per topic-partition with offsets from our own checkpoints, an
//! idempotent producer for scored records and dead letters, and the topic's partition
//! count for the coordinators.

mod sink;
mod source;

use std::time::Duration;

use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::ClientConfig;

// The spec types live in `mirador-spec`, so that specs are checked without any client.
pub use mirador_spec::kafka::{KafkaKey, KafkaSinkSpec, KafkaSourceSpec};
pub use sink::{produce, KafkaSink};
pub use source::{KafkaSource, QuietConsumer};

/// The librdkafka settings of a consumer of the spec's topic.
pub fn consumer_config(spec: &KafkaSourceSpec) -> ClientConfig {
    let mut config = ClientConfig::new();
    // A position the log no longer holds (retention took it) resumes at the oldest record
    // left, not past records never read; `properties` may say otherwise.
    config.set("auto.offset.reset", "earliest");
    for (key, value) in &spec.properties {
        config.set(key, value);
    }
    config
        .set("bootstrap.servers", &spec.brokers)
        // assign() needs a group id; no group is ever joined and nothing is committed to
        // Kafka: positions live in Mirador's checkpoints.
        .set("group.id", "mirador")
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "true");
    config
}

/// The librdkafka settings of a producer to the spec's topic.
pub fn producer_config(spec: &KafkaSinkSpec) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("linger.ms", "5")
        .set("message.timeout.ms", "30000");
    for (key, value) in &spec.properties {
        config.set(key, value);
    }
    config
        .set("bootstrap.servers", &spec.brokers)
        .set("enable.idempotence", "true");
    config
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
    let consumer: BaseConsumer<QuietContext> = consumer_config(spec)
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
