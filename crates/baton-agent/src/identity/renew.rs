//! Background certificate renewal.
//!
//! The loop sleeps until the renewal point of the current certificate
//! (`baton_pki::renew_in`, with a jitter drawn once per certificate so a
//! restart of the sleep does not move it), then renews with a fresh key pair.
//! A failed attempt is retried after [`retry_delay`]: 1 s, 2 s, 4 s ... capped
//! at 60 s, so a manager that is down for a minute costs a node about six
//! attempts, and one that comes back is noticed within a minute. The renewal
//! band leaves at least 20 % of the lifetime (18 days by default) for these
//! retries.
//!
//! The clock is read only at the edges: here, and once in
//! [`super::load_or_join`] to check the stored certificate. The timing itself is
//! `baton_pki`'s pure functions of `(now, not_before, not_after, jitter)`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use baton_pki::CertValidity;
use baton_rpc::client::CaClient;
use baton_rpc::transport;
use rustls::pki_types::UnixTime;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;
use zeroize::Zeroizing;

use super::verify::{check_certificate, public_key_of};
use super::{IdentityError, NodeIdentity};

/// First retry delay after a failed renewal.
pub const RENEW_RETRY_MIN: Duration = Duration::from_secs(1);
/// Longest retry delay after failed renewals.
pub const RENEW_RETRY_MAX: Duration = Duration::from_secs(60);
/// One renewal attempt (dial, handshake, signing) gives up after this long.
pub const RENEW_TIMEOUT: Duration = Duration::from_secs(30);
/// The longest single sleep: the renewal point is recomputed at least this
/// often, so a wall clock that jumps (suspend, NTP step) is noticed.
const MAX_SLEEP: Duration = Duration::from_secs(3600);

/// How long to wait after the `failures`-th failed attempt in a row:
/// [`RENEW_RETRY_MIN`] doubled per failure, capped at [`RENEW_RETRY_MAX`].
pub fn retry_delay(failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(16);
    RENEW_RETRY_MIN
        .saturating_mul(1u32 << doublings)
        .min(RENEW_RETRY_MAX)
}

/// Renews `identity`'s certificate through the manager at `manager_addr`
/// until `shutdown` is cancelled. Never returns an error and never panics:
/// failures are logged and retried (see the module doc).
///
/// Each renewal: a new key pair and CSR, `Renew` over a new mTLS connection
/// that presents the current certificate, checks of the new certificate (this
/// root, the same node id, role and cluster, a new public key, valid now),
/// the files written, then [`baton_rpc::tls::HotCert::swap`]. Connections
/// already open (the dispatcher session) are not touched.
pub async fn renew_loop(identity: NodeIdentity, manager_addr: String, shutdown: CancellationToken) {
    let span = tracing::info_span!("renew", node_id = %identity.node_id);
    run(identity, manager_addr, shutdown).instrument(span).await;
}

async fn run(identity: NodeIdentity, manager_addr: String, shutdown: CancellationToken) {
    // Drawn once per certificate: recomputing the wait must not move the point.
    let mut jitter: f64 = rand::random();
    let mut failures: u32 = 0;
    loop {
        let wait = if failures > 0 {
            retry_delay(failures)
        } else {
            match current_validity(&identity) {
                Ok(validity) => validity.renew_in(unix_now(), jitter),
                Err(e) => {
                    tracing::error!(error = %e, "cannot read the current certificate");
                    RENEW_RETRY_MAX
                }
            }
        };
        if !wait.is_zero() {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(wait.min(MAX_SLEEP)) => {}
            }
            if failures == 0 {
                // Look at the clock again: a capped sleep ends early, and the
                // wall clock may have jumped while sleeping.
                continue;
            }
        }
        let attempt = tokio::select! {
            () = shutdown.cancelled() => return,
            res = renew_once(&identity, &manager_addr) => res,
        };
        match attempt {
            Ok(validity) => {
                failures = 0;
                jitter = rand::random();
                tracing::info!(
                    not_after = validity.not_after,
                    renew_at = validity.renew_at(jitter),
                    "certificate renewed"
                );
            }
            Err(e) => {
                failures = failures.saturating_add(1);
                let expired = current_validity(&identity)
                    .map(|v| v.not_after <= unix_now())
                    .unwrap_or(false);
                if expired {
                    tracing::error!(
                        error = %e,
                        "certificate expired and renewal failed: this node must join again"
                    );
                } else {
                    tracing::warn!(
                        error = %e,
                        failures,
                        retry_in_secs = retry_delay(failures).as_secs(),
                        "certificate renewal failed"
                    );
                }
            }
        }
    }
}

fn current_validity(identity: &NodeIdentity) -> Result<CertValidity, IdentityError> {
    let leaf = identity
        .cert
        .leaf()
        .ok_or_else(|| IdentityError::InvalidFile {
            path: identity.files.cert_path(),
            reason: "no certificate loaded".to_owned(),
        })?;
    baton_pki::cert_validity(&leaf).map_err(|e| IdentityError::InvalidFile {
        path: identity.files.cert_path(),
        reason: e.to_string(),
    })
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
    let renewed = check_certificate(&identity.root_pem, &cert_pem, &key_pem, UnixTime::now())
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

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}
