//! Who is calling, from the verified peer certificate, and the role checks
//! every handler makes before it does anything.
//!
//! The TLS handshake has already verified the chain to the cluster root (see
//! [`crate::tls::ServerTls`]); this module reads the identity the certificate
//! states (CN node id, OU role, O cluster), refuses a certificate of another
//! cluster or past its expiry, and checks the role the call needs.
//!
//! Handlers pass the method name (`Dispatcher/Session`) for the logs: tonic's
//! server side does not record it in the request.
//!
//! Every refusal is `Unauthenticated` (no usable certificate) or
//! `PermissionDenied` (the certificate may not make this call), is logged at
//! warn with the peer identity and the method, and depends only on the caller
//! and the method, never on whether the thing asked for exists.

use std::collections::BTreeSet;
use std::fmt;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;

use baton_pki::{PeerIdentity, Role};
use tonic::{Request, Status};
use tracing::{error, warn};

use crate::transport::PeerConnection;

/// The identity of the caller, if it presented a certificate.
///
/// `Ok(None)` is an anonymous caller (allowed only by the CA's `GetRootCa` and
/// `Join`). A certificate without a cluster identity, of another cluster, or
/// expired is refused.
pub fn peer<T>(req: &Request<T>, method: &str) -> Result<Option<PeerIdentity>, Status> {
    let Some(conn) = req.extensions().get::<PeerConnection>() else {
        // Only possible when a service is served without `transport::serve`.
        error!(method, "request without tls connection info");
        return Err(Status::unauthenticated("no tls connection"));
    };
    let Some(leaf) = conn.peer_certs.as_ref().and_then(|certs| certs.first()) else {
        return Ok(None);
    };
    let identity = match baton_pki::peer_identity(leaf) {
        Ok(identity) => identity,
        Err(e) => {
            return Err(refuse(
                req,
                method,
                None,
                Status::unauthenticated("client certificate carries no cluster identity"),
                &e.to_string(),
            ));
        }
    };
    if identity.cluster_id != *conn.cluster_id {
        return Err(refuse(
            req,
            method,
            Some(&identity),
            Status::permission_denied("client certificate is for another cluster"),
            "cluster id mismatch",
        ));
    }
    if conn.revocations.is_revoked(&identity.node_id) {
        return Err(refuse(
            req,
            method,
            Some(&identity),
            Status::permission_denied("certificate revoked"),
            "node revoked",
        ));
    }
    // The handshake checked validity once; a long-lived connection can outlive
    // the certificate, so every call checks again.
    if identity.not_after <= now_unix() {
        return Err(refuse(
            req,
            method,
            Some(&identity),
            Status::unauthenticated("client certificate expired"),
            "certificate expired",
        ));
    }
    Ok(Some(identity))
}

/// The caller must be a node (worker or manager) of this cluster: the
/// dispatcher's calls. Admin and anonymous callers are refused.
pub fn require_node<T>(req: &Request<T>, method: &str) -> Result<PeerIdentity, Status> {
    require_role(req, method, &[Role::Worker, Role::Manager])
}

/// The caller must be a manager of this cluster.
pub fn require_manager<T>(req: &Request<T>, method: &str) -> Result<PeerIdentity, Status> {
    require_role(req, method, &[Role::Manager])
}

/// The caller must hold a valid certificate of this cluster, any role.
pub fn require_identity<T>(req: &Request<T>, method: &str) -> Result<PeerIdentity, Status> {
    require_role(req, method, &[Role::Worker, Role::Manager, Role::Admin])
}

/// The caller must hold a valid certificate of this cluster with one of
/// `roles`.
pub fn require_role<T>(
    req: &Request<T>,
    method: &str,
    roles: &[Role],
) -> Result<PeerIdentity, Status> {
    let Some(identity) = peer(req, method)? else {
        return Err(refuse(
            req,
            method,
            None,
            Status::unauthenticated(format!(
                "{method} needs a client certificate of this cluster"
            )),
            "anonymous caller",
        ));
    };
    if !roles.contains(&identity.role) {
        return Err(refuse(
            req,
            method,
            Some(&identity),
            Status::permission_denied(format!(
                "a {} certificate may not call {method}",
                identity.role
            )),
            "role not allowed",
        ));
    }
    Ok(identity)
}

/// Logs a refusal with who was refused, and returns the status to answer.
fn refuse<T>(
    req: &Request<T>,
    method: &str,
    identity: Option<&PeerIdentity>,
    status: Status,
    reason: &str,
) -> Status {
    let remote_addr = req
        .extensions()
        .get::<PeerConnection>()
        .and_then(|c| c.remote_addr)
        .map(|a| a.to_string())
        .unwrap_or_default();
    warn!(
        method,
        node_id = identity.map(|i| i.node_id.as_str()).unwrap_or("-"),
        role = identity.map(|i| i.role.as_str()).unwrap_or("anonymous"),
        cluster_id = identity.map(|i| i.cluster_id.as_str()).unwrap_or("-"),
        %remote_addr,
        reason,
        "rpc refused"
    );
    status
}

fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Node ids whose certificates are refused from now on (`baton node rm`),
/// checked on every call, so a removed node's open connections stop working
/// at once too. Clones share one set; updates are atomic swaps, reads never
/// block.
#[derive(Clone, Default)]
pub struct Revocations {
    revoked: Arc<ArcSwap<BTreeSet<String>>>,
}

impl fmt::Debug for Revocations {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.revoked.load().iter()).finish()
    }
}

impl Revocations {
    /// Replaces the whole set (for example from the stored node list).
    pub fn set(&self, node_ids: BTreeSet<String>) {
        self.revoked.store(Arc::new(node_ids));
    }

    /// Adds one node id.
    pub fn revoke(&self, node_id: &str) {
        self.revoked.rcu(|current| {
            let mut next = BTreeSet::clone(current);
            next.insert(node_id.to_owned());
            next
        });
    }

    /// Whether `node_id` is revoked.
    pub fn is_revoked(&self, node_id: &str) -> bool {
        self.revoked.load().contains(node_id)
    }
}
