//! Kafka: a source per topic-partition with offsets from our own checkpoints, and an
//! idempotent producer for scored records and dead letters.

mod sink;
mod source;

// The spec types live in `mirador-spec`, so that coordinators check specs without
// linking libtorch.
pub use mirador_spec::kafka::{
    partitions_of, KafkaKey, KafkaSinkSpec, KafkaSourceSpec, QuietContext,
};
pub use sink::{produce, KafkaRecord, KafkaSink};
pub use source::{KafkaSource, QuietConsumer};
