//! The enrichment stage: one batched lookup per batch for the customers missing from the
//! cache, with a timeout and retries, then the miss policy.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use mirador_actors::{Output, ReasonCode, Stage, StageError};
use mirador_proto::retry::Backoff;

use super::{FeatureCache, FeatureLookup, Features};
use crate::event::{DecodedRecord, EnrichedRecord, FeatureSource};
use crate::spec::{EnrichmentSpec, LookupFailurePolicy, MissPolicy};

/// Between attempts at a feature lookup: jittered, as every partition may fail at once.
const LOOKUP_RETRY: Backoff =
    Backoff::new(Duration::from_millis(20), Duration::from_millis(5120)).with_jitter();

const STAGE: &str = "enrich";

/// How the stage looks features up and what it does when it finds none.
#[derive(Clone, Copy, Debug)]
pub struct LookupPolicy {
    pub timeout: Duration,
    pub retries: u32,
    pub on_miss: MissPolicy,
    pub on_failure: LookupFailurePolicy,
}

impl LookupPolicy {
    pub fn from_spec(spec: &EnrichmentSpec) -> Self {
        LookupPolicy {
            timeout: Duration::from_millis(spec.timeout_ms),
            retries: spec.retries,
            on_miss: spec.on_miss,
            on_failure: spec.on_lookup_failure,
        }
    }
}

pub struct EnrichStage {
    lookup: Arc<dyn FeatureLookup>,
    cache: FeatureCache,
    defaults: Features,
    policy: LookupPolicy,
}

/// Why the customers of a batch have no features: unknown, or the lookup failed.
enum Unresolved {
    Unknown,
    Failed(String),
}

impl EnrichStage {
    pub fn new(
        lookup: Arc<dyn FeatureLookup>,
        cache: FeatureCache,
        defaults: Features,
        policy: LookupPolicy,
    ) -> Self {
        EnrichStage {
            lookup,
            cache,
            defaults,
            policy,
        }
    }

    /// Looks `keys` up, retrying with backoff and jitter. After the last retry, the error:
    /// the stage either waits for the store (`Unavailable`) or applies the miss policy.
    async fn lookup_with_retries(&self, keys: &[&str]) -> Result<Vec<Option<Features>>, String> {
        let timeout = self.policy.timeout;
        let mut attempt = 0;
        loop {
            let error = match tokio::time::timeout(timeout, self.lookup.lookup(keys)).await {
                Ok(Ok(values)) if values.len() == keys.len() => return Ok(values),
                Ok(Ok(values)) => format!("{} values for {} keys", values.len(), keys.len()),
                Ok(Err(error)) => error.to_string(),
                Err(_) => format!("no answer within {timeout:?}"),
            };
            if attempt >= self.policy.retries {
                return Err(format!("{error} after {} attempts", attempt + 1));
            }
            tracing::warn!(stage = STAGE, attempt, %error, "feature lookup failed, retrying");
            tokio::time::sleep(LOOKUP_RETRY.delay(attempt)).await;
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
        // Set when the lookup failed for good and the policy says not to wait: the missing
        // customers stay unresolved (and uncached).
        let mut failure = None;
        if !missing.is_empty() {
            match self.lookup_with_retries(&missing).await {
                Ok(values) => {
                    for (key, value) in missing.into_iter().zip(values) {
                        self.cache.insert(key, value.clone());
                        resolved.insert(key, Some(value));
                    }
                }
                Err(message) if self.policy.on_failure == LookupFailurePolicy::MissPolicy => {
                    tracing::warn!(stage = STAGE, %message, customers = missing.len(),
                        "feature lookup failed for good, applying the miss policy");
                    failure = Some(message);
                }
                Err(message) => {
                    return Err(StageError::Unavailable {
                        service: "feature lookup",
                        message,
                    })
                }
            }
        }
        for record in batch {
            let features = match resolved.get(record.event.customer_id.as_str()) {
                Some(Some(Some(features))) => Ok(features.clone()),
                Some(Some(None)) => Err(Unresolved::Unknown),
                _ => Err(Unresolved::Failed(failure.clone().unwrap_or_default())),
            };
            let (features, feature_source) = match (features, self.policy.on_miss) {
                (Ok(features), _) => (features, FeatureSource::Lookup),
                (Err(_), MissPolicy::Default) => (self.defaults.clone(), FeatureSource::Default),
                (Err(Unresolved::Unknown), MissPolicy::DeadLetter) => {
                    out.reject(
                        STAGE,
                        &record.origin,
                        ReasonCode::FeaturesNotFound,
                        format!("no features for customer {:?}", record.event.customer_id),
                    );
                    continue;
                }
                (Err(Unresolved::Failed(message)), MissPolicy::DeadLetter) => {
                    out.reject(
                        STAGE,
                        &record.origin,
                        ReasonCode::LookupFailed,
                        format!(
                            "features of customer {:?}: {message}",
                            record.event.customer_id
                        ),
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
