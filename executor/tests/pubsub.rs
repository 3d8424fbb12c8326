//! Pub/Sub in and out, against the Pub/Sub emulator.

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use common::services::PubsubEmulator;
use google_cloud_auth::credentials::anonymous;
use google_cloud_pubsub::client::{Publisher, Subscriber};
use google_cloud_pubsub::model::Message;
use mirador_cluster_tests::event_id;
use mirador_executor::connectors::generator::EventFactory;
use mirador_executor::connectors::pubsub::{create_subscription, create_topic};
use mirador_executor::infer::InferencePool;
use mirador_executor::spec::{GeneratorSpec, PayloadFormat};
use mirador_executor::{run_pipeline, PipelineResources, PipelineSpec, RunOptions};

const PROJECT: &str = "test-project";

async fn create(emulator: &PubsubEmulator, topic: &str, subscription: &str) {
    let endpoint = emulator.endpoint();
    create_topic(&endpoint, PROJECT, topic).await.unwrap();
    create_subscription(&endpoint, PROJECT, subscription, topic, 60)
        .await
        .unwrap();
}

/// Every message on a subscription until it has been quiet for 3 s: (data, attributes).
async fn drain(
    emulator: &PubsubEmulator,
    subscription: &str,
) -> Vec<(Vec<u8>, HashMap<String, String>)> {
    drain_until_quiet(emulator, subscription, Duration::from_secs(3)).await
}

/// Every message on a subscription until it has been quiet for `quiet`.
async fn drain_until_quiet(
    emulator: &PubsubEmulator,
    subscription: &str,
    quiet: Duration,
) -> Vec<(Vec<u8>, HashMap<String, String>)> {
    let client = Subscriber::builder()
        .with_endpoint(emulator.endpoint())
        .with_credentials(anonymous::Builder::new().build())
        .build()
        .await
        .unwrap();
    let mut stream = client
        .subscribe(format!("projects/{PROJECT}/subscriptions/{subscription}"))
        .build();
    let mut messages = Vec::new();
    while let Ok(Some(item)) = tokio::time::timeout(quiet, stream.next()).await {
        let (message, handler) = item.unwrap();
        messages.push((
            message.data.to_vec(),
            message.attributes.into_iter().collect(),
        ));
        handler.ack();
    }
    messages
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pubsub_pipeline_over_two_lanes_scores_every_message_and_dead_letters_the_poison() {
    let emulator = PubsubEmulator::start();
    create(&emulator, "events", "events-sub").await;
    create(&emulator, "scored", "scored-sub").await;
    create(&emulator, "dead-letter", "dead-letter-sub").await;

    let generator = GeneratorSpec {
        events: None,
        partitions: 1,
        customers: 12_000,
        zipf_exponent: 1.1,
        poison_ratio: 0.03,
        seed: 5,
        rate_per_sec: None,
    };
    let factory = EventFactory::new(&generator, 0, PayloadFormat::Json, 65536);
    let publisher = Publisher::builder(format!("projects/{PROJECT}/topics/events"))
        .with_endpoint(emulator.endpoint())
        .with_credentials(anonymous::Builder::new().build())
        .build()
        .await
        .unwrap();
    let now = chrono::Utc::now().timestamp_millis();
    let mut poison = std::collections::BTreeSet::new();
    let mut published = Vec::new();
    for seq in 0..2000 {
        let mut payload = Vec::new();
        factory.payload(seq, now, &mut payload);
        if factory.poison(seq).is_some() {
            poison.insert(factory.event_id(seq));
        }
        published.push(publisher.publish(Message::new().set_data(payload)));
    }
    for message in published {
        message.await.unwrap();
    }

    let dir = tempfile::tempdir().unwrap();
    let endpoint = emulator.endpoint();
    let source = format!(
        "  pubsub:\n    project: {PROJECT}\n    subscription: events-sub\n    lanes: 2\n    endpoint: \"{endpoint}\"\n    stop_after_idle_ms: 3000"
    );
    let sink = format!(
        "  pubsub:\n    project: {PROJECT}\n    topic: scored\n    endpoint: \"{endpoint}\""
    );
    let dead = format!(
        "  pubsub:\n    project: {PROJECT}\n    topic: dead-letter\n    endpoint: \"{endpoint}\""
    );
    let spec = PipelineSpec::from_yaml(&common::spec_yaml(
        "pubsub",
        &source,
        &sink,
        &dead,
        &dir.path().join("cp"),
    ))
    .unwrap();
    let pool = InferencePool::default();
    let resources = Arc::new(PipelineResources::build(spec, &pool).await.unwrap());
    assert_eq!(resources.partitions, 2, "a pipeline partition per lane");
    let report = run_pipeline(resources, &RunOptions::default())
        .await
        .unwrap();
    assert!(report.succeeded(), "{:?}", report.failures);
    assert_eq!(report.events_in, 2000, "{report:?}");

    let mut seen: HashMap<String, usize> = HashMap::new();
    for (data, _) in drain(&emulator, "scored-sub").await {
        let line: serde_json::Value = serde_json::from_slice(&data).unwrap();
        *seen
            .entry(line["event"]["event_id"].as_str().unwrap().to_string())
            .or_default() += 1;
    }
    let mut dead_ids = std::collections::BTreeSet::new();
    for (data, attributes) in drain(&emulator, "dead-letter-sub").await {
        assert_eq!(attributes["source"], "pubsub:events-sub");
        assert!(!attributes["reason"].is_empty(), "{attributes:?}");
        let id = event_id(&data);
        *seen.entry(id.clone()).or_default() += 1;
        dead_ids.insert(id);
    }
    assert_eq!(
        seen.len(),
        2000,
        "every message reached the sink or the dead letter"
    );
    assert!(
        seen.values().all(|n| *n == 1),
        "exactly once without a crash"
    );
    assert_eq!(
        dead_ids, poison,
        "the dead-letter topic holds the poison, no more, no less"
    );
    // Everything was acknowledged: nothing is delivered again.
    assert!(
        drain(&emulator, "events-sub").await.is_empty(),
        "unacknowledged input remains"
    );
}

/// A stopped lane acknowledges what its final checkpoint passed, though the source itself
/// is gone: none of those messages is delivered again, even past the subscription's ack
/// deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_lane_acknowledges_its_final_checkpoint() {
    use mirador_actors::Source;
    let emulator = PubsubEmulator::start();
    let endpoint = emulator.endpoint();
    create_topic(&endpoint, PROJECT, "lanes").await.unwrap();
    // A short deadline: what is not acknowledged comes back within the drain below.
    create_subscription(&endpoint, PROJECT, "lanes-sub", "lanes", 10)
        .await
        .unwrap();
    mirador_executor::connectors::pubsub::publish(
        &endpoint,
        PROJECT,
        "lanes",
        (0..200).map(|i| format!("m{i}").into_bytes()),
    )
    .await
    .unwrap();
    let spec: mirador_spec::pubsub::PubsubSourceSpec = serde_yaml_ng::from_str(&format!(
        "project: {PROJECT}\nsubscription: lanes-sub\nendpoint: \"{endpoint}\"\n\
         lease_extension_secs: 10"
    ))
    .unwrap();
    let mut lane = mirador_executor::connectors::pubsub::PubsubSource::start(&spec, 0, 50, None)
        .await
        .unwrap();
    let finisher = lane.finisher().expect("a pubsub lane has a finisher");
    let mut batches: Vec<Vec<Vec<u8>>> = Vec::new();
    let mut end = 0;
    while end < 100 {
        if let Some(batch) = lane.next_batch().await.unwrap() {
            if !batch.items.is_empty() {
                end = batch.end.offset;
                batches.push(
                    batch
                        .items
                        .iter()
                        .map(|r| r.origin.payload.to_vec())
                        .collect(),
                );
            }
        }
    }
    // The first batch reached the sink: the final checkpoint is its end. The lane never
    // saw that checkpoint before it stopped.
    let delivered = batches[0].clone();
    drop(lane);
    finisher
        .finish(Some(mirador_actors::Position {
            partition: 0,
            offset: delivered.len() as u64,
        }))
        .await;
    // Past the ack deadline: a message not acknowledged would be back by then.
    let again: std::collections::BTreeSet<Vec<u8>> =
        drain_until_quiet(&emulator, "lanes-sub", Duration::from_secs(15))
            .await
            .into_iter()
            .map(|(data, _)| data)
            .collect();
    assert!(
        !again.is_empty(),
        "what the checkpoint did not pass comes back"
    );
    let repeated: Vec<_> = delivered.iter().filter(|d| again.contains(*d)).collect();
    assert!(
        repeated.is_empty(),
        "{} of the {} checkpointed messages were delivered again",
        repeated.len(),
        delivered.len()
    );
}
