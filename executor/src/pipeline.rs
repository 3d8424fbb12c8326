//! Builds the partition pipelines of a spec: source -> decode -> enrich -> infer -> sink,
//! every stage also linked to the dead letter.

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use mirador_actors::{
    link, CheckpointTracker, DeadLetter, Generation, GenerationFactory, PipelineSnapshot,
    SourceEnd, SourceRunner, StageError, StageRunner, StageSlot, StageSnapshot, StageStats,
};

use crate::connectors::bigtable::{BigtableLookup, BigtableSink};
use crate::connectors::kafka::{KafkaRecord, KafkaSink, KafkaSource};
use crate::connectors::pubsub::{PubsubSink, PubsubSource};
use crate::decode::{DecodeStage, Decoder};
use crate::enrich::{
    CsvFeatureTable, EnrichStage, FeatureCache, FeatureLookup, Features, LookupPolicy,
};
use crate::event::{ModelId, ScoredRecord};
use crate::infer::{InferStage, InferenceBatcher, InferencePool, EVENT_FEATURES};
use crate::sinks::{
    EncodeContext, JsonLine, JsonlFile, JsonlTarget, LatencyRecorder, ReasonCounts, RecordSink,
    SinkStage,
};
use crate::sources::{FileSource, GeneratorSource};
use crate::spec::{PipelineSpec, SinkSpec, SinkTarget, SourceSpec};
pub use mirador_spec::partition_count;

/// The stages of a partition pipeline, in pipeline order (the source first, as the
/// actors crate requires). Stats and snapshots are looked up by these, never by position.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StageId {
    Source,
    Decode,
    Enrich,
    Infer,
    Sink,
    DeadLetter,
}

impl StageId {
    pub const ALL: [StageId; 6] = [
        StageId::Source,
        StageId::Decode,
        StageId::Enrich,
        StageId::Infer,
        StageId::Sink,
        StageId::DeadLetter,
    ];

    /// The name the stage reports in its snapshot.
    pub const fn name(self) -> &'static str {
        match self {
            StageId::Source => "source",
            StageId::Decode => "decode",
            StageId::Enrich => "enrich",
            StageId::Infer => "infer",
            StageId::Sink => "sink",
            StageId::DeadLetter => "dead_letter",
        }
    }

    /// This stage's snapshot within a pipeline's, found by name.
    pub fn of(self, snapshot: &PipelineSnapshot) -> Option<&StageSnapshot> {
        snapshot.stages.iter().find(|s| s.name == self.name())
    }
}

/// One [`StageStats`] per stage of a partition, kept across its generations.
#[derive(Default)]
pub struct PartitionStats {
    stats: [Arc<StageStats>; StageId::ALL.len()],
}

impl PartitionStats {
    pub fn get(&self, stage: StageId) -> Arc<StageStats> {
        self.stats[stage as usize].clone()
    }
}

/// What partition pipelines have done, from their snapshots: records read (the source's
/// output), scored (the sink's input) and dead-lettered (the dead letter's input).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub read: u64,
    pub scored: u64,
    pub dead_lettered: u64,
}

impl Counts {
    /// The sums over `snapshots`.
    pub fn of<'a>(snapshots: impl IntoIterator<Item = &'a PipelineSnapshot>) -> Self {
        let mut counts = Counts::default();
        for s in snapshots {
            counts.read += StageId::Source.of(s).map_or(0, |st| st.records_out);
            counts.scored += StageId::Sink.of(s).map_or(0, |st| st.records_in);
            counts.dead_lettered += StageId::DeadLetter.of(s).map_or(0, |st| st.records_in);
        }
        counts
    }
}

/// What the partitions of one pipeline on a node share: the lookup and its cache, the
/// model's batcher, the sinks, the latency and dead-letter counters.
pub struct PipelineResources {
    pub spec: Arc<PipelineSpec>,
    pub lookup: Arc<dyn FeatureLookup>,
    pub cache: FeatureCache,
    pub defaults: Features,
    pub batcher: Arc<InferenceBatcher>,
    pub model: Arc<ModelId>,
    pub sink: Vec<Arc<dyn RecordSink<ScoredRecord>>>,
    pub dead_letter: Vec<Arc<dyn RecordSink<DeadLetter>>>,
    pub context: EncodeContext,
    pub latency: Arc<LatencyRecorder>,
    pub reasons: Arc<ReasonCounts>,
    /// Partitions of the pipeline on this node: 0..partitions.
    pub partitions: u32,
}

/// A target that takes any record with a JSON line and a Kafka form: every kind but
/// Bigtable, which only takes scored records.
async fn record_sink<T>(
    target: &SinkTarget,
    field: &str,
    source: &str,
) -> anyhow::Result<Arc<dyn RecordSink<T>>>
where
    T: JsonLine + KafkaRecord + Send + Sync + 'static,
{
    Ok(match target {
        SinkTarget::File(file) => Arc::new(JsonlTarget::File(Arc::new(std::sync::Mutex::new(
            JsonlFile::open(&file.path)
                .map_err(|e| anyhow::anyhow!("{field}.file.path: {}: {e}", file.path.display()))?,
        )))),
        SinkTarget::Stdout => Arc::new(JsonlTarget::Stdout),
        SinkTarget::Null => Arc::new(JsonlTarget::Null),
        SinkTarget::Kafka(kafka) => Arc::new(KafkaSink::connect(kafka, source.to_string())?),
        SinkTarget::Pubsub(pubsub) => {
            Arc::new(PubsubSink::connect(pubsub, source.to_string()).await?)
        }
        SinkTarget::Bigtable(_) => {
            anyhow::bail!("{field}.bigtable: only scored records go to bigtable")
        }
    })
}

async fn scored_sinks(
    spec: &SinkSpec,
    source: &str,
) -> anyhow::Result<Vec<Arc<dyn RecordSink<ScoredRecord>>>> {
    let mut sinks: Vec<Arc<dyn RecordSink<ScoredRecord>>> = Vec::new();
    for target in &spec.targets {
        sinks.push(match target {
            SinkTarget::Bigtable(bigtable) => Arc::new(BigtableSink::connect(bigtable).await?),
            other => record_sink(other, "sink", source).await?,
        });
    }
    Ok(sinks)
}

async fn dead_letter_sinks(
    spec: &SinkSpec,
    source: &str,
) -> anyhow::Result<Vec<Arc<dyn RecordSink<DeadLetter>>>> {
    let mut sinks = Vec::new();
    for target in &spec.targets {
        sinks.push(record_sink(target, "dead_letter", source).await?);
    }
    Ok(sinks)
}

/// The features of an unknown customer under `on_miss: default`.
fn default_features(spec: &PipelineSpec) -> Features {
    let enrichment = &spec.enrichment;
    enrichment
        .features
        .iter()
        .map(|name| enrichment.defaults.get(name).copied().unwrap_or(0.0))
        .collect()
}

impl PipelineResources {
    /// Connects the feature lookup, starts (or joins) the model's batcher, opens the sinks.
    pub async fn build(spec: PipelineSpec, pool: &InferencePool) -> anyhow::Result<Self> {
        if let SourceSpec::File(file) = &spec.source {
            anyhow::ensure!(
                file.path.is_file(),
                "source.file.path: {} is not a file",
                file.path.display()
            );
        }
        let enrichment = &spec.enrichment;
        let lookup: Arc<dyn FeatureLookup> = match (&enrichment.table, &enrichment.bigtable) {
            (Some(table), _) => {
                let table = CsvFeatureTable::load(&table.path, &enrichment.features)?;
                tracing::info!(customers = table.len(), "feature table loaded");
                Arc::new(table)
            }
            (None, Some(bigtable)) => Arc::new(
                BigtableLookup::connect(bigtable, enrichment.qualifiers(), default_features(&spec))
                    .await?,
            ),
            (None, None) => {
                anyhow::bail!("enrichment: exactly one of `table` or `bigtable` is needed")
            }
        };
        Self::with_lookup(spec, lookup, pool).await
    }

    pub async fn with_lookup(
        spec: PipelineSpec,
        lookup: Arc<dyn FeatureLookup>,
        pool: &InferencePool,
    ) -> anyhow::Result<Self> {
        let enrichment = &spec.enrichment;
        let width = EVENT_FEATURES + enrichment.features.len();
        let batcher = pool.batcher(&spec.model, width)?;
        Ok(PipelineResources {
            lookup,
            cache: FeatureCache::new(
                enrichment.cache.max_bytes,
                Duration::from_secs(enrichment.cache.ttl_secs),
            ),
            defaults: default_features(&spec),
            batcher,
            model: Arc::new(ModelId {
                name: spec.model.name.clone(),
                version: spec.model.version.clone(),
            }),
            sink: scored_sinks(&spec.sink, &spec.source_name()).await?,
            dead_letter: dead_letter_sinks(&spec.dead_letter, &spec.source_name()).await?,
            partitions: partition_count(&spec).await?,
            context: EncodeContext {
                feature_names: enrichment.features.clone().into(),
            },
            latency: Arc::default(),
            reasons: Arc::default(),
            spec: Arc::new(spec),
        })
    }
}

/// Builds the generations of one partition.
pub struct PartitionFactory {
    resources: Arc<PipelineResources>,
    partition: u32,
    max_batch_attempts: u32,
    /// Kept across generations so that counts add up.
    stats: PartitionStats,
}

impl PartitionFactory {
    pub fn new(resources: Arc<PipelineResources>, partition: u32, max_batch_attempts: u32) -> Self {
        PartitionFactory {
            resources,
            partition,
            max_batch_attempts,
            stats: PartitionStats::default(),
        }
    }

    /// What the source learns of its input's extent, for the partition's lag.
    pub fn source_end(&self) -> Arc<SourceEnd> {
        self.stats.get(StageId::Source).source_end.clone()
    }

    async fn generation(&self, tracker: Arc<CheckpointTracker>) -> Result<Generation, StageError> {
        let r = &self.resources;
        let spec = &r.spec;
        let capacity = spec.batching.link_capacity;
        let attempts = self.max_batch_attempts;
        let (source_tx, source_rx) = link(capacity);
        let (decode_tx, decode_rx) = link(capacity);
        let (enrich_tx, enrich_rx) = link(capacity);
        let (infer_tx, infer_rx) = link(capacity);
        let (dead_tx, dead_rx) = link::<DeadLetter>(capacity);

        let max_payload = spec.decode.max_payload_bytes;
        let batch = spec.batching.max_records;
        let source: Box<dyn StageSlot> = match &spec.source {
            SourceSpec::File(file) => Box::new(SourceRunner::new(
                FileSource::open(&file.path, batch, max_payload, tracker.clone())?,
                source_tx,
                self.stats.get(StageId::Source),
            )),
            SourceSpec::Pubsub(pubsub) => Box::new(SourceRunner::new(
                PubsubSource::start(pubsub, self.partition, batch, tracker.clone()).await?,
                source_tx,
                self.stats.get(StageId::Source),
            )),
            SourceSpec::Kafka(kafka) => Box::new(SourceRunner::new(
                KafkaSource::start(
                    kafka,
                    self.partition,
                    batch,
                    tracker.clone(),
                    self.stats.get(StageId::Source).source_end.clone(),
                )?,
                source_tx,
                self.stats.get(StageId::Source),
            )),
            SourceSpec::Generator(generator) => Box::new(SourceRunner::new(
                GeneratorSource::new(
                    generator,
                    self.partition,
                    spec.decode.format,
                    max_payload,
                    batch,
                    tracker.clone(),
                    &self.stats.get(StageId::Source).source_end,
                ),
                source_tx,
                self.stats.get(StageId::Source),
            )),
        };

        let decoder = Decoder::new(&spec.decode);
        let decode = StageRunner::new(
            move || Ok(DecodeStage::new(decoder.clone())),
            source_rx,
            Some(decode_tx),
            Some(dead_tx.clone()),
            self.stats.get(StageId::Decode),
            attempts,
        )?;

        let resources = r.clone();
        let enrich = StageRunner::new(
            move || {
                Ok(EnrichStage::new(
                    resources.lookup.clone(),
                    resources.cache.clone(),
                    resources.defaults.clone(),
                    LookupPolicy::from_spec(&resources.spec.enrichment),
                ))
            },
            decode_rx,
            Some(enrich_tx),
            Some(dead_tx.clone()),
            self.stats.get(StageId::Enrich),
            attempts,
        )?;

        let resources = r.clone();
        let infer = StageRunner::new(
            move || {
                Ok(InferStage::new(
                    resources.batcher.client(),
                    resources.model.clone(),
                ))
            },
            enrich_rx,
            Some(infer_tx),
            Some(dead_tx.clone()),
            self.stats.get(StageId::Infer),
            attempts,
        )?;

        let (resources, t) = (r.clone(), tracker.clone());
        let sink = StageRunner::new(
            move || {
                Ok(SinkStage::<ScoredRecord>::new(
                    "sink",
                    resources.sink.clone(),
                    resources.context.clone(),
                    t.clone(),
                    resources.latency.clone(),
                ))
            },
            infer_rx,
            None,
            Some(dead_tx),
            self.stats.get(StageId::Sink),
            attempts,
        )?;

        let (resources, t) = (r.clone(), tracker);
        let dead_letter = StageRunner::new(
            move || {
                Ok(SinkStage::<DeadLetter>::new(
                    "dead_letter",
                    resources.dead_letter.clone(),
                    resources.context.clone(),
                    t.clone(),
                    resources.reasons.clone(),
                ))
            },
            dead_rx,
            None,
            None,
            self.stats.get(StageId::DeadLetter),
            // The dead letter is the last resort: it retries as long as its budget lasts.
            u32::MAX,
        )?;

        Ok(Generation {
            slots: vec![
                source,
                Box::new(decode),
                Box::new(enrich),
                Box::new(infer),
                Box::new(sink),
                Box::new(dead_letter),
            ],
        })
    }
}

impl GenerationFactory for PartitionFactory {
    fn build(
        &self,
        tracker: Arc<CheckpointTracker>,
    ) -> BoxFuture<'_, Result<Generation, StageError>> {
        Box::pin(self.generation(tracker))
    }
}
