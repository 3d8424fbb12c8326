//! A publisher of scored records or dead letters.

use std::collections::HashMap;

use futures::future::BoxFuture;
use google_cloud_pubsub::client::Publisher;
use google_cloud_pubsub::model::Message;
use mirador_actors::StageError;

use super::PubsubSinkSpec;
use crate::sinks::{EncodeContext, MessageRecord, RecordSink, Refused};

pub struct PubsubSink {
    publisher: Publisher,
    /// Names the pipeline's source in dead-letter attributes.
    source: String,
}

impl PubsubSink {
    pub async fn connect(spec: &PubsubSinkSpec, source: String) -> anyhow::Result<Self> {
        let connection = super::connection(spec.endpoint.as_ref());
        let mut builder = Publisher::builder(spec.topic_path());
        if let Some(endpoint) = connection.endpoint {
            builder = builder.with_endpoint(endpoint);
        }
        if let Some(credentials) = connection.credentials {
            builder = builder.with_credentials(credentials);
        }
        let publisher = builder
            .set_message_count_threshold(1000u32)
            .build()
            .await
            .map_err(|e| anyhow::anyhow!("pubsub publisher for {}: {e}", spec.topic))?;
        Ok(PubsubSink { publisher, source })
    }
}

/// Pub/Sub refuses attribute values longer than this.
const MAX_ATTRIBUTE_BYTES: usize = 1024;
/// Pub/Sub refuses messages larger than 10 MB; a bigger dead letter keeps its head.
const MAX_DATA_BYTES: usize = 9 * 1024 * 1024;

fn truncate(text: &str, max: usize) -> &str {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// Dead letters carry what happened to them as attributes, the same fields as the Kafka
/// headers; scored records carry none. The message body is what a Kafka sink would write.
fn attributes<T: MessageRecord>(record: &T, source: &str) -> HashMap<String, String> {
    record
        .attributes(source)
        .into_iter()
        .map(|(key, value)| {
            (
                key.to_string(),
                truncate(&value, MAX_ATTRIBUTE_BYTES).to_string(),
            )
        })
        .collect()
}

impl<T: MessageRecord + Send + Sync + 'static> RecordSink<T> for PubsubSink {
    fn write<'a>(
        &'a self,
        batch: &'a [T],
        context: &'a EncodeContext,
    ) -> BoxFuture<'a, Result<Refused, StageError>> {
        Box::pin(async move {
            let now = crate::event::format_millis(chrono::Utc::now().timestamp_millis());
            let pending: Vec<_> = batch
                .iter()
                .map(|record| {
                    let mut data = record.value(context, &now);
                    let mut attributes = attributes(record, &self.source);
                    if data.len() > MAX_DATA_BYTES {
                        attributes.insert("truncated_from".into(), data.len().to_string());
                        data.truncate(MAX_DATA_BYTES);
                    }
                    let message = Message::new().set_data(data).set_attributes(attributes);
                    self.publisher.publish(message)
                })
                .collect();
            for published in pending {
                published.await.map_err(|e| StageError::Unavailable {
                    service: "pubsub sink",
                    message: e.to_string(),
                })?;
            }
            // Too large a message is cut to fit above, so Pub/Sub refuses none for good.
            Ok(Refused::new())
        })
    }
}
