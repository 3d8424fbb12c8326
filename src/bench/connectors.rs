//! `mirador bench-connectors`: Kafka, Bigtable and Pub/Sub figures against running
//! services (`make services`), each beside the limit the service itself sets here.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::Consumer;
use rdkafka::error::KafkaError;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde::Serialize;

use mirador_executor::connectors::bigtable::{BigtableLookup, BigtableSpec};
use mirador_executor::connectors::generator::EventFactory;
use mirador_executor::connectors::kafka::{produce, QuietConsumer, QuietContext};
use mirador_executor::connectors::pubsub::{create_subscription, create_topic, publish};
use mirador_executor::enrich::FeatureLookup;
use mirador_executor::infer::InferencePool;
use mirador_executor::run::{run_pipeline, RunOptions};
use mirador_executor::spec::{GeneratorSpec, PayloadFormat, PipelineSpec};
use mirador_executor::PipelineResources;

pub struct ConnectorBenchOptions {
    pub brokers: String,
    /// host:port of the Bigtable emulator, with the `features` table loaded.
    pub bigtable: String,
    /// http://host:port of the Pub/Sub emulator; none: no Pub/Sub figures.
    pub pubsub: Option<String>,
    pub events: u64,
    /// The model and feature names of the demo.
    pub model: std::path::PathBuf,
    pub features: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ConnectorBenchReport {
    pub events: u64,
    pub kafka_raw_consume_per_sec: f64,
    pub kafka_pipeline_per_sec: f64,
    pub kafka_pipeline_p99_ms: f64,
    pub cache_hit_ratio: f64,
    pub bigtable_rows_per_sec_1: f64,
    pub bigtable_rows_per_sec_100: f64,
    pub bigtable_rows_per_sec_1000: f64,
    pub pubsub: Vec<(u32, f64)>,
}

impl ConnectorBenchReport {
    pub fn render(&self) -> String {
        let mut text = format!("mirador bench-connectors: {} events\n", self.events);
        let mut row = |name: &str, value: String| text.push_str(&format!("  {name:<44}{value}\n"));
        row(
            "kafka raw consume (a consumer per partition)",
            format!("{:>10.0} msg/s", self.kafka_raw_consume_per_sec),
        );
        row(
            "kafka -> bigtable+cache -> model -> kafka",
            format!(
                "{:>10.0} events/s   p99 {:.1} ms   cache hits {:.0} %   {:.0} % of raw consume",
                self.kafka_pipeline_per_sec,
                self.kafka_pipeline_p99_ms,
                self.cache_hit_ratio * 100.0,
                self.kafka_pipeline_per_sec / self.kafka_raw_consume_per_sec * 100.0
            ),
        );
        row(
            "bigtable lookups, 1 key per call",
            format!("{:>10.0} rows/s", self.bigtable_rows_per_sec_1),
        );
        row(
            "bigtable lookups, 100 keys per call",
            format!("{:>10.0} rows/s", self.bigtable_rows_per_sec_100),
        );
        row(
            "bigtable lookups, 1000 keys per call",
            format!("{:>10.0} rows/s", self.bigtable_rows_per_sec_1000),
        );
        for (lanes, rate) in &self.pubsub {
            row(
                &format!("pubsub -> model -> null, {lanes} lane(s)"),
                format!("{rate:>10.0} events/s"),
            );
        }
        text
    }
}

fn generator(seed: u64) -> GeneratorSpec {
    GeneratorSpec {
        events: None,
        partitions: 1,
        customers: 12_000,
        zipf_exponent: 1.1,
        poison_ratio: 0.0,
        seed,
        rate_per_sec: None,
    }
}

fn payloads(events: u64, seed: u64) -> impl Iterator<Item = Vec<u8>> {
    let factory = EventFactory::new(&generator(seed), 0, PayloadFormat::Json, 65536);
    let now = chrono::Utc::now().timestamp_millis();
    (0..events).map(move |seq| {
        let mut payload = Vec::with_capacity(400);
        factory.payload(seq, now, &mut payload);
        payload
    })
}

async fn create_topics(brokers: &str, topics: &[(&str, i32)]) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()?;
    let new: Vec<NewTopic> = topics
        .iter()
        .map(|(name, partitions)| NewTopic::new(name, *partitions, TopicReplication::Fixed(1)))
        .collect();
    for result in admin.create_topics(&new, &AdminOptions::new()).await? {
        if let Err((name, code)) = result {
            anyhow::bail!("cannot create topic {name}: {code}");
        }
    }
    Ok(())
}

/// Reads the whole topic, a consumer per partition on its own thread, as fast as the
/// broker serves it: the same shape as the pipeline's sources, without the pipeline.
fn raw_consume(brokers: &str, topic: &str, partitions: i32, expected: u64) -> anyhow::Result<f64> {
    let started = Instant::now();
    let readers: Vec<_> = (0..partitions)
        .map(|partition| {
            let (brokers, topic) = (brokers.to_string(), topic.to_string());
            std::thread::spawn(move || -> anyhow::Result<u64> {
                let consumer: QuietConsumer = ClientConfig::new()
                    .set("bootstrap.servers", &brokers)
                    .set("group.id", "mirador-bench")
                    .set("enable.auto.commit", "false")
                    .set("enable.partition.eof", "true")
                    .create_with_context(QuietContext)?;
                let mut assignment = TopicPartitionList::new();
                assignment.add_partition_offset(&topic, partition, Offset::Beginning)?;
                consumer.assign(&assignment)?;
                let mut read = 0u64;
                while started.elapsed() < Duration::from_secs(300) {
                    match consumer.poll(Duration::from_millis(500)) {
                        Some(Ok(_)) => read += 1,
                        Some(Err(KafkaError::PartitionEOF(_))) => return Ok(read),
                        Some(Err(error)) => anyhow::bail!("consuming {topic}: {error}"),
                        None => {}
                    }
                }
                anyhow::bail!("consuming {topic} took too long")
            })
        })
        .collect();
    let mut read = 0;
    for reader in readers {
        read += reader
            .join()
            .map_err(|_| anyhow::anyhow!("a reader panicked"))??;
    }
    anyhow::ensure!(read == expected, "read {read} of {expected} messages");
    Ok(read as f64 / started.elapsed().as_secs_f64())
}

fn spec(
    name: &str,
    source: &str,
    sink: &str,
    options: &ConnectorBenchOptions,
    scratch: &std::path::Path,
) -> anyhow::Result<PipelineSpec> {
    let yaml = format!(
        r#"
name: {name}
source:
{source}
enrichment:
  bigtable:
    project: test-project
    instance: test-instance
    table: features
    endpoint: "{bigtable}"
    channels: 4
  features: [{features}]
model:
  name: propensity
  version: "1"
  path: {model}
sink:
{sink}
dead_letter:
  null: {{}}
checkpoint:
  dir: {scratch}/checkpoints
"#,
        bigtable = options.bigtable,
        features = options.features.join(", "),
        model = options.model.display(),
        scratch = scratch.display(),
    );
    Ok(PipelineSpec::from_yaml(&yaml)?)
}

async fn lookups_per_sec(
    lookup: &BigtableLookup,
    keys_per_call: usize,
    calls: usize,
) -> anyhow::Result<f64> {
    let keys: Vec<String> = (0..keys_per_call * calls)
        .map(|i| format!("c{:06}", (i * 7919) % 10_000))
        .collect();
    let started = Instant::now();
    for chunk in keys.chunks(keys_per_call) {
        let refs: Vec<&str> = chunk.iter().map(String::as_str).collect();
        lookup
            .lookup(&refs)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    Ok(keys.len() as f64 / started.elapsed().as_secs_f64())
}

pub async fn run_connector_bench(
    options: &ConnectorBenchOptions,
    scratch: &std::path::Path,
) -> anyhow::Result<ConnectorBenchReport> {
    let run = std::process::id();
    let (input, output) = (format!("bench-events-{run}"), format!("bench-scored-{run}"));
    create_topics(&options.brokers, &[(&input, 4), (&output, 4)]).await?;
    produce(&options.brokers, &input, payloads(options.events, 1)).await?;
    let (brokers, topic, events) = (options.brokers.clone(), input.clone(), options.events);
    let kafka_raw_consume_per_sec =
        tokio::task::spawn_blocking(move || raw_consume(&brokers, &topic, 4, events)).await??;

    let pool = InferencePool::default();
    let source = format!(
        "  kafka:\n    brokers: \"{}\"\n    topic: {input}\n    stop_at_end: true",
        options.brokers
    );
    let sink = format!(
        "  kafka:\n    brokers: \"{}\"\n    topic: {output}",
        options.brokers
    );
    let resources = Arc::new(
        PipelineResources::build(
            spec("bench-kafka", &source, &sink, options, scratch)?,
            &pool,
        )
        .await?,
    );
    let report = run_pipeline(resources.clone(), &RunOptions::default()).await?;
    anyhow::ensure!(
        report.succeeded() && report.scored == options.events,
        "kafka run: {report:?}"
    );
    let (hits, misses) = resources.cache.counts();

    let table = BigtableSpec {
        project: "test-project".into(),
        instance: "test-instance".into(),
        table: "features".into(),
        family: "f".into(),
        endpoint: Some(options.bigtable.clone()),
        channels: 4,
        timeout_ms: 10_000,
    };
    let lookup = BigtableLookup::connect(
        &table,
        options.features.clone(),
        vec![0.0; options.features.len()].into(),
    )
    .await?;
    let bigtable_rows_per_sec_1 = lookups_per_sec(&lookup, 1, 2000).await?;
    let bigtable_rows_per_sec_100 = lookups_per_sec(&lookup, 100, 200).await?;
    let bigtable_rows_per_sec_1000 = lookups_per_sec(&lookup, 1000, 40).await?;

    let mut pubsub = Vec::new();
    if let Some(endpoint) = &options.pubsub {
        let events = options.events.min(20_000);
        for lanes in [1u32, 4] {
            let (topic, subscription) = (
                format!("bench-{run}-{lanes}"),
                format!("bench-sub-{run}-{lanes}"),
            );
            create_topic(endpoint, "test-project", &topic).await?;
            create_subscription(endpoint, "test-project", &subscription, &topic, 60).await?;
            publish(endpoint, "test-project", &topic, payloads(events, 2)).await?;
            let source = format!(
                "  pubsub:\n    project: test-project\n    subscription: {subscription}\n    lanes: {lanes}\n    endpoint: \"{endpoint}\"\n    stop_after_idle_ms: 5000"
            );
            let resources = Arc::new(
                PipelineResources::build(
                    spec(
                        &format!("bench-pubsub-{lanes}"),
                        &source,
                        "  null: {}",
                        options,
                        scratch,
                    )?,
                    &pool,
                )
                .await?,
            );
            let started = Instant::now();
            let report = run_pipeline(resources, &RunOptions::default()).await?;
            anyhow::ensure!(
                report.succeeded() && report.events_in >= events,
                "pubsub run: {report:?}"
            );
            // The idle wait that ends the run is not part of the throughput.
            let busy = started
                .elapsed()
                .saturating_sub(Duration::from_millis(5000));
            pubsub.push((lanes, events as f64 / busy.as_secs_f64().max(1e-3)));
        }
    }
    Ok(ConnectorBenchReport {
        events: options.events,
        kafka_raw_consume_per_sec,
        kafka_pipeline_per_sec: report.events_per_sec,
        kafka_pipeline_p99_ms: report.latency_p99_us as f64 / 1000.0,
        cache_hit_ratio: hits as f64 / (hits + misses).max(1) as f64,
        bigtable_rows_per_sec_1,
        bigtable_rows_per_sec_100,
        bigtable_rows_per_sec_1000,
        pubsub,
    })
}
