//! The one place that maps a pipeline spec to its connectors: the partitions of its
//! source, the source of each partition, the feature lookup, the sinks. Adding a connector
//! means a folder of its own and one arm in each of the matches below that concern it.
//! A connector compiled out (its cargo feature off) is refused by name.

use std::sync::Arc;

use mirador_actors::{
    CheckpointTracker, DeadLetter, LinkSender, SourceRunner, StageError, StageSlot, StageStats,
};

use crate::event::{RawRecord, ScoredRecord};
use crate::file::{CsvFeatureTable, FileSource, JsonlFile};
use crate::generator::GeneratorSource;
use crate::lookup::FeatureLookup;
use crate::sinks::{JsonLine, JsonlTarget, MessageRecord, RecordSink};
use crate::spec::{FieldError, PipelineSpec, SinkSpec, SinkTarget, SourceSpec};

/// The cargo feature of the source's connector, when this build lacks it.
fn lacking_source(source: &SourceSpec) -> Option<&'static str> {
    match source {
        #[cfg(not(feature = "kafka"))]
        SourceSpec::Kafka(_) => Some("kafka"),
        #[cfg(not(feature = "pubsub"))]
        SourceSpec::Pubsub(_) => Some("pubsub"),
        _ => None,
    }
}

/// The cargo feature of a sink target's connector, when this build lacks it.
fn lacking_sink(target: &SinkTarget) -> Option<&'static str> {
    match target {
        #[cfg(not(feature = "kafka"))]
        SinkTarget::Kafka(_) => Some("kafka"),
        #[cfg(not(feature = "pubsub"))]
        SinkTarget::Pubsub(_) => Some("pubsub"),
        #[cfg(not(feature = "bigtable"))]
        SinkTarget::Bigtable(_) => Some("bigtable"),
        _ => None,
    }
}

fn missing(field: String, connector: &str) -> FieldError {
    FieldError::new(
        field,
        format!("this build has no {connector} connector (cargo feature `{connector}`)"),
    )
}

/// Refuses a spec that names a connector this build lacks, naming the field.
pub fn check_available(spec: &PipelineSpec) -> Result<(), FieldError> {
    if let Some(connector) = lacking_source(&spec.source) {
        return Err(missing(format!("source.{connector}"), connector));
    }
    if spec.enrichment.bigtable.is_some() && cfg!(not(feature = "bigtable")) {
        return Err(missing("enrichment.bigtable".into(), "bigtable"));
    }
    for (section, sink) in [("sink", &spec.sink), ("dead_letter", &spec.dead_letter)] {
        if let Some(connector) = sink.targets.iter().find_map(lacking_sink) {
            return Err(missing(format!("{section}.{connector}"), connector));
        }
    }
    Ok(())
}

/// How many partitions a pipeline has: its generator partitions or Pub/Sub lanes, or its
/// Kafka topic's partitions (asked of the brokers).
pub async fn partition_count(spec: &PipelineSpec) -> anyhow::Result<u32> {
    check_available(spec)?;
    Ok(match (&spec.source, spec.partitions()) {
        (_, Some(partitions)) => partitions,
        #[cfg(feature = "kafka")]
        (SourceSpec::Kafka(kafka), None) => {
            let kafka = kafka.clone();
            tokio::task::spawn_blocking(move || {
                crate::kafka::partitions_of(&kafka, std::time::Duration::from_secs(10))
            })
            .await??
        }
        (_, None) => 1,
    })
}

/// [`partition_count`] as a plain function, for a coordinator's spec validator.
pub fn count_partitions(
    spec: &PipelineSpec,
) -> futures::future::BoxFuture<'_, anyhow::Result<u32>> {
    Box::pin(partition_count(spec))
}

/// Checks what can be checked of the source before any partition starts.
pub fn check_source(spec: &PipelineSpec) -> anyhow::Result<()> {
    check_available(spec)?;
    if let SourceSpec::File(file) = &spec.source {
        anyhow::ensure!(
            file.path.is_file(),
            "source.file.path: {} is not a file",
            file.path.display()
        );
    }
    Ok(())
}

/// The source of one partition, running into `output`; it resumes at the tracker's
/// checkpoint.
pub async fn source(
    spec: &PipelineSpec,
    partition: u32,
    tracker: Arc<CheckpointTracker>,
    output: LinkSender<RawRecord>,
    stats: Arc<StageStats>,
) -> Result<Box<dyn StageSlot>, StageError> {
    let batch = spec.batching.max_records;
    let max_payload = spec.decode.max_payload_bytes;
    let resume = tracker.committed();
    Ok(match &spec.source {
        SourceSpec::File(file) => Box::new(SourceRunner::new(
            FileSource::open(&file.path, batch, max_payload, resume)?,
            output,
            stats,
            tracker,
        )),
        SourceSpec::Generator(generator) => {
            let source = GeneratorSource::new(
                generator,
                partition,
                spec.decode.format,
                max_payload,
                batch,
                resume,
                &stats.source_end,
            );
            Box::new(SourceRunner::new(source, output, stats, tracker))
        }
        #[cfg(feature = "kafka")]
        SourceSpec::Kafka(kafka) => {
            let end = stats.source_end.clone();
            let source = crate::kafka::KafkaSource::start(kafka, partition, batch, resume, end)?;
            Box::new(SourceRunner::new(source, output, stats, tracker))
        }
        #[cfg(feature = "pubsub")]
        SourceSpec::Pubsub(pubsub) => {
            let source = crate::pubsub::PubsubSource::start(pubsub, partition, batch, resume);
            Box::new(SourceRunner::new(source.await?, output, stats, tracker))
        }
        #[allow(unreachable_patterns)] // with every connector compiled in
        _ => {
            return Err(StageError::Fatal(check_available(spec).err().map_or_else(
                || "source: no connector".to_string(),
                |e| e.to_string(),
            )))
        }
    })
}

/// The feature lookup of the spec's enrichment: the embedded CSV table or Bigtable.
pub async fn lookup(spec: &PipelineSpec) -> anyhow::Result<Arc<dyn FeatureLookup>> {
    check_available(spec)?;
    let enrichment = &spec.enrichment;
    match (&enrichment.table, &enrichment.bigtable) {
        (Some(table), _) => {
            let table = CsvFeatureTable::load(&table.path, &enrichment.features)?;
            tracing::info!(customers = table.len(), "feature table loaded");
            Ok(Arc::new(table))
        }
        #[cfg(feature = "bigtable")]
        (None, Some(bigtable)) => Ok(Arc::new(
            crate::bigtable::BigtableLookup::connect(
                bigtable,
                enrichment.qualifiers(),
                enrichment.default_values().into(),
            )
            .await?,
        )),
        _ => anyhow::bail!("enrichment: exactly one of `table` or `bigtable` is needed"),
    }
}

/// A target that takes any record with a JSON line and a message form: every kind but
/// Bigtable, which only takes scored records. `source` names the pipeline's source in the
/// attributes of broker messages.
#[cfg_attr(
    not(any(feature = "kafka", feature = "pubsub")),
    allow(unused_variables)
)]
async fn record_sink<T>(
    target: &SinkTarget,
    field: &str,
    source: &str,
) -> anyhow::Result<Arc<dyn RecordSink<T>>>
where
    T: JsonLine + MessageRecord + Send + Sync + 'static,
{
    Ok(match target {
        SinkTarget::File(file) => Arc::new(JsonlTarget::File(Arc::new(std::sync::Mutex::new(
            JsonlFile::open(&file.path)
                .map_err(|e| anyhow::anyhow!("{field}.file.path: {}: {e}", file.path.display()))?,
        )))),
        SinkTarget::Stdout => Arc::new(JsonlTarget::Stdout),
        SinkTarget::Null => Arc::new(JsonlTarget::Null),
        #[cfg(feature = "kafka")]
        SinkTarget::Kafka(kafka) => {
            Arc::new(crate::kafka::KafkaSink::connect(kafka, source.to_string())?)
        }
        #[cfg(feature = "pubsub")]
        SinkTarget::Pubsub(pubsub) => {
            Arc::new(crate::pubsub::PubsubSink::connect(pubsub, source.to_string()).await?)
        }
        SinkTarget::Bigtable(_) => {
            anyhow::bail!("{field}.bigtable: only scored records go to bigtable")
        }
        #[allow(unreachable_patterns)] // with every connector compiled in
        _ => anyhow::bail!("{field}: this build lacks the connector of a target"),
    })
}

/// The sinks of scored records, in the spec's order.
pub async fn scored_sinks(
    spec: &SinkSpec,
    source: &str,
) -> anyhow::Result<Vec<Arc<dyn RecordSink<ScoredRecord>>>> {
    let mut sinks: Vec<Arc<dyn RecordSink<ScoredRecord>>> = Vec::new();
    for target in &spec.targets {
        sinks.push(match target {
            #[cfg(feature = "bigtable")]
            SinkTarget::Bigtable(bigtable) => {
                Arc::new(crate::bigtable::BigtableSink::connect(bigtable).await?)
            }
            other => record_sink(other, "sink", source).await?,
        });
    }
    Ok(sinks)
}

/// The sinks of dead letters, in the spec's order.
pub async fn dead_letter_sinks(
    spec: &SinkSpec,
    source: &str,
) -> anyhow::Result<Vec<Arc<dyn RecordSink<DeadLetter>>>> {
    let mut sinks = Vec::new();
    for target in &spec.targets {
        sinks.push(record_sink(target, "dead_letter", source).await?);
    }
    Ok(sinks)
}
