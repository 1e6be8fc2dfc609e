//! The Raft log, the vote and the committed id in the embedded database.
//!
//! Every write is one redb transaction with an fsync (redb's default
//! durability), made on the blocking pool so the async runtime never waits
//! on the disk. openraft hands a whole batch of entries to one `append`, so
//! concurrent proposals share a transaction and an fsync (group commit). An
//! entry's flush is reported only after its transaction committed: Raft
//! never counts an entry toward a quorum before it is on disk.

use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::sync::Arc;

use openraft::OptionalSend;
use openraft::entry::RaftEntry;
use openraft::storage::{IOFlushed, LogState, RaftLogReader, RaftLogStorage};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::types::{Entry, LogId, TypeConfig, Vote};

/// Entries: index -> JSON of the entry.
pub(crate) const RAFT_LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("raft_log");
/// Raft metadata: `vote`, `committed`, `purged` -> JSON.
pub(crate) const RAFT_META: TableDefinition<&str, &[u8]> = TableDefinition::new("raft_meta");

pub(crate) const VOTE: &str = "vote";
pub(crate) const COMMITTED: &str = "committed";
pub(crate) const PURGED: &str = "purged";

pub(crate) fn io_err(context: &str, e: impl std::fmt::Display) -> io::Error {
    io::Error::other(format!("{context}: {e}"))
}

pub(crate) fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, io::Error> {
    serde_json::to_vec(value).map_err(|e| io_err("encoding", e))
}

pub(crate) fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, io::Error> {
    serde_json::from_slice(bytes).map_err(|e| io_err("decoding", e))
}

/// Runs `f` on the blocking pool: redb calls block on the disk.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, io::Error> + Send + 'static,
) -> Result<T, io::Error> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| io_err("storage task", e))?
}

/// Reads one metadata value.
fn read_meta<T: DeserializeOwned>(db: &Database, key: &str) -> Result<Option<T>, io::Error> {
    let read = db.begin_read().map_err(|e| io_err("read", e))?;
    let table = match read.open_table(RAFT_META) {
        Ok(table) => table,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
        Err(e) => return Err(io_err("open raft_meta", e)),
    };
    match table.get(key).map_err(|e| io_err("read raft_meta", e))? {
        Some(bytes) => Ok(Some(decode(bytes.value())?)),
        None => Ok(None),
    }
}

/// Writes one metadata value durably.
fn write_meta(db: &Database, key: &str, bytes: &[u8]) -> Result<(), io::Error> {
    let txn = db.begin_write().map_err(|e| io_err("write", e))?;
    {
        let mut table = txn
            .open_table(RAFT_META)
            .map_err(|e| io_err("open raft_meta", e))?;
        table
            .insert(key, bytes)
            .map_err(|e| io_err("write raft_meta", e))?;
    }
    txn.commit().map_err(|e| io_err("commit", e))
}

/// The log storage: a handle on the shared database. Clones share it.
#[derive(Clone)]
pub struct LogStore {
    db: Arc<Database>,
}

impl Debug for LogStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogStore").finish_non_exhaustive()
    }
}

impl LogStore {
    /// The log in `db`.
    pub fn new(db: Arc<Database>) -> LogStore {
        LogStore { db }
    }

    fn entries(&self, range: (Bound<u64>, Bound<u64>)) -> Result<Vec<Entry>, io::Error> {
        let read = self.db.begin_read().map_err(|e| io_err("read", e))?;
        let table = match read.open_table(RAFT_LOG) {
            Ok(table) => table,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(io_err("open raft_log", e)),
        };
        let mut out = Vec::new();
        for item in table.range(range).map_err(|e| io_err("read raft_log", e))? {
            let (_, bytes) = item.map_err(|e| io_err("read raft_log", e))?;
            out.push(decode(bytes.value())?);
        }
        Ok(out)
    }
}

fn owned_bounds(range: &impl RangeBounds<u64>) -> (Bound<u64>, Bound<u64>) {
    (range.start_bound().cloned(), range.end_bound().cloned())
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, io::Error> {
        let this = self.clone();
        let range = owned_bounds(&range);
        blocking(move || this.entries(range)).await
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, io::Error> {
        let db = self.db.clone();
        blocking(move || read_meta(&db, VOTE)).await
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, io::Error> {
        let db = self.db.clone();
        blocking(move || {
            let purged: Option<LogId> = read_meta(&db, PURGED)?;
            let read = db.begin_read().map_err(|e| io_err("read", e))?;
            let last = match read.open_table(RAFT_LOG) {
                Ok(table) => match table.last().map_err(|e| io_err("read raft_log", e))? {
                    Some((_, bytes)) => Some(decode::<Entry>(bytes.value())?.log_id()),
                    None => None,
                },
                Err(redb::TableError::TableDoesNotExist(_)) => None,
                Err(e) => return Err(io_err("open raft_log", e)),
            };
            Ok(LogState {
                last_purged_log_id: purged,
                last_log_id: last.or(purged),
            })
        })
        .await
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), io::Error> {
        let (db, bytes) = (self.db.clone(), encode(vote)?);
        blocking(move || write_meta(&db, VOTE, &bytes)).await
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), io::Error> {
        // Kept so that a restarted member re-applies what was committed: the
        // state machine lives in memory, rebuilt from the last snapshot.
        let (db, bytes) = (self.db.clone(), encode(&committed)?);
        blocking(move || write_meta(&db, COMMITTED, &bytes)).await
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, io::Error> {
        let db = self.db.clone();
        blocking(move || Ok(read_meta::<Option<LogId>>(&db, COMMITTED)?.flatten())).await
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: IOFlushed<TypeConfig>,
    ) -> Result<(), io::Error>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let encoded = entries
            .into_iter()
            .map(|entry| Ok((entry.index(), encode(&entry)?)))
            .collect::<Result<Vec<_>, io::Error>>()?;
        let db = self.db.clone();
        let written = blocking(move || {
            let txn = db.begin_write().map_err(|e| io_err("write", e))?;
            {
                let mut table = txn
                    .open_table(RAFT_LOG)
                    .map_err(|e| io_err("open raft_log", e))?;
                for (index, bytes) in &encoded {
                    table
                        .insert(*index, bytes.as_slice())
                        .map_err(|e| io_err("append", e))?;
                }
            }
            txn.commit().map_err(|e| io_err("commit", e))
        })
        .await;
        match written {
            Ok(()) => {
                callback.io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                callback.io_completed(Err(io::Error::new(e.kind(), e.to_string())));
                Err(e)
            }
        }
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> Result<(), io::Error> {
        let from = last_log_id.map_or(0, |id| id.index() + 1);
        let db = self.db.clone();
        blocking(move || {
            let txn = db.begin_write().map_err(|e| io_err("write", e))?;
            {
                let mut table = txn
                    .open_table(RAFT_LOG)
                    .map_err(|e| io_err("open raft_log", e))?;
                table
                    .retain_in(from.., |_, _| false)
                    .map_err(|e| io_err("truncate", e))?;
            }
            txn.commit().map_err(|e| io_err("commit", e))
        })
        .await
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), io::Error> {
        let (db, bytes) = (self.db.clone(), encode(&log_id)?);
        let upto = log_id.index();
        blocking(move || {
            let txn = db.begin_write().map_err(|e| io_err("write", e))?;
            {
                let mut meta = txn
                    .open_table(RAFT_META)
                    .map_err(|e| io_err("open raft_meta", e))?;
                meta.insert(PURGED, bytes.as_slice())
                    .map_err(|e| io_err("write raft_meta", e))?;
                let mut table = txn
                    .open_table(RAFT_LOG)
                    .map_err(|e| io_err("open raft_log", e))?;
                table
                    .retain_in(..=upto, |_, _| false)
                    .map_err(|e| io_err("purge", e))?;
            }
            txn.commit().map_err(|e| io_err("commit", e))
        })
        .await
    }
}
