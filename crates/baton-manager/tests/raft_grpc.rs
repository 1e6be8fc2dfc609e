//! Three managers' stores replicating over the real cluster port: gRPC over
//! mutual TLS with manager certificates from one cluster CA, on loopback.

use std::time::Duration;

use baton_pki::{ClusterCa, Role};
use baton_rpc::tls::{ClientTls, HotCert};
use baton_state::{Command, NodeRole, Timestamp};
use baton_store::Store;

mod common;

use common::raft_member::{CLUSTER, manager, now};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_managers_replicate_over_mutual_tls_and_workers_cannot_speak_raft() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = ClusterCa::generate(CLUSTER, now(), Duration::from_secs(86_400)).expect("ca");
    let mut managers = Vec::new();
    // Ids with letters, as the cluster makes them: all-digit names are not
    // DNS names.
    let ids = [0xa1, 0xa2, 0xa3];
    for id in ids {
        managers.push(manager(&ca, id, dir.path()).await);
    }
    let first = managers[0].store.clone();
    first.initialize_alone().await.expect("init");
    for (id, m) in ids.iter().zip(&managers).skip(1) {
        first.add_member(*id, &m.addr).await.expect("add over mTLS");
    }
    // A write on a follower is forwarded to the leader and replicated.
    let follower = managers[2].store.clone();
    let applied = follower
        .propose(Command::RotateJoinToken {
            role: NodeRole::Worker,
            digest: "aa".repeat(32),
        })
        .await;
    // No cluster record exists in this bare state: the state machine refuses
    // the command, on every member alike, after it was committed.
    assert!(
        matches!(applied, Err(baton_store::StoreError::Rejected(_))),
        "{applied:?}"
    );
    let index = first
        .propose(Command::NodeDown {
            id: baton_state::NodeId("n".into()),
            now: Timestamp(1),
        })
        .await
        .map(|a| a.index)
        .or_else(|e| match e {
            baton_store::StoreError::Rejected(_) => Ok(first.snapshot().index),
            other => Err(other),
        })
        .expect("committed");
    for m in &managers {
        m.store
            .raft()
            .wait(Some(Duration::from_secs(10)))
            .applied_index_at_least(Some(index), "replicated")
            .await
            .expect("replicated over the cluster port");
        let status = m.store.status();
        assert_eq!(status.members.iter().filter(|x| x.voter).count(), 3);
        assert_eq!(status.leader, Some(ids[0]));
    }

    // A worker certificate of the same cluster cannot call Raft.
    let (wkey, wcert) = baton_pki::generate_key_and_cert(
        &ca,
        "worker-1",
        Role::Worker,
        now(),
        Duration::from_secs(3600),
    )
    .expect("worker cert");
    let tls =
        ClientTls::new(ca.cert_pem(), HotCert::new(&wcert, &wkey).expect("cert")).expect("tls");
    let channel = baton_rpc::transport::connect(&managers[0].addr, &tls)
        .await
        .expect("connect");
    let refused = baton_rpc::client::RaftClient::new(channel)
        .call(b"{}".to_vec())
        .await
        .expect_err("a worker speaking raft");
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");

    for m in &managers {
        m.store.shutdown().await;
        m.stop.cancel();
    }
}
