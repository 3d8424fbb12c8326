//! The admin API's snapshot calls: `snapshots list|show|create`.

use mirador_proto::admin::{
    ListSnapshotsResponse, RegionsResponse, RestoreRequest, RestoreResponse, ShowSnapshotResponse,
    SnapshotInfo, SnapshotPipeline,
};
use mirador_proto::snapshot as pb;
use tonic::Status;

use super::format::hex;
use super::store::{SnapshotStore, StoreConfig, StoreWithOptions};
use super::{age_ms, Invalid, Snapshots};
use crate::raft::RaftNode;
use crate::region::Regions;
use crate::state::{ClusterState, Command};
use crate::status::invalid;

fn unavailable(error: anyhow::Error) -> Status {
    Status::unavailable(format!("{error:#}"))
}

pub fn info(
    sequence: u64,
    manifest: Option<&pb::Manifest>,
    problem: Option<&Invalid>,
) -> SnapshotInfo {
    let mut info = SnapshotInfo {
        sequence,
        problem: problem.map(ToString::to_string).unwrap_or_default(),
        ..SnapshotInfo::default()
    };
    if let Some(m) = manifest {
        info.region = m.region.clone();
        info.taken_at_ms = m.taken_at_ms;
        info.age_ms = age_ms(m.taken_at_ms);
        info.raft_index = m.raft_index;
        info.raft_term = m.raft_term;
        info.written_by = m.written_by;
        info.size = m.body_len;
        info.sha256 = hex(&m.body_sha256);
        info.pipelines = m.pipelines;
        info.partitions = m.partitions;
    }
    info
}

/// The snapshots in `store`: this region's own, or the other's copies held here.
pub async fn list(
    snapshots: &Snapshots,
    store: &SnapshotStore,
) -> Result<ListSnapshotsResponse, Status> {
    let listed = store.list().await.map_err(unavailable)?;
    let last = snapshots.last();
    Ok(ListSnapshotsResponse {
        store: store.url().to_string(),
        interval_ms: snapshots.interval().as_millis() as u64,
        snapshots: listed
            .iter()
            .map(|l| info(l.sequence, l.manifest.as_ref(), l.problem.as_ref()))
            .collect(),
        last_error: snapshots.last_error().unwrap_or_default(),
        last_encode_ms: last.as_ref().map_or(0, |w| w.encode.as_millis() as u64),
        last_write_ms: last.as_ref().map_or(0, |w| w.write.as_millis() as u64),
    })
}

fn contents(manifest: &pb::Manifest, state: &ClusterState) -> ShowSnapshotResponse {
    ShowSnapshotResponse {
        snapshot: Some(info(manifest.sequence, Some(manifest), None)),
        pipelines: state
            .pipelines
            .values()
            .map(|p| SnapshotPipeline {
                name: p.name.clone(),
                version: p.version,
                partitions: p.partitions,
                checkpoints: state
                    .checkpoints
                    .keys()
                    .filter(|(name, _)| name == &p.name)
                    .count() as u32,
                paused: p.paused,
            })
            .collect(),
        executors: state.executors.len() as u32,
    }
}

/// Snapshot `sequence` of `store`, checked whole; 0: the newest whole one, else an error
/// naming `field_if_none`.
async fn fetch(
    store: &SnapshotStore,
    sequence: u64,
    field_if_none: &str,
) -> Result<(pb::Manifest, ClusterState), Status> {
    if sequence == 0 {
        let (newest, skipped) = store.newest_valid().await.map_err(unavailable)?;
        return newest.ok_or_else(|| {
            Status::not_found(format!(
                "{field_if_none}: {} holds no whole snapshot of region {:?}{}",
                store.url(),
                store.region(),
                if skipped.is_empty() {
                    String::new()
                } else {
                    format!(" ({} that cannot be restored)", skipped.len())
                }
            ))
        });
    }
    match store.read(sequence).await.map_err(unavailable)? {
        Ok(snapshot) => Ok(snapshot),
        Err(Invalid::Uncommitted) => Err(Status::not_found(format!(
            "sequence: no snapshot {sequence} of region {:?} in {}",
            store.region(),
            store.url()
        ))),
        Err(problem) => Err(Status::data_loss(format!(
            "sequence: snapshot {sequence} cannot be restored: {problem}"
        ))),
    }
}

/// `sequence` 0: the newest whole snapshot.
pub async fn show(snapshots: &Snapshots, sequence: u64) -> Result<ShowSnapshotResponse, Status> {
    let (manifest, state) = fetch(snapshots.store(), sequence, "sequence").await?;
    Ok(contents(&manifest, &state))
}

pub async fn create(snapshots: &Snapshots, raft: &RaftNode) -> Result<SnapshotInfo, Status> {
    let written = snapshots
        .take(raft, true)
        .await
        .map_err(unavailable)?
        .ok_or_else(|| Status::internal("a forced snapshot wrote nothing"))?;
    Ok(info(
        written.manifest.sequence,
        Some(&written.manifest),
        None,
    ))
}

/// Reads the snapshot a restore names, checked whole; writes nothing.
pub async fn read_for_restore(
    request: RestoreRequest,
) -> Result<(pb::Manifest, ClusterState), Status> {
    if request.store.trim().is_empty() {
        return Err(invalid(&mirador_spec::FieldError::new("store", "is empty")));
    }
    let config = StoreConfig::WithOptions(StoreWithOptions {
        url: request.store,
        options: request.options.into_iter().collect(),
    });
    let store = SnapshotStore::open(&config, &request.region, "store").map_err(|e| invalid(&e))?;
    fetch(&store, request.sequence, "region").await
}

/// Restores the snapshot `request` names into the region `raft` leads, which takes its
/// pipelines (see [`Regions::take_restored`]).
pub async fn restore(
    raft: &RaftNode,
    regions: &Regions,
    request: RestoreRequest,
) -> Result<RestoreResponse, Status> {
    let (manifest, mut state) = read_for_restore(request).await?;
    let since =
        std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_millis(manifest.taken_at_ms);
    regions
        .take_restored(&manifest.region, since, &mut state)
        .await?;
    let response = RestoreResponse {
        snapshot: Some(info(manifest.sequence, Some(&manifest), None)),
        pipelines: state.pipelines.len() as u32,
        partitions: state.assignments.len() as u32,
        checkpoints: state.checkpoints.len() as u32,
    };
    let command = Command::Restore {
        state: Box::new(state),
    };
    raft.commit(command).await?;
    Ok(response)
}

/// This region and the other, as the leader sees them.
pub fn regions(snapshots: &Snapshots, raft: &RaftNode) -> RegionsResponse {
    let metrics = raft.metrics();
    let newest = snapshots.last();
    let copied = snapshots.last_copy();
    let peer = snapshots.peer();
    let state = raft.state();
    RegionsResponse {
        region: snapshots.store().region().to_string(),
        leader_id: metrics.leader.unwrap_or_default(),
        leader_address: metrics
            .leader
            .and_then(|l| metrics.members.get(&l).cloned())
            .unwrap_or_default(),
        store: snapshots.store().url().to_string(),
        newest_snapshot: newest
            .as_ref()
            .map(|w| info(w.manifest.sequence, Some(&w.manifest), None)),
        peer_region: peer.map(|p| p.region.clone()).unwrap_or_default(),
        peer_store: peer.map(|p| p.copies.url().to_string()).unwrap_or_default(),
        copied_sequence: copied.as_ref().map_or(0, |c| c.sequence),
        copy_lag_ms: copied.as_ref().map_or(0, |c| c.lag.as_millis() as u64),
        copies_behind: match (peer, &newest) {
            (Some(_), Some(w)) => w
                .manifest
                .sequence
                .saturating_sub(copied.as_ref().map_or(0, |c| c.sequence)),
            _ => 0,
        },
        copy_error: snapshots.last_copy_error().unwrap_or_default(),
        peer_snapshot: state.peer_snapshot.as_ref().map(|p| SnapshotInfo {
            sequence: p.sequence,
            region: p.region.clone(),
            taken_at_ms: p.taken_at_ms,
            age_ms: age_ms(p.taken_at_ms),
            raft_index: p.raft_index,
            size: p.size,
            sha256: p.sha256.clone(),
            pipelines: p.pipelines,
            partitions: p.partitions,
            ..SnapshotInfo::default()
        }),
        ..RegionsResponse::default()
    }
}
