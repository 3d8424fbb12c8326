//! Enrichment: each event joined with its customer's features.

pub mod cache;
pub mod stage;

pub use cache::FeatureCache;
pub use mirador_connectors::file::CsvFeatureTable;
pub use mirador_connectors::lookup::{FeatureLookup, Features, LookupError};
pub use stage::{EnrichStage, LookupPolicy};
