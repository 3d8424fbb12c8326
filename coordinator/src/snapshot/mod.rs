//! Snapshots of a region's whole coordinator state in object storage, from which a region
//! is restored or the other region takes over.
//!
//! - [`format`]: the stored form (`snapshot.proto`): a protobuf body and a manifest with
//!   its length and SHA-256.
//! - [`store`]: a local directory, S3 or GCS; the body is written first and the manifest
//!   created last with `PutMode::Create`, so no reader sees half a snapshot; retention
//!   keeps the newest N.
//! - [`Snapshots`] and [`writer`]: the leader writes one every interval (when the state
//!   moved), from the state the Raft state machine already published: encoding runs on a
//!   blocking thread and never holds up the apply loop or a heartbeat.

pub mod admin;
pub mod format;
pub mod store;
#[cfg(any(test, feature = "testing"))]
pub mod testing;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use mirador_proto::snapshot as pb;
use mirador_proto::sync::Locked;
use serde::Deserialize;

pub use self::format::Invalid;
pub use self::store::{Listed, SnapshotStore, StoreConfig};
use crate::raft::RaftNode;

/// `snapshot:` in a coordinator's config file; each setting defaults on its own.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SnapshotFile {
    /// How often the leader writes one, ms.
    pub interval_ms: u64,
    /// How many committed snapshots the store keeps.
    pub keep: usize,
    /// Where: a directory, or `{url, options}` for S3 or GCS. Default: `snapshots` in the
    /// node's data directory (each coordinator its own: name a shared store for a region).
    pub store: Option<StoreConfig>,
}

impl Default for SnapshotFile {
    fn default() -> Self {
        SnapshotFile {
            interval_ms: 5_000,
            keep: 10,
            store: None,
        }
    }
}

/// What the writer needs: the interval, the retention and the store, checked.
#[derive(Clone)]
pub struct SnapshotConfig {
    pub interval: Duration,
    pub keep: usize,
    pub store: SnapshotStore,
    pub peer: Option<PeerStores>,
}

/// The other region's side of the snapshots.
#[derive(Clone)]
pub struct PeerStores {
    pub region: String,
    /// This region's copies, in the peer's store.
    pub copies: SnapshotStore,
    /// The peer's copies, in this region's store: what a takeover restores from.
    pub incoming: SnapshotStore,
}

impl SnapshotFile {
    /// Checks the settings that need no store.
    pub fn validate(&self, region: &str) -> Result<(), mirador_spec::FieldError> {
        use mirador_spec::FieldError;
        store::check_region("region", region)?;
        if !(100..=3_600_000).contains(&self.interval_ms) {
            return Err(FieldError::new(
                "snapshot.interval_ms",
                format!("{} is invalid: between 100 and 3600000", self.interval_ms),
            ));
        }
        if !(1..=10_000).contains(&self.keep) {
            return Err(FieldError::new(
                "snapshot.keep",
                format!("{} is invalid: between 1 and 10000", self.keep),
            ));
        }
        Ok(())
    }

    /// Checks the settings and opens the store for `region` (`default_dir` when none is
    /// named), and the other region's when there is one.
    pub fn open(
        &self,
        region: &str,
        default_dir: &std::path::Path,
        peer: Option<&crate::region::PeerFile>,
    ) -> Result<SnapshotConfig, mirador_spec::FieldError> {
        self.validate(region)?;
        let store = match &self.store {
            Some(store) => store.clone(),
            None => StoreConfig::Url(default_dir.display().to_string()),
        };
        let peer = match peer {
            Some(peer) => Some(PeerStores {
                region: peer.region.clone(),
                copies: SnapshotStore::open(&peer.store, region, "peer.store")?,
                incoming: SnapshotStore::open(&store, &peer.region, "snapshot.store")?,
            }),
            None => None,
        };
        Ok(SnapshotConfig {
            interval: Duration::from_millis(self.interval_ms),
            keep: self.keep,
            store: SnapshotStore::open(&store, region, "snapshot.store")?,
            peer,
        })
    }
}

/// A snapshot this node wrote.
#[derive(Clone, Debug)]
pub struct Written {
    pub manifest: pb::Manifest,
    /// Encoding and checksumming the state.
    pub encode: Duration,
    /// Writing body and manifest, and pruning.
    pub write: Duration,
}

/// What the writer remembers between snapshots.
#[derive(Default)]
struct Cursor {
    /// The next sequence number, learnt from the store when this node began to lead.
    next: Option<u64>,
    /// The log index of the last snapshot written: an unchanged state is not written again.
    last_index: Option<u64>,
}

/// The last copy of a snapshot into the other region's store.
#[derive(Clone, Debug)]
pub struct Copied {
    pub sequence: u64,
    /// From the snapshot's commit here to its copy's there.
    pub lag: Duration,
}

/// A region's snapshots, as its coordinators write and read them.
pub struct Snapshots {
    node_id: u64,
    config: SnapshotConfig,
    /// One write at a time (the interval's and an operator's).
    cursor: tokio::sync::Mutex<Cursor>,
    last: Mutex<Option<Written>>,
    last_error: Mutex<Option<String>>,
    last_copy: Mutex<Option<Copied>>,
    last_copy_error: Mutex<Option<String>>,
}

fn unix_ms(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Milliseconds since `taken_at_ms` (Unix ms), on this node's clock.
pub fn age_ms(taken_at_ms: u64) -> u64 {
    unix_ms(SystemTime::now()).saturating_sub(taken_at_ms)
}

impl Snapshots {
    pub fn new(node_id: u64, config: SnapshotConfig) -> Self {
        Snapshots {
            node_id,
            config,
            cursor: tokio::sync::Mutex::new(Cursor::default()),
            last: Mutex::new(None),
            last_error: Mutex::new(None),
            last_copy: Mutex::new(None),
            last_copy_error: Mutex::new(None),
        }
    }

    /// The other region's stores, when one is configured.
    pub fn peer(&self) -> Option<&PeerStores> {
        self.config.peer.as_ref()
    }

    /// The last snapshot copied into the other region's store.
    pub fn last_copy(&self) -> Option<Copied> {
        self.last_copy.locked().clone()
    }

    /// Why the last copy failed, until one succeeds.
    pub fn last_copy_error(&self) -> Option<String> {
        self.last_copy_error.locked().clone()
    }

    /// Copies a committed snapshot into the other region's store, with its own manifest
    /// created last there too. A failed copy is reported and left: the next snapshot
    /// supersedes it.
    async fn copy(&self, manifest: &pb::Manifest, body: Bytes, committed: Instant) {
        let Some(peer) = &self.config.peer else {
            return;
        };
        let result = async {
            // `None`: another writer copied this number already, which is as good.
            peer.copies.write(manifest.clone(), body).await?;
            peer.copies.prune(self.config.keep).await
        }
        .await;
        match result {
            Ok(_) => {
                *self.last_copy.locked() = Some(Copied {
                    sequence: manifest.sequence,
                    lag: committed.elapsed(),
                });
                *self.last_copy_error.locked() = None;
            }
            Err(error) => {
                tracing::warn!(error = %format!("{error:#}"), "snapshot not copied to the other region");
                *self.last_copy_error.locked() = Some(format!("{error:#}"));
            }
        }
    }

    /// Looks for a newer whole snapshot of the other region in this region's store and
    /// records it in the Raft state. Leader only.
    pub async fn catalogue(&self, raft: &RaftNode) -> anyhow::Result<()> {
        let Some(peer) = &self.config.peer else {
            return Ok(());
        };
        let known = raft.state().peer_snapshot.as_ref().map(|p| p.sequence);
        let Some(newest) = peer.incoming.newest_committed().await? else {
            return Ok(());
        };
        if known.is_some_and(|known| known >= newest) {
            return Ok(());
        }
        let (found, skipped) = peer.incoming.newest_valid().await?;
        for (sequence, problem) in skipped {
            tracing::warn!(region = %peer.region, sequence, %problem, "a snapshot of the other region cannot be restored");
        }
        let Some((manifest, _)) = found else {
            return Ok(());
        };
        if known.is_some_and(|known| known >= manifest.sequence) {
            return Ok(());
        }
        let snapshot = crate::state::PeerSnapshot {
            region: manifest.region.clone(),
            sequence: manifest.sequence,
            taken_at_ms: manifest.taken_at_ms,
            raft_index: manifest.raft_index,
            size: manifest.body_len,
            sha256: format::hex(&manifest.body_sha256),
            pipelines: manifest.pipelines,
            partitions: manifest.partitions,
        };
        raft.write(crate::state::Command::RecordPeerSnapshot { snapshot })
            .await?;
        Ok(())
    }

    pub fn store(&self) -> &SnapshotStore {
        &self.config.store
    }

    pub fn interval(&self) -> Duration {
        self.config.interval
    }

    /// The last snapshot this node wrote.
    pub fn last(&self) -> Option<Written> {
        self.last.locked().clone()
    }

    /// Why the last attempt failed, until one succeeds.
    pub fn last_error(&self) -> Option<String> {
        self.last_error.locked().clone()
    }

    /// Forgets what it learnt while leading: a node that leads again asks the store.
    async fn step_down(&self) {
        *self.cursor.lock().await = Cursor::default();
    }

    /// Writes a snapshot of the state `raft` has applied. `force`: even when the state did
    /// not move since the last one. `Ok(None)`: nothing to write.
    pub async fn take(&self, raft: &RaftNode, force: bool) -> anyhow::Result<Option<Written>> {
        let result = self.try_take(raft, force).await;
        match &result {
            Ok(Some(written)) => {
                *self.last.locked() = Some(written.clone());
                *self.last_error.locked() = None;
            }
            Ok(None) => {}
            Err(e) => *self.last_error.locked() = Some(format!("{e:#}")),
        }
        result
    }

    async fn try_take(&self, raft: &RaftNode, force: bool) -> anyhow::Result<Option<Written>> {
        let mut cursor = self.cursor.lock().await;
        // The index first: the state read after it is at least as new.
        let metrics = raft.metrics();
        let index = metrics.last_applied.unwrap_or(0);
        if !force && cursor.last_index == Some(index) {
            return Ok(None);
        }
        let state = raft.state();
        let taken_at_ms = unix_ms(SystemTime::now());
        let started = Instant::now();
        let encoded = tokio::task::spawn_blocking(move || format::encode(&state)).await?;
        let encode = started.elapsed();
        let store = &self.config.store;
        // Twice at most: another writer may have taken the number this node had.
        for _ in 0..2 {
            let sequence = match cursor.next {
                Some(next) => next,
                None => store.next_sequence().await?,
            };
            let manifest = pb::Manifest {
                taken_at_ms,
                raft_index: index,
                raft_term: metrics.term,
                ..encoded.manifest(store.region(), sequence, self.node_id)
            };
            let write_started = Instant::now();
            let Some(manifest) = store.write(manifest, encoded.body.clone()).await? else {
                cursor.next = None;
                continue;
            };
            let committed = Instant::now();
            cursor.next = Some(sequence + 1);
            cursor.last_index = Some(index);
            if let Err(error) = store.prune(self.config.keep).await {
                tracing::warn!(%error, "old snapshots were not removed");
            }
            let write = write_started.elapsed();
            self.copy(&manifest, encoded.body.clone(), committed).await;
            return Ok(Some(Written {
                manifest,
                encode,
                write,
            }));
        }
        anyhow::bail!(
            "{}: another coordinator writes this region's snapshots (its sequence numbers \
             were taken twice)",
            store.url()
        )
    }
}

/// The leader's writer: a snapshot every interval while this node leads a quorum.
pub async fn writer(raft: Arc<RaftNode>, snapshots: Arc<Snapshots>) {
    let mut tick = tokio::time::interval(snapshots.interval());
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut leading = false;
    loop {
        tick.tick().await;
        if !raft.leads_a_quorum() {
            if leading {
                snapshots.step_down().await;
                leading = false;
            }
            continue;
        }
        leading = true;
        if let Err(error) = snapshots.catalogue(&raft).await {
            tracing::warn!(error = %format!("{error:#}"), "the other region's snapshots not catalogued");
        }
        match snapshots.take(&raft, false).await {
            Ok(Some(w)) => tracing::debug!(
                sequence = w.manifest.sequence,
                bytes = w.manifest.body_len,
                encode_ms = w.encode.as_millis() as u64,
                write_ms = w.write.as_millis() as u64,
                "snapshot written"
            ),
            Ok(None) => {}
            Err(error) => tracing::warn!(error = %format!("{error:#}"), "snapshot not written"),
        }
    }
}

#[cfg(test)]
mod tests;
