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

/// A bounded generator pipeline with 5 % poison whose dead letters go to `dead_letter`.
fn poisoned_spec(name: &str, dead_letter: &str) -> String {
    SpecYaml {
        name,
        source: "  generator:\n    events: 2000\n    partitions: 2\n    customers: 1000\n    \
                 poison_ratio: 0.05\n    seed: 5",
        enrichment: DEFAULTS_ON_MISS,
        sink: "  \"null\": {}",
        dead_letter,
        rest: "checkpoint:\n  interval_ms: 100\n",
        ..SpecYaml::default()
    }
    .yaml()
}

/// (partition, offset) -> (reason, stage) of a `dead-letters list`, and how many matched.
type Letters = BTreeMap<(u64, u64), (String, String)>;

fn listed(region: &Region, name: &str, filter: &[&str]) -> (u64, Letters) {
    let mut args = vec!["dead-letters", "list", name, "--limit", "100000"];
    args.extend(filter);
    let list = region.admin(&args).unwrap();
    let text = |v: &Value, k: &str| v[k].as_str().unwrap().to_string();
    let letters = list["dead_letters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            let at = (
                d["partition"].as_u64().unwrap(),
                d["offset"].as_u64().unwrap(),
            );
            (at, (text(d, "reason"), text(d, "stage")))
        })
        .collect();
    (list["matching"].as_u64().unwrap(), letters)
}

/// The original bytes of one dead letter, by `dead-letters show`.
fn shown(region: &Region, name: &str, (partition, offset): (u64, u64)) -> String {
    let (partition, offset) = (partition.to_string(), offset.to_string());
    let shown = region
        .admin(&[
            "dead-letters",
            "show",
            name,
            "--partition",
            &partition,
            "--offset",
            &offset,
        ])
        .unwrap();
    shown["payload"].as_str().unwrap().to_string()
}

#[test]
fn dead_letters_are_listed_filtered_and_shown_from_a_file_and_from_a_kafka_topic() {
    let broker = KafkaBroker::start();
    broker.create_topic("dead", 1);
    let binary = mirador();
    let mut region = Region::start(std::path::Path::new(&binary), 1);
    region.wait_for("a leader", Duration::from_secs(20), || region.leader());
    region.add_executor("e1", 4);
    let file = region.dir.path().join("dead.jsonl");
    let specs = [
        ("to-file", format!("  file:\n    path: {}", file.display())),
        (
            "to-kafka",
            format!(
                "  kafka:\n    brokers: \"{}\"\n    topic: dead",
                broker.brokers()
            ),
        ),
    ];
    for (name, dead_letter) in &specs {
        let spec = region.dir.path().join(format!("{name}.yaml"));
        std::fs::write(&spec, poisoned_spec(name, dead_letter)).unwrap();
        region.admin(&["create", spec.to_str().unwrap()]).unwrap();
    }
    for (name, _) in &specs {
        region.wait_for("the pipeline finished", Duration::from_secs(90), || {
            (states(&region, name)? == ["finished", "finished"]).then_some(())
        });
    }

    // The file holds them all; the list and each `show` agree with it, to the bytes.
    let lines = common::whole_lines(&file);
    assert!(lines.len() > 50, "5 % of 4,000 inputs: {}", lines.len());
    let (matching, from_file) = listed(&region, "to-file", &[]);
    assert_eq!(matching as usize, lines.len());
    for line in &lines {
        let at = (
            line["source"]["partition"].as_u64().unwrap(),
            line["source"]["offset"].as_u64().unwrap(),
        );
        let (reason, stage) = &from_file[&at];
        assert_eq!(reason, line["reason"].as_str().unwrap());
        assert_eq!(stage, line["stage"].as_str().unwrap());
    }
    // The same inputs (one generator seed) reach the Kafka topic as the same dead letters,
    // with the same original bytes.
    let (_, from_kafka) = listed(&region, "to-kafka", &[]);
    assert_eq!(from_kafka, from_file);
    for line in lines
        .iter()
        .filter(|l| l["payload_encoding"] == "utf8")
        .take(3)
    {
        let at = (
            line["source"]["partition"].as_u64().unwrap(),
            line["source"]["offset"].as_u64().unwrap(),
        );
        let original = line["payload"].as_str().unwrap();
        assert_eq!(shown(&region, "to-file", at), original, "{at:?}");
        // Generated again for the other pipeline: the same input but for its event time.
        let without_time = |payload: &str| {
            let cut = payload.find("\"event_time\"").unwrap_or(payload.len());
            payload[..cut].to_string()
        };
        assert_eq!(
            without_time(&shown(&region, "to-kafka", at)),
            without_time(original),
            "{at:?}"
        );
    }

    // Filters: by reason, by stage, by time.
    let reason = from_file.values().next().unwrap().0.clone();
    let (matching, only) = listed(&region, "to-file", &["--reason", &reason]);
    let expected = from_file.values().filter(|l| l.0 == reason).count();
    assert_eq!((matching as usize, only.len()), (expected, expected));
    assert!(only.values().all(|l| l.0 == reason));
    let (_, decode) = listed(&region, "to-kafka", &["--stage", "decode"]);
    assert!(!decode.is_empty() && decode.values().all(|l| l.1 == "decode"));
    let (later, _) = listed(&region, "to-file", &["--since", "2999-01-01T00:00:00.000Z"]);
    assert_eq!(later, 0);

    // One that is not there is an error naming it.
    let error = region
        .admin(&[
            "dead-letters",
            "show",
            "to-file",
            "--partition",
            "0",
            "--offset",
            "999999",
        ])
        .unwrap_err();
    assert!(error.contains("offset"), "{error}");
}
