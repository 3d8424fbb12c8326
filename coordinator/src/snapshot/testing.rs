//! States and snapshot writes for the tests of stores (a directory here, S3 in
//! `coordinator/tests`).

use super::format;
use super::store::SnapshotStore;
use crate::state::{ClusterState, Command};

/// A state with `n` pipelines of `partitions` partitions each.
pub fn state(n: usize, partitions: u32) -> ClusterState {
    let mut state = ClusterState::default();
    for i in 0..n {
        state.apply(&Command::PutPipeline {
            name: format!("p{i}"),
            spec: format!("name: p{i}\n"),
            partitions,
            gpu: false,
            failover: mirador_spec::FailoverMode::Manual,
        });
    }
    state
}

/// Writes `state` as snapshot `sequence` by coordinator `writer`; whether it was committed.
pub async fn write(
    store: &SnapshotStore,
    sequence: u64,
    writer: u64,
    state: &ClusterState,
) -> bool {
    let encoded = format::encode(state);
    let manifest = encoded.manifest(store.region(), sequence, writer);
    store.write(manifest, encoded.body).await.unwrap().is_some()
}
