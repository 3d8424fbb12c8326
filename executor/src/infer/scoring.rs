//! The seam between the inference stage and whatever scores its rows: the node's local
//! batcher ([`super::BatcherClient`]) today, a remote inference pool next.

use futures::future::BoxFuture;

use super::model::{ModelError, Scores};

/// The scorer cannot be reached: the stage fails and its generation restarts, and the
/// batch is retried. Not the records' fault, so nothing is dead-lettered for it.
#[derive(Debug, Clone, thiserror::Error)]
#[error("scoring is unavailable: {0}")]
pub struct ScoringUnavailable(pub String);

/// Scores batches of feature rows for one partition's inference stage.
pub trait Scoring: Send + Sync + 'static {
    /// Features per row that the model takes.
    fn input_width(&self) -> usize;

    /// Scores `n` rows of `input_width()` values each, row after row. The outer error
    /// means the scorer is unavailable; the inner one that the model failed on these
    /// rows, which then go to the dead letter.
    fn score(
        &self,
        rows: Vec<f32>,
        n: usize,
    ) -> BoxFuture<'_, Result<Result<Scores, ModelError>, ScoringUnavailable>>;
}
