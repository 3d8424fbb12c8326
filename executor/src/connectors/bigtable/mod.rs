//! Google Cloud Bigtable: customer features for enrichment, and an upsert per customer as
//! a sink.

mod admin;
mod config;
mod lookup;
mod sink;

pub use admin::{create_table, load_features};
pub use config::BigtableSpec;
pub use lookup::BigtableLookup;
pub use sink::BigtableSink;
