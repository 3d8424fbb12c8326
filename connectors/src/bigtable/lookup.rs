//! Customer features from Bigtable: one ReadRows per batch of keys.

use std::collections::HashMap;

use bigtable_rs::bigtable::BigTable;
use bigtable_rs::google::bigtable::v2::row_filter::{Chain, Filter};
use bigtable_rs::google::bigtable::v2::{ReadRowsRequest, RowFilter, RowSet};
use futures::future::BoxFuture;

use super::BigtableSpec;
use crate::lookup::{FeatureLookup, Features, LookupError};

/// Reads a row per customer (row key: the customer id) and a cell per feature (qualifier:
/// the feature's column, by default its name; value: the number as decimal text, as
/// `cbt set` writes it). A feature the row lacks, or whose value is not a number, takes
/// its default.
pub struct BigtableLookup {
    client: BigTable,
    table_name: String,
    family_filter: String,
    /// The column qualifier of each feature, in feature order.
    qualifiers: Vec<Vec<u8>>,
    defaults: Features,
}

impl BigtableLookup {
    pub async fn connect(
        spec: &BigtableSpec,
        qualifiers: Vec<String>,
        defaults: Features,
    ) -> anyhow::Result<Self> {
        let client = super::connect(spec, true).await?;
        Ok(BigtableLookup {
            table_name: client.get_full_table_name(&spec.table),
            client,
            family_filter: spec.family.replace('.', "\\."),
            qualifiers: qualifiers.into_iter().map(String::into_bytes).collect(),
            defaults,
        })
    }

    fn request(&self, keys: &[&str]) -> ReadRowsRequest {
        let filter = |filter| RowFilter {
            filter: Some(filter),
        };
        ReadRowsRequest {
            table_name: self.table_name.clone(),
            rows: Some(RowSet {
                row_keys: keys.iter().map(|k| k.as_bytes().to_vec()).collect(),
                row_ranges: Vec::new(),
            }),
            filter: Some(filter(Filter::Chain(Chain {
                filters: vec![
                    filter(Filter::FamilyNameRegexFilter(self.family_filter.clone())),
                    filter(Filter::CellsPerColumnLimitFilter(1)),
                ],
            }))),
            ..ReadRowsRequest::default()
        }
    }
}

impl FeatureLookup for BigtableLookup {
    fn lookup<'a>(
        &'a self,
        keys: &'a [&'a str],
    ) -> BoxFuture<'a, Result<Vec<Option<Features>>, LookupError>> {
        Box::pin(async move {
            let mut client = self.client.clone();
            let rows = client
                .read_rows(self.request(keys))
                .await
                .map_err(|e| LookupError::Unavailable(format!("bigtable read_rows: {e}")))?;
            let mut found: HashMap<Vec<u8>, Features> = HashMap::with_capacity(rows.len());
            for (key, cells) in rows {
                let mut values = self.defaults.to_vec();
                for cell in cells {
                    let value = std::str::from_utf8(&cell.value)
                        .ok()
                        .and_then(|text| text.trim().parse::<f32>().ok())
                        .filter(|v| v.is_finite());
                    let Some(value) = value else { continue };
                    // Two features may read one column.
                    for (index, qualifier) in self.qualifiers.iter().enumerate() {
                        if *qualifier == cell.qualifier {
                            values[index] = value;
                        }
                    }
                }
                found.insert(key, values.into());
            }
            Ok(keys
                .iter()
                .map(|k| found.get(k.as_bytes()).cloned())
                .collect())
        })
    }
}
