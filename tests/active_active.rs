//! An active-active pipeline over Pub/Sub: two regions (processes on loopback, each
//! snapshotting and copying into the other's store) run it at once, each on its own
//! subscription of one topic, into one Bigtable table. The table both wrote equals the
//! table of a one-process golden run of the same input on a third subscription, and each
//! region's records name it. Needs the Pub/Sub and Bigtable emulators.

mod common;

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{mirador, whole_lines, MIRADOR};
use mirador_cluster_tests::cluster::Region;
use mirador_cluster_tests::services::{BigtableEmulator, PubsubEmulator};
use mirador_cluster_tests::spec::SpecYaml;
use mirador_executor::connectors::bigtable::{create_table, read_table, BigtableSpec, TableCells};
use mirador_executor::connectors::pubsub::{create_subscription, create_topic};
use serde_json::Value;

const EVENTS: usize = 3000;

async fn dump(spec: &BigtableSpec) -> TableCells {
    read_table(spec).await.unwrap()
}

fn spec(
    dir: &Path,
    name: &str,
    pubsub: &str,
    subscription: &str,
    bigtable: &BigtableSpec,
) -> PathBuf {
    let path = dir.join(format!("{name}-{subscription}.yaml"));
    let source = format!(
        "  pubsub:\n    project: test-project\n    subscription: {subscription}\n    lanes: 1\n    \
         endpoint: \"{pubsub}\"\n    stop_after_idle_ms: 4000"
    );
    let sink = format!(
        "  file:\n    path: {}\n  bigtable:\n    project: test-project\n    instance: test-instance\n    \
         table: {}\n    family: f\n    endpoint: \"{}\"",
        dir.join(format!("{subscription}.jsonl")).display(),
        bigtable.table,
        bigtable.endpoint.as_deref().unwrap()
    );
    std::fs::write(
        &path,
        SpecYaml {
            name,
            source: &source,
            sink: &sink,
            dead_letter: &format!(
                "  file:\n    path: {}",
                dir.join(format!("{subscription}-dead.jsonl")).display()
            ),
            rest: &format!(
                "checkpoint:\n  dir: {}\n  interval_ms: 200\nfailover: active_active\n",
                dir.join(format!("checkpoints-{subscription}")).display()
            ),
            ..SpecYaml::default()
        }
        .yaml(),
    )
    .unwrap();
    path
}

/// The rows of customers whose events all have distinct times: of two events of a
/// customer in one millisecond the one written last wins, which two runs may order
/// differently.
fn unambiguous(events: &[Value]) -> BTreeSet<Vec<u8>> {
    let mut times: HashMap<&str, Vec<&str>> = HashMap::new();
    for e in events {
        times
            .entry(e["customer_id"].as_str().unwrap())
            .or_default()
            .push(e["event_time"].as_str().unwrap());
    }
    times
        .into_iter()
        .filter(|(_, t)| t.iter().collect::<BTreeSet<_>>().len() == t.len())
        .map(|(c, _)| c.as_bytes().to_vec())
        .collect()
}

fn region_config(name: &str, own: &Path, peer: &str, other: &Path) -> String {
    format!(
        "region: {name}\nsnapshot:\n  interval_ms: 500\n  store: {}\npeer:\n  region: {peer}\n  store: {}\n",
        own.display(),
        other.display()
    )
}

fn all_finished(region: &Region) -> Option<()> {
    let d = region.admin(&["describe", "scores"]).ok()?;
    d["assignments"]
        .as_array()?
        .iter()
        .all(|a| a["state"] == "finished")
        .then_some(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_regions_of_an_active_active_pipeline_write_the_table_a_golden_run_writes() {
    let pubsub = PubsubEmulator::start();
    let bigtable = BigtableEmulator::start();
    let endpoint = pubsub.endpoint();
    create_topic(&endpoint, "test-project", "events")
        .await
        .unwrap();
    for subscription in ["east-sub", "west-sub", "golden-sub"] {
        create_subscription(&endpoint, "test-project", subscription, "events", 10)
            .await
            .unwrap();
    }
    let (golden_table, shared_table) = (bigtable.table("golden"), bigtable.table("scores"));
    create_table(&golden_table).await.unwrap();
    create_table(&shared_table).await.unwrap();

    let generated = Command::new(MIRADOR)
        .args(["generate", "--events", &EVENTS.to_string()])
        .output()
        .unwrap();
    assert!(generated.status.success());
    let events: Vec<Value> = generated
        .stdout
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_slice(l).unwrap())
        .collect();
    let published = Command::new(MIRADOR)
        .args(["generate", "--events", &EVENTS.to_string()])
        .args(["--pubsub-topic", "events", "--pubsub-endpoint", &endpoint])
        .output()
        .unwrap();
    assert!(
        published.status.success(),
        "{}",
        String::from_utf8_lossy(&published.stderr)
    );

    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    // The golden run: one process, its own subscription, its own table.
    let golden = spec(dir, "scores", &endpoint, "golden-sub", &golden_table);
    assert!(common::run(&golden).wait().unwrap().success());

    // Two regions, one subscription each, one table.
    let binary = PathBuf::from(mirador());
    let stores = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut east = Region::start_configured(
        &binary,
        1,
        &region_config("east", stores.0.path(), "west", stores.1.path()),
    );
    let mut west = Region::start_configured(
        &binary,
        1,
        &region_config("west", stores.1.path(), "east", stores.0.path()),
    );
    for (region, name) in [(&mut east, "east"), (&mut west, "west")] {
        region.wait_for("a leader", Duration::from_secs(30), || region.leader());
        region.add_executor(&format!("{name}-1"), 4);
        let spec = spec(
            dir,
            "scores",
            &endpoint,
            &format!("{name}-sub"),
            &shared_table,
        );
        let created = region.admin(&["create", spec.to_str().unwrap()]).unwrap();
        assert_eq!(created["failover"], "active_active");
        assert_eq!(created["region"], name);
    }
    for region in [&east, &west] {
        region.wait_for("every partition finished", Duration::from_secs(120), || {
            all_finished(region)
        });
    }

    // Each region scored every event, and its records name it.
    for name in ["east", "west"] {
        let lines = whole_lines(&dir.join(format!("{name}-sub.jsonl")));
        let ids: BTreeSet<&str> = lines
            .iter()
            .map(|l| l["event"]["event_id"].as_str().unwrap())
            .collect();
        let dead = whole_lines(&dir.join(format!("{name}-sub-dead.jsonl"))).len();
        assert_eq!(ids.len() + dead, EVENTS, "region {name}");
        assert!(
            lines.iter().all(|l| l["region"] == name),
            "every record of {name} names it"
        );
    }
    // Neither region took the other's pipeline over, or stopped for it.
    for region in [&east, &west] {
        let described = region.admin(&["describe", "scores"]).unwrap();
        let regions = region.admin(&["regions"]).unwrap();
        assert_eq!(described["region"], regions["region"], "{described}");
    }

    let (golden, shared) = (dump(&golden_table).await, dump(&shared_table).await);
    assert!(!golden.is_empty());
    let keep = unambiguous(&events);
    let compared = |t: &TableCells| -> TableCells {
        t.iter()
            .filter(|(k, _)| keep.contains(*k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    };
    let (golden_rows, shared_rows) = (compared(&golden), compared(&shared));
    assert_eq!(
        golden.keys().collect::<Vec<_>>(),
        shared.keys().collect::<Vec<_>>(),
        "the same customers' rows"
    );
    assert!(golden_rows == shared_rows, "the same cells, row by row");
    println!(
        "active-active: {} rows, {} compared cell by cell, equal to the golden run's",
        golden.len(),
        golden_rows.len()
    );
}
