//! Kafka in and out, against a real Kafka-protocol broker.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use common::services::KafkaBroker;
use mirador_executor::infer::InferencePool;
use mirador_executor::sources::generator::EventFactory;
use mirador_executor::spec::{GeneratorSpec, PayloadFormat};
use mirador_executor::{run_pipeline, PipelineResources, PipelineSpec, RunOptions};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Headers;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};

/// (partition, offset) of an input record.
type Key = (u64, u64);

/// Every message of a topic: (value, headers).
fn read_topic(
    brokers: &str,
    topic: &str,
    partitions: i32,
) -> Vec<(Vec<u8>, HashMap<String, String>)> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "test-reader")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .create()
        .unwrap();
    let mut assignment = TopicPartitionList::new();
    for partition in 0..partitions {
        assignment
            .add_partition_offset(topic, partition, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&assignment).unwrap();
    let mut messages = Vec::new();
    let mut ended = std::collections::HashSet::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while ended.len() < partitions as usize {
        assert!(
            std::time::Instant::now() < deadline,
            "reading {topic} took too long"
        );
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(message)) => {
                let headers = message
                    .headers()
                    .map(|h| {
                        h.iter()
                            .map(|h| {
                                (
                                    h.key.to_string(),
                                    String::from_utf8_lossy(h.value.unwrap_or_default())
                                        .into_owned(),
                                )
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                messages.push((message.payload().unwrap_or_default().to_vec(), headers));
            }
            Some(Err(KafkaError::PartitionEOF(partition))) => {
                ended.insert(partition);
            }
            Some(Err(error)) => panic!("reading {topic}: {error}"),
            None => {}
        }
    }
    messages
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kafka_pipeline_scores_every_record_and_dead_letters_the_poison() {
    let broker = KafkaBroker::start();
    broker.create_topic("events", 4);
    broker.create_topic("scored", 2);
    broker.create_topic("dead", 1);
    let brokers = broker.brokers();

    // 4000 events, 3% poison, round-robin over the four partitions.
    let generator = GeneratorSpec {
        events: None,
        partitions: 1,
        customers: 12_000,
        zipf_exponent: 1.1,
        poison_ratio: 0.03,
        seed: 21,
        rate_per_sec: None,
    };
    let factory = EventFactory::new(&generator, 0, PayloadFormat::Json, 65536);
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("enable.idempotence", "true")
        .create()
        .unwrap();
    let now = chrono::Utc::now().timestamp_millis();
    let mut poison: BTreeMap<Key, ()> = BTreeMap::new();
    let mut payload = Vec::new();
    let mut next_offset = [0u64; 4];
    for seq in 0..4000u64 {
        factory.payload(seq, now, &mut payload);
        let partition = (seq % 4) as i32;
        let delivery = producer
            .send(
                FutureRecord::<(), _>::to("events")
                    .partition(partition)
                    .payload(&payload),
                Duration::from_secs(5),
            )
            .await
            .expect("produced");
        assert_eq!(delivery.offset as u64, next_offset[partition as usize]);
        if factory.poison(seq).is_some() {
            poison.insert((partition as u64, delivery.offset as u64), ());
        }
        next_offset[partition as usize] += 1;
    }

    let dir = tempfile::tempdir().unwrap();
    let source =
        format!("  kafka:\n    brokers: \"{brokers}\"\n    topic: events\n    stop_at_end: true");
    let sink = format!("  kafka:\n    brokers: \"{brokers}\"\n    topic: scored");
    let dead = format!("  kafka:\n    brokers: \"{brokers}\"\n    topic: dead");
    let spec = PipelineSpec::from_yaml(&common::spec_yaml(
        "kafka",
        &source,
        &sink,
        &dead,
        &dir.path().join("cp"),
    ))
    .unwrap();
    let pool = InferencePool::default();
    let resources = Arc::new(PipelineResources::build(spec, &pool).await.unwrap());
    assert_eq!(
        resources.partitions, 4,
        "a pipeline partition per topic partition"
    );
    let report = run_pipeline(resources, &RunOptions::default())
        .await
        .unwrap();
    assert!(report.succeeded(), "{:?}", report.failures);
    assert_eq!(report.events_in, 4000);

    let mut seen: HashMap<Key, usize> = HashMap::new();
    for (value, _) in read_topic(&brokers, "scored", 2) {
        let line: serde_json::Value = serde_json::from_slice(&value).unwrap();
        let key = (
            line["source"]["partition"].as_u64().unwrap(),
            line["source"]["offset"].as_u64().unwrap(),
        );
        *seen.entry(key).or_default() += 1;
    }
    let mut dead_keys = BTreeMap::new();
    for (_, headers) in read_topic(&brokers, "dead", 1) {
        let key = (
            headers["partition"].parse().unwrap(),
            headers["offset"].parse().unwrap(),
        );
        assert_eq!(headers["source"], "kafka:events");
        assert!(
            !headers["reason"].is_empty() && !headers["stage"].is_empty(),
            "{headers:?}"
        );
        *seen.entry(key).or_default() += 1;
        dead_keys.insert(key, ());
    }
    assert_eq!(
        seen.len(),
        4000,
        "every input record is in the sink or the dead letter"
    );
    assert!(
        seen.values().all(|n| *n == 1),
        "exactly once without a crash"
    );
    assert_eq!(
        dead_keys, poison,
        "the dead-letter topic holds the poison, no more, no less"
    );
    // The checkpoints stand at the end of every partition.
    for partition in 0..4 {
        let checkpoint: serde_json::Value = serde_json::from_slice(
            &std::fs::read(dir.path().join(format!("cp/kafka.p{partition}.json"))).unwrap(),
        )
        .unwrap();
        assert_eq!(checkpoint["offset"].as_u64(), Some(1000));
    }
}
