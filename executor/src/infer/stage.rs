//! The inference stage: turns enriched events into feature rows and has them scored
//! through a [`Scoring`] (the node's batcher for the model, or a remote pool).

use std::sync::Arc;

use mirador_actors::{Output, ReasonCode, Stage, StageError};

use super::scoring::Scoring;
use crate::event::{EnrichedRecord, EventType, ModelId, ScoredRecord};

const STAGE: &str = "infer";

/// Features taken from the event itself: the event type one-hot, then `value`. The
/// customer features follow, in the order of `enrichment.features` (models/README.md).
pub const EVENT_FEATURES: usize = EventType::ALL.len() + 1;

pub struct InferStage {
    client: Box<dyn Scoring>,
    model: Arc<ModelId>,
}

impl InferStage {
    pub fn new(client: impl Scoring, model: Arc<ModelId>) -> Self {
        InferStage {
            client: Box::new(client),
            model,
        }
    }
}

/// Appends the model input row of one record.
pub fn push_row(record: &EnrichedRecord, rows: &mut Vec<f32>) {
    let start = rows.len();
    rows.resize(start + EVENT_FEATURES, 0.0);
    rows[start + record.event.event_type.index()] = 1.0;
    rows[start + EventType::ALL.len()] = record.event.value as f32;
    rows.extend_from_slice(&record.features);
}

impl Stage for InferStage {
    type In = EnrichedRecord;
    type Out = ScoredRecord;

    fn name(&self) -> &'static str {
        STAGE
    }

    async fn handle(
        &mut self,
        batch: &[EnrichedRecord],
        out: &mut Output<ScoredRecord>,
    ) -> Result<(), StageError> {
        let width = self.client.input_width();
        let mut rows = Vec::with_capacity(batch.len() * width);
        let mut scored = Vec::with_capacity(batch.len());
        for record in batch {
            if EVENT_FEATURES + record.features.len() != width {
                out.reject(
                    STAGE,
                    &record.origin,
                    ReasonCode::ModelError,
                    format!(
                        "{} features, the model takes {}",
                        EVENT_FEATURES + record.features.len(),
                        width
                    ),
                );
                continue;
            }
            push_row(record, &mut rows);
            scored.push(record);
        }
        if scored.is_empty() {
            return Ok(());
        }
        let result = self
            .client
            .score(rows, scored.len())
            .await
            .map_err(StageError::internal)?;
        let scores = match result {
            Ok(scores) => scores,
            Err(error) => {
                for record in scored {
                    out.reject(
                        STAGE,
                        &record.origin,
                        ReasonCode::ModelError,
                        error.to_string(),
                    );
                }
                return Ok(());
            }
        };
        for (record, values) in scored.into_iter().zip(scores.values.chunks(scores.outputs)) {
            if values.iter().all(|v| v.is_finite()) {
                out.push(ScoredRecord {
                    origin: record.origin.clone(),
                    event: record.event.clone(),
                    features: record.features.clone(),
                    feature_source: record.feature_source,
                    model: self.model.clone(),
                    scores: values.to_vec(),
                });
            } else {
                out.reject(
                    STAGE,
                    &record.origin,
                    ReasonCode::ModelError,
                    format!("model returned a non-finite score {values:?}"),
                );
            }
        }
        Ok(())
    }
}
