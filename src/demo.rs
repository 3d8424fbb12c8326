//! The bundled demo: the model and the feature table are compiled into the binary, so
//! `mirador dev` and `mirador bench` run from anywhere.

use std::path::Path;

use std::io::Write;

use mirador_executor::connectors::generator::EventFactory;
use mirador_executor::spec::{GeneratorSpec, PayloadFormat};
use mirador_executor::PipelineSpec;

const DEMO_MODEL: &[u8] = include_bytes!("../models/propensity-v1.pt");
const DEMO_FEATURES: &[u8] = include_bytes!("../examples/features.csv");

/// Customer features the demo model takes, in its order (models/README.md).
const FEATURES: &str =
    "[recency_days, frequency_30d, monetary_90d, engagement_score, email_opt_in, loyalty_tier, churn_risk]";

fn write_assets(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join("propensity-v1.pt"), DEMO_MODEL)?;
    std::fs::write(dir.join("features.csv"), DEMO_FEATURES)?;
    Ok(())
}

fn spec_yaml(name: &str, dir: &Path, generator: &str, sink: &str, dead_letter: &str) -> String {
    let dir = dir.display();
    format!(
        r#"
name: {name}
source:
  generator:
{generator}
enrichment:
  table:
    path: {dir}/assets/features.csv
  features: {FEATURES}
  defaults: {{recency_days: 365, frequency_30d: 0, monetary_90d: 0, engagement_score: 0.1, email_opt_in: 0, loyalty_tier: 0, churn_risk: 0.5}}
model:
  name: propensity
  version: "1"
  path: {dir}/assets/propensity-v1.pt
sink:
{sink}
dead_letter:
{dead_letter}
checkpoint:
  dir: {dir}/checkpoints
"#
    )
}

/// Writes the demo's assets under `out`, clears its earlier output, and returns its spec
/// (YAML).
pub fn prepare(
    out: &Path,
    events: Option<u64>,
    partitions: u32,
    poison_ratio: f64,
    rate: Option<f64>,
) -> anyhow::Result<String> {
    anyhow::ensure!(partitions >= 1, "--partitions: must be at least 1");
    if let Some(rate) = rate {
        anyhow::ensure!(
            rate > 0.0 && rate.is_finite(),
            "--rate: {rate} must be a positive number"
        );
    }
    write_assets(&out.join("assets"))?;
    // Every demo run starts afresh.
    for stale in [
        "scored.jsonl",
        "dead-letter.jsonl",
        "checkpoints",
        "coordinator",
    ] {
        let path = out.join(stale);
        let _ = std::fs::remove_file(&path);
        let _ = std::fs::remove_dir_all(&path);
    }
    let mut generator = format!("    partitions: {partitions}\n    poison_ratio: {poison_ratio}\n");
    if let Some(events) = events {
        anyhow::ensure!(
            events >= partitions as u64,
            "--events: {events} is fewer than the partitions"
        );
        generator.push_str(&format!("    events: {}\n", events / partitions as u64));
    }
    if let Some(rate) = rate {
        generator.push_str(&format!("    rate_per_sec: {}\n", rate / partitions as f64));
    }
    let out_dir = out.display();
    let yaml = spec_yaml(
        "demo",
        out,
        &generator,
        &format!("  file:\n    path: {out_dir}/scored.jsonl"),
        &format!("  file:\n    path: {out_dir}/dead-letter.jsonl"),
    );
    PipelineSpec::from_yaml(&yaml)?;
    Ok(yaml)
}

/// The benchmark's pipeline: generator, embedded features, demo model, null sinks.
pub fn bench_spec(scratch: &Path, partitions: u32) -> anyhow::Result<PipelineSpec> {
    write_assets(&scratch.join("assets"))?;
    let yaml = spec_yaml(
        "bench",
        scratch,
        &format!("    partitions: {partitions}\n    customers: 10000\n"),
        "  null: {}",
        "  null: {}",
    );
    Ok(PipelineSpec::from_yaml(&yaml)?)
}

/// The benchmark's pipeline as YAML: about `events` in all (a multiple of `partitions`),
/// null sinks.
pub fn bench_cluster_yaml(scratch: &Path, partitions: u32, events: u64) -> anyhow::Result<String> {
    write_assets(&scratch.join("assets"))?;
    Ok(spec_yaml(
        "bench-cluster",
        scratch,
        &format!(
            "    partitions: {partitions}\n    customers: 10000\n    events: {}\n",
            events / partitions as u64
        ),
        "  null: {}",
        "  null: {}",
    ))
}

/// `events` generator payloads, one JSON document each.
pub fn payloads(
    events: u64,
    poison_ratio: f64,
    customers: u64,
    seed: u64,
) -> anyhow::Result<impl Iterator<Item = Vec<u8>>> {
    anyhow::ensure!(
        (0.0..=1.0).contains(&poison_ratio),
        "--poison-ratio: {poison_ratio} must be between 0 and 1"
    );
    anyhow::ensure!(customers >= 1, "--customers: must be at least 1");
    let spec = GeneratorSpec {
        events: Some(events),
        partitions: 1,
        customers,
        zipf_exponent: 1.1,
        poison_ratio,
        seed,
        rate_per_sec: None,
    };
    let factory = EventFactory::new(&spec, 0, PayloadFormat::Json, 64 * 1024);
    let now_ms = chrono::Utc::now().timestamp_millis();
    Ok((0..events).map(move |seq| {
        let mut payload = Vec::with_capacity(512);
        factory.payload(seq, now_ms, &mut payload);
        payload
    }))
}

/// Writes `events` generator events, one JSON document per line, on stdout.
pub fn generate(events: u64, poison_ratio: f64, customers: u64, seed: u64) -> anyhow::Result<()> {
    let mut stdout = std::io::BufWriter::new(std::io::stdout().lock());
    for mut line in payloads(events, poison_ratio, customers, seed)? {
        // A payload with a newline inside would become two records of a JSONL file.
        line.retain(|b| *b != b'\n');
        line.push(b'\n');
        stdout.write_all(&line)?;
    }
    stdout.flush()?;
    Ok(())
}

/// Where `make services` runs the Kafka broker.
pub const SERVICES_BROKERS: &str = "127.0.0.1:9092";

/// The demo through the services of `make services`: Kafka in, features from Bigtable,
/// Kafka and Bigtable out, dead letters to Kafka. Reads the topic to its end.
pub fn services_spec(out: &Path) -> anyhow::Result<String> {
    write_assets(&out.join("assets"))?;
    // Each demo run starts from the beginning of the topic.
    let _ = std::fs::remove_dir_all(out.join("checkpoints"));
    let _ = std::fs::remove_dir_all(out.join("coordinator"));
    let dir = out.display();
    let yaml = format!(
        r#"
name: demo-services
source:
  kafka:
    brokers: "{SERVICES_BROKERS}"
    topic: events
    stop_at_end: true
enrichment:
  bigtable:
    project: test-project
    instance: test-instance
    table: features
    endpoint: "127.0.0.1:8086"
  features: {FEATURES}
model:
  name: propensity
  version: "1"
  path: {dir}/assets/propensity-v1.pt
sink:
  kafka:
    brokers: "{SERVICES_BROKERS}"
    topic: scored
  bigtable:
    project: test-project
    instance: test-instance
    table: scores
    endpoint: "127.0.0.1:8086"
dead_letter:
  kafka:
    brokers: "{SERVICES_BROKERS}"
    topic: dead-letter
checkpoint:
  dir: {dir}/checkpoints
"#
    );
    PipelineSpec::from_yaml(&yaml)?;
    Ok(yaml)
}
