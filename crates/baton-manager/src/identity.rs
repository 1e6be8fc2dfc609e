//! The manager's identity on disk: the cluster CA, its own node certificate
//! and the join tokens it created.
//!
//! On an empty data dir [`load_or_create`] creates a cluster; on an existing
//! one it loads what is there. Every step is idempotent, in an order that a
//! crash at any point can resume from: CA files, token file, `InitCluster`,
//! node key and certificate, `AdmitNode`. A stored node certificate that
//! cannot be served (its key does not match, as after a crash in the middle
//! of a renewal, or it expired while the manager was stopped) is replaced by
//! a new one from the CA at start, recorded with `RenewNodeCert`; while the
//! manager runs, [`crate::renew`] renews it.
//!
//! Layout (secrets 0600):
//! - `ca/root.pem`, `ca/root-key.pem`: the root CA (the key never leaves this dir)
//! - `node/id`, `node/cert.pem`, `node/key.pem`: this manager's node identity
//! - `join-tokens.toml`: the current tokens, for `baton cluster join-token`; the
//!   state holds only their digests

use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use baton_pki::{ClusterCa, JoinToken, Role};
use baton_state::{Cluster, Command, NodeId, NodeRole, Timestamp};
use baton_store::Store;
use serde::{Deserialize, Serialize};

use crate::now;

/// How long the root CA is valid: long, because rotating it is an operation.
pub const ROOT_VALIDITY: Duration = Duration::from_secs(10 * 365 * 86_400);

/// Default lifetime of node certificates (renewed at 50-80% of it).
pub const DEFAULT_CERT_VALIDITY: Duration = Duration::from_secs(90 * 86_400);

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
    /// The cluster CA.
    pub ca: ClusterCa,
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

/// The current join tokens stored in `dir`, if this manager holds them.
pub fn stored_tokens(dir: &Path) -> Result<Option<StoredTokens>, IdentityError> {
    let path = dir.join("join-tokens.toml");
    read(&path)?
        .map(|text| {
            toml::from_str(&text).map_err(|e| {
                IdentityError::Inconsistent(format!("{}: {}", path.display(), e.message()))
            })
        })
        .transpose()
}

/// Saves the current join tokens (after a rotation) for display.
pub fn store_tokens(dir: &Path, tokens: &StoredTokens) -> Result<(), IdentityError> {
    let text = toml::to_string(tokens)
        .map_err(|e| IdentityError::Inconsistent(format!("encoding tokens: {e}")))?;
    write(&dir.join("join-tokens.toml"), text.as_bytes(), 0o600)
}

/// Loads the manager's identity from `dir`, creating the cluster on first start.
pub async fn load_or_create(
    dir: &Path,
    store: &dyn Store,
    cert_validity: Duration,
) -> Result<ManagerIdentity, IdentityError> {
    let (root_path, root_key_path) = (dir.join("ca/root.pem"), dir.join("ca/root-key.pem"));
    let state_cluster = store.snapshot().state.cluster().cloned();
    let mut created = None;

    // 1. The CA.
    let ca = match (read(&root_path)?, read(&root_key_path)?, &state_cluster) {
        (Some(cert), Some(key), _) => {
            let cluster_id = state_cluster
                .as_ref()
                .map(|c| c.id.clone())
                .or_else(|| {
                    // Created but not yet in the state (crash before InitCluster):
                    // the id is in the certificate's O.
                    baton_pki::certificate_der(&cert)
                        .ok()
                        .and_then(|der| root_cluster_id(&der))
                })
                .ok_or_else(|| IdentityError::Inconsistent("root CA has no cluster id".into()))?;
            ClusterCa::from_pem(&cluster_id, &cert, &key)?
        }
        (None, None, None) => {
            let ca = ClusterCa::generate(&random_id(), unix_secs(now()), ROOT_VALIDITY)?;
            write(&root_key_path, ca.key_pem().as_bytes(), 0o600)?;
            write(&root_path, ca.cert_pem().as_bytes(), 0o644)?;
            ca
        }
        (_, _, Some(cluster)) => {
            return Err(IdentityError::Inconsistent(format!(
                "the state belongs to cluster {} but {} is missing",
                cluster.id,
                root_key_path.display()
            )));
        }
        _ => {
            return Err(IdentityError::Inconsistent(format!(
                "only one of {} and {} exists",
                root_path.display(),
                root_key_path.display()
            )));
        }
    };
    if let Some(cluster) = &state_cluster
        && cluster.root_ca_pem != ca.cert_pem()
    {
        return Err(IdentityError::Inconsistent(format!(
            "{} is not the root CA of cluster {}",
            root_path.display(),
            cluster.id
        )));
    }

    // 2. Tokens and the cluster record.
    if state_cluster.is_none() {
        let tokens = match stored_tokens(dir)? {
            Some(tokens) => tokens,
            None => {
                let tokens = StoredTokens {
                    worker: JoinToken::generate(&ca.root_digest())?.format(),
                    manager: JoinToken::generate(&ca.root_digest())?.format(),
                };
                store_tokens(dir, &tokens)?;
                tokens
            }
        };
        let digest = |t: &str| -> Result<String, IdentityError> {
            Ok(baton_pki::hex(&JoinToken::parse(t)?.secret_digest()))
        };
        store
            .propose(Command::InitCluster {
                cluster: Cluster {
                    id: ca.cluster_id().to_owned(),
                    root_ca_pem: ca.cert_pem().to_owned(),
                    worker_token_digest: digest(&tokens.worker)?,
                    manager_token_digest: digest(&tokens.manager)?,
                    cert_validity,
                    created_at: now(),
                },
            })
            .await?;
        tracing::info!(cluster_id = ca.cluster_id(), "cluster created");
        created = Some(tokens);
    }

    // 3. This manager's node identity.
    let node_dir = dir.join("node");
    let id_path = node_dir.join("id");
    let node_id = match read(&id_path)? {
        Some(id) => NodeId(id.trim().to_owned()),
        None => {
            let id = NodeId(random_id());
            write(&id_path, id.0.as_bytes(), 0o644)?;
            id
        }
    };
    let (cert_path, key_path) = (node_dir.join("cert.pem"), node_dir.join("key.pem"));
    let stored = match (read(&cert_path)?, read(&key_path)?) {
        (Some(cert), Some(key)) => {
            match node_cert_defect(&cert, &key, &node_id, unix_secs(now())) {
                None => Some((cert, key)),
                Some(defect) => {
                    // A crash between the two writes of a renewal, or a manager
                    // that was stopped past its certificate's expiry: this
                    // manager holds the CA, so it simply issues itself a new one.
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
            // The current cluster setting, if the cluster exists (it does by
            // now, unless the store refused InitCluster above).
            let validity = store
                .snapshot()
                .state
                .cluster()
                .map_or(cert_validity, |c| c.cert_validity);
            let (key, cert) = issue_node_cert(&ca, &node_id, unix_secs(now()), validity)?;
            write_node_cert(dir, &key, &cert)?;
            (cert, key, true)
        }
    };
    let cert_not_after = cert_not_after(&cert_pem)?;
    if store.snapshot().state.member(&node_id).is_none() {
        store
            .propose(Command::AdmitNode {
                id: node_id.clone(),
                role: NodeRole::Manager,
                cert_not_after,
                now: now(),
            })
            .await?;
    } else if reissued {
        store
            .propose(Command::RenewNodeCert {
                id: node_id.clone(),
                cert_not_after,
            })
            .await?;
    }
    Ok(ManagerIdentity {
        cluster_id: ca.cluster_id().to_owned(),
        ca,
        node_id,
        cert_pem,
        key_pem,
        created,
    })
}

/// A fresh key pair and a manager certificate for `node_id`, valid from
/// `now` (Unix seconds) for `validity`: `(key, certificate)`, PEM.
pub fn issue_node_cert(
    ca: &ClusterCa,
    node_id: &NodeId,
    now: i64,
    validity: Duration,
) -> Result<(String, String), IdentityError> {
    Ok(baton_pki::generate_key_and_cert(
        ca,
        &node_id.0,
        Role::Manager,
        now,
        validity,
    )?)
}

/// Writes this manager's node key (0600) and certificate, each atomically,
/// key first. A crash between the two leaves a key that does not match the
/// certificate; [`load_or_create`] notices and issues a new pair.
pub fn write_node_cert(dir: &Path, key_pem: &str, cert_pem: &str) -> Result<(), IdentityError> {
    let node_dir = dir.join("node");
    write(&node_dir.join("key.pem"), key_pem.as_bytes(), 0o600)?;
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
    if crate::serving_cert::ServingCert::new(cert_pem, key_pem).is_err() {
        return Some("key does not match the certificate");
    }
    None
}

/// The O of a root certificate: the cluster id.
fn root_cluster_id(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let org = cert
        .subject()
        .iter_organization()
        .next()?
        .as_str()
        .ok()?
        .to_owned();
    Some(org)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use baton_store::{LocalStore, LocalStoreConfig};

    use super::*;

    fn open(dir: &Path) -> Arc<LocalStore> {
        Arc::new(LocalStore::open(LocalStoreConfig::new(dir.join("state.redb"))).expect("store"))
    }

    #[tokio::test]
    async fn first_start_creates_the_cluster_and_restarts_keep_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (cluster_id, node_id, tokens) = {
            let store = open(dir.path());
            let identity = load_or_create(dir.path(), store.as_ref(), DEFAULT_CERT_VALIDITY)
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
            (identity.cluster_id, identity.node_id, tokens)
        };
        use std::os::unix::fs::PermissionsExt;
        for secret in ["ca/root-key.pem", "node/key.pem", "join-tokens.toml"] {
            let mode = fs::metadata(dir.path().join(secret))
                .expect("file")
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{secret}");
        }
        let store = open(dir.path());
        let again = load_or_create(dir.path(), store.as_ref(), DEFAULT_CERT_VALIDITY)
            .await
            .expect("reload");
        assert!(
            again.created.is_none(),
            "tokens are printed only on creation"
        );
        assert_eq!((again.cluster_id, again.node_id), (cluster_id, node_id));
        let stored = stored_tokens(dir.path()).expect("read").expect("tokens");
        assert_eq!(stored.worker, tokens.worker);
        assert_eq!(store.snapshot().state.members().count(), 1);
        assert!(!format!("{stored:?}").contains("BATON-1"));
    }

    #[tokio::test]
    async fn a_crash_after_the_ca_files_resumes_to_one_cluster() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = ClusterCa::generate("abc123", unix_secs(now()), ROOT_VALIDITY).expect("ca");
        write(
            &dir.path().join("ca/root-key.pem"),
            ca.key_pem().as_bytes(),
            0o600,
        )
        .expect("w");
        write(
            &dir.path().join("ca/root.pem"),
            ca.cert_pem().as_bytes(),
            0o644,
        )
        .expect("w");
        let store = open(dir.path());
        let identity = load_or_create(dir.path(), store.as_ref(), DEFAULT_CERT_VALIDITY)
            .await
            .expect("resume");
        assert_eq!(identity.cluster_id, "abc123");
        assert_eq!(
            store
                .snapshot()
                .state
                .cluster()
                .map(|c| c.root_ca_pem.clone()),
            Some(ca.cert_pem().to_owned())
        );
    }

    #[tokio::test]
    async fn a_state_without_its_ca_key_is_refused_clearly() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let store = open(dir.path());
            load_or_create(dir.path(), store.as_ref(), DEFAULT_CERT_VALIDITY)
                .await
                .expect("create");
        }
        fs::remove_file(dir.path().join("ca/root-key.pem")).expect("rm");
        let store = open(dir.path());
        let err = load_or_create(dir.path(), store.as_ref(), DEFAULT_CERT_VALIDITY)
            .await
            .expect_err("missing key");
        assert!(err.to_string().contains("root-key.pem is missing"), "{err}");
    }
}
