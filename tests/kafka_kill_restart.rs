//! `kill -9` of `mirador run` reading Kafka, then running it again: every record of the
//! topic ends in the sink or the dead letter, and only records after a partition's last
//! checkpoint are written twice. Needs the tansu broker (`make tansu`).

use std::collections::HashMap;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

const MIRADOR: &str = env!("CARGO_BIN_EXE_mirador");
const EVENTS: u64 = 40_000;

struct Broker {
    child: Child,
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn tansu() -> PathBuf {
    let path = std::env::var_os("MIRADOR_TANSU")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var("HOME").unwrap_or_default())
                .join(".cache/mirador/tansu/bin/tansu")
        });
    assert!(
        path.is_file(),
        "the Kafka broker is missing: no {} (`make tansu` builds it)",
        path.display()
    );
    path
}

fn start_broker() -> (Broker, u16) {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("tcp://127.0.0.1:{port}");
    let child = Command::new(tansu())
        .args([
            "broker",
            "--listener-url",
            &url,
            "--advertised-listener-url",
            &url,
        ])
        .args(["--storage-engine", "memory://tansu/"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let broker = Broker { child };
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "tansu did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    let created = Command::new(tansu())
        .args([
            "topic",
            "create",
            "events",
            "--partitions",
            "2",
            "--broker",
            &url,
        ])
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(created.success());
    (broker, port)
}

/// (partition, offset) -> times written, over the sink and the dead letter.
fn written(dir: &Path) -> HashMap<(u64, u64), usize> {
    let mut counts = HashMap::new();
    for file in ["scored.jsonl", "dead.jsonl"] {
        for line in std::fs::read_to_string(dir.join(file))
            .unwrap_or_default()
            .lines()
        {
            let value: Value = serde_json::from_str(line).expect("only whole lines in a sink");
            let key = (
                value["source"]["partition"].as_u64().unwrap(),
                value["source"]["offset"].as_u64().unwrap(),
            );
            *counts.entry(key).or_default() += 1;
        }
    }
    counts
}

fn checkpoints(dir: &Path) -> [Option<u64>; 2] {
    [0, 1].map(|p| {
        let bytes = std::fs::read(dir.join(format!("checkpoints/killed-kafka.p{p}.json"))).ok()?;
        serde_json::from_slice::<Value>(&bytes).ok()?["offset"].as_u64()
    })
}

#[test]
fn kill_9_of_a_kafka_pipeline_then_restart_loses_nothing() {
    let (_broker, port) = start_broker();
    let brokers = format!("127.0.0.1:{port}");
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
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let spec = dir.join("pipeline.yaml");
    std::fs::write(
        &spec,
        format!(
            r#"
name: killed-kafka
source:
  kafka:
    brokers: "{brokers}"
    topic: events
    stop_at_end: true
enrichment:
  table:
    path: {features}
  features: [recency_days, frequency_30d, monetary_90d, engagement_score, email_opt_in, loyalty_tier, churn_risk]
model:
  name: propensity
  version: "1"
  path: {model}
sink:
  file:
    path: {out}/scored.jsonl
dead_letter:
  file:
    path: {out}/dead.jsonl
batching:
  max_records: 256
checkpoint:
  dir: {out}/checkpoints
  interval_ms: 100
"#,
            features = repo.join("examples/features.csv").display(),
            model = repo.join("models/propensity-v1.pt").display(),
            out = dir.display(),
        ),
    )
    .unwrap();
    let run = || {
        Command::new(MIRADOR)
            .args(["run", "--quiet", "--pipeline"])
            .arg(&spec)
            .stdout(Stdio::null())
            .spawn()
            .unwrap()
    };

    let mut first = run();
    let deadline = Instant::now() + Duration::from_secs(120);
    while !checkpoints(dir).iter().any(|c| c.is_some_and(|o| o > 0)) {
        assert!(Instant::now() < deadline, "no checkpoint was written");
        assert!(
            first.try_wait().unwrap().is_none(),
            "the first run ended before it could be killed"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(150));
    first.kill().unwrap(); // SIGKILL
    first.wait().unwrap();
    let resume = checkpoints(dir).map(|c| c.unwrap_or(0));
    let before = written(dir);
    assert!(
        (before.len() as u64) < EVENTS,
        "the kill came before the end"
    );

    assert!(run().wait().unwrap().success());
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
