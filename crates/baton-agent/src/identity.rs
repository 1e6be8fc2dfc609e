//! The node's cluster identity: joining a cluster with a join token, loading
//! the identity on later starts, and renewing the certificate in the
//! background.
//!
//! [`load_or_join`] runs once at start-up. On a data directory that has joined
//! it loads `identity/` and checks it (no token, no network). Otherwise it
//! joins: it fetches the root CA over one-way TLS and checks it against the
//! token's digest (a mismatch refuses to join), generates the key pair here,
//! sends only the CSR and the token over TLS that trusts that root, checks the
//! certificate it gets back (this key, this root, role worker or manager), and
//! writes the identity ([`IDENTITY_DIR`]; the order is in `files.rs`). The
//! node id is the one the cluster assigned; it is also written to
//! `data_dir/node-id`, which the agent reports under.
//!
//! [`renew_loop`] renews the certificate at a random point in the 50–80 % band
//! of its lifetime (`baton_pki::renew_in`; the clock is read only there), with a
//! fresh key pair each time, and swaps it into the shared
//! [`baton_rpc::tls::HotCert`]: new connections present it, open ones (the
//! dispatcher session) carry on undisturbed.
//!
//! Security invariants: the private key is created here and goes only into the
//! identity directory (mode 0600) and the `HotCert`; no type of this module
//! can print it or the join token's secret. Nothing is written before the
//! manager's root has matched the token and the issued certificate has passed
//! its checks.

mod error;
mod files;
mod renew;
mod verify;

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use baton_pki::{JoinToken, Role};
use baton_rpc::TrustUpdate;
use baton_rpc::client::join_cluster;
use baton_rpc::tls::{ClientTls, HotCert, HotTrust};
use baton_state::NodeId;
use rustls::pki_types::UnixTime;
use zeroize::Zeroizing;

pub use error::IdentityError;
pub use files::IDENTITY_DIR;
pub use renew::{RENEW_RETRY_MAX, RENEW_RETRY_MIN, RENEW_TIMEOUT, renew_loop, retry_delay};

use files::{IdentityFiles, Stored};
use verify::{CertDefect, check_certificate, pem_key_matches};

/// A node's identity in its cluster, loaded or just joined.
///
/// Clones share one [`HotCert`]: a renewal through any clone is seen by every
/// TLS configuration built from any of them.
#[derive(Clone)]
pub struct NodeIdentity {
    /// The id the cluster assigned (the certificate's CN).
    pub node_id: NodeId,
    /// The role the join token granted (the certificate's OU).
    pub role: Role,
    /// The cluster's id (the certificate's O).
    pub cluster_id: String,
    /// The cluster's roots: the only thing this node trusts. The cluster
    /// changes them through the session during a root CA rotation
    /// ([`NodeIdentity::apply_trust`]).
    pub trust: HotTrust,
    /// The node's current certificate and private key, swapped on renewal.
    pub cert: HotCert,
    /// Wakes the renewal loop for a renewal now.
    pub renew_now: Arc<tokio::sync::Notify>,
    files: IdentityFiles,
}

impl fmt::Debug for NodeIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NodeIdentity")
            .field("node_id", &self.node_id)
            .field("role", &self.role)
            .field("cluster_id", &self.cluster_id)
            .field("dir", &self.files.dir())
            .field("key", &"<redacted>")
            .finish_non_exhaustive()
    }
}

impl NodeIdentity {
    /// The TLS client configuration of this node: trusts only managers of its
    /// cluster and presents its current certificate on every new connection.
    pub fn client_tls(&self) -> Result<ClientTls, IdentityError> {
        Ok(ClientTls::with_trust(&self.trust, self.cert.clone())?)
    }

    /// Takes the roots the cluster pushed: trusted from the next handshake
    /// on and kept on disk for the next start; and renews the certificate
    /// at once if the cluster says its root is being retired. The update
    /// came over the mutually authenticated session, from a manager this
    /// node already trusts.
    pub fn apply_trust(&self, update: &TrustUpdate) -> Result<(), IdentityError> {
        if self.trust.pem() != update.roots_pem {
            self.trust.set(&update.roots_pem)?;
            self.files.write_root(&update.roots_pem)?;
            tracing::info!(
                roots = baton_pki::pem_certificates(&update.roots_pem).len(),
                "cluster roots updated"
            );
        }
        if update.renew_now {
            self.renew_now.notify_one();
        }
        Ok(())
    }

    /// The identity directory, `data_dir/identity`.
    pub fn dir(&self) -> &Path {
        self.files.dir()
    }
}

/// Loads this node's identity from `data_dir`, or joins the cluster at
/// `manager_addr` (`host:port` of its cluster port) with `token` if it has not
/// joined yet. A token given to a node that has joined is ignored.
///
/// File I/O is synchronous: it is a handful of small files at start-up.
pub async fn load_or_join(
    data_dir: &Path,
    manager_addr: &str,
    token: Option<&str>,
) -> Result<NodeIdentity, IdentityError> {
    let files = IdentityFiles::new(data_dir);
    if let Some(stored) = files.load()? {
        if token.is_some() {
            tracing::info!(dir = %files.dir().display(), "already joined; the join token is not used");
        }
        return load(files, stored, UnixTime::now());
    }
    let Some(token) = token else {
        return Err(IdentityError::NotJoined {
            dir: files.dir().to_owned(),
        });
    };
    let token = JoinToken::parse(token).map_err(IdentityError::InvalidToken)?;
    join(files, manager_addr, &token).await
}

/// Checks a stored identity, finishing or discarding an interrupted renewal.
fn load(
    files: IdentityFiles,
    stored: Stored,
    now: UnixTime,
) -> Result<NodeIdentity, IdentityError> {
    let mut key_pem = stored.key_pem;
    if let Some(renew_key) = stored.renew_key_pem {
        if !pem_key_matches(&stored.cert_pem, &key_pem)
            && pem_key_matches(&stored.cert_pem, &renew_key)
        {
            tracing::info!("finishing a renewal interrupted after its certificate was written");
            files.finish_renewal(&renew_key)?;
            key_pem = renew_key;
        } else {
            files.remove_renew_key()?;
        }
    }
    let identity =
        check_certificate(&stored.root_pem, &stored.cert_pem, &key_pem, now).map_err(|defect| {
            match defect {
                CertDefect::Expired => IdentityError::Expired {
                    path: files.cert_path(),
                    dir: files.dir().to_owned(),
                },
                CertDefect::Other(reason) => IdentityError::InvalidFile {
                    path: files.cert_path(),
                    reason,
                },
            }
        })?;
    if identity.node_id != stored.node_id {
        return Err(IdentityError::InvalidFile {
            path: files.node_id_path(),
            reason: format!(
                "it says {:?} but the certificate names node {}",
                stored.node_id, identity.node_id
            ),
        });
    }
    let cert =
        HotCert::new(&stored.cert_pem, &key_pem).map_err(|e| IdentityError::InvalidFile {
            path: files.key_path(),
            reason: e.to_string(),
        })?;
    files.sync_agent_node_id(&identity.node_id)?;
    tracing::info!(node_id = %identity.node_id, role = %identity.role, "identity loaded");
    Ok(NodeIdentity {
        node_id: NodeId(identity.node_id),
        role: identity.role,
        cluster_id: identity.cluster_id,
        trust: HotTrust::new(&stored.root_pem)?,
        cert,
        renew_now: Arc::default(),
        files,
    })
}

/// The join itself; nothing is written unless every check passes.
async fn join(
    files: IdentityFiles,
    addr: &str,
    token: &JoinToken,
) -> Result<NodeIdentity, IdentityError> {
    // 1. The key pair, made here; only the CSR leaves.
    let (key_pem, csr_pem) = baton_pki::generate_csr().map_err(IdentityError::KeyGeneration)?;
    let key_pem = Zeroizing::new(key_pem);
    // 2. The root, checked against the token before anything secret is
    // sent, then the join over TLS that trusts only managers of that root.
    let (root_pem, joined) = join_cluster(addr, token, &csr_pem)
        .await
        .map_err(|e| IdentityError::from_ca("join", addr, e))?;
    // 3. The certificate: this key, this root, a node role, the id announced.
    // The root the answer repeats (`joined.ca_pem`) is not used: the only root
    // this node trusts is the one the token pinned.
    let identity = check_certificate(&root_pem, &joined.cert_pem, &key_pem, UnixTime::now())
        .map_err(|defect| IdentityError::InvalidIssued {
            reason: defect.describe(),
        })?;
    if identity.node_id != joined.node_id.0 {
        return Err(IdentityError::InvalidIssued {
            reason: format!(
                "the manager announced node id {} but the certificate names {}",
                joined.node_id, identity.node_id
            ),
        });
    }
    let cert = HotCert::new(&joined.cert_pem, &key_pem)?;
    // 4. The files, key first and node id last.
    files.write_joined(&key_pem, &joined.cert_pem, &root_pem, &identity.node_id)?;
    tracing::info!(node_id = %identity.node_id, role = %identity.role, "joined the cluster");
    Ok(NodeIdentity {
        node_id: NodeId(identity.node_id),
        role: identity.role,
        cluster_id: identity.cluster_id,
        trust: HotTrust::new(&root_pem)?,
        cert,
        renew_now: Arc::default(),
        files,
    })
}

#[cfg(test)]
mod tests;
