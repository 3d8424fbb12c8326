//! `mirador bench`: the data path end to end, and each stage alone at full speed, in one
//! process and one run, so the figures compare.

pub mod cluster;
pub mod connectors;
pub mod snapshot;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use mirador_actors::{CheckpointTracker, Output, Position, SourceBatch, Stage};
use serde::Serialize;

use mirador_executor::connectors::generator::EventFactory;
use mirador_executor::decode::{DecodeStage, Decoder};
use mirador_executor::enrich::{EnrichStage, LookupPolicy};
use mirador_executor::event::RawRecord;
use mirador_executor::infer::{InferStage, InferencePool};
use mirador_executor::pipeline::PipelineResources;
use mirador_executor::run::{peak_rss_mb, run_pipeline, RunOptions};
use mirador_executor::spec::{GeneratorSpec, PipelineSpec, SourceSpec};

#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    pub cores: usize,
    pub batch_records: usize,
    pub decode_per_sec: f64,
    pub lookups_per_sec: f64,
    pub infer_rows_per_sec: f64,
    pub end_to_end_per_sec: f64,
    pub end_to_end_p50_ms: f64,
    pub end_to_end_p99_ms: f64,
    pub cache_hit_ratio: f64,
    pub half_rate_per_sec: f64,
    pub half_rate_p50_ms: f64,
    pub half_rate_p99_ms: f64,
    pub peak_rss_mb: f64,
}

impl BenchReport {
    pub fn slowest_stage(&self) -> (&'static str, f64) {
        [
            ("decode", self.decode_per_sec),
            ("enrich", self.lookups_per_sec),
            ("infer", self.infer_rows_per_sec),
        ]
        .into_iter()
        .min_by(|a, b| a.1.total_cmp(&b.1))
        .expect("three stages")
    }

    pub fn render(&self) -> String {
        let (slowest, slowest_rate) = self.slowest_stage();
        let rows = [
            (
                "decode alone",
                format!("{:>12.0} events/s", self.decode_per_sec),
            ),
            (
                "enrich alone (cached)",
                format!("{:>12.0} lookups/s", self.lookups_per_sec),
            ),
            (
                "infer alone (cpu)",
                format!("{:>12.0} rows/s", self.infer_rows_per_sec),
            ),
            (
                "end to end",
                format!(
                    "{:>12.0} events/s   p50 {:.1} ms   p99 {:.1} ms   cache hits {:.0} %",
                    self.end_to_end_per_sec,
                    self.end_to_end_p50_ms,
                    self.end_to_end_p99_ms,
                    self.cache_hit_ratio * 100.0
                ),
            ),
            (
                "end to end / slowest",
                format!(
                    "{:>12.0} %        (slowest: {slowest})",
                    self.end_to_end_per_sec / slowest_rate * 100.0
                ),
            ),
            (
                "at half the max rate",
                format!(
                    "{:>12.0} events/s   p50 {:.1} ms   p99 {:.1} ms",
                    self.half_rate_per_sec, self.half_rate_p50_ms, self.half_rate_p99_ms
                ),
            ),
            (
                "peak memory (RSS)",
                format!(
                    "{:>12.0} MB       (whole process, staged inputs included)",
                    self.peak_rss_mb
                ),
            ),
        ];
        let mut text = format!(
            "mirador bench: {} cores, CPU inference, batches of {} records\n",
            self.cores, self.batch_records
        );
        for (name, value) in rows {
            text.push_str(&format!("  {name:<24}{value}\n"));
        }
        text
    }
}

pub struct BenchOptions {
    /// Events of the end-to-end run.
    pub events: u64,
    /// Events each stage is measured on alone.
    pub stage_events: usize,
    /// Seconds of the run at half the maximum rate.
    pub half_rate_secs: f64,
    /// Each figure is the median of this many runs.
    pub repeats: usize,
}

/// The median of some measurements.
fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(0.0)
}

fn rate(count: usize, elapsed: Duration) -> f64 {
    count as f64 / elapsed.as_secs_f64().max(1e-9)
}

/// `spec` is a pipeline with a generator source and null sinks; its checkpoint folder
/// must start empty.
pub async fn run_bench(spec: PipelineSpec, options: &BenchOptions) -> anyhow::Result<BenchReport> {
    let SourceSpec::Generator(generator) = spec.source.clone() else {
        anyhow::bail!("source: the benchmark needs a generator source");
    };
    let pool = InferencePool::default();
    let batch_records = spec.batching.max_records;

    // Each stage alone, on batches made beforehand.
    let resources = Arc::new(PipelineResources::build(spec.clone(), &pool).await?);
    let raw = make_batches(&generator, &spec, options.stage_events);
    let mut decode = DecodeStage::new(Decoder::new(&spec.decode));
    let mut decoded = Vec::new();
    let mut rates = Vec::new();
    // Each figure is the stage's work on its batches: freeing what an earlier repeat made
    // is left out of it, as a pipeline frees records downstream, after the stage.
    for _ in 0..options.repeats {
        drop(std::mem::take(&mut decoded));
        let started = Instant::now();
        decoded = run_stage(&mut decode, &raw).await?;
        rates.push(rate(options.stage_events, started.elapsed()));
    }
    let decode_per_sec = median(rates);

    let mut enrich = EnrichStage::new(
        resources.lookup.clone(),
        resources.cache.clone(),
        resources.defaults.clone(),
        LookupPolicy::from_spec(&spec.enrichment),
    );
    run_stage(&mut enrich, &decoded).await?; // warms the cache
    let mut enriched = Vec::new();
    let mut rates = Vec::new();
    for _ in 0..options.repeats {
        drop(std::mem::take(&mut enriched));
        let started = Instant::now();
        enriched = run_stage(&mut enrich, &decoded).await?;
        rates.push(rate(options.stage_events, started.elapsed()));
    }
    let lookups_per_sec = median(rates);

    let mut infer = InferStage::new(resources.batcher.client(), resources.model.clone());
    let mut rates = Vec::new();
    for _ in 0..options.repeats {
        let started = Instant::now();
        let scored = run_stage(&mut infer, &enriched).await?;
        rates.push(rate(options.stage_events, started.elapsed()));
        drop(scored);
    }
    let infer_rows_per_sec = median(rates);
    drop((raw, decoded, enriched, infer, resources));

    // End to end, as fast as it goes.
    let mut cache_hit_ratio = 0.0;
    let mut runs = Vec::new();
    for run in 0..options.repeats {
        let full = with_generator(
            &spec,
            &format!("full{run}"),
            GeneratorSpec {
                events: Some(options.events / generator.partitions as u64),
                rate_per_sec: None,
                ..generator.clone()
            },
        );
        let resources = Arc::new(PipelineResources::build(full, &pool).await?);
        let report = run_pipeline(resources.clone(), &RunOptions::default()).await?;
        anyhow::ensure!(
            report.succeeded(),
            "end-to-end run failed: {:?}",
            report.failures
        );
        let (hits, misses) = resources.cache.counts();
        cache_hit_ratio = hits as f64 / (hits + misses).max(1) as f64;
        runs.push(report);
    }
    runs.sort_by(|a, b| a.events_per_sec.total_cmp(&b.events_per_sec));
    let report = runs.swap_remove(runs.len() / 2);

    // Half that rate, for latency.
    let half = report.events_per_sec / 2.0;
    let per_partition = half / generator.partitions as f64;
    let paced = with_generator(
        &spec,
        "half",
        GeneratorSpec {
            events: Some((per_partition * options.half_rate_secs).max(1.0) as u64),
            rate_per_sec: Some(per_partition),
            ..generator
        },
    );
    let resources = Arc::new(PipelineResources::build(paced, &pool).await?);
    let paced_report = run_pipeline(resources, &RunOptions::default()).await?;
    anyhow::ensure!(
        paced_report.succeeded(),
        "half-rate run failed: {:?}",
        paced_report.failures
    );

    Ok(BenchReport {
        cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
        batch_records,
        decode_per_sec,
        lookups_per_sec,
        infer_rows_per_sec,
        end_to_end_per_sec: report.events_per_sec,
        end_to_end_p50_ms: report.latency_p50_us as f64 / 1000.0,
        end_to_end_p99_ms: report.latency_p99_us as f64 / 1000.0,
        cache_hit_ratio,
        half_rate_per_sec: paced_report.events_per_sec,
        half_rate_p50_ms: paced_report.latency_p50_us as f64 / 1000.0,
        half_rate_p99_ms: paced_report.latency_p99_us as f64 / 1000.0,
        peak_rss_mb: peak_rss_mb(),
    })
}

fn with_generator(spec: &PipelineSpec, run: &str, generator: GeneratorSpec) -> PipelineSpec {
    PipelineSpec {
        name: format!("{}-{run}", spec.name),
        source: SourceSpec::Generator(generator),
        ..spec.clone()
    }
}

fn make_batches(
    generator: &GeneratorSpec,
    spec: &PipelineSpec,
    events: usize,
) -> Vec<Vec<RawRecord>> {
    let factory = EventFactory::new(
        generator,
        0,
        spec.decode.format,
        spec.decode.max_payload_bytes,
    );
    let tracker = CheckpointTracker::new(None);
    let now_ms = chrono::Utc::now().timestamp_millis();
    let mut buf = Vec::new();
    let batch = spec.batching.max_records;
    (0..events)
        .collect::<Vec<_>>()
        .chunks(batch)
        .map(|seqs| {
            let items = seqs
                .iter()
                .map(|&seq| {
                    factory.payload(seq as u64, now_ms, &mut buf);
                    let payload = Bytes::copy_from_slice(&buf);
                    RawRecord::read(0, seq as u64, payload, Instant::now())
                })
                .collect();
            let end = Position {
                partition: 0,
                offset: seqs[seqs.len() - 1] as u64 + 1,
            };
            // As a source runner opens what its source read.
            SourceBatch { items, end }.open(&tracker)
        })
        .collect()
}

async fn run_stage<S: Stage>(
    stage: &mut S,
    batches: &[Vec<S::In>],
) -> anyhow::Result<Vec<Vec<S::Out>>> {
    let mut outputs = Vec::with_capacity(batches.len());
    for batch in batches {
        let mut out = Output::with_capacity(batch.len());
        stage.handle(batch, &mut out).await?;
        anyhow::ensure!(
            out.dead.is_empty(),
            "{}: {} records rejected",
            stage.name(),
            out.dead.len()
        );
        outputs.push(out.items);
    }
    Ok(outputs)
}
