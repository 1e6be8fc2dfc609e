//! The Raft log, the vote and the committed id in the embedded database.
//!
//! Every write goes, in order, to one writer thread, so the async runtime
//! never waits on the disk and writes reach the file in the order Raft made
//! them. `append` returns as soon as its entries are in memory (readable, as
//! openraft requires) and reports them flushed only once their transaction
//! committed with an fsync: a leader sends new entries to the followers
//! while they are still being written locally, so its own fsync and theirs
//! overlap, and Raft never counts an entry toward a quorum before it is on
//! disk. Appends queued while a transaction is being written share the next
//! one (group commit, on top of openraft's own batching). The vote is
//! written durably; the committed id lazily (see `save_committed`).
//!
//! Every entry is sealed with the store's data key by the writer thread,
//! just before it is written (off Raft's core task), bound to its index
//! (`baton/raft_log/` + the index, big-endian), so an entry copied to
//! another index does not open; readers open it. The metadata (vote,
//! committed id, purged id) holds only terms, member ids and indexes and
//! stays in the clear, as JSON.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex, PoisonError};

use openraft::OptionalSend;
use openraft::entry::RaftEntry;
use openraft::storage::{IOFlushed, LogState, RaftLogReader, RaftLogStorage};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::Serialize;
use serde::de::DeserializeOwned;
use zeroize::Zeroizing;

use super::types::{Entry, LogId, TypeConfig, Vote};
use crate::seal::SealKey;

/// Entries: index -> JSON of the entry, sealed.
pub(crate) const RAFT_LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("raft_log");
/// Raft metadata: `vote`, `committed`, `purged` -> JSON (in the clear), and
/// `key_check` (see [`super::check_data_key`]).
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

/// The associated data of the entry at `index`: its place in the log.
fn entry_aad(index: u64) -> Vec<u8> {
    [b"baton/raft_log/".as_slice(), &index.to_be_bytes()].concat()
}

/// An entry as stored: its JSON, sealed (as the writer thread seals it).
#[cfg(test)]
pub(crate) fn seal_entry(key: &SealKey, entry: &Entry) -> Result<Vec<u8>, io::Error> {
    let json = Zeroizing::new(encode(entry)?);
    Ok(key.seal(&entry_aad(entry.index()), &json))
}

/// The entry stored at `index`.
pub(crate) fn open_entry(key: &SealKey, index: u64, sealed: &[u8]) -> Result<Entry, io::Error> {
    let json = key
        .open(&entry_aad(index), sealed)
        .map_err(|e| io_err(&format!("log entry {index}"), e))?;
    decode(&json)
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
fn write_meta(
    db: &Database,
    key: &str,
    bytes: &[u8],
    durability: redb::Durability,
) -> Result<(), io::Error> {
    let mut txn = db.begin_write().map_err(|e| io_err("write", e))?;
    txn.set_durability(durability)
        .map_err(|e| io_err("write", e))?;
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

/// A write other than an append, run on the writer thread.
type WriteOp = Box<dyn FnOnce(&Database) -> Result<(), io::Error> + Send>;

/// A write for the writer thread.
enum Write {
    /// Entries (id, JSON), sealed by the writer; `flushed` is told once they
    /// are on disk.
    Append {
        entries: Vec<(LogId, Zeroizing<Vec<u8>>)>,
        flushed: IOFlushed<TypeConfig>,
    },
    /// Any other write, answered when done.
    Other {
        op: WriteOp,
        done: tokio::sync::oneshot::Sender<Result<(), io::Error>>,
    },
}

/// Entries appended but perhaps not yet on disk, by index: what readers
/// see in addition to the file until the writer has committed them.
type Pending = Arc<Mutex<BTreeMap<u64, Entry>>>;

/// The log storage: a handle on the shared database and its writer thread.
/// Clones share both; the thread ends when the last clone is gone.
#[derive(Clone)]
pub struct LogStore {
    db: Arc<Database>,
    /// Seals the entries.
    key: Arc<SealKey>,
    pending: Pending,
    writer: std_mpsc::Sender<Write>,
}

impl Debug for LogStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogStore").finish_non_exhaustive()
    }
}

/// Seals one batch of appends and writes it in one transaction with an
/// fsync. (Sealing here rather than in `append` keeps it off Raft's core
/// task, which every proposal of this member waits on.)
fn write_entries(
    db: &Database,
    key: &SealKey,
    batch: &[(LogId, Zeroizing<Vec<u8>>)],
) -> Result<(), io::Error> {
    let txn = db.begin_write().map_err(|e| io_err("write", e))?;
    {
        let mut table = txn
            .open_table(RAFT_LOG)
            .map_err(|e| io_err("open raft_log", e))?;
        for (log_id, json) in batch {
            let index = log_id.index();
            table
                .insert(index, key.seal(&entry_aad(index), json).as_slice())
                .map_err(|e| io_err("append", e))?;
        }
    }
    txn.commit().map_err(|e| io_err("commit", e))
}

/// The writer thread: takes writes in order; appends waiting behind one
/// another go in one transaction.
fn writer_loop(
    db: Arc<Database>,
    key: Arc<SealKey>,
    pending: Pending,
    writes: std_mpsc::Receiver<Write>,
) {
    let mut next = writes.recv().ok();
    while let Some(write) = next.take() {
        match write {
            Write::Append { entries, flushed } => {
                let mut batch = entries;
                let mut callbacks = vec![flushed];
                loop {
                    match writes.try_recv() {
                        Ok(Write::Append { entries, flushed }) => {
                            batch.extend(entries);
                            callbacks.push(flushed);
                        }
                        Ok(other) => {
                            next = Some(other);
                            break;
                        }
                        Err(_) => break,
                    }
                }
                let result = write_entries(&db, &key, &batch);
                if result.is_ok() {
                    // On disk now: readers find them in the file.
                    let mut pending = pending.lock().unwrap_or_else(PoisonError::into_inner);
                    for (log_id, _) in &batch {
                        if pending
                            .get(&log_id.index())
                            .is_some_and(|e| e.log_id() == *log_id)
                        {
                            pending.remove(&log_id.index());
                        }
                    }
                }
                for callback in callbacks {
                    callback.io_completed(match &result {
                        Ok(()) => Ok(()),
                        Err(e) => Err(io::Error::new(e.kind(), e.to_string())),
                    });
                }
            }
            Write::Other { op, done } => {
                let _ = done.send(op(&db));
            }
        }
        if next.is_none() {
            next = writes.recv().ok();
        }
    }
}

impl LogStore {
    /// The log storage over `db`, its entries sealed with `key`; starts its
    /// writer thread.
    pub fn new(db: Arc<Database>, key: SealKey) -> LogStore {
        let pending = Pending::default();
        let (writer, writes) = std_mpsc::channel();
        let key = Arc::new(key);
        let (thread_db, thread_key, thread_pending) = (db.clone(), key.clone(), pending.clone());
        std::thread::Builder::new()
            .name("raft-log-writer".to_owned())
            .spawn(move || writer_loop(thread_db, thread_key, thread_pending, writes))
            .expect("spawning the raft log writer thread");
        LogStore {
            db,
            key,
            pending,
            writer,
        }
    }

    fn lock_pending(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, Entry>> {
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs `op` on the writer thread, after every write queued before it.
    async fn write(
        &self,
        op: impl FnOnce(&Database) -> Result<(), io::Error> + Send + 'static,
    ) -> Result<(), io::Error> {
        let (done, answer) = tokio::sync::oneshot::channel();
        self.writer
            .send(Write::Other {
                op: Box::new(op),
                done,
            })
            .map_err(|_| io_err("storage", "the log writer has stopped"))?;
        answer
            .await
            .map_err(|_| io_err("storage", "the log writer has stopped"))?
    }

    fn entries(&self, range: (Bound<u64>, Bound<u64>)) -> Result<Vec<Entry>, io::Error> {
        // Pending entries first: one the writer commits and drops meanwhile
        // is then in the file when it is read below.
        let pending: BTreeMap<u64, Entry> = self
            .lock_pending()
            .range(range)
            .map(|(i, e)| (*i, e.clone()))
            .collect();
        let mut out: BTreeMap<u64, Entry> = BTreeMap::new();
        let read = self.db.begin_read().map_err(|e| io_err("read", e))?;
        match read.open_table(RAFT_LOG) {
            Ok(table) => {
                for item in table.range(range).map_err(|e| io_err("read raft_log", e))? {
                    let (index, bytes) = item.map_err(|e| io_err("read raft_log", e))?;
                    let index = index.value();
                    out.insert(index, open_entry(&self.key, index, bytes.value())?);
                }
            }
            Err(redb::TableError::TableDoesNotExist(_)) => {}
            Err(e) => return Err(io_err("open raft_log", e)),
        }
        // What is pending is newer than what the file holds at that index.
        out.extend(pending);
        Ok(out.into_values().collect())
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
        let pending_last = self
            .lock_pending()
            .values()
            .next_back()
            .map(RaftEntry::log_id);
        let (db, key) = (self.db.clone(), self.key.clone());
        blocking(move || {
            let purged: Option<LogId> = read_meta(&db, PURGED)?;
            let read = db.begin_read().map_err(|e| io_err("read", e))?;
            let last = match read.open_table(RAFT_LOG) {
                Ok(table) => match table.last().map_err(|e| io_err("read raft_log", e))? {
                    Some((index, bytes)) => {
                        Some(open_entry(&key, index.value(), bytes.value())?.log_id())
                    }
                    None => None,
                },
                Err(redb::TableError::TableDoesNotExist(_)) => None,
                Err(e) => return Err(io_err("open raft_log", e)),
            };
            Ok(LogState {
                last_purged_log_id: purged,
                last_log_id: pending_last.max(last).or(purged),
            })
        })
        .await
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), io::Error> {
        let bytes = encode(vote)?;
        // A vote must survive a crash: a member must never vote twice in a term.
        self.write(move |db| write_meta(db, VOTE, &bytes, redb::Durability::Immediate))
            .await
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), io::Error> {
        // Kept so that a restarted member re-applies what was committed: the
        // state machine lives in memory, rebuilt from the last snapshot.
        // Without an fsync of its own (it reaches the disk with the next
        // append): a marker lost in a crash only means that, at start, the
        // member applies less at first and the rest once the leader has
        // re-established the commit (`RaftStore::wait_ready`), before it
        // serves anything. Acknowledged writes rest on the log's fsync.
        let bytes = encode(&committed)?;
        self.write(move |db| write_meta(db, COMMITTED, &bytes, redb::Durability::None))
            .await
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
        let entries: Vec<Entry> = entries.into_iter().collect();
        let encoded = entries
            .iter()
            .map(|entry| Ok((entry.log_id(), Zeroizing::new(encode(entry)?))))
            .collect::<Result<Vec<_>, io::Error>>()?;
        // Readable from now on; on disk when the writer says so.
        {
            let mut pending = self.lock_pending();
            for entry in entries {
                pending.insert(entry.index(), entry);
            }
        }
        self.writer
            .send(Write::Append {
                entries: encoded,
                flushed: callback,
            })
            .map_err(|_| io_err("storage", "the log writer has stopped"))
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> Result<(), io::Error> {
        let from = last_log_id.map_or(0, |id| id.index() + 1);
        self.lock_pending().retain(|index, _| *index < from);
        self.write(move |db| {
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
        let bytes = encode(&log_id)?;
        let upto = log_id.index();
        self.lock_pending().retain(|index, _| *index > upto);
        self.write(move |db| {
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
