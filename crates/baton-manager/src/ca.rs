//! The manager's side of the cluster CA: admits joining nodes and renews
//! certificates, as [`baton_rpc::server::CaService`].
//!
//! A join is authorised by a join token: its CA digest must name this
//! cluster's root, and its secret's SHA-256 must equal the worker or the
//! manager token digest in the state (compared in constant time); the role
//! comes from which one matched. The node id is chosen here, at random, and
//! the CSR contributes nothing but its public key ([`crate::signer`]). The
//! admission is committed to the store before the certificate is returned, so
//! a certificate never exists for a node the cluster does not know.

use std::sync::Arc;

use baton_pki::{JoinToken, PeerIdentity, Role};
use baton_rpc::server::{CaError, CaService};
use baton_state::{Cluster, Command, NodeId, NodeRole};
use baton_store::{Store, StoreError};

use crate::now;
use crate::signer::{Issued, SignError, Signer};

/// The CA service of a manager: signs locally with the root key in the
/// state, or relays to the external CA (see [`crate::signer`]).
pub struct ManagerCa {
    store: Arc<dyn Store>,
    signer: Arc<Signer>,
}

impl std::fmt::Debug for ManagerCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ManagerCa").finish_non_exhaustive()
    }
}

/// Decodes 64 hex digits into 32 bytes.
fn digest_bytes(hex: &str) -> Option<[u8; 32]> {
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

fn unix_secs_now() -> i64 {
    i64::try_from(now().0 / 1000).unwrap_or(i64::MAX)
}

fn signing_error(e: SignError) -> CaError {
    match e {
        SignError::InvalidCsr(m) => {
            CaError::InvalidRequest(format!("certificate signing request: {m}"))
        }
        other => CaError::Unavailable(other.to_string()),
    }
}

fn store_error(e: StoreError) -> CaError {
    CaError::Unavailable(e.to_string())
}

impl ManagerCa {
    /// A CA service over `store` signing through `signer`.
    pub fn new(store: Arc<dyn Store>, signer: Arc<Signer>) -> ManagerCa {
        ManagerCa { store, signer }
    }

    fn cluster(&self) -> Result<Cluster, CaError> {
        self.store
            .snapshot()
            .state
            .cluster()
            .cloned()
            .ok_or_else(|| CaError::Unavailable("the cluster is not initialised".to_owned()))
    }

    /// Which role a presented token grants, if any.
    fn role_for(&self, token: &JoinToken, cluster: &Cluster) -> Result<NodeRole, CaError> {
        // The same answer for every wrong token, so a caller learns nothing by trying.
        let refused = || {
            CaError::PermissionDenied(
                "join token refused: it is not this cluster's current worker or manager token"
                    .to_owned(),
            )
        };
        // Either root during a rotation: a token printed before it still
        // names the old one.
        if !cluster.trusts_root(token.ca_digest()) {
            return Err(refused());
        }
        let worker = digest_bytes(&cluster.worker_token_digest).ok_or_else(refused)?;
        let manager = digest_bytes(&cluster.manager_token_digest).ok_or_else(refused)?;
        // Both comparisons always run: timing does not tell which one matched.
        let is_worker = token.matches_digest(&worker);
        let is_manager = token.matches_digest(&manager);
        match (is_worker, is_manager) {
            (true, _) => Ok(NodeRole::Worker),
            (false, true) => Ok(NodeRole::Manager),
            (false, false) => Err(refused()),
        }
    }

    async fn issue(
        &self,
        cluster: &Cluster,
        csr_pem: &str,
        id: &NodeId,
        role: NodeRole,
    ) -> Result<Issued, CaError> {
        self.signer
            .issue(
                cluster,
                csr_pem,
                &id.0,
                pki_role(role),
                unix_secs_now(),
                cluster.cert_validity,
            )
            .await
            .map_err(signing_error)
    }
}

/// The certificate role of a node role.
pub fn pki_role(role: NodeRole) -> Role {
    match role {
        NodeRole::Manager => Role::Manager,
        NodeRole::Worker => Role::Worker,
    }
}

#[async_trait::async_trait]
impl CaService for ManagerCa {
    async fn root_ca(&self) -> Result<String, CaError> {
        Ok(self.cluster()?.trust_pem())
    }

    async fn join(&self, csr_pem: &str, token: &str) -> Result<(NodeId, String), CaError> {
        let token = JoinToken::parse(token)
            .map_err(|e| CaError::PermissionDenied(format!("join token refused: {e}")))?;
        let cluster = self.cluster()?;
        let role = self.role_for(&token, &cluster)?;
        let id = NodeId(baton_pki::new_node_id());
        let issued = self.issue(&cluster, csr_pem, &id, role).await?;
        self.store
            .propose(Command::AdmitNode {
                id: id.clone(),
                role,
                cert_not_after: issued.not_after,
                cert_root: issued.root_digest,
                now: now(),
            })
            .await
            .map_err(store_error)?;
        tracing::info!(node_id = %id, role = role.as_str(), "node joined");
        Ok((id, issued.chain_pem))
    }

    async fn renew(&self, identity: &PeerIdentity, csr_pem: &str) -> Result<String, CaError> {
        let id = NodeId(identity.node_id.clone());
        let snapshot = self.store.snapshot();
        let member = snapshot
            .state
            .member(&id)
            .filter(|m| pki_role(m.role) == identity.role && !snapshot.state.is_revoked(&id))
            .ok_or_else(|| {
                tracing::warn!(node_id = %id, role = %identity.role, "renewal refused");
                CaError::PermissionDenied(
                    "renewal refused: not a member of this cluster".to_owned(),
                )
            })?;
        let role = member.role;
        let cluster = self.cluster()?;
        let issued = self.issue(&cluster, csr_pem, &id, role).await?;
        self.store
            .propose(Command::RenewNodeCert {
                id: id.clone(),
                cert_not_after: issued.not_after,
                cert_root: issued.root_digest,
            })
            .await
            .map_err(store_error)?;
        tracing::info!(node_id = %id, "certificate renewed");
        Ok(issued.chain_pem)
    }
}

#[cfg(test)]
mod tests;
