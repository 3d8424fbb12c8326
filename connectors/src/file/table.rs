//! The embedded feature table: a CSV file loaded at start.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use futures::future::BoxFuture;

use crate::lookup::{FeatureLookup, Features, LookupError};

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
        let csv = FeatureCsv::parse(text)?;
        let columns = &csv.columns;
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
        let mut rows = HashMap::with_capacity(csv.rows.len());
        for row in csv.rows {
            let values = indexes
                .iter()
                .map(|&i| {
                    feature_value(&row.cells[i]).map_err(|wrong| {
                        anyhow::anyhow!(
                            "line {}: {} = {:?} {wrong}",
                            row.line,
                            columns[i],
                            row.cells[i]
                        )
                    })
                })
                .collect::<anyhow::Result<Vec<f32>>>()?;
            let id = row
                .cells
                .into_iter()
                .next()
                .expect("rows are as wide as the header");
            rows.insert(id.into_boxed_str(), values.into());
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

/// A feature CSV read whole: a header (the customer id's column, then a column per
/// feature) and rows as wide as the header, each customer once. Cells are trimmed and may
/// be quoted. Shared by the embedded table and the Bigtable loader.
pub struct FeatureCsv {
    pub columns: Vec<String>,
    pub rows: Vec<FeatureRow>,
}

pub struct FeatureRow {
    /// 1-based, as an editor shows it.
    pub line: u64,
    /// The customer id first.
    pub cells: Vec<String>,
}

impl FeatureCsv {
    /// Refuses, naming the line: an empty file, a repeated column, a row of the wrong
    /// width, a customer id given twice.
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let mut reader = csv::ReaderBuilder::new()
            .has_headers(false)
            .flexible(true)
            .trim(csv::Trim::All)
            .from_reader(text.as_bytes());
        let mut records = reader.records();
        let header = records
            .next()
            .ok_or_else(|| anyhow::anyhow!("empty file"))?
            .map_err(|e| anyhow::anyhow!("line 1: {e}"))?;
        let columns: Vec<String> = header.iter().map(str::to_string).collect();
        for (i, column) in columns.iter().enumerate() {
            if columns[..i].contains(column) {
                anyhow::bail!("line 1: column {column:?} is named twice");
            }
        }
        let mut rows = Vec::new();
        let mut seen: HashMap<String, u64> = HashMap::new();
        for record in records {
            let record = record.map_err(|e| match e.position() {
                Some(p) => anyhow::anyhow!("line {}: {e}", p.line()),
                None => anyhow::anyhow!("{e}"),
            })?;
            let line = record.position().map_or(0, |p| p.line());
            if record.iter().all(str::is_empty) {
                continue;
            }
            if record.len() != columns.len() {
                anyhow::bail!(
                    "line {line}: {} cells, the header has {}",
                    record.len(),
                    columns.len()
                );
            }
            let cells: Vec<String> = record.iter().map(str::to_string).collect();
            if let Some(first) = seen.insert(cells[0].clone(), line) {
                anyhow::bail!(
                    "line {line}: customer {:?} is already on line {first}",
                    cells[0]
                );
            }
            rows.push(FeatureRow { line, cells });
        }
        Ok(FeatureCsv { columns, rows })
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

/// A cell as a feature: a finite number that fits in an `f32`, or what is wrong with it.
fn feature_value(cell: &str) -> Result<f32, &'static str> {
    let wide: f64 = cell.trim().parse().map_err(|_| "is not a number")?;
    if !wide.is_finite() {
        return Err("is not a finite number");
    }
    if wide.abs() > f64::from(f32::MAX) {
        return Err("is out of range: a feature is a 32-bit float, at most 3.4e38 either way");
    }
    Ok(wide as f32)
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

    #[test]
    fn a_cell_out_of_f32_range_says_so() {
        let error = |cell: &str| {
            CsvFeatureTable::parse(&format!("id,a\nc1,{cell}\n"), &names(&["a"]))
                .err()
                .unwrap()
                .to_string()
        };
        assert_eq!(
            error("1e39"),
            "line 2: a = \"1e39\" is out of range: a feature is a 32-bit float, at most 3.4e38 \
             either way"
        );
        assert!(error("-1e39").contains("out of range"));
        assert!(error("inf").contains("is not a finite number"));
        assert!(error("NaN").contains("is not a finite number"));
        assert!(error("x").ends_with("is not a number"));
        let table = CsvFeatureTable::parse("id,a\nc1,3.4e38\nc2,-2.5\n", &names(&["a"])).unwrap();
        assert_eq!(&*table.get("c1").unwrap(), &[3.4e38]);
        assert_eq!(&*table.get("c2").unwrap(), &[-2.5]);
    }

    #[test]
    fn quoted_ids_match_and_repeats_are_refused_with_their_line() {
        let table = CsvFeatureTable::parse("id,a\n\"c,1\",1\n\"c2\",2\n", &names(&["a"])).unwrap();
        assert_eq!(&*table.get("c,1").unwrap(), &[1.0]);
        assert_eq!(&*table.get("c2").unwrap(), &[2.0]);
        let err = CsvFeatureTable::parse("id,a,a\nc1,1,2\n", &names(&["a"]))
            .err()
            .unwrap();
        assert!(
            err.to_string()
                .contains("line 1: column \"a\" is named twice"),
            "{err}"
        );
        let err = CsvFeatureTable::parse("id,a\nc1,1\nc2,2\nc1,3\n", &names(&["a"]))
            .err()
            .unwrap();
        assert!(
            err.to_string()
                .contains("line 4: customer \"c1\" is already on line 2"),
            "{err}"
        );
    }
}
