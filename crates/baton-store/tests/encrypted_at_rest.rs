//! Encryption at rest, seen from the file: what a lone member proposed
//! (log entries and a stored snapshot) appears nowhere in the raw bytes of
//! its redb file; the file reopens with its data key, and another key gets
//! one clear error.

use std::path::Path;
use std::time::Duration;

use baton_store::raft::{RaftStore, RaftStoreConfig};
use baton_store::seal::SealKey;
use baton_store::{Store, StoreError};

const MARKER: &str = "marker-5f1d7e0c9a2b";

fn config(path: &Path, key: &SealKey) -> RaftStoreConfig {
    let mut config = RaftStoreConfig::new(path, 7, "127.0.0.1:1", key.clone());
    config.snapshot_every = 10;
    config
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_file_holds_no_plaintext_and_opens_only_with_its_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("state.redb");
    let key = SealKey::generate();
    {
        let store = RaftStore::open_solo(config(&path, &key))
            .await
            .expect("open");
        for i in 0..25 {
            store
                .propose(baton_testkit::put_service(&format!("{MARKER}-{i}"), 1))
                .await
                .expect("propose");
        }
        // A snapshot stored (and the log before it purged), entries after it.
        store
            .raft()
            .wait(Some(Duration::from_secs(10)))
            .metrics(
                |m| m.snapshot.is_some() && m.purged.is_some(),
                "a stored snapshot",
            )
            .await
            .expect("snapshot");
        store.shutdown().await;
    }
    let raw = std::fs::read(&path).expect("raw file");
    assert!(!contains(&raw, MARKER.as_bytes()), "a marker in the clear");
    assert!(
        !contains(&raw, b"\"Normal\"") && !contains(&raw, b"put_job"),
        "an entry in the clear"
    );

    // The same key: the whole state.
    let store = RaftStore::open_solo(config(&path, &key))
        .await
        .expect("reopen");
    let names: Vec<String> = store
        .snapshot()
        .state
        .jobs()
        .map(|job| job.spec.name.clone())
        .collect();
    assert_eq!(names.len(), 25, "{names:?}");
    assert!(names.iter().all(|name| name.starts_with(MARKER)));
    store.shutdown().await;

    // Another key: refused, with a message that says why.
    let err = RaftStore::open_solo(config(&path, &SealKey::generate()))
        .await
        .expect_err("another key");
    assert!(
        matches!(err, StoreError::Fatal(ref m) if m.contains("another data key")),
        "{err}"
    );
    // The refusal closed the file: the right key still opens it.
    let store = RaftStore::open_solo(config(&path, &key))
        .await
        .expect("reopen after a refusal");
    assert_eq!(store.snapshot().state.jobs().count(), 25);
    store.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_written_unencrypted_is_refused_as_an_older_batons() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("state.redb");
    {
        // What an older Baton left: Raft metadata and entries in the clear.
        let db = redb::Database::create(&path).expect("db");
        let txn = db.begin_write().expect("write");
        {
            let meta: redb::TableDefinition<&str, &[u8]> = redb::TableDefinition::new("raft_meta");
            let log: redb::TableDefinition<u64, &[u8]> = redb::TableDefinition::new("raft_log");
            txn.open_table(meta)
                .expect("meta")
                .insert(
                    "vote",
                    br#"{"leader_id":{"term":1,"node_id":7},"committed":true}"#.as_slice(),
                )
                .expect("vote");
            txn.open_table(log)
                .expect("log")
                .insert(1, br#"{"log_id":{"leader_id":{"term":1,"node_id":7},"index":1},"payload":"Blank"}"#.as_slice())
                .expect("entry");
        }
        txn.commit().expect("commit");
    }
    let err = RaftStore::open_solo(config(&path, &SealKey::generate()))
        .await
        .expect_err("unencrypted");
    assert!(
        matches!(err, StoreError::Fatal(ref m) if m.contains("older than encryption at rest")),
        "{err}"
    );
}
