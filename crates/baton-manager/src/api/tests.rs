//! Tests of the API's authentication (over real TLS, with certificates from
//! the manager's own CA), of the join-token endpoints and of node removal.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Method, Request};
use baton_api::{ApiClient, ApiError, ClientConfig};
use baton_pki::{ClusterCa, JoinToken, PeerIdentity, Role};
use baton_state::{Command, Node, NodeId, NodeRole, Timestamp};
use baton_store::Store;
use baton_store::raft::RaftStore;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use super::*;
use crate::identity::{self, DEFAULT_CERT_VALIDITY, ManagerIdentity};

mod placement;

const HOUR: Duration = Duration::from_secs(3600);

struct Fixture {
    _dir: tempfile::TempDir,
    store: Arc<dyn Store>,
    identity: ManagerIdentity,
    /// The cluster's root CA (its key is in the state).
    ca: ClusterCa,
    app: Arc<AppState>,
    shutdown: CancellationToken,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

async fn fixture() -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    // The manager's Raft id is its node id, as in a real manager.
    let node_id = identity::load_or_create_node_id(dir.path()).expect("node id");
    let raft = Arc::new(
        RaftStore::open_solo(baton_store::raft::RaftStoreConfig::new(
            dir.path().join("state.redb"),
            baton_store::raft::raft_id(&node_id.0).expect("raft id"),
            "127.0.0.1:0",
            baton_store::seal::SealKey::generate(),
        ))
        .await
        .expect("store"),
    );
    let store: Arc<dyn Store> = raft.clone();
    let identity = identity::load_or_create(
        dir.path(),
        store.as_ref(),
        &crate::signer::Signer::new(),
        DEFAULT_CERT_VALIDITY,
        None,
    )
    .await
    .expect("identity");
    let cluster = store.snapshot().state.cluster().cloned().expect("cluster");
    let ca = ClusterCa::from_pem(
        &cluster.id,
        &cluster.root_ca_pem,
        cluster.root_ca_key.as_ref().expect("key").expose(),
    )
    .expect("ca");
    let shutdown = CancellationToken::new();
    let dispatcher = DispatcherService::new(store.clone(), shutdown.clone(), HOUR);
    let app = Arc::new(AppState {
        store: store.clone(),
        raft,
        dispatcher,
        cluster_id: identity.cluster_id.clone(),
        identity_dir: dir.path().to_owned(),
        data_key: crate::keystore::data_key(dir.path()).expect("data key"),
    });
    Fixture {
        _dir: dir,
        store,
        identity,
        ca,
        app,
        shutdown,
    }
}

fn unix_now() -> i64 {
    super::unix_now()
}

/// A client config for a certificate `ca` issues to `name` with `role`.
fn client_config(ca: &ClusterCa, api: &str, name: &str, role: Role) -> ClientConfig {
    let (key, cert) =
        baton_pki::generate_key_and_cert(ca, name, role, unix_now(), HOUR).expect("cert");
    ClientConfig {
        apis: vec![api.to_owned()],
        ca_cert: ca.cert_pem().to_owned(),
        cert,
        key,
    }
}

/// Serves the fixture's API over TLS on loopback; returns its URL.
async fn serve_tls(fx: &Fixture, cert_pem: &str, key_pem: &str) -> String {
    let cert = crate::serving_cert::ServingCert::new(cert_pem, key_pem).expect("cert");
    let tls = api_tls_config(
        &baton_rpc::tls::HotTrust::new(fx.ca.cert_pem()).expect("trust"),
        cert,
    )
    .expect("tls");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(serve(
        listener,
        tls,
        router(fx.app.clone()),
        fx.shutdown.clone(),
    ));
    format!("https://{addr}")
}

fn status_of<T: std::fmt::Debug>(res: Result<T, ApiError>) -> (u16, String) {
    match res {
        Err(ApiError::Status { status, body }) => (status, body.code),
        other => panic!("expected an error status, got {other:?}"),
    }
}

#[tokio::test]
async fn only_an_admin_certificate_of_this_cluster_gets_through() {
    let fx = fixture().await;
    let url = serve_tls(&fx, &fx.identity.cert_pem, &fx.identity.key_pem).await;
    let ca = &fx.ca;

    let admin = ApiClient::new(&client_config(ca, &url, "admin", Role::Admin)).expect("client");
    assert_eq!(admin.health().await.expect("admin health").status, "ok");

    let anonymous =
        ApiClient::anonymous(&client_config(ca, &url, "admin", Role::Admin)).expect("client");
    for path in ["/v1/health", "/v1/openapi.json", "/v1/jobs", "/v1/nope"] {
        let (status, code) = status_of(anonymous.get_value(path).await);
        assert_eq!((status, code.as_str()), (401, "unauthorized"), "{path}");
    }

    let worker = ApiClient::new(&client_config(ca, &url, "w1", Role::Worker)).expect("client");
    for path in ["/v1/health", "/v1/nodes", "/v1/nope"] {
        let (status, code) = status_of(worker.get_value(path).await);
        assert_eq!((status, code.as_str()), (403, "forbidden"), "{path}");
    }
    let manager = ApiClient::new(&client_config(ca, &url, "m2", Role::Manager)).expect("client");
    assert_eq!(status_of(manager.list_jobs().await).0, 403);

    // A revoked id is refused even with an admin certificate.
    fx.store
        .propose(Command::AdmitNode {
            id: NodeId("gone".into()),
            role: NodeRole::Worker,
            cert_not_after: Timestamp(u64::MAX),
            cert_root: String::new(),
            now: crate::now(),
        })
        .await
        .expect("admit");
    fx.store
        .propose(Command::RemoveNode {
            id: NodeId("gone".into()),
            now: crate::now(),
        })
        .await
        .expect("remove");
    let revoked = ApiClient::new(&client_config(ca, &url, "gone", Role::Admin)).expect("client");
    assert_eq!(status_of(revoked.health().await), (403, "forbidden".into()));

    // A certificate from another CA does not pass the handshake.
    let other = ClusterCa::generate("other", unix_now() - 60, 10 * HOUR).expect("ca");
    let mut foreign = client_config(&other, &url, "admin", Role::Admin);
    foreign.ca_cert = ca.cert_pem().to_owned();
    let foreign = ApiClient::new(&foreign).expect("client");
    assert!(matches!(
        foreign.health().await,
        Err(ApiError::Unreachable { .. })
    ));
}

#[tokio::test]
async fn the_client_refuses_a_server_that_is_not_a_manager() {
    let fx = fixture().await;
    let ca = &fx.ca;
    let (key, cert) =
        baton_pki::generate_key_and_cert(ca, "w1", Role::Worker, unix_now(), HOUR).expect("cert");
    let url = serve_tls(&fx, &cert, &key).await;
    let admin = ApiClient::new(&client_config(ca, &url, "admin", Role::Admin)).expect("client");
    match admin.health().await {
        Err(e @ ApiError::Unreachable { .. }) => {
            assert!(e.to_string().contains("not manager"), "{e}")
        }
        other => panic!("expected a refused handshake, got {other:?}"),
    }
}

fn peer(name: &str, role: Role, cluster: &str) -> Caller {
    Caller::Peer(PeerIdentity {
        node_id: name.to_owned(),
        role,
        cluster_id: cluster.to_owned(),
        not_after: unix_now() + 3600,
    })
}

fn admin(fx: &Fixture) -> Caller {
    peer("admin", Role::Admin, &fx.identity.cluster_id)
}

/// One request through the router as `caller`: status and JSON body.
async fn call(
    fx: &Fixture,
    method: Method,
    path: &str,
    caller: Caller,
) -> (u16, serde_json::Value) {
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .body(Body::empty())
        .expect("request");
    req.extensions_mut().insert(caller);
    let resp = router(fx.app.clone())
        .oneshot(req)
        .await
        .expect("infallible");
    let status = resp.status().as_u16();
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .expect("body");
    let body = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
    (status, body)
}

#[tokio::test]
async fn refusals_depend_on_cluster_role_revocation_and_expiry() {
    let fx = fixture().await;
    let cluster = fx.identity.cluster_id.clone();
    let cases = [
        (Caller::Anonymous, 401),
        (Caller::Unidentified, 403),
        (peer("admin", Role::Admin, "another-cluster"), 403),
        (peer("w1", Role::Worker, &cluster), 403),
        (
            Caller::Peer(PeerIdentity {
                node_id: "admin".into(),
                role: Role::Admin,
                cluster_id: cluster.clone(),
                not_after: unix_now() - 1,
            }),
            403,
        ),
        (admin(&fx), 200),
    ];
    for (caller, want) in cases {
        let (status, _) = call(&fx, Method::GET, "/v1/health", caller.clone()).await;
        assert_eq!(status, want, "{caller:?}");
    }
    // A router served without `serve` has no caller: anonymous.
    let req = Request::builder()
        .uri("/v1/health")
        .body(Body::empty())
        .expect("request");
    let resp = router(fx.app.clone()).oneshot(req).await.expect("call");
    assert_eq!(resp.status().as_u16(), 401);
    let (_, body) = call(&fx, Method::GET, "/v1/jobs", Caller::Anonymous).await;
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.contains("client certificate required")),
        "{body}"
    );
}

fn digest_in_state(store: &dyn Store, role: NodeRole) -> String {
    let snapshot = store.snapshot();
    let cluster = snapshot.state.cluster().expect("cluster");
    match role {
        NodeRole::Worker => cluster.worker_token_digest.clone(),
        NodeRole::Manager => cluster.manager_token_digest.clone(),
    }
}

fn token_digest(token: &str) -> String {
    baton_pki::hex(&JoinToken::parse(token).expect("token").secret_digest())
}

fn file_tokens(dir: &Path) -> identity::StoredTokens {
    let data_key = crate::keystore::data_key(dir).expect("data key");
    identity::stored_tokens_with_key(dir, &data_key)
        .expect("read")
        .expect("tokens")
}

#[tokio::test]
async fn rotating_a_join_token_replaces_it_in_the_state_and_the_file() {
    let fx = fixture().await;
    let created = fx.identity.created.clone().expect("tokens");
    let (status, body) = call(
        &fx,
        Method::GET,
        "/v1/cluster/join-tokens/worker",
        admin(&fx),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(body["role"], "worker");
    assert_eq!(body["token"], created.worker.as_str());

    let (status, body) = call(
        &fx,
        Method::POST,
        "/v1/cluster/join-tokens/worker/rotate",
        admin(&fx),
    )
    .await;
    assert_eq!(status, 200);
    let new = body["token"].as_str().expect("token").to_owned();
    assert_ne!(new, created.worker);
    let state_digest = digest_in_state(fx.store.as_ref(), NodeRole::Worker);
    assert_eq!(state_digest, token_digest(&new));
    assert_ne!(
        state_digest,
        token_digest(&created.worker),
        "old token still matches"
    );
    let root = baton_pki::certificate_der(fx.ca.cert_pem()).expect("der");
    JoinToken::parse(&new)
        .expect("parse")
        .verify_ca(&root)
        .expect("the new token pins the cluster root");
    let stored = file_tokens(&fx.app.identity_dir);
    assert_eq!(stored.worker, new);
    assert_eq!(
        stored.manager, created.manager,
        "the other role is untouched"
    );
    assert_eq!(
        digest_in_state(fx.store.as_ref(), NodeRole::Manager),
        token_digest(&created.manager)
    );
    let (_, body) = call(
        &fx,
        Method::GET,
        "/v1/cluster/join-tokens/worker",
        admin(&fx),
    )
    .await;
    assert_eq!(body["token"], new.as_str());

    let (status, _) = call(
        &fx,
        Method::GET,
        "/v1/cluster/join-tokens/admin",
        admin(&fx),
    )
    .await;
    assert_eq!(status, 400);
    let worker = peer("w1", Role::Worker, &fx.identity.cluster_id);
    let (status, _) = call(&fx, Method::GET, "/v1/cluster/join-tokens/worker", worker).await;
    assert_eq!(status, 403);
}

#[tokio::test]
async fn a_manager_without_the_token_file_says_to_rotate() {
    let fx = fixture().await;
    std::fs::remove_file(fx.app.identity_dir.join("join-tokens.sealed")).expect("rm");
    let (status, body) = call(
        &fx,
        Method::GET,
        "/v1/cluster/join-tokens/manager",
        admin(&fx),
    )
    .await;
    assert_eq!(status, 404);
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.contains("rotate it to get a new one")),
        "{body}"
    );
    let (status, body) = call(
        &fx,
        Method::POST,
        "/v1/cluster/join-tokens/manager/rotate",
        admin(&fx),
    )
    .await;
    assert_eq!(status, 200);
    let stored = file_tokens(&fx.app.identity_dir);
    assert_eq!(stored.manager, body["token"].as_str().expect("token"));
    let (status, _) = call(
        &fx,
        Method::GET,
        "/v1/cluster/join-tokens/worker",
        admin(&fx),
    )
    .await;
    assert_eq!(status, 404, "the worker token is still not held");
}

/// Admits and registers a worker with the raw driver, 1 CPU, 1 GiB, 10 GiB
/// of disk and `labels` from its agent.
async fn join_worker(fx: &Fixture, id: &str, labels: &[(&str, &str)]) {
    let now = crate::now();
    fx.store
        .propose(Command::AdmitNode {
            id: NodeId(id.into()),
            role: NodeRole::Worker,
            cert_not_after: Timestamp(now.0 + 3_600_000),
            cert_root: String::new(),
            now,
        })
        .await
        .expect("admit");
    let mut node = Node::new(
        NodeId(id.into()),
        "host",
        baton_spec::Resources {
            cpu_millis: 1000,
            memory_bytes: 1 << 30,
            disk_bytes: 10 << 30,
        },
        BTreeSet::from([baton_spec::DriverKind::Raw]),
    );
    node.labels = labels
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    fx.store
        .propose(Command::RegisterNode { node, now })
        .await
        .expect("register");
}

#[tokio::test]
async fn removing_nodes_needs_force_when_ready_and_never_the_last_manager() {
    let fx = fixture().await;
    join_worker(&fx, "w1", &[]).await;
    join_worker(&fx, "w2", &[]).await;

    let (_, nodes) = call(&fx, Method::GET, "/v1/nodes", admin(&fx)).await;
    let w1 = nodes
        .as_array()
        .and_then(|n| n.iter().find(|n| n["id"] == "w1"))
        .expect("w1 listed");
    assert_eq!(w1["role"], "worker");
    assert!(w1["cert_expires_at"].as_u64().is_some(), "{w1}");

    let (status, body) = call(&fx, Method::POST, "/v1/nodes/w1/remove", admin(&fx)).await;
    assert_eq!(status, 409, "{body}");
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.contains("ready"))
    );

    fx.store
        .propose(Command::NodeDown {
            id: NodeId("w1".into()),
            now: crate::now(),
        })
        .await
        .expect("down");
    let (status, body) = call(&fx, Method::POST, "/v1/nodes/w1/remove", admin(&fx)).await;
    assert_eq!((status, body["id"].as_str()), (200, Some("w1")));
    let (status, _) = call(
        &fx,
        Method::POST,
        "/v1/nodes/w2/remove?force=true",
        admin(&fx),
    )
    .await;
    assert_eq!(status, 200);
    let snapshot = fx.store.snapshot();
    for id in ["w1", "w2"] {
        let id = NodeId(id.into());
        assert!(snapshot.state.is_revoked(&id));
        assert!(snapshot.state.node(&id).is_none());
    }

    let me = fx.identity.node_id.0.clone();
    let (status, body) = call(
        &fx,
        Method::POST,
        &format!("/v1/nodes/{me}/remove?force=true"),
        admin(&fx),
    )
    .await;
    assert_eq!(status, 409);
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.contains("would leave no voting manager")),
        "{body}"
    );
    assert!(
        !fx.store.snapshot().state.is_revoked(&fx.identity.node_id),
        "a refused removal changes nothing"
    );
    let (status, _) = call(&fx, Method::POST, "/v1/nodes/nope/remove", admin(&fx)).await;
    assert_eq!(status, 404);
    let worker = peer("w3", Role::Worker, &fx.identity.cluster_id);
    let (status, _) = call(&fx, Method::POST, "/v1/nodes/w3/remove?force=true", worker).await;
    assert_eq!(status, 403);
}

#[tokio::test]
async fn openapi_lists_the_cluster_and_removal_endpoints() {
    let fx = fixture().await;
    let (status, doc) = call(&fx, Method::GET, "/v1/openapi.json", admin(&fx)).await;
    assert_eq!(status, 200);
    for path in [
        "/v1/cluster/join-tokens/{role}",
        "/v1/cluster/join-tokens/{role}/rotate",
        "/v1/cluster",
        "/v1/cluster/settings",
        "/v1/nodes/{id}/remove",
        "/v1/health",
    ] {
        assert!(doc["paths"][path].is_object(), "openapi lacks {path}");
    }
    assert_eq!(
        doc["components"]["securitySchemes"]["mtls"]["type"],
        "mutualTLS"
    );
}

async fn call_json(
    fx: &Fixture,
    method: Method,
    path: &str,
    caller: Caller,
    body: serde_json::Value,
) -> (u16, serde_json::Value) {
    call_body(
        fx,
        method,
        path,
        "application/json",
        &body.to_string(),
        caller,
    )
    .await
}

/// A request with a raw body and content type through the router.
async fn call_body(
    fx: &Fixture,
    method: Method,
    path: &str,
    content_type: &str,
    body: &str,
    caller: Caller,
) -> (u16, serde_json::Value) {
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header("content-type", content_type)
        .body(Body::from(body.to_owned()))
        .expect("request");
    req.extensions_mut().insert(caller);
    let resp = router(fx.app.clone())
        .oneshot(req)
        .await
        .expect("infallible");
    let status = resp.status().as_u16();
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .expect("body");
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null),
    )
}

#[tokio::test]
async fn cluster_info_shows_identity_and_cert_expiry_which_admins_can_change() {
    let fx = fixture().await;
    let (status, info) = call(&fx, Method::GET, "/v1/cluster", admin(&fx)).await;
    assert_eq!(status, 200, "{info}");
    assert_eq!(info["id"], fx.identity.cluster_id.as_str());
    assert_eq!(info["root_ca_digest"], fx.ca.root_digest().as_str());
    assert_eq!(info["cert_expiry_secs"], DEFAULT_CERT_VALIDITY.as_secs());
    assert!(info["created_at"].as_u64().is_some_and(|t| t > 0), "{info}");
    // The lone manager leads its Raft cluster of one.
    let managers = info["managers"].as_array().expect("managers");
    assert_eq!(managers.len(), 1, "{info}");
    assert_eq!(managers[0]["raft_role"], "leader");
    assert_eq!(managers[0]["reachable"], true);
    assert!(info["raft_term"].as_u64().is_some_and(|t| t >= 1), "{info}");
    assert!(
        info["raft_applied"].as_u64().is_some_and(|i| i >= 1),
        "{info}"
    );

    let (status, info) = call_json(
        &fx,
        Method::POST,
        "/v1/cluster/settings",
        admin(&fx),
        serde_json::json!({ "cert_expiry_secs": 3600 }),
    )
    .await;
    assert_eq!(
        (status, &info["cluster"]["cert_expiry_secs"]),
        (200, &3600.into())
    );
    assert!(info.get("unlock_key").is_none(), "{info}");
    assert_eq!(
        fx.store.snapshot().state.cluster().map(|c| c.cert_validity),
        Some(HOUR)
    );

    // Autolock: the key is shown once, then only by the unlock-key route;
    // a rotation replaces it; off, the route says so.
    let (status, info) = call_json(
        &fx,
        Method::POST,
        "/v1/cluster/settings",
        admin(&fx),
        serde_json::json!({ "autolock": true }),
    )
    .await;
    assert_eq!((status, &info["cluster"]["autolock"]), (200, &true.into()));
    let key = info["unlock_key"].as_str().expect("key").to_owned();
    assert!(key.starts_with("BATON-UNLOCK-1-"), "{key}");
    let (status, again) = call_json(
        &fx,
        Method::POST,
        "/v1/cluster/settings",
        admin(&fx),
        serde_json::json!({ "autolock": true }),
    )
    .await;
    assert_eq!(status, 200);
    assert!(again.get("unlock_key").is_none(), "shown once: {again}");
    let (status, shown) = call(&fx, Method::GET, "/v1/cluster/unlock-key", admin(&fx)).await;
    assert_eq!(
        (status, shown["unlock_key"].as_str()),
        (200, Some(key.as_str()))
    );
    let (status, rotated) = call(
        &fx,
        Method::POST,
        "/v1/cluster/unlock-key/rotate",
        admin(&fx),
    )
    .await;
    assert_eq!(status, 200);
    assert_ne!(rotated["unlock_key"].as_str(), Some(key.as_str()));
    call_json(
        &fx,
        Method::POST,
        "/v1/cluster/settings",
        admin(&fx),
        serde_json::json!({ "autolock": false }),
    )
    .await;
    let (status, off) = call(&fx, Method::GET, "/v1/cluster/unlock-key", admin(&fx)).await;
    assert_eq!(status, 409, "{off}");

    for (secs, why) in [(0u64, "zero"), (11 * 365 * 86_400, "beyond the root")] {
        let (status, body) = call_json(
            &fx,
            Method::POST,
            "/v1/cluster/settings",
            admin(&fx),
            serde_json::json!({ "cert_expiry_secs": secs }),
        )
        .await;
        assert_eq!(status, 400, "{why}: {body}");
        assert!(
            body["message"]
                .as_str()
                .is_some_and(|m| m.contains("cert expiry") && m.contains("at least 1s")),
            "{why}: {body}"
        );
    }
    assert_eq!(
        fx.store.snapshot().state.cluster().map(|c| c.cert_validity),
        Some(HOUR),
        "refused values change nothing"
    );

    let worker = peer("w1", Role::Worker, &fx.identity.cluster_id);
    let (status, _) = call_json(
        &fx,
        Method::POST,
        "/v1/cluster/settings",
        worker.clone(),
        serde_json::json!({ "cert_expiry_secs": 60 }),
    )
    .await;
    assert_eq!(status, 403);
    let (status, _) = call(&fx, Method::GET, "/v1/cluster", worker).await;
    assert_eq!(status, 403);
}

/// Records the server certificate it is shown (and accepts it): which
/// certificate does a new connection get?
#[derive(Debug)]
struct SeenLeaf(std::sync::Mutex<Option<Vec<u8>>>);

impl rustls::client::danger::ServerCertVerifier for SeenLeaf {
    fn verify_server_cert(
        &self,
        end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        *self.0.lock().expect("lock") = Some(end_entity.to_vec());
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &rustls::pki_types::CertificateDer<'_>,
        _dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(
        &self,
        _message: &[u8],
        _cert: &rustls::pki_types::CertificateDer<'_>,
        _dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        rustls::crypto::aws_lc_rs::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// The leaf a fresh TLS connection to `addr` is shown.
async fn served_leaf(addr: std::net::SocketAddr) -> Vec<u8> {
    let seen = Arc::new(SeenLeaf(std::sync::Mutex::new(None)));
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .expect("tls13")
    .dangerous()
    .with_custom_certificate_verifier(seen.clone())
    .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let name = rustls::pki_types::ServerName::try_from("baton-manager").expect("name");
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .expect("handshake");
    let leaf = seen.0.lock().expect("lock").clone();
    leaf.expect("a server certificate")
}

#[tokio::test]
async fn a_swapped_certificate_is_served_to_new_connections_and_old_ones_carry_on() {
    let fx = fixture().await;
    let cert = crate::serving_cert::ServingCert::new(&fx.identity.cert_pem, &fx.identity.key_pem)
        .expect("cert");
    let tls = api_tls_config(
        &baton_rpc::tls::HotTrust::new(fx.ca.cert_pem()).expect("trust"),
        cert.clone(),
    )
    .expect("tls");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(serve(
        listener,
        tls,
        router(fx.app.clone()),
        fx.shutdown.clone(),
    ));
    let first = served_leaf(addr).await;
    assert_eq!(
        first,
        baton_pki::certificate_der(&fx.identity.cert_pem).expect("der")
    );
    // An admin client with an open (kept-alive) connection.
    let admin_config = client_config(&fx.ca, &format!("https://{addr}"), "admin", Role::Admin);
    let client = ApiClient::new(&admin_config).expect("client");
    client.health().await.expect("health before the swap");

    let (key, renewed) = baton_pki::generate_key_and_cert(
        &fx.ca,
        &fx.identity.node_id.0,
        Role::Manager,
        unix_now(),
        HOUR,
    )
    .expect("issue");
    cert.swap(&renewed, &key).expect("swap");
    assert_eq!(
        served_leaf(addr).await,
        baton_pki::certificate_der(&renewed).expect("der"),
        "a new connection gets the renewed certificate"
    );
    client.health().await.expect("health after the swap");
    // A key that does not match is refused and changes nothing.
    let (other_key, _) = baton_pki::generate_csr().expect("key");
    assert!(cert.swap(&fx.identity.cert_pem, &other_key).is_err());
    assert_eq!(
        served_leaf(addr).await,
        baton_pki::certificate_der(&renewed).expect("der")
    );
}
