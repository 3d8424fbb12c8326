//! `kill -9` of `mirador run` reading Pub/Sub, then running it again: every published
//! event ends in the sink or the dead letter, and only messages that were in flight
//! (delivered but not yet acknowledged) at the kill are written twice. Needs the Pub/Sub
//! emulator.

mod common;

use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::process::Command;

use base64::Engine;
use common::{run, run_and_kill, whole_lines, write_spec, MIRADOR};
use mirador_cluster_tests::event_id;
use mirador_cluster_tests::services::PubsubEmulator;
use mirador_executor::connectors::pubsub::{create_subscription, create_topic};

const EVENTS: usize = 20_000;
const LANES: usize = 2;
/// Per lane: the most messages delivered and not yet acknowledged.
const OUTSTANDING: usize = 1000;

/// event id -> times written, over the sink and the dead letter.
fn written(dir: &Path) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for line in whole_lines(&dir.join("scored.jsonl")) {
        let id = line["event"]["event_id"].as_str().unwrap().to_string();
        *counts.entry(id).or_default() += 1;
    }
    for line in whole_lines(&dir.join("dead.jsonl")) {
        let payload = line["payload"].as_str().unwrap();
        let bytes = match line["payload_encoding"].as_str() {
            Some("base64") => base64::engine::general_purpose::STANDARD
                .decode(payload)
                .unwrap(),
            _ => payload.as_bytes().to_vec(),
        };
        *counts.entry(event_id(&bytes)).or_default() += 1;
    }
    counts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_a_pubsub_pipeline_then_restart_loses_nothing() {
    let emulator = PubsubEmulator::start();
    let endpoint = emulator.endpoint();
    create_topic(&endpoint, "test-project", "events")
        .await
        .unwrap();
    // A short deadline: what the killed run held is delivered again once its lease (10 s)
    // runs out; the emulator has taken from a few seconds to over 30 s more to deliver
    // them again, hence the minute of quiet the second run waits for before it ends.
    create_subscription(&endpoint, "test-project", "events-sub", "events", 10)
        .await
        .unwrap();

    let generate = |extra: &[&str]| {
        Command::new(MIRADOR)
            .args(["generate", "--events", &EVENTS.to_string()])
            .args(["--poison-ratio", "0.01"])
            .args(extra)
            .output()
            .unwrap()
    };
    let events = generate(&[]);
    assert!(events.status.success());
    let published: BTreeSet<String> = events
        .stdout
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(event_id)
        .collect();
    assert_eq!(published.len(), EVENTS);
    let publish = generate(&["--pubsub-topic", "events", "--pubsub-endpoint", &endpoint]);
    assert!(
        publish.status.success(),
        "{}",
        String::from_utf8_lossy(&publish.stderr)
    );

    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let spec = write_spec(
        dir,
        "killed-pubsub",
        &format!(
            "  pubsub:\n    project: test-project\n    subscription: events-sub\n    lanes: {LANES}\n    endpoint: \"{endpoint}\"\n    max_outstanding_messages: {OUTSTANDING}\n    lease_extension_secs: 10\n    stop_after_idle_ms: 60000"
        ),
    );

    run_and_kill(&spec, || written(dir).len() >= EVENTS / 5);
    let before = written(dir);
    assert!(before.len() < EVENTS, "the kill came before the end");

    assert!(run(&spec).wait().unwrap().success());
    let after = written(dir);
    let ids: BTreeSet<String> = after.keys().cloned().collect();
    let missing: Vec<&String> = published.difference(&ids).collect();
    let extra: Vec<&String> = ids.difference(&published).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "every published event is in the sink or the dead letter, and nothing else: \
         {} written before the kill, {} after; {} missing (e.g. {:?}), {} unknown (e.g. {:?})",
        before.len(),
        after.len(),
        missing.len(),
        &missing[..missing.len().min(5)],
        extra.len(),
        &extra[..extra.len().min(5)]
    );
    let twice: Vec<&String> = after
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(id, _)| id)
        .collect();
    assert!(
        twice.iter().all(|id| before.contains_key(*id)),
        "only what the killed run wrote is written again"
    );
    assert!(
        twice.len() <= LANES * OUTSTANDING,
        "only messages in flight at the kill are written twice: {} of them",
        twice.len()
    );
    assert!(after.values().all(|n| *n <= 2), "at most twice");
    println!(
        "written before the kill: {}, written twice: {}",
        before.len(),
        twice.len()
    );
}
