//! The enrichment stage: one batched lookup per batch for the customers missing from the
//! cache, with a timeout and retries, then the miss policy.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use mirador_actors::{Output, ReasonCode, Stage, StageError};
use rand::Rng;

use super::{FeatureCache, FeatureLookup, Features};
use crate::event::{DecodedRecord, EnrichedRecord, FeatureSource};
use crate::spec::MissPolicy;

const STAGE: &str = "enrich";

pub struct EnrichStage {
    lookup: Arc<dyn FeatureLookup>,
    cache: FeatureCache,
    on_miss: MissPolicy,
    defaults: Features,
    timeout: Duration,
    retries: u32,
}

impl EnrichStage {
    pub fn new(
        lookup: Arc<dyn FeatureLookup>,
        cache: FeatureCache,
        on_miss: MissPolicy,
        defaults: Features,
        timeout: Duration,
        retries: u32,
    ) -> Self {
        EnrichStage {
            lookup,
            cache,
            on_miss,
            defaults,
            timeout,
            retries,
        }
    }

    /// Looks `keys` up, retrying with backoff and jitter. An `Err` after the last retry
    /// fails the stage: the batch is tried again after a restart, never dropped.
    async fn lookup_with_retries(
        &self,
        keys: &[&str],
    ) -> Result<Vec<Option<Features>>, StageError> {
        let mut attempt = 0;
        loop {
            let error = match tokio::time::timeout(self.timeout, self.lookup.lookup(keys)).await {
                Ok(Ok(values)) if values.len() == keys.len() => return Ok(values),
                Ok(Ok(values)) => format!("{} values for {} keys", values.len(), keys.len()),
                Ok(Err(error)) => error.to_string(),
                Err(_) => format!("no answer within {:?}", self.timeout),
            };
            if attempt >= self.retries {
                return Err(StageError::Unavailable {
                    service: "feature lookup",
                    message: format!("{error} after {} attempts", attempt + 1),
                });
            }
            let backoff = Duration::from_millis(20 << attempt.min(8));
            let jitter = rand::rng().random_range(0..=backoff.as_millis() as u64 / 2);
            tracing::warn!(stage = STAGE, attempt, %error, "feature lookup failed, retrying");
            tokio::time::sleep(backoff + Duration::from_millis(jitter)).await;
            attempt += 1;
        }
    }
}

impl Stage for EnrichStage {
    type In = DecodedRecord;
    type Out = EnrichedRecord;

    fn name(&self) -> &'static str {
        STAGE
    }

    async fn handle(
        &mut self,
        batch: &[DecodedRecord],
        out: &mut Output<EnrichedRecord>,
    ) -> Result<(), StageError> {
        // Each distinct customer of the batch is resolved once: from the cache, else by
        // one lookup for all the missing ones. `None`: not resolved yet.
        let mut resolved: HashMap<&str, Option<Option<Features>>> =
            HashMap::with_capacity(batch.len());
        let mut missing: Vec<&str> = Vec::new();
        let mut hits = 0u64;
        for record in batch {
            let key = record.event.customer_id.as_str();
            let entry = resolved.entry(key).or_insert_with(|| {
                let cached = self.cache.get(key);
                if cached.is_none() {
                    missing.push(key);
                }
                cached
            });
            hits += u64::from(entry.is_some());
        }
        self.cache.count(hits, batch.len() as u64 - hits);
        if !missing.is_empty() {
            let values = self.lookup_with_retries(&missing).await?;
            for (key, value) in missing.into_iter().zip(values) {
                self.cache.insert(key, value.clone());
                resolved.insert(key, Some(value));
            }
        }
        for record in batch {
            let features = resolved
                .get(record.event.customer_id.as_str())
                .cloned()
                .flatten()
                .flatten();
            let (features, feature_source) = match (features, self.on_miss) {
                (Some(features), _) => (features, FeatureSource::Lookup),
                (None, MissPolicy::Default) => (self.defaults.clone(), FeatureSource::Default),
                (None, MissPolicy::DeadLetter) => {
                    out.reject(
                        STAGE,
                        &record.origin,
                        ReasonCode::FeaturesNotFound,
                        format!("no features for customer {:?}", record.event.customer_id),
                    );
                    continue;
                }
            };
            out.push(EnrichedRecord {
                origin: record.origin.clone(),
                event: record.event.clone(),
                features,
                feature_source,
            });
        }
        Ok(())
    }
}
