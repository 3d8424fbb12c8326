//! Whole partition pipelines on one node: every input record ends in the sink or the dead
//! letter, exactly once when nothing crashes.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use futures::future::BoxFuture;
use mirador_executor::connectors::generator::EventFactory;
use mirador_executor::enrich::{CsvFeatureTable, FeatureLookup, Features, LookupError};
use mirador_executor::infer::InferencePool;
use mirador_executor::spec::{PayloadFormat, SourceSpec};
use mirador_executor::{run_pipeline, PipelineResources, PipelineSpec, RunOptions, RunReport};
use serde_json::Value;

fn read_lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// A record's (partition, offset) in its source.
type Key = (u64, u64);

/// (partition, offset) -> how many times it was written, and the dead letters' reasons.
fn outcomes(dir: &Path) -> (HashMap<Key, usize>, BTreeMap<Key, String>) {
    let mut seen = HashMap::new();
    let mut reasons = BTreeMap::new();
    for line in read_lines(&dir.join("scored.jsonl")) {
        let key = (
            line["source"]["partition"].as_u64().unwrap(),
            line["source"]["offset"].as_u64().unwrap(),
        );
        *seen.entry(key).or_default() += 1;
    }
    for line in read_lines(&dir.join("dead.jsonl")) {
        let key = (
            line["source"]["partition"].as_u64().unwrap(),
            line["source"]["offset"].as_u64().unwrap(),
        );
        *seen.entry(key).or_default() += 1;
        reasons.insert(key, line["reason"].as_str().unwrap().to_string());
    }
    (seen, reasons)
}

fn file_sinks(dir: &Path) -> (String, String) {
    (
        format!("  file:\n    path: {}", dir.join("scored.jsonl").display()),
        format!("  file:\n    path: {}", dir.join("dead.jsonl").display()),
    )
}

async fn run(spec: PipelineSpec, lookup: Option<Arc<dyn FeatureLookup>>) -> RunReport {
    let pool = InferencePool::default();
    let resources = match lookup {
        Some(lookup) => PipelineResources::with_lookup(spec, lookup, &pool).await,
        None => PipelineResources::build(spec, &pool).await,
    }
    .unwrap();
    let report = run_pipeline(Arc::new(resources), &RunOptions::default())
        .await
        .unwrap();
    assert!(report.succeeded(), "{:?}", report.failures);
    report
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generated_poison_reaches_the_dead_letter_exactly_and_the_rest_is_scored() {
    let dir = tempfile::tempdir().unwrap();
    let (sink, dead) = file_sinks(dir.path());
    let source =
        "  generator:\n    events: 6000\n    partitions: 2\n    poison_ratio: 0.05\n    seed: 9";
    let spec = PipelineSpec::from_yaml(&common::spec_yaml(
        "gen",
        source,
        &sink,
        &dead,
        &dir.path().join("cp"),
    ))
    .unwrap();
    let SourceSpec::Generator(generator) = spec.source.clone() else {
        unreachable!()
    };
    let report = run(spec.clone(), None).await;

    let (seen, reasons) = outcomes(dir.path());
    assert_eq!(seen.len(), 12_000, "every record is accounted for");
    assert!(seen.values().all(|n| *n == 1), "and exactly once");
    let mut poison = BTreeMap::new();
    for partition in 0..2u32 {
        let factory = EventFactory::new(
            &generator,
            partition,
            PayloadFormat::Json,
            spec.decode.max_payload_bytes,
        );
        for seq in 0..6000 {
            if let Some(kind) = factory.poison(seq) {
                poison.insert((partition as u64, seq), kind);
            }
        }
    }
    assert_eq!(
        reasons.keys().collect::<Vec<_>>(),
        poison.keys().collect::<Vec<_>>(),
        "the dead letter holds the poison set, no more, no less"
    );
    assert!(poison.len() > 400, "about 5% poison: {}", poison.len());
    assert_eq!(report.events_in, 12_000);
    assert_eq!(report.scored + report.dead_lettered_total(), 12_000);
    assert_eq!(report.stage_restarts, 0, "poison never restarts a stage");
    let distinct: std::collections::BTreeSet<&String> = reasons.values().collect();
    assert_eq!(
        distinct.len(),
        9,
        "nine kinds of poison, nine reasons: {distinct:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_is_read_to_its_end_and_scored() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    let now = chrono::Utc::now().to_rfc3339();
    let mut text = String::new();
    for i in 0..500 {
        text.push_str(&format!(
            r#"{{"event_id":"e{i}","customer_id":"c{:06}","event_type":"purchase","value":{i},"event_time":"{now}"}}"#,
            i * 37 % 12000
        ));
        text.push('\n');
        if i % 50 == 0 {
            text.push_str("{\"broken\n");
        }
    }
    std::fs::write(&input, text).unwrap();
    let (sink, dead) = file_sinks(dir.path());
    let source = format!("  file:\n    path: {}", input.display());
    let spec = PipelineSpec::from_yaml(&common::spec_yaml(
        "file",
        &source,
        &sink,
        &dead,
        &dir.path().join("cp"),
    ))
    .unwrap();
    let report = run(spec, None).await;
    assert_eq!(report.events_in, 510);
    assert_eq!(report.scored, 500);
    assert_eq!(report.dead_lettered_total(), 10);
    let scored = read_lines(&dir.path().join("scored.jsonl"));
    let ids: std::collections::HashSet<&str> = scored
        .iter()
        .map(|l| l["event"]["event_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 500);
    let unknown = scored
        .iter()
        .filter(|l| l["feature_source"] == "default")
        .count();
    assert!(
        unknown > 0,
        "customers beyond the table are scored with the defaults"
    );
    assert!(scored.iter().all(|l| l["scores"][0]
        .as_f64()
        .is_some_and(|s| (0.0..=1.0).contains(&s))));
    // The checkpoint stands at the end of the file.
    let checkpoint: Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("cp/file.p0.json")).unwrap())
            .unwrap();
    assert_eq!(
        checkpoint["offset"].as_u64(),
        Some(std::fs::metadata(&input).unwrap().len())
    );
}

/// The feature table behind a service that fails its first calls.
struct FlakyLookup {
    table: CsvFeatureTable,
    failures_left: AtomicU32,
}

impl FeatureLookup for FlakyLookup {
    fn lookup<'a>(
        &'a self,
        keys: &'a [&'a str],
    ) -> BoxFuture<'a, Result<Vec<Option<Features>>, LookupError>> {
        Box::pin(async move {
            if self
                .failures_left
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok()
            {
                return Err(LookupError::Unavailable("feature store is down".into()));
            }
            self.table.lookup(keys).await
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lookup_service_that_is_down_slows_the_pipeline_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (sink, dead) = file_sinks(dir.path());
    let source = "  generator:\n    events: 3000\n    poison_ratio: 0.02";
    let yaml = common::spec_yaml("flaky", source, &sink, &dead, &dir.path().join("cp")).replace(
        "  features: [",
        "  retries: 1\n  timeout_ms: 200\n  features: [",
    );
    let spec = PipelineSpec::from_yaml(&yaml).unwrap();
    let lookup = Arc::new(FlakyLookup {
        table: CsvFeatureTable::load(&common::demo_features(), &common::feature_names()).unwrap(),
        // Two attempts per try of the stage: it is unavailable twice, then succeeds.
        failures_left: AtomicU32::new(4),
    });
    let report = run(spec, Some(lookup)).await;
    assert_eq!(
        report.stage_restarts, 0,
        "an outside service is waited for, not restarted"
    );
    assert_eq!(report.stage_retries, 2, "{report:?}");
    let (seen, reasons) = outcomes(dir.path());
    assert_eq!(seen.len(), 3000);
    assert!(
        seen.values().all(|n| *n == 1),
        "the batch is tried again; nothing twice"
    );
    assert!(reasons
        .values()
        .all(|r| r != "stage_failed" && r != "lookup_failed"));
}
