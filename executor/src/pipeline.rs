//! Builds the partition pipelines of a spec: source -> decode -> enrich -> infer -> sink,
//! every stage also linked to the dead letter.

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use mirador_actors::{
    link, CheckpointTracker, DeadLetter, Generation, GenerationFactory, PipelineSnapshot,
    SourceEnd, StageError, StageRunner, StageSnapshot, StageStats,
};
use mirador_connectors::registry;
pub use mirador_connectors::registry::partition_count;

use crate::decode::{DecodeStage, Decoder};
use crate::enrich::{EnrichStage, FeatureCache, FeatureLookup, Features, LookupPolicy};
use crate::event::{ModelId, ScoredRecord};
use crate::infer::{InferStage, InferenceBatcher, InferencePool, EVENT_FEATURES};
use crate::sinks::{EncodeContext, LatencyRecorder, ReasonCounts, RecordSink, SinkStage};
use crate::spec::PipelineSpec;

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
/// output), scored (what the sink took and wrote) and dead-lettered (the dead letter's
/// input).
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
            // What the sink refused went on to the dead letter.
            counts.scored += StageId::Sink
                .of(s)
                .map_or(0, |st| st.records_in - st.dead_lettered);
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

impl PipelineResources {
    /// Connects the feature lookup, starts (or joins) the model's batcher, opens the sinks.
    pub async fn build(spec: PipelineSpec, pool: &InferencePool) -> anyhow::Result<Self> {
        registry::check_source(&spec)?;
        let lookup = registry::lookup(&spec).await?;
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
            defaults: enrichment.default_values().into(),
            batcher,
            model: Arc::new(ModelId {
                name: spec.model.name.clone(),
                version: spec.model.version.clone(),
            }),
            sink: registry::scored_sinks(&spec.sink, &spec.source_name()).await?,
            dead_letter: registry::dead_letter_sinks(&spec.dead_letter, &spec.source_name())
                .await?,
            partitions: partition_count(&spec).await?,
            context: EncodeContext {
                feature_names: enrichment.features.clone().into(),
                region: "".into(),
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

        let source = registry::source(
            spec,
            self.partition,
            tracker.clone(),
            source_tx,
            self.stats.get(StageId::Source),
        )
        .await?;

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
                )
                .last_resort())
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
