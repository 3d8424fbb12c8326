//! The redb file that holds a coordinator's Raft log, vote and state machine.
//!
//! One file per node, `<data dir>/raft.redb`, shared by the [`LogStore`] and the
//! [`StateMachineStore`]: redb serializes write transactions, and every commit is durable
//! (fsync) before it returns, which is what Raft asks of a vote, a log append and an applied
//! state.

use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use mirador_proto::lock::{DirLock, LockError};
use openraft::{AnyError, ErrorSubject, ErrorVerb, StorageError, StorageIOError};
use redb::{Database, TableDefinition};
use tokio::sync::watch;

use super::log_store::LogStore;
use super::state_machine::StateMachineStore;
use super::NodeId;

/// Log entries by index, each the JSON of an `openraft::Entry<TypeConfig>`.
pub(crate) const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("raft_log");
/// The vote, the committed log id and the last purged log id, as JSON, by [`log_meta`] key.
pub(crate) const LOG_META: TableDefinition<&str, &[u8]> = TableDefinition::new("raft_log_meta");
/// The applied state and the current snapshot, by [`state_machine_key`] key.
pub(crate) const STATE_MACHINE: TableDefinition<&str, &[u8]> =
    TableDefinition::new("state_machine");

/// Keys of [`LOG_META`].
pub(crate) mod log_meta {
    pub const VOTE: &str = "vote";
    pub const COMMITTED: &str = "committed";
    pub const LAST_PURGED: &str = "last_purged";
}

/// Keys of [`STATE_MACHINE`].
pub(crate) mod state_machine_key {
    /// The applied state: last applied log id, last membership and the `ClusterState`.
    pub const APPLIED: &str = "applied";
    /// The current snapshot's `SnapshotMeta`, as JSON.
    pub const SNAPSHOT_META: &str = "snapshot_meta";
    /// The current snapshot's data: an applied state, encoded as under [`APPLIED`].
    pub const SNAPSHOT_DATA: &str = "snapshot_data";
}

/// Why a node's store could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot create the data directory {path}: {source}")]
    CreateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot open {path}: {source}")]
    Open { path: PathBuf, source: DiskError },
    #[error("the data directory is in use: {0}")]
    Locked(#[from] LockError),
    /// redb refused the file with an assertion: it is torn or not a store.
    #[error(
        "{} is damaged ({reason}): restore it from a backup, or remove the data directory \
         and add this node to the group again (--join, then add-learner and promote)",
        path.display()
    )]
    Damaged { path: PathBuf, reason: String },
}

/// A failed redb call or a record that does not decode.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    /// Boxed: redb's error is large, and every storage call returns this.
    #[error(transparent)]
    Redb(Box<redb::Error>),
    #[error("undecodable record: {0}")]
    Json(#[from] serde_json::Error),
}

// redb returns one error type per kind of call; all of them are a `redb::Error`.
impl From<redb::Error> for DiskError {
    fn from(e: redb::Error) -> Self {
        Self::Redb(Box::new(e))
    }
}
impl From<redb::DatabaseError> for DiskError {
    fn from(e: redb::DatabaseError) -> Self {
        Self::Redb(Box::new(e.into()))
    }
}
impl From<redb::TransactionError> for DiskError {
    fn from(e: redb::TransactionError) -> Self {
        Self::Redb(Box::new(e.into()))
    }
}
impl From<redb::TableError> for DiskError {
    fn from(e: redb::TableError) -> Self {
        Self::Redb(Box::new(e.into()))
    }
}
impl From<redb::StorageError> for DiskError {
    fn from(e: redb::StorageError) -> Self {
        Self::Redb(Box::new(e.into()))
    }
}
impl From<redb::CommitError> for DiskError {
    fn from(e: redb::CommitError) -> Self {
        Self::Redb(Box::new(e.into()))
    }
}

/// The open redb file, shared by a node's stores and by the log readers and snapshot builders
/// Raft makes of them.
pub(crate) struct StoreFile {
    db: Database,
    /// Held while the file is open: a second process on the data directory is refused
    /// with this one's pid.
    _lock: DirLock,
    /// Dropped right after `db` (fields drop in order): tells [`StoreClosed`] that the file
    /// may be opened again.
    _open: watch::Sender<()>,
}

impl Deref for StoreFile {
    type Target = Database;

    fn deref(&self) -> &Database {
        &self.db
    }
}

/// Resolves once every user of a store is gone and its file is closed.
///
/// redb opens a file once per process, and openraft lets go of the stores a little after
/// `Raft::shutdown` returns (its state machine worker ends on its own): a node restarted in
/// the same process waits for this first.
pub struct StoreClosed(watch::Receiver<()>);

impl StoreClosed {
    pub async fn wait(mut self) {
        // Nothing is ever sent: the only change is the sender going away.
        while self.0.changed().await.is_ok() {}
    }
}

/// A node's store, opened.
pub struct OpenStore {
    pub log: LogStore,
    pub state_machine: StateMachineStore,
    pub closed: StoreClosed,
}

/// Opens (or creates) the store of a node in `dir`.
/// The thread that opens a store: redb meets a torn file with a failed assertion, which
/// is reported as [`StoreError::Damaged`], not printed as a panic.
const OPENING_THREAD: &str = "raft-store-open";

fn quiet_panics_while_opening() {
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if std::thread::current().name() != Some(OPENING_THREAD) {
                previous(info);
            }
        }));
    });
}

pub fn open(dir: &Path) -> Result<OpenStore, StoreError> {
    quiet_panics_while_opening();
    let path = dir.join("raft.redb");
    let dir = dir.to_path_buf();
    let opening = std::thread::Builder::new()
        .name(OPENING_THREAD.to_string())
        .spawn(move || open_here(&dir))
        .map_err(|source| StoreError::CreateDir {
            path: path.clone(),
            source,
        })?;
    match opening.join() {
        Ok(opened) => opened,
        Err(panic) => {
            let reason = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unreadable".to_string());
            Err(StoreError::Damaged {
                path,
                reason: reason.lines().next().unwrap_or_default().to_string(),
            })
        }
    }
}

fn open_here(dir: &Path) -> Result<OpenStore, StoreError> {
    std::fs::create_dir_all(dir).map_err(|source| StoreError::CreateDir {
        path: dir.to_path_buf(),
        source,
    })?;
    let lock = DirLock::acquire(dir, "LOCK")?;
    let path = dir.join("raft.redb");
    let opened = (|| -> Result<_, DiskError> {
        let db = Database::create(&path)?;
        // Create the tables up front so that a read never meets a missing table.
        let txn = db.begin_write()?;
        txn.open_table(LOG)?;
        txn.open_table(LOG_META)?;
        txn.open_table(STATE_MACHINE)?;
        txn.commit()?;
        let (open, closed) = watch::channel(());
        let file = Arc::new(StoreFile {
            db,
            _lock: lock,
            _open: open,
        });
        Ok(OpenStore {
            log: LogStore::new(file.clone()),
            state_machine: StateMachineStore::open(file)?,
            closed: StoreClosed(closed),
        })
    })();
    opened.map_err(|source| StoreError::Open { path, source })
}

/// Runs redb calls on tokio's blocking pool and reports their failure as Raft storage errors
/// about `subject`.
///
/// A commit waits for fsync (milliseconds on a disk); on the runtime's own threads it would
/// hold up the Raft core, the replication tasks and the gRPC server that share them.
pub(crate) async fn blocking<T, F>(
    subject: ErrorSubject<NodeId>,
    verb: ErrorVerb,
    f: F,
) -> Result<T, StorageError<NodeId>>
where
    F: FnOnce() -> Result<T, DiskError> + Send + 'static,
    T: Send + 'static,
{
    match tokio::task::spawn_blocking(f).await {
        Ok(result) => result.map_err(|e| storage_error(subject, verb, &e)),
        // A panic in a storage call is our bug: let it reach the Raft core, which stops.
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(e) => Err(storage_error(subject, verb, &e)),
    }
}

/// openraft's error for a failed storage call: what was being read or written, and why.
pub(crate) fn storage_error(
    subject: ErrorSubject<NodeId>,
    verb: ErrorVerb,
    e: &(impl std::error::Error + 'static),
) -> StorageError<NodeId> {
    StorageIOError::new(subject, verb, AnyError::new(e)).into()
}
