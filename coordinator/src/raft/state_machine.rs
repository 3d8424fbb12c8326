//! The replicated [`ClusterState`] of a coordinator, applied from the Raft log and kept in
//! redb with its snapshot.

use std::io::Cursor;
use std::sync::Arc;

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    EntryPayload, ErrorSubject, ErrorVerb, LogId, OptionalSend, RaftSnapshotBuilder, SnapshotMeta,
    StorageError, StoredMembership,
};
use redb::Database;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::store::{
    blocking, state_machine_key, storage_error, DiskError, StoreFile, STATE_MACHINE,
};
use super::{Entry, Node, NodeId, TypeConfig};
use crate::state::{ClusterState, Outcome};

/// What a node has applied: the state with the log position and membership it stands for.
/// Persisted after every applied batch, and the content of a snapshot.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct Applied {
    last_applied: Option<LogId<NodeId>>,
    last_membership: StoredMembership<NodeId, Node>,
    /// Shared with the watchers of [`StateMachineStore::subscribe`].
    #[serde(with = "shared_state")]
    state: Arc<ClusterState>,
}

/// The state machine of one node.
///
/// The state is persisted (fsync) before `apply` returns, so a restarted node resumes from
/// its last applied entry and a snapshot is a copy of what is already on disk.
pub struct StateMachineStore {
    db: Arc<StoreFile>,
    applied: Applied,
    /// Every applied batch publishes the new state: executors follow their assignments
    /// without polling.
    state_tx: watch::Sender<Arc<ClusterState>>,
}

impl StateMachineStore {
    /// Loads the applied state from `db`, or starts empty.
    pub(crate) fn open(db: Arc<StoreFile>) -> Result<Self, DiskError> {
        let applied = {
            let txn = db.begin_read()?;
            let table = txn.open_table(STATE_MACHINE)?;
            let value = table.get(state_machine_key::APPLIED)?;
            match value {
                Some(v) => serde_json::from_slice(v.value())?,
                None => Applied::default(),
            }
        };
        let (state_tx, _) = watch::channel(applied.state.clone());
        Ok(Self {
            db,
            applied,
            state_tx,
        })
    }

    /// The applied state now and at every later apply.
    pub fn subscribe(&self) -> watch::Receiver<Arc<ClusterState>> {
        self.state_tx.subscribe()
    }

    fn publish(&self) {
        self.state_tx.send_replace(self.applied.state.clone());
    }
}

/// Where [`persist`] writes an applied state.
#[derive(Clone, Copy)]
enum Persist<'a> {
    /// As the state machine's state.
    State,
    /// As the current snapshot, described by the meta. A snapshot builder must not touch the
    /// state: the state machine has applied more since the builder took its copy.
    Snapshot(&'a SnapshotMeta<NodeId, Node>),
    /// Both, for an installed snapshot.
    StateAndSnapshot(&'a SnapshotMeta<NodeId, Node>),
}

/// Writes an applied state in one transaction, and returns its encoding.
fn persist(db: &Database, applied: &Applied, to: Persist<'_>) -> Result<Vec<u8>, DiskError> {
    let data = serde_json::to_vec(applied)?;
    let txn = db.begin_write()?;
    {
        let mut table = txn.open_table(STATE_MACHINE)?;
        if let Persist::State | Persist::StateAndSnapshot(_) = to {
            table.insert(state_machine_key::APPLIED, data.as_slice())?;
        }
        if let Persist::Snapshot(meta) | Persist::StateAndSnapshot(meta) = to {
            let meta = serde_json::to_vec(meta)?;
            table.insert(state_machine_key::SNAPSHOT_META, meta.as_slice())?;
            table.insert(state_machine_key::SNAPSHOT_DATA, data.as_slice())?;
        }
    }
    txn.commit()?;
    Ok(data)
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<NodeId>>, StoredMembership<NodeId, Node>), StorageError<NodeId>> {
        Ok((
            self.applied.last_applied,
            self.applied.last_membership.clone(),
        ))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Outcome>, StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut outcomes = Vec::new();
        // Copies the state once per batch when a watcher still holds the previous one.
        let state = Arc::make_mut(&mut self.applied.state);
        for entry in entries {
            self.applied.last_applied = Some(entry.log_id);
            outcomes.push(match entry.payload {
                EntryPayload::Blank => Outcome::Done,
                EntryPayload::Normal(command) => state.apply(&command),
                EntryPayload::Membership(membership) => {
                    self.applied.last_membership =
                        StoredMembership::new(Some(entry.log_id), membership);
                    Outcome::Done
                }
            });
        }
        if outcomes.is_empty() {
            return Ok(outcomes);
        }
        let db = self.db.clone();
        let applied = self.applied.clone();
        blocking(ErrorSubject::StateMachine, ErrorVerb::Write, move || {
            persist(&db, &applied, Persist::State).map(drop)
        })
        .await?;
        self.publish();
        Ok(outcomes)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        SnapshotBuilder {
            db: self.db.clone(),
            applied: self.applied.clone(),
        }
    }

    async fn begin_receiving_snapshot(
        &mut self,
    ) -> Result<Box<Cursor<Vec<u8>>>, StorageError<NodeId>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, Node>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError<NodeId>> {
        let subject = ErrorSubject::Snapshot(Some(meta.signature()));
        let mut applied: Applied = serde_json::from_slice(snapshot.get_ref())
            .map_err(|e| storage_error(subject.clone(), ErrorVerb::Read, &e))?;
        // The leader's meta is what Raft goes by; the data was made from the same state.
        applied.last_applied = meta.last_log_id;
        applied.last_membership = meta.last_membership.clone();
        let db = self.db.clone();
        let (to_persist, meta) = (applied.clone(), meta.clone());
        blocking(subject, ErrorVerb::Write, move || {
            persist(&db, &to_persist, Persist::StateAndSnapshot(&meta)).map(drop)
        })
        .await?;
        self.applied = applied;
        self.publish();
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<Snapshot<TypeConfig>>, StorageError<NodeId>> {
        let db = self.db.clone();
        blocking(ErrorSubject::Snapshot(None), ErrorVerb::Read, move || {
            let txn = db.begin_read()?;
            let table = txn.open_table(STATE_MACHINE)?;
            let (Some(meta), Some(data)) = (
                table.get(state_machine_key::SNAPSHOT_META)?,
                table.get(state_machine_key::SNAPSHOT_DATA)?,
            ) else {
                return Ok(None);
            };
            Ok(Some(Snapshot {
                meta: serde_json::from_slice(meta.value())?,
                snapshot: Box::new(Cursor::new(data.value().to_vec())),
            }))
        })
        .await
    }
}

/// Makes a snapshot of the state as it was when Raft asked for the builder, while the state
/// machine goes on applying.
pub struct SnapshotBuilder {
    db: Arc<StoreFile>,
    applied: Applied,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError<NodeId>> {
        let last = self.applied.last_applied;
        let meta = SnapshotMeta {
            last_log_id: last,
            last_membership: self.applied.last_membership.clone(),
            // Two snapshots up to the same log id hold the same state: the id may repeat.
            snapshot_id: match last {
                Some(id) => format!(
                    "{}-{}-{}",
                    id.leader_id.term, id.leader_id.node_id, id.index
                ),
                None => "empty".to_string(),
            },
        };
        let db = self.db.clone();
        let (applied, stored_meta) = (self.applied.clone(), meta.clone());
        let data = blocking(
            ErrorSubject::Snapshot(Some(meta.signature())),
            ErrorVerb::Write,
            move || {
                // A snapshot installed from the leader meanwhile may be newer than this one:
                // keep it.
                let current: Option<SnapshotMeta<NodeId, Node>> = {
                    let txn = db.begin_read()?;
                    let table = txn.open_table(STATE_MACHINE)?;
                    let meta = table.get(state_machine_key::SNAPSHOT_META)?;
                    meta.map(|m| serde_json::from_slice(m.value()))
                        .transpose()?
                };
                if current.is_some_and(|c| c.last_log_id > stored_meta.last_log_id) {
                    return Ok(serde_json::to_vec(&applied)?);
                }
                persist(&db, &applied, Persist::Snapshot(&stored_meta))
            },
        )
        .await?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

/// The state is shared with watchers behind an `Arc`; on disk it is the plain state.
mod shared_state {
    use std::sync::Arc;

    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    use crate::state::ClusterState;

    pub fn serialize<S: Serializer>(
        state: &Arc<ClusterState>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        state.as_ref().serialize(serializer)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Arc<ClusterState>, D::Error> {
        ClusterState::deserialize(deserializer).map(Arc::new)
    }
}
