//! A byte-capped TTL cache of customer features, shared by every partition of a pipeline.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::Features;

/// Per-entry bookkeeping moka and the map spend beyond the key and the values.
const ENTRY_OVERHEAD_BYTES: u32 = 96;

#[derive(Clone)]
pub struct FeatureCache {
    /// `None` remembers an unknown customer, so that misses are not looked up again and
    /// again within the TTL.
    cache: moka::sync::Cache<Arc<str>, Option<Features>>,
    hits: Arc<AtomicU64>,
    misses: Arc<AtomicU64>,
}

impl FeatureCache {
    pub fn new(max_bytes: u64, ttl: Duration) -> Self {
        let cache = moka::sync::Cache::builder()
            .max_capacity(max_bytes)
            .weigher(|key: &Arc<str>, value: &Option<Features>| {
                let values = value.as_ref().map_or(0, |v| v.len() * 4) as u32;
                key.len() as u32 + values + ENTRY_OVERHEAD_BYTES
            })
            .time_to_live(ttl)
            .build();
        FeatureCache {
            cache,
            hits: Arc::default(),
            misses: Arc::default(),
        }
    }

    /// `Some(entry)` on a hit; `None` when the key must be looked up.
    pub fn get(&self, key: &str) -> Option<Option<Features>> {
        self.cache.get(key)
    }

    pub fn insert(&self, key: &str, value: Option<Features>) {
        self.cache.insert(key.into(), value);
    }

    /// Counted per batch by the enrichment stage.
    pub fn count(&self, hits: u64, misses: u64) {
        self.hits.fetch_add(hits, Ordering::Relaxed);
        self.misses.fetch_add(misses, Ordering::Relaxed);
    }

    /// (hits, misses) so far.
    pub fn counts(&self) -> (u64, u64) {
        (
            self.hits.load(Ordering::Relaxed),
            self.misses.load(Ordering::Relaxed),
        )
    }

    /// Bytes held, by the weigher's account; settles after pending maintenance.
    pub fn weighted_size(&self) -> u64 {
        self.cache.run_pending_tasks();
        self.cache.weighted_size()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stays_under_its_byte_cap() {
        let cache = FeatureCache::new(64 * 1024, Duration::from_secs(60));
        for i in 0..10_000 {
            cache.insert(&format!("c{i:06}"), Some(vec![0.0; 7].into()));
        }
        assert!(
            cache.weighted_size() <= 64 * 1024,
            "{}",
            cache.weighted_size()
        );
        assert!(cache.weighted_size() > 0);
    }

    #[test]
    fn remembers_unknown_customers() {
        let cache = FeatureCache::new(1 << 20, Duration::from_secs(60));
        assert_eq!(cache.get("nobody"), None);
        cache.insert("nobody", None);
        assert_eq!(cache.get("nobody"), Some(None));
    }
}
