//! Inference: batched forward passes of a TorchScript model through libtorch.

pub mod batcher;
pub mod model;
pub mod scoring;
pub mod stage;

pub use batcher::{BatcherClient, BatcherSnapshot, BatcherStats, InferenceBatcher, InferencePool};
pub use model::{gpu_available, ModelError, Scorer, Scores, TorchModel};
pub use scoring::{Scoring, ScoringUnavailable};
pub use stage::{InferStage, EVENT_FEATURES};
