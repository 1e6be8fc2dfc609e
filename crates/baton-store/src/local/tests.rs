//! Tests of the redb store: durability across reopen, compaction, group commit.

use std::collections::BTreeMap;
use std::time::Duration;

use baton_spec::{
    DriverKind, JobKind, JobSpec, Resources, RestartCondition, RestartPolicy, SpecFormat, TaskSpec,
};
use baton_state::{ApplyError, Command, Event, Timestamp};

use redb::ReadableTable;

use super::*;

fn job(name: &str, replicas: u32) -> JobSpec {
    JobSpec {
        name: name.to_owned(),
        kind: JobKind::Service { replicas },
        task: TaskSpec {
            driver: DriverKind::Raw,
            command: vec!["/bin/true".to_owned()],
            env: BTreeMap::new(),
            workdir: None,
            user: None,
            resources: Resources {
                cpu_millis: 100,
                memory_bytes: 1 << 20,
            },
            kill_timeout: Duration::from_secs(5),
        },
        restart: RestartPolicy {
            condition: RestartCondition::Always,
            max_attempts: 0,
            delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(30),
        },
    }
}

fn put(name: &str, replicas: u32) -> Command {
    Command::PutJob {
        spec: job(name, replicas),
        format: SpecFormat::Yaml,
        source: format!("name: {name}\n"),
        now: Timestamp(1),
    }
}

#[tokio::test]
async fn committed_commands_survive_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("state.redb");
    {
        let store = LocalStore::open(LocalStoreConfig::new(&path)).expect("open");
        let applied = store.propose(put("web", 3)).await.expect("propose");
        assert_eq!(applied.index, 1);
        assert_eq!(
            applied.events,
            vec![Event::JobCreated {
                name: "web".to_owned(),
                version: 1
            }]
        );
        store.propose(put("web", 4)).await.expect("propose");
        store.close();
    }
    let store = LocalStore::open(LocalStoreConfig::new(&path)).expect("reopen");
    let snap = store.snapshot();
    assert_eq!(snap.index, 2);
    let web = snap.state.job("web").expect("web kept");
    assert_eq!(web.version, 2);
    assert_eq!(web.spec.kind, JobKind::Service { replicas: 4 });
    assert_eq!(web.source, "name: web\n");
}

#[tokio::test]
async fn rejected_command_changes_nothing_and_replays_the_same() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("state.redb");
    {
        let store = LocalStore::open(LocalStoreConfig::new(&path)).expect("open");
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
    }
    let store = LocalStore::open(LocalStoreConfig::new(&path)).expect("reopen");
    assert_eq!(store.snapshot().index, 2);
    assert_eq!(store.snapshot().state.jobs().count(), 1);
}

#[tokio::test]
async fn snapshots_compact_the_log_and_reopen_to_the_same_state() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("state.redb");
    let config = LocalStoreConfig {
        path: path.clone(),
        snapshot_every: 10,
    };
    {
        let store = LocalStore::open(config.clone()).expect("open");
        for i in 0..25 {
            store
                .propose(put(&format!("job-{i}"), 1))
                .await
                .expect("propose");
        }
    }
    let db = Database::create(&path).expect("db");
    let read = db.begin_read().expect("read");
    let log = read.open_table(LOG).expect("log");
    let first = log.first().expect("first").map(|(k, _)| k.value());
    assert!(
        first.is_some_and(|i| i > 10),
        "log compacted, first = {first:?}"
    );
    drop(log);
    drop(read);
    drop(db);
    let store = LocalStore::open(config).expect("reopen");
    assert_eq!(store.snapshot().index, 25);
    assert_eq!(store.snapshot().state.jobs().count(), 25);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_proposals_all_commit_in_one_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store =
        Arc::new(LocalStore::open(LocalStoreConfig::new(dir.path().join("s.redb"))).expect("open"));
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
    assert_eq!(indexes, (1..=200).collect::<Vec<u64>>());
    assert_eq!(store.snapshot().state.jobs().count(), 200);
}
