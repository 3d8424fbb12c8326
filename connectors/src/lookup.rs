//! Feature lookups: what enrichment asks of a store of customer features.

use std::sync::Arc;

use futures::future::BoxFuture;

/// Customer features, in the order of the pipeline's `enrichment.features`.
pub type Features = Arc<[f32]>;

#[derive(Debug, Clone, thiserror::Error)]
pub enum LookupError {
    /// The store did not answer in time or failed; worth retrying.
    #[error("lookup unavailable: {0}")]
    Unavailable(String),
}

/// A batched feature lookup: the embedded CSV table, or Bigtable, behind one trait.
pub trait FeatureLookup: Send + Sync + 'static {
    /// Features for each key, in the order of `keys`; `None` for an unknown customer.
    fn lookup<'a>(
        &'a self,
        keys: &'a [&'a str],
    ) -> BoxFuture<'a, Result<Vec<Option<Features>>, LookupError>>;
}
