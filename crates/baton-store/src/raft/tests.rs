//! Tests of the Raft store on one member: durability across restarts,
//! compaction, group commit.

use baton_spec::JobKind;
use baton_state::{ApplyError, Command, Event, Timestamp};

use redb::{ReadableDatabase, ReadableTable};

use super::*;
use crate::StoreError;

fn put(name: &str, replicas: u32) -> Command {
    baton_testkit::put_service(name, replicas)
}

async fn open(path: &std::path::Path, snapshot_every: u64) -> RaftStore {
    let mut config = RaftStoreConfig::new(path, 7, "127.0.0.1:1", SealKey::from_bytes([7; 32]));
    config.snapshot_every = snapshot_every;
    RaftStore::open_solo(config).await.expect("open")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn committed_commands_survive_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("state.redb");
    let (first, second) = {
        let store = open(&path, 10_000).await;
        let first = store.propose(put("web", 3)).await.expect("propose");
        assert_eq!(
            first.events,
            vec![Event::JobCreated {
                name: "web".to_owned(),
                version: 1
            }]
        );
        let second = store.propose(put("web", 4)).await.expect("propose");
        assert!(second.index > first.index);
        assert_eq!(
            store.snapshot().index,
            second.index,
            "readers see the write"
        );
        store.shutdown().await;
        (first, second)
    };
    let store = open(&path, 10_000).await;
    let snap = store.snapshot();
    assert!(snap.index >= second.index);
    let web = snap.state.job("web").expect("web kept");
    assert_eq!(web.version, 2);
    assert_eq!(web.spec.kind, JobKind::Service { replicas: 4 });
    assert_eq!(web.source, "name: web\n");
    assert!(first.index >= 1);
    store.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_command_changes_nothing_and_replays_the_same() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("state.redb");
    {
        let store = open(&path, 10_000).await;
        let err = store
            .propose(Command::StopJob {
                name: "nope".to_owned(),
                now: Timestamp(1),
            })
            .await
            .expect_err("unknown job");
        assert!(matches!(
            err,
            StoreError::Rejected(ApplyError::JobNotFound { ref name }) if name == "nope"
        ));
        store.propose(put("a", 1)).await.expect("propose");
        store.shutdown().await;
    }
    let store = open(&path, 10_000).await;
    assert_eq!(store.snapshot().state.jobs().count(), 1);
    store.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_compact_the_log_and_restart_to_the_same_state() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("state.redb");
    let last = {
        let store = open(&path, 10).await;
        let mut last = 0;
        for i in 0..45 {
            last = store
                .propose(put(&format!("job-{i}"), 1))
                .await
                .expect("propose")
                .index;
        }
        // Compaction runs in the background after a snapshot.
        store
            .raft()
            .wait(Some(std::time::Duration::from_secs(10)))
            .metrics(|m| m.purged.is_some_and(|p| p.index() > 10), "log purged")
            .await
            .expect("purged");
        store.shutdown().await;
        last
    };
    {
        let db = redb::Database::create(&path).expect("db");
        let read = db.begin_read().expect("read");
        let log = read.open_table(log_store::RAFT_LOG).expect("log");
        let first = log.first().expect("first").map(|(k, _)| k.value());
        assert!(
            first.is_some_and(|i| i > 10),
            "log compacted, first = {first:?}"
        );
    }
    let store = open(&path, 10).await;
    assert!(store.snapshot().index >= last);
    assert_eq!(store.snapshot().state.jobs().count(), 45);
    store.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_proposals_all_commit_in_one_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(open(&dir.path().join("s.redb"), 10_000).await);
    let mut handles = Vec::new();
    for i in 0..200 {
        let store = store.clone();
        handles.push(tokio::spawn(async move {
            store
                .propose(put(&format!("j-{i}"), 1))
                .await
                .map(|a| a.index)
        }));
    }
    let mut indexes = Vec::new();
    for h in handles {
        indexes.push(h.await.expect("join").expect("propose"));
    }
    indexes.sort_unstable();
    indexes.dedup();
    assert_eq!(indexes.len(), 200, "one log index each");
    assert_eq!(store.snapshot().state.jobs().count(), 200);
    store.shutdown().await;
}
