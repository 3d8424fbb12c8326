//! A region as separate processes on loopback: 3 coordinators, 3 executors (then a 4th),
//! the Kafka broker, and a pipeline of 12 partitions. Faults, one after the other: kill -9
//! the Raft leader during a rebalance, kill -9 an executor, drain one. After each, every
//! input event reaches the sink or the dead letter; throughout, a partition has one owner
//! per epoch and no checkpoint moves backwards. Prints the recovery figures.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::mirador;
use mirador_cluster_tests::cluster::Region;
use mirador_cluster_tests::event_id;
use mirador_cluster_tests::services::{read_topic, KafkaBroker};
use mirador_cluster_tests::spec::SpecYaml;
use mirador_executor::connectors::generator::EventFactory;
use mirador_executor::spec::{GeneratorSpec, PayloadFormat};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::ClientConfig;
use serde_json::Value;

const PARTITIONS: u32 = 12;
const PIPELINE: &str = "cluster";

/// The input: generated events, some poison, spread over the partitions.
struct Input {
    factory: EventFactory,
    producer: BaseProducer,
    next: u64,
    /// Per partition, the offset after the last produced event.
    ends: BTreeMap<u32, u64>,
    ids: BTreeSet<String>,
    poison: BTreeSet<String>,
}

impl Input {
    fn new(brokers: &str) -> Self {
        let generator = GeneratorSpec {
            events: None,
            partitions: 1,
            customers: 12_000,
            zipf_exponent: 1.1,
            poison_ratio: 0.02,
            seed: 12,
            rate_per_sec: None,
        };
        Input {
            factory: EventFactory::new(&generator, 0, PayloadFormat::Json, 65536),
            // tansu answers a fetch from inside a record batch with the next batch: one
            // message per batch keeps every resume exact (a Kafka broker needs no such care).
            producer: ClientConfig::new()
                .set("bootstrap.servers", brokers)
                .set("linger.ms", "0")
                .set("batch.num.messages", "1")
                .create()
                .unwrap(),
            next: 0,
            ends: (0..PARTITIONS).map(|p| (p, 0)).collect(),
            ids: BTreeSet::new(),
            poison: BTreeSet::new(),
        }
    }

    /// Produces `per_partition` events to each of `partitions`.
    fn produce(&mut self, partitions: &[u32], per_partition: u64) {
        let now = chrono::Utc::now().timestamp_millis();
        let mut payload = Vec::new();
        for _ in 0..per_partition {
            for &partition in partitions {
                let seq = self.next;
                self.next += 1;
                self.factory.payload(seq, now, &mut payload);
                let id = self.factory.event_id(seq);
                if self.factory.poison(seq).is_some() {
                    self.poison.insert(id.clone());
                }
                self.ids.insert(id);
                loop {
                    let record = BaseRecord::<(), _>::to("events")
                        .partition(partition as i32)
                        .payload(&payload);
                    match self.producer.send(record) {
                        Ok(()) => break,
                        Err(_) => {
                            self.producer.poll(Duration::from_millis(5));
                        }
                    }
                }
                *self.ends.get_mut(&partition).unwrap() += 1;
            }
        }
        self.producer.flush(Duration::from_secs(60)).unwrap();
    }

    fn all(&self) -> Vec<u32> {
        (0..PARTITIONS).collect()
    }
}

/// Every event id in a topic (from the scored record or the dead letter's payload).
fn ids_in(brokers: &str, topic: &str, partitions: i32) -> Vec<String> {
    read_topic(brokers, topic, partitions)
        .iter()
        .map(|(value, _)| event_id(value))
        .collect()
}

/// What the admin API said over the run: who owned each (partition, epoch), and the
/// checkpoints in the order they were seen.
#[derive(Default)]
struct History {
    owners: BTreeMap<(u32, u64), BTreeSet<String>>,
    checkpoints: BTreeMap<u32, Vec<u64>>,
}

fn describe(region: &Region) -> Option<Value> {
    region.admin(&["describe", PIPELINE]).ok()
}

fn record(history: &Mutex<History>, info: &Value) {
    let mut history = history.lock().unwrap();
    for a in info["assignments"].as_array().into_iter().flatten() {
        let partition = a["partition"].as_u64().unwrap() as u32;
        let owner = a["owner"].as_str().unwrap_or_default();
        if !owner.is_empty() {
            history
                .owners
                .entry((partition, a["epoch"].as_u64().unwrap()))
                .or_default()
                .insert(owner.to_string());
        }
        if let Some(checkpoint) = a["checkpoint"].as_u64() {
            history
                .checkpoints
                .entry(partition)
                .or_default()
                .push(checkpoint);
        }
    }
}

/// Partition -> owner, when every partition has one.
fn owners(info: &Value) -> Option<BTreeMap<u32, String>> {
    let owners: BTreeMap<u32, String> = info["assignments"]
        .as_array()?
        .iter()
        .filter(|a| !a["owner"].as_str().unwrap_or_default().is_empty())
        .map(|a| {
            (
                a["partition"].as_u64().unwrap() as u32,
                a["owner"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    (owners.len() == PARTITIONS as usize).then_some(owners)
}

/// Waits until the checkpoint of every partition in `partitions` reached its end.
fn caught_up(region: &Region, input: &Input, partitions: &[u32], limit: Duration) -> Duration {
    let started = Instant::now();
    region.wait_for("the partitions to catch up", limit, || {
        let info = describe(region)?;
        let done = info["assignments"].as_array()?.iter().all(|a| {
            let partition = a["partition"].as_u64().unwrap() as u32;
            !partitions.contains(&partition)
                || a["checkpoint"].as_u64() == Some(input.ends[&partition])
        });
        done.then_some(())
    });
    started.elapsed()
}

#[test]
fn a_region_loses_nothing_when_its_leader_or_an_executor_dies_or_a_node_drains() {
    let broker = KafkaBroker::start();
    broker.create_topic("events", PARTITIONS);
    broker.create_topic("scored", 3);
    broker.create_topic("dead", 1);
    let brokers = broker.brokers();
    let mut input = Input::new(&brokers);
    input.produce(&input.all(), 500);

    let binary = mirador();
    let mut region = Region::start(std::path::Path::new(&binary), 3);
    let first_leader = region.wait_for("a first leader", Duration::from_secs(20), || {
        region.leader()
    });
    for id in ["e1", "e2", "e3"] {
        region.add_executor(id, 8);
    }
    region.wait_for("three executors", Duration::from_secs(20), || {
        let nodes = region.admin(&["nodes"]).ok()?;
        (nodes.as_array()?.len() == 3).then_some(())
    });

    let spec = region.dir.path().join("pipeline.yaml");
    let kafka = |topic: &str| format!("  kafka:\n    brokers: \"{brokers}\"\n    topic: {topic}");
    std::fs::write(
        &spec,
        SpecYaml {
            name: PIPELINE,
            source: &kafka("events"),
            sink: &kafka("scored"),
            dead_letter: &kafka("dead"),
            rest: "batching:\n  max_records: 128\ncheckpoint:\n  interval_ms: 100\n",
            ..SpecYaml::default()
        }
        .yaml(),
    )
    .unwrap();
    // A bad spec is refused with the field, and creates nothing.
    let bad = region.dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        std::fs::read_to_string(&spec)
            .unwrap()
            .replace("max_records: 128", "max_records: 0"),
    )
    .unwrap();
    let refused = region
        .admin(&["create", bad.to_str().unwrap()])
        .unwrap_err();
    assert!(refused.contains("batching.max_records"), "{refused}");
    assert!(region.admin(&["describe", PIPELINE]).is_err());
    region.admin(&["create", spec.to_str().unwrap()]).unwrap();

    // Watch the admin API all along.
    let history = Arc::new(Mutex::new(History::default()));
    let watching = Arc::new(AtomicBool::new(true));
    let watcher = {
        let (history, watching) = (history.clone(), watching.clone());
        let list = region.coordinator_list();
        let binary = binary.clone();
        std::thread::spawn(move || {
            while watching.load(Ordering::Relaxed) {
                let output = std::process::Command::new(&binary)
                    .args([
                        "admin",
                        "--json",
                        "--coordinators",
                        &list,
                        "describe",
                        PIPELINE,
                    ])
                    .output()
                    .unwrap();
                if let Ok(info) = serde_json::from_slice::<Value>(&output.stdout) {
                    record(&history, &info);
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };

    let all = input.all();
    let steady = caught_up(&region, &input, &all, Duration::from_secs(60));
    println!(
        "first {} events through the region in {steady:?}",
        input.ids.len()
    );

    // 1. A rebalance (a fourth executor joins), and the leader killed in the middle of it.
    input.produce(&all, 200);
    region.add_executor("e4", 8);
    std::thread::sleep(Duration::from_millis(300));
    let killed = first_leader;
    let killed_at = Instant::now();
    region.coordinator(killed).kill();
    let new_leader = region.wait_for("a new leader", Duration::from_secs(20), || {
        region.leader().filter(|l| *l != killed)
    });
    let leader_after = killed_at.elapsed();
    caught_up(&region, &input, &all, Duration::from_secs(60));
    println!(
        "leader {killed} killed during a rebalance: leader {new_leader} after {leader_after:?}"
    );
    region.coordinator(killed).restart();

    // 2. An executor killed: its partitions go elsewhere once its lease expires.
    let before = owners(&describe(&region).unwrap()).unwrap();
    let victim_partitions: Vec<u32> = before
        .iter()
        .filter(|(_, o)| o.as_str() == "e2")
        .map(|(p, _)| *p)
        .collect();
    assert!(
        !victim_partitions.is_empty(),
        "e2 runs partitions: {before:?}"
    );
    region.executor("e2").kill();
    let killed_at = Instant::now();
    input.produce(&victim_partitions, 100);
    caught_up(&region, &input, &victim_partitions, Duration::from_secs(60));
    let executor_recovery = killed_at.elapsed();
    let after = owners(&describe(&region).unwrap()).unwrap();
    assert!(after.values().all(|o| o != "e2"), "{after:?}");
    println!(
        "executor e2 killed: its {} partitions processing elsewhere after {executor_recovery:?}",
        victim_partitions.len()
    );

    // 3. A drain: e1's partitions move with a planned handover.
    let drained: Vec<u32> = owners(&describe(&region).unwrap())
        .unwrap()
        .into_iter()
        .filter(|(_, o)| o == "e1")
        .map(|(p, _)| p)
        .collect();
    region.admin(&["drain", "e1"]).unwrap();
    region.wait_for("e1 empty", Duration::from_secs(30), || {
        let info = describe(&region)?;
        let owners = owners(&info)?;
        owners.values().all(|o| o != "e1").then_some(())
    });
    input.produce(&all, 100);
    caught_up(&region, &input, &all, Duration::from_secs(60));
    let info = describe(&region).unwrap();
    let pauses: Vec<u64> = info["assignments"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| drained.contains(&(a["partition"].as_u64().unwrap() as u32)))
        .filter_map(|a| a["last_move_pause_ms"].as_u64())
        .collect();
    println!(
        "drain of e1: its {} partitions moved with pauses of {pauses:?} ms (max {:?})",
        drained.len(),
        pauses.iter().max()
    );
    // Where the new owners' starts went, as the executors logged them.
    for e in &region.executors {
        for line in e.log().lines().filter(|l| l.contains("partition started")) {
            let parts: Vec<&str> = line
                .split_whitespace()
                .filter(|w| {
                    w.contains("_ms=") || w.starts_with("partition=") || w.starts_with("epoch=")
                })
                .collect();
            println!("  {} {}", e.name, parts.join(" "));
        }
    }
    // The parts of each pause, as the leader logged them.
    for c in &region.coordinators {
        for line in c.node.log().lines().filter(|l| l.contains("move done")) {
            let parts: Vec<&str> = line
                .split_whitespace()
                .filter(|w| w.contains("_ms=") || w.starts_with("partition="))
                .collect();
            println!("  {}", parts.join(" "));
        }
    }

    // Caught up, every partition reports its lag behind the topic's high watermark: none.
    region.wait_for("a lag of 0 everywhere", Duration::from_secs(15), || {
        let info = describe(&region)?;
        let assignments = info["assignments"].as_array()?;
        (assignments.len() == PARTITIONS as usize
            && assignments.iter().all(|a| a["lag"].as_u64() == Some(0)))
        .then_some(())
    });

    watching.store(false, Ordering::Relaxed);
    watcher.join().unwrap();

    // Every event in the sink or the dead letter; the poison in the dead letter.
    let mut seen: HashMap<String, usize> = HashMap::new();
    for id in ids_in(&brokers, "scored", 3) {
        *seen.entry(id).or_default() += 1;
    }
    let dead: BTreeSet<String> = ids_in(&brokers, "dead", 1).into_iter().collect();
    for id in &dead {
        *seen.entry(id.clone()).or_default() += 1;
    }
    let seen_ids: BTreeSet<String> = seen.keys().cloned().collect();
    let lost: Vec<&String> = input.ids.difference(&seen_ids).collect();
    assert!(
        lost.is_empty(),
        "{} events lost, e.g. {:?}",
        lost.len(),
        &lost[..lost.len().min(5)]
    );
    assert_eq!(seen_ids.len(), input.ids.len(), "nothing but the input");
    assert_eq!(dead, input.poison, "the dead letter holds the poison");
    let twice = seen.values().filter(|n| **n > 1).count();
    println!(
        "{} events, {} written twice (in flight at a kill)",
        input.ids.len(),
        twice
    );

    let history = history.lock().unwrap();
    for ((partition, epoch), owners) in &history.owners {
        assert_eq!(
            owners.len(),
            1,
            "partition {partition} epoch {epoch}: owners {owners:?}"
        );
    }
    for (partition, checkpoints) in &history.checkpoints {
        assert!(
            checkpoints.windows(2).all(|w| w[0] <= w[1]),
            "partition {partition}: a checkpoint moved backwards: {checkpoints:?}"
        );
    }
    drop(broker);
}
