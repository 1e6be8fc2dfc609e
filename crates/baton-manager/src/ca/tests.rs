//! The CA service against a real store.

use std::sync::Arc;
use std::time::Duration;

use baton_pki::{ClusterCa, JoinToken, PeerIdentity, Role, generate_csr, peer_identity};
use baton_rpc::server::{CaError, CaService};
use baton_state::{Cluster, Command, NodeId, NodeRole, Timestamp};
use baton_store::{LocalStore, LocalStoreConfig, Store};

use super::ManagerCa;

struct Fixture {
    ca: ManagerCa,
    store: Arc<dyn Store>,
    worker: JoinToken,
    manager: JoinToken,
    _dir: tempfile::TempDir,
}

async fn fixture() -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let store: Arc<dyn Store> = Arc::new(
        LocalStore::open(LocalStoreConfig::new(dir.path().join("s.redb"))).expect("store"),
    );
    let now = i64::try_from(crate::now().0 / 1000).expect("now");
    let root = ClusterCa::generate("c1", now, Duration::from_secs(86_400)).expect("ca");
    let worker = JoinToken::generate(&root.root_digest()).expect("token");
    let manager = JoinToken::generate(&root.root_digest()).expect("token");
    store
        .propose(Command::InitCluster {
            cluster: Cluster {
                id: "c1".to_owned(),
                root_ca_pem: root.cert_pem().to_owned(),
                worker_token_digest: baton_pki::hex(&worker.secret_digest()),
                manager_token_digest: baton_pki::hex(&manager.secret_digest()),
                cert_validity: Duration::from_secs(3600),
                created_at: Timestamp(1),
            },
        })
        .await
        .expect("init");
    Fixture {
        ca: ManagerCa::new(store.clone(), root),
        store,
        worker,
        manager,
        _dir: dir,
    }
}

fn identity(cert_pem: &str) -> PeerIdentity {
    peer_identity(&baton_pki::certificate_der(cert_pem).expect("der")).expect("identity")
}

#[tokio::test]
async fn tokens_grant_their_role_and_the_cluster_picks_the_id() {
    let f = fixture().await;
    let (_key, csr) = generate_csr().expect("csr");
    let (worker_id, cert) = f.ca.join(&csr, &f.worker.format()).await.expect("join");
    let id = identity(&cert);
    assert_eq!(
        (id.node_id.as_str(), id.role),
        (worker_id.0.as_str(), Role::Worker)
    );
    assert_eq!(worker_id.0.len(), 16);
    let (manager_id, cert) = f.ca.join(&csr, &f.manager.format()).await.expect("join");
    assert_eq!(identity(&cert).role, Role::Manager);
    assert_ne!(worker_id, manager_id);
    let state = f.store.snapshot().state.clone();
    assert_eq!(
        state.member(&worker_id).map(|m| m.role),
        Some(NodeRole::Worker)
    );
    assert_eq!(
        state.member(&manager_id).map(|m| m.role),
        Some(NodeRole::Manager)
    );
}

#[tokio::test]
async fn wrong_rotated_garbage_and_foreign_tokens_are_refused_alike() {
    let f = fixture().await;
    let (_key, csr) = generate_csr().expect("csr");
    let foreign_root =
        ClusterCa::generate("c2", 1_800_000_000, Duration::from_secs(86_400)).expect("ca");
    let foreign = JoinToken::generate(&foreign_root.root_digest()).expect("token");
    let unknown_secret = JoinToken::generate(f.worker.ca_digest()).expect("token");
    for token in [foreign.format(), unknown_secret.format()] {
        match f.ca.join(&csr, &token).await {
            Err(CaError::PermissionDenied(m)) => assert_eq!(
                m,
                "join token refused: it is not this cluster's current worker or manager token"
            ),
            other => panic!("expected a refusal, got {other:?}"),
        }
    }
    match f.ca.join(&csr, "BATON-1-garbage").await {
        Err(CaError::PermissionDenied(m)) => assert!(m.starts_with("join token refused: "), "{m}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
    // Rotation: the old worker token stops working.
    let rotated = JoinToken::generate(f.worker.ca_digest()).expect("token");
    f.store
        .propose(Command::RotateJoinToken {
            role: NodeRole::Worker,
            digest: baton_pki::hex(&rotated.secret_digest()),
        })
        .await
        .expect("rotate");
    assert!(matches!(
        f.ca.join(&csr, &f.worker.format()).await,
        Err(CaError::PermissionDenied(_))
    ));
    f.ca.join(&csr, &rotated.format())
        .await
        .expect("new token works");
    assert_eq!(f.store.snapshot().state.members().count(), 1);
}

#[tokio::test]
async fn renewal_keeps_identity_and_is_refused_after_removal() {
    let f = fixture().await;
    let (_key, csr) = generate_csr().expect("csr");
    let (id, cert) = f.ca.join(&csr, &f.worker.format()).await.expect("join");
    let who = identity(&cert);
    let (_key2, csr2) = generate_csr().expect("csr");
    let renewed = f.ca.renew(&who, &csr2).await.expect("renew");
    let again = identity(&renewed);
    assert_eq!(
        (again.node_id.as_str(), again.role),
        (id.0.as_str(), Role::Worker)
    );
    // A worker cannot renew itself into a manager.
    let pretend = PeerIdentity {
        role: Role::Manager,
        ..who.clone()
    };
    assert!(matches!(
        f.ca.renew(&pretend, &csr2).await,
        Err(CaError::PermissionDenied(_))
    ));
    f.store
        .propose(Command::RemoveNode {
            id: NodeId(id.0.clone()),
            now: Timestamp(5),
        })
        .await
        .expect("remove");
    assert!(matches!(
        f.ca.renew(&who, &csr2).await,
        Err(CaError::PermissionDenied(_))
    ));
}

#[tokio::test]
async fn a_bad_csr_is_an_invalid_request_and_admits_nobody() {
    let f = fixture().await;
    match f.ca.join("not a csr", &f.worker.format()).await {
        Err(CaError::InvalidRequest(m)) => {
            assert!(m.starts_with("certificate signing request"), "{m}")
        }
        other => panic!("expected invalid request, got {other:?}"),
    }
    assert_eq!(f.store.snapshot().state.members().count(), 0);
}
