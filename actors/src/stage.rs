use std::future::Future;

use futures::future::BoxFuture;

use crate::checkpoint::CheckpointTracker;
use crate::dead_letter::{DeadLetter, ReasonCode};
use crate::record::{Origin, Position, SourceRecord, Traced};

/// What a stage produced from one batch: records for the next stage, and records it
/// rejected, which go to the dead letter.
pub struct Output<T> {
    pub items: Vec<T>,
    pub dead: Vec<DeadLetter>,
}

impl<T> Output<T> {
    pub fn with_capacity(capacity: usize) -> Self {
        Output {
            items: Vec::with_capacity(capacity),
            dead: Vec::new(),
        }
    }

    pub fn push(&mut self, item: T) {
        self.items.push(item);
    }

    pub fn reject(
        &mut self,
        stage: &'static str,
        origin: &Origin,
        reason: ReasonCode,
        message: impl Into<String>,
    ) {
        self.dead.push(DeadLetter {
            stage,
            reason,
            message: message.into(),
            origin: origin.clone(),
        });
    }
}

/// How a stage failed, classified by what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum StageError {
    /// An outside service is down: the stage tries the same batch again after a backoff,
    /// for as long as it takes, and the pipeline slows down behind it.
    #[error("{service} unavailable: {message}")]
    Unavailable {
        service: &'static str,
        message: String,
    },
    /// Our own bug or a broken invariant: the supervisor restarts the stage, which tries
    /// the batch again; past the restart budget the whole generation restarts.
    #[error("{0}")]
    Internal(String),
    /// Nothing can be done: the partition pipeline stops and reports it.
    #[error("fatal: {0}")]
    Fatal(String),
}

impl StageError {
    pub fn internal(message: impl std::fmt::Display) -> Self {
        StageError::Internal(message.to_string())
    }
}

/// How a stage, or a whole partition pipeline, ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExitStatus {
    /// Still running.
    Running,
    /// The input ended and everything was delivered.
    Success,
    /// Stopped on request, after draining what was in flight.
    Stopped,
    /// Failed past its restart budget, or fatally.
    Failed(String),
}

/// A stage between the source and the end of the pipeline: decode, enrich, infer, or a
/// sink (whose `Out` is `()`).
pub trait Stage: Send + 'static {
    type In: Traced + Send + Sync + 'static;
    type Out: Send + 'static;

    fn name(&self) -> &'static str;

    /// Handles one batch. Records that cannot be processed go to `out.dead` with their
    /// reason; an `Err` means the stage itself failed and the batch will be tried again by
    /// a fresh instance of the stage.
    fn handle(
        &mut self,
        batch: &[Self::In],
        out: &mut Output<Self::Out>,
    ) -> impl Future<Output = Result<(), StageError>> + Send;

    /// Called once when the input has ended, before the stage's outputs are closed.
    fn finish(&mut self) -> impl Future<Output = Result<(), StageError>> + Send {
        async { Ok(()) }
    }
}

/// What a source read: records in position order, and the position to resume from once
/// they are all done. An empty batch says that nothing came within the source's own wait:
/// the runner gives it the checkpoint again and asks anew.
pub struct SourceBatch<T> {
    pub items: Vec<T>,
    pub end: Position,
}

impl<T: SourceRecord> SourceBatch<T> {
    /// Opens the batch in the partition's tracker and stamps its records with the batch's
    /// sequence number: what the source runner does with every batch.
    pub fn open(self, tracker: &CheckpointTracker) -> Vec<T> {
        let ack = tracker.open(self.items.len(), self.end);
        let mut items = self.items;
        for item in &mut items {
            item.stamp(ack);
        }
        items
    }
}

/// The first stage of a partition pipeline. A source reads; it never touches the
/// checkpoint tracker: it starts from the position it is given, the runner opens each of
/// its batches, and [`Source::on_checkpoint`] tells it what has been delivered.
pub trait Source: Send + 'static {
    type Out: SourceRecord;

    fn name(&self) -> &'static str;

    /// The next batch; `Ok(None)` when a bounded source is exhausted.
    fn next_batch(
        &mut self,
    ) -> impl Future<Output = Result<Option<SourceBatch<Self::Out>>, StageError>> + Send;

    /// The partition's checkpoint, given before every read: everything before it reached
    /// the sink or the dead letter. A source that acts on it (Pub/Sub acknowledges its
    /// messages) does it here; one that must act while nothing comes returns an empty
    /// batch after a wait of its own.
    fn on_checkpoint(&mut self, committed: Option<Position>) {
        let _ = committed;
    }

    /// What must still be done once the partition stopped and its last records were
    /// delivered, after the source itself is gone (Pub/Sub acknowledges what the last
    /// checkpoints passed, and waits for the acknowledgements to be sent). Taken once, when
    /// the source is given to its runner.
    fn finisher(&mut self) -> Option<Box<dyn SourceFinisher>> {
        None
    }
}

/// The last step of a stopped source: see [`Source::finisher`].
pub trait SourceFinisher: Send + Sync + 'static {
    /// `committed`: the partition's final checkpoint.
    fn finish(&self, committed: Option<Position>) -> BoxFuture<'_, ()>;
}
