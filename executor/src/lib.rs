//! The Mirador executor: partition pipelines, their stages and the node agent, over the
//! connectors of `mirador-connectors`.

pub mod agent;
pub mod checkpoint_store;
pub mod decode;
pub mod enrich;
pub mod infer;
pub mod metrics;
pub mod node;
pub mod pipeline;
pub mod progress;
pub mod run;
pub mod watch;
/// The connectors (sources, lookups, sinks), from their own crate (no libtorch).
pub use mirador_connectors as connectors;
pub use mirador_connectors::{event, sinks};
/// Pipeline specs, from their own crate (which coordinators share without libtorch).
pub use mirador_spec as spec;

pub use pipeline::{PartitionFactory, PipelineResources};
pub use run::{run_pipeline, PipelineRun, RunOptions, RunReport};
pub use spec::{FieldError, PipelineSpec};
