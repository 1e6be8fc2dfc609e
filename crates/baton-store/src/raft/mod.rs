//! [`RaftStore`]: the cluster state replicated with Raft (openraft), its
//! log, vote and snapshots in a redb file.
//!
//! A lone manager is a Raft cluster of one on exactly this code path: its
//! writes are committed by a majority of one (itself, after an fsync).
//! Proposals become `client_write`s; the answer comes back once the entry is
//! committed and applied, so an acknowledged write is on a majority's disk.
//! Readers get the in-memory state published after every applied batch.

mod log_store;
mod solo;
mod state_machine;
mod types;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use baton_state::Command;
use openraft::error::{ClientWriteError, RaftError};
use openraft::impls::BasicNode;
use openraft::{Config, Raft, SnapshotPolicy};
use redb::Database;
use tokio::sync::watch;

pub use log_store::LogStore;
pub use solo::SoloNetwork;
pub use state_machine::StateMachine;
pub use types::{Outcome, Proposal, TypeConfig, node_id, raft_id};

use crate::{Applied, Snapshot, Store, StoreError};

#[cfg(test)]
mod tests;

/// The Raft handle of this configuration.
pub type BatonRaft = Raft<TypeConfig, StateMachine>;

/// Settings of a [`RaftStore`].
#[derive(Clone, Debug)]
pub struct RaftStoreConfig {
    /// The database file.
    pub path: PathBuf,
    /// This member's Raft id ([`raft_id`] of its node id).
    pub id: u64,
    /// This member's cluster address (what other managers dial).
    pub addr: String,
    /// Store a snapshot (and let the log before it go) every this many entries.
    pub snapshot_every: u64,
}

impl RaftStoreConfig {
    /// Defaults for member `id` at `addr` with its database at `path`: a
    /// snapshot every 10,000 entries, which keeps replay on open well under
    /// a second.
    pub fn new(path: impl Into<PathBuf>, id: u64, addr: impl Into<String>) -> RaftStoreConfig {
        RaftStoreConfig {
            path: path.into(),
            id,
            addr: addr.into(),
            snapshot_every: 10_000,
        }
    }
}

fn fatal(context: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Fatal(format!("{context}: {e}"))
}

/// Opens the database, owner-only: it holds key material.
pub(crate) fn open_database(path: &std::path::Path) -> Result<Database, StoreError> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| fatal(&format!("opening {}", path.display()), e))?;
    file.set_permissions(std::fs::Permissions::from_mode(0o600))
        .map_err(|e| fatal(&format!("restricting {}", path.display()), e))?;
    Database::create(path).map_err(|e| fatal(&format!("opening {}", path.display()), e))
}

/// The Raft timing and log-compaction settings.
fn raft_config(snapshot_every: u64) -> Result<Arc<Config>, StoreError> {
    let config = Config {
        cluster_name: "baton".to_owned(),
        heartbeat_interval: 100,
        election_timeout_min: 400,
        election_timeout_max: 800,
        // A member that restarts or falls behind must not force elections.
        enable_pre_vote: Some(true),
        snapshot_policy: SnapshotPolicy::LogsSinceLast(snapshot_every),
        // Keep some log behind the snapshot so a briefly lagging member
        // catches up from the log rather than a whole snapshot.
        max_in_snapshot_log_to_keep: snapshot_every.min(1_000),
        ..Default::default()
    };
    Ok(Arc::new(
        config
            .validate()
            .map_err(|e| fatal("raft configuration", e))?,
    ))
}

/// The replicated store of one manager.
pub struct RaftStore {
    raft: BatonRaft,
    /// Held so that [`RaftStore::shutdown`] closes the file itself.
    db: std::sync::Mutex<Option<Arc<Database>>>,
    snapshots: watch::Receiver<Arc<Snapshot>>,
    id: u64,
}

impl std::fmt::Debug for RaftStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RaftStore")
            .field("id", &node_id(self.id))
            .finish_non_exhaustive()
    }
}

impl RaftStore {
    /// Opens the store of a manager that is alone in its Raft cluster: on a
    /// new database it makes itself the only member; then it waits until it
    /// leads (at once: it is its own majority).
    pub async fn open_solo(config: RaftStoreConfig) -> Result<RaftStore, StoreError> {
        let db = Arc::new(open_database(&config.path)?);
        let db_handle = db.clone();
        let log = LogStore::new(db.clone());
        let sm = StateMachine::open(db).map_err(|e| fatal("opening the state", e))?;
        let snapshots = sm.subscribe();
        let raft = Raft::new(
            config.id,
            raft_config(config.snapshot_every)?,
            SoloNetwork,
            log,
            sm,
        )
        .await
        .map_err(|e| fatal("starting raft", e))?;
        let store = RaftStore {
            raft,
            db: std::sync::Mutex::new(Some(db_handle)),
            snapshots,
            id: config.id,
        };
        if !store
            .raft
            .is_initialized()
            .await
            .map_err(|e| fatal("raft", e))?
        {
            let me = BasicNode {
                addr: config.addr.clone(),
            };
            store
                .raft
                .initialize(std::collections::BTreeMap::from([(config.id, me)]))
                .await
                .map_err(|e| fatal("initialising raft", e))?;
        }
        store
            .raft
            .wait(Some(Duration::from_secs(30)))
            .current_leader(config.id, "a lone manager leads")
            .await
            .map_err(|e| fatal("waiting for leadership", e))?;
        // Everything committed before a restart is applied before anyone reads.
        store
            .raft
            .ensure_linearizable(openraft::raft::ReadPolicy::ReadIndex)
            .await
            .map_err(|e| fatal("catching up", e))?;
        tracing::info!(
            member = %node_id(config.id),
            index = store.snapshot().index,
            "store opened"
        );
        Ok(store)
    }

    /// A lone member with Raft id 1 at `path`, whose address nobody dials:
    /// for tools and tests that need a store and no cluster.
    pub async fn open_solo_at(path: &std::path::Path) -> Result<RaftStore, StoreError> {
        RaftStore::open_solo(RaftStoreConfig::new(path, 1, "127.0.0.1:0")).await
    }

    /// The Raft handle (membership, metrics).
    pub fn raft(&self) -> &BatonRaft {
        &self.raft
    }

    /// Stops Raft and closes the database file: when this returns, the
    /// store can be opened again (by this process or another).
    pub async fn shutdown(&self) {
        if let Err(e) = self.raft.shutdown().await {
            tracing::warn!(error = %e, "raft did not stop cleanly");
        }
        let Some(db) = self
            .db
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
        else {
            return;
        };
        // Raft's tasks let go of their handles as they wind down; the last
        // one closes the file (redb finishes its bookkeeping on drop), so
        // wait until ours is the last, then drop it here.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while Arc::strong_count(&db) > 1 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        if Arc::strong_count(&db) > 1 {
            tracing::warn!("the database is still in use after raft stopped");
        }
        let _ = tokio::task::spawn_blocking(move || drop(db)).await;
    }
}

#[async_trait::async_trait]
impl Store for RaftStore {
    async fn propose(&self, cmd: Command) -> Result<Applied, StoreError> {
        match self.raft.client_write(Proposal(cmd)).await {
            Ok(response) => match response.data.0 {
                Ok(events) => Ok(Applied {
                    index: response.log_id.index(),
                    events,
                }),
                Err(refused) => Err(StoreError::Rejected(refused)),
            },
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(forward))) => {
                Err(StoreError::Unavailable(match forward.leader_id {
                    Some(leader) => format!("not the leader (manager {} is)", node_id(leader)),
                    None => "no leader at the moment".to_owned(),
                }))
            }
            Err(RaftError::APIError(other)) => Err(StoreError::Unavailable(other.to_string())),
            Err(RaftError::Fatal(e)) => Err(StoreError::Unavailable(format!("raft stopped: {e}"))),
        }
    }

    fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshots.borrow().clone()
    }

    fn subscribe(&self) -> watch::Receiver<Arc<Snapshot>> {
        self.snapshots.clone()
    }
}
