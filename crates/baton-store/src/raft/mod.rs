//! [`RaftStore`]: the cluster state replicated with Raft (openraft), its
//! log, vote and snapshots in a redb file.
//!
//! A lone manager is a Raft cluster of one on exactly this code path: its
//! writes are committed by a majority of one (itself, after an fsync).
//! Proposals become `client_write`s; the answer comes back once the entry is
//! committed and applied, so an acknowledged write is on a majority's disk.
//! Readers get the in-memory state published after every applied batch.
//!
//! Encryption at rest: every log entry and the stored snapshot are sealed
//! ([`crate::seal`]) with the data key of [`RaftStoreConfig`], each bound
//! to its place (the entry's index; the snapshot's fixed label). The Raft
//! metadata (vote, committed and purged ids: terms, member ids, indexes)
//! stays in the clear. A known value sealed with the data key (`key_check`
//! in `raft_meta`, written when the file is new) lets [`RaftStore::open`]
//! refuse another key, or an unencrypted file of an older Baton, with one
//! clear error before Raft reads anything.

mod force;
mod leadership;
mod log_store;
mod membership;
mod solo;
mod state_machine;
mod transport;
mod types;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use baton_state::Command;
use openraft::error::{ClientWriteError, RaftError};
use openraft::impls::BasicNode;
use std::collections::BTreeSet;

use openraft::rt::WatchReceiver;
use openraft::{ChangeMembers, Config, Raft, SnapshotPolicy};
use redb::{Database, ReadableDatabase, ReadableTableMetadata};
use tokio::sync::watch;

pub use force::ForcedCluster;
pub use leadership::ClusterWatch;
pub use log_store::LogStore;
pub use solo::NoPeers;
pub use state_machine::StateMachine;
pub use transport::{
    MembershipChange, ProposeError, RaftRequest, RaftResponse, RaftTransport, TransportNetwork,
    Unreached,
};
pub use types::{Outcome, Proposal, TypeConfig, node_id, raft_id};

use crate::seal::{SealError, SealKey};
use crate::{Applied, Snapshot, Store, StoreError};

#[cfg(test)]
mod tests;

/// What a proposal answers while no member leads.
const NO_LEADER: &str = "no leader at the moment";

/// How long a proposal waits for an election to end.
const ELECTION_WAIT: Duration = Duration::from_secs(5);

/// A member the leader heard from within this long is reachable (it
/// heartbeats every 100 ms).
const REACHABLE: Duration = Duration::from_secs(1);

/// How long a proposal waits to be committed (a majority may be gone).
const COMMIT_WAIT: Duration = Duration::from_secs(15);

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
    /// The data key that seals log entries and snapshots (the manager's
    /// DEK); the file opens only with the key it was created with.
    pub data_key: SealKey,
}

impl RaftStoreConfig {
    /// Defaults for member `id` at `addr` with its database at `path`,
    /// sealed with `data_key`: a snapshot every 10,000 entries, which keeps
    /// replay on open well under a second.
    pub fn new(
        path: impl Into<PathBuf>,
        id: u64,
        addr: impl Into<String>,
        data_key: SealKey,
    ) -> RaftStoreConfig {
        RaftStoreConfig {
            path: path.into(),
            id,
            addr: addr.into(),
            snapshot_every: 10_000,
            data_key,
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

/// The `raft_meta` key of the data key check.
pub(crate) const KEY_CHECK: &str = "key_check";
/// Where the check is bound, and what it seals.
const KEY_CHECK_AAD: &[u8] = b"baton/raft_meta/key_check";
const KEY_CHECK_VALUE: &[u8] = b"baton data key check, version 1";

/// What the data key check found.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum KeyCheck {
    /// The check opens with the key: the file was sealed with it.
    Matches,
    /// An empty file, never written: no check yet.
    Empty,
}

/// Whether the table `table` has no row (or does not exist).
fn table_is_empty<K: redb::Key + 'static, V: redb::Value + 'static>(
    read: &redb::ReadTransaction,
    table: redb::TableDefinition<K, V>,
) -> Result<bool, StoreError> {
    match read.open_table(table) {
        Ok(table) => Ok(table
            .is_empty()
            .map_err(|e| fatal("reading the database", e))?),
        Err(redb::TableError::TableDoesNotExist(_)) => Ok(true),
        Err(e) => Err(fatal("reading the database", e)),
    }
}

/// Checks, before anything else is read, that `key` is the data key the
/// database at `path` was sealed with: one clear error for another key, a
/// corrupted check, or a file an older Baton wrote unencrypted.
pub(crate) fn check_data_key(
    db: &Database,
    key: &SealKey,
    path: &std::path::Path,
) -> Result<KeyCheck, StoreError> {
    let read = db
        .begin_read()
        .map_err(|e| fatal("reading the database", e))?;
    let stored = match read.open_table(log_store::RAFT_META) {
        Ok(meta) => meta
            .get(KEY_CHECK)
            .map_err(|e| fatal("reading the database", e))?
            .map(|bytes| bytes.value().to_vec()),
        Err(redb::TableError::TableDoesNotExist(_)) => None,
        Err(e) => return Err(fatal("reading the database", e)),
    };
    let Some(sealed) = stored else {
        let empty = table_is_empty(&read, log_store::RAFT_META)?
            && table_is_empty(&read, log_store::RAFT_LOG)?
            && table_is_empty(&read, state_machine::RAFT_SNAPSHOT)?;
        return if empty {
            Ok(KeyCheck::Empty)
        } else {
            Err(StoreError::Fatal(format!(
                "{}: written unencrypted, by a Baton older than encryption at rest: this Baton cannot read it (start from an empty data dir)",
                path.display()
            )))
        };
    };
    match key.open(KEY_CHECK_AAD, &sealed) {
        Ok(value) if value.as_slice() == KEY_CHECK_VALUE => Ok(KeyCheck::Matches),
        Ok(_) | Err(SealError::Undecryptable) => Err(StoreError::Fatal(format!(
            "{}: sealed with another data key than this manager's (its keys directory holds a different key, or the file is corrupted): it cannot be read",
            path.display()
        ))),
        Err(e) => Err(StoreError::Fatal(format!(
            "{}: the data key check: {e}",
            path.display()
        ))),
    }
}

/// Writes the data key check into a new database, durably.
fn write_key_check(db: &Database, key: &SealKey) -> Result<(), StoreError> {
    let sealed = key.seal(KEY_CHECK_AAD, KEY_CHECK_VALUE);
    let txn = db
        .begin_write()
        .map_err(|e| fatal("writing the data key check", e))?;
    {
        let mut meta = txn
            .open_table(log_store::RAFT_META)
            .map_err(|e| fatal("writing the data key check", e))?;
        meta.insert(KEY_CHECK, sealed.as_slice())
            .map_err(|e| fatal("writing the data key check", e))?;
    }
    txn.commit()
        .map_err(|e| fatal("writing the data key check", e))
}

/// The Raft timing and log-compaction settings.
fn raft_config(snapshot_every: u64) -> Result<Arc<Config>, StoreError> {
    let config = Config {
        cluster_name: "baton".to_owned(),
        heartbeat_interval: 100,
        election_timeout_min: 300,
        election_timeout_max: 600,
        // A member that restarts or falls behind must not force elections.
        enable_pre_vote: Some(true),
        // A whole state (100,000 tasks is tens of MB of JSON) must have
        // time to travel and be installed; the 200 ms default would make a
        // leader send it again and again.
        install_snapshot_timeout: 60_000,
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

/// One member as another sees it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MemberStatus {
    /// Raft id.
    pub id: u64,
    /// Cluster address.
    pub addr: String,
    /// Votes (a learner does not).
    pub voter: bool,
    /// Answered recently, as far as this member can tell.
    pub reachable: bool,
}

/// What a member knows of the Raft cluster.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RaftStatus {
    /// This member.
    pub id: u64,
    /// `leader`, `follower`, `candidate` or `learner`.
    pub state: String,
    /// Current term.
    pub term: u64,
    /// Last applied log index.
    pub last_applied: u64,
    /// The leader, if known.
    pub leader: Option<u64>,
    /// Every member.
    pub members: Vec<MemberStatus>,
}

/// An answer of another member that does not fit the request.
pub(crate) fn unexpected(answer: &RaftResponse) -> StoreError {
    StoreError::Unavailable(format!("unexpected answer from the leader: {answer:?}"))
}

fn membership_error(e: RaftError<TypeConfig, ClientWriteError<TypeConfig>>) -> StoreError {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(forward)) => {
            StoreError::Unavailable(match forward.leader_id {
                Some(leader) => format!("not the leader (manager {} is)", node_id(leader)),
                None => "no leader at the moment".to_owned(),
            })
        }
        other => StoreError::Unavailable(other.to_string()),
    }
}

/// The replicated store of one manager.
pub struct RaftStore {
    raft: BatonRaft,
    /// Held so that [`RaftStore::shutdown`] closes the file itself.
    db: std::sync::Mutex<Option<Arc<Database>>>,
    snapshots: watch::Receiver<Arc<Snapshot>>,
    transport: Arc<dyn RaftTransport>,
    id: u64,
    addr: String,
}

impl std::fmt::Debug for RaftStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RaftStore")
            .field("id", &node_id(self.id))
            .finish_non_exhaustive()
    }
}

impl RaftStore {
    /// Opens this member's store; it talks to the others through
    /// `transport`. A new member is not part of any cluster until it is
    /// initialised ([`RaftStore::initialize_alone`]) or added by a leader.
    pub async fn open(
        config: RaftStoreConfig,
        transport: Arc<dyn RaftTransport>,
    ) -> Result<RaftStore, StoreError> {
        let db = open_database(&config.path)?;
        if check_data_key(&db, &config.data_key, &config.path)? == KeyCheck::Empty {
            write_key_check(&db, &config.data_key)?;
        }
        let db = Arc::new(db);
        let db_handle = db.clone();
        let log = LogStore::new(db.clone(), config.data_key.clone());
        let sm = StateMachine::open(db, config.data_key.clone())
            .map_err(|e| fatal("opening the state", e))?;
        let snapshots = sm.subscribe();
        let raft = Raft::new(
            config.id,
            raft_config(config.snapshot_every)?,
            TransportNetwork::new(transport.clone()),
            log,
            sm,
        )
        .await
        .map_err(|e| fatal("starting raft", e))?;
        Ok(RaftStore {
            raft,
            db: std::sync::Mutex::new(Some(db_handle)),
            snapshots,
            transport,
            id: config.id,
            addr: config.addr,
        })
    }

    /// Makes a member that belongs to no cluster the only member of a new
    /// one, and waits until it leads (at once: it is its own majority) and
    /// has applied everything committed before a restart. A member that
    /// already belongs to a cluster only waits.
    pub async fn initialize_alone(&self) -> Result<(), StoreError> {
        if !self
            .raft
            .is_initialized()
            .await
            .map_err(|e| fatal("raft", e))?
        {
            let me = BasicNode {
                addr: self.addr.clone(),
            };
            self.raft
                .initialize(std::collections::BTreeMap::from([(self.id, me)]))
                .await
                .map_err(|e| fatal("initialising raft", e))?;
        }
        self.raft
            .wait(Some(Duration::from_secs(30)))
            .metrics(|m| m.current_leader.is_some(), "a leader")
            .await
            .map_err(|e| fatal("waiting for a leader", e))?;
        // Everything committed before a restart is applied before anyone reads.
        self.raft
            .ensure_linearizable(openraft::raft::ReadPolicy::ReadIndex)
            .await
            .map_err(|e| fatal("catching up", e))?;
        tracing::info!(
            member = %node_id(self.id),
            index = self.snapshot().index,
            "store opened"
        );
        Ok(())
    }

    /// Disaster recovery (`baton manager --force-new-cluster`), for when a
    /// quorum of managers is lost for good: rewrites this member's closed
    /// database (`config.path`; call before [`RaftStore::open`]) into a
    /// cluster of one, this member (`config.id` at `config.addr`), keeping
    /// its whole log.
    ///
    /// Every entry in its log is taken as committed, as etcd does: the
    /// state (the stored snapshot plus every entry after it) becomes a new
    /// snapshot whose membership is this member alone, so no write that
    /// reached this member's disk is lost (one never acknowledged may be
    /// kept); the log is purged and the vote moves to a newer term. All in one
    /// transaction: a crash leaves the old data or the new. Then
    /// [`RaftStore::open`] and [`RaftStore::initialize_alone`] make it the
    /// leader of its new cluster, which others can join
    /// ([`RaftStore::add_member`]). The managers that are gone must not
    /// come back with their old data.
    ///
    /// Fails, changing nothing, if there is no database at the path, if it
    /// is open (a manager runs on it), if this member has applied nothing,
    /// or if the log has a hole (a missing entry).
    pub async fn force_new_cluster(config: RaftStoreConfig) -> Result<ForcedCluster, StoreError> {
        force::force_new_cluster(config).await
    }

    /// Opens the store of a member that is, and stays, alone (no transport).
    pub async fn open_solo(config: RaftStoreConfig) -> Result<RaftStore, StoreError> {
        let store = RaftStore::open(config, Arc::new(NoPeers)).await?;
        store.initialize_alone().await?;
        Ok(store)
    }

    /// A lone member with Raft id 1 at `path`, sealed with `data_key`, whose
    /// address nobody dials: for tools and tests that need a store and no
    /// cluster.
    pub async fn open_solo_at(
        path: &std::path::Path,
        data_key: SealKey,
    ) -> Result<RaftStore, StoreError> {
        RaftStore::open_solo(RaftStoreConfig::new(path, 1, "127.0.0.1:0", data_key)).await
    }

    /// Sends `request` to member `id` at `addr`: its answer, or why none
    /// came (unreachable, or its Raft has stopped).
    pub(crate) async fn call_member(
        &self,
        id: u64,
        addr: &str,
        request: RaftRequest,
    ) -> Result<RaftResponse, StoreError> {
        match self.transport.call(id, addr, request).await {
            Ok(RaftResponse::Stopped(reason)) => Err(StoreError::Unavailable(reason)),
            Ok(answer) => Ok(answer),
            Err(e) => Err(StoreError::Unavailable(e.to_string())),
        }
    }

    /// Sends `request` to the leader, which must be another member.
    pub(crate) async fn call_leader(
        &self,
        request: RaftRequest,
    ) -> Result<RaftResponse, StoreError> {
        match self.leader() {
            Some((leader, addr)) if leader != self.id => {
                self.call_member(leader, &addr, request).await
            }
            Some(_) => Err(StoreError::Unavailable(
                "this member leads: nothing to forward".to_owned(),
            )),
            None => Err(StoreError::Unavailable(NO_LEADER.to_owned())),
        }
    }

    /// Sends a proposal to the leader; once it is committed there, waits
    /// until this member has applied it too (read-your-writes here).
    async fn forward(&self, leader: u64, addr: &str, cmd: Command) -> Result<Applied, StoreError> {
        let (index, events) = match self
            .call_member(leader, addr, RaftRequest::Propose(cmd))
            .await?
        {
            RaftResponse::Proposed(answer) => answer?,
            other => return Err(unexpected(&other)),
        };
        self.raft
            .wait(Some(Duration::from_secs(10)))
            .applied_index_at_least(Some(index), "the forwarded write applied here")
            .await
            .map_err(|e| {
                StoreError::Unavailable(format!(
                    "committed at {index} but not applied here yet: {e}"
                ))
            })?;
        Ok(Applied { index, events })
    }

    /// Answers another member's request (see [`RaftTransport`]).
    pub async fn handle(&self, request: RaftRequest) -> RaftResponse {
        let stopped = |e: &dyn std::fmt::Display| RaftResponse::Stopped(e.to_string());
        match request {
            RaftRequest::AppendEntries(rpc) => match self.raft.append_entries(rpc).await {
                Ok(response) => RaftResponse::AppendEntries(response),
                Err(e) => stopped(&e),
            },
            RaftRequest::Vote(rpc) => match self.raft.vote(rpc).await {
                Ok(response) => RaftResponse::Vote(response),
                Err(e) => stopped(&e),
            },
            RaftRequest::PreVote(rpc) => match self.raft.pre_vote(rpc).await {
                Ok(response) => RaftResponse::Vote(response),
                Err(e) => stopped(&e),
            },
            RaftRequest::Snapshot { vote, meta, data } => {
                let snapshot = openraft::alias::SnapshotOf::<TypeConfig, std::io::Cursor<Vec<u8>>> {
                    meta,
                    snapshot: std::io::Cursor::new(data),
                };
                match self.raft.install_full_snapshot(vote, snapshot).await {
                    Ok(response) => RaftResponse::Snapshot(response),
                    Err(e) => stopped(&e),
                }
            }
            RaftRequest::Propose(cmd) => {
                RaftResponse::Proposed(match self.raft.client_write(Proposal(cmd)).await {
                    Ok(response) => match response.data.0 {
                        Ok(events) => Ok((response.log_id.index(), events)),
                        Err(refused) => Err(ProposeError::Rejected(refused)),
                    },
                    Err(RaftError::APIError(ClientWriteError::ForwardToLeader(forward))) => {
                        Err(ProposeError::NotLeader(forward.leader_id))
                    }
                    Err(e) => Err(ProposeError::Unavailable(e.to_string())),
                })
            }
            RaftRequest::Status => RaftResponse::Status(self.status()),
            RaftRequest::ReadIndex => RaftResponse::ReadIndex(self.read_index_here().await),
            RaftRequest::Membership(change) => {
                RaftResponse::Membership(self.change_membership(change).await.map_err(Into::into))
            }
        }
    }

    /// Adds member `id` at `addr`: a learner until it has caught up with
    /// the log (or a snapshot), then a voter. Call on the leader.
    pub async fn add_member(&self, id: u64, addr: &str) -> Result<(), StoreError> {
        let node = BasicNode {
            addr: addr.to_owned(),
        };
        self.raft
            .add_learner(id, node, true)
            .await
            .map_err(membership_error)?;
        self.raft
            .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), false)
            .await
            .map_err(membership_error)?;
        tracing::info!(member = %node_id(id), addr, "manager added to the raft cluster");
        Ok(())
    }

    /// Removes member `id` from the cluster (a voter or a standby).
    /// Refused if the voters left could not form a majority of themselves
    /// (quorum would be lost) or if it would leave no voter. Call on the
    /// leader ([`RaftStore::change_membership`] forwards).
    pub async fn remove_member(&self, id: u64) -> Result<(), StoreError> {
        let status = self.status();
        if let Some(why) = membership::quorum_loss(&status, id, "removing") {
            return Err(StoreError::Refused(why));
        }
        let voter = status.members.iter().any(|m| m.id == id && m.voter);
        let change = if voter {
            ChangeMembers::RemoveVoters(BTreeSet::from([id]))
        } else {
            ChangeMembers::RemoveNodes(BTreeSet::from([id]))
        };
        self.raft
            .change_membership(change, false)
            .await
            .map_err(membership_error)?;
        tracing::info!(member = %node_id(id), "manager removed from the raft cluster");
        Ok(())
    }

    /// What this member knows of the Raft cluster now.
    pub fn status(&self) -> RaftStatus {
        let metrics = self.raft.metrics().borrow_watched().clone();
        let membership = metrics.membership_config.membership();
        let voters: BTreeSet<u64> = membership.voter_ids().collect();
        let leader = metrics.current_leader;
        let heartbeats = metrics.heartbeat.clone().unwrap_or_default();
        let members = membership
            .nodes()
            .map(|(id, node)| MemberStatus {
                id: *id,
                addr: node.addr.clone(),
                voter: voters.contains(id),
                // The leader knows who acknowledged it lately; another
                // member only knows itself and the leader it hears from.
                reachable: *id == self.id
                    || Some(*id) == leader
                    || heartbeats.get(id).is_some_and(|acked| {
                        acked.is_some_and(|at| openraft::Instant::elapsed(&*at) < REACHABLE)
                    }),
            })
            .collect();
        RaftStatus {
            id: self.id,
            state: format!("{:?}", metrics.state).to_lowercase(),
            term: metrics.current_term,
            last_applied: metrics.last_applied.map_or(0, |id| id.index()),
            leader,
            members,
        }
    }

    /// This member's Raft id.
    pub fn id(&self) -> u64 {
        self.id
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
        // Without a majority a proposal would wait forever: give up, saying
        // that its outcome is unknown (it may still commit, if a majority
        // comes back while it is in the leader's log).
        match tokio::time::timeout(COMMIT_WAIT, self.propose_waiting_for_leader(cmd)).await {
            Ok(result) => result,
            Err(_) => Err(StoreError::Unavailable(format!(
                "not committed within {}s: a majority of the managers may be unreachable (the write may still take effect if they come back)",
                COMMIT_WAIT.as_secs()
            ))),
        }
    }

    fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshots.borrow().clone()
    }

    fn subscribe(&self) -> watch::Receiver<Arc<Snapshot>> {
        self.snapshots.clone()
    }
}

impl RaftStore {
    async fn propose_waiting_for_leader(&self, cmd: Command) -> Result<Applied, StoreError> {
        // During an election no member leads: wait for one (nothing was
        // sent, so trying again cannot apply the command twice).
        let deadline = tokio::time::Instant::now() + ELECTION_WAIT;
        loop {
            match self.propose_once(cmd.clone()).await {
                Err(StoreError::Unavailable(reason))
                    if reason == NO_LEADER && tokio::time::Instant::now() < deadline =>
                {
                    let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                    let _ = self
                        .raft
                        .wait(Some(left))
                        .metrics(|m| m.current_leader.is_some(), "a leader")
                        .await;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                other => return other,
            }
        }
    }
}

impl RaftStore {
    async fn propose_once(&self, cmd: Command) -> Result<Applied, StoreError> {
        match self.raft.client_write(Proposal(cmd.clone())).await {
            Ok(response) => match response.data.0 {
                Ok(events) => Ok(Applied {
                    index: response.log_id.index(),
                    events,
                }),
                Err(refused) => Err(StoreError::Rejected(refused)),
            },
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(forward))) => {
                match (forward.leader_id, forward.leader_node) {
                    (Some(leader), Some(node)) if leader != self.id => {
                        self.forward(leader, &node.addr, cmd).await
                    }
                    _ => Err(StoreError::Unavailable(NO_LEADER.to_owned())),
                }
            }
            Err(RaftError::APIError(other)) => Err(StoreError::Unavailable(other.to_string())),
            Err(RaftError::Fatal(e)) => Err(StoreError::Unavailable(format!("raft stopped: {e}"))),
        }
    }
}
