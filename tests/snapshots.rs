//! Snapshots of a region of separate processes: the leader writes them into a shared
//! store, a new leader goes on with new numbers, retention holds, and a damaged one is
//! reported and never the one restored.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::mirador;
use mirador_cluster_tests::cluster::Region;
use mirador_cluster_tests::spec::SpecYaml;
use serde_json::Value;

/// (sequence, whole, written_by) of every listed snapshot, newest first.
fn listed(region: &Region) -> Option<Vec<(u64, bool, u64)>> {
    let list = region.admin(&["snapshots", "list"]).ok()?;
    list["snapshots"]
        .as_array()?
        .iter()
        .map(|s| {
            Some((
                s["sequence"].as_u64()?,
                s["valid"].as_bool()?,
                s["written_by"].as_u64()?,
            ))
        })
        .collect()
}

#[test]
fn the_leader_snapshots_the_region_and_a_damaged_snapshot_is_never_restored() {
    let binary = mirador();
    let store = tempfile::tempdir().unwrap();
    let config = format!(
        "region: east\nsnapshot:\n  interval_ms: 300\n  keep: 4\n  store: {}\n",
        store.path().display()
    );
    let mut region = Region::start_configured(std::path::Path::new(&binary), 3, &config);
    region.wait_for("a leader", Duration::from_secs(20), || region.leader());
    region.add_executor("e1", 4);
    let out = region.dir.path().to_path_buf();
    let spec = out.join("gen.yaml");
    std::fs::write(
        &spec,
        SpecYaml {
            name: "gen",
            source: "  generator:\n    partitions: 2\n    customers: 1000\n    rate_per_sec: 1000",
            sink: &format!("  file:\n    path: {}/scored.jsonl", out.display()),
            dead_letter: "  \"null\": {}",
            rest: "checkpoint:\n  interval_ms: 100\n",
            ..SpecYaml::default()
        }
        .yaml(),
    )
    .unwrap();
    region.admin(&["create", spec.to_str().unwrap()]).unwrap();

    // Snapshots of the running pipeline, with its checkpoints in them.
    let shown: Value = region.wait_for(
        "a snapshot holding the pipeline's checkpoints",
        Duration::from_secs(30),
        || {
            let shown = region.admin(&["snapshots", "show"]).ok()?;
            let p = &shown["pipelines"][0];
            (p["name"] == "gen" && p["checkpoints"] == 2).then_some(shown)
        },
    );
    assert_eq!(shown["snapshot"]["region"], "east");
    assert_eq!(shown["snapshot"]["partitions"], 2);
    assert_eq!(shown["executors"], 1);

    // Retention: never more than `keep` whole ones, while many more were written.
    let before_kill = region.wait_for("six snapshots written", Duration::from_secs(30), || {
        let list = listed(&region)?;
        (list.first()?.0 >= 6).then_some(list)
    });
    let whole = before_kill.iter().filter(|(_, whole, _)| *whole).count();
    assert!((1..=4).contains(&whole), "{before_kill:?}");

    // A new leader goes on with new numbers, never reusing one.
    let old_leader = region.leader().unwrap();
    let newest_before = before_kill[0].0;
    region.coordinator(old_leader).kill();
    let after = region.wait_for(
        "a snapshot by the new leader",
        Duration::from_secs(30),
        || {
            let list = listed(&region)?;
            list.iter()
                .any(|(s, whole, by)| *whole && *by != old_leader && *s > newest_before)
                .then_some(list)
        },
    );
    let sequences: Vec<u64> = after.iter().map(|(s, _, _)| *s).collect();
    let unique: BTreeSet<u64> = sequences.iter().copied().collect();
    assert_eq!(unique.len(), sequences.len(), "{after:?}");

    // A snapshot damaged in the store (a flipped bit): reported by `list`, refused by
    // `show`, and the newest whole one is another.
    let created = region.admin(&["snapshots", "create"]).unwrap();
    let damaged = created["sequence"].as_u64().unwrap();
    let writer = created["written_by"].as_u64().unwrap();
    let body = store
        .path()
        .join("east")
        .join(format!("{damaged:020}.{writer}.body"));
    let mut bytes = std::fs::read(&body).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x04;
    std::fs::write(&body, bytes).unwrap();
    let list = region.admin(&["snapshots", "list"]).unwrap();
    let entry = list["snapshots"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["sequence"] == damaged)
        .cloned()
        .unwrap_or_else(|| panic!("snapshot {damaged} is listed: {list}"));
    assert_eq!(entry["valid"], false, "{entry}");
    assert!(
        entry["problem"].as_str().unwrap().contains("SHA-256"),
        "{entry}"
    );
    let error = region
        .admin(&["snapshots", "show", &damaged.to_string()])
        .unwrap_err();
    assert!(error.contains("cannot be restored"), "{error}");
    let newest = region.admin(&["snapshots", "show"]).unwrap();
    assert_ne!(newest["snapshot"]["sequence"], damaged);
    let error = region
        .admin(&["snapshots", "show", "99999999"])
        .unwrap_err();
    assert!(error.contains("sequence: no snapshot"), "{error}");
}

/// (partition, offset) -> times written, over the whole lines of a sink file.
fn offsets(sink: &std::path::Path) -> std::collections::HashMap<(u64, u64), usize> {
    let mut counts = std::collections::HashMap::new();
    for value in common::whole_lines(sink) {
        let key = (
            value["source"]["partition"].as_u64().unwrap(),
            value["source"]["offset"].as_u64().unwrap(),
        );
        *counts.entry(key).or_default() += 1;
    }
    counts
}

/// The checkpoint of each partition, from `describe`.
fn checkpoints(region: &Region, name: &str) -> Option<Vec<u64>> {
    let described = region.admin(&["describe", name]).ok()?;
    described["assignments"]
        .as_array()?
        .iter()
        .map(|a| a["checkpoint"].as_u64())
        .collect()
}

#[test]
fn a_snapshot_restored_into_an_empty_region_resumes_at_its_checkpoints() {
    let binary = mirador();
    let binary = std::path::Path::new(&binary);
    let store = tempfile::tempdir().unwrap();
    let config = |name: &str| {
        format!(
            "region: {name}\nsnapshot:\n  interval_ms: 200\n  store: {}\n",
            store.path().display()
        )
    };
    let mut east = Region::start_configured(binary, 1, &config("east"));
    east.wait_for("a leader in east", Duration::from_secs(20), || {
        east.leader()
    });
    east.add_executor("east-1", 4);
    let out = tempfile::tempdir().unwrap();
    let sink = out.path().join("scored.jsonl");
    let spec = out.path().join("gen.yaml");
    std::fs::write(
        &spec,
        SpecYaml {
            name: "gen",
            source: "  generator:\n    partitions: 2\n    customers: 1000\n    rate_per_sec: 2000",
            sink: &format!("  file:\n    path: {}", sink.display()),
            dead_letter: "  \"null\": {}",
            rest: "checkpoint:\n  interval_ms: 100\n",
            ..SpecYaml::default()
        }
        .yaml(),
    )
    .unwrap();
    east.admin(&["create", spec.to_str().unwrap()]).unwrap();
    east.wait_for("records in the sink", Duration::from_secs(30), || {
        (offsets(&sink).len() > 2000).then_some(())
    });

    // East stops at checkpoints (a pause), and its newest snapshot holds them.
    east.admin(&["pause", "gen"]).unwrap();
    let paused = east.wait_for("both partitions released", Duration::from_secs(20), || {
        let described = east.admin(&["describe", "gen"]).ok()?;
        let all_released = described["assignments"]
            .as_array()?
            .iter()
            .all(|a| a["owner"].as_str().is_some_and(str::is_empty));
        all_released.then(|| checkpoints(&east, "gen"))?
    });
    let snapshot = east.admin(&["snapshots", "create"]).unwrap();
    let written_by_east = offsets(&sink);
    east.executor("east-1").kill();
    east.coordinator(1).kill();

    // An empty region refuses a bad request, then restores, resumes and goes on.
    let mut west = Region::start_configured(binary, 1, &config("west"));
    west.wait_for("a leader in west", Duration::from_secs(20), || {
        west.leader()
    });
    let store_dir = store.path().display().to_string();
    let error = west
        .admin(&["restore", "--snapshot", &format!("{store_dir}/north")])
        .unwrap_err();
    assert!(error.contains("region:"), "{error}");
    let restored = west
        .admin(&["restore", "--snapshot", &format!("{store_dir}/east")])
        .unwrap();
    assert_eq!(restored["snapshot"]["sequence"], snapshot["sequence"]);
    assert_eq!(restored["checkpoints"], 2);
    assert_eq!(checkpoints(&west, "gen").unwrap(), paused);
    let error = west
        .admin(&["restore", "--snapshot", &format!("{store_dir}/east")])
        .unwrap_err();
    assert!(
        error.contains("snapshot:"),
        "a second restore is refused: {error}"
    );

    west.add_executor("west-1", 4);
    west.admin(&["resume", "gen"]).unwrap();
    west.wait_for(
        "west writing past east's records",
        Duration::from_secs(30),
        || (offsets(&sink).len() > written_by_east.len() + 2000).then_some(()),
    );
    let counts = offsets(&sink);
    let twice: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        twice.is_empty(),
        "nothing written twice: {:?}",
        &twice[..twice.len().min(5)]
    );
    for partition in 0..2u64 {
        let written: Vec<u64> = counts
            .keys()
            .filter(|(p, _)| *p == partition)
            .map(|(_, o)| *o)
            .collect();
        let last = *written.iter().max().unwrap();
        assert_eq!(
            written.len() as u64,
            last + 1,
            "partition {partition}: every offset up to {last} written, none lost"
        );
        assert!(
            last + 1 > paused[partition as usize],
            "partition {partition} went on past its checkpoint in west"
        );
    }
}

#[test]
fn each_snapshot_is_copied_to_the_other_region_which_catalogues_its_newest() {
    let binary = mirador();
    let binary = std::path::Path::new(&binary);
    let (east_store, west_store) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let config = |name: &str, own: &tempfile::TempDir, peer: &str, other: &tempfile::TempDir| {
        format!(
            "region: {name}\nsnapshot:\n  interval_ms: 200\n  store: {}\npeer:\n  region: {peer}\n  store: {}\n",
            own.path().display(),
            other.path().display()
        )
    };
    let east =
        Region::start_configured(binary, 1, &config("east", &east_store, "west", &west_store));
    let west =
        Region::start_configured(binary, 1, &config("west", &west_store, "east", &east_store));
    east.wait_for("a leader in east", Duration::from_secs(20), || {
        east.leader()
    });
    west.wait_for("a leader in west", Duration::from_secs(20), || {
        west.leader()
    });
    let spec = east.dir.path().join("gen.yaml");
    std::fs::write(
        &spec,
        SpecYaml {
            name: "gen",
            source: "  generator:\n    partitions: 3\n    customers: 1000",
            sink: "  \"null\": {}",
            dead_letter: "  \"null\": {}",
            ..SpecYaml::default()
        }
        .yaml(),
    )
    .unwrap();
    east.admin(&["create", spec.to_str().unwrap()]).unwrap();

    for _ in 0..2 {
        let created = east.admin(&["snapshots", "create"]).unwrap();
        let sequence = created["sequence"].as_u64().unwrap();
        // East copied it into west's store, and says so.
        let regions = east.wait_for(
            "the copy of the new snapshot",
            Duration::from_secs(10),
            || {
                let r = east.admin(&["regions"]).ok()?;
                (r["copied_sequence"].as_u64()? >= sequence).then_some(r)
            },
        );
        assert_eq!(regions["region"], "east");
        assert_eq!(regions["peer_region"], "west");
        assert_eq!(regions["copy_error"], "", "{regions}");
        // West found it whole in its own store and recorded it in its Raft state.
        let seen = west.wait_for("west's catalogue of it", Duration::from_secs(10), || {
            let r = west.admin(&["regions"]).ok()?;
            let peer = r["peer_snapshot"].clone();
            (peer["sequence"].as_u64()? >= sequence).then_some(peer)
        });
        assert_eq!(seen["region"], "east");
        assert_eq!(seen["pipelines"], 1);
        assert_eq!(seen["partitions"], 3);
        assert!(seen["age_ms"].as_u64().unwrap() < 10_000, "{seen}");
        if seen["sequence"] == created["sequence"] {
            assert_eq!(
                seen["sha256"], created["sha256"],
                "the copy is the same snapshot"
            );
        }
    }
    // What west catalogued, it can restore: the copy reads whole from west's own store.
    let shown = west.admin(&["regions"]).unwrap();
    let sequence = shown["peer_snapshot"]["sequence"].as_u64().unwrap();
    let body = std::fs::read_dir(west_store.path().join("east"))
        .unwrap()
        .filter_map(Result::ok)
        .any(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with(&format!("{sequence:020}."))
        });
    assert!(body, "the copy lies in west's store under east/");
}
