//! The cluster port end to end on loopback: real TLS, certificates from a
//! `ClusterCa` made in the test, a recording in-test dispatcher and CA.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use baton_pki::{ClusterCa, PeerIdentity, Role};
use baton_rpc::auth::Revocations;
use baton_rpc::client::{CaClient, GrpcDispatcher, fetch_root_ca};
use baton_rpc::server::{CaError, CaService, router};
use baton_rpc::tls::{ClientTls, HotCert, ServerTls};
use baton_rpc::transport::{connect, connect_lazy, serve};
use baton_rpc::{
    Assignment, AssignmentSet, Dispatcher, LogEvent, LogRequest, NodeDescription, RpcError,
    Session, SessionMessage,
};
use baton_spec::{DriverKind, Resources, TaskSpec};
use baton_state::{NodeId, TaskDesired, TaskId, TaskReport, TaskState};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};

const CLUSTER: &str = "c1";
const DAY: Duration = Duration::from_secs(86_400);
const DEADLINE: Duration = Duration::from_secs(10);

fn now() -> i64 {
    i64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock after 1970")
            .as_secs(),
    )
    .expect("fits")
}

fn new_ca(cluster: &str) -> Arc<ClusterCa> {
    Arc::new(ClusterCa::generate(cluster, now(), 3650 * DAY).expect("ca"))
}

fn cert(ca: &ClusterCa, node_id: &str, role: Role) -> HotCert {
    let (key_pem, csr_pem) = baton_pki::generate_csr().expect("csr");
    let cert_pem = match role {
        Role::Admin => ca.issue_client(&csr_pem, node_id, now(), DAY),
        Role::Manager | Role::Worker => ca.issue(&csr_pem, node_id, role, now(), DAY),
    }
    .expect("issue");
    HotCert::new(&cert_pem, &key_pem).expect("hot cert")
}

fn description(node_id: &str) -> NodeDescription {
    NodeDescription {
        labels: Default::default(),
        node_id: NodeId(node_id.into()),
        hostname: "host-a".into(),
        capacity: Resources {
            disk_bytes: 0,
            cpu_millis: 2000,
            memory_bytes: 1 << 30,
        },
        drivers: BTreeSet::from([DriverKind::Raw]),
        version: "0.1.0".into(),
        address: None,
    }
}

fn report(task: &str) -> TaskReport {
    TaskReport {
        task: TaskId(task.into()),
        state: TaskState::Running,
        message: "started".into(),
        exit: None,
        pid: Some(7),
    }
}

fn assignment(env_value: &str) -> Assignment {
    Assignment {
        ports: Default::default(),
        task: TaskId("web.1.abcdef012345".into()),
        job: "web".into(),
        job_version: 1,
        slot: "1".into(),
        spec: TaskSpec {
            ports: Default::default(),
            image: None,
            capabilities: Vec::new(),
            pids_limit: baton_spec::DEFAULT_PIDS_LIMIT,
            secrets: Vec::new(),
            env_secrets: std::collections::BTreeMap::new(),
            configs: Vec::new(),
            driver: DriverKind::Raw,
            command: vec!["/bin/sleep".into(), "60".into()],
            env: BTreeMap::from([("DB_PASSWORD".into(), env_value.into())]),
            workdir: None,
            user: None,
            resources: Resources::default(),
            kill_timeout: Duration::from_secs(5),
        },
        desired: TaskDesired::Running,
        state: TaskState::Assigned,
    }
}

/// An in-process dispatcher that records every call it gets.
#[derive(Default)]
struct Recorder {
    sessions: Mutex<Vec<NodeDescription>>,
    senders: Mutex<Vec<mpsc::Sender<SessionMessage>>>,
    reports: Mutex<Vec<(NodeId, Vec<TaskReport>)>>,
    logs: Mutex<Vec<(NodeId, u64, LogEvent)>>,
}

impl Recorder {
    fn calls(&self) -> usize {
        self.sessions.lock().expect("lock").len()
            + self.reports.lock().expect("lock").len()
            + self.logs.lock().expect("lock").len()
    }

    fn last_sender(&self) -> mpsc::Sender<SessionMessage> {
        self.senders
            .lock()
            .expect("lock")
            .last()
            .cloned()
            .expect("a session")
    }
}

#[async_trait::async_trait]
impl Dispatcher for Recorder {
    async fn open_session(&self, node: NodeDescription) -> Result<Session, RpcError> {
        let (tx, rx) = mpsc::channel(8);
        let node_id = node.node_id.clone();
        self.sessions.lock().expect("lock").push(node);
        self.senders.lock().expect("lock").push(tx);
        Ok(Session {
            node_id,
            messages: rx,
        })
    }

    async fn report(&self, node: &NodeId, reports: Vec<TaskReport>) -> Result<(), RpcError> {
        self.reports
            .lock()
            .expect("lock")
            .push((node.clone(), reports));
        Ok(())
    }

    async fn send_logs(
        &self,
        node: &NodeId,
        request: u64,
        event: LogEvent,
    ) -> Result<(), RpcError> {
        self.logs
            .lock()
            .expect("lock")
            .push((node.clone(), request, event));
        Ok(())
    }

    async fn heartbeat(&self, _node: &NodeId) -> Result<std::time::Duration, RpcError> {
        Ok(std::time::Duration::from_secs(1))
    }
}

const GOOD_TOKEN: &str = "BATON-1-test-worker-secret";

/// An in-process CA: one valid worker token; renewal keeps the identity.
struct TestCa {
    ca: Arc<ClusterCa>,
    joined: Mutex<u32>,
    /// Renews with another node's identity: a CA bug the server must catch.
    renew_as: Option<&'static str>,
}

#[async_trait::async_trait]
impl CaService for TestCa {
    async fn root_ca(&self) -> Result<String, CaError> {
        Ok(self.ca.cert_pem().to_owned())
    }

    async fn join(&self, csr_pem: &str, token: &str) -> Result<(NodeId, String), CaError> {
        if token != GOOD_TOKEN {
            return Err(CaError::PermissionDenied("invalid join token".into()));
        }
        let n = {
            let mut joined = self.joined.lock().expect("lock");
            *joined += 1;
            *joined
        };
        let node_id = format!("joined-{n}");
        let cert = self
            .ca
            .issue(csr_pem, &node_id, Role::Worker, now(), DAY)
            .map_err(|e| CaError::InvalidRequest(e.to_string()))?;
        Ok((NodeId(node_id), cert))
    }

    async fn renew(&self, identity: &PeerIdentity, csr_pem: &str) -> Result<String, CaError> {
        let node_id = self.renew_as.unwrap_or(&identity.node_id);
        self.ca
            .issue(csr_pem, node_id, identity.role, now(), DAY)
            .map_err(|e| CaError::InvalidRequest(e.to_string()))
    }
}

/// A manager's cluster port on loopback.
struct Cluster {
    ca: Arc<ClusterCa>,
    addr: String,
    dispatcher: Arc<Recorder>,
    server_cert: HotCert,
    revocations: Revocations,
    _shutdown: oneshot::Sender<()>,
}

impl Cluster {
    async fn start() -> Cluster {
        Cluster::start_with(None).await
    }

    async fn start_with(renew_as: Option<&'static str>) -> Cluster {
        let ca = new_ca(CLUSTER);
        let server_cert = cert(&ca, "manager-1", Role::Manager);
        let tls = ServerTls::new(ca.cert_pem(), CLUSTER, server_cert.clone()).expect("server tls");
        let revocations = tls.revocations();
        let dispatcher = Arc::new(Recorder::default());
        let ca_service = Arc::new(TestCa {
            ca: ca.clone(),
            joined: Mutex::new(0),
            renew_as,
        });
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        let (shutdown, shutdown_rx) = oneshot::channel::<()>();
        let app = router(dispatcher.clone(), ca_service, Arc::new(EchoRaft));
        tokio::spawn(async move {
            serve(listener, tls, app, async {
                let _ = shutdown_rx.await;
            })
            .await
            .expect("serve");
        });
        Cluster {
            ca,
            addr,
            dispatcher,
            server_cert,
            revocations,
            _shutdown: shutdown,
        }
    }

    fn client_tls(&self, cert: HotCert) -> ClientTls {
        ClientTls::new(self.ca.cert_pem(), cert).expect("client tls")
    }

    async fn dispatcher_as(&self, cert: HotCert) -> GrpcDispatcher {
        let channel = connect(&self.addr, &self.client_tls(cert))
            .await
            .expect("connect");
        GrpcDispatcher::new(channel)
    }

    async fn ca_client_as(&self, cert: HotCert) -> CaClient {
        let channel = connect(&self.addr, &self.client_tls(cert))
            .await
            .expect("connect");
        CaClient::new(channel)
    }
}

/// A Raft endpoint that answers with the caller's node id and the message.
struct EchoRaft;

#[async_trait::async_trait]
impl baton_rpc::server::RaftService for EchoRaft {
    async fn call(&self, from: &PeerIdentity, message: Vec<u8>) -> Result<Vec<u8>, tonic::Status> {
        let mut answer = from.node_id.clone().into_bytes();
        answer.push(b':');
        answer.extend(message);
        Ok(answer)
    }
}

#[tokio::test]
async fn raft_is_for_manager_certificates_only() {
    let cluster = Cluster::start().await;
    let as_role = |name: &str, role: Role| {
        let tls = cluster.client_tls(cert(&cluster.ca, name, role));
        let addr = cluster.addr.clone();
        async move {
            let channel = connect(&addr, &tls).await.expect("connect");
            baton_rpc::client::RaftClient::new(channel)
                .call(b"hello".to_vec())
                .await
        }
    };
    let answer = as_role("manager-2", Role::Manager)
        .await
        .expect("a manager");
    assert_eq!(answer, b"manager-2:hello");
    let refused = as_role("worker-1", Role::Worker)
        .await
        .expect_err("a worker is refused");
    assert_eq!(refused.code(), tonic::Code::PermissionDenied);
    // A large message (a snapshot) passes both ways.
    let channel = connect(
        &cluster.addr,
        &cluster.client_tls(cert(&cluster.ca, "manager-3", Role::Manager)),
    )
    .await
    .expect("connect");
    let big = vec![b'x'; 8 << 20];
    let answer = baton_rpc::client::RaftClient::new(channel)
        .call(big.clone())
        .await
        .expect("8 MiB");
    assert_eq!(answer.len(), big.len() + "manager-3:".len());
}

async fn recv(session: &mut Session) -> SessionMessage {
    tokio::time::timeout(DEADLINE, session.messages.recv())
        .await
        .expect("message before the deadline")
        .expect("session open")
}

#[tokio::test]
async fn worker_session_takes_node_id_from_certificate_not_request() {
    let cluster = Cluster::start().await;
    let worker = cluster
        .dispatcher_as(cert(&cluster.ca, "worker-1", Role::Worker))
        .await;

    let mut session = worker
        .open_session(description("forged-node"))
        .await
        .expect("session");

    assert_eq!(session.node_id, NodeId("worker-1".into()));
    let seen = cluster.dispatcher.sessions.lock().expect("lock").clone();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].node_id, NodeId("worker-1".into()));
    assert_eq!(seen[0].hostname, "host-a");
    assert_eq!(seen[0].drivers, BTreeSet::from([DriverKind::Raw]));

    // Messages pushed by the dispatcher arrive intact.
    let pushed = [
        SessionMessage::Assignments(AssignmentSet {
            seq: 1,
            tasks: vec![assignment("v")],
            ..AssignmentSet::default()
        }),
        SessionMessage::Logs(LogRequest {
            id: 3,
            task: TaskId("web.1.abcdef012345".into()),
            follow: false,
        }),
    ];
    let tx = cluster.dispatcher.last_sender();
    for msg in pushed {
        tx.send(msg.clone()).await.expect("push");
        assert_eq!(recv(&mut session).await, msg);
    }
}

#[tokio::test]
async fn reports_and_logs_arrive_with_the_certificate_node_id() {
    let cluster = Cluster::start().await;
    let worker = cluster
        .dispatcher_as(cert(&cluster.ca, "worker-1", Role::Worker))
        .await;
    let forged = NodeId("worker-2".into());

    worker
        .report(&forged, vec![report("t1")])
        .await
        .expect("report");
    worker
        .send_logs(&forged, 5, LogEvent::Data(b"hello".to_vec()))
        .await
        .expect("logs");

    let me = NodeId("worker-1".into());
    assert_eq!(
        cluster.dispatcher.reports.lock().expect("lock").clone(),
        vec![(me.clone(), vec![report("t1")])]
    );
    assert_eq!(
        cluster.dispatcher.logs.lock().expect("lock").clone(),
        vec![(me, 5, LogEvent::Data(b"hello".to_vec()))]
    );
}

#[tokio::test]
async fn anonymous_client_may_fetch_root_and_join_but_not_use_the_dispatcher() {
    let cluster = Cluster::start().await;
    let mut ca = cluster.ca_client_as(HotCert::empty()).await;

    assert_eq!(ca.root_ca().await.expect("root"), cluster.ca.cert_pem());
    let (key_pem, csr_pem) = baton_pki::generate_csr().expect("csr");
    let joined = ca.join(&csr_pem, GOOD_TOKEN).await.expect("join");
    assert_eq!(joined.node_id, NodeId("joined-1".into()));
    assert_eq!(joined.ca_pem, cluster.ca.cert_pem());
    HotCert::new(&joined.cert_pem, &key_pem).expect("issued cert matches the local key");
    assert!(matches!(
        ca.join(&csr_pem, "BATON-1-wrong").await,
        Err(CaError::PermissionDenied(_))
    ));
    assert!(matches!(
        ca.renew(&csr_pem).await,
        Err(CaError::PermissionDenied(_))
    ));

    let anonymous = cluster.dispatcher_as(HotCert::empty()).await;
    assert_refused_everywhere(&anonymous).await;
    assert_eq!(cluster.dispatcher.calls(), 0);
}

async fn assert_refused_everywhere(dispatcher: &GrpcDispatcher) {
    let node = NodeId("worker-1".into());
    assert!(matches!(
        dispatcher.open_session(description("worker-1")).await,
        Err(RpcError::PermissionDenied(_))
    ));
    assert!(matches!(
        dispatcher.report(&node, vec![report("t1")]).await,
        Err(RpcError::PermissionDenied(_))
    ));
    assert!(matches!(
        dispatcher.send_logs(&node, 1, LogEvent::End).await,
        Err(RpcError::PermissionDenied(_))
    ));
}

#[tokio::test]
async fn admin_certificate_is_refused_by_the_dispatcher() {
    let cluster = Cluster::start().await;
    let admin = cluster
        .dispatcher_as(cert(&cluster.ca, "alice", Role::Admin))
        .await;
    assert_refused_everywhere(&admin).await;
    assert_eq!(cluster.dispatcher.calls(), 0);
}

#[tokio::test]
async fn certificate_from_another_ca_fails_the_handshake() {
    let cluster = Cluster::start().await;
    let other_ca = new_ca(CLUSTER);

    // A client certificate of another CA: the server refuses the handshake.
    // In TLS 1.3 the client learns it on its first read, so the dial or the
    // first call fails, as a transport error.
    let tls = cluster.client_tls(cert(&other_ca, "worker-1", Role::Worker));
    if let Ok(channel) = connect(&cluster.addr, &tls).await {
        let res = GrpcDispatcher::new(channel)
            .report(&NodeId("worker-1".into()), vec![report("t1")])
            .await;
        assert!(matches!(res, Err(RpcError::Unavailable(_))), "{res:?}");
    }

    // A client trusting another root refuses the server.
    let tls = ClientTls::new(
        other_ca.cert_pem(),
        cert(&other_ca, "worker-1", Role::Worker),
    )
    .expect("tls");
    assert!(connect(&cluster.addr, &tls).await.is_err());

    assert_eq!(cluster.dispatcher.calls(), 0);
}

#[tokio::test]
async fn certificate_naming_another_cluster_is_refused() {
    let cluster = Cluster::start().await;
    // Signed by this cluster's root key, but naming cluster "c2".
    let impostor_ca =
        ClusterCa::from_pem("c2", cluster.ca.cert_pem(), &cluster.ca.key_pem()).expect("ca");
    let dispatcher = cluster
        .dispatcher_as(cert(&impostor_ca, "worker-1", Role::Worker))
        .await;
    assert_refused_everywhere(&dispatcher).await;
    assert_eq!(cluster.dispatcher.calls(), 0);
}

#[tokio::test]
async fn hot_swapped_client_certificate_is_used_by_the_next_connection() {
    let cluster = Cluster::start().await;
    let hot = cert(&cluster.ca, "worker-1", Role::Worker);
    let tls = cluster.client_tls(hot.clone());

    let first = GrpcDispatcher::new(connect(&cluster.addr, &tls).await.expect("connect"));
    let session = first.open_session(description("x")).await.expect("session");
    assert_eq!(session.node_id, NodeId("worker-1".into()));

    let (key_pem, csr_pem) = baton_pki::generate_csr().expect("csr");
    let renewed = cluster
        .ca
        .issue(&csr_pem, "worker-2", Role::Worker, now(), DAY)
        .expect("issue");
    hot.swap(&renewed, &key_pem).expect("swap");

    let second = GrpcDispatcher::new(connect(&cluster.addr, &tls).await.expect("connect"));
    let session = second
        .open_session(description("x"))
        .await
        .expect("session");
    assert_eq!(session.node_id, NodeId("worker-2".into()));
}

#[tokio::test]
async fn renew_keeps_the_callers_identity_with_a_new_key() {
    let cluster = Cluster::start().await;
    let hot = cert(&cluster.ca, "worker-1", Role::Worker);
    let old_leaf = hot.leaf().expect("leaf");
    let mut ca = cluster.ca_client_as(hot.clone()).await;

    let (key_pem, csr_pem) = baton_pki::generate_csr().expect("csr");
    let cert_pem = ca.renew(&csr_pem).await.expect("renew");
    hot.swap(&cert_pem, &key_pem)
        .expect("new cert matches the new key");
    let new_leaf = hot.leaf().expect("leaf");
    assert_ne!(new_leaf, old_leaf);
    let identity = baton_pki::peer_identity(&new_leaf).expect("identity");
    assert_eq!(
        (
            identity.node_id.as_str(),
            identity.role,
            identity.cluster_id.as_str()
        ),
        ("worker-1", Role::Worker, CLUSTER)
    );
}

#[tokio::test]
async fn renewal_that_changes_the_identity_is_not_handed_out() {
    let cluster = Cluster::start_with(Some("manager-1")).await;
    let mut ca = cluster
        .ca_client_as(cert(&cluster.ca, "worker-1", Role::Worker))
        .await;
    let (_key_pem, csr_pem) = baton_pki::generate_csr().expect("csr");
    let res = ca.renew(&csr_pem).await;
    assert!(matches!(res, Err(CaError::Unavailable(_))), "{res:?}");
}

#[tokio::test]
async fn fetch_root_ca_checks_the_token_digest() {
    let cluster = Cluster::start().await;
    let root = fetch_root_ca(&cluster.addr, &cluster.ca.root_digest())
        .await
        .expect("root");
    assert_eq!(root, cluster.ca.cert_pem());

    let wrong = new_ca(CLUSTER).root_digest();
    match fetch_root_ca(&cluster.addr, &wrong).await {
        Err(CaError::RootMismatch { expected, actual }) => {
            assert_eq!(expected, wrong);
            assert_eq!(actual, cluster.ca.root_digest());
        }
        other => panic!("expected a root mismatch, got {other:?}"),
    }
}

/// A TCP proxy that records every byte it forwards, both directions.
async fn recording_proxy(upstream: String) -> (String, Arc<Mutex<Vec<u8>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let recorded = Arc::new(Mutex::new(Vec::new()));
    let record = recorded.clone();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let server = TcpStream::connect(&upstream).await.expect("upstream");
            let (client_read, client_write) = client.into_split();
            let (server_read, server_write) = server.into_split();
            tokio::spawn(pump(client_read, server_write, record.clone()));
            tokio::spawn(pump(server_read, client_write, record.clone()));
        }
    });
    (addr, recorded)
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    record: Arc<Mutex<Vec<u8>>>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                record.lock().expect("lock").extend_from_slice(&buf[..n]);
                if to.write_all(&buf[..n]).await.is_err() {
                    break;
                }
            }
        }
    }
}

#[tokio::test]
async fn recorded_bytes_hold_no_plaintext_of_an_env_value() {
    let cluster = Cluster::start().await;
    let (proxy_addr, recorded) = recording_proxy(cluster.addr.clone()).await;
    let marker = "MARKER-hunter2-7f3a9c";
    let tls = cluster.client_tls(cert(&cluster.ca, "worker-1", Role::Worker));
    let worker = GrpcDispatcher::new(connect(&proxy_addr, &tls).await.expect("connect"));

    let mut session = worker
        .open_session(description("x"))
        .await
        .expect("session");
    let pushed = SessionMessage::Assignments(AssignmentSet {
        seq: 1,
        tasks: vec![assignment(marker)],
        ..AssignmentSet::default()
    });
    cluster
        .dispatcher
        .last_sender()
        .send(pushed.clone())
        .await
        .expect("push");
    // The agent got the value, so it crossed the proxy.
    assert_eq!(recv(&mut session).await, pushed);
    worker
        .send_logs(
            &session.node_id,
            1,
            LogEvent::Data(marker.as_bytes().to_vec()),
        )
        .await
        .expect("logs");

    let bytes = recorded.lock().expect("lock").clone();
    assert!(bytes.len() > 1000, "the proxy carried the session");
    assert!(
        !bytes.windows(marker.len()).any(|w| w == marker.as_bytes()),
        "plaintext env value on the wire"
    );
    assert!(
        !bytes.windows(8).any(|w| w == b"hunter2-"),
        "part of the env value on the wire"
    );
}

#[tokio::test]
async fn dropping_the_session_closes_it_at_the_dispatcher() {
    let cluster = Cluster::start().await;
    let worker = cluster
        .dispatcher_as(cert(&cluster.ca, "worker-1", Role::Worker))
        .await;
    let session = worker
        .open_session(description("x"))
        .await
        .expect("session");
    let tx = cluster.dispatcher.last_sender();
    assert!(!tx.is_closed());
    drop(session);
    tokio::time::timeout(DEADLINE, tx.closed())
        .await
        .expect("the dispatcher sees the session end before the deadline");
}

#[tokio::test]
async fn unreachable_manager_is_unavailable_so_the_agent_retries() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    drop(listener);
    let ca = new_ca(CLUSTER);
    let tls = ClientTls::new(ca.cert_pem(), cert(&ca, "worker-1", Role::Worker)).expect("tls");
    let dispatcher = GrpcDispatcher::new(connect_lazy(&addr, &tls).expect("endpoint"));
    let res = dispatcher.open_session(description("worker-1")).await;
    assert!(matches!(res, Err(RpcError::Unavailable(_))), "{res:?}");
    let res = dispatcher
        .report(&NodeId("worker-1".into()), vec![report("t1")])
        .await;
    assert!(matches!(res, Err(RpcError::Unavailable(_))), "{res:?}");
}

#[tokio::test]
async fn plaintext_client_gets_no_grpc_answer() {
    let cluster = Cluster::start().await;
    let mut tcp = TcpStream::connect(&cluster.addr).await.expect("connect");
    tcp.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .expect("write");
    let mut buf = Vec::new();
    // The server drops the connection on the failed handshake; whatever it
    // sent before is a TLS alert, never an HTTP/2 frame.
    let _ = tokio::time::timeout(DEADLINE, tcp.read_to_end(&mut buf))
        .await
        .expect("closed before the deadline");
    assert!(buf.len() < 16, "only an alert, got {} bytes", buf.len());
    assert_eq!(cluster.dispatcher.calls(), 0);
}

#[tokio::test]
async fn hot_swapped_server_certificate_is_presented_on_the_next_connection() {
    let cluster = Cluster::start().await;
    let (key_pem, csr_pem) = baton_pki::generate_csr().expect("csr");
    let renewed = cluster
        .ca
        .issue(&csr_pem, "manager-1", Role::Manager, now(), DAY)
        .expect("issue");
    cluster.server_cert.swap(&renewed, &key_pem).expect("swap");
    let expected = cluster.server_cert.leaf().expect("leaf");

    let tls = ClientTls::bootstrap();
    let mut ca = CaClient::new(connect(&cluster.addr, &tls).await.expect("connect"));
    ca.root_ca().await.expect("root");
    let seen = tls.seen_server_chain().expect("server chain");
    assert_eq!(seen.first(), Some(&expected));

    // A server presenting a worker certificate is not a manager: refused.
    cluster
        .server_cert
        .swap(
            &cluster
                .ca
                .issue(&csr_pem, "worker-9", Role::Worker, now(), DAY)
                .expect("issue"),
            &key_pem,
        )
        .expect("swap");
    let tls = cluster.client_tls(cert(&cluster.ca, "worker-1", Role::Worker));
    assert!(connect(&cluster.addr, &tls).await.is_err());
}

#[tokio::test]
async fn revoked_node_is_refused_on_its_open_connection() {
    let cluster = Cluster::start().await;
    let worker = cluster
        .dispatcher_as(cert(&cluster.ca, "worker-1", Role::Worker))
        .await;
    let me = NodeId("worker-1".into());
    worker
        .report(&me, vec![report("t1")])
        .await
        .expect("report");

    cluster.revocations.revoke("worker-1");

    assert_refused_everywhere(&worker).await;
    assert_eq!(cluster.dispatcher.reports.lock().expect("lock").len(), 1);
}
