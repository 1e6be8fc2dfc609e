//! The state machine: Baton's [`State`], applied from committed entries.
//!
//! The state lives in memory; every applied batch publishes a new
//! [`Snapshot`] (an O(1) clone) to readers. Durability comes from the log:
//! a restarted member loads its last stored snapshot and openraft re-applies
//! the committed entries after it (the committed id is persisted by
//! [`super::log_store`]). A snapshot (the state as JSON, with the Raft
//! metadata) is built every `snapshot_every` entries, stored in the database
//! sealed with the data key (bound to `baton/raft_snapshot/current`), and
//! sent, in the clear over the cluster port's mutual TLS, to members too far
//! behind to catch up from the log (which seal it with their own key).

use std::fmt::Debug;
use std::io::{self, Cursor};
use std::sync::{Arc, Mutex, PoisonError};

use baton_state::State;
use futures::{Stream, TryStreamExt};
use openraft::storage::{EntryResponder, RaftSnapshotBuilder, RaftStateMachine};
use openraft::{EntryPayload, OptionalSend};
use redb::{Database, ReadableDatabase, TableDefinition};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::log_store::io_err;
use super::types::{Entry, LogId, Outcome, SnapshotMeta, StoredMembership, TypeConfig};
use crate::Snapshot;
use crate::seal::SealKey;

/// The stored snapshot: `current` -> JSON of [`StoredSnapshot`], sealed.
pub(crate) const RAFT_SNAPSHOT: TableDefinition<&str, &[u8]> =
    TableDefinition::new("raft_snapshot");
pub(crate) const CURRENT: &str = "current";
/// The associated data of the stored snapshot: its place.
const SNAPSHOT_AAD: &[u8] = b"baton/raft_snapshot/current";

/// A snapshot as stored and as sent to another member.
#[derive(Serialize, Deserialize)]
pub(crate) struct StoredSnapshot {
    pub(crate) meta: SnapshotMeta,
    /// JSON of the state.
    pub(crate) data: Vec<u8>,
}

/// The state machine's contents: the state, the last entry applied to it
/// and the last membership among the entries applied.
pub(crate) struct Applied {
    pub(crate) state: State,
    pub(crate) last_applied: Option<LogId>,
    pub(crate) membership: StoredMembership,
}

impl Applied {
    /// The contents as of a stored snapshot (empty without one).
    pub(crate) fn restore(stored: Option<StoredSnapshot>) -> Result<Applied, io::Error> {
        Ok(match stored {
            Some(stored) => Applied {
                state: decode_state(&stored.data)?,
                last_applied: stored.meta.last_log_id,
                membership: stored.meta.last_membership,
            },
            None => Applied {
                state: State::default(),
                last_applied: None,
                membership: StoredMembership::default(),
            },
        })
    }

    /// Applies one committed entry.
    pub(crate) fn apply(&mut self, entry: Entry) -> Outcome {
        self.last_applied = Some(entry.log_id);
        match entry.payload {
            EntryPayload::Blank => Outcome(Ok(Vec::new())),
            EntryPayload::Normal(proposal) => Outcome(self.state.apply(proposal.0)),
            EntryPayload::Membership(membership) => {
                self.membership = StoredMembership::new(Some(entry.log_id), membership);
                Outcome(Ok(Vec::new()))
            }
        }
    }
}

/// The state machine. Clones share it (the snapshot builder is a clone).
#[derive(Clone)]
pub struct StateMachine {
    db: Arc<Database>,
    /// Seals the stored snapshot.
    key: Arc<SealKey>,
    applied: Arc<Mutex<Applied>>,
    published: watch::Sender<Arc<Snapshot>>,
}

impl Debug for StateMachine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateMachine").finish_non_exhaustive()
    }
}

/// Opens and decodes a stored snapshot.
pub(crate) fn open_snapshot(key: &SealKey, sealed: &[u8]) -> Result<StoredSnapshot, io::Error> {
    let json = key
        .open(SNAPSHOT_AAD, sealed)
        .map_err(|e| io_err("the stored snapshot", e))?;
    serde_json::from_slice(&json).map_err(|e| io_err("decoding the snapshot", e))
}

/// Encodes and seals a snapshot for storing.
pub(crate) fn seal_snapshot(
    key: &SealKey,
    snapshot: &StoredSnapshot,
) -> Result<Vec<u8>, io::Error> {
    let json = zeroize::Zeroizing::new(
        serde_json::to_vec(snapshot).map_err(|e| io_err("encoding the snapshot", e))?,
    );
    Ok(key.seal(SNAPSHOT_AAD, &json))
}

fn load_snapshot(db: &Database, key: &SealKey) -> Result<Option<StoredSnapshot>, io::Error> {
    let read = db.begin_read().map_err(|e| io_err("read", e))?;
    let table = match read.open_table(RAFT_SNAPSHOT) {
        Ok(table) => table,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
        Err(e) => return Err(io_err("open raft_snapshot", e)),
    };
    match table
        .get(CURRENT)
        .map_err(|e| io_err("read raft_snapshot", e))?
    {
        Some(bytes) => Ok(Some(open_snapshot(key, bytes.value())?)),
        None => Ok(None),
    }
}

fn store_snapshot(
    db: &Database,
    key: &SealKey,
    snapshot: &StoredSnapshot,
) -> Result<(), io::Error> {
    let bytes = seal_snapshot(key, snapshot)?;
    let txn = db.begin_write().map_err(|e| io_err("write", e))?;
    {
        let mut table = txn
            .open_table(RAFT_SNAPSHOT)
            .map_err(|e| io_err("open raft_snapshot", e))?;
        table
            .insert(CURRENT, bytes.as_slice())
            .map_err(|e| io_err("write raft_snapshot", e))?;
    }
    txn.commit().map_err(|e| io_err("commit", e))
}

fn decode_state(data: &[u8]) -> Result<State, io::Error> {
    serde_json::from_slice(data).map_err(|e| io_err("decoding the state", e))
}

impl StateMachine {
    /// The state machine over `db`, starting from its stored snapshot;
    /// snapshots are sealed with `key`.
    pub fn open(db: Arc<Database>, key: SealKey) -> Result<StateMachine, io::Error> {
        let applied = Applied::restore(load_snapshot(&db, &key)?)?;
        let first = Snapshot {
            index: applied.last_applied.map_or(0, |id| id.index()),
            state: applied.state.clone(),
        };
        let (published, _) = watch::channel(Arc::new(first));
        Ok(StateMachine {
            db,
            key: Arc::new(key),
            applied: Arc::new(Mutex::new(applied)),
            published,
        })
    }

    /// Receives every published snapshot.
    pub fn subscribe(&self) -> watch::Receiver<Arc<Snapshot>> {
        self.published.subscribe()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Applied> {
        self.applied.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn publish(&self, applied: &Applied) {
        self.published.send_replace(Arc::new(Snapshot {
            index: applied.last_applied.map_or(0, |id| id.index()),
            state: applied.state.clone(),
        }));
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    type SnapshotData = Cursor<Vec<u8>>;

    async fn build_snapshot(
        &mut self,
    ) -> Result<openraft::alias::SnapshotOf<TypeConfig, Cursor<Vec<u8>>>, io::Error> {
        let (state, meta) = {
            let applied = self.lock();
            (
                applied.state.clone(),
                SnapshotMeta {
                    last_log_id: applied.last_applied,
                    last_membership: applied.membership.clone(),
                },
            )
        };
        let (db, key) = (self.db.clone(), self.key.clone());
        let stored = tokio::task::spawn_blocking(move || {
            let data = serde_json::to_vec(&state).map_err(|e| io_err("encoding the state", e))?;
            let stored = StoredSnapshot { meta, data };
            store_snapshot(&db, &key, &stored)?;
            Ok::<_, io::Error>(stored)
        })
        .await
        .map_err(|e| io_err("snapshot task", e))??;
        tracing::info!(
            index = stored.meta.last_log_id.map_or(0, |id| id.index()),
            bytes = stored.data.len(),
            "state snapshot stored"
        );
        Ok(openraft::alias::SnapshotOf::<TypeConfig, Cursor<Vec<u8>>> {
            meta: stored.meta,
            snapshot: Cursor::new(stored.data),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotData = Cursor<Vec<u8>>;
    type SnapshotBuilder = StateMachine;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), io::Error> {
        let applied = self.lock();
        Ok((applied.last_applied, applied.membership.clone()))
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> Result<(), io::Error>
    where
        Strm: Stream<Item = Result<EntryResponder<TypeConfig>, io::Error>> + Unpin + OptionalSend,
    {
        let mut responses = Vec::new();
        while let Some((entry, responder)) = entries.try_next().await? {
            let outcome = self.lock().apply(entry);
            if let Some(responder) = responder {
                responses.push((responder, outcome));
            }
        }
        // Readers see the new state before any proposer hears back, so a
        // proposer's next read includes its own write.
        self.publish(&self.lock());
        for (responder, outcome) in responses {
            responder.send(outcome);
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Self::SnapshotData,
    ) -> Result<(), io::Error> {
        let data = snapshot.into_inner();
        let state = decode_state(&data)?;
        let stored = StoredSnapshot {
            meta: meta.clone(),
            data,
        };
        let (db, key) = (self.db.clone(), self.key.clone());
        let stored = tokio::task::spawn_blocking(move || {
            store_snapshot(&db, &key, &stored)?;
            Ok::<_, io::Error>(stored)
        })
        .await
        .map_err(|e| io_err("snapshot task", e))??;
        let mut applied = self.lock();
        *applied = Applied {
            state,
            last_applied: stored.meta.last_log_id,
            membership: stored.meta.last_membership,
        };
        self.publish(&applied);
        tracing::info!(
            index = applied.last_applied.map_or(0, |id| id.index()),
            "state snapshot installed"
        );
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<openraft::alias::SnapshotOf<TypeConfig, Self::SnapshotData>>, io::Error>
    {
        let (db, key) = (self.db.clone(), self.key.clone());
        let stored = tokio::task::spawn_blocking(move || load_snapshot(&db, &key))
            .await
            .map_err(|e| io_err("snapshot task", e))??;
        Ok(stored.map(
            |stored| openraft::alias::SnapshotOf::<TypeConfig, Self::SnapshotData> {
                meta: stored.meta,
                snapshot: Cursor::new(stored.data),
            },
        ))
    }
}
