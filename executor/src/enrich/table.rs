//! The embedded feature table: a CSV file loaded at start.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use futures::future::BoxFuture;

use super::{FeatureLookup, Features, LookupError};

/// Customer features loaded from a CSV file whose first column is the customer id and
/// whose header names the other columns.
pub struct CsvFeatureTable {
    rows: HashMap<Box<str>, Features>,
}

impl CsvFeatureTable {
    /// Loads the columns `features`, in that order. An unknown column, a row of the wrong
    /// width or a value that is not a number is an error naming the line.
    pub fn load(path: &Path, features: &[String]) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            anyhow::anyhow!("enrichment.table.path: cannot read {}: {e}", path.display())
        })?;
        Self::parse(&text, features).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
    }

    pub fn parse(text: &str, features: &[String]) -> anyhow::Result<Self> {
        let mut lines = text.lines().enumerate();
        let (_, header) = lines.next().ok_or_else(|| anyhow::anyhow!("empty file"))?;
        let columns: Vec<&str> = header.split(',').map(str::trim).collect();
        let indexes = features
            .iter()
            .enumerate()
            .map(|(i, name)| {
                columns[1..]
                    .iter()
                    .position(|c| c == name)
                    .map(|p| p + 1)
                    .ok_or_else(|| {
                        anyhow::anyhow!(
                            "enrichment.features[{i}]: column {name:?} is not in the table (columns: {})",
                            columns[1..].join(", ")
                        )
                    })
            })
            .collect::<anyhow::Result<Vec<usize>>>()?;
        let mut rows = HashMap::new();
        for (number, line) in lines {
            if line.trim().is_empty() {
                continue;
            }
            let cells: Vec<&str> = line.split(',').map(str::trim).collect();
            if cells.len() != columns.len() {
                anyhow::bail!(
                    "line {}: {} cells, the header has {}",
                    number + 1,
                    cells.len(),
                    columns.len()
                );
            }
            let values = indexes
                .iter()
                .map(|&i| {
                    cells[i]
                        .parse::<f32>()
                        .ok()
                        .filter(|v| v.is_finite())
                        .ok_or_else(|| {
                            anyhow::anyhow!(
                                "line {}: {} = {:?} is not a number",
                                number + 1,
                                columns[i],
                                cells[i]
                            )
                        })
                })
                .collect::<anyhow::Result<Vec<f32>>>()?;
            rows.insert(cells[0].into(), values.into());
        }
        Ok(CsvFeatureTable { rows })
    }

    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    pub fn get(&self, key: &str) -> Option<Features> {
        self.rows.get(key).cloned()
    }
}

impl FeatureLookup for CsvFeatureTable {
    fn lookup<'a>(
        &'a self,
        keys: &'a [&'a str],
    ) -> BoxFuture<'a, Result<Vec<Option<Features>>, LookupError>> {
        Box::pin(async move { Ok(keys.iter().map(|k| self.get(k)).collect()) })
    }
}

impl<T: FeatureLookup> FeatureLookup for Arc<T> {
    fn lookup<'a>(
        &'a self,
        keys: &'a [&'a str],
    ) -> BoxFuture<'a, Result<Vec<Option<Features>>, LookupError>> {
        (**self).lookup(keys)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn loads_the_named_columns_in_the_asked_order() {
        let table =
            CsvFeatureTable::parse("id,a,b\nc1,1,2\nc2,3,4\n", &names(&["b", "a"])).unwrap();
        assert_eq!(table.len(), 2);
        assert_eq!(&*table.get("c2").unwrap(), &[4.0, 3.0]);
        assert!(table.get("c3").is_none());
    }

    #[test]
    fn names_what_is_wrong() {
        let err = CsvFeatureTable::parse("id,a\nc1,1\n", &names(&["z"]))
            .err()
            .unwrap();
        assert!(err.to_string().contains("enrichment.features[0]"), "{err}");
        let err = CsvFeatureTable::parse("id,a\nc1,x\n", &names(&["a"]))
            .err()
            .unwrap();
        assert!(err.to_string().contains("line 2"), "{err}");
        let err = CsvFeatureTable::parse("id,a\nc1,1,2\n", &names(&["a"]))
            .err()
            .unwrap();
        assert!(err.to_string().contains("line 2"), "{err}");
    }
}
