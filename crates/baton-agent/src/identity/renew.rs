//! Background certificate renewal of a node: the schedule is
//! [`baton_rpc::renewal::run_renewals`] (shared with managers); this module
//! makes each renewal: a fresh key pair and CSR, `Renew` over a new mTLS
//! connection, checks of what comes back, files, then the hot swap.
//!
//! Any manager can renew. Each attempt goes to the current manager of the
//! agent's [`ManagerList`]; when it cannot be reached the next one becomes
//! current and is tried at once, each at most once per attempt. A whole round
//! that fails counts as one failed attempt, retried on the shared back-off.

use std::collections::BTreeSet;
use std::time::Duration;

use baton_pki::CertValidity;
use baton_rpc::client::CaClient;
use baton_rpc::renewal::run_renewals;
use baton_rpc::transport;
use rustls::pki_types::UnixTime;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;
use zeroize::Zeroizing;

use super::verify::{check_certificate, public_key_of};
use super::{IdentityError, NodeIdentity};
use crate::managers::ManagerList;

pub use baton_rpc::renewal::{RENEW_RETRY_MAX, RENEW_RETRY_MIN, retry_delay};

/// One renewal attempt (dial, handshake, signing) gives up after this long.
pub const RENEW_TIMEOUT: Duration = Duration::from_secs(30);

/// Renews `identity`'s certificate through the managers of `managers` until
/// `shutdown` is cancelled. Never returns an error and never panics:
/// failures are logged and retried (see the module doc).
///
/// Each renewal: a new key pair and CSR, `Renew` over a new mTLS connection
/// that presents the current certificate, checks of the new certificate (this
/// root, the same node id, role and cluster, a new public key, valid now),
/// the files written, then [`baton_rpc::tls::HotCert::swap`]. Connections
/// already open (the dispatcher session) are not touched.
pub async fn renew_loop(
    identity: NodeIdentity,
    managers: ManagerList,
    shutdown: CancellationToken,
) {
    let span = tracing::info_span!("renew", node_id = %identity.node_id);
    let cert = identity.cert.clone();
    let now = identity.renew_now.clone();
    run_renewals(
        move || cert.leaf(),
        || renew_anywhere(&identity, &managers),
        now,
        shutdown,
    )
    .instrument(span)
    .await;
}

/// One renewal through the first manager of `managers` that can be reached,
/// starting at the current one; the error of the last one tried if none can.
async fn renew_anywhere(
    identity: &NodeIdentity,
    managers: &ManagerList,
) -> Result<CertValidity, IdentityError> {
    let mut tried = BTreeSet::new();
    loop {
        let addr = managers.current();
        tried.insert(addr.clone());
        let err = match renew_once(identity, &addr).await {
            Err(err) if err.is_retryable() => err,
            // Renewed, or refused: another manager would say the same.
            done => return done,
        };
        managers.skip(&addr);
        if tried.contains(&managers.current()) {
            return Err(err);
        }
        tracing::debug!(manager = %addr, error = %err, "renewal: manager unavailable; trying the next");
    }
}

/// One renewal; on success the new certificate is on disk and in use.
async fn renew_once(identity: &NodeIdentity, addr: &str) -> Result<CertValidity, IdentityError> {
    let (key_pem, csr_pem) = baton_pki::generate_csr().map_err(IdentityError::KeyGeneration)?;
    let key_pem = Zeroizing::new(key_pem);
    // A new connection for each attempt: it presents the current certificate,
    // whatever older connections were opened with.
    let tls = identity.client_tls()?;
    let call = async {
        let channel =
            transport::connect(addr, &tls)
                .await
                .map_err(|e| IdentityError::Unavailable {
                    addr: addr.to_owned(),
                    reason: e.to_string(),
                })?;
        CaClient::new(channel)
            .renew(&csr_pem)
            .await
            .map_err(|e| IdentityError::from_ca("renewal", addr, e))
    };
    let cert_pem = tokio::time::timeout(RENEW_TIMEOUT, call)
        .await
        .map_err(|_| IdentityError::Unavailable {
            addr: addr.to_owned(),
            reason: format!("no answer within {} s", RENEW_TIMEOUT.as_secs()),
        })??;
    let invalid = |reason: String| IdentityError::InvalidIssued { reason };
    let renewed = check_certificate(&identity.trust.pem(), &cert_pem, &key_pem, UnixTime::now())
        .map_err(|defect| invalid(defect.describe()))?;
    if renewed.node_id != identity.node_id.0
        || renewed.role != identity.role
        || renewed.cluster_id != identity.cluster_id
    {
        return Err(invalid(format!(
            "it names {} {} of cluster {}, this node is {} {} of cluster {}",
            renewed.role,
            renewed.node_id,
            renewed.cluster_id,
            identity.role,
            identity.node_id,
            identity.cluster_id
        )));
    }
    let new_leaf = baton_pki::certificate_der(&cert_pem).map_err(|e| invalid(e.to_string()))?;
    if let Some(old_leaf) = identity.cert.leaf() {
        let old_key = public_key_of(&old_leaf).map_err(|d| invalid(d.describe()))?;
        let new_key =
            public_key_of(&new_leaf.as_slice().into()).map_err(|d| invalid(d.describe()))?;
        if old_key == new_key {
            return Err(invalid("it has the old public key".to_owned()));
        }
    }
    let validity = baton_pki::cert_validity(&new_leaf).map_err(|e| invalid(e.to_string()))?;
    identity.files.write_renewed(&key_pem, &cert_pem)?;
    identity.cert.swap(&cert_pem, &key_pem)?;
    Ok(validity)
}
