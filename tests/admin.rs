//! The admin API of a region of separate processes on loopback: coordinators join and
//! leave the Raft group through it, and `describe` reports each partition's lag.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::mirador;
use mirador_cluster_tests::cluster::Region;
use mirador_cluster_tests::services::{free_port, KafkaBroker};
use mirador_cluster_tests::spec::{SpecYaml, DEFAULTS_ON_MISS};
use mirador_executor::connectors::generator::EventFactory;
use mirador_executor::spec::{GeneratorSpec, PayloadFormat};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::ClientConfig;
use serde_json::Value;

/// node id -> role, from `admin status`.
fn roles(region: &Region) -> Option<BTreeMap<u64, String>> {
    let status = region.admin(&["status"]).ok()?;
    status["members"]
        .as_array()?
        .iter()
        .map(|m| Some((m["node_id"].as_u64()?, m["role"].as_str()?.to_string())))
        .collect()
}

#[test]
fn coordinators_join_and_leave_the_group_through_the_admin_api() {
    let binary = mirador();
    let mut region = Region::start(std::path::Path::new(&binary), 1);
    region.wait_for("a first leader", Duration::from_secs(20), || {
        (region.leader() == Some(1)).then_some(())
    });
    let address_2 = region.add_joining_coordinator(2);
    let address_3 = region.add_joining_coordinator(3);
    let one = BTreeMap::from([(1, "leader".to_string())]);
    assert_eq!(
        roles(&region),
        Some(one.clone()),
        "joining is not automatic"
    );

    // Bad requests name their field and change nothing.
    let refused = |args: &[&str], field: &str| {
        let error = region.admin(args).unwrap_err();
        assert!(error.contains(field), "{args:?}: {error}");
    };
    refused(
        &["add-learner", "--node-id", "0", "--address", &address_2],
        "node_id",
    );
    refused(
        &["add-learner", "--node-id", "2", "--address", "no-port"],
        "address",
    );
    refused(&["promote", "--node-id", "2"], "node_id");
    refused(&["remove-member", "--node-id", "1"], "node_id");
    refused(&["remove-member", "--node-id", "7"], "node_id");
    assert_eq!(
        roles(&region),
        Some(one),
        "refused requests changed nothing"
    );

    // Two learners copy the log, then vote.
    for (id, address) in [("2", &address_2), ("3", &address_3)] {
        region
            .admin(&["add-learner", "--node-id", id, "--address", address])
            .unwrap();
    }
    let learners = roles(&region).unwrap();
    assert_eq!(learners.get(&2).map(String::as_str), Some("learner"));
    assert_eq!(learners.get(&3).map(String::as_str), Some("learner"));
    for id in ["2", "3"] {
        region.admin(&["promote", "--node-id", id]).unwrap();
    }
    let voters = roles(&region).unwrap();
    assert_eq!(voters.len(), 3, "{voters:?}");
    assert!(voters.values().all(|r| r == "leader" || r == "voter"));

    // A learner that never caught up (nobody listens at its address) stays a learner.
    region
        .admin(&["add-learner", "--node-id", "9", "--address", "127.0.0.1:1"])
        .unwrap();
    let error = region.admin(&["promote", "--node-id", "9"]).unwrap_err();
    assert!(
        error.contains("node_id") && error.contains("learner 9 is") && error.contains("behind"),
        "{error}"
    );
    assert_eq!(
        roles(&region).unwrap().get(&9).map(String::as_str),
        Some("learner")
    );
    region.admin(&["remove-member", "--node-id", "9"]).unwrap();
    // A voter's address is not changed by adding it again.
    let error = region
        .admin(&["add-learner", "--node-id", "2", "--address", "127.0.0.1:2"])
        .unwrap_err();
    assert!(
        error.contains("node_id") && error.contains("already a voter"),
        "{error}"
    );
    assert_eq!(roles(&region).unwrap(), voters, "refusals changed nothing");

    // A pipeline committed now must survive the founder: the joined nodes hold the log.
    let spec = region.dir.path().join("pipeline.yaml");
    std::fs::write(&spec, generator_spec(&region, "survivor", 1, 100, None)).unwrap();
    region.admin(&["create", spec.to_str().unwrap()]).unwrap();
    region.coordinator(1).kill();
    let leader = region.wait_for("a leader among the joined", Duration::from_secs(20), || {
        region.leader().filter(|l| *l != 1)
    });
    let pipelines = region.admin(&["pipelines"]).unwrap();
    assert!(
        pipelines.to_string().contains("survivor"),
        "the new leader {leader} has the pipeline: {pipelines}"
    );

    // The dead founder is removed; two voters remain.
    region.admin(&["remove-member", "--node-id", "1"]).unwrap();
    let left = roles(&region).unwrap();
    assert_eq!(left.keys().copied().collect::<Vec<_>>(), vec![2, 3]);
    // And a learner can be removed as well as a voter.
    let address_4 = region.add_joining_coordinator(4);
    region
        .admin(&["add-learner", "--node-id", "4", "--address", &address_4])
        .unwrap();
    region.admin(&["remove-member", "--node-id", "4"]).unwrap();
    let left = roles(&region).unwrap();
    assert_eq!(left.keys().copied().collect::<Vec<_>>(), vec![2, 3]);
}

/// A pipeline over the bundled model from `source` with features from `lookup` (YAML
/// blocks indented by two spaces), writing nothing but its dead letter.
fn spec_yaml(region: &Region, name: &str, source: &str, lookup: &str) -> String {
    let dead = region.dir.path().join(format!("{name}-dead.jsonl"));
    SpecYaml {
        name,
        source,
        lookup,
        enrichment: DEFAULTS_ON_MISS,
        sink: "  \"null\": {}",
        dead_letter: &format!("  file:\n    path: {}", dead.display()),
        rest: "checkpoint:\n  interval_ms: 100\n",
        ..SpecYaml::default()
    }
    .yaml()
}

/// A generator pipeline with the bundled feature table.
fn generator_spec(
    region: &Region,
    name: &str,
    partitions: u32,
    events: u64,
    rate_per_sec: Option<u64>,
) -> String {
    let rate = rate_per_sec.map_or(String::new(), |r| format!("\n    rate_per_sec: {r}"));
    let source = format!(
        "  generator:\n    events: {events}\n    partitions: {partitions}\n    customers: 1000{rate}"
    );
    // The bundled feature table.
    spec_yaml(region, name, &source, "")
}

/// partition -> (lag, checkpoint), for the partitions that report both.
fn lags(info: &Value) -> BTreeMap<u64, (u64, u64)> {
    info["assignments"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|a| {
            Some((
                a["partition"].as_u64()?,
                (a["lag"].as_u64()?, a["checkpoint"].as_u64()?),
            ))
        })
        .collect()
}

#[test]
fn describe_reports_how_far_each_partition_is_behind_its_source() {
    const EVENTS: u64 = 4000;
    let binary = mirador();
    let mut region = Region::start(std::path::Path::new(&binary), 1);
    region.wait_for("a leader", Duration::from_secs(20), || region.leader());
    region.add_executor("e1", 4);
    // Two partitions of 4000 events each at 800 events/s: about five seconds behind.
    let spec = region.dir.path().join("slow.yaml");
    std::fs::write(&spec, generator_spec(&region, "slow", 2, EVENTS, Some(800))).unwrap();
    region.admin(&["create", spec.to_str().unwrap()]).unwrap();

    // Partway: both partitions have delivered some of their events, not all.
    let behind = region.wait_for("a partial lag reported", Duration::from_secs(30), || {
        let lags = lags(&region.admin(&["describe", "slow"]).ok()?);
        (lags.len() == 2 && lags.values().all(|(lag, _)| (1..EVENTS).contains(lag))).then_some(lags)
    });
    for (partition, (lag, checkpoint)) in &behind {
        assert!(
            *lag <= EVENTS && *checkpoint < EVENTS,
            "partition {partition}: lag {lag} at checkpoint {checkpoint}"
        );
    }
    let caught_up = region.wait_for("no lag", Duration::from_secs(60), || {
        let lags = lags(&region.admin(&["describe", "slow"]).ok()?);
        (lags.len() == 2 && lags.values().all(|(lag, cp)| *lag == 0 && *cp == EVENTS))
            .then_some(lags)
    });
    println!("lag while behind: {behind:?}; at the end: {caught_up:?}");
}

#[test]
fn describe_reports_a_kafka_partitions_lag_while_its_pipeline_waits() {
    const PER_PARTITION: u64 = 300;
    let broker = KafkaBroker::start();
    broker.create_topic("waiting", 2);
    let brokers = broker.brokers();
    let factory = EventFactory::new(
        &GeneratorSpec {
            events: None,
            partitions: 1,
            customers: 1000,
            zipf_exponent: 1.1,
            poison_ratio: 0.0,
            seed: 3,
            rate_per_sec: None,
        },
        0,
        PayloadFormat::Json,
        65536,
    );
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("enable.idempotence", "true")
        .create()
        .unwrap();
    let now = chrono::Utc::now().timestamp_millis();
    let mut payload = Vec::new();
    for seq in 0..2 * PER_PARTITION {
        factory.payload(seq, now, &mut payload);
        let record = BaseRecord::<(), _>::to("waiting")
            .partition((seq % 2) as i32)
            .payload(&payload);
        producer.send(record).map_err(|(e, _)| e).unwrap();
    }
    producer.flush(Duration::from_secs(30)).unwrap();

    let binary = mirador();
    let mut region = Region::start(std::path::Path::new(&binary), 1);
    region.wait_for("a leader", Duration::from_secs(20), || region.leader());
    region.add_executor("e1", 4);
    // The features come from a Bigtable that nobody serves: every lookup fails, the
    // enrichment waits (`on_lookup_failure: wait`), and nothing is delivered.
    let spec = region.dir.path().join("waiting.yaml");
    let source = format!("  kafka:\n    brokers: \"{brokers}\"\n    topic: waiting");
    let lookup = format!(
        "  bigtable:\n    project: test-project\n    instance: test-instance\n    table: features\n    endpoint: 127.0.0.1:{}",
        free_port()
    );
    std::fs::write(&spec, spec_yaml(&region, "waiting", &source, &lookup)).unwrap();
    region.admin(&["create", spec.to_str().unwrap()]).unwrap();

    // Nothing is checkpointed, and each partition is its whole topic partition behind.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let info = region.admin(&["describe", "waiting"]).unwrap_or_default();
        let assignments = info["assignments"].as_array().cloned().unwrap_or_default();
        let behind = assignments.len() == 2
            && assignments
                .iter()
                .all(|a| a["lag"].as_u64() == Some(PER_PARTITION) && a["checkpoint"].is_null());
        if behind {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "each partition {PER_PARTITION} behind with no checkpoint, not: {info}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The `state` of each partition of `name`.
fn states(region: &Region, name: &str) -> Option<Vec<String>> {
    let info = region.admin(&["describe", name]).ok()?;
    info["assignments"]
        .as_array()?
        .iter()
        .map(|a| a["state"].as_str().map(String::from))
        .collect()
}

#[test]
fn a_finished_partition_gives_its_slot_back_and_a_waiting_one_says_why() {
    let binary = mirador();
    let mut region = Region::start(std::path::Path::new(&binary), 1);
    region.wait_for("a leader", Duration::from_secs(20), || region.leader());
    region.add_executor("e1", 1);
    let create = |region: &Region, name: &str, yaml: String| {
        let spec = region.dir.path().join(format!("{name}.yaml"));
        std::fs::write(&spec, yaml).unwrap();
        region.admin(&["create", spec.to_str().unwrap()]).unwrap();
    };

    // A bounded pipeline runs to its end and frees the only slot.
    create(
        &region,
        "bounded",
        generator_spec(&region, "bounded", 1, 2000, None),
    );
    region.wait_for("bounded finished", Duration::from_secs(60), || {
        (states(&region, "bounded")? == ["finished"]).then_some(())
    });
    let info = region.admin(&["describe", "bounded"]).unwrap();
    assert_eq!(info["assignments"][0]["owner"], "", "no owner: {info}");
    assert_eq!(info["assignments"][0]["checkpoint"], 2000, "{info}");
    // Creating the same spec again (a retry) changes nothing; another spec is refused.
    let bounded = region.dir.path().join("bounded.yaml");
    let again = region
        .admin(&["create", bounded.to_str().unwrap()])
        .unwrap();
    assert_eq!(again["version"], 1, "{again}");
    assert_eq!(again["assignments"][0]["state"], "finished", "{again}");
    let other = region.dir.path().join("other.yaml");
    std::fs::write(&other, generator_spec(&region, "bounded", 1, 3000, None)).unwrap();
    let error = region
        .admin(&["create", other.to_str().unwrap()])
        .unwrap_err();
    assert!(error.contains("exists"), "{error}");

    // So the next pipeline runs; it never ends and keeps the slot.
    let unbounded =
        generator_spec(&region, "unbounded", 1, 0, Some(100)).replace("    events: 0\n", "");
    create(&region, "unbounded", unbounded);
    region.wait_for("unbounded running", Duration::from_secs(30), || {
        (states(&region, "unbounded")? == ["running"]).then_some(())
    });

    // A third has no slot to go to, and says so.
    create(
        &region,
        "waiting",
        generator_spec(&region, "waiting", 2, 100, None),
    );
    std::thread::sleep(Duration::from_secs(2));
    let waiting = states(&region, "waiting").unwrap();
    assert!(
        waiting
            .iter()
            .all(|s| s.starts_with("waiting: no free slot")),
        "{waiting:?}"
    );
    let text = std::process::Command::new(&binary)
        .args([
            "admin",
            "--coordinators",
            &region.coordinator_list(),
            "describe",
            "waiting",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains("STATE") && text.contains("no free slot"),
        "{text}"
    );
}

#[test]
fn an_empty_region_lists_no_pipelines_in_words() {
    let binary = mirador();
    let region = Region::start(std::path::Path::new(&binary), 1);
    region.wait_for("a leader", Duration::from_secs(20), || region.leader());
    let out = std::process::Command::new(&binary)
        .args([
            "admin",
            "--coordinators",
            &region.coordinator_list(),
            "pipelines",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("no pipelines"),
        "{out:?}"
    );
}

/// The venv's Python with grpcio-reflection (`make test` sets `MIRADOR_PYTHON`).
fn grpc_python() -> String {
    let python = std::env::var("MIRADOR_PYTHON").unwrap_or_else(|_| {
        format!(
            "{}/.cache/mirador/venv/bin/python",
            std::env::var("HOME").unwrap_or_default()
        )
    });
    let found = std::process::Command::new(&python)
        .args(["-c", "import grpc_reflection, grpc_health"])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        found,
        "missing: grpcio-reflection and grpcio-health-checking for {python} (make test installs \
         them; MIRADOR_PYTHON names another Python)"
    );
    python
}

#[test]
fn a_grpc_client_from_pypi_finds_the_admin_api_through_reflection_and_calls_it() {
    let python = grpc_python();
    let binary = mirador();
    let region = Region::start(std::path::Path::new(&binary), 1);
    let leader = region.wait_for("a leader", Duration::from_secs(20), || region.leader());
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/clients/reflection.py");
    let out = std::process::Command::new(&python)
        .args([script, &region.coordinator_list()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let seen: Value = serde_json::from_slice(&out.stdout).unwrap();
    for version in ["v1alpha_services", "v1_services"] {
        let services: Vec<&str> = seen[version]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(Value::as_str)
            .collect();
        for service in [
            "mirador.admin.v1.Admin",
            "mirador.coordinator.v1.ExecutorService",
            "grpc.health.v1.Health",
        ] {
            assert!(services.contains(&service), "{version}: {services:?}");
        }
    }
    // Built from reflection's descriptors alone: the status names this region's leader.
    assert_eq!(
        seen["cluster_status"]["leader_id"].as_str(),
        Some(leader.to_string().as_str()),
        "{seen}"
    );
    assert_eq!(seen["health"], "SERVING", "{seen}");
}
