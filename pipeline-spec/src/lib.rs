//! Pipeline specs: what a pipeline reads, how it enriches and scores, where it writes.
//! Documented in docs/pipeline-spec.md. Parsing rejects unknown fields; [`PipelineSpec::validate`]
//! checks values without touching the outside world. Every error names its field.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

pub mod bigtable;
pub mod kafka;
pub mod pubsub;

pub use bigtable::BigtableSpec;
pub use kafka::{KafkaKey, KafkaSinkSpec, KafkaSourceSpec};
pub use pubsub::{PubsubSinkSpec, PubsubSourceSpec};

/// A refusal that names the field at fault: the field, the bad value, and what is wrong
/// with it. The one such type of Mirador: spec errors, admin requests and state-machine
/// refusals all use it (the coordinator maps it to `INVALID_ARGUMENT`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, Deserialize, thiserror::Error)]
#[error("{field}: {message}")]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        FieldError {
            field: field.into(),
            message: message.into(),
        }
    }

    fn value(field: impl Into<String>, value: impl fmt::Debug, rule: &str) -> Self {
        FieldError::new(field, format!("{value:?} is invalid: {rule}"))
    }
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PipelineSpec {
    pub name: String,
    pub source: SourceSpec,
    #[serde(default)]
    pub decode: DecodeSpec,
    pub enrichment: EnrichmentSpec,
    pub model: ModelSpec,
    pub sink: SinkSpec,
    pub dead_letter: SinkSpec,
    #[serde(default)]
    pub batching: BatchingSpec,
    #[serde(default)]
    pub checkpoint: CheckpointSpec,
    /// What the other region does when this pipeline's region falls silent.
    #[serde(default)]
    pub failover: FailoverMode,
    /// The service level the pipeline promises; none: nothing is measured against one.
    #[serde(default)]
    pub slo: Option<SloSpec>,
}

/// `slo:` of a pipeline spec: the data freshness is at most `freshness_p90_secs` 90 % of
/// the time, measured on each partition from its first committed record; the other 10 %
/// is the error budget.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SloSpec {
    pub freshness_p90_secs: u64,
}

impl SloSpec {
    /// The share of the time the freshness must meet its target.
    pub const OBJECTIVE: f64 = 0.9;

    fn validate(&self) -> Result<(), FieldError> {
        in_range("slo.freshness_p90_secs", self.freshness_p90_secs, 1, 86_400)
    }
}

/// `failover:` of a pipeline spec.
#[derive(Clone, Copy, Debug, Deserialize, serde::Serialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum FailoverMode {
    /// Only `mirador admin failover` moves it to the other region.
    #[default]
    Manual,
    /// The other region takes it over by itself once this one has been silent for its
    /// coordinators' `failover.after_secs`.
    Automatic,
    /// Created in both regions, it runs in both at once (each on its own subscription or
    /// consumer group, into idempotent sinks): never handed over, taken over or stopped
    /// for the other region.
    ActiveActive,
}

impl FailoverMode {
    /// As the spec writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            FailoverMode::Manual => "manual",
            FailoverMode::Automatic => "automatic",
            FailoverMode::ActiveActive => "active_active",
        }
    }

    /// `None`: not a mode.
    pub fn parse(text: &str) -> Option<Self> {
        [
            FailoverMode::Manual,
            FailoverMode::Automatic,
            FailoverMode::ActiveActive,
        ]
        .into_iter()
        .find(|m| m.as_str() == text)
    }
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(try_from = "SourceFields")]
pub enum SourceSpec {
    /// A file of JSON lines, read once: a bounded source.
    File(FileSourceSpec),
    /// Synthetic marketing events.
    Generator(GeneratorSpec),
    /// A Kafka topic, a pipeline partition per topic partition.
    Kafka(KafkaSourceSpec),
    /// A Pub/Sub subscription, a pipeline partition per lane.
    Pubsub(PubsubSourceSpec),
}

/// The YAML form of a source: exactly one of its kinds.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SourceFields {
    #[serde(default)]
    file: Option<FileSourceSpec>,
    #[serde(default)]
    generator: Option<GeneratorSpec>,
    #[serde(default)]
    kafka: Option<KafkaSourceSpec>,
    #[serde(default)]
    pubsub: Option<PubsubSourceSpec>,
}

impl TryFrom<SourceFields> for SourceSpec {
    type Error = String;
    fn try_from(fields: SourceFields) -> Result<Self, String> {
        match (fields.file, fields.generator, fields.kafka, fields.pubsub) {
            (Some(file), None, None, None) => Ok(SourceSpec::File(file)),
            (None, Some(generator), None, None) => Ok(SourceSpec::Generator(generator)),
            (None, None, Some(kafka), None) => Ok(SourceSpec::Kafka(kafka)),
            (None, None, None, Some(pubsub)) => Ok(SourceSpec::Pubsub(pubsub)),
            _ => Err("exactly one of `file`, `generator`, `kafka` or `pubsub` is needed".into()),
        }
    }
}

/// The YAML form of a sink: one or more targets, each written before a record counts as
/// delivered.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SinkFields {
    #[serde(default)]
    file: Option<FileSinkSpec>,
    #[serde(default)]
    stdout: Option<NoSettings>,
    #[serde(default)]
    null: Option<NoSettings>,
    #[serde(default)]
    bigtable: Option<BigtableSpec>,
    #[serde(default)]
    kafka: Option<KafkaSinkSpec>,
    #[serde(default)]
    pubsub: Option<PubsubSinkSpec>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NoSettings {}

impl TryFrom<SinkFields> for SinkSpec {
    type Error = String;
    fn try_from(fields: SinkFields) -> Result<Self, String> {
        let mut targets = Vec::new();
        targets.extend(fields.file.map(SinkTarget::File));
        targets.extend(fields.stdout.map(|_| SinkTarget::Stdout));
        targets.extend(fields.null.map(|_| SinkTarget::Null));
        targets.extend(fields.bigtable.map(SinkTarget::Bigtable));
        targets.extend(fields.kafka.map(SinkTarget::Kafka));
        targets.extend(fields.pubsub.map(SinkTarget::Pubsub));
        if targets.is_empty() {
            return Err(
                "at least one of `file`, `stdout`, `null`, `bigtable`, `kafka` or `pubsub` is needed".into(),
            );
        }
        Ok(SinkSpec { targets })
    }
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FileSourceSpec {
    pub path: PathBuf,
    /// The file is finished: a last line without its newline is read. Otherwise such a
    /// line is taken to be still in writing and is left for the next run.
    #[serde(default)]
    pub complete: bool,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct GeneratorSpec {
    /// Events per partition; absent: unbounded.
    #[serde(default)]
    pub events: Option<u64>,
    #[serde(default = "default_partitions")]
    pub partitions: u32,
    /// Distinct customers, drawn with a Zipf distribution.
    #[serde(default = "default_customers")]
    pub customers: u64,
    #[serde(default = "default_zipf")]
    pub zipf_exponent: f64,
    /// Share of poison records, 0 to 1.
    #[serde(default)]
    pub poison_ratio: f64,
    #[serde(default = "default_seed")]
    pub seed: u64,
    /// Events per second per partition; absent: as fast as the pipeline takes them.
    #[serde(default)]
    pub rate_per_sec: Option<f64>,
}

fn default_partitions() -> u32 {
    1
}
fn default_customers() -> u64 {
    12_000
}
fn default_zipf() -> f64 {
    1.1
}
fn default_seed() -> u64 {
    7
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum PayloadFormat {
    #[default]
    Json,
    Protobuf,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DecodeSpec {
    #[serde(default)]
    pub format: PayloadFormat,
    #[serde(default = "default_max_payload")]
    pub max_payload_bytes: usize,
    /// How far in the future an event time may be.
    #[serde(default = "default_max_skew")]
    pub max_clock_skew_secs: u64,
    /// How old an event may be.
    #[serde(default = "default_max_age")]
    pub max_event_age_days: u64,
}

fn default_max_payload() -> usize {
    64 * 1024
}
fn default_max_skew() -> u64 {
    3600
}
fn default_max_age() -> u64 {
    5 * 365
}

impl Default for DecodeSpec {
    fn default() -> Self {
        DecodeSpec {
            format: PayloadFormat::Json,
            max_payload_bytes: default_max_payload(),
            max_clock_skew_secs: default_max_skew(),
            max_event_age_days: default_max_age(),
        }
    }
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct EnrichmentSpec {
    /// The embedded feature table; or `bigtable`.
    #[serde(default)]
    pub table: Option<TableSpec>,
    /// A Bigtable table with a row per customer and a column per feature.
    #[serde(default)]
    pub bigtable: Option<BigtableSpec>,
    /// Customer features, in the order the model takes them after the event features.
    pub features: Vec<String>,
    #[serde(default)]
    pub cache: CacheSpec,
    #[serde(default)]
    pub on_miss: MissPolicy,
    /// Values used for unknown customers under `on_miss: default`; absent features are 0.
    #[serde(default)]
    pub defaults: BTreeMap<String, f32>,
    #[serde(default = "default_lookup_timeout")]
    pub timeout_ms: u64,
    #[serde(default = "default_lookup_retries")]
    pub retries: u32,
    /// What a batch does when its lookup still fails after the retries.
    #[serde(default)]
    pub on_lookup_failure: LookupFailurePolicy,
    /// Bigtable only: the column qualifier of a feature, when it is not the feature's name.
    #[serde(default)]
    pub columns: BTreeMap<String, String>,
}

impl EnrichmentSpec {
    /// The Bigtable column qualifier of each feature, in the order of `features`.
    pub fn qualifiers(&self) -> Vec<String> {
        self.features
            .iter()
            .map(|f| self.columns.get(f).unwrap_or(f).clone())
            .collect()
    }

    /// The features of an unknown customer under `on_miss: default`, in the order of
    /// `features` (a feature without a default is 0).
    pub fn default_values(&self) -> Vec<f32> {
        self.features
            .iter()
            .map(|name| self.defaults.get(name).copied().unwrap_or(0.0))
            .collect()
    }
}

fn default_lookup_timeout() -> u64 {
    500
}
fn default_lookup_retries() -> u32 {
    3
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TableSpec {
    /// A CSV file with a header; the customer id in the first column.
    pub path: PathBuf,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CacheSpec {
    #[serde(default = "default_cache_bytes")]
    pub max_bytes: u64,
    #[serde(default = "default_cache_ttl")]
    pub ttl_secs: u64,
}

fn default_cache_bytes() -> u64 {
    64 * 1024 * 1024
}
fn default_cache_ttl() -> u64 {
    300
}

impl Default for CacheSpec {
    fn default() -> Self {
        CacheSpec {
            max_bytes: default_cache_bytes(),
            ttl_secs: default_cache_ttl(),
        }
    }
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum MissPolicy {
    /// Score with the default features.
    #[default]
    Default,
    /// Send the record to the dead letter as `features_not_found`.
    DeadLetter,
}

/// When a feature lookup fails for good (every retry spent).
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum LookupFailurePolicy {
    /// Keep retrying with backoff: the pipeline slows down until the store answers, and
    /// nothing is scored without its features.
    #[default]
    Wait,
    /// Treat the batch's unresolved customers as misses: `on_miss` decides (default
    /// features, or the dead letter as `lookup_failed`). Nothing is cached for them.
    MissPolicy,
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum DeviceSpec {
    /// CUDA when there is a GPU, else the CPU.
    #[default]
    Auto,
    Cpu,
    Cuda,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ModelSpec {
    pub name: String,
    pub version: String,
    /// A TorchScript file.
    pub path: PathBuf,
    #[serde(default)]
    pub device: DeviceSpec,
    #[serde(default = "default_max_batch_rows")]
    pub max_batch_rows: usize,
    #[serde(default = "default_max_wait")]
    pub max_wait_ms: u64,
    /// libtorch intra-op threads on the CPU.
    #[serde(default = "default_threads")]
    pub threads: usize,
}

fn default_max_batch_rows() -> usize {
    4096
}
fn default_max_wait() -> u64 {
    5
}
fn default_threads() -> usize {
    1
}

/// Where a sink writes: every target, in the order file, stdout, null, bigtable, kafka.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(try_from = "SinkFields")]
pub struct SinkSpec {
    pub targets: Vec<SinkTarget>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum SinkTarget {
    /// JSON lines appended to a file.
    File(FileSinkSpec),
    /// JSON lines on standard output.
    Stdout,
    /// Counted and dropped; for benchmarks.
    Null,
    /// An upsert per customer: latest scores, model and last event.
    Bigtable(BigtableSpec),
    /// A Kafka topic, through an idempotent producer.
    Kafka(KafkaSinkSpec),
    /// A Pub/Sub topic.
    Pubsub(PubsubSinkSpec),
}

impl SinkSpec {
    pub fn file(&self) -> Option<&FileSinkSpec> {
        self.targets.iter().find_map(|t| match t {
            SinkTarget::File(file) => Some(file),
            _ => None,
        })
    }
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FileSinkSpec {
    pub path: PathBuf,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BatchingSpec {
    /// Records per source batch.
    #[serde(default = "default_batch_records")]
    pub max_records: usize,
    /// Batches a link between two stages holds.
    #[serde(default = "default_link_capacity")]
    pub link_capacity: usize,
}

fn default_batch_records() -> usize {
    1024
}
fn default_link_capacity() -> usize {
    4
}

impl Default for BatchingSpec {
    fn default() -> Self {
        BatchingSpec {
            max_records: default_batch_records(),
            link_capacity: default_link_capacity(),
        }
    }
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CheckpointSpec {
    #[serde(default = "default_checkpoint_dir")]
    pub dir: PathBuf,
    #[serde(default = "default_checkpoint_interval")]
    pub interval_ms: u64,
}

fn default_checkpoint_dir() -> PathBuf {
    PathBuf::from("mirador-out/checkpoints")
}

fn default_checkpoint_interval() -> u64 {
    1000
}

impl Default for CheckpointSpec {
    fn default() -> Self {
        CheckpointSpec {
            dir: default_checkpoint_dir(),
            interval_ms: default_checkpoint_interval(),
        }
    }
}

impl PipelineSpec {
    /// Parses YAML; unknown fields and wrong types are errors naming the field.
    pub fn from_yaml(text: &str) -> Result<Self, FieldError> {
        let deserializer = serde_yaml_ng::Deserializer::from_str(text);
        let spec: PipelineSpec = serde_path_to_error::deserialize(deserializer).map_err(|e| {
            let path = e.path().to_string();
            let field = if path == "." {
                "spec".to_string()
            } else {
                path
            };
            let message = e.into_inner().to_string();
            // The YAML deserializer names the field itself; say it once.
            let message = message
                .strip_prefix(&format!("{field}: "))
                .map(str::to_string)
                .unwrap_or(message);
            FieldError::new(field, message)
        })?;
        spec.validate()?;
        Ok(spec)
    }

    /// Checks every value, section by section; does no I/O.
    pub fn validate(&self) -> Result<(), FieldError> {
        if self.name.is_empty()
            || self.name.len() > 64
            || !self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(FieldError::value(
                "name",
                &self.name,
                "1 to 64 characters among letters, digits, '-' and '_'",
            ));
        }
        self.source.validate(self.decode.format)?;
        self.decode.validate()?;
        self.enrichment.validate()?;
        self.model.validate()?;
        self.sink.validate("sink")?;
        self.dead_letter.validate("dead_letter")?;
        self.check_distinct_files()?;
        self.batching.validate()?;
        self.checkpoint.validate()?;
        self.slo.as_ref().map_or(Ok(()), SloSpec::validate)
    }

    /// The sink, the dead letter and a file source are three different files: a sink that
    /// writes into its own input would read its output again. Paths are compared as written,
    /// less their `.` parts (`./out/x` is `out/x`); links are not followed (no I/O here).
    fn check_distinct_files(&self) -> Result<(), FieldError> {
        let sink = self.sink.file().map(|f| plain(&f.path));
        let dead = self.dead_letter.file().map(|f| plain(&f.path));
        if let (Some(a), Some(b)) = (&sink, &dead) {
            if a == b {
                return Err(FieldError::value(
                    "dead_letter.file.path",
                    b,
                    "must differ from sink.file.path",
                ));
            }
        }
        if let SourceSpec::File(source) = &self.source {
            let input = plain(&source.path);
            for (field, path) in [("sink.file.path", &sink), ("dead_letter.file.path", &dead)] {
                if path.as_ref() == Some(&input) {
                    return Err(FieldError::value(
                        field,
                        &input,
                        "must differ from source.file.path: it would append to its own input",
                    ));
                }
            }
        }
        Ok(())
    }

    /// Partitions known from the spec alone; a Kafka topic's come from its brokers.
    pub fn partitions(&self) -> Option<u32> {
        match &self.source {
            SourceSpec::File(_) => Some(1),
            SourceSpec::Generator(generator) => Some(generator.partitions),
            SourceSpec::Kafka(_) => None,
            SourceSpec::Pubsub(pubsub) => Some(pubsub.lanes),
        }
    }

    /// What the source is, for dead-letter headers: `kafka:topic`, `file:path`...
    pub fn source_name(&self) -> String {
        match &self.source {
            SourceSpec::File(file) => format!("file:{}", file.path.display()),
            SourceSpec::Generator(_) => "generator".to_string(),
            SourceSpec::Kafka(kafka) => format!("kafka:{}", kafka.topic),
            SourceSpec::Pubsub(pubsub) => format!("pubsub:{}", pubsub.subscription),
        }
    }

    pub fn checkpoint_interval(&self) -> Duration {
        Duration::from_millis(self.checkpoint.interval_ms)
    }

    /// The spec as an executor of region `region` runs it: a Pub/Sub subscription that
    /// names `{region}` becomes that region's. A node of no region (`""`) cannot run one.
    pub fn in_region(mut self, region: &str) -> Result<PipelineSpec, FieldError> {
        if let SourceSpec::Pubsub(pubsub) = &self.source {
            let resolved = pubsub.in_region(region).ok_or_else(|| {
                FieldError::new(
                    "source.pubsub.subscription",
                    format!(
                        "{:?} names {}: only an executor of a region (--region) reads it",
                        pubsub.subscription,
                        pubsub::REGION_PLACEHOLDER
                    ),
                )
            })?;
            self.source = SourceSpec::Pubsub(resolved);
        }
        Ok(self)
    }
}

impl SourceSpec {
    /// The source's settings, and whether it can carry payloads of `format`.
    fn validate(&self, format: PayloadFormat) -> Result<(), FieldError> {
        match self {
            SourceSpec::File(file) => {
                non_empty_path("source.file.path", &file.path)?;
                if format == PayloadFormat::Protobuf {
                    return Err(FieldError::value(
                        "decode.format",
                        "protobuf",
                        "a file source holds JSON lines",
                    ));
                }
                Ok(())
            }
            SourceSpec::Kafka(kafka) => kafka.validate("source.kafka"),
            SourceSpec::Pubsub(pubsub) => pubsub.validate("source.pubsub"),
            SourceSpec::Generator(generator) => generator.validate(),
        }
    }
}

impl GeneratorSpec {
    fn validate(&self) -> Result<(), FieldError> {
        if self.events == Some(0) {
            return Err(FieldError::value(
                "source.generator.events",
                0,
                "must be at least 1",
            ));
        }
        in_range("source.generator.partitions", self.partitions, 1, 256)?;
        in_range(
            "source.generator.customers",
            self.customers,
            1,
            1_000_000_000,
        )?;
        in_range(
            "source.generator.zipf_exponent",
            self.zipf_exponent,
            0.0,
            10.0,
        )?;
        if self.zipf_exponent <= 0.0 {
            return Err(FieldError::value(
                "source.generator.zipf_exponent",
                self.zipf_exponent,
                "must be greater than 0",
            ));
        }
        in_range("source.generator.poison_ratio", self.poison_ratio, 0.0, 1.0)?;
        if let Some(rate) = self.rate_per_sec {
            if !(rate > 0.0 && rate.is_finite()) {
                return Err(FieldError::value(
                    "source.generator.rate_per_sec",
                    rate,
                    "must be a positive number",
                ));
            }
        }
        Ok(())
    }
}

impl DecodeSpec {
    fn validate(&self) -> Result<(), FieldError> {
        in_range(
            "decode.max_payload_bytes",
            self.max_payload_bytes,
            64,
            16 << 20,
        )?;
        in_range(
            "decode.max_clock_skew_secs",
            self.max_clock_skew_secs,
            0,
            366 * 86400,
        )?;
        in_range(
            "decode.max_event_age_days",
            self.max_event_age_days,
            1,
            36500,
        )
    }
}

impl EnrichmentSpec {
    fn validate(&self) -> Result<(), FieldError> {
        match (&self.table, &self.bigtable) {
            (Some(table), None) => non_empty_path("enrichment.table.path", &table.path)?,
            (None, Some(bigtable)) => bigtable.validate("enrichment.bigtable")?,
            _ => {
                return Err(FieldError::new(
                    "enrichment",
                    "exactly one of `table` or `bigtable` is needed",
                ))
            }
        }
        if self.features.is_empty() {
            return Err(FieldError::new("enrichment.features", "lists no feature"));
        }
        for (i, feature) in self.features.iter().enumerate() {
            if feature.is_empty() {
                return Err(FieldError::value(
                    format!("enrichment.features[{i}]"),
                    feature,
                    "empty name",
                ));
            }
            if self.features[..i].contains(feature) {
                return Err(FieldError::value(
                    format!("enrichment.features[{i}]"),
                    feature,
                    "listed twice",
                ));
            }
        }
        for (name, value) in &self.defaults {
            if !self.features.contains(name) {
                return Err(FieldError::value(
                    format!("enrichment.defaults.{name}"),
                    name,
                    "not one of enrichment.features",
                ));
            }
            if !value.is_finite() {
                return Err(FieldError::value(
                    format!("enrichment.defaults.{name}"),
                    value,
                    "must be a finite number",
                ));
            }
        }
        in_range(
            "enrichment.cache.max_bytes",
            self.cache.max_bytes,
            0,
            64 << 30,
        )?;
        in_range(
            "enrichment.cache.ttl_secs",
            self.cache.ttl_secs,
            1,
            7 * 86400,
        )?;
        if !self.columns.is_empty() && self.bigtable.is_none() {
            return Err(FieldError::new(
                "enrichment.columns",
                "only a `bigtable` lookup has columns",
            ));
        }
        for (feature, qualifier) in &self.columns {
            if !self.features.contains(feature) {
                return Err(FieldError::value(
                    format!("enrichment.columns.{feature}"),
                    feature,
                    "not one of enrichment.features",
                ));
            }
            if qualifier.is_empty() || qualifier.len() > 16 * 1024 {
                return Err(FieldError::value(
                    format!("enrichment.columns.{feature}"),
                    qualifier,
                    "a column qualifier is 1 byte to 16 KiB",
                ));
            }
        }
        in_range("enrichment.timeout_ms", self.timeout_ms, 1, 60_000)?;
        in_range("enrichment.retries", self.retries, 0, 100)?;
        Ok(())
    }
}

impl ModelSpec {
    fn validate(&self) -> Result<(), FieldError> {
        if self.name.is_empty() {
            return Err(FieldError::value(
                "model.name",
                &self.name,
                "must not be empty",
            ));
        }
        if self.version.is_empty() {
            return Err(FieldError::value(
                "model.version",
                &self.version,
                "must not be empty",
            ));
        }
        non_empty_path("model.path", &self.path)?;
        in_range("model.max_batch_rows", self.max_batch_rows, 1, 1 << 20)?;
        in_range("model.max_wait_ms", self.max_wait_ms, 0, 10_000)?;
        in_range("model.threads", self.threads, 1, 256)?;
        Ok(())
    }
}

impl SinkSpec {
    /// Every target of the sink at `field` (`sink` or `dead_letter`).
    fn validate(&self, field: &str) -> Result<(), FieldError> {
        for target in &self.targets {
            match target {
                SinkTarget::File(file) => {
                    non_empty_path(&format!("{field}.file.path"), &file.path)?
                }
                SinkTarget::Bigtable(_) if field == "dead_letter" => {
                    return Err(FieldError::new(
                        "dead_letter.bigtable",
                        "a dead letter keeps whole records: use file",
                    ))
                }
                SinkTarget::Bigtable(bigtable) => {
                    bigtable.validate(&format!("{field}.bigtable"))?
                }
                SinkTarget::Kafka(kafka) => kafka.validate(&format!("{field}.kafka"))?,
                SinkTarget::Pubsub(pubsub) => pubsub.validate(&format!("{field}.pubsub"))?,
                SinkTarget::Stdout | SinkTarget::Null => {}
            }
        }
        Ok(())
    }
}

impl BatchingSpec {
    fn validate(&self) -> Result<(), FieldError> {
        in_range("batching.max_records", self.max_records, 1, 1 << 20)?;
        in_range("batching.link_capacity", self.link_capacity, 1, 1024)
    }
}

impl CheckpointSpec {
    fn validate(&self) -> Result<(), FieldError> {
        non_empty_path("checkpoint.dir", &self.dir)?;
        in_range("checkpoint.interval_ms", self.interval_ms, 10, 3_600_000)
    }
}

/// `path` less its `.` components.
fn plain(path: &Path) -> PathBuf {
    path.components()
        .filter(|c| !matches!(c, std::path::Component::CurDir))
        .collect()
}

fn in_range<T: PartialOrd + fmt::Debug + fmt::Display>(
    field: &str,
    value: T,
    min: T,
    max: T,
) -> Result<(), FieldError> {
    // Written so that NaN fails too.
    if !(value >= min && value <= max) {
        return Err(FieldError::value(
            field,
            value,
            &format!("must be between {min} and {max}"),
        ));
    }
    Ok(())
}

fn non_empty_path(field: &str, path: &Path) -> Result<(), FieldError> {
    if path.as_os_str().is_empty() {
        return Err(FieldError::new(field, "empty path"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPEC: &str = r#"
name: t
source:
  generator:
    events: 10
enrichment:
  table:
    path: features.csv
  features: [a, b]
  defaults: {a: 1.5}
model:
  name: m
  version: "1"
  path: m.pt
sink:
  null: {}
dead_letter:
  file:
    path: dead.jsonl
"#;

    fn error(yaml: &str) -> FieldError {
        PipelineSpec::from_yaml(yaml).expect_err("must be refused")
    }

    #[test]
    fn a_minimal_spec_gets_its_defaults() {
        let spec = PipelineSpec::from_yaml(SPEC).unwrap();
        assert_eq!(spec.batching.max_records, 1024);
        assert_eq!(spec.model.max_batch_rows, 4096);
        assert_eq!(spec.enrichment.on_miss, MissPolicy::Default);
        assert_eq!(spec.partitions(), Some(1));
        assert_eq!(spec.sink.targets, vec![SinkTarget::Null]);
    }

    #[test]
    fn an_unknown_field_is_named() {
        let e = error(&SPEC.replace("  version: \"1\"", "  version: \"1\"\n  max_batch: 3"));
        assert_eq!(e.field, "model.max_batch");
        assert!(e.message.contains("unknown field"), "{e}");
        let e = error(&SPEC.replace("    events: 10", "    events: 10\n    evnts: 3"));
        assert_eq!(e.field, "source.generator.evnts");
        assert!(e.message.contains("unknown field"), "{e}");
    }

    #[test]
    fn a_subscription_per_region_is_resolved_by_the_executors_region() {
        let yaml = SPEC.replace(
            "  generator:\n    events: 10",
            "  pubsub:\n    project: proj\n    subscription: \"events-{region}\"",
        );
        let spec = PipelineSpec::from_yaml(&yaml).unwrap();
        let SourceSpec::Pubsub(east) = spec.clone().in_region("east").unwrap().source else {
            panic!("a pubsub source");
        };
        assert_eq!(
            east.subscription_path(),
            "projects/proj/subscriptions/events-east"
        );
        assert!(!east.per_region());
        let e = spec.in_region("").unwrap_err();
        assert_eq!(e.field, "source.pubsub.subscription");
        assert!(e.message.contains("--region"), "{e}");
        // What the region's name makes of it is checked as any name is.
        let e = error(&yaml.replace("events-{region}", "{region}-e!"));
        assert_eq!(e.field, "source.pubsub.subscription");
        // A subscription of its own is the same in every region.
        let plain = PipelineSpec::from_yaml(&yaml.replace("events-{region}", "events-all"))
            .unwrap()
            .in_region("")
            .unwrap();
        assert_eq!(plain.source_name(), "pubsub:events-all");
    }

    #[test]
    fn a_wrong_type_is_named() {
        let e = error(&SPEC.replace("events: 10", "events: ten"));
        assert_eq!(e.field, "source.generator.events");
    }

    #[test]
    fn a_bad_value_is_named_with_the_value() {
        let cases = [
            (
                SPEC.replace("name: t", "name: 'bad name'"),
                "name",
                "bad name",
            ),
            (
                SPEC.replace("events: 10", "events: 0"),
                "source.generator.events",
                "0",
            ),
            (
                SPEC.replace("events: 10", "poison_ratio: 1.5"),
                "source.generator.poison_ratio",
                "1.5",
            ),
            (
                format!("{SPEC}slo:\n  freshness_p90_secs: 0\n"),
                "slo.freshness_p90_secs",
                "0",
            ),
            (
                SPEC.replace("[a, b]", "[a, a]"),
                "enrichment.features[1]",
                "\"a\"",
            ),
            (
                SPEC.replace("{a: 1.5}", "{z: 1.5}"),
                "enrichment.defaults.z",
                "\"z\"",
            ),
            (
                SPEC.replace("version: \"1\"", "version: \"1\"\n  max_batch_rows: 0"),
                "model.max_batch_rows",
                "0",
            ),
            (
                SPEC.replace("version: \"1\"", "version: \"1\"\n  device: tpu"),
                "model.device",
                "tpu",
            ),
            (
                SPEC.replace("dead.jsonl", ""),
                "dead_letter.file.path",
                "empty",
            ),
            (
                format!("{SPEC}batching:\n  link_capacity: 0\n"),
                "batching.link_capacity",
                "0",
            ),
        ];
        for (yaml, field, value) in cases {
            let e = error(&yaml);
            assert_eq!(e.field, field, "{e}");
            assert!(e.message.contains(value), "{e}");
        }
    }

    #[test]
    fn a_source_takes_one_kind_and_a_sink_at_least_one() {
        let e = error(&SPEC.replace("  generator:\n    events: 10", "  {}"));
        assert_eq!(e.field, "source");
        let e = error(&SPEC.replace("  null: {}", "  {}"));
        assert_eq!(e.field, "sink");
        let spec = PipelineSpec::from_yaml(&SPEC.replace("  null: {}", "  null: {}\n  stdout: {}"))
            .unwrap();
        // In the fixed order of the kinds, whatever the order in the file.
        assert_eq!(
            spec.sink.targets,
            vec![SinkTarget::Stdout, SinkTarget::Null]
        );
        let e = error(&SPEC.replace(
            "  table:\n    path: features.csv",
            "  table:\n    path: features.csv\n  bigtable:\n    project: test-project\n    instance: i1\n    table: features",
        ));
        assert_eq!(e.field, "enrichment");
        let e = error(&SPEC.replace(
            "dead_letter:\n  file:\n    path: dead.jsonl",
            "dead_letter:\n  bigtable:\n    project: test-project\n    instance: i1\n    table: t1",
        ));
        assert_eq!(e.field, "dead_letter.bigtable");
        let e = error(&SPEC.replace(
            "  null: {}",
            "  bigtable:\n    project: test-project\n    instance: i1\n    table: ''",
        ));
        assert_eq!(e.field, "sink.bigtable.table");
    }

    #[test]
    fn the_sink_the_dead_letter_and_the_input_are_different_files() {
        let files = |source: &str, sink: &str, dead: &str| {
            SPEC.replace(
                "  generator:\n    events: 10",
                &format!("  file:\n    path: {source}"),
            )
            .replace("  null: {}", &format!("  file:\n    path: {sink}"))
            .replace("    path: dead.jsonl", &format!("    path: {dead}"))
        };
        let e = error(&files("in.jsonl", "./out/scored.jsonl", "out/scored.jsonl"));
        assert_eq!(e.field, "dead_letter.file.path");
        assert!(e.message.contains("must differ from sink.file.path"), "{e}");
        let e = error(&files("./in.jsonl", "in.jsonl", "dead.jsonl"));
        assert_eq!(e.field, "sink.file.path");
        assert!(e.message.contains("its own input"), "{e}");
        let e = error(&files("data/in.jsonl", "out.jsonl", "./data/./in.jsonl"));
        assert_eq!(e.field, "dead_letter.file.path");
        PipelineSpec::from_yaml(&files("in.jsonl", "out/scored.jsonl", "out/dead.jsonl"))
            .expect("three different files");
    }

    #[test]
    fn bigtable_columns_map_features_and_are_checked() {
        let bigtable = SPEC.replace(
            "  table:\n    path: features.csv",
            "  bigtable:\n    project: test-project\n    instance: i1\n    table: features",
        );
        let spec =
            PipelineSpec::from_yaml(&bigtable.replace("[a, b]", "[a, b]\n  columns: {b: b_v2}"))
                .unwrap();
        assert_eq!(spec.enrichment.qualifiers(), ["a", "b_v2"]);
        let e = error(&bigtable.replace("[a, b]", "[a, b]\n  columns: {c: x}"));
        assert_eq!(e.field, "enrichment.columns.c");
        let e = error(&bigtable.replace("[a, b]", "[a, b]\n  columns: {a: ''}"));
        assert_eq!(e.field, "enrichment.columns.a");
        let e = error(&SPEC.replace("[a, b]", "[a, b]\n  columns: {a: x}"));
        assert_eq!(e.field, "enrichment.columns", "a table has no columns");
        let e = error(&SPEC.replace("[a, b]", "[a, b]\n  on_lookup_failure: drop"));
        assert_eq!(e.field, "enrichment.on_lookup_failure");
    }

    #[test]
    fn the_connector_examples_are_valid() {
        for name in ["kafka-bigtable", "pubsub-bigtable"] {
            let path =
                Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../examples/{name}.yaml"));
            let spec = PipelineSpec::from_yaml(&std::fs::read_to_string(&path).unwrap()).unwrap();
            assert_eq!(spec.name, name);
        }
    }

    #[test]
    fn the_bundled_example_is_valid() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/local.yaml");
        let spec = PipelineSpec::from_yaml(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(spec.name, "local");
    }
}
