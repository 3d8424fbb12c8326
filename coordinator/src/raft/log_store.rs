//! The Raft log and vote of a coordinator, in redb.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::Arc;

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{
    ErrorSubject, ErrorVerb, LogId, OptionalSend, RaftLogId, RaftLogReader, StorageError, Vote,
};
use redb::{Database, ReadableTable};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::store::{blocking, log_meta, DiskError, StoreFile, LOG, LOG_META};
use super::{Entry, NodeId, TypeConfig};

/// The log entries, the vote and the committed and purged log ids of one node.
///
/// Cheap to clone: Raft's replication tasks read the log through clones while the Raft core
/// appends to it; redb gives each reader a consistent view.
#[derive(Clone)]
pub struct LogStore {
    db: Arc<StoreFile>,
}

impl LogStore {
    pub(crate) fn new(db: Arc<StoreFile>) -> Self {
        Self { db }
    }

    async fn read_meta<T>(
        &self,
        key: &'static str,
        subject: ErrorSubject<NodeId>,
    ) -> Result<Option<T>, StorageError<NodeId>>
    where
        T: DeserializeOwned + Send + 'static,
    {
        let db = self.db.clone();
        blocking(subject, ErrorVerb::Read, move || read_meta(&db, key)).await
    }

    async fn write_meta<T>(
        &self,
        key: &'static str,
        value: &T,
        subject: ErrorSubject<NodeId>,
    ) -> Result<(), StorageError<NodeId>>
    where
        T: Serialize,
    {
        let db = self.db.clone();
        let value = serde_json::to_vec(value);
        blocking(subject, ErrorVerb::Write, move || {
            let value = value?;
            let txn = db.begin_write()?;
            txn.open_table(LOG_META)?.insert(key, value.as_slice())?;
            txn.commit()?;
            Ok(())
        })
        .await
    }
}

fn read_meta<T: DeserializeOwned>(db: &Database, key: &str) -> Result<Option<T>, DiskError> {
    let txn = db.begin_read()?;
    let table = txn.open_table(LOG_META)?;
    let value = table.get(key)?;
    Ok(value
        .map(|v| serde_json::from_slice(v.value()))
        .transpose()?)
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError<NodeId>> {
        let range: (Bound<u64>, Bound<u64>) =
            (range.start_bound().cloned(), range.end_bound().cloned());
        let db = self.db.clone();
        blocking(ErrorSubject::Logs, ErrorVerb::Read, move || {
            let txn = db.begin_read()?;
            let table = txn.open_table(LOG)?;
            let mut entries = Vec::new();
            for row in table.range::<u64>(range)? {
                let (_, value) = row?;
                entries.push(serde_json::from_slice(value.value())?);
            }
            Ok(entries)
        })
        .await
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError<NodeId>> {
        let db = self.db.clone();
        blocking(ErrorSubject::Logs, ErrorVerb::Read, move || {
            let last_purged_log_id: Option<LogId<NodeId>> = read_meta(&db, log_meta::LAST_PURGED)?;
            let txn = db.begin_read()?;
            let table = txn.open_table(LOG)?;
            let last_log_id = match table.last()? {
                Some((_, value)) => {
                    let entry: Entry = serde_json::from_slice(value.value())?;
                    Some(*entry.get_log_id())
                }
                // Everything was purged (or nothing written): the log ends where it was purged.
                None => last_purged_log_id,
            };
            Ok(LogState {
                last_purged_log_id,
                last_log_id,
            })
        })
        .await
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError<NodeId>> {
        self.write_meta(log_meta::VOTE, vote, ErrorSubject::Vote)
            .await
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError<NodeId>> {
        self.read_meta(log_meta::VOTE, ErrorSubject::Vote).await
    }

    /// Saved so that a restarted node applies what was committed before it stopped without
    /// waiting for a leader to tell it again.
    async fn save_committed(
        &mut self,
        committed: Option<LogId<NodeId>>,
    ) -> Result<(), StorageError<NodeId>> {
        self.write_meta(log_meta::COMMITTED, &committed, ErrorSubject::Store)
            .await
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<NodeId>>, StorageError<NodeId>> {
        // Stored as an `Option` itself: a saved `None` reads back as `None` too.
        let committed: Option<Option<LogId<NodeId>>> = self
            .read_meta(log_meta::COMMITTED, ErrorSubject::Store)
            .await?;
        Ok(committed.flatten())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let rows: Result<Vec<(u64, Vec<u8>)>, serde_json::Error> = entries
            .into_iter()
            .map(|entry| Ok((entry.get_log_id().index, serde_json::to_vec(&entry)?)))
            .collect();
        let db = self.db.clone();
        // The commit is durable when it returns, so the entries are flushed when this does:
        // the callback follows at once.
        let written = blocking(ErrorSubject::Logs, ErrorVerb::Write, move || {
            let rows = rows?;
            let txn = db.begin_write()?;
            {
                let mut table = txn.open_table(LOG)?;
                for (index, value) in &rows {
                    table.insert(index, value.as_slice())?;
                }
            }
            txn.commit()?;
            Ok(())
        })
        .await;
        match &written {
            Ok(()) => callback.log_io_completed(Ok(())),
            Err(e) => callback.log_io_completed(Err(std::io::Error::other(e.clone()))),
        }
        written
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        let db = self.db.clone();
        blocking(ErrorSubject::Logs, ErrorVerb::Delete, move || {
            let txn = db.begin_write()?;
            txn.open_table(LOG)?
                .retain_in(log_id.index.., |_, _| false)?;
            txn.commit()?;
            Ok(())
        })
        .await
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        let db = self.db.clone();
        blocking(ErrorSubject::Logs, ErrorVerb::Delete, move || {
            let purged = serde_json::to_vec(&log_id)?;
            // One transaction: the purged log id never points past entries that still exist,
            // nor behind ones already gone.
            let txn = db.begin_write()?;
            txn.open_table(LOG_META)?
                .insert(log_meta::LAST_PURGED, purged.as_slice())?;
            txn.open_table(LOG)?
                .retain_in(..=log_id.index, |_, _| false)?;
            txn.commit()?;
            Ok(())
        })
        .await
    }
}
