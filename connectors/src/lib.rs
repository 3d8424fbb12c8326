//! Mirador's connectors: where records come from, where features are looked up, where
//! scored records and dead letters go. One folder per connector, each owning its client,
//! its source, lookup and sink, and its tests; [`registry`] is the one place that maps a
//! spec to them. A connector to an outside service is a cargo feature (all on by default).
//! Nothing here links libtorch: coordinators use the registry to count partitions.

pub mod event;
pub mod lookup;
pub mod registry;
pub mod sinks;

#[cfg(feature = "bigtable")]
pub mod bigtable;
pub mod file;
pub mod generator;
#[cfg(feature = "kafka")]
pub mod kafka;
#[cfg(feature = "pubsub")]
pub mod pubsub;

/// Pipeline specs, from their own crate (pure: serde and validation).
pub use mirador_spec as spec;
