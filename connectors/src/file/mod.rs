//! Files: a JSON-lines file as a bounded source, an append-only JSON-lines file as a sink,
//! and a CSV file of customer features as the embedded lookup.

mod sink;
mod source;
mod table;

pub use sink::JsonlFile;
pub use source::FileSource;
pub use table::{CsvFeatureTable, FeatureCsv, FeatureRow};
