//! An idempotent producer writing scored records or dead letters.

use std::time::Duration;

use futures::future::BoxFuture;
use mirador_actors::{DeadLetter, StageError};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};

use super::{KafkaKey, KafkaSinkSpec};
use crate::event::ScoredRecord;
use crate::sinks::{EncodeContext, JsonLine, RecordSink};

/// How a record becomes a Kafka message.
pub trait KafkaRecord {
    fn key(&self, key: KafkaKey) -> Option<Vec<u8>>;
    fn value(&self, context: &EncodeContext, now: &str) -> Vec<u8>;
    fn headers(&self, source: &str) -> Option<OwnedHeaders>;
}

impl KafkaRecord for ScoredRecord {
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

    fn headers(&self, _source: &str) -> Option<OwnedHeaders> {
        None
    }
}

/// A dead letter travels as its original bytes; what happened to it is in the headers.
impl KafkaRecord for DeadLetter {
    fn key(&self, _key: KafkaKey) -> Option<Vec<u8>> {
        None
    }

    fn value(&self, _context: &EncodeContext, _now: &str) -> Vec<u8> {
        self.origin.payload.to_vec()
    }

    fn headers(&self, source: &str) -> Option<OwnedHeaders> {
        let partition = self.origin.position.partition.to_string();
        let offset = self.origin.position.offset.to_string();
        Some(
            [
                ("stage", self.stage),
                ("reason", self.reason.as_str()),
                ("message", self.message.as_str()),
                ("source", source),
                ("partition", partition.as_str()),
                ("offset", offset.as_str()),
            ]
            .into_iter()
            .fold(OwnedHeaders::new(), |headers, (key, value)| {
                headers.insert(Header {
                    key,
                    value: Some(value.as_bytes()),
                })
            }),
        )
    }
}

pub struct KafkaSink {
    producer: FutureProducer,
    topic: String,
    key: KafkaKey,
    /// Names the pipeline's source in dead-letter headers.
    source: String,
}

impl KafkaSink {
    pub fn connect(spec: &KafkaSinkSpec, source: String) -> anyhow::Result<Self> {
        let producer = spec
            .client_config()
            .create()
            .map_err(|e| anyhow::anyhow!("kafka producer for {}: {e}", spec.topic))?;
        Ok(KafkaSink {
            producer,
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
        let _ = self.producer.flush(Duration::from_secs(5));
    }
}

impl<T: KafkaRecord + Send + Sync + 'static> RecordSink<T> for KafkaSink {
    fn write<'a>(
        &'a self,
        batch: &'a [T],
        context: &'a EncodeContext,
    ) -> BoxFuture<'a, Result<(), StageError>> {
        Box::pin(async move {
            let unavailable = |message: String| StageError::Unavailable {
                service: "kafka sink",
                message,
            };
            let now = crate::event::format_millis(chrono::Utc::now().timestamp_millis());
            let mut pending: Vec<DeliveryFuture> = Vec::with_capacity(batch.len());
            for record in batch {
                let key = record.key(self.key);
                let value = record.value(context, &now);
                loop {
                    let mut message = FutureRecord::to(&self.topic).payload(&value);
                    if let Some(key) = &key {
                        message = message.key(key);
                    }
                    if let Some(headers) = record.headers(&self.source) {
                        message = message.headers(headers);
                    }
                    match self.producer.send_result(message) {
                        Ok(delivery) => {
                            pending.push(delivery);
                            break;
                        }
                        Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                            // The producer's queue is full: let what is in flight land.
                            land(&mut pending).await.map_err(unavailable)?;
                        }
                        Err((error, _)) => return Err(unavailable(error.to_string())),
                    }
                }
            }
            land(&mut pending).await.map_err(unavailable)
        })
    }
}

/// Waits for every pending delivery; the first failure is the error.
async fn land(pending: &mut Vec<DeliveryFuture>) -> Result<(), String> {
    for delivery in pending.drain(..) {
        match delivery.await {
            Ok(Ok(_)) => {}
            Ok(Err((error, _))) => return Err(error.to_string()),
            Err(_) => return Err("the producer went away".to_string()),
        }
    }
    Ok(())
}

/// A raw payload, produced as it is: no key, no headers.
impl KafkaRecord for Vec<u8> {
    fn key(&self, _key: KafkaKey) -> Option<Vec<u8>> {
        None
    }

    fn value(&self, _context: &EncodeContext, _now: &str) -> Vec<u8> {
        self.clone()
    }

    fn headers(&self, _source: &str) -> Option<OwnedHeaders> {
        None
    }
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
        RecordSink::write(&sink, &chunk, &context)
            .await
            .map_err(|e| anyhow::anyhow!("producing to {topic}: {e}"))?;
        delivered += chunk.len() as u64;
    }
}
