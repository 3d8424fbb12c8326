//! Google Cloud Bigtable: customer features for enrichment, and an upsert per customer as
//! a sink.

mod admin;
mod lookup;
mod sink;

use bigtable_rs::bigtable::{BigTable, BigTableConnection};

pub use admin::{create_table, load_features};
pub use lookup::BigtableLookup;
// The spec types live in `mirador-spec`, so that specs are checked without any client.
pub use mirador_spec::bigtable::BigtableSpec;
pub use sink::BigtableSink;

/// A client. Connections are made lazily: a store that is down shows on first use.
pub async fn connect(spec: &BigtableSpec, read_only: bool) -> anyhow::Result<BigTable> {
    let connection = match spec.emulator() {
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
