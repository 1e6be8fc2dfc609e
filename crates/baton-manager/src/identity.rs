//! The manager's identity: the cluster record (root CA included), its own
//! node certificate and the join tokens it created.
//!
//! On an empty data dir [`load_or_create`] creates a cluster; on an existing
//! one it loads what is there. Every step is idempotent, in an order that a
//! crash at any point can resume from: token file, `InitCluster` (which
//! carries the new root CA and its key: one atomic write, replicated with
//! the rest of the state, so there is no CA file to lose or to disagree
//! with the state), node key and certificate, `AdmitNode`. A stored node
//! certificate that cannot be served (its key does not match, as after a
//! crash in the middle of a renewal; it expired while the manager was
//! stopped; its root is no longer trusted) is replaced by a new one at start,
//! recorded with `RenewNodeCert`; while the manager runs, [`crate::renew`]
//! renews it.
//!
//! With an external CA ([`ExternalCaInit`]) the cluster is created around the
//! operator's root certificate, no root key exists on the manager, and its
//! own certificate comes from the external CA like every other.
//!
//! Layout (secrets 0600, sealed with the data key of [`crate::keystore`]):
//! - `keys/kek`, `keys/dek` (directory 0700): the key-encryption key (absent
//!   while the cluster is autolocked) and the data key it wraps
//! - `state.redb`: the state, root CA key included; its log entries and
//!   snapshots sealed
//! - `node/id`, `node/cert.pem`: this manager's node id and certificate
//!   (public, in the clear)
//! - `node/key.sealed`: its private key (PEM), sealed
//! - `node/root.pem`: the root a joining manager pinned (public)
//! - `join-tokens.sealed`: the current tokens (TOML), sealed, for
//!   `baton cluster join-token`; the state holds only their digests

use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use baton_pki::{ClusterCa, JoinToken, Role};
use baton_state::{Cluster, Command, ExternalCa, NodeId, NodeRole, Secret, Timestamp};
use baton_store::Store;
use baton_store::seal::SealKey;
use zeroize::Zeroizing;

use crate::keystore::{self, KeystoreError};
use crate::signer::{SignError, Signer};
use serde::{Deserialize, Serialize};

use crate::now;

/// How long the root CA is valid: long, because rotating it is an operation.
pub const ROOT_VALIDITY: Duration = Duration::from_secs(10 * 365 * 86_400);

/// Default lifetime of node certificates (renewed at 50-80% of it).
pub const DEFAULT_CERT_VALIDITY: Duration = Duration::from_secs(90 * 86_400);

/// This manager's private key, sealed, in `node/`.
const NODE_KEY_FILE: &str = "key.sealed";
/// The join tokens, sealed, in the data dir.
const TOKENS_FILE: &str = "join-tokens.sealed";

/// Why the identity could not be loaded or created.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// A file could not be read or written.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// File.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// Key or certificate material is unusable.
    #[error("{0}")]
    Pki(#[from] baton_pki::PkiError),
    /// A join token could not be made or read.
    #[error("join token: {0}")]
    Token(#[from] baton_pki::TokenError),
    /// The store refused or failed.
    #[error("{0}")]
    Store(#[from] baton_store::StoreError),
    /// The data dir and the state disagree.
    #[error("inconsistent data dir: {0}")]
    Inconsistent(String),
    /// A certificate could not be issued.
    #[error(transparent)]
    Sign(#[from] SignError),
    /// The external CA settings are unusable.
    #[error("external CA: {0}")]
    ExternalCa(String),
    /// Joining an existing cluster failed.
    #[error("joining the cluster at {addr}: {reason}")]
    Join {
        /// The manager asked.
        addr: String,
        /// What went wrong.
        reason: String,
    },
    /// The data key is unavailable, or a sealed file does not open.
    #[error(transparent)]
    Keys(#[from] KeystoreError),
}

/// How to create a cluster whose certificates an external CA signs.
#[derive(Clone)]
pub struct ExternalCaInit {
    /// The signer's authenticated signing endpoint (https).
    pub url: String,
    /// Its authentication key (hex).
    pub auth_key: Secret,
    /// The external CA's root certificate, PEM: the cluster's root.
    pub root_pem: String,
}

impl fmt::Debug for ExternalCaInit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ExternalCaInit")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

/// Join tokens as stored for display (never logged).
#[derive(Clone, Serialize, Deserialize)]
pub struct StoredTokens {
    /// Worker join token.
    pub worker: String,
    /// Manager join token.
    pub manager: String,
}

impl fmt::Debug for StoredTokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("StoredTokens(<redacted>)")
    }
}

/// What a manager knows about itself.
pub struct ManagerIdentity {
    /// Cluster id.
    pub cluster_id: String,
    /// This manager's node id.
    pub node_id: NodeId,
    /// Its certificate, PEM.
    pub cert_pem: String,
    /// Its private key, PEM.
    pub key_pem: String,
    /// The tokens, when this start created the cluster (to print once).
    pub created: Option<StoredTokens>,
}

impl fmt::Debug for ManagerIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ManagerIdentity")
            .field("cluster_id", &self.cluster_id)
            .field("node_id", &self.node_id)
            .finish_non_exhaustive()
    }
}

/// A new cluster record `id` around `root` (whose key the managers hold,
/// unless `external` names the signer that does): what `InitCluster` stores.
pub fn new_cluster(
    id: &str,
    root_pem: &str,
    root_key: Option<Secret>,
    external: Option<ExternalCa>,
    tokens: &StoredTokens,
    cert_validity: Duration,
) -> Result<Cluster, IdentityError> {
    let der = baton_pki::certificate_der(root_pem)?;
    let digest = |t: &str| -> Result<String, IdentityError> {
        Ok(baton_pki::hex(&JoinToken::parse(t)?.secret_digest()))
    };
    Ok(Cluster {
        id: id.to_owned(),
        root_ca_pem: root_pem.to_owned(),
        root_digest: baton_pki::root_digest(&der),
        root_ca_key: root_key,
        external_ca: external,
        root_rotation: None,
        worker_token_digest: digest(&tokens.worker)?,
        manager_token_digest: digest(&tokens.manager)?,
        cert_validity,
        created_at: now(),
        unlock_key: None,
    })
}

fn read(path: &Path) -> Result<Option<String>, IdentityError> {
    match fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(IdentityError::Io {
            action: "cannot read",
            path: path.to_owned(),
            source,
        }),
    }
}

fn write(path: &Path, bytes: &[u8], mode: u32) -> Result<(), IdentityError> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).map_err(|source| IdentityError::Io {
            action: "cannot create",
            path: dir.to_owned(),
            source,
        })?;
    }
    baton_files::write_atomic(path, bytes, mode).map_err(|source| IdentityError::Io {
        action: "cannot write",
        path: path.to_owned(),
        source,
    })
}

fn unix_secs(ts: Timestamp) -> i64 {
    i64::try_from(ts.0 / 1000).unwrap_or(i64::MAX)
}

fn random_id() -> String {
    baton_pki::hex(&rand::random::<[u8; 8]>())
}

/// The current join tokens stored in `dir`, if this manager holds them,
/// opened with its data key `dek`.
pub fn stored_tokens_with_key(
    dir: &Path,
    dek: &SealKey,
) -> Result<Option<StoredTokens>, IdentityError> {
    let path = dir.join(TOKENS_FILE);
    let Some(bytes) = keystore::open_file(&path, dek)? else {
        return Ok(None);
    };
    let inconsistent =
        |why: &dyn fmt::Display| IdentityError::Inconsistent(format!("{}: {why}", path.display()));
    let text = std::str::from_utf8(&bytes).map_err(|e| inconsistent(&e))?;
    toml::from_str(text)
        .map(Some)
        .map_err(|e| inconsistent(&e.message()))
}

/// Saves the current join tokens (after a rotation) for display, sealed
/// with the data key `dek`.
pub fn store_tokens_with_key(
    dir: &Path,
    dek: &SealKey,
    tokens: &StoredTokens,
) -> Result<(), IdentityError> {
    let text = Zeroizing::new(
        toml::to_string(tokens)
            .map_err(|e| IdentityError::Inconsistent(format!("encoding tokens: {e}")))?,
    );
    Ok(keystore::seal_file(
        &dir.join(TOKENS_FILE),
        dek,
        text.as_bytes(),
    )?)
}

/// This manager's private key (PEM), opened with its data key `dek`, if
/// it has one.
pub fn read_node_key(
    dir: &Path,
    dek: &SealKey,
) -> Result<Option<Zeroizing<String>>, IdentityError> {
    let path = dir.join("node").join(NODE_KEY_FILE);
    let Some(bytes) = keystore::open_file(&path, dek)? else {
        return Ok(None);
    };
    String::from_utf8(bytes.to_vec())
        .map(|pem| Some(Zeroizing::new(pem)))
        .map_err(|_| IdentityError::Inconsistent(format!("{}: not a PEM key", path.display())))
}

/// [`load_or_create_with_key`] for a caller that does not hold the data
/// key: it is read (or, in a new data dir, created) from `dir`'s keys with
/// the KEK file, which fails while the cluster is autolocked.
pub async fn load_or_create(
    dir: &Path,
    store: &dyn Store,
    signer: &Signer,
    cert_validity: Duration,
    external: Option<ExternalCaInit>,
) -> Result<ManagerIdentity, IdentityError> {
    let dek = keystore::data_key(dir)?;
    load_or_create_with_key(dir, &dek, store, signer, cert_validity, external).await
}

/// Loads the manager's identity from `dir`, creating the cluster on first
/// start (around `external`'s root when given; ignored on later starts).
/// Its key and the join tokens are sealed with the data key `dek`.
pub async fn load_or_create_with_key(
    dir: &Path,
    dek: &SealKey,
    store: &dyn Store,
    signer: &Signer,
    cert_validity: Duration,
    external: Option<ExternalCaInit>,
) -> Result<ManagerIdentity, IdentityError> {
    let mut created = None;

    // 1. Tokens and the cluster record (with its root CA).
    if store.snapshot().state.cluster().is_none() {
        // The cluster id is the O of every certificate; an external root's
        // own subject says nothing about it.
        let (cluster_id, root_pem, root_key, external_ca) = match external {
            Some(init) => {
                let roots = baton_pki::pem_certificates(&init.root_pem);
                let [root] = roots.as_slice() else {
                    return Err(IdentityError::ExternalCa(format!(
                        "the root certificate file must hold exactly one certificate, it holds {}",
                        roots.len()
                    )));
                };
                let config = ExternalCa {
                    url: init.url,
                    auth_key: init.auth_key,
                };
                (random_id(), root.clone(), None, Some(config))
            }
            None => {
                let ca = ClusterCa::generate(&random_id(), unix_secs(now()), ROOT_VALIDITY)?;
                (
                    ca.cluster_id().to_owned(),
                    ca.cert_pem().to_owned(),
                    Some(Secret::new(ca.key_pem())),
                    None,
                )
            }
        };
        let root_digest = baton_pki::root_digest(&baton_pki::certificate_der(&root_pem)?);
        // Tokens left by a crash before InitCluster name a root that was
        // never stored: make new ones.
        let tokens = match stored_tokens_with_key(dir, dek)? {
            Some(tokens) if token_root(&tokens.worker).as_deref() == Some(root_digest.as_str()) => {
                tokens
            }
            _ => {
                let tokens = StoredTokens {
                    worker: JoinToken::generate(&root_digest)?.format(),
                    manager: JoinToken::generate(&root_digest)?.format(),
                };
                store_tokens_with_key(dir, dek, &tokens)?;
                tokens
            }
        };
        let cluster = new_cluster(
            &cluster_id,
            &root_pem,
            root_key,
            external_ca,
            &tokens,
            cert_validity,
        )?;
        store.propose(Command::InitCluster { cluster }).await?;
        tracing::info!(cluster_id, "cluster created");
        created = Some(tokens);
    }
    let cluster = store
        .snapshot()
        .state
        .cluster()
        .cloned()
        .ok_or_else(|| IdentityError::Inconsistent("the cluster record is missing".into()))?;

    // 2. This manager's node identity.
    let node_dir = dir.join("node");
    let node_id = load_or_create_node_id(dir)?;
    let cert_path = node_dir.join("cert.pem");
    let stored = match (read(&cert_path)?, read_node_key(dir, dek)?) {
        (Some(cert), Some(key)) => {
            match node_cert_defect(&cert, &key, &node_id, unix_secs(now()), &cluster) {
                None => Some((cert, String::clone(&key))),
                Some(defect) => {
                    // A crash between the two writes of a renewal, a manager
                    // stopped past its certificate's expiry or through a
                    // root rotation: it simply gets a new one.
                    tracing::warn!(path = %cert_path.display(), defect, "node certificate unusable; issuing a new one");
                    None
                }
            }
        }
        _ => None,
    };
    let (cert_pem, key_pem, reissued) = match stored {
        Some((cert, key)) => (cert, key, false),
        None => {
            let (key, issued) = signer
                .issue_new_key(
                    &cluster,
                    &node_id.0,
                    Role::Manager,
                    unix_secs(now()),
                    cluster.cert_validity,
                )
                .await?;
            write_node_cert(dir, dek, &key, &issued.chain_pem)?;
            (issued.chain_pem, key, true)
        }
    };
    let cert_not_after = cert_not_after(&cert_pem)?;
    let cert_root = issuing_root(&cert_pem, &cluster);
    if store.snapshot().state.member(&node_id).is_none() {
        store
            .propose(Command::AdmitNode {
                id: node_id.clone(),
                role: NodeRole::Manager,
                cert_not_after,
                cert_root,
                now: now(),
            })
            .await?;
    } else if reissued {
        store
            .propose(Command::RenewNodeCert {
                id: node_id.clone(),
                cert_not_after,
                cert_root,
            })
            .await?;
    }
    Ok(ManagerIdentity {
        cluster_id: cluster.id.clone(),
        node_id,
        cert_pem,
        key_pem,
        created,
    })
}

/// Whether `dir` holds a manager identity (it created or joined a cluster).
pub fn has_identity(dir: &Path) -> bool {
    dir.join("node").join("cert.pem").exists()
}

/// The root this manager pinned when it joined (`node/root.pem`), which it
/// trusts until its store has the cluster's record; absent on the manager
/// that created the cluster.
pub fn joined_root(dir: &Path) -> Result<Option<String>, IdentityError> {
    read(&dir.join("node").join("root.pem"))
}

/// Joins the cluster whose manager listens at `addr` as a new manager,
/// with the manager join token: the root is fetched and checked against
/// the token's digest before anything secret is sent, the key pair is made
/// here and only its CSR leaves, and the cluster chooses the node id. Writes
/// `node/root.pem`, the key (sealed with the data key `dek`, so the
/// keystore exists before the key is written) and certificate, then
/// `node/id` last. Being added to the managers' Raft cluster is the next
/// step (see [`crate::runtime`]).
pub async fn join_cluster(
    dir: &Path,
    dek: &SealKey,
    addr: &str,
    token: &str,
) -> Result<NodeId, IdentityError> {
    let failed = |reason: String| IdentityError::Join {
        addr: addr.to_owned(),
        reason,
    };
    let token = JoinToken::parse(token)?;
    let (key_pem, csr_pem) = baton_pki::generate_csr()?;
    let key_pem = zeroize::Zeroizing::new(key_pem);
    let (root_pem, joined) = baton_rpc::client::join_cluster(addr, &token, &csr_pem)
        .await
        .map_err(|e| failed(e.to_string()))?;
    let issued = baton_pki::peer_identity(&baton_pki::certificate_der(&joined.cert_pem)?)?;
    if issued.role != Role::Manager {
        return Err(failed(format!(
            "the token is a {} token; a manager joins with the manager token (baton cluster join-token manager)",
            issued.role
        )));
    }
    if issued.node_id != joined.node_id.0 {
        return Err(failed(format!(
            "the manager announced node id {} but the certificate names {}",
            joined.node_id, issued.node_id
        )));
    }
    crate::serving_cert::ServingCert::new(&joined.cert_pem, &key_pem)
        .map_err(|e| failed(format!("unusable certificate: {e}")))?;
    write(
        &dir.join("node").join("root.pem"),
        root_pem.as_bytes(),
        0o644,
    )?;
    write_node_cert(dir, dek, &key_pem, &joined.cert_pem)?;
    write(
        &dir.join("node").join("id"),
        issued.node_id.as_bytes(),
        0o644,
    )?;
    tracing::info!(node_id = %issued.node_id, "joined the cluster as a manager");
    Ok(NodeId(issued.node_id))
}

/// This manager's node id (`node/id`), made on first use. It is also its
/// Raft member id, so the store needs it before anything else.
pub fn load_or_create_node_id(dir: &Path) -> Result<NodeId, IdentityError> {
    let id_path = dir.join("node").join("id");
    match read(&id_path)? {
        Some(id) => Ok(NodeId(id.trim().to_owned())),
        None => {
            let id = NodeId(baton_pki::new_node_id());
            write(&id_path, id.0.as_bytes(), 0o644)?;
            Ok(id)
        }
    }
}

/// The CA digest a stored token names.
fn token_root(token: &str) -> Option<String> {
    JoinToken::parse(token)
        .ok()
        .map(|t| t.ca_digest().to_owned())
}

/// The digest of the trusted root that issued `cert_pem`'s leaf: the root
/// whose subject is the leaf's issuer (empty if no trusted root is).
pub fn issuing_root(cert_pem: &str, cluster: &Cluster) -> String {
    let Ok(leaf) = baton_pki::certificate_der(cert_pem) else {
        return String::new();
    };
    let Ok((_, leaf)) = x509_parser::parse_x509_certificate(&leaf) else {
        return String::new();
    };
    for root in baton_pki::pem_certificates(&cluster.trust_pem()) {
        let Ok(der) = baton_pki::certificate_der(&root) else {
            continue;
        };
        if let Ok((_, parsed)) = x509_parser::parse_x509_certificate(&der)
            && parsed.subject().as_raw() == leaf.issuer().as_raw()
        {
            return baton_pki::root_digest(&der);
        }
    }
    String::new()
}

/// Writes this manager's node key (sealed with the data key `dek`, 0600)
/// and certificate, each atomically, key first. A crash between the two
/// leaves a key that does not match the certificate; [`load_or_create`]
/// notices and issues a new pair.
pub fn write_node_cert(
    dir: &Path,
    dek: &SealKey,
    key_pem: &str,
    cert_pem: &str,
) -> Result<(), IdentityError> {
    let node_dir = dir.join("node");
    keystore::seal_file(&node_dir.join(NODE_KEY_FILE), dek, key_pem.as_bytes())?;
    write(&node_dir.join("cert.pem"), cert_pem.as_bytes(), 0o644)
}

/// The expiry of a certificate, as a state timestamp (ms).
pub fn cert_not_after(cert_pem: &str) -> Result<Timestamp, IdentityError> {
    let der = baton_pki::certificate_der(cert_pem)?;
    let not_after = baton_pki::peer_identity(&der)?.not_after;
    Ok(Timestamp(
        u64::try_from(not_after).unwrap_or(0).saturating_mul(1000),
    ))
}

/// Why a stored node certificate cannot be served, if it cannot: unreadable,
/// not this node's manager certificate, another key, or expired at `now`.
fn node_cert_defect(
    cert_pem: &str,
    key_pem: &str,
    node_id: &NodeId,
    now: i64,
    cluster: &Cluster,
) -> Option<&'static str> {
    let Ok(der) = baton_pki::certificate_der(cert_pem) else {
        return Some("unreadable certificate");
    };
    let Ok(identity) = baton_pki::peer_identity(&der) else {
        return Some("certificate without a node identity");
    };
    if identity.node_id != node_id.0 || identity.role != Role::Manager {
        return Some("certificate of another node or role");
    }
    if identity.not_after <= now {
        return Some("certificate expired");
    }
    if issuing_root(cert_pem, cluster).is_empty() {
        return Some("certificate from a root the cluster no longer trusts");
    }
    if crate::serving_cert::ServingCert::new(cert_pem, key_pem).is_err() {
        return Some("key does not match the certificate");
    }
    None
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use baton_store::raft::RaftStore;

    use super::*;

    /// The store in `dir`, sealed with the data key of `dir`'s keys.
    async fn open(dir: &Path) -> Arc<RaftStore> {
        Arc::new(
            RaftStore::open_solo_at(&dir.join("state.redb"), data_key(dir))
                .await
                .expect("store"),
        )
    }

    fn data_key(dir: &Path) -> SealKey {
        keystore::data_key(dir).expect("data key")
    }

    #[tokio::test]
    async fn first_start_creates_the_cluster_and_restarts_keep_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (cluster_id, node_id, tokens) = {
            let store = open(dir.path()).await;
            let identity = load_or_create(
                dir.path(),
                store.as_ref(),
                &Signer::new(),
                DEFAULT_CERT_VALIDITY,
                None,
            )
            .await
            .expect("create");
            let tokens = identity.created.clone().expect("new cluster prints tokens");
            assert!(tokens.worker.starts_with("BATON-1-"));
            assert_ne!(tokens.worker, tokens.manager);
            let state = store.snapshot().state.clone();
            let cluster = state.cluster().expect("cluster in state");
            assert_eq!(cluster.id, identity.cluster_id);
            assert_eq!(
                state.member(&identity.node_id).map(|m| m.role),
                Some(NodeRole::Manager)
            );
            let der = baton_pki::certificate_der(&identity.cert_pem).expect("der");
            let me = baton_pki::peer_identity(&der).expect("identity");
            assert_eq!(
                (me.node_id.as_str(), me.role),
                (identity.node_id.0.as_str(), Role::Manager)
            );
            store.shutdown().await;
            (identity.cluster_id, identity.node_id, tokens)
        };
        use std::os::unix::fs::PermissionsExt;
        let mode = |path: &str| {
            fs::metadata(dir.path().join(path))
                .expect("file")
                .permissions()
                .mode()
                & 0o777
        };
        for secret in [
            "state.redb",
            "node/key.sealed",
            "join-tokens.sealed",
            "keys/kek",
            "keys/dek",
        ] {
            assert_eq!(mode(secret), 0o600, "{secret}");
        }
        assert_eq!(mode("keys"), 0o700);
        assert!(!dir.path().join("node/key.pem").exists());
        assert!(!dir.path().join("join-tokens.toml").exists());
        let store = open(dir.path()).await;
        let again = load_or_create(
            dir.path(),
            store.as_ref(),
            &Signer::new(),
            DEFAULT_CERT_VALIDITY,
            None,
        )
        .await
        .expect("reload");
        assert!(
            again.created.is_none(),
            "tokens are printed only on creation"
        );
        assert_eq!((again.cluster_id, again.node_id), (cluster_id, node_id));
        let stored = stored_tokens_with_key(dir.path(), &data_key(dir.path()))
            .expect("read")
            .expect("tokens");
        assert_eq!(stored.worker, tokens.worker);
        assert_eq!(store.snapshot().state.members().count(), 1);
        assert!(!format!("{stored:?}").contains("BATON-1"));
    }

    #[tokio::test]
    async fn tokens_left_by_a_crash_before_the_cluster_existed_are_replaced() {
        let dir = tempfile::tempdir().expect("tempdir");
        let stale = StoredTokens {
            worker: JoinToken::generate(&"ab".repeat(32)).expect("t").format(),
            manager: JoinToken::generate(&"ab".repeat(32)).expect("t").format(),
        };
        store_tokens_with_key(dir.path(), &data_key(dir.path()), &stale).expect("write");
        let store = open(dir.path()).await;
        let identity = load_or_create(
            dir.path(),
            store.as_ref(),
            &Signer::new(),
            DEFAULT_CERT_VALIDITY,
            None,
        )
        .await
        .expect("create");
        let tokens = identity.created.expect("created");
        assert_ne!(tokens.worker, stale.worker);
        let cluster = store.snapshot().state.cluster().cloned().expect("cluster");
        assert_eq!(
            token_root(&tokens.worker).as_deref(),
            Some(cluster.root_digest.as_str())
        );
        assert!(cluster.root_ca_key.is_some(), "the managers hold the key");
    }

    #[tokio::test]
    async fn a_certificate_from_a_retired_root_is_replaced_at_start() {
        let dir = tempfile::tempdir().expect("tempdir");
        let signer = Signer::new();
        let store = open(dir.path()).await;
        let first = load_or_create(
            dir.path(),
            store.as_ref(),
            &signer,
            DEFAULT_CERT_VALIDITY,
            None,
        )
        .await
        .expect("create");
        // A certificate of this node id from another root in node/cert.pem.
        let stranger =
            ClusterCa::generate(&first.cluster_id, unix_secs(now()), ROOT_VALIDITY).expect("ca");
        let (key, cert) = baton_pki::generate_key_and_cert(
            &stranger,
            &first.node_id.0,
            Role::Manager,
            unix_secs(now()),
            DEFAULT_CERT_VALIDITY,
        )
        .expect("cert");
        write_node_cert(dir.path(), &data_key(dir.path()), &key, &cert).expect("write");
        let again = load_or_create(
            dir.path(),
            store.as_ref(),
            &signer,
            DEFAULT_CERT_VALIDITY,
            None,
        )
        .await
        .expect("reload");
        assert_ne!(again.cert_pem, cert, "the foreign certificate was replaced");
        let cluster = store.snapshot().state.cluster().cloned().expect("cluster");
        assert_eq!(issuing_root(&again.cert_pem, &cluster), cluster.root_digest);
        assert_eq!(
            store
                .snapshot()
                .state
                .member(&again.node_id)
                .map(|m| m.cert_root.clone()),
            Some(cluster.root_digest.clone())
        );
    }

    #[tokio::test]
    async fn the_node_key_and_the_tokens_are_sealed_with_the_data_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open(dir.path()).await;
        let identity = load_or_create(
            dir.path(),
            store.as_ref(),
            &Signer::new(),
            DEFAULT_CERT_VALIDITY,
            None,
        )
        .await
        .expect("create");
        let tokens = identity.created.clone().expect("tokens");
        let dek = data_key(dir.path());

        let key_file = fs::read(dir.path().join("node/key.sealed")).expect("key");
        let tokens_file = fs::read(dir.path().join("join-tokens.sealed")).expect("tokens");
        let in_file =
            |file: &[u8], needle: &str| file.windows(needle.len()).any(|w| w == needle.as_bytes());
        for line in identity.key_pem.lines() {
            assert!(!in_file(&key_file, line), "{line} in the clear");
        }
        for token in [&tokens.worker, &tokens.manager] {
            assert!(!in_file(&tokens_file, token), "a token in the clear");
        }
        assert!(!in_file(&tokens_file, "BATON-1-"));

        let key = read_node_key(dir.path(), &dek)
            .expect("read")
            .expect("a key");
        assert_eq!(key.as_str(), identity.key_pem);
        let stored = stored_tokens_with_key(dir.path(), &dek)
            .expect("read")
            .expect("tokens");
        assert_eq!(stored.manager, tokens.manager);

        let other = SealKey::generate();
        assert!(matches!(
            read_node_key(dir.path(), &other),
            Err(IdentityError::Keys(KeystoreError::Sealed { .. }))
        ));
        assert!(stored_tokens_with_key(dir.path(), &other).is_err());
        // The sealed files are bound to their names.
        fs::copy(
            dir.path().join("join-tokens.sealed"),
            dir.path().join("node/key.sealed"),
        )
        .expect("swap");
        assert!(read_node_key(dir.path(), &dek).is_err());
    }
}
