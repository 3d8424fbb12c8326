//! The stage framework of Mirador.
//!
//! A partition pipeline is a chain of stages (source, then transforms, then sinks) plus a
//! dead-letter stage. Each stage runs as a ractor actor supervised by its
//! [`PartitionPipeline`]. Records travel in batches over bounded [`link`]s, never through
//! actor mailboxes, so a slow stage slows the one before it all the way back to the
//! source. Every record carries its [`Origin`]; a checkpoint advances only once every
//! record before it has been acknowledged by a sink or by the dead letter
//! ([`CheckpointTracker`]).

pub mod checkpoint;
pub mod dead_letter;
pub mod link;
pub mod pipeline;
pub mod record;
pub mod runner;
pub mod stage;
pub mod stats;

pub use checkpoint::{CheckpointStore, CheckpointTracker};
pub use dead_letter::{DeadLetter, ReasonCode};
pub use link::{link, LinkReceiver, LinkSender};
pub use pipeline::{
    Generation, GenerationFactory, PipelineArgs, PipelineHandle, PipelineSnapshot, RestartPolicy,
    StartError,
};
pub use record::{Origin, Position, SourceRecord, Traced};
pub use runner::{SourceRunner, StageRunner, StageSlot};
pub use stage::{ExitStatus, Output, Source, SourceBatch, SourceFinisher, Stage, StageError};
pub use stats::{SourceEnd, StageSnapshot, StageStats};
