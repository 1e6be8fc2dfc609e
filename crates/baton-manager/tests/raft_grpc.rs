//! Three managers' stores replicating over the real cluster port: gRPC over
//! mutual TLS with manager certificates from one cluster CA, on loopback.

use std::sync::Arc;
use std::time::Duration;

use baton_manager::raft::{GrpcRaftTransport, RaftEndpoint};
use baton_pki::{ClusterCa, Role};
use baton_rpc::tls::{ClientTls, HotCert, ServerTls};
use baton_state::{Command, NodeRole, Timestamp};
use baton_store::Store;
use baton_store::raft::{RaftStore, RaftStoreConfig};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

const CLUSTER: &str = "c1";

fn now() -> i64 {
    i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_secs(),
    )
    .expect("now")
}

struct Manager {
    store: Arc<RaftStore>,
    addr: String,
}

/// A manager's store and cluster port serving Raft (the dispatcher and CA
/// are not needed here: a test endpoint stands in for them).
async fn manager(
    ca: &ClusterCa,
    id: u64,
    dir: &std::path::Path,
    stop: &CancellationToken,
) -> Manager {
    let (key, cert) = baton_pki::generate_key_and_cert(
        ca,
        &format!("{id:016x}"),
        Role::Manager,
        now(),
        Duration::from_secs(3600),
    )
    .expect("manager cert");
    let hot = HotCert::new(&cert, &key).expect("cert");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let transport = Arc::new(GrpcRaftTransport::new());
    transport.set_tls(ClientTls::new(ca.cert_pem(), hot.clone()).expect("client tls"));
    let store = Arc::new(
        RaftStore::open(
            RaftStoreConfig::new(dir.join(format!("m{id}.redb")), id, addr.clone()),
            transport,
        )
        .await
        .expect("store"),
    );
    let tls = ServerTls::new(ca.cert_pem(), CLUSTER, hot).expect("server tls");
    let router = tonic::transport::Server::builder().add_service(
        baton_rpc::server::RaftServer::new(Arc::new(RaftEndpoint::new(store.clone())))
            .into_service(),
    );
    let stop = stop.clone();
    tokio::spawn(async move {
        baton_rpc::transport::serve(listener, tls, router, stop.cancelled_owned())
            .await
            .expect("serve");
    });
    Manager { store, addr }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_managers_replicate_over_mutual_tls_and_workers_cannot_speak_raft() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = ClusterCa::generate(CLUSTER, now(), Duration::from_secs(86_400)).expect("ca");
    let stop = CancellationToken::new();
    let mut managers = Vec::new();
    // Ids with letters, as the cluster makes them: all-digit names are not
    // DNS names.
    let ids = [0xa1, 0xa2, 0xa3];
    for id in ids {
        managers.push(manager(&ca, id, dir.path(), &stop).await);
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
    }
    stop.cancel();
}
