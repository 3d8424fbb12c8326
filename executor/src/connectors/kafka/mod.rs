//! Kafka: a source per topic-partition with offsets from our own checkpoints, and an
//! idempotent producer for scored records and dead letters.

mod config;
mod sink;
mod source;

pub use config::{KafkaKey, KafkaSinkSpec, KafkaSourceSpec};
pub use sink::{produce, KafkaRecord, KafkaSink};
pub use source::{partitions_of, KafkaSource, QuietConsumer, QuietContext};
