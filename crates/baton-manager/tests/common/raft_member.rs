//! A manager's Raft member on the real cluster port, for tests and benches:
//! its store and a listener serving Raft over mutual TLS with a manager
//! certificate of `ca`.

use std::sync::Arc;
use std::time::Duration;

use baton_manager::raft::{GrpcRaftTransport, RaftEndpoint};
use baton_pki::{ClusterCa, Role};
use baton_rpc::tls::{ClientTls, HotCert, ServerTls};
use baton_store::raft::{RaftStore, RaftStoreConfig};
use baton_store::seal::SealKey;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// The cluster id of these members' certificates.
pub const CLUSTER: &str = "c1";

/// Unix seconds.
pub fn now() -> i64 {
    i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_secs(),
    )
    .expect("now")
}

/// One member: its store, its address, and what stops its listener.
pub struct Manager {
    pub store: Arc<RaftStore>,
    pub addr: String,
    pub stop: CancellationToken,
}

/// A member with Raft id `id` (use ids with a hex letter: node ids are DNS
/// names), its database in `dir`, serving Raft on a loopback port.
pub async fn manager(ca: &ClusterCa, id: u64, dir: &std::path::Path) -> Manager {
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
            RaftStoreConfig::new(
                dir.join(format!("m{id}.redb")),
                id,
                addr.clone(),
                SealKey::generate(),
            ),
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
    let stop = CancellationToken::new();
    let serving = stop.clone();
    tokio::spawn(async move {
        baton_rpc::transport::serve(listener, tls, router, serving.cancelled_owned())
            .await
            .expect("serve");
    });
    Manager { store, addr, stop }
}
