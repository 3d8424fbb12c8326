//! An idempotent producer writing scored records or dead letters.

use std::time::Duration;

use futures::future::BoxFuture;
use mirador_actors::StageError;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};

use mirador_proto::sync::Locked;

use super::{KafkaKey, KafkaSinkSpec};
use crate::sinks::{EncodeContext, MessageRecord, RecordSink, Refused};

/// A record's attributes as Kafka headers; none for a record without attributes.
fn headers(attributes: &[(&'static str, String)]) -> Option<OwnedHeaders> {
    if attributes.is_empty() {
        return None;
    }
    Some(
        attributes
            .iter()
            .fold(OwnedHeaders::new(), |headers, (key, value)| {
                headers.insert(Header {
                    key,
                    value: Some(value.as_bytes()),
                })
            }),
    )
}

pub struct KafkaSink {
    config: rdkafka::ClientConfig,
    /// Replaced when it fails for good (a fatal idempotence error after a broker lost its
    /// producer state): a fatal producer refuses every later record.
    producer: std::sync::Mutex<FutureProducer>,
    topic: String,
    key: KafkaKey,
    /// Names the pipeline's source in dead-letter headers.
    source: String,
}

impl KafkaSink {
    pub fn connect(spec: &KafkaSinkSpec, source: String) -> anyhow::Result<Self> {
        let config = super::producer_config(spec);
        let producer = config
            .create()
            .map_err(|e| anyhow::anyhow!("kafka producer for {}: {e}", spec.topic))?;
        Ok(KafkaSink {
            config,
            producer: std::sync::Mutex::new(producer),
            topic: spec.topic.clone(),
            key: spec.key,
            source,
        })
    }
}

impl Drop for KafkaSink {
    fn drop(&mut self) {
        // Dropping a producer discards what it still holds; everything acknowledged was
        // delivered already, so this only shortens a shutdown.
        let _ = self.producer.locked().flush(Duration::from_secs(5));
    }
}

impl KafkaSink {
    /// A producer in a fatal state is replaced by a new one (a new producer id): the
    /// batch is then written again, as after any failure.
    fn renew_if_fatal(&self, producer: &FutureProducer) {
        let Some((code, reason)) = producer.client().fatal_error() else {
            return;
        };
        match self.config.create::<FutureProducer>() {
            Ok(fresh) => {
                tracing::warn!(topic = %self.topic, %code, %reason, "kafka producer failed for good: replaced");
                *self.producer.locked() = fresh;
            }
            Err(error) => {
                tracing::warn!(topic = %self.topic, %error, "kafka producer failed for good and cannot be replaced yet")
            }
        }
    }
}

impl<T: MessageRecord + Send + Sync + 'static> RecordSink<T> for KafkaSink {
    fn write<'a>(
        &'a self,
        batch: &'a [T],
        context: &'a EncodeContext,
    ) -> BoxFuture<'a, Result<Refused, StageError>> {
        Box::pin(async move {
            let producer = self.producer.locked().clone();
            let unavailable = |message: String| {
                self.renew_if_fatal(&producer);
                StageError::Unavailable {
                    service: "kafka sink",
                    message,
                }
            };
            let now = crate::event::format_millis(chrono::Utc::now().timestamp_millis());
            let mut pending: Vec<(usize, DeliveryFuture)> = Vec::with_capacity(batch.len());
            let mut refused = Refused::new();
            for (index, record) in batch.iter().enumerate() {
                let key = record.key(self.key);
                let value = record.value(context, &now);
                loop {
                    let mut message = FutureRecord::to(&self.topic).payload(&value);
                    if let Some(key) = &key {
                        message = message.key(key);
                    }
                    if let Some(headers) = headers(&record.attributes(&self.source)) {
                        message = message.headers(headers);
                    }
                    match producer.send_result(message) {
                        Ok(delivery) => {
                            pending.push((index, delivery));
                            break;
                        }
                        Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                            // The producer's queue is full: let what is in flight land.
                            land(&mut pending, &mut refused)
                                .await
                                .map_err(unavailable)?;
                        }
                        Err((KafkaError::MessageProduction(code), _)) if refuses_for_good(code) => {
                            refused.push((index, format!("kafka refused the record: {code}")));
                            break;
                        }
                        Err((error, _)) => return Err(unavailable(error.to_string())),
                    }
                }
            }
            land(&mut pending, &mut refused)
                .await
                .map_err(unavailable)?;
            Ok(refused)
        })
    }
}

/// Errors about the record itself (too large, malformed), which no retry mends; every
/// other error is the producer's or the brokers' and worth a retry of the batch.
fn refuses_for_good(code: RDKafkaErrorCode) -> bool {
    matches!(
        code,
        RDKafkaErrorCode::MessageSizeTooLarge
            | RDKafkaErrorCode::InvalidMessageSize
            | RDKafkaErrorCode::InvalidMessage
            | RDKafkaErrorCode::InvalidRecord
    )
}

/// Waits for every pending delivery; a record refused for good joins `refused`, any other
/// failure is the error.
async fn land(
    pending: &mut Vec<(usize, DeliveryFuture)>,
    refused: &mut Refused,
) -> Result<(), String> {
    for (index, delivery) in pending.drain(..) {
        match delivery.await {
            Ok(Ok(_)) => {}
            Ok(Err((KafkaError::MessageProduction(code), _))) if refuses_for_good(code) => {
                refused.push((index, format!("kafka refused the record: {code}")));
            }
            Ok(Err((error, _))) => return Err(error.to_string()),
            Err(_) => return Err("the producer went away".to_string()),
        }
    }
    Ok(())
}

/// Produces raw payloads to a topic (for loading test and demo input), through the same
/// idempotent producer as the sink, waiting for every delivery. Returns how many were
/// delivered.
pub async fn produce(
    brokers: &str,
    topic: &str,
    mut payloads: impl Iterator<Item = Vec<u8>>,
) -> anyhow::Result<u64> {
    let spec = KafkaSinkSpec {
        brokers: brokers.to_string(),
        topic: topic.to_string(),
        key: KafkaKey::default(),
        properties: Default::default(),
    };
    let sink = KafkaSink::connect(&spec, String::new())?;
    let context = EncodeContext::default();
    let mut delivered = 0;
    loop {
        let chunk: Vec<Vec<u8>> = payloads.by_ref().take(10_000).collect();
        if chunk.is_empty() {
            return Ok(delivered);
        }
        let refused = RecordSink::write(&sink, &chunk, &context)
            .await
            .map_err(|e| anyhow::anyhow!("producing to {topic}: {e}"))?;
        if let Some((_, reason)) = refused.first() {
            anyhow::bail!("producing to {topic}: {reason}");
        }
        delivered += chunk.len() as u64;
    }
}
