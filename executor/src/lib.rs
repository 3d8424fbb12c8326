//! The Mirador executor: partition pipelines with their connectors and stages.

pub mod agent;
pub mod checkpoint_store;
pub mod connectors;
pub mod decode;
pub mod enrich;
pub mod event;
pub mod infer;
pub mod pipeline;
pub mod run;
pub mod sinks;
pub mod sources;
/// Pipeline specs, from their own crate (which coordinators share without libtorch).
pub use mirador_spec as spec;

pub use pipeline::{PartitionFactory, PipelineResources};
pub use run::{run_pipeline, PipelineRun, RunOptions, RunReport};
pub use spec::{FieldError, PipelineSpec};
