//! Everything on a manager that follows the cluster's roots and
//! revocations, kept in line with the state by one loop ([`run`]):
//!
//! - the revoked node ids the cluster port refuses;
//! - the roots both listeners verify client certificates against
//!   ([`HotTrust`]): during a root rotation the old and the new root, after
//!   it the new one only;
//! - the admin client config `admin.toml`, rewritten with a certificate from
//!   the root that issues now and the roots to trust whenever those change,
//!   and every manager's API address whenever the managers change;
//! - this manager's own certificate: renewed at once when a rotation starts;
//! - the end of a rotation: once every member holds a certificate from the
//!   new root, `FinishRootRotation` (proposed by the leader) drops the old one.
//!
//! Agents learn the roots through their sessions ([`crate::dispatcher`]).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use baton_api::ClientConfig;
use baton_pki::Role;
use baton_rpc::auth::Revocations;
use baton_rpc::tls::HotTrust;
use baton_state::{Cluster, Command, NodeId, NodeRole, State};
use baton_store::Store;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::identity::ROOT_VALIDITY;
use crate::signer::Signer;

/// What the loop keeps in line.
pub struct TrustSync {
    /// The store.
    pub store: Arc<dyn Store>,
    /// Roots both listeners read.
    pub trust: HotTrust,
    /// Revoked ids the cluster port reads.
    pub revocations: Revocations,
    /// Issues the admin certificate.
    pub signer: Arc<Signer>,
    /// This manager.
    pub node_id: NodeId,
    /// Asks this manager's renewal loop for a renewal now.
    pub renew_now: Arc<Notify>,
    /// Data dir (`admin.toml`).
    pub data_dir: PathBuf,
    /// The API's URL, written into `admin.toml`.
    pub api_url: String,
    /// The roots and API addresses `admin.toml` was last written with.
    pub admin_written: (String, Vec<String>),
    /// The Raft member: only the leader finishes a rotation.
    pub raft: Arc<baton_store::raft::RaftStore>,
}

impl std::fmt::Debug for TrustSync {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrustSync")
            .field("node_id", &self.node_id)
            .finish_non_exhaustive()
    }
}

/// Every manager's API URL, `own` first (the manager on this machine),
/// then the others as the state records them.
pub fn manager_apis(state: &State, own: &str) -> Vec<String> {
    let mut apis = vec![own.to_owned()];
    for member in state.members() {
        if member.role == NodeRole::Manager
            && !state.is_revoked(&member.id)
            && let Some(url) = &member.api_url
            && !apis.contains(url)
        {
            apis.push(url.clone());
        }
    }
    apis
}

/// Writes `admin.toml`: an admin client certificate (kept across restarts
/// while the roots stay the same, made anew from the issuing root when
/// they change) and the managers' API addresses (see [`manager_apis`]).
pub async fn write_admin_config(
    dir: &Path,
    signer: &Signer,
    cluster: &Cluster,
    apis: Vec<String>,
) -> Result<PathBuf, String> {
    let path = dir.join("admin.toml");
    let trust = cluster.trust_pem();
    let existing = ClientConfig::load(&path).ok();
    let (cert, key) = match existing {
        Some(config) if config.ca_cert == trust => (config.cert, config.key),
        _ => {
            let unix = i64::try_from(crate::now().0 / 1000).unwrap_or(i64::MAX);
            let (key, issued) = signer
                .issue_new_key(cluster, "admin", Role::Admin, unix, ROOT_VALIDITY)
                .await
                .map_err(|e| e.to_string())?;
            (issued.chain_pem, key)
        }
    };
    let config = ClientConfig {
        apis,
        ca_cert: trust,
        cert,
        key,
    };
    baton_files::write_atomic(&path, config.to_toml().as_bytes(), 0o600)
        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    Ok(path)
}

/// Runs until `stop` (see the module doc).
pub async fn run(sync: TrustSync, stop: CancellationToken) {
    let mut changes = sync.store.subscribe();
    let mut admin_for = Some(sync.admin_written.clone());
    let mut renewal_asked_for: Option<String> = None;
    loop {
        let snapshot = changes.borrow_and_update().clone();
        let state = &snapshot.state;
        sync.revocations
            .set(state.revoked().into_iter().map(|id| id.0).collect());
        if let Some(cluster) = state.cluster() {
            let trust = cluster.trust_pem();
            if let Err(e) = sync.trust.set(&trust) {
                tracing::error!(error = %e, "cannot load the cluster's roots");
            }
            let written = (trust, manager_apis(state, &sync.api_url));
            if admin_for.as_ref() != Some(&written) {
                match write_admin_config(&sync.data_dir, &sync.signer, cluster, written.1.clone())
                    .await
                {
                    Ok(_) => admin_for = Some(written),
                    Err(e) => tracing::error!(error = %e, "cannot rewrite admin.toml"),
                }
            }
            if let Some(rotation) = &cluster.root_rotation {
                let mine = state.member(&sync.node_id).map(|m| m.cert_root.as_str());
                if mine != Some(rotation.new_root_digest.as_str())
                    && renewal_asked_for.as_deref() != Some(rotation.new_root_digest.as_str())
                {
                    tracing::info!("root rotation: renewing this manager's certificate now");
                    sync.renew_now.notify_one();
                    renewal_asked_for = Some(rotation.new_root_digest.clone());
                }
                if state.rotation_pending().is_empty() && sync.raft.is_leader() {
                    let digest = rotation.new_root_digest.clone();
                    match sync
                        .store
                        .propose(Command::FinishRootRotation {
                            new_root_digest: digest.clone(),
                        })
                        .await
                    {
                        Ok(_) => tracing::info!(root = %digest, "root rotation finished"),
                        Err(e) => tracing::warn!(error = %e, "root rotation not finished yet"),
                    }
                }
            }
        }
        tokio::select! {
            () = stop.cancelled() => return,
            changed = changes.changed() => if changed.is_err() { return },
        }
    }
}
