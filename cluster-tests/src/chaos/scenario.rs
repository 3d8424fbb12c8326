//! The rows of the reliability matrix (../shared/RELIABILITY.md in the design): each a
//! fault injected into a running deployment under a steady load, then the load stopped,
//! the pipeline left to catch up, and every input reconciled.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::check::{reconcile, Reconciled};
use super::deployment::{Deployment, Result, PARTITIONS, PIPELINE};
use super::load::Load;

/// What every run is given.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Records a second.
    pub rate: u32,
    pub poison_share: f64,
    /// The pipeline's spec (examples/compose.yaml).
    pub spec: PathBuf,
    /// Where a failed row leaves its containers' logs.
    pub logs: PathBuf,
}

/// One row's figures.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub row: u32,
    pub name: &'static str,
    pub reconciled: Reconciled,
    /// From the end of the fault (for a kill: the last kill) until the lag is back to its
    /// level before, in seconds.
    pub recovery_s: Option<f64>,
    pub peak_lag: u64,
    pub peak_memory_mib: f64,
    /// The row's own figure (time to a new leader, to reassign, ...).
    pub figure: String,
    /// What the row found wrong; empty when it passed.
    pub failures: Vec<String>,
    pub wall_s: f64,
}

impl Outcome {
    pub fn passed(&self) -> bool {
        self.failures.is_empty()
    }
}

pub struct Row {
    pub number: u32,
    pub name: &'static str,
    /// Duplicates allowed, as a multiple of the records in flight at a fault (0: none).
    pub duplicates_allowed: bool,
    /// The poison share of its load, when not the settings'.
    pub poison_share: Option<f64>,
    /// A compose file laid over docker-compose.yml for this row.
    pub overlay: Option<&'static str>,
    fault: fn(&mut Run) -> Result<()>,
}

/// The rows, in the matrix's numbering.
pub fn rows() -> Vec<Row> {
    vec![
        Row {
            number: 1,
            name: "no faults, steady load",
            duplicates_allowed: false,
            poison_share: None,
            overlay: None,
            fault: no_faults,
        },
        Row {
            number: 2,
            name: "coordinator leader killed 3 times during a rebalance",
            duplicates_allowed: true,
            poison_share: None,
            overlay: None,
            fault: leader_killed,
        },
        Row {
            number: 3,
            name: "coordinator leader paused 15 s",
            duplicates_allowed: true,
            poison_share: None,
            overlay: None,
            fault: leader_paused,
        },
        Row {
            number: 4,
            name: "an executor cut off from the coordinators 30 s",
            duplicates_allowed: true,
            poison_share: None,
            overlay: None,
            fault: executor_cut_off,
        },
        Row {
            number: 5,
            name: "coordinators split 1 / 2 for 20 s",
            duplicates_allowed: true,
            poison_share: None,
            overlay: None,
            fault: coordinators_split,
        },
        Row {
            number: 6,
            name: "an executor killed (SIGKILL) mid-batch, 3 times",
            duplicates_allowed: true,
            poison_share: None,
            overlay: None,
            fault: executor_killed,
        },
        Row {
            number: 7,
            name: "every executor killed, 5 times, 2 s apart",
            duplicates_allowed: true,
            poison_share: None,
            overlay: None,
            fault: every_executor_killed,
        },
        Row {
            number: 8,
            name: "Bigtable down (paused) 20 s",
            duplicates_allowed: true,
            poison_share: None,
            overlay: None,
            fault: bigtable_down,
        },
        Row {
            number: 9,
            name: "executors' network: 50 ms delay, then 20 % loss, 60 s",
            duplicates_allowed: true,
            poison_share: None,
            overlay: None,
            fault: network_degraded,
        },
        Row {
            number: 10,
            name: "5 % poison records",
            duplicates_allowed: false,
            poison_share: Some(0.05),
            overlay: None,
            fault: no_faults,
        },
        Row {
            number: 11,
            name: "region a lost, b takes over from its snapshot",
            duplicates_allowed: true,
            poison_share: None,
            overlay: None,
            fault: region_lost,
        },
        Row {
            number: 12,
            name: "region a lost, b's three newest copies of its snapshots damaged",
            duplicates_allowed: true,
            poison_share: None,
            overlay: None,
            fault: snapshots_damaged,
        },
        Row {
            number: 13,
            name: "wall clocks of region a's coordinators jumped 600 s back and forth",
            duplicates_allowed: false,
            poison_share: None,
            overlay: Some(CLOCK_FAULTS),
            fault: clock_jumps,
        },
    ]
}

/// The scenario `make test` runs: the deployment up, one executor killed with SIGKILL.
pub fn smoke() -> Row {
    Row {
        number: 0,
        name: "smoke: an executor killed with SIGKILL",
        duplicates_allowed: true,
        poison_share: None,
        overlay: None,
        fault: executor_killed_once,
    }
}

#[derive(Clone, Copy)]
struct Sample {
    at: Instant,
    lag: Option<u64>,
}

/// A row under way: the deployment, its load, and the lag sampled every 500 ms.
pub struct Run<'a> {
    pub d: &'a Deployment,
    samples: Arc<Mutex<Vec<Sample>>>,
    memory: Arc<Mutex<f64>>,
    healed: Option<Instant>,
    figures: Vec<String>,
    failures: Vec<String>,
}

impl Run<'_> {
    fn figure(&mut self, text: String) {
        self.figures.push(text);
    }

    fn fail(&mut self, text: String) {
        self.failures.push(text);
    }

    /// The fault is over (for a kill: when it was dealt).
    fn healed(&mut self) {
        self.healed = Some(Instant::now());
    }

    /// Seconds until `done`, polled every 100 ms, at most `secs`.
    fn time_until(&self, secs: u64, mut done: impl FnMut() -> bool) -> Option<f64> {
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(secs) {
            if done() {
                return Some(started.elapsed().as_secs_f64());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        None
    }
}

/// The pipeline's assignments in whichever region runs it (a first).
fn assignments(d: &Deployment) -> Option<Vec<Value>> {
    for region in ["a", "b"] {
        if let Ok(info) = d.admin(region, &["describe", PIPELINE]) {
            let list = info["assignments"].as_array().cloned().unwrap_or_default();
            if list.len() == PARTITIONS as usize
                && list
                    .iter()
                    .all(|a| a["state"] == "running" && a["owner"] != "")
            {
                return Some(list);
            }
        }
    }
    None
}

fn lag(d: &Deployment) -> Option<u64> {
    assignments(d)?.iter().map(|a| a["lag"].as_u64()).sum()
}

/// Every partition running on an executor other than `gone`.
fn running_without(d: &Deployment, gone: &[&str]) -> bool {
    assignments(d).is_some_and(|list| {
        list.iter()
            .all(|a| !gone.iter().any(|g| a["owner"] == *g) && a["moving_to"] == "")
    })
}

/// Runs `row` on a deployment of its own, which it removes at the end.
pub fn execute(row: &Row, d: &Deployment, settings: &Settings) -> Outcome {
    let started = Instant::now();
    let d = &row
        .overlay
        .map_or_else(|| d.clone(), |file| d.with_override(file));
    let mut outcome = Outcome {
        row: row.number,
        name: row.name,
        reconciled: Reconciled::default(),
        recovery_s: None,
        peak_lag: 0,
        peak_memory_mib: 0.0,
        figure: String::new(),
        failures: Vec::new(),
        wall_s: 0.0,
    };
    d.down();
    if let Err(e) = attempt(row, d, settings, &mut outcome) {
        outcome.failures.push(e);
    }
    outcome.wall_s = started.elapsed().as_secs_f64();
    if !outcome.passed() {
        let dir = settings.logs.join(format!("row-{}", row.number));
        d.save_logs(&dir);
        outcome
            .failures
            .push(format!("the containers' logs are in {}", dir.display()));
    }
    d.down();
    outcome
}

fn attempt(row: &Row, d: &Deployment, settings: &Settings, outcome: &mut Outcome) -> Result<()> {
    d.up()?;
    let spec = settings.spec.to_string_lossy().into_owned();
    d.admin("a", &["create", &spec])?;
    d.wait("every partition running", 90, || assignments(d).is_some())?;
    // Every node of both regions serves its metrics, and Prometheus scrapes them all.
    d.wait("Prometheus scraping all 10 nodes", 60, || {
        d.prometheus_targets() == Ok((10, 10))
    })?;

    let samples = Arc::new(Mutex::new(Vec::new()));
    let memory = Arc::new(Mutex::new(0.0f64));
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (samples, memory, stop) = (samples.clone(), memory.clone(), stop.clone());
        let d = d.clone();
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                let lag = lag(&d);
                samples.lock().unwrap().push(Sample {
                    at: Instant::now(),
                    lag,
                });
                let peak = d.executor_memory_mib().into_iter().fold(0.0, f64::max);
                let mut m = memory.lock().unwrap();
                *m = m.max(peak);
                drop(m);
                std::thread::sleep(Duration::from_millis(500));
            }
        })
    };
    let load = Load::start(
        &d.brokers(),
        "events",
        PARTITIONS,
        settings.rate,
        row.poison_share.unwrap_or(settings.poison_share),
    );
    std::thread::sleep(Duration::from_secs(10));
    let baseline = samples
        .lock()
        .unwrap()
        .iter()
        .filter_map(|s| s.lag)
        .max()
        .unwrap_or(0);

    let mut run = Run {
        d,
        samples: samples.clone(),
        memory: memory.clone(),
        healed: None,
        figures: Vec::new(),
        failures: Vec::new(),
    };
    let fault_started = Instant::now();
    let faulted = (row.fault)(&mut run);
    let healed = run.healed.unwrap_or(fault_started);
    std::thread::sleep(Duration::from_secs(10));
    let sent = load.stop()?;
    faulted?;

    // Caught up: no lag three samples running.
    d.wait("the pipeline to catch up (lag 0)", 180, || {
        let list = samples.lock().unwrap();
        list.len() >= 3 && list[list.len() - 3..].iter().all(|s| s.lag == Some(0))
    })?;
    stop.store(true, Ordering::SeqCst);
    let _ = sampler.join();

    let reconciled = reconcile(&d.brokers(), &sent, PARTITIONS);
    let list = samples.lock().unwrap();
    outcome.peak_lag = list
        .iter()
        .filter(|s| s.at >= fault_started)
        .filter_map(|s| s.lag)
        .max()
        .unwrap_or(0);
    outcome.recovery_s = list
        .iter()
        .find(|s| {
            s.at >= healed
                && s.lag
                    .is_some_and(|l| l <= baseline.max(settings.rate as u64 / 2))
        })
        .map(|s| s.at.duration_since(healed).as_secs_f64());
    outcome.peak_memory_mib = *memory.lock().unwrap();
    outcome.figure = run.figures.join("; ");
    outcome.failures.extend(run.failures);
    if reconciled.acknowledged == 0 {
        outcome.failures.push("no input was acknowledged".into());
    }
    if reconciled.lost > 0 {
        outcome.failures.push(format!(
            "{} inputs lost, first {:?}",
            reconciled.lost, reconciled.lost_sample
        ));
    }
    if !reconciled.dead_letter_is_poison {
        outcome.failures.push(format!(
            "the dead letter ({}) is not the poison set ({})",
            reconciled.dead_lettered, reconciled.poison
        ));
    }
    if !row.duplicates_allowed && reconciled.duplicates > 0 {
        outcome.failures.push(format!(
            "{} duplicates with no fault",
            reconciled.duplicates
        ));
    }
    outcome.reconciled = reconciled;
    Ok(())
}

// The faults. Each leaves the deployment as it found it (every container running).

fn no_faults(run: &mut Run) -> Result<()> {
    std::thread::sleep(Duration::from_secs(20));
    run.healed();
    Ok(())
}

/// The address of coordinator `i` (1..=3) of region `a` on its region's network.
fn coordinator_ip(d: &Deployment, i: u64) -> String {
    format!("{}.11.1{i}", d.net)
}

fn leader_killed(run: &mut Run) -> Result<()> {
    let d = run.d;
    let mut longest: f64 = 0.0;
    for round in 0..3 {
        let leader = d.leader("a").ok_or("region a has no leader")?;
        // A rebalance under way: an executor drained (and taken back in the next round).
        let drained = if round % 2 == 0 { "a-e1" } else { "a-e2" };
        d.admin("a", &["drain", drained])?;
        d.kill(&format!("a-c{leader}"))?;
        let others: Vec<u32> = (1..=3).filter(|i| *i as u64 != leader).collect();
        let took = run.time_until(30, || {
            others
                .iter()
                .any(|&i| d.leader_seen_by("a", i).is_some_and(|(l, _)| l != leader))
        });
        match took {
            Some(s) => longest = longest.max(s),
            None => run.fail(format!(
                "no new leader within 30 s of killing coordinator {leader}"
            )),
        }
        d.start(&format!("a-c{leader}"))?;
        std::thread::sleep(Duration::from_secs(3));
        d.admin("a", &["drain", drained, "--undo"])?;
        std::thread::sleep(Duration::from_secs(3));
    }
    run.healed();
    run.figure(format!("time to a new leader: at most {longest:.1} s"));
    if longest > 2.0 {
        run.fail(format!("a new leader took {longest:.1} s (target 2 s)"));
    }
    Ok(())
}

fn leader_paused(run: &mut Run) -> Result<()> {
    let d = run.d;
    let leader = d.leader("a").ok_or("region a has no leader")?;
    let service = format!("a-c{leader}");
    d.pause(&service)?;
    let others: Vec<u32> = (1..=3).filter(|i| *i as u64 != leader).collect();
    let took = run.time_until(15, || {
        others
            .iter()
            .any(|&i| d.leader_seen_by("a", i).is_some_and(|(l, _)| l != leader))
    });
    let rest =
        Duration::from_secs(15).saturating_sub(Duration::from_secs_f64(took.unwrap_or(15.0)));
    std::thread::sleep(rest);
    d.unpause(&service)?;
    run.healed();
    match took {
        Some(s) => run.figure(format!("new leader after {s:.1} s")),
        None => run.fail("no new leader while the old one was paused".into()),
    }
    // Resumed, the old leader follows the new one: it leads nothing of its own.
    let follows = run.time_until(10, || {
        d.leader_seen_by("a", leader as u32)
            .is_some_and(|(l, _)| l != leader)
    });
    match follows {
        Some(s) => run.figure(format!("the resumed leader follows after {s:.1} s")),
        None => run.fail("the resumed leader still claims to lead".into()),
    }
    Ok(())
}

fn executor_cut_off(run: &mut Run) -> Result<()> {
    let d = run.d;
    d.disconnect("region-a", "a-e1")?;
    let moved = run.time_until(30, || running_without(d, &["a-e1"]));
    let rest =
        Duration::from_secs(30).saturating_sub(Duration::from_secs_f64(moved.unwrap_or(30.0)));
    std::thread::sleep(rest);
    d.connect("region-a", "a-e1", &format!("{}.11.21", d.net))?;
    run.healed();
    match moved {
        Some(s) => run.figure(format!("its partitions running elsewhere after {s:.1} s")),
        None => run.fail("its partitions did not move within 30 s".into()),
    }
    if moved.is_some_and(|s| s > 5.0) {
        run.fail("its partitions took more than 5 s to move".into());
    }
    Ok(())
}

fn coordinators_split(run: &mut Run) -> Result<()> {
    let d = run.d;
    let leader = d.leader("a").ok_or("region a has no leader")?;
    let service = format!("a-c{leader}");
    let others: Vec<u64> = (1..=3).filter(|i| *i != leader).collect();
    for &i in &others {
        d.block(&service, &coordinator_ip(d, i))?;
    }
    let took = run.time_until(20, || {
        others.iter().any(|&i| {
            d.leader_seen_by("a", i as u32)
                .is_some_and(|(l, _)| l != leader)
        })
    });
    // The minority commits nothing: what it has applied stays where it was.
    std::thread::sleep(Duration::from_secs(2));
    let before = d
        .leader_seen_by("a", leader as u32)
        .map(|(_, applied)| applied);
    std::thread::sleep(Duration::from_secs(10));
    let after = d
        .leader_seen_by("a", leader as u32)
        .map(|(_, applied)| applied);
    for &i in &others {
        d.unblock(&service, &coordinator_ip(d, i))?;
    }
    run.healed();
    match took {
        Some(s) => run.figure(format!(
            "unavailable {s:.1} s (until the majority elected a leader)"
        )),
        None => run.fail("the majority elected no leader".into()),
    }
    if before != after {
        run.fail(format!(
            "the minority applied entries while cut off: {before:?} -> {after:?}"
        ));
    } else {
        run.figure(format!(
            "the minority applied nothing while cut off (index {})",
            before.unwrap_or(0)
        ));
    }
    Ok(())
}

fn kill_executor_and_time(run: &mut Run, executor: &str) -> Result<Option<f64>> {
    let d = run.d;
    d.kill(executor)?;
    run.healed();
    let moved = run.time_until(30, || running_without(d, &[executor]));
    d.start(executor)?;
    Ok(moved)
}

fn executor_killed_once(run: &mut Run) -> Result<()> {
    let moved = kill_executor_and_time(run, "a-e1")?;
    match moved {
        Some(s) => run.figure(format!("its partitions running elsewhere after {s:.1} s")),
        None => run.fail("its partitions did not move within 30 s".into()),
    }
    std::thread::sleep(Duration::from_secs(5));
    Ok(())
}

fn executor_killed(run: &mut Run) -> Result<()> {
    let mut longest: f64 = 0.0;
    for round in 0..3 {
        let executor = if round % 2 == 0 { "a-e1" } else { "a-e2" };
        match kill_executor_and_time(run, executor)? {
            Some(s) => longest = longest.max(s),
            None => run.fail(format!("{executor}'s partitions did not move within 30 s")),
        }
        std::thread::sleep(Duration::from_secs(8));
    }
    run.figure(format!(
        "partitions running elsewhere after at most {longest:.1} s"
    ));
    if longest > 5.0 {
        run.fail(format!(
            "partitions took {longest:.1} s to move (target 5 s)"
        ));
    }
    Ok(())
}

fn every_executor_killed(run: &mut Run) -> Result<()> {
    let d = run.d;
    for _ in 0..5 {
        d.kill("a-e1")?;
        d.kill("a-e2")?;
        run.healed();
        std::thread::sleep(Duration::from_secs(1));
        d.start("a-e1")?;
        d.start("a-e2")?;
        std::thread::sleep(Duration::from_secs(2));
    }
    run.figure("output compared with a fault-free run: every non-poison input scored".into());
    Ok(())
}

fn bigtable_down(run: &mut Run) -> Result<()> {
    let d = run.d;
    d.pause("bigtable")?;
    std::thread::sleep(Duration::from_secs(20));
    d.unpause("bigtable")?;
    run.healed();
    let peak = *run.memory.lock().unwrap();
    let peak_lag = run
        .samples
        .lock()
        .unwrap()
        .iter()
        .filter_map(|s| s.lag)
        .max()
        .unwrap_or(0);
    run.figure(format!(
        "lag {peak_lag} and executors' memory {peak:.0} MiB at most while it was down"
    ));
    Ok(())
}

fn network_degraded(run: &mut Run) -> Result<()> {
    let d = run.d;
    let executors = ["a-e1", "a-e2"];
    // Delay needs the kernel's netem qdisc, which some kernels lack: then the row says so
    // and injects the loss alone.
    let delayed = executors
        .iter()
        .all(|e| d.netem(e, Some("delay 50ms")).is_ok());
    if delayed {
        std::thread::sleep(Duration::from_secs(30));
        for e in executors {
            d.netem(e, None)?;
        }
        run.figure("50 ms delay 30 s (netem)".into());
    } else {
        run.figure("no delay: this kernel has no netem qdisc".into());
    }
    for e in executors {
        d.lose(e, 20, true)?;
    }
    std::thread::sleep(Duration::from_secs(if delayed { 30 } else { 60 }));
    for e in executors {
        d.lose(e, 20, false)?;
    }
    run.healed();
    run.figure(format!(
        "20 % packet loss {} s (iptables statistic)",
        if delayed { 30 } else { 60 }
    ));
    Ok(())
}

/// Region a's services, in the order they start: its store, coordinators, executors.
const REGION_A: [&str; 6] = ["a-store", "a-c1", "a-c2", "a-c3", "a-e1", "a-e2"];

/// Kills every process of region a (SIGKILL), executors first.
fn lose_region_a(d: &Deployment) -> Result<()> {
    REGION_A
        .iter()
        .rev()
        .try_for_each(|service| d.kill(service))
}

/// Starts region a again: it finds b's ownership and stands by.
fn restore_region_a(d: &Deployment) -> Result<()> {
    REGION_A.iter().try_for_each(|service| d.start(service))
}

/// Whether region b runs every partition of the pipeline on its own executors.
fn b_runs_every_partition(d: &Deployment) -> bool {
    let list = b_assignments(d);
    list.len() == PARTITIONS as usize
        && list.iter().all(|a| {
            a["state"] == "running" && a["owner"].as_str().is_some_and(|o| o.starts_with("b-"))
        })
}

/// The pipeline's assignments as region b describes them (none while b does not hold it).
fn b_assignments(d: &Deployment) -> Vec<Value> {
    d.admin("b", &["describe", PIPELINE])
        .ok()
        .and_then(|info| info["assignments"].as_array().cloned())
        .unwrap_or_default()
}

/// Waits up to 120 s for region b to run every partition (its time since `since` is the
/// row's figure), then starts region a again.
fn b_takes_over(run: &mut Run, since: &str) -> Result<()> {
    let d = run.d;
    match run.time_until(120, || b_runs_every_partition(d)) {
        Some(s) => run.figure(format!(
            "region b runs every partition {s:.1} s after {since}"
        )),
        None => run.fail("region b did not take over within 120 s".into()),
    }
    restore_region_a(d)
}

fn region_lost(run: &mut Run) -> Result<()> {
    let d = run.d;
    lose_region_a(d)?;
    run.healed();
    b_takes_over(run, "region a was lost")
}

/// Damages, in region b's store, region a's three newest copies: a flipped bit in the
/// first's body, the second's body cut in half, the third's manifest gone (what a writer
/// killed between its body and its manifest leaves). Prints the four newest sequences,
/// newest first, as JSON.
const DAMAGE: &str = r#"
import json, re, boto3
s3 = boto3.client("s3", endpoint_url="http://127.0.0.1:9000", region_name="us-east-1",
                  aws_access_key_id="mirador", aws_secret_access_key="mirador")
keys = [o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket="snapshots")
        for o in page.get("Contents", [])]
copy = re.compile(r"(^|/)a/(\d{20})\.(.*)$")
found = [(int(m.group(2)), m.group(3), k) for k in keys for m in [copy.search(k)] if m]
manifests = sorted({(seq, k) for seq, kind, k in found if kind == "manifest"}, reverse=True)
def body(seq):
    return next(k for s, kind, k in found if s == seq and kind.endswith("body"))
def read(key):
    return bytearray(s3.get_object(Bucket="snapshots", Key=key)["Body"].read())
first = read(body(manifests[0][0]))
first[len(first) // 2] ^= 0x10
s3.put_object(Bucket="snapshots", Key=body(manifests[0][0]), Body=bytes(first))
second = read(body(manifests[1][0]))
s3.put_object(Bucket="snapshots", Key=body(manifests[1][0]), Body=bytes(second[: len(second) // 2]))
s3.delete_object(Bucket="snapshots", Key=manifests[2][1])
print(json.dumps([seq for seq, _ in manifests[:4]]))
"#;

fn snapshots_damaged(run: &mut Run) -> Result<()> {
    let d = run.d;
    // Four snapshots (5 s apart) taken since the pipeline was created, so that the newest
    // whole one left after the damage holds it.
    std::thread::sleep(Duration::from_secs(25));
    lose_region_a(d)?;
    let out = d.exec("b-store", &["python3", "-c", DAMAGE])?;
    let sequences: Vec<u64> = serde_json::from_str(out.trim())
        .map_err(|e| format!("the damaging script's answer: {e}: {out}"))?;
    if sequences.len() < 4 {
        return Err(format!(
            "b holds fewer than 4 copies of a's snapshots: {sequences:?}"
        ));
    }

    // Never silent: b's listing names each damaged copy and what is wrong with it.
    let listed = d.admin("b", &["snapshots", "list", "--region", "a"])?;
    let problem = |sequence: u64| -> Option<String> {
        listed["snapshots"]
            .as_array()?
            .iter()
            .find(|s| s["sequence"] == sequence)
            .map(|s| s["problem"].as_str().unwrap_or_default().to_string())
    };
    let problems: Vec<Option<String>> = sequences.iter().map(|&s| problem(s)).collect();
    let detected = problems[..3]
        .iter()
        .all(|p| p.as_ref().is_some_and(|p| !p.is_empty()))
        && problems[0].as_ref().is_some_and(|p| p.contains("SHA-256"));
    if detected && problems[3].as_deref() == Some("") {
        run.figure(format!(
            "b's listing names the 3 damaged copies ({}) and the 4th whole",
            problems[..3]
                .iter()
                .flatten()
                .map(|p| {
                    if p.contains("SHA-256") {
                        "its SHA-256 differs from its manifest's".to_string()
                    } else if p.contains("bytes") {
                        "its length differs from its manifest's".to_string()
                    } else {
                        p.clone()
                    }
                })
                .collect::<Vec<_>>()
                .join("; ")
        ));
    } else {
        run.fail(format!(
            "the damage is not reported as it is: {problems:?} ({listed})"
        ));
    }

    // The forced failover passes over them to the newest whole copy.
    let done = d.admin("b", &["failover", "--to", "b", "--force"])?;
    run.healed();
    let used = done["snapshot"]["sequence"].as_u64();
    if used == Some(sequences[3]) {
        run.figure(format!(
            "the takeover restored copy {} (the 4th newest)",
            sequences[3]
        ));
    } else {
        run.fail(format!(
            "the takeover restored {used:?}, not the newest whole copy {}: {done}",
            sequences[3]
        ));
    }
    b_takes_over(run, "the failover")
}

/// Region a's coordinators with faked wall clocks (libfaketime), each offset by what its
/// container's [`CLOCK`] file says; the overlay says why the executors keep the real one.
const CLOCK_FAULTS: &str = "deploy/clock-faults.yaml";
const CLOCK: &str = "/tmp/mirador-clock";

/// Sets `service`'s wall clock `offset` seconds off the host's.
fn set_clock(d: &Deployment, service: &str, offset: i64) -> Result<()> {
    d.exec(
        service,
        &["bash", "-c", &format!("echo '{offset:+}s' > {CLOCK}")],
    )
    .map(drop)
}

/// How far `service`'s wall clock is off the host's, in whole seconds.
fn clock_offset(d: &Deployment, service: &str) -> Result<i64> {
    let inside: i64 = d
        .exec(service, &["date", "+%s"])?
        .trim()
        .parse()
        .map_err(|e| format!("date in {service}: {e}"))?;
    let here = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |t| t.as_secs() as i64);
    Ok(inside - here)
}

/// Each partition's owner and epoch.
fn owners(d: &Deployment) -> Result<Vec<(i64, String, u64)>> {
    let list = assignments(d).ok_or("not every partition is running")?;
    Ok(list
        .iter()
        .map(|a| {
            (
                a["partition"].as_i64().unwrap_or(-1),
                a["owner"].as_str().unwrap_or_default().to_string(),
                a["epoch"].as_u64().unwrap_or(0),
            )
        })
        .collect())
}

/// Steps the wall clocks of region a's coordinators by 600 s, forward and back: the
/// leader's, then the followers' in opposite directions, then all three apart, each held
/// for 8 s (four leases). Leases are granted and expired on the monotonic clock, so no
/// lease may expire, no partition move (same owner, same epoch), region b take nothing
/// over, and no record be written twice.
fn clock_jumps(run: &mut Run) -> Result<()> {
    let d = run.d;
    let before = owners(d)?;
    let leader = d.leader("a").ok_or("region a has no leader")?;
    let leader_service = format!("a-c{leader}");
    let followers: Vec<String> = (1..=3)
        .filter(|i| *i != leader)
        .map(|i| format!("a-c{i}"))
        .collect();
    let (l, f1, f2) = (
        leader_service.as_str(),
        followers[0].as_str(),
        followers[1].as_str(),
    );
    let steps: Vec<Vec<(&str, i64)>> = vec![
        vec![(l, 600)],
        vec![(l, -600)],
        vec![(l, 0), (f1, 600), (f2, -600)],
        vec![(l, 600), (f1, -600), (f2, 300)],
        vec![(l, 0), (f1, 0), (f2, 0)],
    ];
    let mut seen = Vec::new();
    for step in &steps {
        for (service, offset) in step {
            set_clock(d, service, *offset)?;
        }
        // libfaketime reads the file again at most a second after it changed.
        std::thread::sleep(Duration::from_millis(1500));
        for (service, offset) in step {
            let actual = clock_offset(d, service)?;
            if (actual - offset).abs() > 5 {
                run.fail(format!(
                    "{service}'s clock is {actual:+} s off, not {offset:+} s"
                ));
            }
            seen.push(actual);
        }
        std::thread::sleep(Duration::from_secs(8));
    }
    run.healed();
    let (low, high) = (seen.iter().min(), seen.iter().max());
    run.figure(format!(
        "{} clock jumps in {} steps (offsets seen {:+} s to {:+} s), the leader's first",
        seen.len(),
        steps.len(),
        low.unwrap_or(&0),
        high.unwrap_or(&0)
    ));

    let mut after = Vec::new();
    run.time_until(10, || {
        after = owners(d).unwrap_or_default();
        !after.is_empty()
    });
    if after.is_empty() {
        return Err("not every partition running 10 s after the clocks were set back".into());
    }
    let moved: Vec<String> = before
        .iter()
        .zip(&after)
        .filter(|(b, a)| b != a)
        .map(|(b, a)| {
            format!(
                "partition {}: {} epoch {} -> {} epoch {}",
                b.0, b.1, b.2, a.1, a.2
            )
        })
        .collect();
    let mut expired = 0;
    for c in ["a-c1", "a-c2", "a-c3"] {
        expired += d.logs(c)?.matches("lease expired").count();
    }
    let b_took_over = b_runs_any_partition(d);
    run.figure(format!(
        "leases expired {expired}, partitions moved {}, region b took over {}",
        moved.len(),
        if b_took_over { "some" } else { "none" }
    ));
    if expired > 0 {
        run.fail(format!("{expired} leases expired while the clocks jumped"));
    }
    if !moved.is_empty() {
        run.fail(format!("partitions moved: {}", moved.join(", ")));
    }
    if b_took_over {
        run.fail("region b runs partitions of region a's pipeline".into());
    }
    Ok(())
}

/// Whether region b runs any partition of the pipeline.
fn b_runs_any_partition(d: &Deployment) -> bool {
    b_assignments(d)
        .iter()
        .any(|a| a["state"] == "running" && a["owner"] != "")
}
