//! `mirador admin dead-letters`: a pipeline's dead letters, read from the dead-letter
//! target its spec names (the spec comes from the coordinators): a file of JSON lines, or
//! a Kafka topic, whose records hold the original bytes with what happened to them in
//! headers. Listed with filters, or one shown with its original bytes.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use mirador_executor::spec::{PipelineSpec, SinkTarget};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Headers;
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use serde_json::{json, Value};

/// One dead letter, as either target keeps it.
#[derive(Debug, Clone)]
pub struct DeadLetterEntry {
    pub stage: String,
    pub reason: String,
    pub message: String,
    pub partition: u64,
    pub offset: u64,
    /// The input's original bytes.
    pub payload: Vec<u8>,
    /// When it was dead-lettered (RFC 3339), where the target keeps it.
    pub at: Option<String>,
}

impl DeadLetterEntry {
    pub fn json(&self, with_payload: bool) -> Value {
        let mut value = json!({
            "stage": self.stage, "reason": self.reason, "message": self.message,
            "partition": self.partition, "offset": self.offset, "dead_lettered_at": self.at,
        });
        if with_payload {
            value["payload"] = match std::str::from_utf8(&self.payload) {
                Ok(text) => json!(text),
                Err(_) => json!(self.payload),
            };
        }
        value
    }
}

/// What `list` keeps.
#[derive(Debug, Default)]
pub struct Filter {
    pub reason: Option<String>,
    pub stage: Option<String>,
    /// Dead-lettered at or after (RFC 3339, compared as text in the same format).
    pub since: Option<String>,
}

impl Filter {
    pub fn keeps(&self, entry: &DeadLetterEntry) -> bool {
        self.reason.as_ref().is_none_or(|r| *r == entry.reason)
            && self.stage.as_ref().is_none_or(|s| *s == entry.stage)
            && self
                .since
                .as_ref()
                .is_none_or(|since| entry.at.as_ref().is_some_and(|at| at >= since))
    }
}

/// Every dead letter of the pipeline whose spec is `yaml`, from its first target that
/// can be read back.
pub fn read(yaml: &str) -> anyhow::Result<Vec<DeadLetterEntry>> {
    let spec = PipelineSpec::from_yaml(yaml)?;
    for target in &spec.dead_letter.targets {
        match target {
            SinkTarget::File(file) => return read_file(&file.path),
            SinkTarget::Kafka(kafka) => return read_kafka(&kafka.brokers, &kafka.topic),
            _ => {}
        }
    }
    anyhow::bail!(
        "dead_letter: {} keeps its dead letters where they cannot be read back (a file or a \
         Kafka topic can)",
        spec.name
    )
}

fn read_file(path: &std::path::Path) -> anyhow::Result<Vec<DeadLetterEntry>> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => anyhow::bail!("dead_letter.file.path: {}: {e}", path.display()),
    };
    // A line cut short by a crash mid-write is skipped, as the file sink's own reader does.
    Ok(text
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .map(|v| {
            let text = |key: &str| v[key].as_str().unwrap_or_default().to_string();
            let payload = match v["payload_encoding"].as_str() {
                Some("base64") => {
                    use base64::Engine;
                    base64::engine::general_purpose::STANDARD
                        .decode(v["payload"].as_str().unwrap_or_default())
                        .unwrap_or_default()
                }
                _ => text("payload").into_bytes(),
            };
            DeadLetterEntry {
                stage: text("stage"),
                reason: text("reason"),
                message: text("message"),
                partition: v["source"]["partition"].as_u64().unwrap_or_default(),
                offset: v["source"]["offset"].as_u64().unwrap_or_default(),
                payload,
                at: v["dead_lettered_at"].as_str().map(String::from),
            }
        })
        .collect())
}

/// The topic read to its end (every partition), with its headers as the sink wrote them.
fn read_kafka(brokers: &str, topic: &str) -> anyhow::Result<Vec<DeadLetterEntry>> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "mirador-admin")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .create()?;
    let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let partitions = metadata
        .topics()
        .first()
        .map_or(0, |t| t.partitions().len() as i32);
    anyhow::ensure!(
        partitions > 0,
        "dead_letter.kafka.topic: {topic} has no partitions on {brokers}"
    );
    let mut assignment = TopicPartitionList::new();
    for partition in 0..partitions {
        assignment.add_partition_offset(topic, partition, Offset::Beginning)?;
    }
    consumer.assign(&assignment)?;
    let mut entries = Vec::new();
    let mut ended = std::collections::HashSet::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while ended.len() < partitions as usize {
        anyhow::ensure!(
            Instant::now() < deadline,
            "dead_letter.kafka: {topic} not read to its end within 60 s"
        );
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(message)) => {
                let headers: HashMap<String, String> = message
                    .headers()
                    .map(|h| {
                        h.iter()
                            .map(|h| {
                                let value = h.value.unwrap_or_default();
                                (
                                    h.key.to_string(),
                                    String::from_utf8_lossy(value).into_owned(),
                                )
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                let text = |key: &str| headers.get(key).cloned().unwrap_or_default();
                let number = |key: &str| text(key).parse().unwrap_or_default();
                entries.push(DeadLetterEntry {
                    stage: text("stage"),
                    reason: text("reason"),
                    message: text("message"),
                    partition: number("partition"),
                    offset: number("offset"),
                    payload: message.payload().unwrap_or_default().to_vec(),
                    at: message
                        .timestamp()
                        .to_millis()
                        .and_then(chrono::DateTime::from_timestamp_millis)
                        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)),
                });
            }
            Some(Err(KafkaError::PartitionEOF(partition))) => {
                ended.insert(partition);
            }
            Some(Err(error)) => anyhow::bail!("dead_letter.kafka: {topic}: {error}"),
            None => {}
        }
    }
    Ok(entries)
}
