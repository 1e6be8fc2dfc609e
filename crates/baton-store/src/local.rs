//! [`LocalStore`]: a one-member store on a redb file.
//!
//! One writer thread owns the database. Proposals queue on a channel; the
//! writer takes every queued proposal (up to [`MAX_BATCH`]), appends them in a
//! single write transaction (one fsync for the group), then applies them in log
//! order and answers each proposer. Readers never touch the database: they get
//! the in-memory snapshot, published after every batch.
//!
//! Every `snapshot_every` entries the writer stores the whole state and drops the
//! log up to it in the same transaction, so opening replays a bounded log.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread;

use baton_state::{Command, State};
use redb::{Database, ReadableDatabase, TableDefinition};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot, watch};

use crate::{Applied, Snapshot, Store, StoreError};

/// Log entries: index -> JSON of the command.
const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("log");
/// Metadata: "snapshot" -> JSON of [`SnapshotRecord`].
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const SNAPSHOT_KEY: &str = "snapshot";

/// Most proposals appended in one transaction. Bounds the latency a proposal
/// waits behind others; 1024 JSON commands are well under a megabyte.
const MAX_BATCH: usize = 1024;

/// Settings of a [`LocalStore`].
#[derive(Clone, Debug)]
pub struct LocalStoreConfig {
    /// The database file.
    pub path: PathBuf,
    /// Store a snapshot and compact the log after this many entries.
    pub snapshot_every: u64,
}

impl LocalStoreConfig {
    /// Defaults for a database at `path`: a snapshot every 10,000 entries, which
    /// keeps replay on open well under a second.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        LocalStoreConfig {
            path: path.into(),
            snapshot_every: 10_000,
        }
    }
}

/// The persisted snapshot.
#[derive(Serialize, Deserialize)]
struct SnapshotRecord {
    /// Format version of this record.
    version: u32,
    /// Last log index included.
    index: u64,
    /// The state.
    state: State,
}

type Reply = oneshot::Sender<Result<Applied, StoreError>>;

/// A store with one member, on a redb database.
#[derive(Debug)]
pub struct LocalStore {
    proposals: mpsc::Sender<(Command, Reply)>,
    snapshots: watch::Receiver<Arc<Snapshot>>,
    writer: Option<thread::JoinHandle<()>>,
}

fn fatal(context: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Fatal(format!("{context}: {e}"))
}

impl LocalStore {
    /// Opens (or creates) the store and replays its log.
    pub fn open(config: LocalStoreConfig) -> Result<LocalStore, StoreError> {
        // The state holds key material (the root CA's key): owner only,
        // from the first byte on (redb initialises an existing empty file).
        {
            use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .mode(0o600)
                .open(&config.path)
                .map_err(|e| fatal(&format!("opening {}", config.path.display()), e))?;
            file.set_permissions(std::fs::Permissions::from_mode(0o600))
                .map_err(|e| fatal(&format!("restricting {}", config.path.display()), e))?;
        }
        let db = Database::create(&config.path)
            .map_err(|e| fatal(&format!("opening {}", config.path.display()), e))?;
        let snapshot = load(&db)?;
        tracing::info!(
            path = %config.path.display(),
            index = snapshot.index,
            jobs = snapshot.state.jobs().count(),
            tasks = snapshot.state.n_tasks(),
            "store opened"
        );
        let (snapshot_tx, snapshot_rx) = watch::channel(Arc::new(snapshot.clone()));
        let (proposal_tx, proposal_rx) = mpsc::channel(4 * MAX_BATCH);
        let mut writer = Writer {
            db,
            state: snapshot.state,
            index: snapshot.index,
            snapshot_index: snapshot.index,
            snapshot_every: config.snapshot_every.max(1),
            snapshots: snapshot_tx,
        };
        let handle = thread::Builder::new()
            .name("baton-store-writer".to_owned())
            .spawn(move || writer.run(proposal_rx))
            .map_err(|e| fatal("starting the store writer", e))?;
        Ok(LocalStore {
            proposals: proposal_tx,
            snapshots: snapshot_rx,
            writer: Some(handle),
        })
    }

    /// Stops accepting proposals, finishes the queued ones and closes the database.
    pub fn close(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        // Replacing the sender drops ours; the writer ends once the queue drains.
        let (closed, _) = mpsc::channel(1);
        self.proposals = closed;
        if let Some(handle) = self.writer.take()
            && handle.join().is_err()
        {
            tracing::error!("store writer panicked");
        }
    }
}

impl Drop for LocalStore {
    fn drop(&mut self) {
        self.shutdown();
    }
}

#[async_trait::async_trait]
impl Store for LocalStore {
    async fn propose(&self, cmd: Command) -> Result<Applied, StoreError> {
        let (reply_tx, reply_rx) = oneshot::channel();
        self.proposals
            .send((cmd, reply_tx))
            .await
            .map_err(|_| StoreError::Unavailable("store is closed".to_owned()))?;
        reply_rx
            .await
            .map_err(|_| StoreError::Unavailable("store closed before commit".to_owned()))?
    }

    fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshots.borrow().clone()
    }

    fn subscribe(&self) -> watch::Receiver<Arc<Snapshot>> {
        self.snapshots.clone()
    }
}

/// Loads the stored snapshot and replays the log after it.
fn load(db: &Database) -> Result<Snapshot, StoreError> {
    let read = db.begin_read().map_err(|e| fatal("reading the store", e))?;
    let mut snapshot = Snapshot::default();
    match read.open_table(META) {
        Ok(meta) => {
            if let Some(bytes) = meta
                .get(SNAPSHOT_KEY)
                .map_err(|e| fatal("reading the snapshot", e))?
            {
                let record: SnapshotRecord = serde_json::from_slice(bytes.value())
                    .map_err(|e| fatal("decoding the snapshot", e))?;
                snapshot = Snapshot {
                    index: record.index,
                    state: record.state,
                };
            }
        }
        Err(redb::TableError::TableDoesNotExist(_)) => {}
        Err(e) => return Err(fatal("opening the metadata table", e)),
    }
    match read.open_table(LOG) {
        Ok(log) => {
            let entries = log
                .range(snapshot.index + 1..)
                .map_err(|e| fatal("reading the log", e))?;
            for entry in entries {
                let (index, bytes) = entry.map_err(|e| fatal("reading the log", e))?;
                let index = index.value();
                let cmd: Command = serde_json::from_slice(bytes.value())
                    .map_err(|e| fatal(&format!("decoding log entry {index}"), e))?;
                // A command the state machine refused was refused the same way
                // when first applied; replay keeps it a no-op.
                let _ = snapshot.state.apply(cmd);
                snapshot.index = index;
            }
        }
        Err(redb::TableError::TableDoesNotExist(_)) => {}
        Err(e) => return Err(fatal("opening the log table", e)),
    }
    Ok(snapshot)
}

struct Writer {
    db: Database,
    state: State,
    index: u64,
    snapshot_index: u64,
    snapshot_every: u64,
    snapshots: watch::Sender<Arc<Snapshot>>,
}

impl Writer {
    fn run(&mut self, mut proposals: mpsc::Receiver<(Command, Reply)>) {
        let mut batch = Vec::with_capacity(MAX_BATCH);
        while let Some(first) = proposals.blocking_recv() {
            batch.push(first);
            while batch.len() < MAX_BATCH {
                match proposals.try_recv() {
                    Ok(next) => batch.push(next),
                    Err(_) => break,
                }
            }
            self.commit_batch(&mut batch);
        }
        tracing::debug!(index = self.index, "store writer stopped");
    }

    fn commit_batch(&mut self, batch: &mut Vec<(Command, Reply)>) {
        if let Err(e) = self.append(batch) {
            tracing::error!(error = %e, "store append failed");
            for (_, reply) in batch.drain(..) {
                let _ = reply.send(Err(fatal("appending to the log", &e)));
            }
            return;
        }
        let mut results = Vec::with_capacity(batch.len());
        for (cmd, reply) in batch.drain(..) {
            self.index += 1;
            let result = self
                .state
                .apply(cmd)
                .map(|events| Applied {
                    index: self.index,
                    events,
                })
                .map_err(StoreError::from);
            results.push((reply, result));
        }
        // Publish before answering, so a proposer reads its own write.
        self.snapshots.send_replace(Arc::new(Snapshot {
            index: self.index,
            state: self.state.clone(),
        }));
        for (reply, result) in results {
            let _ = reply.send(result);
        }
        if self.index - self.snapshot_index >= self.snapshot_every {
            match self.save_snapshot() {
                Ok(()) => self.snapshot_index = self.index,
                Err(e) => tracing::error!(error = %e, "store snapshot failed"),
            }
        }
    }

    fn append(&self, batch: &[(Command, Reply)]) -> Result<(), StoreError> {
        let write = self.db.begin_write().map_err(|e| fatal("write", e))?;
        {
            let mut log = write.open_table(LOG).map_err(|e| fatal("log table", e))?;
            for (offset, (cmd, _)) in (1u64..).zip(batch) {
                let bytes = serde_json::to_vec(cmd).map_err(|e| fatal("encoding", e))?;
                log.insert(self.index + offset, bytes.as_slice())
                    .map_err(|e| fatal("insert", e))?;
            }
        }
        write.commit().map_err(|e| fatal("commit", e))
    }

    fn save_snapshot(&self) -> Result<(), StoreError> {
        let record = SnapshotRecord {
            version: 1,
            index: self.index,
            state: self.state.clone(),
        };
        let bytes = serde_json::to_vec(&record).map_err(|e| fatal("encoding snapshot", e))?;
        let write = self.db.begin_write().map_err(|e| fatal("write", e))?;
        {
            let mut meta = write.open_table(META).map_err(|e| fatal("meta table", e))?;
            meta.insert(SNAPSHOT_KEY, bytes.as_slice())
                .map_err(|e| fatal("insert snapshot", e))?;
            let mut log = write.open_table(LOG).map_err(|e| fatal("log table", e))?;
            log.retain_in(..=self.index, |_, _| false)
                .map_err(|e| fatal("compacting the log", e))?;
        }
        write.commit().map_err(|e| fatal("commit snapshot", e))?;
        tracing::debug!(index = self.index, bytes = bytes.len(), "snapshot stored");
        Ok(())
    }
}

/// The default database file inside a data dir.
pub fn default_path(data_dir: &Path) -> PathBuf {
    data_dir.join("state.redb")
}

#[cfg(test)]
mod tests;
