//! Tables on a Bigtable emulator, and loading the feature table into one.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use bigtable_rs::google::bigtable::v2::mutate_rows_request::Entry;
use bigtable_rs::google::bigtable::v2::mutation::{self, SetCell};
use bigtable_rs::google::bigtable::v2::{MutateRowsRequest, Mutation, ReadRowsRequest, RowSet};
use googleapis_tonic_google_bigtable_admin_v2::google::bigtable::admin::v2::bigtable_table_admin_client::BigtableTableAdminClient;
use googleapis_tonic_google_bigtable_admin_v2::google::bigtable::admin::v2::{
    gc_rule, ColumnFamily, CreateTableRequest, GcRule, Table,
};

use super::BigtableSpec;
use crate::file::{FeatureCsv, FeatureRow};

/// Creates the spec's table with its column family on an emulator; an existing table is
/// left as it is. (On Google Cloud, tables are made by the platform's own tooling.)
pub async fn create_table(spec: &BigtableSpec) -> anyhow::Result<()> {
    let endpoint = super::emulator(spec)
        .ok_or_else(|| anyhow::anyhow!("creating tables needs an emulator endpoint"))?;
    let channel = tonic::transport::Channel::from_shared(format!("http://{endpoint}"))?
        .connect()
        .await
        .map_err(|e| anyhow::anyhow!("bigtable emulator at {endpoint}: {e}"))?;
    let mut admin = BigtableTableAdminClient::new(channel);
    let family = ColumnFamily {
        gc_rule: Some(GcRule {
            rule: Some(gc_rule::Rule::MaxNumVersions(1)),
        }),
        ..ColumnFamily::default()
    };
    let request = CreateTableRequest {
        parent: format!("projects/{}/instances/{}", spec.project, spec.instance),
        table_id: spec.table.clone(),
        table: Some(Table {
            column_families: HashMap::from([(spec.family.clone(), family)]),
            ..Table::default()
        }),
        ..CreateTableRequest::default()
    };
    match admin.create_table(request).await {
        Ok(_) => Ok(()),
        Err(status) if status.code() == tonic::Code::AlreadyExists => Ok(()),
        Err(status) => Err(anyhow::anyhow!("create table {}: {status}", spec.table)),
    }
}

/// Writes every row of a feature CSV (customer id first, a header naming the columns) as
/// a row per customer with a cell per column. Returns the rows written.
pub async fn load_features(spec: &BigtableSpec, csv: &Path) -> anyhow::Result<usize> {
    let text =
        std::fs::read_to_string(csv).map_err(|e| anyhow::anyhow!("{}: {e}", csv.display()))?;
    let table = FeatureCsv::parse(&text).map_err(|e| anyhow::anyhow!("{}: {e}", csv.display()))?;
    let header = &table.columns;
    let mut client = super::connect(spec, false).await?;
    let table_name = client.get_full_table_name(&spec.table);
    let mut entries = Vec::new();
    let mut written = 0;
    for FeatureRow { cells, .. } in &table.rows {
        let mutations = header[1..]
            .iter()
            .zip(&cells[1..])
            .map(|(column, value)| Mutation {
                mutation: Some(mutation::Mutation::SetCell(SetCell {
                    family_name: spec.family.clone(),
                    column_qualifier: column.as_bytes().to_vec(),
                    timestamp_micros: 0,
                    value: value.as_bytes().to_vec(),
                })),
            })
            .collect();
        entries.push(Entry {
            row_key: cells[0].as_bytes().to_vec(),
            mutations,
            idempotency: None,
        });
        if entries.len() == 1000 {
            written += write(&mut client, &table_name, std::mem::take(&mut entries)).await?;
        }
    }
    written += write(&mut client, &table_name, entries).await?;
    Ok(written)
}

async fn write(
    client: &mut bigtable_rs::bigtable::BigTable,
    table_name: &str,
    entries: Vec<Entry>,
) -> anyhow::Result<usize> {
    if entries.is_empty() {
        return Ok(0);
    }
    let count = entries.len();
    let mut stream = client
        .mutate_rows(MutateRowsRequest {
            table_name: table_name.to_string(),
            entries,
            ..MutateRowsRequest::default()
        })
        .await?;
    while let Some(response) = stream.message().await? {
        if let Some(status) = response
            .entries
            .iter()
            .find_map(|e| e.status.as_ref().filter(|s| s.code != 0))
        {
            anyhow::bail!(
                "bigtable refused a row: code {}: {}",
                status.code,
                status.message
            );
        }
    }
    Ok(count)
}

/// Every cell of a table, as row -> (qualifier, timestamp in µs) -> value: for comparing
/// what two runs wrote.
pub type TableCells = BTreeMap<Vec<u8>, BTreeMap<(Vec<u8>, i64), Vec<u8>>>;

/// Reads every cell of the spec's table.
pub async fn read_table(spec: &BigtableSpec) -> anyhow::Result<TableCells> {
    let mut client = super::connect(spec, true).await?;
    let rows = client
        .read_rows(ReadRowsRequest {
            table_name: client.get_full_table_name(&spec.table),
            rows: Some(RowSet::default()),
            ..ReadRowsRequest::default()
        })
        .await?;
    Ok(rows
        .into_iter()
        .map(|(key, cells)| {
            let cells = cells
                .into_iter()
                .map(|c| ((c.qualifier, c.timestamp_micros), c.value))
                .collect();
            (key, cells)
        })
        .collect())
}
