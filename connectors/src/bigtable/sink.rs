//! An upsert per customer: the latest scores, the model and the last event.

use bigtable_rs::bigtable::BigTable;
use bigtable_rs::google::bigtable::v2::mutate_rows_request::Entry;
use bigtable_rs::google::bigtable::v2::mutation::{self, SetCell};
use bigtable_rs::google::bigtable::v2::{MutateRowsRequest, Mutation};
use futures::future::BoxFuture;
use mirador_actors::StageError;

use super::BigtableSpec;
use crate::event::{format_millis, ScoredRecord};
use crate::sinks::{EncodeContext, RecordSink, Refused};

/// Attempts at the entries of one batch that the table refused before the batch fails.
const ENTRY_ATTEMPTS: usize = 3;
/// The status of an entry that is wrong in itself (a row key too long): no retry mends it.
const INVALID_ARGUMENT: i32 = 3;

/// Writes one row per customer (row key: the customer id). Every cell's timestamp is the
/// event's time, so writing the same record again writes the same cells: a replay after a
/// crash leaves the table as it was.
pub struct BigtableSink {
    client: BigTable,
    table_name: String,
    family: String,
}

impl BigtableSink {
    pub async fn connect(spec: &BigtableSpec) -> anyhow::Result<Self> {
        let client = super::connect(spec, false).await?;
        Ok(BigtableSink {
            table_name: client.get_full_table_name(&spec.table),
            client,
            family: spec.family.clone(),
        })
    }

    fn entry(&self, record: &ScoredRecord) -> Entry {
        // Bigtable keeps milliseconds: the timestamp must be a multiple of 1000 µs.
        let timestamp_micros = record.event.event_time.max(0) * 1000;
        let cell = |qualifier: &str, value: String| Mutation {
            mutation: Some(mutation::Mutation::SetCell(SetCell {
                family_name: self.family.clone(),
                column_qualifier: qualifier.as_bytes().to_vec(),
                timestamp_micros,
                value: value.into_bytes(),
            })),
        };
        let event = &record.event;
        let mut mutations = vec![
            cell(
                "model",
                format!("{}:{}", record.model.name, record.model.version),
            ),
            cell("event_id", event.event_id.clone()),
            cell("event_type", event.event_type.as_str().to_string()),
            cell("event_time", format_millis(event.event_time)),
        ];
        for (i, score) in record.scores.iter().enumerate() {
            let qualifier = if i == 0 {
                "score".to_string()
            } else {
                format!("score_{i}")
            };
            mutations.push(cell(&qualifier, score.to_string()));
        }
        Entry {
            row_key: event.customer_id.as_bytes().to_vec(),
            mutations,
            idempotency: None,
        }
    }
}

impl RecordSink<ScoredRecord> for BigtableSink {
    fn write<'a>(
        &'a self,
        batch: &'a [ScoredRecord],
        _context: &'a EncodeContext,
    ) -> BoxFuture<'a, Result<Refused, StageError>> {
        Box::pin(async move {
            let unavailable = |message: String| StageError::Unavailable {
                service: "bigtable sink",
                message,
            };
            let mut entries: Vec<Entry> = batch.iter().map(|r| self.entry(r)).collect();
            // The index in `batch` of each entry still to write.
            let mut indices: Vec<usize> = (0..batch.len()).collect();
            let mut refused = Refused::new();
            let mut client = self.client.clone();
            for attempt in 1..=ENTRY_ATTEMPTS {
                let request = MutateRowsRequest {
                    table_name: self.table_name.clone(),
                    entries: entries.clone(),
                    ..MutateRowsRequest::default()
                };
                let mut stream = client
                    .mutate_rows(request)
                    .await
                    .map_err(|e| unavailable(format!("mutate_rows: {e}")))?;
                // Every entry's status, in any order over several messages; only the
                // refused ones are sent again.
                let mut failed = Vec::new();
                let mut last_error = String::new();
                while let Some(response) = stream
                    .message()
                    .await
                    .map_err(|e| unavailable(format!("mutate_rows: {e}")))?
                {
                    for entry in response.entries {
                        let at = entry.index as usize;
                        match entry.status.filter(|s| s.code != 0) {
                            Some(status) if status.code == INVALID_ARGUMENT => {
                                if let Some(&index) = indices.get(at) {
                                    refused.push((
                                        index,
                                        format!("bigtable refused the row: {}", status.message),
                                    ));
                                }
                            }
                            Some(status) => {
                                failed.push(at);
                                last_error = format!("code {}: {}", status.code, status.message);
                            }
                            None => {}
                        }
                    }
                }
                if failed.is_empty() {
                    return Ok(refused);
                }
                tracing::warn!(attempt, refused = failed.len(), error = %last_error,
                    "bigtable refused entries, retrying them");
                indices = failed
                    .iter()
                    .filter_map(|&i| indices.get(i).copied())
                    .collect();
                entries = failed
                    .into_iter()
                    .filter_map(|i| entries.get(i).cloned())
                    .collect();
                if attempt == ENTRY_ATTEMPTS {
                    return Err(unavailable(format!(
                        "{} entries refused after {ENTRY_ATTEMPTS} attempts: {last_error}",
                        entries.len()
                    )));
                }
            }
            Ok(refused)
        })
    }
}
