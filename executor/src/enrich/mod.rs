//! Enrichment: each event joined with its customer's features.

pub mod cache;
pub mod stage;
pub mod table;

use std::sync::Arc;

use futures::future::BoxFuture;

pub use cache::FeatureCache;
pub use stage::{EnrichStage, LookupPolicy};
pub use table::CsvFeatureTable;

/// Customer features, in the order of the pipeline's `enrichment.features`.
pub type Features = Arc<[f32]>;

#[derive(Debug, Clone, thiserror::Error)]
pub enum LookupError {
    /// The store did not answer in time or failed; worth retrying.
    #[error("lookup unavailable: {0}")]
    Unavailable(String),
}

/// A batched feature lookup: the embedded table today, Bigtable behind the same trait.
pub trait FeatureLookup: Send + Sync + 'static {
    /// Features for each key, in the order of `keys`; `None` for an unknown customer.
    fn lookup<'a>(
        &'a self,
        keys: &'a [&'a str],
    ) -> BoxFuture<'a, Result<Vec<Option<Features>>, LookupError>>;
}
