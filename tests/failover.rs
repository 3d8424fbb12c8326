//! Two regions of separate processes on loopback (3 coordinators and 2 executors each),
//! each snapshotting into its own store and copying into the other's: a planned failover
//! and its fail back lose nothing and repeat nothing; a region killed whole is taken over
//! by the other by itself, loses nothing, repeats at most what followed its last snapshot,
//! and when it returns does not run what it lost.
//!
//! Both regions' executors write one file sink, so that what each record was written is
//! counted across the regions: (partition, offset) of the generator is the record's name.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::mirador;
use mirador_cluster_tests::cluster::Region;
use mirador_cluster_tests::services::{KafkaBroker, PubsubEmulator};
use mirador_cluster_tests::spec::SpecYaml;
use mirador_executor::connectors::pubsub::{create_subscription, create_topic};
use serde_json::Value;

/// Events per second per partition, and partitions.
const RATE: u64 = 400;
const PARTITIONS: u64 = 2;
const SNAPSHOT_MS: u64 = 500;
const CHECKPOINT_MS: u64 = 100;
const AFTER_SECS: u64 = 5;
/// Records per source batch: a quarter second of one partition's.
const BATCH: u64 = 100;

/// One pair of regions at a time: ten processes each on two cores, and their pauses and
/// recovery times measured.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

struct Pair {
    east: Region,
    west: Region,
    out: tempfile::TempDir,
    _stores: (tempfile::TempDir, tempfile::TempDir),
    /// Last: released once the regions' processes are gone.
    _turn: std::sync::MutexGuard<'static, ()>,
}

fn config(name: &str, own: &Path, peer: &str, other: &Path, coordinators: &str) -> String {
    format!(
        "region: {name}\nsnapshot:\n  interval_ms: {SNAPSHOT_MS}\n  store: {}\n\
         peer:\n  region: {peer}\n  store: {}\n  coordinators: [{coordinators}]\n\
         failover:\n  after_secs: {AFTER_SECS}\n  check_ms: 250\n",
        own.display(),
        other.display()
    )
}

fn list(addresses: &[(u64, String)]) -> String {
    addresses
        .iter()
        .map(|(_, a)| a.clone())
        .collect::<Vec<_>>()
        .join(", ")
}

impl Pair {
    fn start() -> Self {
        let turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
        let binary = PathBuf::from(mirador());
        let stores = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (east_at, west_at) = (Region::addresses(3), Region::addresses(3));
        let east_config = config(
            "east",
            stores.0.path(),
            "west",
            stores.1.path(),
            &list(&west_at),
        );
        let west_config = config(
            "west",
            stores.1.path(),
            "east",
            stores.0.path(),
            &list(&east_at),
        );
        let mut east = Region::start_at(&binary, east_at, &east_config);
        let mut west = Region::start_at(&binary, west_at, &west_config);
        east.wait_for("a leader in east", Duration::from_secs(30), || {
            east.leader()
        });
        west.wait_for("a leader in west", Duration::from_secs(30), || {
            west.leader()
        });
        for region in [&mut east, &mut west] {
            let name = region.admin(&["regions"]).unwrap()["region"]
                .as_str()
                .unwrap()
                .to_string();
            region.add_executor(&format!("{name}-1"), 4);
            region.add_executor(&format!("{name}-2"), 4);
        }
        Pair {
            _turn: turn,
            east,
            west,
            out: tempfile::tempdir().unwrap(),
            _stores: stores,
        }
    }

    fn logs(&self) -> String {
        format!(
            "=== east\n{}\n=== west\n{}",
            self.east.log_tails(),
            self.west.log_tails()
        )
    }

    fn sink(&self) -> PathBuf {
        self.out.path().join("scored.jsonl")
    }

    /// Creates pipeline `gen` in east, and waits for its records.
    fn create(&self, failover: &str) {
        let source = format!(
            "  generator:\n    partitions: {PARTITIONS}\n    customers: 1000\n    rate_per_sec: {RATE}"
        );
        self.create_reading(&source, failover);
    }

    /// Creates pipeline `gen` reading `source` in east, and waits for its records.
    fn create_reading(&self, source: &str, failover: &str) {
        let spec = self.out.path().join("gen.yaml");
        std::fs::write(
            &spec,
            SpecYaml {
                name: "gen",
                source,
                sink: &format!("  file:\n    path: {}", self.sink().display()),
                dead_letter: "  \"null\": {}",
                rest: &format!(
                    "checkpoint:\n  interval_ms: {CHECKPOINT_MS}\nbatching:\n  max_records: {BATCH}\n\
                     failover: {failover}\n"
                ),
                ..SpecYaml::default()
            }
            .yaml(),
        )
        .unwrap();
        self.east
            .admin(&["create", spec.to_str().unwrap()])
            .unwrap();
        self.east
            .wait_for("east's records", Duration::from_secs(30), || {
                (offsets(&self.sink()).len() > 1000).then_some(())
            });
        // West catalogues a snapshot of east holding it.
        self.west
            .wait_for("east's snapshot in west", Duration::from_secs(20), || {
                let r = self.west.admin(&["regions"]).ok()?;
                (r["peer_snapshot"]["pipelines"].as_u64()? >= 1).then_some(())
            });
    }

    /// Waits for `more` records beyond `from` in the sink.
    fn wait_records(&self, region: &Region, what: &str, from: usize, more: usize) {
        region.wait_for(what, Duration::from_secs(30), || {
            (offsets(&self.sink()).len() >= from + more).then_some(())
        });
    }
}

/// (partition, offset) -> times written.
fn offsets(sink: &Path) -> HashMap<(u64, u64), usize> {
    let mut counts = HashMap::new();
    for value in common::whole_lines(sink) {
        let key = (
            value["source"]["partition"].as_u64().unwrap(),
            value["source"]["offset"].as_u64().unwrap(),
        );
        *counts.entry(key).or_default() += 1;
    }
    counts
}

/// Records written more than once, counting each extra time.
fn duplicates(counts: &HashMap<(u64, u64), usize>) -> usize {
    counts.values().map(|n| n - 1).sum()
}

/// Every partition's offsets from 0 to its highest, none missing.
fn assert_nothing_lost(counts: &HashMap<(u64, u64), usize>) {
    for partition in 0..PARTITIONS {
        let written: Vec<u64> = counts
            .keys()
            .filter(|(p, _)| *p == partition)
            .map(|(_, o)| *o)
            .collect();
        let last = *written.iter().max().expect("records of every partition");
        assert_eq!(
            written.len() as u64,
            last + 1,
            "partition {partition}: every offset up to {last} written, none lost"
        );
    }
}

/// Samples the sink's length every 5 ms; the longest time it did not grow is the pause.
struct Growth {
    stop: Arc<AtomicBool>,
    samples: Arc<Mutex<Vec<(Instant, u64)>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Growth {
    fn watch(sink: PathBuf) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let samples = Arc::new(Mutex::new(Vec::new()));
        let thread = {
            let (stop, samples) = (stop.clone(), samples.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let len = std::fs::metadata(&sink).map_or(0, |m| m.len());
                    samples.lock().unwrap().push((Instant::now(), len));
                    std::thread::sleep(Duration::from_millis(5));
                }
            })
        };
        Growth {
            stop,
            samples,
            thread: Some(thread),
        }
    }

    /// The longest stretch without growth.
    fn longest_pause(mut self) -> Duration {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().unwrap().join().unwrap();
        let samples = self.samples.lock().unwrap();
        let mut longest = Duration::ZERO;
        let mut grown_at = samples.first().map(|s| s.0);
        let mut last_len = samples.first().map_or(0, |s| s.1);
        for &(at, len) in samples.iter() {
            if len > last_len {
                longest = longest.max(at - grown_at.unwrap());
                grown_at = Some(at);
                last_len = len;
            }
        }
        longest
    }
}

fn described(region: &Region) -> Value {
    region.admin(&["describe", "gen"]).unwrap()
}

fn states(described: &Value) -> Vec<String> {
    described["assignments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["state"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn a_planned_failover_and_its_fail_back_lose_nothing_and_repeat_nothing() {
    let pair = Pair::start();
    pair.create("manual");

    // East to west, asked of east (it passes the request on to west).
    let growth = Growth::watch(pair.sink());
    let before = offsets(&pair.sink()).len();
    let done = pair
        .east
        .admin(&["failover", "--to", "west", "gen"])
        .unwrap_or_else(|e| panic!("{e}\n{}", pair.logs()));
    assert_eq!(done["to"], "west");
    assert_eq!(done["pipelines"], serde_json::json!(["gen"]));
    assert_eq!(done["snapshot"]["region"], "east");
    pair.wait_records(&pair.west, "west's records", before, 1000);
    let pause = growth.longest_pause();
    let west = described(&pair.west);
    assert_eq!(west["region"], "west", "{west}");
    assert_eq!(west["region_epoch"], 2);
    assert!(states(&west).iter().all(|s| s == "running"), "{west}");
    let east = described(&pair.east);
    assert_eq!(east["region"], "west", "east stands by: {east}");
    assert!(
        states(&east).iter().all(|s| s.starts_with("standby")),
        "{east}"
    );
    let error = pair.east.admin(&["pause", "gen"]).unwrap_err();
    assert!(error.contains("owned by region \"west\""), "{error}");
    let counts = offsets(&pair.sink());
    assert_eq!(duplicates(&counts), 0, "a planned failover repeats nothing");
    assert_nothing_lost(&counts);
    println!(
        "planned failover east -> west: pause {} ms (stop at checkpoints {} ms, request {} ms)",
        pause.as_millis(),
        done["stop_ms"],
        done["took_ms"]
    );
    assert!(pause < Duration::from_secs(2), "pause {pause:?}");

    // Fail back, asked of east again: it takes over itself.
    let before = offsets(&pair.sink()).len();
    let growth = Growth::watch(pair.sink());
    let back = pair.east.admin(&["failover", "--to", "east"]).unwrap();
    assert_eq!(back["pipelines"], serde_json::json!(["gen"]));
    pair.wait_records(&pair.east, "east's records again", before, 1000);
    let pause = growth.longest_pause();
    assert_eq!(described(&pair.east)["region_epoch"], 3);
    assert_eq!(described(&pair.west)["region"], "east");
    let regions = pair.west.admin(&["regions"]).unwrap();
    let owned = &regions["ownership"][0];
    assert_eq!(
        (
            owned["record_region"].as_str(),
            owned["record_epoch"].as_u64()
        ),
        (Some("east"), Some(3)),
        "{regions}"
    );
    let counts = offsets(&pair.sink());
    assert_eq!(duplicates(&counts), 0, "the fail back repeats nothing");
    assert_nothing_lost(&counts);
    println!(
        "planned fail back west -> east: pause {} ms (stop {} ms, request {} ms)",
        pause.as_millis(),
        back["stop_ms"],
        back["took_ms"]
    );

    // A bad request names its field and changes nothing.
    let error = pair.east.admin(&["failover", "--to", "north"]).unwrap_err();
    assert!(error.contains("to:"), "{error}");
    let error = pair
        .west
        .admin(&["failover", "--to", "west", "nope"])
        .unwrap_err();
    assert!(error.contains("no pipeline \"nope\""), "{error}");
    assert_eq!(described(&pair.east)["region"], "east");
}

#[test]
fn a_region_killed_whole_is_taken_over_by_itself_and_does_not_run_it_when_back() {
    let mut pair = Pair::start();
    pair.create("automatic");
    pair.wait_records(&pair.east, "a few snapshots' worth", 0, 3000);

    pair.east.kill_all();
    let killed = Instant::now();
    let at_kill = offsets(&pair.sink()).len();
    pair.west.wait_for(
        "west processing",
        Duration::from_secs(AFTER_SECS + 15),
        || {
            let counts = offsets(&pair.sink());
            // West resumes behind east's last records, so new ones or repeats.
            (counts.values().sum::<usize>() > at_kill + 200).then_some(())
        },
    );
    let recovery = killed.elapsed();
    let west = described(&pair.west);
    assert_eq!(west["region"], "west", "{west}");
    pair.wait_records(&pair.west, "west past east's end", at_kill, 1000);
    let counts = offsets(&pair.sink());
    assert_nothing_lost(&counts);
    let repeated = duplicates(&counts);
    // What east processed after its last snapshot: the snapshot is at most SNAPSHOT_MS
    // old and holds checkpoints up to CHECKPOINT_MS old, behind the batch each partition
    // had in flight.
    let bound =
        (RATE * PARTITIONS * (SNAPSHOT_MS + CHECKPOINT_MS) / 1000 + PARTITIONS * BATCH) as usize;
    println!(
        "automatic failover: west processing {} ms after east's death (after_secs {AFTER_SECS}); \
         {repeated} records repeated (bound {bound}: {RATE}/s x {PARTITIONS} partitions x \
         ({SNAPSHOT_MS} + {CHECKPOINT_MS}) ms + a batch of {BATCH} per partition)",
        recovery.as_millis()
    );
    assert!(
        recovery <= Duration::from_secs(AFTER_SECS + 5),
        "recovery {recovery:?}"
    );
    assert!(repeated <= bound, "{repeated} repeated, bound {bound}");

    // East returns: it finds west's ownership record and stands by.
    pair.east.restart_all();
    pair.east
        .wait_for("a leader in east again", Duration::from_secs(30), || {
            pair.east.leader()
        });
    let east = pair
        .east
        .wait_for("east standing by", Duration::from_secs(20), || {
            let d = pair.east.admin(&["describe", "gen"]).ok()?;
            (d["region"] == "west").then_some(d)
        });
    assert!(
        states(&east).iter().all(|s| s.starts_with("standby")),
        "{east}"
    );
    std::thread::sleep(Duration::from_secs(3));
    let counts = offsets(&pair.sink());
    assert_eq!(
        duplicates(&counts),
        repeated,
        "east, back, ran nothing of gen (it would repeat from its old checkpoints)"
    );

    // Fail back, planned: nothing lost, nothing more repeated.
    let before = counts.len();
    pair.east.admin(&["failover", "--to", "east"]).unwrap();
    pair.wait_records(&pair.east, "east's records again", before, 1000);
    let counts = offsets(&pair.sink());
    assert_nothing_lost(&counts);
    assert_eq!(
        duplicates(&counts),
        repeated,
        "the fail back repeats nothing"
    );
    assert_eq!(described(&pair.west)["region"], "east");
}

/// The sequence numbers of the committed copies of `region`'s snapshots in `store`,
/// newest first, with each one's body.
fn copies(store: &Path, region: &str) -> Vec<(u64, PathBuf)> {
    let folder = store.join(region);
    let mut manifests: Vec<u64> = std::fs::read_dir(&folder)
        .unwrap()
        .filter_map(Result::ok)
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.strip_suffix(".manifest")?.parse().ok()
        })
        .collect();
    manifests.sort_unstable_by(|a, b| b.cmp(a));
    manifests
        .into_iter()
        .map(|sequence| {
            let body = std::fs::read_dir(&folder)
                .unwrap()
                .filter_map(Result::ok)
                .map(|e| e.path())
                .find(|p| {
                    let name = p.file_name().unwrap().to_string_lossy().into_owned();
                    name.starts_with(&format!("{sequence:020}.")) && name.ends_with(".body")
                })
                .unwrap_or_else(|| panic!("the body of copy {sequence}"));
            (sequence, body)
        })
        .collect()
}

#[test]
fn a_forced_failover_passes_over_damaged_snapshots_and_loses_nothing() {
    let mut pair = Pair::start();
    pair.create("manual");
    pair.wait_records(&pair.east, "a few snapshots' worth", 0, 3000);
    pair.east.kill_all();
    let killed = Instant::now();

    // East's three newest copies in west's store: a flipped bit, a truncated body, a
    // manifest gone (as if its writer died before committing it).
    let copies = copies(pair._stores.1.path(), "east");
    assert!(copies.len() >= 4, "{copies:?}");
    let mut flipped = std::fs::read(&copies[0].1).unwrap();
    let middle = flipped.len() / 2;
    flipped[middle] ^= 0x10;
    std::fs::write(&copies[0].1, flipped).unwrap();
    let whole = std::fs::read(&copies[1].1).unwrap();
    std::fs::write(&copies[1].1, &whole[..whole.len() / 2]).unwrap();
    let manifest = pair
        ._stores
        .1
        .path()
        .join("east")
        .join(format!("{:020}.manifest", copies[2].0));
    std::fs::remove_file(manifest).unwrap();

    // West's listing of east's copies reports each damaged one, and why.
    let listed = pair
        .west
        .admin(&["snapshots", "list", "--region", "east"])
        .unwrap();
    let problem = |sequence: u64| -> String {
        listed["snapshots"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["sequence"] == sequence)
            .map(|s| s["problem"].as_str().unwrap().to_string())
            .unwrap_or_else(|| panic!("copy {sequence} listed: {listed}"))
    };
    assert!(problem(copies[0].0).contains("SHA-256"), "{listed}");
    assert!(!problem(copies[1].0).is_empty(), "{listed}");
    assert!(!problem(copies[2].0).is_empty(), "{listed}");
    assert_eq!(problem(copies[3].0), "", "{listed}");
    let error = pair
        .west
        .admin(&["snapshots", "list", "--region", "north"])
        .unwrap_err();
    assert!(error.contains("region:"), "{error}");

    // A planned failover needs east, which is gone; a forced one does not.
    let before = offsets(&pair.sink()).len();
    let done = pair
        .west
        .admin(&["failover", "--to", "west", "--force"])
        .unwrap_or_else(|e| panic!("{e}\n{}", pair.logs()));
    assert_eq!(done["pipelines"], serde_json::json!(["gen"]));
    assert_eq!(
        done["snapshot"]["sequence"].as_u64(),
        Some(copies[3].0),
        "the newest whole snapshot, past the three damaged ones"
    );
    pair.wait_records(&pair.west, "west's records", before, 1000);
    println!(
        "forced failover: west processing {} ms after east's death",
        killed.elapsed().as_millis()
    );
    let counts = offsets(&pair.sink());
    assert_nothing_lost(&counts);
    // Three snapshots further back than the newest: three intervals more to repeat.
    let bound = (RATE * PARTITIONS * (4 * SNAPSHOT_MS + CHECKPOINT_MS) / 1000 + PARTITIONS * BATCH)
        as usize;
    assert!(
        duplicates(&counts) <= bound,
        "{} repeated, bound {bound}",
        duplicates(&counts)
    );
    // A second forced failover finds nothing left to take.
    let error = pair
        .west
        .admin(&["failover", "--to", "west", "--force", "gen"])
        .unwrap_err();
    assert!(error.contains("runs in this region already"), "{error}");
}

/// Sends the demo's events with `send` (which returns how many it sent), `RATE` x
/// `PARTITIONS` a second in ticks of 100 ms, until stopped; returns the ids of those sent.
fn send_steadily<F>(stop: Arc<AtomicBool>, send: F) -> std::thread::JoinHandle<Vec<String>>
where
    F: Fn(&tokio::runtime::Runtime, Vec<Vec<u8>>) -> u64 + Send + 'static,
{
    let events = std::process::Command::new(mirador())
        .args(["generate", "--events", "200000"])
        .output()
        .unwrap();
    assert!(events.status.success());
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let per_tick = (RATE * PARTITIONS / 10) as usize;
        let mut lines = events
            .stdout
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .map(<[u8]>::to_vec);
        let mut sent = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            let chunk: Vec<Vec<u8>> = lines.by_ref().take(per_tick).collect();
            assert!(!chunk.is_empty(), "the generated events ran out");
            let ids: Vec<String> = chunk
                .iter()
                .map(|l| serde_json::from_slice::<Value>(l).unwrap()["event_id"].to_string())
                .collect();
            let n = send(&runtime, chunk) as usize;
            sent.extend(ids.into_iter().take(n));
            std::thread::sleep(Duration::from_millis(100));
        }
        sent
    })
}

/// Produces the demo's events into Kafka topic `events` steadily; returns their ids.
fn produce_steadily(
    brokers: String,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<Vec<String>> {
    send_steadily(stop, move |runtime, chunk| {
        runtime
            .block_on(mirador_executor::connectors::kafka::produce(
                &brokers,
                "events",
                chunk.into_iter(),
            ))
            .unwrap()
    })
}

#[test]
fn a_kafka_pipeline_taken_over_resumes_at_the_snapshots_offsets_and_loses_nothing() {
    let broker = KafkaBroker::start();
    broker.create_topic("events", PARTITIONS as u32);
    let mut pair = Pair::start();
    let stop = Arc::new(AtomicBool::new(false));
    let producer = produce_steadily(broker.brokers(), stop.clone());
    let source = format!(
        "  kafka:\n    brokers: \"{}\"\n    topic: events",
        broker.brokers()
    );
    pair.create_reading(&source, "automatic");
    pair.wait_records(&pair.east, "a few snapshots' worth", 0, 3000);

    // Both regions read the one topic; east dies, west goes on from east's offsets.
    pair.east.kill_all();
    let at_kill = offsets(&pair.sink()).len();
    pair.wait_records(&pair.west, "west past east's end", at_kill, 2000);
    stop.store(true, Ordering::Relaxed);
    let produced = producer.join().unwrap().len();
    let counts = pair.west.wait_for(
        "every produced event written",
        Duration::from_secs(30),
        || {
            let counts = offsets(&pair.sink());
            (counts.len() >= produced).then_some(counts)
        },
    );
    assert_eq!(counts.len(), produced, "each produced offset, nothing else");
    assert_nothing_lost(&counts);
    let repeated = duplicates(&counts);
    let bound =
        (RATE * PARTITIONS * (SNAPSHOT_MS + CHECKPOINT_MS) / 1000 + PARTITIONS * BATCH) as usize;
    println!("kafka across regions: {produced} events, {repeated} repeated (bound {bound})");
    assert!(repeated <= bound, "{repeated} repeated, bound {bound}");
}

/// Publishes the demo's events to Pub/Sub topic `events` steadily; returns their ids.
fn publish_steadily(
    endpoint: String,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<Vec<String>> {
    send_steadily(stop, move |runtime, chunk| {
        runtime
            .block_on(mirador_executor::connectors::pubsub::publish(
                &endpoint,
                "test-project",
                "events",
                chunk.into_iter(),
            ))
            .unwrap()
    })
}

/// event id -> times written.
fn event_ids(sink: &Path) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for value in common::whole_lines(sink) {
        *counts
            .entry(value["event"]["event_id"].to_string())
            .or_default() += 1;
    }
    counts
}

#[test]
fn a_pubsub_pipeline_moves_its_subscription_with_each_failover_and_loses_nothing() {
    let pubsub = PubsubEmulator::start();
    let endpoint = pubsub.endpoint();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        create_topic(&endpoint, "test-project", "events")
            .await
            .unwrap();
        // One subscription per region: each has every message from the start, and a
        // failover seeks the taker's to where the other's stands.
        for region in ["east", "west"] {
            create_subscription(
                &endpoint,
                "test-project",
                &format!("events-{region}"),
                "events",
                10,
            )
            .await
            .unwrap();
        }
    });
    let mut pair = Pair::start();
    let stop = Arc::new(AtomicBool::new(false));
    let publisher = publish_steadily(endpoint.clone(), stop.clone());
    // The emulator goes on delivering to the streams of a lane that is gone (a killed
    // region's, a stopped one's) for a while; what it sends there comes back once the
    // stream's ack deadline passes, which the lease extension sets: short here.
    let source = format!(
        "  pubsub:\n    project: test-project\n    subscription: \"events-{{region}}\"\n    \
         lanes: {PARTITIONS}\n    endpoint: \"{endpoint}\"\n    lease_extension_secs: 10"
    );
    pair.create_reading(&source, "automatic");
    let written = |pair: &Pair| event_ids(&pair.sink());
    let repeated = |counts: &HashMap<String, usize>| counts.values().map(|n| n - 1).sum::<usize>();
    pair.east
        .wait_for("a few snapshots' worth", Duration::from_secs(30), || {
            (written(&pair).len() >= 3000).then_some(())
        });

    // East dies whole: west takes over by itself, its subscription sought to a snapshot
    // of east's, which holds what east had not acknowledged.
    pair.east.kill_all();
    let at_kill = written(&pair).len();
    pair.west.wait_for(
        "west past east's end",
        Duration::from_secs(AFTER_SECS + 30),
        || (written(&pair).len() >= at_kill + 1000).then_some(()),
    );
    let after_takeover = repeated(&written(&pair));

    // East returns and stands by; the fail back, planned, seeks east's subscription to a
    // snapshot of west's, taken once west stopped and acknowledged what it wrote.
    pair.east.restart_all();
    pair.east
        .wait_for("a leader in east again", Duration::from_secs(30), || {
            pair.east.leader()
        });
    pair.east
        .wait_for("east standing by", Duration::from_secs(20), || {
            let d = pair.east.admin(&["describe", "gen"]).ok()?;
            (d["region"] == "west").then_some(())
        });
    let before = written(&pair).len();
    let done = pair
        .east
        .admin(&["failover", "--to", "east", "gen"])
        .unwrap_or_else(|e| panic!("{e}\n{}", pair.logs()));
    assert_eq!(done["pipelines"], serde_json::json!(["gen"]));
    pair.east
        .wait_for("east's records again", Duration::from_secs(30), || {
            (written(&pair).len() >= before + 1000).then_some(())
        });
    stop.store(true, Ordering::Relaxed);
    let published = publisher.join().unwrap();
    let deadline = Instant::now() + Duration::from_secs(90);
    let counts = loop {
        let counts = written(&pair);
        if counts.len() >= published.len() || Instant::now() > deadline {
            break counts;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let missing: Vec<&String> = published
        .iter()
        .filter(|id| !counts.contains_key(*id))
        .collect();
    assert!(
        missing.is_empty(),
        "every published event written: {} of {} missing, e.g. {:?} (published {:?}; \
         written at east's death {at_kill}, before the fail back {before})\n{}",
        missing.len(),
        published.len(),
        &missing[..missing.len().min(10)],
        published
            .iter()
            .enumerate()
            .filter(|(_, id)| !counts.contains_key(*id))
            .map(|(i, _)| i)
            .fold((usize::MAX, 0), |(lo, hi), i| (lo.min(i), hi.max(i))),
        pair.logs()
    );
    assert_eq!(
        counts.len(),
        published.len(),
        "nothing but what was published"
    );
    // What east wrote and had not acknowledged when it died: its last batch per lane.
    let bound =
        (RATE * PARTITIONS * (SNAPSHOT_MS + CHECKPOINT_MS) / 1000 + PARTITIONS * BATCH) as usize;
    println!(
        "pubsub across regions: {} events; east killed: {after_takeover} repeated (bound \
         {bound}); planned fail back: {} more",
        published.len(),
        repeated(&counts) - after_takeover
    );
    assert!(
        after_takeover <= bound,
        "{after_takeover} repeated, bound {bound}"
    );
    assert_eq!(
        repeated(&counts),
        after_takeover,
        "the planned fail back repeats nothing"
    );
    drop(runtime);
}
