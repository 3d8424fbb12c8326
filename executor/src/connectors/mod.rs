//! Connectors to outside systems, one folder each.

pub mod bigtable;
pub mod kafka;
pub mod pubsub;
