//! Issuing certificates: the one place that decides which root signs and
//! what chain a node receives.
//!
//! The cluster record in the state says how certificates are signed:
//! - the managers hold the root key (`Cluster::root_ca_key`): they sign
//!   locally ([`baton_pki::ClusterCa`], which takes nothing from the CSR but
//!   its public key). During a root rotation they sign with the *new* root
//!   and append the cross-signed copy of it to the chain, so peers that
//!   still trust only the old root accept the certificate;
//! - an external CA (`Cluster::external_ca`): the managers relay the CSR with
//!   the identity the cluster chose ([`crate::external_ca`]) and check that
//!   what comes back says exactly that ([`baton_pki::check_issued`]).
//!
//! Parsed CA keys are cached by root digest, so signing does not re-read a
//! PEM key per certificate.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use baton_pki::{ClusterCa, Role};
use baton_state::{Cluster, Timestamp};

use crate::external_ca::{ExternalCa, SignRequest};

/// Why a certificate was not issued.
#[derive(Debug, thiserror::Error)]
pub enum SignError {
    /// The CSR is unusable (its own fault: bad PEM, bad self-signature).
    #[error("certificate signing request: {0}")]
    InvalidCsr(String),
    /// Signing failed on the cluster's side (key material, external CA).
    #[error("signing failed: {0}")]
    Unavailable(String),
}

/// A certificate the cluster issued.
#[derive(Clone, Debug)]
pub struct Issued {
    /// Leaf first, then any intermediate (the cross-signed root during a
    /// rotation), PEM.
    pub chain_pem: String,
    /// Digest of the root the leaf comes from.
    pub root_digest: String,
    /// Expiry of the leaf.
    pub not_after: Timestamp,
}

/// Signs certificates as the cluster record says (see the module doc).
#[derive(Default)]
pub struct Signer {
    local: Mutex<Option<(String, Arc<ClusterCa>)>>,
    external: Mutex<Option<(String, Arc<ExternalCa>)>>,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer").finish_non_exhaustive()
    }
}

fn unavailable(e: impl std::fmt::Display) -> SignError {
    SignError::Unavailable(e.to_string())
}

impl Signer {
    /// A signer with empty caches.
    pub fn new() -> Signer {
        Signer::default()
    }

    /// The CA that signs new certificates now, when the managers hold the
    /// key: the new root during a rotation, the current one otherwise.
    pub fn local_ca(&self, cluster: &Cluster) -> Result<Option<Arc<ClusterCa>>, SignError> {
        let (pem, key, digest) = match (&cluster.root_rotation, &cluster.root_ca_key) {
            (Some(r), _) => (&r.new_root_pem, &r.new_root_key, &r.new_root_digest),
            (None, Some(key)) => (&cluster.root_ca_pem, key, &cluster.root_digest),
            (None, None) => return Ok(None),
        };
        let mut cache = self.local.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((cached, ca)) = cache.as_ref()
            && cached == digest
        {
            return Ok(Some(ca.clone()));
        }
        let ca =
            Arc::new(ClusterCa::from_pem(&cluster.id, pem, key.expose()).map_err(unavailable)?);
        *cache = Some((digest.clone(), ca.clone()));
        Ok(Some(ca))
    }

    fn external_ca(&self, cluster: &Cluster) -> Result<Arc<ExternalCa>, SignError> {
        let config = cluster.external_ca.as_ref().ok_or_else(|| {
            SignError::Unavailable("the cluster has neither a root key nor an external CA".into())
        })?;
        let mut cache = self.external.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((url, ca)) = cache.as_ref()
            && *url == config.url
        {
            return Ok(ca.clone());
        }
        let ca = Arc::new(
            ExternalCa::new(&config.url, config.auth_key.expose(), &cluster.root_ca_pem)
                .map_err(unavailable)?,
        );
        *cache = Some((config.url.clone(), ca.clone()));
        Ok(ca)
    }

    /// Issues a certificate for `csr_pem`'s public key naming `name` with
    /// `role` (an admin user's client certificate for [`Role::Admin`]),
    /// valid from `now` (Unix seconds) for `validity` (an external CA decides
    /// the validity itself).
    pub async fn issue(
        &self,
        cluster: &Cluster,
        csr_pem: &str,
        name: &str,
        role: Role,
        now: i64,
        validity: Duration,
    ) -> Result<Issued, SignError> {
        let (chain_pem, root_digest) = match self.local_ca(cluster)? {
            Some(ca) => {
                let leaf = match role {
                    Role::Admin => ca.issue_client(csr_pem, name, now, validity),
                    Role::Manager | Role::Worker => ca.issue(csr_pem, name, role, now, validity),
                }
                .map_err(|e| match e {
                    baton_pki::PkiError::InvalidCsr(m) => SignError::InvalidCsr(m),
                    other => unavailable(other),
                })?;
                let chain = match &cluster.root_rotation {
                    Some(r) => format!("{}\n{}", leaf.trim_end(), r.cross_signed_pem),
                    None => leaf,
                };
                (chain, cluster.issuing_root_digest().to_owned())
            }
            None => {
                let ca = self.external_ca(cluster)?;
                let chain = ca
                    .sign(&SignRequest {
                        csr_pem,
                        common_name: name,
                        role,
                        cluster_id: &cluster.id,
                        expected_roots_pem: &cluster.root_ca_pem,
                    })
                    .await
                    .map_err(unavailable)?;
                (chain, cluster.root_digest.clone())
            }
        };
        let der = baton_pki::certificate_der(&chain_pem).map_err(unavailable)?;
        let identity = baton_pki::peer_identity(&der).map_err(unavailable)?;
        let not_after = Timestamp(
            u64::try_from(identity.not_after)
                .unwrap_or(0)
                .saturating_mul(1000),
        );
        Ok(Issued {
            chain_pem,
            root_digest,
            not_after,
        })
    }

    /// A fresh key pair and a certificate for it (for the manager's own
    /// identity and the admin client config, whose keys are made where the
    /// CA is): `(key PEM, issued)`.
    pub async fn issue_new_key(
        &self,
        cluster: &Cluster,
        name: &str,
        role: Role,
        now: i64,
        validity: Duration,
    ) -> Result<(String, Issued), SignError> {
        let (key_pem, csr_pem) = baton_pki::generate_csr().map_err(unavailable)?;
        let issued = self
            .issue(cluster, &csr_pem, name, role, now, validity)
            .await?;
        Ok((key_pem, issued))
    }
}
