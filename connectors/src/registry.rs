//! The one place that maps a pipeline spec to its connectors: the partitions of its
//! source, the source of each partition, the feature lookup, the sinks. Adding a connector
//! means a folder of its own and one arm in each of the matches below that concern it.
//! A connector compiled out (its cargo feature off) is refused by name.

use std::path::{Component, Path, PathBuf};
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

/// Before region `to` runs a pipeline region `from` ran: moves `to`'s copy of the source
/// to where `from`'s stands. Only Pub/Sub, with a subscription per region, has one; a
/// Kafka topic's positions are the snapshot's offsets, and the generator and files are the
/// same in both regions.
pub fn move_source<'a>(
    spec: &'a PipelineSpec,
    from: &'a str,
    to: &'a str,
    since: std::time::SystemTime,
) -> futures::future::BoxFuture<'a, anyhow::Result<Option<String>>> {
    Box::pin(async move {
        match &spec.source {
            #[cfg(feature = "pubsub")]
            SourceSpec::Pubsub(pubsub) => {
                crate::pubsub::move_subscription(pubsub, from, to, since).await
            }
            _ => {
                let _ = (from, to, since);
                Ok(None)
            }
        }
    })
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
    check_distinct_files(spec)
}

/// The spec compared its file paths as written; here they are compared as the file
/// system resolves them (links, `..`), so that no sink writes into another's file or into
/// the input through another name.
fn check_distinct_files(spec: &PipelineSpec) -> anyhow::Result<()> {
    let mut files: Vec<(&str, PathBuf)> = Vec::new();
    if let SourceSpec::File(file) = &spec.source {
        files.push(("source.file.path", resolved(&file.path)));
    }
    if let Some(file) = spec.sink.file() {
        files.push(("sink.file.path", resolved(&file.path)));
    }
    if let Some(file) = spec.dead_letter.file() {
        files.push(("dead_letter.file.path", resolved(&file.path)));
    }
    for (i, (field, path)) in files.iter().enumerate() {
        if let Some((other, _)) = files[..i].iter().find(|(_, p)| p == path) {
            anyhow::bail!("{field}: {} is the same file as {other}", path.display());
        }
    }
    Ok(())
}

/// `path` with its links and `..` resolved: the part that exists by the file system, the
/// rest (a sink file and folders not made yet, which cannot be links) by its names.
fn resolved(path: &Path) -> PathBuf {
    let mut existing = path;
    let mut rest = Vec::new();
    let base = loop {
        let probe = if existing.as_os_str().is_empty() {
            Path::new(".")
        } else {
            existing
        };
        if let Ok(base) = probe.canonicalize() {
            break base;
        }
        match (existing.parent(), existing.components().next_back()) {
            (Some(parent), Some(last)) => {
                rest.push(last);
                existing = parent;
            }
            _ => break existing.to_path_buf(),
        }
    };
    let mut out = base;
    for part in rest.into_iter().rev() {
        match part {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
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
            FileSource::open(&file.path, batch, max_payload, file.complete, resume)?,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(source: &Path, sink: &Path, dead: &Path) -> PipelineSpec {
        PipelineSpec::from_yaml(&format!(
            "name: t\nsource:\n  file:\n    path: {}\nenrichment:\n  table:\n    path: f.csv\n  \
             features: [a]\nmodel:\n  name: m\n  version: \"1\"\n  path: m.pt\nsink:\n  file:\n    \
             path: {}\ndead_letter:\n  file:\n    path: {}\n",
            source.display(),
            sink.display(),
            dead.display()
        ))
        .expect("the paths differ as written")
    }

    #[test]
    fn files_that_are_one_through_a_link_or_dot_dot_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let dir = dir.path();
        let input = dir.join("in.jsonl");
        std::fs::write(&input, "{}\n").unwrap();
        std::fs::create_dir(dir.join("data")).unwrap();
        let link = dir.join("data/link.jsonl");
        std::os::unix::fs::symlink(&input, &link).unwrap();

        let error = check_source(&spec(&input, &link, &dir.join("dead.jsonl")))
            .unwrap_err()
            .to_string();
        assert!(
            error.starts_with("sink.file.path:") && error.contains("same file as source"),
            "{error}"
        );
        let error = check_source(&spec(
            &input,
            &dir.join("out/scored.jsonl"),
            &dir.join("data/../out/new/../scored.jsonl"),
        ))
        .unwrap_err()
        .to_string();
        assert!(
            error.starts_with("dead_letter.file.path:") && error.contains("sink.file.path"),
            "{error}"
        );
        check_source(&spec(
            &input,
            &dir.join("out/scored.jsonl"),
            &dir.join("out/dead.jsonl"),
        ))
        .expect("different files");
    }
}
