//! Kafka in and out, against a real Kafka-protocol broker.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use common::services::{read_topic, KafkaBroker};
use mirador_actors::{Position, ReasonCode, Source, SourceEnd};
use mirador_cluster_tests::event_id;
use mirador_executor::connectors::generator::EventFactory;
use mirador_executor::connectors::kafka::{KafkaSource, KafkaSourceSpec};
use mirador_executor::infer::InferencePool;
use mirador_executor::spec::{GeneratorSpec, PayloadFormat};
use mirador_executor::{run_pipeline, PipelineResources, PipelineSpec, RunOptions};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;

/// (partition, offset) of an input record.
type Key = (u64, u64);

/// An unbounded generator of one partition, for payloads to produce.
fn unbounded(customers: u64, poison_ratio: f64, seed: u64) -> GeneratorSpec {
    GeneratorSpec {
        events: None,
        partitions: 1,
        customers,
        zipf_exponent: 1.1,
        poison_ratio,
        seed,
        rate_per_sec: None,
    }
}

/// A spec's resources, built on `pool`.
async fn resources(yaml: &str, pool: &InferencePool) -> Arc<PipelineResources> {
    let spec = PipelineSpec::from_yaml(yaml).unwrap();
    Arc::new(PipelineResources::build(spec, pool).await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kafka_pipeline_scores_every_record_and_dead_letters_the_poison() {
    let broker = KafkaBroker::start();
    broker.create_topic("events", 4);
    broker.create_topic("scored", 2);
    broker.create_topic("dead", 1);
    let brokers = broker.brokers();

    // 4000 events, 3% poison, round-robin over the four partitions.
    let generator = unbounded(12_000, 0.03, 21);
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
    let pool = InferencePool::default();
    let yaml = common::spec_yaml("kafka", &source, &sink, &dead, &dir.path().join("cp"));
    let resources = resources(&yaml, &pool).await;
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

/// The saved offsets of a pipeline's partitions (0 where none is saved yet).
fn checkpoints(dir: &std::path::Path, name: &str, partitions: u32) -> Vec<u64> {
    (0..partitions)
        .map(|p| {
            std::fs::read(dir.join(format!("{name}.p{p}.json")))
                .ok()
                .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
                .and_then(|v| v["offset"].as_u64())
                .unwrap_or(0)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_killed_and_restarted_mid_run_loses_nothing() {
    const EVENTS: u64 = 60_000;
    let mut broker = KafkaBroker::start_on_disk();
    broker.create_topic("events", 2);
    broker.create_topic("scored", 1);
    broker.create_topic("dead", 1);
    let brokers = broker.brokers();
    let events = mirador_executor::connectors::generator::EventFactory::new(
        &unbounded(12_000, 0.01, 9),
        0,
        PayloadFormat::Json,
        65536,
    );
    let now = chrono::Utc::now().timestamp_millis();
    let poison_ids: std::collections::BTreeSet<String> = (0..EVENTS)
        .filter(|seq| events.poison(*seq).is_some())
        .map(|seq| events.event_id(seq))
        .collect();
    let payloads = (0..EVENTS).map(|seq| {
        let mut payload = Vec::new();
        events.payload(seq, now, &mut payload);
        payload
    });
    let produced = mirador_executor::connectors::kafka::produce(&brokers, "events", payloads)
        .await
        .unwrap();
    assert_eq!(produced, EVENTS);

    let dir = tempfile::tempdir().unwrap();
    let cp = dir.path().join("cp");
    let source =
        format!("  kafka:\n    brokers: \"{brokers}\"\n    topic: events\n    stop_at_end: true");
    let sink = format!("  kafka:\n    brokers: \"{brokers}\"\n    topic: scored");
    let dead = format!("  kafka:\n    brokers: \"{brokers}\"\n    topic: dead");
    let pool = InferencePool::default();
    let resources = resources(
        &common::spec_yaml("restart", &source, &sink, &dead, &cp),
        &pool,
    )
    .await;
    let options = RunOptions::default();
    let run = mirador_executor::PipelineRun::start(resources, &options)
        .await
        .unwrap();

    // Kill the broker as soon as the pipeline has made progress, keep it down for 3 s.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while checkpoints(&cp, "restart", 2).iter().sum::<u64>() == 0 {
        assert!(std::time::Instant::now() < deadline, "no progress");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let broker = tokio::task::spawn_blocking(move || {
        broker.restart_after(Duration::from_secs(3));
        broker
    });
    let at_kill: u64 = checkpoints(&cp, "restart", 2).iter().sum();
    let broker = broker.await.unwrap();
    // A stall after the restart fails the test instead of hanging it.
    let report = tokio::time::timeout(Duration::from_secs(180), run.wait(&options))
        .await
        .expect("the run ends within 180 s of the broker's restart");
    assert!(report.succeeded(), "{:?}", report.failures);
    assert!(
        at_kill < EVENTS,
        "the broker went down mid-run ({at_kill} done)"
    );
    assert_eq!(checkpoints(&cp, "restart", 2).iter().sum::<u64>(), EVENTS);

    // Every event is in the sink or the dead letter; the poison in the dead letter.
    let mut seen: HashMap<String, usize> = HashMap::new();
    for (value, _) in read_topic(&broker.brokers(), "scored", 1) {
        let line: serde_json::Value = serde_json::from_slice(&value).unwrap();
        *seen
            .entry(line["event"]["event_id"].as_str().unwrap().to_string())
            .or_default() += 1;
    }
    let mut dead_ids = std::collections::BTreeSet::new();
    for (value, headers) in read_topic(&broker.brokers(), "dead", 1) {
        assert!(!headers["reason"].is_empty(), "{headers:?}");
        let id = event_id(&value);
        *seen.entry(id.clone()).or_default() += 1;
        dead_ids.insert(id);
    }
    assert_eq!(
        seen.len() as u64,
        EVENTS,
        "every event reached the sink or the dead letter across the restart"
    );
    assert_eq!(dead_ids, poison_ids, "the dead letter holds the poison");
    let twice = seen.values().filter(|n| **n > 1).count();
    println!("broker down 3 s after {at_kill} events; written twice: {twice}");
}

/// Produces `count` small records to partition 0 of `topic`.
async fn produce_records(brokers: &str, topic: &str, count: usize) {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("enable.idempotence", "true")
        .create()
        .unwrap();
    for i in 0..count {
        let payload = format!("record {i}");
        producer
            .send(
                FutureRecord::<(), _>::to(topic)
                    .partition(0)
                    .payload(&payload),
                Duration::from_secs(5),
            )
            .await
            .expect("produced");
    }
}

/// Waits up to 10 s for `end` to read `want`.
async fn wait_for_end(end: &SourceEnd, want: u64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while end.end() != Some(want) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the source's end is {:?}, not {want}",
            end.end()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_source_knows_the_high_watermark_even_while_the_pipeline_holds_it_back() {
    let broker = KafkaBroker::start();
    broker.create_topic("lag", 1);
    let brokers = broker.brokers();
    produce_records(&brokers, "lag", 300).await;

    let spec: KafkaSourceSpec =
        serde_yaml_ng::from_str(&format!("brokers: \"{brokers}\"\ntopic: lag")).unwrap();
    let end = Arc::new(SourceEnd::default());
    let resume = Some(Position {
        partition: 0,
        offset: 100,
    });
    let mut source = KafkaSource::start(&spec, 0, 50, resume, end.clone()).unwrap();
    let first = source.next_batch().await.unwrap().expect("a batch").items;
    assert_eq!(
        first[0].origin.position.offset, 100,
        "the source resumes at its checkpoint"
    );
    wait_for_end(&end, 300).await;

    // Nothing reads the source now: its polling thread waits for room with records in
    // hand, and still learns that the partition grew.
    produce_records(&brokers, "lag", 200).await;
    wait_for_end(&end, 500).await;
    drop(source);
}

/// Produces `count` records to partition 0 of `topic` all at once, so that the producer
/// packs them into a few large record batches.
async fn produce_in_large_batches(brokers: &str, topic: &str, count: usize) {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("enable.idempotence", "true")
        .set("linger.ms", "200")
        .create()
        .unwrap();
    let payloads: Vec<String> = (0..count).map(|i| format!("record {i}")).collect();
    let sends: Vec<_> = payloads
        .iter()
        .map(|payload| {
            producer
                .send_result(
                    FutureRecord::<(), _>::to(topic)
                        .partition(0)
                        .payload(payload),
                )
                .map_err(|(error, _)| error)
                .expect("queued")
        })
        .collect();
    for (i, send) in sends.into_iter().enumerate() {
        let delivery = send
            .await
            .expect("delivered")
            .map_err(|(error, _)| error)
            .expect("produced");
        assert_eq!(delivery.offset, i as i64);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_resuming_inside_a_record_batch_reads_from_its_checkpoint_on() {
    let broker = KafkaBroker::start();
    broker.create_topic("packed", 1);
    let brokers = broker.brokers();
    produce_in_large_batches(&brokers, "packed", 500).await;

    let spec: KafkaSourceSpec = serde_yaml_ng::from_str(&format!(
        "brokers: \"{brokers}\"\ntopic: packed\nstop_at_end: true"
    ))
    .unwrap();
    // Checkpoints inside the batches, the last record's among them.
    for checkpoint in [1u64, 77, 250, 433, 499] {
        let resume = Some(Position {
            partition: 0,
            offset: checkpoint,
        });
        let end = Arc::new(SourceEnd::default());
        let mut source = KafkaSource::start(&spec, 0, 64, resume, end).unwrap();
        let mut offsets = Vec::new();
        while let Some(batch) = tokio::time::timeout(Duration::from_secs(20), source.next_batch())
            .await
            .unwrap_or_else(|_| {
                panic!("resumed at {checkpoint}, the source did not reach the end: {offsets:?}")
            })
            .unwrap()
        {
            offsets.extend(batch.items.iter().map(|r| r.origin.position.offset));
        }
        let wanted: Vec<u64> = (checkpoint..500).collect();
        assert_eq!(
            offsets, wanted,
            "resumed at {checkpoint}: every record from there on, once, in order"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_the_kafka_sink_refuses_goes_to_the_dead_letter_as_sink_rejected() {
    let broker = KafkaBroker::start();
    broker.create_topic("scored", 1);
    broker.create_topic("dead", 1);
    let brokers = broker.brokers();

    // 300 events; every tenth carries an attribute too large for the sink's producer.
    let generator = unbounded(1000, 0.0, 4);
    let factory = EventFactory::new(&generator, 0, PayloadFormat::Json, 65536);
    let now = chrono::Utc::now().timestamp_millis();
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    let (mut lines, mut payload, mut oversized) = (String::new(), Vec::new(), Vec::new());
    for seq in 0..300u64 {
        factory.payload(seq, now, &mut payload);
        let mut event: serde_json::Value = serde_json::from_slice(&payload).unwrap();
        if seq % 10 == 0 {
            event["attributes"] = serde_json::json!({ "note": "n".repeat(5000) });
            oversized.push(event["event_id"].as_str().unwrap().to_string());
        }
        lines.push_str(&format!("{event}\n"));
    }
    std::fs::write(&input, lines).unwrap();

    let source = format!("  file:\n    path: {}", input.display());
    let sink = format!(
        "  kafka:\n    brokers: \"{brokers}\"\n    topic: scored\n    properties:\n      \
         message.max.bytes: \"4000\""
    );
    let dead = format!("  kafka:\n    brokers: \"{brokers}\"\n    topic: dead");
    let pool = InferencePool::default();
    let yaml = common::spec_yaml("refused", &source, &sink, &dead, &dir.path().join("cp"));
    let resources = resources(&yaml, &pool).await;
    let report = run_pipeline(resources, &RunOptions::default())
        .await
        .unwrap();
    assert!(report.succeeded(), "{:?}", report.failures);
    assert_eq!(report.events_in, 300);
    assert_eq!(
        report.scored, 270,
        "what the sink refused is not counted as scored"
    );
    assert_eq!(
        report.dead_lettered,
        BTreeMap::from([(ReasonCode::SinkRejected, 30)]),
        "the refused records are dead-lettered as sink_rejected, nothing else"
    );

    let scored: Vec<String> = read_topic(&brokers, "scored", 1)
        .into_iter()
        .map(|(value, _)| {
            let line: serde_json::Value = serde_json::from_slice(&value).unwrap();
            line["event"]["event_id"].as_str().unwrap().to_string()
        })
        .collect();
    assert_eq!(scored.len(), 270);
    assert!(scored.iter().all(|id| !oversized.contains(id)));
    let mut refused = Vec::new();
    for (value, headers) in read_topic(&brokers, "dead", 1) {
        assert_eq!(headers["reason"], "sink_rejected", "{headers:?}");
        assert_eq!(headers["stage"], "sink");
        assert!(headers["message"].contains("kafka refused"), "{headers:?}");
        let event: serde_json::Value = serde_json::from_slice(&value).unwrap();
        refused.push(event["event_id"].as_str().unwrap().to_string());
    }
    refused.sort();
    oversized.sort();
    assert_eq!(
        refused, oversized,
        "the refused records, each once, as they came in"
    );
}
