//! Google Cloud Bigtable: customer features for enrichment, and an upsert per customer as
//! a sink.

mod admin;
mod lookup;
mod sink;

use bigtable_rs::bigtable::{BigTable, BigTableConnection};

pub use admin::{create_table, load_features, read_table, TableCells};
pub use lookup::BigtableLookup;
// The spec types live in `mirador-spec`, so that specs are checked without any client.
pub use mirador_spec::bigtable::BigtableSpec;
pub use sink::BigtableSink;

/// The emulator to use, if any: the spec's endpoint, else `BIGTABLE_EMULATOR_HOST` when it
/// is set and not empty (the one place that reads it).
fn emulator(spec: &BigtableSpec) -> Option<String> {
    spec.endpoint
        .clone()
        .or_else(|| std::env::var("BIGTABLE_EMULATOR_HOST").ok())
        .filter(|e| !e.is_empty())
}

/// A client. Connections are made lazily: a store that is down shows on first use.
pub async fn connect(spec: &BigtableSpec, read_only: bool) -> anyhow::Result<BigTable> {
    let connection = match emulator(spec) {
        Some(endpoint) => BigTableConnection::new_with_emulator(
            &endpoint,
            &spec.project,
            &spec.instance,
            read_only,
            spec.channels,
            Some(spec.timeout()),
        ),
        None => {
            BigTableConnection::new(
                &spec.project,
                &spec.instance,
                read_only,
                spec.channels,
                Some(spec.timeout()),
            )
            .await
        }
    }
    .map_err(|e| anyhow::anyhow!("bigtable {}/{}: {e}", spec.instance, spec.table))?;
    Ok(connection.client())
}
