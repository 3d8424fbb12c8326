//! `kill -9` of `mirador run` reading Kafka, then running it again: every record of the
//! topic ends in the sink or the dead letter, and only records after a partition's last
//! checkpoint are written twice. Needs the tansu broker (`make tansu`).

mod common;

use std::process::Command;
use std::time::Duration;

use common::{checkpoint, run, run_and_kill, write_spec, written, MIRADOR};
use mirador_cluster_tests::services::KafkaBroker;

const EVENTS: u64 = 40_000;

#[test]
fn kill_9_of_a_kafka_pipeline_then_restart_loses_nothing() {
    let broker = KafkaBroker::start();
    broker.create_topic("events", 2);
    let brokers = broker.brokers();
    // tansu 0.6 answers a fetch from an offset inside a record batch with the batch after
    // it, which would skip the rest of that batch on every resume: one message per batch
    // keeps the test about Mirador. (Any Kafka broker returns the containing batch.)
    let events = Command::new(MIRADOR)
        .args([
            "generate",
            "--events",
            &EVENTS.to_string(),
            "--poison-ratio",
            "0.01",
        ])
        .output()
        .unwrap();
    assert!(events.status.success());
    let producer: rdkafka::producer::BaseProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("linger.ms", "0")
        .set("batch.num.messages", "1")
        .create()
        .unwrap();
    for line in events
        .stdout
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
    {
        loop {
            match producer.send(rdkafka::producer::BaseRecord::<(), _>::to("events").payload(line))
            {
                Ok(()) => break,
                Err((_, _)) => {
                    producer.poll(Duration::from_millis(10));
                }
            }
        }
        producer.poll(Duration::ZERO);
    }
    rdkafka::producer::Producer::flush(&producer, Duration::from_secs(60)).unwrap();

    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let spec = write_spec(
        dir,
        "killed-kafka",
        &format!("  kafka:\n    brokers: \"{brokers}\"\n    topic: events\n    stop_at_end: true"),
    );
    let checkpoints = || [0, 1].map(|p| checkpoint(dir, "killed-kafka", p));

    run_and_kill(&spec, || {
        checkpoints().iter().any(|c| c.is_some_and(|o| o > 0))
    });
    let resume = checkpoints().map(|c| c.unwrap_or(0));
    let before = written(dir);
    assert!(
        (before.len() as u64) < EVENTS,
        "the kill came before the end"
    );

    assert!(run(&spec).wait().unwrap().success());
    let after = written(dir);
    assert_eq!(
        after.len() as u64,
        EVENTS,
        "every record of the topic is accounted for"
    );
    for partition in 0..2u64 {
        let offsets: Vec<u64> = after
            .keys()
            .filter(|(p, _)| *p == partition)
            .map(|(_, o)| *o)
            .collect();
        let highest = offsets.iter().max().copied().unwrap_or(0);
        assert_eq!(
            offsets.len() as u64,
            highest + 1,
            "partition {partition} has no gap"
        );
    }
    for (&(partition, offset), &count) in &after {
        assert!(count <= 2);
        if count == 2 {
            assert!(
                offset >= resume[partition as usize],
                "partition {partition} offset {offset} before its checkpoint {} was written twice",
                resume[partition as usize]
            );
        }
    }
    let replayed = before
        .keys()
        .filter(|(p, o)| *o >= resume[*p as usize])
        .count();
    let duplicated = after.values().filter(|n| **n == 2).count();
    assert_eq!(
        duplicated, replayed,
        "exactly the records written past the checkpoints come twice"
    );
    eprintln!(
        "killed at checkpoints {resume:?}: {} written before, {duplicated} duplicates",
        before.len()
    );
}
