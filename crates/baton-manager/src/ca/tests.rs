//! The CA service against a real store.

use std::sync::Arc;
use std::time::Duration;

use baton_pki::{ClusterCa, JoinToken, PeerIdentity, Role, generate_csr, peer_identity};
use baton_rpc::server::{CaError, CaService};
use baton_state::{Command, NodeId, NodeRole, Secret, Timestamp};
use baton_store::Store;
use baton_store::raft::RaftStore;
use baton_store::seal::SealKey;

use super::ManagerCa;
use crate::signer::Signer;

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
        RaftStore::open_solo_at(&dir.path().join("s.redb"), SealKey::generate())
            .await
            .expect("store"),
    );
    let now = i64::try_from(crate::now().0 / 1000).expect("now");
    let root = ClusterCa::generate("c1", now, Duration::from_secs(86_400)).expect("ca");
    let worker = JoinToken::generate(&root.root_digest()).expect("token");
    let manager = JoinToken::generate(&root.root_digest()).expect("token");
    let tokens = crate::identity::StoredTokens {
        worker: worker.format(),
        manager: manager.format(),
    };
    let cluster = crate::identity::new_cluster(
        "c1",
        root.cert_pem(),
        Some(Secret::new(root.key_pem())),
        None,
        &tokens,
        Duration::from_secs(3600),
    )
    .expect("cluster");
    store
        .propose(Command::InitCluster { cluster })
        .await
        .expect("init");
    Fixture {
        ca: ManagerCa::new(store.clone(), Arc::new(Signer::new())),
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

#[tokio::test]
async fn during_a_root_rotation_nodes_get_the_new_root_bridged_by_the_cross_signed_one() {
    let f = fixture().await;
    let cluster = f
        .store
        .snapshot()
        .state
        .cluster()
        .cloned()
        .expect("cluster");
    let key = cluster
        .root_ca_key
        .as_ref()
        .expect("key")
        .expose()
        .to_owned();
    let old = ClusterCa::from_pem("c1", &cluster.root_ca_pem, &key).expect("old");
    let now = i64::try_from(crate::now().0 / 1000).expect("now");
    let new = ClusterCa::generate("c1", now, Duration::from_secs(86_400)).expect("new");
    f.store
        .propose(Command::StartRootRotation {
            rotation: baton_state::RootRotation {
                new_root_pem: new.cert_pem().to_owned(),
                new_root_digest: new.root_digest(),
                new_root_key: Secret::new(new.key_pem()),
                cross_signed_pem: old.cross_sign(&new, now).expect("cross"),
                started_at: Timestamp(5),
            },
        })
        .await
        .expect("start");

    // The root CA call hands out both roots.
    let bundle = f.ca.root_ca().await.expect("roots");
    assert_eq!(
        baton_pki::pem_certificates(&bundle),
        vec![old.cert_pem().to_owned(), new.cert_pem().to_owned()]
    );
    // A token printed before the rotation (naming the old root) still joins,
    // and the certificate comes from the new root with the bridge attached.
    let (_key, csr) = generate_csr().expect("csr");
    let (id, chain) = f.ca.join(&csr, &f.worker.format()).await.expect("join");
    let certs = baton_pki::pem_certificates(&chain);
    assert_eq!(certs.len(), 2, "leaf and cross-signed root: {chain}");
    let member = f
        .store
        .snapshot()
        .state
        .member(&id)
        .cloned()
        .expect("member");
    assert_eq!(member.cert_root, new.root_digest());
    for roots in [old.cert_pem(), new.cert_pem()] {
        baton_pki::check_issued(
            &chain,
            &csr,
            &baton_pki::ExpectedIdentity {
                name: &id.0,
                role: Role::Worker,
                cluster_id: "c1",
            },
            roots,
            now,
        )
        .unwrap_or_else(|e| panic!("chains to either root: {e}"));
    }
    // The pending list names the members still on the old root.
    let pending = f.store.snapshot().state.rotation_pending();
    assert!(!pending.contains(&id), "{pending:?}");
}
