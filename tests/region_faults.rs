//! A region's processes under the faults an operator meets: a lost quorum of
//! coordinators, a coordinator store torn on disk, a second coordinator on one data
//! directory.

mod common;

use std::time::{Duration, Instant};

use common::mirador;
use mirador_cluster_tests::cluster::Region;
use mirador_cluster_tests::services::free_port;
use mirador_cluster_tests::spec::SpecYaml;

/// The tests of this file measure timing (leases, elections) across whole regions of
/// processes: on a small machine, several regions at once starve each other of CPU and
/// elections take longer than a lease. They run one at a time.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

/// An unbounded generator pipeline of one partition into `sink`.
fn unbounded_spec(name: &str, sink: &std::path::Path) -> String {
    SpecYaml {
        name,
        source: "  generator:\n    partitions: 1\n    customers: 1000\n    rate_per_sec: 2000",
        sink: &format!("  file:\n    path: {}", sink.display()),
        dead_letter: "  \"null\": {}",
        rest: "checkpoint:\n  interval_ms: 100\n",
        ..SpecYaml::default()
    }
    .yaml()
}

fn log_of(region: &Region, executor: &str) -> String {
    region
        .executors
        .iter()
        .find(|e| e.name == executor)
        .expect("the executor")
        .log()
}

fn size(path: &std::path::Path) -> u64 {
    std::fs::metadata(path).map_or(0, |m| m.len())
}

/// Three coordinators and executor `e1` running an unbounded pipeline into the returned
/// sink file, which has records already; and the leader then.
fn steady_region() -> (Region, std::path::PathBuf, u64) {
    let binary = mirador();
    let mut region = Region::start(std::path::Path::new(&binary), 3);
    region.wait_for("a first leader", Duration::from_secs(20), || {
        region.leader()
    });
    region.add_executor("e1", 2);
    let sink = region.dir.path().join("scored.jsonl");
    let spec = region.dir.path().join("pipeline.yaml");
    std::fs::write(&spec, unbounded_spec("steady", &sink)).unwrap();
    region.admin(&["create", spec.to_str().unwrap()]).unwrap();
    region.wait_for("records in the sink", Duration::from_secs(30), || {
        (size(&sink) > 10_000).then_some(())
    });
    let leader = region.leader().expect("a leader");
    (region, sink, leader)
}

#[test]
fn without_a_majority_every_executor_stops_within_its_lease() {
    let _serial = one_at_a_time();
    let (mut region, sink, leader) = steady_region();

    // Both followers stop: the leader lives on, but no majority follows it.
    let followers: Vec<u64> = (1..=3).filter(|id| *id != leader).collect();
    for id in &followers {
        region.coordinator(*id).signal("STOP");
    }
    let stopped_at = Instant::now();
    let lost = region.wait_for("lease lost", Duration::from_secs(10), || {
        log_of(&region, "e1")
            .contains("lease lost")
            .then(|| stopped_at.elapsed())
    });
    // The leader answers heartbeats while its quorum acknowledged it within 600 ms; the
    // lease is 2 s from the last heartbeat answered; the log is read every 50 ms or so.
    assert!(
        lost < Duration::from_millis(4500),
        "lease lost after {lost:?}"
    );
    std::thread::sleep(Duration::from_millis(500));
    let after_stop = size(&sink);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        size(&sink),
        after_stop,
        "nothing is processed without a majority"
    );
    println!("quorum lost: e1 stopped its partitions after {lost:?}");

    // The majority is back: the executor registers again and goes on.
    for id in &followers {
        region.coordinator(*id).signal("CONT");
    }
    region.wait_for("processing again", Duration::from_secs(30), || {
        (size(&sink) > after_stop + 10_000).then_some(())
    });
}

#[test]
fn a_torn_coordinator_store_is_refused_in_one_line_and_a_second_node_on_its_directory_too() {
    let _serial = one_at_a_time();
    let binary = mirador();
    let mut region = Region::start(std::path::Path::new(&binary), 1);
    region.wait_for("a leader", Duration::from_secs(20), || region.leader());
    let data_dir = region.dir.path().join("c1");

    // A second coordinator on the same data directory is refused, naming the first.
    let listen = format!("127.0.0.1:{}", free_port());
    let second = std::process::Command::new(&binary)
        .args([
            "coordinator",
            "--id",
            "1",
            "--listen",
            &listen,
            "--data-dir",
        ])
        .arg(&data_dir)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&second.stderr);
    assert!(!second.status.success(), "{said}");
    assert!(said.contains("LOCK is held by process"), "{said}");

    region.coordinator(1).kill();
    let store = data_dir.join("raft.redb");
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&store)
        .unwrap();
    file.set_len(10_000).unwrap();
    drop(file);
    region.coordinator(1).restart();
    let status = region
        .coordinator(1)
        .wait_exit(Duration::from_secs(20))
        .expect("a torn store stops the node at start");
    let log = region.coordinator(1).log();
    assert!(!status.success(), "{log}");
    assert!(!log.contains("panicked"), "no panic: {log}");
    let error: Vec<&str> = log.lines().filter(|l| l.contains("raft.redb")).collect();
    assert_eq!(error.len(), 1, "one line names the file: {log}");
    assert!(
        error[0].contains("restore") || error[0].contains("remove"),
        "what to do: {log}"
    );
}

/// Event ids of the whole lines of a sink file.
fn sink_ids(path: &std::path::Path) -> Vec<String> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let whole = text.rfind('\n').map_or("", |end| &text[..end]);
    whole
        .lines()
        .map(|line| {
            let value: serde_json::Value = serde_json::from_str(line).expect("whole lines");
            value["event"]["event_id"].as_str().unwrap().to_string()
        })
        .collect()
}

#[test]
fn a_hung_leader_stops_no_partition_and_writes_nothing_twice() {
    let _serial = one_at_a_time();
    let (mut region, sink, leader) = steady_region();
    let starts = |region: &mut Region| {
        region
            .executor("e1")
            .log()
            .matches("partition started")
            .count()
    };
    let started_before = starts(&mut region);

    // The leader hangs for 15 s: a new one is elected, and the executor's lease is renewed
    // by it before it runs out.
    region.coordinator(leader).signal("STOP");
    let stopped_at = Instant::now();
    // The second of the minute, as the logs' times show it.
    let stopped_second = {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap();
        format!("{}.{:03}", now.as_secs() % 60, now.subsec_millis())
    };
    let mut last = (size(&sink), Instant::now());
    let mut longest_stall = Duration::ZERO;
    while stopped_at.elapsed() < Duration::from_secs(15) {
        std::thread::sleep(Duration::from_millis(50));
        let now = size(&sink);
        if now > last.0 {
            last = (now, Instant::now());
        }
        longest_stall = longest_stall.max(last.1.elapsed());
    }
    let log = region.executor("e1").log();
    // Who led when, for a failure's message.
    let elections: String = (1..=3)
        .map(|id| {
            let log = region.coordinator(id).log();
            let lines: Vec<&str> = log
                .lines()
                .filter(|l| l.contains("become leader") || l.contains("pre-vote won"))
                .collect();
            format!("--- coordinator {id}\n{}\n", lines.join("\n"))
        })
        .collect();
    region.coordinator(leader).signal("CONT");
    std::thread::sleep(Duration::from_secs(2));

    let ids = sink_ids(&sink);
    let unique: std::collections::HashSet<&String> = ids.iter().collect();
    let duplicates = ids.len() - unique.len();
    let restarts = starts(&mut region) - started_before;
    println!(
        "leader {leader} stopped for 15 s: longest pause in the sink {longest_stall:?}, \
         {restarts} partition restarts, {duplicates} duplicates of {} records",
        ids.len()
    );
    assert!(
        !log.contains("lease lost"),
        "the lease held (leader {leader} stopped at second {stopped_second}): {log}\n{elections}"
    );
    assert_eq!(restarts, 0, "no partition restarted: {log}");
    assert_eq!(duplicates, 0, "nothing written twice");
    assert!(
        longest_stall < Duration::from_secs(2),
        "the partitions kept processing: a pause of {longest_stall:?}"
    );
}

#[test]
fn sigterm_of_an_executor_releases_its_partitions_at_once_and_exits_0() {
    let _serial = one_at_a_time();
    let binary = mirador();
    let mut region = Region::start(std::path::Path::new(&binary), 1);
    region.wait_for("a leader", Duration::from_secs(20), || region.leader());
    region.add_executor("e1", 4);
    let sink = region.dir.path().join("scored.jsonl");
    let spec = region.dir.path().join("pipeline.yaml");
    std::fs::write(
        &spec,
        unbounded_spec("terminated", &sink).replace("partitions: 1", "partitions: 2"),
    )
    .unwrap();
    region.admin(&["create", spec.to_str().unwrap()]).unwrap();
    region.wait_for("both partitions on e1", Duration::from_secs(30), || {
        let info = region.admin(&["describe", "terminated"]).ok()?;
        let owners: Vec<&str> = info["assignments"]
            .as_array()?
            .iter()
            .filter_map(|a| a["owner"].as_str())
            .collect();
        (owners == ["e1", "e1"] && size(&sink) > 1000).then_some(())
    });
    region.add_executor("e2", 4);
    region.wait_for("e2 registered", Duration::from_secs(20), || {
        let nodes = region.admin(&["nodes"]).ok()?;
        (nodes.as_array()?.len() == 2).then_some(())
    });

    region.executor("e1").signal("TERM");
    let terminated_at = Instant::now();
    let status = region
        .executor("e1")
        .wait_exit(Duration::from_secs(30))
        .expect("e1 exits after SIGTERM");
    let exited_in = terminated_at.elapsed();
    let log = region.executor("e1").log();
    assert_eq!(status.code(), Some(0), "{log}");
    assert_eq!(
        log.matches("released").count(),
        2,
        "both partitions released, not left to expire: {log}"
    );
    // Released, they go to e2 at once: well before e1's lease (2 s) could expire.
    let moved = region.wait_for("both on e2", Duration::from_secs(20), || {
        let info = region.admin(&["describe", "terminated"]).ok()?;
        let owners: Vec<&str> = info["assignments"]
            .as_array()?
            .iter()
            .filter_map(|a| a["owner"].as_str())
            .collect();
        (owners == ["e2", "e2"]).then(|| terminated_at.elapsed())
    });
    println!("SIGTERM of e1: exited 0 in {exited_in:?}, partitions on e2 after {moved:?}");
    // An expiry would come 2 s (the lease) plus 0.5 s (grace) after e1's last heartbeat,
    // which was before it exited.
    assert!(
        moved < exited_in + Duration::from_millis(2500),
        "handed over by release: {moved:?} after SIGTERM, e1 exited after {exited_in:?}"
    );
}

#[test]
fn a_follower_resumed_after_a_long_stop_does_not_depose_the_leader() {
    let _serial = one_at_a_time();
    let binary = mirador();
    let mut region = Region::start(std::path::Path::new(&binary), 3);
    region.wait_for("a first leader", Duration::from_secs(20), || {
        region.leader()
    });
    let status = || region.admin(&["status"]).ok();
    let (leader, term) = region.wait_for("a settled leader", Duration::from_secs(20), || {
        let s = status()?;
        Some((s["leader_id"].as_u64()?, s["term"].as_u64()?))
    });
    let follower = (1..=3).find(|id| *id != leader).unwrap();
    region.coordinator(follower).signal("STOP");
    std::thread::sleep(Duration::from_secs(8));
    region.coordinator(follower).signal("CONT");
    std::thread::sleep(Duration::from_secs(3));
    let after = region.admin(&["status"]).unwrap();
    assert_eq!(after["leader_id"].as_u64(), Some(leader), "{after}");
    assert_eq!(after["term"].as_u64(), Some(term), "no election: {after}");
    let log = region.coordinator(follower).log();
    assert!(
        !log.contains("pre-vote won"),
        "the resumed follower never stood for election: {log}"
    );
}
