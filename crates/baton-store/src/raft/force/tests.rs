//! Forcing a lone member's database: what is kept (every log entry, the
//! committed marker notwithstanding), what is refused, and that the result
//! starts, and restarts, as a leader alone.
//! (The three-member disaster is in `tests/raft_cluster.rs`.)

use std::path::Path;
use std::time::Duration;

use baton_state::Command;
use openraft::EntryPayload;
use openraft::rt::WatchReceiver;
use redb::{ReadableDatabase, ReadableTable, TableDefinition};

use super::super::log_store::{
    COMMITTED, PURGED, RAFT_LOG, RAFT_META, VOTE, decode, encode, open_entry, seal_entry,
};
use super::super::state_machine::{CURRENT, RAFT_SNAPSHOT, open_snapshot};
use super::super::types::{Entry, LogId, Proposal, Vote};
use super::super::{NoPeers, RaftStore, RaftStoreConfig};
use crate::seal::SealKey;
use crate::{Store, StoreError};

const ME: u64 = 7;

/// This member's data key.
fn key() -> SealKey {
    SealKey::from_bytes([7; 32])
}

fn config(path: &Path, snapshot_every: u64) -> RaftStoreConfig {
    let mut config = RaftStoreConfig::new(path, ME, "127.0.0.1:1", key());
    config.snapshot_every = snapshot_every;
    config
}

fn put(name: &str) -> Command {
    baton_testkit::put_service(name, 1)
}

fn job_names(store: &RaftStore) -> Vec<String> {
    store
        .snapshot()
        .state
        .jobs()
        .map(|j| j.spec.name.clone())
        .collect()
}

/// Every key and value of the three tables, to compare a file before and after.
fn dump(path: &Path) -> Vec<(String, Vec<u8>)> {
    let db = redb::Database::create(path).expect("db");
    let read = db.begin_read().expect("read");
    let mut out = Vec::new();
    // A table never written does not exist (nor should it after a refusal).
    let missing = |e: &redb::TableError| matches!(e, redb::TableError::TableDoesNotExist(_));
    match read.open_table(RAFT_LOG) {
        Ok(log) => {
            for item in log.iter().expect("iter") {
                let (k, v) = item.expect("item");
                out.push((format!("log/{}", k.value()), v.value().to_vec()));
            }
        }
        Err(e) if missing(&e) => out.push(("no log".to_owned(), Vec::new())),
        Err(e) => panic!("raft_log: {e}"),
    }
    let named: [(&str, TableDefinition<&str, &[u8]>); 2] =
        [("meta", RAFT_META), ("snapshot", RAFT_SNAPSHOT)];
    for (name, table) in named {
        let table = match read.open_table(table) {
            Ok(table) => table,
            Err(e) if missing(&e) => {
                out.push((format!("no {name}"), Vec::new()));
                continue;
            }
            Err(e) => panic!("{name}: {e}"),
        };
        for item in table.iter().expect("iter") {
            let (k, v) = item.expect("item");
            out.push((format!("{name}/{}", k.value()), v.value().to_vec()));
        }
    }
    out
}

fn meta<T: serde::de::DeserializeOwned>(path: &Path, key: &str) -> Option<T> {
    let db = redb::Database::create(path).expect("db");
    let read = db.begin_read().expect("read");
    let table = read.open_table(RAFT_META).expect("raft_meta");
    table
        .get(key)
        .expect("get")
        .map(|bytes| decode(bytes.value()).expect("decode"))
}

/// The log id of the stored snapshot.
fn snapshot_id(path: &Path) -> LogId {
    let db = redb::Database::create(path).expect("db");
    let read = db.begin_read().expect("read");
    let table = read.open_table(RAFT_SNAPSHOT).expect("raft_snapshot");
    let bytes = table.get(CURRENT).expect("get").expect("a snapshot");
    let stored = open_snapshot(&key(), bytes.value()).expect("decode");
    stored.meta.last_log_id.expect("a log id")
}

/// Overwrites the stored committed marker.
fn set_committed(path: &Path, committed: Option<LogId>) {
    let db = redb::Database::create(path).expect("db");
    let txn = db.begin_write().expect("write");
    txn.open_table(RAFT_META)
        .expect("raft_meta")
        .insert(COMMITTED, encode(&committed).expect("encode").as_slice())
        .expect("insert");
    txn.commit().expect("commit");
}

/// Appends entries after the last one without committing them, as a member
/// holds entries it has not heard are committed.
fn append_uncommitted(path: &Path, names: &[&str]) {
    let db = redb::Database::create(path).expect("db");
    let txn = db.begin_write().expect("write");
    {
        let mut log = txn.open_table(RAFT_LOG).expect("raft_log");
        let last: Entry = {
            let (index, bytes) = log.last().expect("last").expect("a log entry");
            open_entry(&key(), index.value(), bytes.value()).expect("decode")
        };
        for (i, name) in names.iter().enumerate() {
            let entry = Entry {
                log_id: LogId {
                    leader_id: last.log_id.leader_id,
                    index: last.log_id.index + 1 + i as u64,
                },
                payload: EntryPayload::Normal(Proposal(put(name))),
            };
            log.insert(
                entry.log_id.index,
                seal_entry(&key(), &entry).expect("seal").as_slice(),
            )
            .expect("insert");
        }
    }
    txn.commit().expect("commit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forced_store_keeps_its_whole_log_and_leads_alone_across_restarts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("state.redb");
    let (last, term) = {
        let store = RaftStore::open_solo(config(&path, 10)).await.expect("open");
        let mut last = 0;
        for i in 0..25 {
            last = store
                .propose(put(&format!("j{i}")))
                .await
                .expect("write")
                .index;
        }
        store
            .raft()
            .wait(Some(Duration::from_secs(10)))
            .metrics(|m| m.purged.is_some(), "a snapshot and a purge")
            .await
            .expect("snapshot");
        let term = store.status().term;
        store.shutdown().await;
        (last, term)
    };
    // Three entries it never heard were committed (the lost majority may
    // have committed and acknowledged them), and a committed marker that
    // lags (it is written without an fsync of its own): back at the
    // snapshot, though everything up to `last` was committed.
    append_uncommitted(&path, &["ghost-1", "ghost-2", "ghost-3"]);
    let snapshot = snapshot_id(&path);
    assert!(snapshot.index < last, "log entries after the snapshot");
    set_committed(&path, Some(snapshot));

    let forced = RaftStore::force_new_cluster(config(&path, 10))
        .await
        .expect("forced");
    // Every entry in the log is kept and applied, as etcd does.
    let end = last + 3;
    assert_eq!(forced.last_applied, end);
    assert_eq!(
        forced.beyond_commit,
        end - snapshot.index,
        "the entries the marker did not cover"
    );
    assert!(forced.dropped.is_empty(), "alone already: {forced:?}");
    assert!(forced.was_voter);
    assert!(forced.old_term >= term);

    // On disk: no log, everything purged and committed up to the snapshot,
    // a vote for itself, in a newer term, not granted.
    let rows = dump(&path);
    assert!(
        !rows.iter().any(|(k, _)| k.starts_with("log/")),
        "log purged"
    );
    let purged: LogId = meta(&path, PURGED).expect("purged");
    assert_eq!(purged.index, end);
    let committed: Option<LogId> = meta(&path, COMMITTED).expect("committed");
    assert_eq!(committed, Some(purged));
    let vote: Vote = meta(&path, VOTE).expect("vote");
    assert_eq!(vote.leader_id.term, forced.old_term + 1);
    assert_eq!(vote.leader_id.node_id, ME);
    assert!(!vote.committed);

    let after = {
        let store = RaftStore::open_solo(config(&path, 10)).await.expect("open");
        let status = store.status();
        assert_eq!(status.leader, Some(ME));
        assert_eq!(status.state, "leader");
        assert!(status.term > forced.old_term, "a newer term: {status:?}");
        assert_eq!(status.members.len(), 1);
        let names = job_names(&store);
        assert_eq!(names.len(), 28);
        for ghost in ["ghost-1", "ghost-2", "ghost-3"] {
            assert!(names.contains(&ghost.to_owned()), "{ghost} kept");
        }
        assert!(store.snapshot().index >= end);
        let after = store.propose(put("after")).await.expect("write").index;
        assert!(after > end);
        store.shutdown().await;
        after
    };

    // A plain restart: still alone, still leading, the same state.
    let store = RaftStore::open(config(&path, 10), std::sync::Arc::new(NoPeers))
        .await
        .expect("open");
    store.initialize_alone().await.expect("leads");
    let status = store.status();
    assert_eq!(status.leader, Some(ME));
    assert_eq!(status.members.len(), 1);
    assert!(store.snapshot().index >= after);
    let names = job_names(&store);
    assert_eq!(names.len(), 29);
    assert!(names.contains(&"after".to_owned()));
    assert!(
        store.raft().metrics().borrow_watched().snapshot.is_some(),
        "the forced snapshot is there to send to a joining member"
    );
    store.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forcing_refuses_what_it_cannot_recover_and_changes_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");

    // No database: none is created.
    let missing = dir.path().join("missing.redb");
    let err = RaftStore::force_new_cluster(config(&missing, 10_000))
        .await
        .expect_err("no database");
    assert!(
        matches!(err, StoreError::Fatal(ref m) if m.contains("no database")),
        "{err}"
    );
    assert!(!missing.exists());

    // A member that never belonged to a cluster has nothing to keep.
    let empty = dir.path().join("empty.redb");
    RaftStore::open(config(&empty, 10_000), std::sync::Arc::new(NoPeers))
        .await
        .expect("open")
        .shutdown()
        .await;
    let before = dump(&empty);
    let err = RaftStore::force_new_cluster(config(&empty, 10_000))
        .await
        .expect_err("nothing applied");
    assert!(
        matches!(err, StoreError::Fatal(ref m) if m.contains("applied nothing")),
        "{err}"
    );
    assert_eq!(dump(&empty), before);

    // A store in use: the file is locked.
    let path = dir.path().join("state.redb");
    let store = RaftStore::open_solo(config(&path, 10_000))
        .await
        .expect("open");
    for i in 0..5 {
        store.propose(put(&format!("j{i}"))).await.expect("write");
    }
    RaftStore::force_new_cluster(config(&path, 10_000))
        .await
        .expect_err("the database is open");
    store.shutdown().await;

    // Another data key: refused before anything is read.
    let before = dump(&path);
    let mut other = config(&path, 10_000);
    other.data_key = SealKey::generate();
    let err = RaftStore::force_new_cluster(other)
        .await
        .expect_err("another data key");
    assert!(
        matches!(err, StoreError::Fatal(ref m) if m.contains("another data key")),
        "{err}"
    );
    assert_eq!(dump(&path), before);

    // A committed marker past the end of the log: a committed entry is
    // missing. Refused, the file left as it was.
    let end: LogId = {
        let db = redb::Database::create(&path).expect("db");
        let read = db.begin_read().expect("read");
        let log = read.open_table(RAFT_LOG).expect("raft_log");
        let (index, bytes) = log.last().expect("last").expect("a log entry");
        let entry: Entry = open_entry(&key(), index.value(), bytes.value()).expect("decode");
        entry.log_id
    };
    let ahead = LogId {
        index: end.index + 2,
        ..end
    };
    set_committed(&path, Some(ahead));
    let before = dump(&path);
    let err = RaftStore::force_new_cluster(config(&path, 10_000))
        .await
        .expect_err("a committed entry past the log");
    let expected = format!("committed log entry {} is missing", end.index + 1);
    assert!(
        matches!(err, StoreError::Fatal(ref m) if m.contains(&expected)),
        "{err}"
    );
    assert_eq!(dump(&path), before);
    set_committed(&path, Some(end));

    // A hole in the log: the rebuild fails half-way, and the transaction it
    // ran in leaves the file as it was.
    {
        let db = redb::Database::create(&path).expect("db");
        let txn = db.begin_write().expect("write");
        txn.open_table(RAFT_LOG)
            .expect("raft_log")
            .remove(3)
            .expect("remove");
        txn.commit().expect("commit");
    }
    let before = dump(&path);
    let err = RaftStore::force_new_cluster(config(&path, 10_000))
        .await
        .expect_err("a hole in the log");
    assert!(
        matches!(err, StoreError::Fatal(ref m) if m.contains("entry 3 is missing")),
        "{err}"
    );
    assert_eq!(dump(&path), before);
}
