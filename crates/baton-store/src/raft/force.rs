//! Disaster recovery (`baton manager --force-new-cluster`): when a quorum
//! of managers is lost for good, one survivor's data becomes a cluster of
//! one.
//!
//! It works on the closed database file, before [`RaftStore::open`], in one
//! redb write transaction, so a crash in the middle leaves the old data or
//! the new, never a mix. It reads and writes with the member's data key
//! (entries and snapshot stay sealed), after checking that the file was
//! sealed with it:
//!
//! - Every entry in the survivor's log counts as committed, as etcd does:
//!   the state is the stored snapshot, then every log entry after it, in
//!   order, whether or not the stored committed id covers it. That marker is
//!   written without an fsync of its own, so it can lag behind what was
//!   committed and acknowledged; and the lost majority may have committed
//!   (and acknowledged) entries this member never heard were committed.
//!   Keeping them all loses no acknowledged write that reached this disk. It
//!   may keep one that was never acknowledged (a write the client was told
//!   failed, or whose outcome it was told is unknown): accepted, in disaster
//!   recovery. The entries above the marker are counted.
//! - That state is stored as a new snapshot whose membership is this member
//!   alone, as of the last log entry, and the whole log is purged up to it:
//!   nothing in the log is discarded. A log with a hole after the snapshot
//!   (an entry missing, which Raft never leaves) is refused.
//! - The vote moves to a term above any this member saw, uncommitted and for
//!   itself: the member starts as a follower (never as the old term's
//!   leader), and, being the only voter, elects itself at once in a newer
//!   term. Nothing it writes can share a log id with an entry of the old
//!   cluster.
//!
//! [`RaftStore::open`] then starts it as an initialised cluster of one;
//! others join it with [`RaftStore::add_member`]. The managers that are gone
//! must not come back with their old data: they would still believe in the
//! old cluster.
//!
//! [`RaftStore::open`]: super::RaftStore::open
//! [`RaftStore::add_member`]: super::RaftStore::add_member

use std::collections::{BTreeMap, BTreeSet};

use openraft::Membership;
use openraft::impls::BasicNode;
use redb::{ReadableTable, Table, WriteTransaction};

use super::log_store::{COMMITTED, PURGED, RAFT_LOG, RAFT_META, VOTE, decode, encode, open_entry};
use super::state_machine::{
    Applied, CURRENT, RAFT_SNAPSHOT, StoredSnapshot, open_snapshot, seal_snapshot,
};
use super::types::{LogId, SnapshotMeta, StoredMembership, Vote};
use super::{RaftStoreConfig, check_data_key, fatal, node_id, open_database};
use crate::StoreError;

/// What [`super::RaftStore::force_new_cluster`] kept and dropped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ForcedCluster {
    /// The index of the last log entry, now applied: the new cluster's state
    /// is the state after it, and its log starts right after it.
    pub last_applied: u64,
    /// How many of the applied log entries the stored committed id did not
    /// cover: entries kept although not known committed here (each may or
    /// may not have been acknowledged). Nothing in the log is discarded.
    pub beyond_commit: u64,
    /// The other members of the old cluster (voters and learners), no longer
    /// members.
    pub dropped: Vec<u64>,
    /// Whether this member was a voter of the old cluster (a learner or a
    /// removed member has older data than the voters had).
    pub was_voter: bool,
    /// The highest term the old cluster reached as far as this member knows;
    /// the new cluster's terms are above it.
    pub old_term: u64,
}

/// Runs [`force`] on the blocking pool.
pub(super) async fn force_new_cluster(
    config: RaftStoreConfig,
) -> Result<ForcedCluster, StoreError> {
    tokio::task::spawn_blocking(move || force(&config))
        .await
        .map_err(|e| fatal("force-new-cluster task", e))?
}

/// Rewrites the database at `config.path` into a cluster of one (see the
/// module documentation).
fn force(config: &RaftStoreConfig) -> Result<ForcedCluster, StoreError> {
    let path = &config.path;
    // A wrong path must not quietly become a new, empty database.
    if !path.is_file() {
        return Err(StoreError::Fatal(format!(
            "force-new-cluster: no database at {}",
            path.display()
        )));
    }
    // redb locks the file: a manager still running on it makes this fail.
    let db = open_database(path)?;
    // Another key would fail half-way through the log; say so first.
    check_data_key(&db, &config.data_key, path)?;
    let txn = db
        .begin_write()
        .map_err(|e| fatal("force-new-cluster: write", e))?;
    let forced = rewrite(&txn, config)?;
    // Dropping `txn` on an error above aborts it: nothing changed.
    txn.commit()
        .map_err(|e| fatal("force-new-cluster: commit", e))?;
    tracing::warn!(
        member = %node_id(config.id),
        last_applied = forced.last_applied,
        beyond_commit = forced.beyond_commit,
        dropped = ?forced.dropped.iter().map(|id| node_id(*id)).collect::<Vec<_>>(),
        old_term = forced.old_term,
        "forced a new cluster of one from this member's data"
    );
    Ok(forced)
}

/// Maps an error to a failure of the whole operation.
fn failed<E: std::fmt::Display>(context: &'static str) -> impl FnOnce(E) -> StoreError {
    move |e| fatal(&format!("force-new-cluster: {context}"), e)
}

fn read<T: serde::de::DeserializeOwned>(
    meta: &Table<'_, &str, &[u8]>,
    key: &str,
) -> Result<Option<T>, StoreError> {
    let context = format!("force-new-cluster: reading the {key}");
    match meta.get(key).map_err(|e| fatal(&context, e))? {
        Some(bytes) => Ok(Some(decode(bytes.value()).map_err(|e| fatal(&context, e))?)),
        None => Ok(None),
    }
}

fn rewrite(txn: &WriteTransaction, config: &RaftStoreConfig) -> Result<ForcedCluster, StoreError> {
    let mut meta = txn
        .open_table(RAFT_META)
        .map_err(failed("open raft_meta"))?;
    let mut log = txn.open_table(RAFT_LOG).map_err(failed("open raft_log"))?;
    let mut snapshots = txn
        .open_table(RAFT_SNAPSHOT)
        .map_err(failed("open raft_snapshot"))?;

    // The snapshot, then every entry after it, committed here or not.
    let stored = match snapshots
        .get(CURRENT)
        .map_err(failed("read raft_snapshot"))?
    {
        Some(bytes) => {
            Some(open_snapshot(&config.data_key, bytes.value()).map_err(failed("snapshot"))?)
        }
        None => None,
    };
    let mut applied = Applied::restore(stored).map_err(failed("snapshot"))?;
    let committed: Option<LogId> = read::<Option<LogId>>(&meta, COMMITTED)?.flatten();
    let vote: Option<Vote> = read(&meta, VOTE)?;
    let from = applied.last_applied.map_or(0, |id| id.index() + 1);
    let mut next = from;
    let mut beyond_commit = 0;
    for item in log.range(from..).map_err(failed("read raft_log"))? {
        let (index, bytes) = item.map_err(failed("read raft_log"))?;
        if index.value() != next {
            return Err(StoreError::Fatal(format!(
                "force-new-cluster: log entry {next} is missing (the log goes on at {})",
                index.value()
            )));
        }
        let entry = open_entry(&config.data_key, index.value(), bytes.value())
            .map_err(failed("log entry"))?;
        if committed.is_none_or(|c| entry.log_id.index() > c.index()) {
            beyond_commit += 1;
        }
        applied.apply(entry);
        next += 1;
    }
    if let Some(committed) = committed.filter(|c| c.index() >= next) {
        return Err(StoreError::Fatal(format!(
            "force-new-cluster: committed log entry {next} is missing (committed up to {})",
            committed.index()
        )));
    }
    let Some(last) = applied.last_applied else {
        return Err(StoreError::Fatal(
            "force-new-cluster: this member has applied nothing (it never belonged to a cluster): nothing to keep"
                .to_owned(),
        ));
    };

    let old = applied.membership.membership();
    let dropped: Vec<u64> = old
        .nodes()
        .map(|(id, _)| *id)
        .filter(|id| *id != config.id)
        .collect();
    let was_voter = old.voter_ids().any(|id| id == config.id);
    let old_term = vote
        .map_or(0, |vote| vote.leader_id.term)
        .max(last.leader_id.term);

    // This member alone, as of the last log entry.
    let alone = Membership::new(
        vec![BTreeSet::from([config.id])],
        BTreeMap::from([(
            config.id,
            BasicNode {
                addr: config.addr.clone(),
            },
        )]),
    )
    .map_err(failed("membership"))?;
    let data = serde_json::to_vec(&applied.state).map_err(failed("encoding the state"))?;
    let snapshot = StoredSnapshot {
        meta: SnapshotMeta {
            last_log_id: Some(last),
            last_membership: StoredMembership::new(Some(last), alone),
        },
        data,
    };
    let snapshot = seal_snapshot(&config.data_key, &snapshot).map_err(failed("the snapshot"))?;
    snapshots
        .insert(CURRENT, snapshot.as_slice())
        .map_err(failed("write raft_snapshot"))?;

    // The log: empty, purged up to the snapshot, all of it committed.
    log.retain(|_, _| false).map_err(failed("purge raft_log"))?;
    // A term above any seen, voted for itself but not granted: the member
    // starts as a follower and elects itself in the next term.
    let vote = Vote::new(old_term + 1, config.id);
    for (key, bytes) in [
        (PURGED, encode(&last)),
        (COMMITTED, encode(&Some(last))),
        (VOTE, encode(&vote)),
    ] {
        let bytes = bytes.map_err(failed("encoding"))?;
        meta.insert(key, bytes.as_slice())
            .map_err(failed("write raft_meta"))?;
    }

    Ok(ForcedCluster {
        last_applied: last.index(),
        beyond_commit,
        dropped,
        was_voter,
        old_term,
    })
}

#[cfg(test)]
mod tests;
