//! The manager renews its own node certificate, as agents renew theirs.
//!
//! The loop sleeps until the renewal point of the certificate it serves
//! (`baton_pki::renew_in`: a random point between 50 % and 80 % of its
//! lifetime, the jitter drawn once per certificate so that recomputing the
//! wait does not move it), then issues itself a new certificate for a fresh
//! key pair from its own CA, with the cluster's current certificate lifetime
//! (`baton cluster update --cert-expiry`). Each renewal:
//!
//! 1. writes `node/key.sealed` (0600, sealed with the data key) and
//!    `node/cert.pem`, each atomically (a
//!    crash between the two is repaired at the next start, see
//!    [`crate::identity::load_or_create`]);
//! 2. swaps the pair into both listeners ([`ServingCert::swap`]): new
//!    connections get it, open ones (agent sessions) are not touched;
//! 3. proposes `RenewNodeCert`, so `baton node ls` shows the new expiry.
//!
//! The schedule (renewal point, retries from 1 s to 60 s) is
//! [`baton_rpc::renewal::run_renewals`], the same as agents'. The loop never
//! panics and never gives up while the manager runs.

use std::path::PathBuf;
use std::sync::Arc;

use baton_pki::{CertValidity, Role};
use baton_rpc::renewal::{run_renewals, unix_now};
use baton_state::{Command, NodeId};
use baton_store::Store;
use baton_store::seal::SealKey;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::identity::{self, IdentityError};
use crate::serving_cert::ServingCert;
use crate::signer::Signer;

/// Why one renewal attempt failed.
#[derive(Debug, thiserror::Error)]
pub enum RenewError {
    /// The certificate being served cannot be read.
    #[error("current certificate: {0}")]
    Current(String),
    /// The cluster record is missing from the state.
    #[error("the cluster is not initialised")]
    NoCluster,
    /// Issuing or writing the new certificate failed.
    #[error(transparent)]
    Identity(#[from] IdentityError),
    /// The new pair could not be loaded into the listeners.
    #[error("tls: {0}")]
    Tls(#[from] baton_rpc::tls::TlsError),
    /// The store refused or failed to record the new expiry.
    #[error(transparent)]
    Store(#[from] baton_store::StoreError),
}

/// What the renewal loop works on.
pub struct SelfRenewal {
    /// The store: the cluster's certificate lifetime is read from it, the
    /// new expiry written to it.
    pub store: Arc<dyn Store>,
    /// Issues the certificates.
    pub signer: Arc<Signer>,
    /// Asks for a renewal now (a root rotation moved away from this
    /// manager's root).
    pub now: Arc<tokio::sync::Notify>,
    /// This manager's node id.
    pub node_id: NodeId,
    /// The data dir (`node/cert.pem`, `node/key.sealed`).
    pub data_dir: PathBuf,
    /// The data key the node key is sealed with.
    pub data_key: SealKey,
    /// What both listeners serve.
    pub cert: ServingCert,
}

impl std::fmt::Debug for SelfRenewal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SelfRenewal")
            .field("node_id", &self.node_id)
            .field("data_dir", &self.data_dir)
            .finish_non_exhaustive()
    }
}

/// Renews the manager's certificate until `shutdown` is cancelled (see the
/// module doc). Never returns an error and never panics.
pub async fn renew_loop(renewal: SelfRenewal, shutdown: CancellationToken) {
    let span = tracing::info_span!("renew", node_id = %renewal.node_id);
    let cert = renewal.cert.clone();
    let now = renewal.now.clone();
    run_renewals(move || cert.leaf(), || renew_once(&renewal), now, shutdown)
        .instrument(span)
        .await;
}

/// One renewal; on success the new certificate is on disk and served.
async fn renew_once(renewal: &SelfRenewal) -> Result<CertValidity, RenewError> {
    let cluster = renewal
        .store
        .snapshot()
        .state
        .cluster()
        .cloned()
        .ok_or(RenewError::NoCluster)?;
    let (key_pem, issued) = renewal
        .signer
        .issue_new_key(
            &cluster,
            &renewal.node_id.0,
            Role::Manager,
            unix_now(),
            cluster.cert_validity,
        )
        .await
        .map_err(IdentityError::from)?;
    let cert_pem = issued.chain_pem;
    let leaf = baton_pki::certificate_der(&cert_pem).map_err(IdentityError::from)?;
    let new_validity = baton_pki::cert_validity(&leaf).map_err(IdentityError::from)?;
    // Check that the pair loads before anything is written or served.
    ServingCert::new(&cert_pem, &key_pem)?;
    identity::write_node_cert(&renewal.data_dir, &renewal.data_key, &key_pem, &cert_pem)?;
    renewal.cert.swap(&cert_pem, &key_pem)?;
    renewal
        .store
        .propose(Command::RenewNodeCert {
            id: renewal.node_id.clone(),
            cert_not_after: issued.not_after,
            cert_root: issued.root_digest,
        })
        .await?;
    Ok(new_validity)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use baton_store::raft::RaftStore;

    use super::*;
    use crate::identity::load_or_create;
    use crate::keystore;

    #[tokio::test]
    async fn a_renewal_writes_serves_and_records_a_fresh_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        let data_key = keystore::data_key(dir.path()).expect("data key");
        let store: Arc<dyn Store> = Arc::new(
            RaftStore::open_solo_at(&dir.path().join("state.redb"), data_key.clone())
                .await
                .expect("store"),
        );
        let signer = Arc::new(Signer::new());
        let identity = load_or_create(
            dir.path(),
            store.as_ref(),
            &signer,
            Duration::from_secs(3600),
            None,
        )
        .await
        .expect("identity");
        store
            .propose(Command::SetCertValidity {
                validity: Duration::from_secs(7200),
            })
            .await
            .expect("set validity");
        let cert = ServingCert::new(&identity.cert_pem, &identity.key_pem).expect("cert");
        let old_leaf = cert.leaf().expect("leaf");
        let renewal = SelfRenewal {
            store: store.clone(),
            signer,
            now: Arc::default(),
            node_id: identity.node_id.clone(),
            data_dir: dir.path().to_owned(),
            data_key: data_key.clone(),
            cert: cert.clone(),
        };
        let validity = renew_once(&renewal).await.expect("renew");
        let lifetime = validity.not_after - unix_now();
        assert!(
            (7198..=7200).contains(&lifetime),
            "the cluster's current lifetime is used: {lifetime}"
        );
        let new_leaf = cert.leaf().expect("leaf");
        assert_ne!(new_leaf, old_leaf);
        assert_eq!(
            cert.cluster().leaf().expect("cluster leaf"),
            new_leaf,
            "both listeners serve the new certificate"
        );
        let on_disk = std::fs::read_to_string(dir.path().join("node/cert.pem")).expect("cert");
        assert_eq!(
            baton_pki::certificate_der(&on_disk).expect("der"),
            new_leaf.as_ref()
        );
        let key = identity::read_node_key(dir.path(), &data_key)
            .expect("key")
            .expect("a key");
        assert_ne!(key.as_str(), identity.key_pem, "a fresh key");
        ServingCert::new(&on_disk, &key).expect("the new key matches the new certificate");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("node/key.sealed"))
            .expect("key")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(
            store
                .snapshot()
                .state
                .member(&identity.node_id)
                .map(|m| m.cert_not_after),
            Some(identity::cert_not_after(&on_disk).expect("expiry"))
        );
    }

    #[tokio::test]
    async fn a_key_that_does_not_match_the_certificate_is_replaced_at_start() {
        let dir = tempfile::tempdir().expect("tempdir");
        let data_key = keystore::data_key(dir.path()).expect("data key");
        let first = {
            let store = RaftStore::open_solo_at(&dir.path().join("state.redb"), data_key.clone())
                .await
                .expect("store");
            let first = load_or_create(
                dir.path(),
                &store,
                &Signer::new(),
                Duration::from_secs(3600),
                None,
            )
            .await
            .expect("identity");
            store.shutdown().await;
            first
        };
        // A renewal that crashed after writing its key, before its certificate.
        let (other_key, _) = baton_pki::generate_csr().expect("key");
        identity::write_node_cert(dir.path(), &data_key, &other_key, &first.cert_pem)
            .expect("write");
        let store = RaftStore::open_solo_at(&dir.path().join("state.redb"), data_key)
            .await
            .expect("store");
        let again = load_or_create(
            dir.path(),
            &store,
            &Signer::new(),
            Duration::from_secs(3600),
            None,
        )
        .await
        .expect("reload");
        assert_eq!(again.node_id, first.node_id);
        assert_ne!(again.cert_pem, first.cert_pem);
        ServingCert::new(&again.cert_pem, &again.key_pem).expect("a matching pair");
        assert_eq!(
            store
                .snapshot()
                .state
                .member(&again.node_id)
                .map(|m| m.cert_not_after),
            Some(identity::cert_not_after(&again.cert_pem).expect("expiry"))
        );
    }
}
