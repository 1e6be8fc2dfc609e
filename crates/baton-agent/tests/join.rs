//! Joining a cluster and renewing the certificate, against a real `ManagerCa`
//! and a real store behind gRPC over TLS on loopback.

use std::collections::BTreeSet;
use std::future::Future;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use baton_agent::ManagerList;
use baton_agent::identity::{IdentityError, NodeIdentity, load_or_join, renew_loop};
use baton_manager::ca::ManagerCa;
use baton_pki::{ClusterCa, JoinToken, Role};
use baton_rpc::client::GrpcDispatcher;
use baton_rpc::tls::{HotCert, ServerTls};
use baton_rpc::{
    AssignmentSet, Dispatcher, LogEvent, NodeDescription, RpcError, Session, SessionMessage,
};
use baton_spec::Resources;
use baton_state::{Command, NodeId, NodeRole, TaskReport, Timestamp};
use baton_store::Store;
use baton_store::raft::RaftStore;
use rustls::server::ParsedCertificate;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

const DEADLINE: Duration = Duration::from_secs(30);
const DAY: Duration = Duration::from_secs(86_400);
const CLUSTER_ID: &str = "c1";

/// Polls `check` every 20 ms until it returns `Some`, failing after [`DEADLINE`].
async fn eventually<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn within<T>(what: &str, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(DEADLINE, future)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

fn unix_now() -> i64 {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs();
    i64::try_from(secs).expect("seconds fit i64")
}

/// A dispatcher that records reports and lets the test push down sessions.
#[derive(Default)]
struct TestDispatcher {
    sessions: Mutex<Vec<mpsc::Sender<SessionMessage>>>,
    reports: Mutex<Vec<NodeId>>,
}

#[async_trait::async_trait]
impl Dispatcher for TestDispatcher {
    async fn open_session(&self, node: NodeDescription) -> Result<Session, RpcError> {
        let (tx, rx) = mpsc::channel(8);
        self.sessions.lock().expect("lock").push(tx);
        Ok(Session {
            node_id: node.node_id,
            messages: rx,
        })
    }

    async fn report(&self, node: &NodeId, _reports: Vec<TaskReport>) -> Result<(), RpcError> {
        self.reports.lock().expect("lock").push(node.clone());
        Ok(())
    }

    async fn send_logs(&self, _: &NodeId, _: u64, _: LogEvent) -> Result<(), RpcError> {
        Ok(())
    }

    async fn heartbeat(&self, _: &NodeId) -> Result<Duration, RpcError> {
        Ok(Duration::from_secs(1))
    }
}

/// One manager's cluster port: a `ManagerCa` over a `RaftStore`, serving
/// with a long-lived manager certificate; node certificates live for
/// `cert_validity`.
struct TestCluster {
    addr: String,
    worker_token: String,
    manager_token: String,
    root_digest: String,
    store: Arc<dyn Store>,
    dispatcher: Arc<TestDispatcher>,
    shutdown: CancellationToken,
    server: Option<JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

impl TestCluster {
    async fn start(cert_validity: Duration) -> TestCluster {
        let dir = tempfile::tempdir().expect("tempdir");
        let store: Arc<dyn Store> = Arc::new(
            RaftStore::open_solo_at(
                &dir.path().join("state.redb"),
                baton_store::seal::SealKey::generate(),
            )
            .await
            .expect("store"),
        );
        let now = unix_now();
        let root = ClusterCa::generate(CLUSTER_ID, now, 365 * DAY).expect("root ca");
        let worker = JoinToken::generate(&root.root_digest()).expect("token");
        let manager = JoinToken::generate(&root.root_digest()).expect("token");
        let tokens = baton_manager::identity::StoredTokens {
            worker: worker.format(),
            manager: manager.format(),
        };
        let cluster = baton_manager::identity::new_cluster(
            CLUSTER_ID,
            root.cert_pem(),
            Some(baton_state::Secret::new(root.key_pem())),
            None,
            &tokens,
            cert_validity,
        )
        .expect("cluster");
        store
            .propose(Command::InitCluster { cluster })
            .await
            .expect("init cluster");
        // The manager's own certificate outlives the test, whatever the
        // cluster's node certificate validity.
        let (key, cert) =
            baton_pki::generate_key_and_cert(&root, "manager-0", Role::Manager, now, DAY)
                .expect("manager cert");
        let tls = ServerTls::new(
            root.cert_pem(),
            CLUSTER_ID,
            HotCert::new(&cert, &key).expect("hot cert"),
        )
        .expect("server tls");
        let root_digest = root.root_digest();
        let dispatcher = Arc::new(TestDispatcher::default());
        let router = baton_rpc::server::router(
            dispatcher.clone(),
            Arc::new(ManagerCa::new(
                store.clone(),
                Arc::new(baton_manager::signer::Signer::new()),
            )),
            Arc::new(baton_manager::raft::RaftEndpoint::default()),
        );
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        let shutdown = CancellationToken::new();
        let stop = shutdown.clone();
        let server = tokio::spawn(async move {
            baton_rpc::transport::serve(listener, tls, router, stop.cancelled_owned())
                .await
                .expect("serve");
        });
        TestCluster {
            addr,
            worker_token: worker.format(),
            manager_token: manager.format(),
            root_digest,
            store,
            dispatcher,
            shutdown,
            server: Some(server),
            _dir: dir,
        }
    }

    /// Stops serving; the port is closed when this returns.
    async fn stop(&mut self) {
        self.dispatcher.sessions.lock().expect("lock").clear();
        self.shutdown.cancel();
        if let Some(server) = self.server.take() {
            within("the server to stop", server)
                .await
                .expect("server task");
        }
    }

    fn member_role(&self, node: &NodeId) -> Option<NodeRole> {
        self.store.snapshot().state.member(node).map(|m| m.role)
    }

    async fn push(&self, set: AssignmentSet) {
        let sessions = self.dispatcher.sessions.lock().expect("lock").clone();
        for session in sessions {
            session
                .send(SessionMessage::Assignments(set.clone()))
                .await
                .expect("session open");
        }
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        if let Some(server) = self.server.take() {
            server.abort();
        }
    }
}

fn description(identity: &NodeIdentity) -> NodeDescription {
    NodeDescription {
        labels: Default::default(),
        node_id: identity.node_id.clone(),
        hostname: "test-host".to_owned(),
        capacity: Resources {
            disk_bytes: 0,
            cpu_millis: 1000,
            memory_bytes: 1 << 30,
        },
        drivers: BTreeSet::new(),
        version: "test".to_owned(),
        address: None,
    }
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .expect("metadata")
        .permissions()
        .mode()
        & 0o777
}

fn peer_identity_of_pem(cert_pem: &str) -> baton_pki::PeerIdentity {
    baton_pki::peer_identity(&baton_pki::certificate_der(cert_pem).expect("der")).expect("identity")
}

fn public_key(der: &[u8]) -> Vec<u8> {
    let cert = rustls::pki_types::CertificateDer::from(der);
    ParsedCertificate::try_from(&cert)
        .expect("parse")
        .subject_public_key_info()
        .as_ref()
        .to_vec()
}

/// The secret part of a token text (what follows the digest).
fn secret_part(token: &str) -> &str {
    token.rsplit('-').next().expect("secret")
}

fn assert_nothing_written(data_dir: &Path) {
    let entries: Vec<_> = std::fs::read_dir(data_dir)
        .expect("read dir")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert!(entries.is_empty(), "written: {entries:?}");
}

#[tokio::test]
async fn worker_joins_and_restarts_with_its_identity_without_the_manager() {
    let mut cluster = TestCluster::start(DAY).await;
    let data = tempfile::tempdir().expect("tempdir");
    let identity = load_or_join(data.path(), &cluster.addr, Some(&cluster.worker_token))
        .await
        .expect("join");
    assert_eq!(identity.role, Role::Worker);
    assert_eq!(identity.cluster_id, CLUSTER_ID);
    assert_eq!(identity.node_id.0.len(), 16);
    assert_eq!(
        cluster.member_role(&identity.node_id),
        Some(NodeRole::Worker)
    );

    let dir = data.path().join("identity");
    assert_eq!(mode(&dir.join("key.pem")), 0o600);
    assert_eq!(mode(&dir), 0o700);
    let cert = peer_identity_of_pem(&read(&dir.join("cert.pem")));
    assert_eq!(cert.node_id, identity.node_id.0);
    assert_eq!(cert.role, Role::Worker);
    assert_eq!(read(&dir.join("node-id")).trim(), identity.node_id.0);
    assert_eq!(
        read(&data.path().join("node-id")).trim(),
        identity.node_id.0
    );
    assert_eq!(
        baton_pki::root_digest(
            &baton_pki::certificate_der(&read(&dir.join("root.pem"))).expect("der")
        ),
        cluster.root_digest
    );
    let debug = format!("{identity:?}");
    assert!(!debug.contains("PRIVATE"), "{debug}");

    // The identity opens a session over mutual TLS under the assigned id.
    let channel =
        baton_rpc::transport::connect(&cluster.addr, &identity.client_tls().expect("tls"))
            .await
            .expect("connect");
    let session = GrpcDispatcher::new(channel)
        .open_session(description(&identity))
        .await
        .expect("session");
    assert_eq!(session.node_id, identity.node_id);
    drop(session);

    // Restarted with the manager gone: the same identity, no token needed.
    cluster.stop().await;
    let again = load_or_join(data.path(), &cluster.addr, None)
        .await
        .expect("load without the manager");
    assert_eq!(again.node_id, identity.node_id);
    assert_eq!(again.role, Role::Worker);
    assert_eq!(again.cert.leaf(), identity.cert.leaf());
    // A token given again is ignored, not a second join.
    let with_token = load_or_join(data.path(), &cluster.addr, Some(&cluster.worker_token))
        .await
        .expect("load ignoring the token");
    assert_eq!(with_token.node_id, identity.node_id);
}

#[tokio::test]
async fn manager_token_joins_as_manager() {
    let cluster = TestCluster::start(DAY).await;
    let data = tempfile::tempdir().expect("tempdir");
    let identity = load_or_join(data.path(), &cluster.addr, Some(&cluster.manager_token))
        .await
        .expect("join");
    assert_eq!(identity.role, Role::Manager);
    assert_eq!(
        cluster.member_role(&identity.node_id),
        Some(NodeRole::Manager)
    );
}

#[tokio::test]
async fn token_for_another_ca_is_refused_before_anything_is_sent() {
    let cluster = TestCluster::start(DAY).await;
    let data = tempfile::tempdir().expect("tempdir");
    let wrong_digest = "ab".repeat(32);
    let token = format!(
        "BATON-1-{wrong_digest}-{}",
        secret_part(&cluster.worker_token)
    );
    let err = load_or_join(data.path(), &cluster.addr, Some(&token))
        .await
        .expect_err("wrong ca");
    assert!(matches!(err, IdentityError::RootMismatch { .. }), "{err:?}");
    let text = err.to_string();
    assert!(text.starts_with("refusing to join: "), "{text}");
    assert!(
        text.contains(&wrong_digest) && text.contains(&cluster.root_digest),
        "{text}"
    );
    assert!(!text.contains(secret_part(&cluster.worker_token)), "{text}");
    assert!(!err.is_retryable());
    assert_nothing_written(data.path());
    assert_eq!(cluster.store.snapshot().state.members().count(), 0);
}

#[tokio::test]
async fn garbage_token_is_refused_clearly_without_echoing_it() {
    let cluster = TestCluster::start(DAY).await;
    let data = tempfile::tempdir().expect("tempdir");
    for garbage in [
        "hunter2",
        "BATON-1-nothex-hunter2",
        &format!("{}x", cluster.worker_token),
    ] {
        let err = load_or_join(data.path(), &cluster.addr, Some(garbage))
            .await
            .expect_err("garbage");
        let text = err.to_string();
        assert!(text.starts_with("invalid join token: "), "{text}");
        assert!(
            !text.contains("hunter2") && !text.contains(secret_part(&cluster.worker_token)),
            "{text}"
        );
    }
    assert_nothing_written(data.path());
}

#[tokio::test]
async fn rotated_or_unknown_secret_is_refused_and_nothing_is_written() {
    let cluster = TestCluster::start(DAY).await;
    let data = tempfile::tempdir().expect("tempdir");

    let unknown = JoinToken::generate(&cluster.root_digest)
        .expect("token")
        .format();
    let rotated = JoinToken::generate(&cluster.root_digest).expect("token");
    cluster
        .store
        .propose(Command::RotateJoinToken {
            role: NodeRole::Worker,
            digest: baton_pki::hex(&rotated.secret_digest()),
        })
        .await
        .expect("rotate");
    for (name, token) in [
        ("unknown", unknown.as_str()),
        ("rotated out", cluster.worker_token.as_str()),
    ] {
        let err = load_or_join(data.path(), &cluster.addr, Some(token))
            .await
            .expect_err(name);
        assert!(
            matches!(err, IdentityError::Refused { action: "join", .. }),
            "{name}: {err:?}"
        );
        let text = err.to_string();
        assert!(
            text.starts_with("join refused by the manager at "),
            "{text}"
        );
        assert!(
            text.ends_with("it is not this cluster's current worker or manager token"),
            "{text}"
        );
        assert!(!text.contains(secret_part(token)), "{text}");
        assert!(!err.is_retryable());
        assert_nothing_written(data.path());
    }
    assert_eq!(cluster.store.snapshot().state.members().count(), 0);

    // The new token admits.
    let identity = load_or_join(data.path(), &cluster.addr, Some(&rotated.format()))
        .await
        .expect("join with the new token");
    assert_eq!(identity.role, Role::Worker);
}

#[tokio::test]
async fn unreachable_manager_is_a_retryable_error_and_nothing_is_written() {
    let data = tempfile::tempdir().expect("tempdir");
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    drop(listener);
    let token = JoinToken::generate(&"ab".repeat(32))
        .expect("token")
        .format();
    let err = load_or_join(data.path(), &addr, Some(&token))
        .await
        .expect_err("nothing listens");
    assert!(err.is_retryable(), "{err:?}");
    assert!(
        err.to_string().starts_with("cannot reach the manager at "),
        "{err}"
    );
    assert_nothing_written(data.path());
}

#[tokio::test]
async fn renewal_swaps_in_a_new_key_while_an_open_session_keeps_working() {
    // 10 s certificates renew 3.75 to 7.5 s after they are issued (the 50-80 %
    // band of a lifetime backdated by 2.5 s), leaving at least 2.5 s before
    // the old certificate expires to use the connection it opened.
    let cluster = TestCluster::start(Duration::from_secs(10)).await;
    let data = tempfile::tempdir().expect("tempdir");
    let identity = load_or_join(data.path(), &cluster.addr, Some(&cluster.worker_token))
        .await
        .expect("join");
    let old_leaf = identity.cert.leaf().expect("leaf");
    let old_validity = baton_pki::cert_validity(&old_leaf).expect("validity");
    let key_path = data.path().join("identity/key.pem");
    let old_key = read(&key_path);

    // A session opened with the first certificate.
    let channel =
        baton_rpc::transport::connect(&cluster.addr, &identity.client_tls().expect("tls"))
            .await
            .expect("connect");
    let dispatcher = GrpcDispatcher::new(channel);
    let mut session = dispatcher
        .open_session(description(&identity))
        .await
        .expect("session");

    let shutdown = CancellationToken::new();
    let renewer = tokio::spawn(renew_loop(
        identity.clone(),
        ManagerList::load(data.path(), &cluster.addr),
        shutdown.clone(),
    ));
    let new_leaf = eventually("the certificate to be renewed", || {
        identity.cert.leaf().filter(|leaf| *leaf != old_leaf)
    })
    .await;

    // The session opened before the renewal still works both ways.
    let set = AssignmentSet {
        seq: 7,
        ..AssignmentSet::default()
    };
    cluster.push(set.clone()).await;
    let pushed = within("the pushed assignments", session.messages.recv()).await;
    assert_eq!(pushed, Some(SessionMessage::Assignments(set)));
    dispatcher
        .report(&identity.node_id, vec![])
        .await
        .expect("report on the old connection");

    // The new certificate: same identity, a new key, a later expiry.
    let renewed = baton_pki::peer_identity(&new_leaf).expect("identity");
    assert_eq!(
        (renewed.node_id.as_str(), renewed.role),
        (identity.node_id.0.as_str(), Role::Worker)
    );
    assert_ne!(public_key(&new_leaf), public_key(&old_leaf));
    let new_validity = baton_pki::cert_validity(&new_leaf).expect("validity");
    assert!(
        new_validity.not_after > old_validity.not_after,
        "{new_validity:?} vs {old_validity:?}"
    );

    // On disk: the new pair, the key still private, no staging file left.
    let cert_on_disk =
        baton_pki::certificate_der(&read(&data.path().join("identity/cert.pem"))).expect("der");
    assert_eq!(cert_on_disk.as_slice(), new_leaf.as_ref());
    assert_ne!(read(&key_path), old_key);
    assert_eq!(mode(&key_path), 0o600);
    assert!(!data.path().join("identity/renew-key.pem").exists());

    // A new connection presents the new certificate and works.
    let channel =
        baton_rpc::transport::connect(&cluster.addr, &identity.client_tls().expect("tls"))
            .await
            .expect("connect with the renewed certificate");
    GrpcDispatcher::new(channel)
        .report(&identity.node_id, vec![])
        .await
        .expect("report on a new connection");
    // The manager recorded the new expiry.
    let recorded = cluster
        .store
        .snapshot()
        .state
        .member(&identity.node_id)
        .map(|m| m.cert_not_after);
    assert!(
        recorded
            >= Some(Timestamp(
                u64::try_from(new_validity.not_after).expect("positive") * 1000
            ))
    );

    // A restart loads the renewed identity.
    let reloaded = load_or_join(data.path(), &cluster.addr, None)
        .await
        .expect("reload");
    assert_eq!(reloaded.cert.leaf().as_ref(), Some(&new_leaf));

    shutdown.cancel();
    within("the renew loop to stop", renewer)
        .await
        .expect("renew loop");
    drop(session);
}

#[tokio::test]
async fn renewal_skips_an_unreachable_manager_for_the_next_one() {
    let cluster = TestCluster::start(DAY).await;
    let data = tempfile::tempdir().expect("tempdir");
    let identity = load_or_join(data.path(), &cluster.addr, Some(&cluster.worker_token))
        .await
        .expect("join");
    let old_leaf = identity.cert.leaf().expect("leaf");
    // The list starts at a manager that is gone; the live one comes next.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let gone = listener.local_addr().expect("addr").to_string();
    drop(listener);
    let managers = ManagerList::load(data.path(), &gone);
    managers.update(vec![gone.clone(), cluster.addr.clone()]);
    assert_eq!(managers.current(), gone);

    let shutdown = CancellationToken::new();
    identity.renew_now.notify_one();
    let renewer = tokio::spawn(renew_loop(
        identity.clone(),
        managers.clone(),
        shutdown.clone(),
    ));
    eventually("the certificate to be renewed", || {
        identity.cert.leaf().filter(|leaf| *leaf != old_leaf)
    })
    .await;
    assert_eq!(managers.current(), cluster.addr);

    shutdown.cancel();
    within("the renew loop to stop", renewer)
        .await
        .expect("renew loop");
}
