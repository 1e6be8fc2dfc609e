//! A real manager's data dir at rest: after a start (which creates the
//! cluster, its root CA, the node key and the join tokens) no file holds
//! the node key, a join token or the root CA key in the clear; the manager
//! restarts on its own keys; a locked data dir refuses to start.

use baton_testkit::files::{contains, files_under};
use std::fs;
use std::net::Ipv4Addr;
use std::path::Path;
use std::time::Duration;

use base64::Engine as _;
use baton_manager::identity;
use baton_manager::keystore::{self, UnlockKey};
use baton_manager::runtime::{self, ManagerConfig};

fn config(dir: &Path) -> ManagerConfig {
    ManagerConfig {
        data_dir: dir.to_owned(),
        listen: (Ipv4Addr::LOCALHOST, 0).into(),
        api: (Ipv4Addr::LOCALHOST, 0).into(),
        advertise: None,
        cert_validity: Duration::from_secs(3600),
        node_down_grace: Duration::from_secs(60),
        external_ca: None,
        join: None,
        force_new_cluster: false,
    }
}

/// What gives a PEM key away: each line of its body, and its DER.
fn pem_needles(pem: &str) -> Vec<Vec<u8>> {
    let body: Vec<&str> = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    let der = base64::engine::general_purpose::STANDARD
        .decode(body.concat())
        .expect("pem body");
    let mut needles: Vec<Vec<u8>> = body
        .iter()
        .filter(|l| l.len() >= 32)
        .map(|l| l.as_bytes().to_vec())
        .collect();
    assert!(!needles.is_empty(), "a key with a body");
    needles.push(der);
    needles
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_started_manager_leaves_no_key_or_token_in_the_clear_and_restarts_on_its_keys() {
    let dir = tempfile::tempdir().expect("tempdir");
    let running = runtime::start(config(dir.path())).await.expect("start");
    let tokens = running.created.clone().expect("a new cluster's tokens");
    let root_key = running
        .store
        .snapshot()
        .state
        .cluster()
        .and_then(|c| c.root_ca_key.clone())
        .expect("the managers hold the root key");
    let data_key = keystore::data_key(dir.path()).expect("data key");
    let node_key = identity::read_node_key(dir.path(), &data_key)
        .expect("read")
        .expect("a node key");
    let cluster_id = running.cluster_id.clone();
    running.stop().await;

    let mut secrets: Vec<(&str, Vec<u8>)> = Vec::new();
    for needle in pem_needles(&node_key) {
        secrets.push(("the node key", needle));
    }
    for needle in pem_needles(root_key.expose()) {
        secrets.push(("the root CA key", needle));
    }
    for token in [&tokens.worker, &tokens.manager] {
        secrets.push(("a join token", token.as_bytes().to_vec()));
        let secret = token.rsplit('-').next().expect("the token's secret");
        secrets.push(("a join token's secret", secret.as_bytes().to_vec()));
    }
    let files = files_under(dir.path());
    for expected in [
        "state.redb",
        "keys/dek",
        "node/key.sealed",
        "join-tokens.sealed",
    ] {
        assert!(
            files.iter().any(|f| f.ends_with(expected)),
            "{expected} in {files:?}"
        );
    }
    for file in &files {
        let bytes = fs::read(file).expect("read");
        for (what, needle) in &secrets {
            assert!(
                !contains(&bytes, needle),
                "{} holds {what} in the clear",
                file.display()
            );
        }
    }

    // A restart opens the store and the sealed files with the same keys.
    let again = runtime::start(config(dir.path())).await.expect("restart");
    assert_eq!(again.cluster_id, cluster_id);
    assert!(again.created.is_none());
    assert_eq!(
        identity::stored_tokens_with_key(dir.path(), &data_key)
            .expect("tokens")
            .expect("held")
            .worker,
        tokens.worker
    );
    again.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_locked_manager_waits_for_its_unlock_key_and_refuses_a_wrong_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let running = runtime::start(config(dir.path())).await.expect("start");
    running.stop().await;
    let keys = keystore::dir(dir.path());
    let data_key = keystore::data_key(dir.path()).expect("data key");
    let unlock_key = UnlockKey::generate();
    keystore::protect(&keys, &data_key, Some(&unlock_key)).expect("autolock");

    let starting = tokio::spawn(runtime::start(config(dir.path())));
    let socket = baton_manager::unlock::socket_path(dir.path());
    while !socket.exists() {
        assert!(!starting.is_finished(), "a locked manager must wait");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let wrong = UnlockKey::generate();
    let refused = baton_manager::unlock::send_key(dir.path(), &wrong.format())
        .await
        .expect_err("wrong key");
    assert!(refused.contains("wrong unlock key"), "{refused}");
    assert!(!starting.is_finished(), "still locked after a wrong key");
    baton_manager::unlock::send_key(dir.path(), &unlock_key.format())
        .await
        .expect("the right key");
    let again = starting
        .await
        .expect("join")
        .expect("started once unlocked");
    assert!(!socket.exists(), "the unlock socket goes with the lock");
    again.stop().await;
}
