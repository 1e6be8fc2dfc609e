//! Starting and stopping a whole manager: store, identity, control loop,
//! dispatcher, the cluster port (gRPC over mutual TLS) and the user API
//! (HTTPS with admin client certificates). `baton manager` and `baton dev`
//! both run exactly this.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use baton_api::ClientConfig;
use baton_rpc::tls::ServerTls;
use baton_store::{LocalStore, LocalStoreConfig, Store};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::api::{AppState, api_tls_config, router, serve};
use crate::ca::ManagerCa;
use crate::dispatcher::DispatcherService;
use crate::identity::{self, ManagerIdentity, StoredTokens};
use crate::now;
use crate::renew::SelfRenewal;
use crate::serving_cert::ServingCert;

/// How to run a manager.
#[derive(Clone, Debug)]
pub struct ManagerConfig {
    /// Data dir (state, CA, identity, admin config).
    pub data_dir: PathBuf,
    /// Cluster port: agents and other managers connect here.
    pub listen: SocketAddr,
    /// User API port.
    pub api: SocketAddr,
    /// Cluster address given to others, when `listen` is not reachable as is.
    pub advertise: Option<String>,
    /// Lifetime of node certificates.
    pub cert_validity: Duration,
    /// How long a node of a small cluster may go without a heartbeat before
    /// it is `down` (see [`crate::dispatcher::node_down_grace`]).
    pub node_down_grace: Duration,
}

/// Why a manager could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A file or socket operation failed.
    #[error("{0}")]
    Io(String),
    /// The store could not open.
    #[error(transparent)]
    Store(#[from] baton_store::StoreError),
    /// The identity could not be loaded or created.
    #[error(transparent)]
    Identity(#[from] identity::IdentityError),
    /// TLS material is unusable.
    #[error("tls: {0}")]
    Tls(String),
}

/// A running manager.
pub struct RunningManager {
    /// The store.
    pub store: Arc<dyn Store>,
    /// Cluster id.
    pub cluster_id: String,
    /// This manager's node id.
    pub node_id: baton_state::NodeId,
    /// Bound cluster address.
    pub cluster_addr: SocketAddr,
    /// Bound API address.
    pub api_addr: SocketAddr,
    /// Path of the admin client config it wrote.
    pub admin_config: PathBuf,
    /// Join tokens, when this start created the cluster.
    pub created: Option<StoredTokens>,
    /// The root CA, PEM.
    pub root_pem: String,
    manager_stop: CancellationToken,
    server_stop: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
    local_store: Arc<LocalStore>,
}

impl std::fmt::Debug for RunningManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunningManager")
            .field("cluster_id", &self.cluster_id)
            .field("node_id", &self.node_id)
            .field("cluster_addr", &self.cluster_addr)
            .field("api_addr", &self.api_addr)
            .finish_non_exhaustive()
    }
}

fn io(what: &str, path: &Path, e: impl std::fmt::Display) -> StartError {
    StartError::Io(format!("{what} {}: {e}", path.display()))
}

/// `https://host:port` for a bound address (loopback for an unspecified one).
pub fn https_url(addr: SocketAddr) -> String {
    let host = if addr.ip().is_unspecified() {
        "127.0.0.1".to_owned()
    } else if addr.is_ipv6() {
        format!("[{}]", addr.ip())
    } else {
        addr.ip().to_string()
    };
    format!("https://{host}:{}", addr.port())
}

/// Writes `admin.toml`: an admin client certificate (made once, kept across
/// restarts) and the API's current address.
fn write_admin_config(
    dir: &Path,
    identity: &ManagerIdentity,
    api_url: &str,
) -> Result<PathBuf, StartError> {
    let path = dir.join("admin.toml");
    let existing = ClientConfig::load(&path).ok();
    let (cert, key) = match existing {
        Some(config) if config.ca_cert == identity.ca.cert_pem() => (config.cert, config.key),
        _ => {
            let (key, csr) =
                baton_pki::generate_csr().map_err(|e| StartError::Tls(e.to_string()))?;
            let unix = i64::try_from(now().0 / 1000).unwrap_or(i64::MAX);
            let cert = identity
                .ca
                .issue_client(&csr, "admin", unix, identity::ROOT_VALIDITY)
                .map_err(|e| StartError::Tls(e.to_string()))?;
            (cert, key)
        }
    };
    let config = ClientConfig {
        api: api_url.to_owned(),
        ca_cert: identity.ca.cert_pem().to_owned(),
        cert,
        key,
    };
    baton_files::write_atomic(&path, config.to_toml().as_bytes(), 0o600)
        .map_err(|e| io("cannot write", &path, e))?;
    Ok(path)
}

/// A second handle on the cluster CA (`ClusterCa` is not `Clone`: it holds
/// the root key).
fn cluster_ca(identity: &ManagerIdentity) -> Result<baton_pki::ClusterCa, StartError> {
    baton_pki::ClusterCa::from_pem(
        &identity.cluster_id,
        identity.ca.cert_pem(),
        &identity.ca.key_pem(),
    )
    .map_err(|e| StartError::Tls(e.to_string()))
}

/// Starts a manager; it serves until [`RunningManager::stop`].
pub async fn start(config: ManagerConfig) -> Result<RunningManager, StartError> {
    let dir = &config.data_dir;
    std::fs::create_dir_all(dir).map_err(|e| io("cannot create", dir, e))?;
    let local_store = Arc::new(LocalStore::open(LocalStoreConfig::new(
        baton_store::default_path(dir),
    ))?);
    let store: Arc<dyn Store> = local_store.clone();
    let identity = identity::load_or_create(dir, store.as_ref(), config.cert_validity).await?;

    let manager_stop = CancellationToken::new();
    let server_stop = CancellationToken::new();
    let mut tasks = Vec::new();

    let dispatcher =
        DispatcherService::new(store.clone(), manager_stop.clone(), config.node_down_grace);
    dispatcher.watch_liveness();
    tasks.push(tokio::spawn(crate::control::run(
        store.clone(),
        manager_stop.clone(),
    )));

    // This manager's certificate, served by both listeners and renewed in
    // the background (started below, once both listen) without a restart.
    let serving_cert = ServingCert::new(&identity.cert_pem, &identity.key_pem)
        .map_err(|e| StartError::Tls(e.to_string()))?;

    // Cluster port.
    let server_tls = ServerTls::new(
        identity.ca.cert_pem(),
        &identity.cluster_id,
        serving_cert.cluster(),
    )
    .map_err(|e| StartError::Tls(e.to_string()))?;
    tasks.push(tokio::spawn(sync_revocations(
        store.clone(),
        server_tls.revocations(),
        manager_stop.clone(),
    )));
    let cluster_listener = TcpListener::bind(config.listen)
        .await
        .map_err(|e| StartError::Io(format!("cannot listen on {}: {e}", config.listen)))?;
    let cluster_addr = cluster_listener
        .local_addr()
        .map_err(|e| StartError::Io(e.to_string()))?;
    let ca = Arc::new(ManagerCa::new(store.clone(), cluster_ca(&identity)?));
    let rpc_router = baton_rpc::server::router(dispatcher.clone(), ca);
    let stop = server_stop.clone();
    tasks.push(tokio::spawn(async move {
        if let Err(e) = baton_rpc::transport::serve(
            cluster_listener,
            server_tls,
            rpc_router,
            stop.cancelled_owned(),
        )
        .await
        {
            tracing::error!(error = %e, "cluster port stopped");
        }
    }));

    // User API.
    let api_tls = api_tls_config(identity.ca.cert_pem(), serving_cert.clone())
        .map_err(|e| StartError::Tls(e.to_string()))?;
    let api_listener = TcpListener::bind(config.api)
        .await
        .map_err(|e| StartError::Io(format!("cannot listen on {}: {e}", config.api)))?;
    let api_addr = api_listener
        .local_addr()
        .map_err(|e| StartError::Io(e.to_string()))?;
    let app = router(Arc::new(AppState {
        store: store.clone(),
        dispatcher: dispatcher.clone(),
        cluster_id: identity.cluster_id.clone(),
        identity_dir: dir.clone(),
    }));
    tasks.push(tokio::spawn(serve(
        api_listener,
        api_tls,
        app,
        server_stop.clone(),
    )));

    // Started last: a start that fails earlier leaves no loop writing files.
    tasks.push(tokio::spawn(crate::renew::renew_loop(
        SelfRenewal {
            store: store.clone(),
            ca: cluster_ca(&identity)?,
            node_id: identity.node_id.clone(),
            data_dir: dir.clone(),
            cert: serving_cert,
        },
        manager_stop.clone(),
    )));

    let admin_config = write_admin_config(dir, &identity, &https_url(api_addr))?;
    tracing::info!(
        cluster_id = %identity.cluster_id,
        node_id = %identity.node_id,
        %cluster_addr,
        %api_addr,
        "manager started"
    );
    Ok(RunningManager {
        store,
        cluster_id: identity.cluster_id.clone(),
        node_id: identity.node_id.clone(),
        cluster_addr,
        api_addr,
        admin_config,
        created: identity.created.clone(),
        root_pem: identity.ca.cert_pem().to_owned(),
        manager_stop,
        server_stop,
        tasks,
        local_store,
    })
}

/// Keeps the cluster port's revocation set equal to the state's.
async fn sync_revocations(
    store: Arc<dyn Store>,
    revocations: baton_rpc::auth::Revocations,
    stop: CancellationToken,
) {
    let mut changes = store.subscribe();
    loop {
        let revoked = changes.borrow_and_update().state.revoked();
        revocations.set(revoked.into_iter().map(|id| id.0).collect());
        tokio::select! {
            () = stop.cancelled() => return,
            changed = changes.changed() => if changed.is_err() { return },
        }
    }
}

impl RunningManager {
    /// Stops the control loop and sessions first (no new decisions), then the
    /// listeners, then closes the store.
    pub async fn stop(self) {
        self.manager_stop.cancel();
        // Give sessions a moment to end so the gRPC server drains cleanly.
        tokio::task::yield_now().await;
        self.server_stop.cancel();
        for task in self.tasks {
            let _ = task.await;
        }
        drop(self.store);
        if let Ok(store) = Arc::try_unwrap(self.local_store) {
            store.close();
        }
    }

    /// Stops the control loop and the dispatcher's sessions only (used by
    /// `baton dev` before it stops its agent).
    pub fn stop_control(&self) {
        self.manager_stop.cancel();
    }
}
