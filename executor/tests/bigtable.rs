//! Bigtable enrichment and the Bigtable sink, against the Bigtable emulator.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::services::BigtableEmulator;
use mirador_cluster_tests::spec::SpecYaml;
use mirador_executor::connectors::bigtable::{
    create_table, load_features, read_table, BigtableLookup, BigtableSpec, TableCells,
};
use mirador_executor::enrich::FeatureLookup;
use mirador_executor::infer::InferencePool;
use mirador_executor::{PipelineResources, PipelineRun, PipelineSpec, RunOptions};
use serde_json::Value;

async fn features_table(emulator: &BigtableEmulator) -> BigtableSpec {
    let spec = emulator.table("features");
    create_table(&spec).await.unwrap();
    let rows = load_features(&spec, &common::demo_features())
        .await
        .unwrap();
    assert_eq!(rows, 10_000);
    spec
}

/// Every cell of a table: row -> (qualifier, timestamp) -> value.
async fn dump(spec: &BigtableSpec) -> TableCells {
    read_table(spec).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lookup_reads_the_loaded_feature_table() {
    let emulator = BigtableEmulator::start();
    let spec = features_table(&emulator).await;
    let lookup = BigtableLookup::connect(&spec, common::feature_names(), vec![-1.0; 7].into())
        .await
        .unwrap();
    let found = lookup
        .lookup(&["c000001", "nobody", "c009999"])
        .await
        .unwrap();
    // c000001 in examples/features.csv: 163,11,0,0.378,1,1,0.34
    assert_eq!(
        found[0].as_deref(),
        Some(&[163.0, 11.0, 0.0, 0.378, 1.0, 1.0, 0.34][..])
    );
    assert_eq!(found[1], None);
    assert!(found[2].is_some());
    // Features read the columns they are mapped to (two may read one); a feature whose
    // column the row lacks takes its default.
    let lookup = BigtableLookup::connect(
        &spec,
        vec![
            "churn_risk".into(),
            "lifetime_value".into(),
            "recency_days".into(),
            "recency_days".into(),
        ],
        vec![0.0, -1.0, 0.0, 0.0].into(),
    )
    .await
    .unwrap();
    let found = lookup.lookup(&["c000001"]).await.unwrap();
    assert_eq!(found[0].as_deref(), Some(&[0.34, -1.0, 163.0, 163.0][..]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lookup_against_a_stopped_emulator_fails_as_unavailable() {
    let mut emulator = BigtableEmulator::start();
    let spec = features_table(&emulator).await;
    let lookup = BigtableLookup::connect(&spec, common::feature_names(), vec![0.0; 7].into())
        .await
        .unwrap();
    emulator.stop();
    let result = tokio::time::timeout(Duration::from_secs(10), lookup.lookup(&["c000001"])).await;
    assert!(
        matches!(result, Ok(Err(_))),
        "an error, in time: {result:?}"
    );
}

fn spec_yaml(name: &str, dir: &Path, features: &BigtableSpec, sink: &str, source: &str) -> String {
    let lookup = format!(
        "  bigtable:\n    project: {}\n    instance: {}\n    table: {}\n    endpoint: \"{}\"\n    \
         timeout_ms: 500",
        features.project,
        features.instance,
        features.table,
        features.endpoint.clone().unwrap(),
    );
    let dir = dir.display();
    SpecYaml {
        name,
        source,
        lookup: &lookup,
        enrichment: "  cache:\n    ttl_secs: 1\n  retries: 1\n  timeout_ms: 500",
        model: "  max_wait_ms: 2",
        sink,
        dead_letter: &format!("  file:\n    path: {dir}/dead.jsonl"),
        rest: &format!(
            "batching:\n  max_records: 128\ncheckpoint:\n  dir: {dir}/checkpoints\n  interval_ms: 50\n"
        ),
    }
    .yaml()
}

fn written(dir: &Path) -> HashMap<u64, usize> {
    let mut seen = HashMap::new();
    for file in ["scored.jsonl", "dead.jsonl"] {
        for line in std::fs::read_to_string(dir.join(file))
            .unwrap_or_default()
            .lines()
        {
            let value: Value = serde_json::from_str(line).unwrap();
            *seen
                .entry(value["source"]["offset"].as_u64().unwrap())
                .or_default() += 1;
        }
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replaying_the_same_input_into_the_bigtable_sink_leaves_the_table_identical() {
    let emulator = BigtableEmulator::start();
    let features = features_table(&emulator).await;
    let scores = emulator.table("scores");
    create_table(&scores).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let sink = format!(
        "  bigtable:\n    project: {}\n    instance: {}\n    table: scores\n    endpoint: \"{}\"\n  file:\n    path: {}/scored.jsonl",
        scores.project,
        scores.instance,
        emulator.endpoint(),
        dir.path().display()
    );
    // The same input twice: a file of generated events, some of them poison.
    let input = dir.path().join("events.jsonl");
    let generator = mirador_executor::spec::GeneratorSpec {
        events: None,
        partitions: 1,
        customers: 12_000,
        zipf_exponent: 1.1,
        poison_ratio: 0.02,
        seed: 4,
        rate_per_sec: None,
    };
    let factory = mirador_executor::connectors::generator::EventFactory::new(
        &generator,
        0,
        mirador_executor::spec::PayloadFormat::Json,
        65536,
    );
    let now = chrono::Utc::now().timestamp_millis();
    let mut lines = Vec::new();
    let mut payload = Vec::new();
    for seq in 0..3000 {
        factory.payload(seq, now, &mut payload);
        payload.retain(|b| *b != b'\n');
        lines.extend_from_slice(&payload);
        lines.push(b'\n');
    }
    std::fs::write(&input, lines).unwrap();
    let source = format!("  file:\n    path: {}", input.display());
    let pool = InferencePool::default();
    let mut dumps = Vec::new();
    for run in 0..2 {
        // A fresh checkpoint folder each time: the second run replays everything.
        let run_dir = dir.path().join(format!("run{run}"));
        let yaml = spec_yaml("replay", &run_dir, &features, &sink, &source);
        let spec = PipelineSpec::from_yaml(&yaml).unwrap();
        let resources = Arc::new(PipelineResources::build(spec, &pool).await.unwrap());
        let options = RunOptions::default();
        let report = PipelineRun::start(resources, &options)
            .await
            .unwrap()
            .wait(&options)
            .await;
        assert!(report.succeeded(), "{:?}", report.failures);
        assert_eq!(report.events_in, 3000);
        dumps.push(dump(&scores).await);
    }
    let scored: Vec<Value> = std::fs::read_to_string(dir.path().join("scored.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let customers: std::collections::BTreeSet<&str> = scored
        .iter()
        .map(|l| l["event"]["customer_id"].as_str().unwrap())
        .collect();
    assert_eq!(dumps[0].len(), customers.len(), "a row per scored customer");
    let changed = dumps[0]
        .iter()
        .filter(|(row, cells)| dumps[1].get(*row) != Some(*cells))
        .count();
    assert_eq!(dumps[0].len(), dumps[1].len());
    assert_eq!(changed, 0, "the replay wrote the very same cells");
    // The row of one customer holds the scores of its events at their event times.
    let line = &scored[0];
    let row = &dumps[0][line["event"]["customer_id"].as_str().unwrap().as_bytes()];
    let event_time =
        chrono::DateTime::parse_from_rfc3339(line["event"]["event_time"].as_str().unwrap())
            .unwrap()
            .timestamp_millis();
    let score = &row[&(b"score".to_vec(), event_time * 1000)];
    let expected = line["scores"][0].as_f64().unwrap() as f32;
    assert_eq!(
        std::str::from_utf8(score).unwrap().parse::<f32>().unwrap(),
        expected
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bigtable_down_for_10_s_slows_the_pipeline_and_loses_nothing() {
    let mut emulator = BigtableEmulator::start();
    let features = features_table(&emulator).await;
    let dir = tempfile::tempdir().unwrap();
    let sink = format!("  file:\n    path: {}/scored.jsonl", dir.path().display());
    // 20 s of events at 1000/s; the store goes away for 10 s in the middle.
    let source = "  generator:\n    events: 20000\n    rate_per_sec: 1000\n    poison_ratio: 0.01";
    let spec = PipelineSpec::from_yaml(&spec_yaml("outage", dir.path(), &features, &sink, source))
        .unwrap();
    let capacity = spec.batching.max_records * spec.batching.link_capacity * 6;
    let pool = InferencePool::default();
    let resources = Arc::new(PipelineResources::build(spec, &pool).await.unwrap());
    let options = RunOptions::default();
    let run = PipelineRun::start(resources, &options).await.unwrap();

    tokio::time::sleep(Duration::from_secs(4)).await;
    emulator.stop();
    let mut most_in_flight = 0;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        most_in_flight = most_in_flight.max(run.snapshots()[0].in_flight);
    }
    let stalled = run.snapshots()[0].stages[2].retries;
    emulator.restart();
    features_table(&emulator).await;
    let report = run.wait(&options).await;

    assert!(report.succeeded(), "{:?}", report.failures);
    assert!(stalled > 0, "enrichment waited for the store");
    assert!(
        most_in_flight <= capacity,
        "memory stays bounded during the outage: {most_in_flight} records in flight"
    );
    let seen = written(dir.path());
    assert_eq!(
        seen.len(),
        20_000,
        "every record reached the sink or the dead letter"
    );
    assert!(seen.values().all(|n| *n == 1), "and only once");
    assert_eq!(report.stage_restarts, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lookup_that_fails_for_good_applies_the_miss_policy_when_asked_to() {
    let mut emulator = BigtableEmulator::start();
    let features = features_table(&emulator).await;
    emulator.stop();
    let dir = tempfile::tempdir().unwrap();
    let sink = format!("  file:\n    path: {}/scored.jsonl", dir.path().display());
    let source = "  generator:\n    events: 600\n    poison_ratio: 0.05\n    seed: 3";
    let yaml = spec_yaml("gone", dir.path(), &features, &sink, source).replace(
        "  retries: 1\n",
        "  retries: 1\n  on_lookup_failure: miss_policy\n  on_miss: dead_letter\n",
    );
    let spec = PipelineSpec::from_yaml(&yaml).unwrap();
    let pool = InferencePool::default();
    let resources = Arc::new(PipelineResources::build(spec, &pool).await.unwrap());
    let options = RunOptions::default();
    let report = tokio::time::timeout(Duration::from_secs(60), async {
        PipelineRun::start(resources, &options)
            .await
            .unwrap()
            .wait(&options)
            .await
    })
    .await
    .expect("the pipeline does not wait for a store it was told not to wait for");
    assert!(report.succeeded(), "{:?}", report.failures);

    let scored = std::fs::read_to_string(dir.path().join("scored.jsonl")).unwrap_or_default();
    assert_eq!(
        scored.lines().count(),
        0,
        "nothing is scored without features"
    );
    let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
    for line in std::fs::read_to_string(dir.path().join("dead.jsonl"))
        .unwrap()
        .lines()
    {
        let line: Value = serde_json::from_str(line).unwrap();
        if line["reason"] == "lookup_failed" {
            assert_eq!(line["stage"], "enrich");
            assert!(
                line["message"]
                    .as_str()
                    .unwrap()
                    .contains("after 2 attempts"),
                "{line}"
            );
        }
        *reasons
            .entry(line["reason"].as_str().unwrap().to_string())
            .or_default() += 1;
    }
    assert_eq!(
        reasons.values().sum::<usize>(),
        600,
        "every record is dead-lettered"
    );
    let failed = reasons["lookup_failed"];
    assert!(
        (500..600).contains(&failed),
        "the valid records as lookup_failed, the poison with its own reasons: {reasons:?}"
    );
}
