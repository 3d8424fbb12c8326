use std::time::Instant;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// A place in a source that a partition can resume from: a Kafka offset, a byte offset
/// in a file, a generator sequence number.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Position {
    pub partition: u32,
    pub offset: u64,
}

/// Where a record came from: what a dead letter needs to point back at it and what the
/// checkpoint needs to know when it is done.
#[derive(Clone, Debug)]
pub struct Origin {
    /// The source batch this record belongs to, in its partition's [`crate::CheckpointTracker`].
    pub ack: u64,
    /// The record's own coordinates in the source.
    pub position: Position,
    /// The original bytes, untouched.
    pub payload: Bytes,
    /// When the source read it; the end-to-end latency is measured from here.
    pub read_at: Instant,
}

/// A record as a source reads it: the source runner stamps it with its batch's sequence
/// number in the partition's [`crate::CheckpointTracker`].
pub trait SourceRecord: Send + 'static {
    fn stamp(&mut self, ack: u64);
}

impl SourceRecord for Origin {
    fn stamp(&mut self, ack: u64) {
        self.ack = ack;
    }
}

/// Any record that can be traced back to its origin.
pub trait Traced {
    fn origin(&self) -> &Origin;

    /// When the event happened, ms since the Unix epoch, once decoded: what the data
    /// freshness of its partition is measured from.
    fn event_time_ms(&self) -> Option<i64> {
        None
    }
}

impl Traced for Origin {
    fn origin(&self) -> &Origin {
        self
    }
}
