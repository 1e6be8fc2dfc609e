//! Starting and stopping a whole manager: store, identity, control loop,
//! dispatcher, the cluster port (gRPC over mutual TLS) and the user API
//! (HTTPS with admin client certificates). `baton manager` and `baton dev`
//! both run exactly this.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use baton_rpc::tls::{ClientTls, HotTrust, ServerTls};
use baton_store::Store;
use baton_store::raft::{RaftStore, RaftStoreConfig, raft_id};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::api::{AppState, api_tls_config, router, serve};
use crate::ca::ManagerCa;
use crate::dispatcher::DispatcherService;
use crate::identity::{self, ExternalCaInit, StoredTokens};
use crate::raft::{GrpcRaftTransport, RaftEndpoint};
use crate::renew::SelfRenewal;
use crate::serving_cert::ServingCert;
use crate::signer::Signer;
use crate::trust::{TrustSync, write_admin_config};

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
    /// Create the cluster around this external CA (first start only).
    pub external_ca: Option<ExternalCaInit>,
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
    raft_store: Arc<RaftStore>,
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

/// Starts a manager; it serves until [`RunningManager::stop`].
pub async fn start(config: ManagerConfig) -> Result<RunningManager, StartError> {
    let dir = &config.data_dir;
    std::fs::create_dir_all(dir).map_err(|e| io("cannot create", dir, e))?;
    // The store is this manager's Raft member; its id is the node id.
    let node_id = identity::load_or_create_node_id(dir)?;
    let member = raft_id(&node_id.0).ok_or_else(|| {
        StartError::Io(format!(
            "{}: {:?} is not a node id (16 hex digits)",
            dir.join("node/id").display(),
            node_id.0
        ))
    })?;
    let advertised = config
        .advertise
        .clone()
        .unwrap_or_else(|| config.listen.to_string());
    // Raft traffic to other managers goes over the cluster port with this
    // manager's certificate, once it has one (a lone manager needs none).
    let raft_transport = Arc::new(GrpcRaftTransport::new());
    let raft_store = Arc::new(
        RaftStore::open(
            RaftStoreConfig::new(baton_store::default_path(dir), member, advertised),
            raft_transport.clone(),
        )
        .await?,
    );
    raft_store.initialize_alone().await?;
    let store: Arc<dyn Store> = raft_store.clone();
    let signer = Arc::new(Signer::new());
    let identity = identity::load_or_create(
        dir,
        store.as_ref(),
        &signer,
        config.cert_validity,
        config.external_ca.clone(),
    )
    .await?;
    let cluster = store
        .snapshot()
        .state
        .cluster()
        .cloned()
        .ok_or_else(|| StartError::Tls("the cluster record is missing".to_owned()))?;
    let trust = HotTrust::new(&cluster.trust_pem()).map_err(|e| StartError::Tls(e.to_string()))?;

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
    let server_tls =
        ServerTls::with_trust(trust.clone(), &identity.cluster_id, serving_cert.cluster())
            .map_err(|e| StartError::Tls(e.to_string()))?;
    let revocations = server_tls.revocations();
    let cluster_listener = TcpListener::bind(config.listen)
        .await
        .map_err(|e| StartError::Io(format!("cannot listen on {}: {e}", config.listen)))?;
    let cluster_addr = cluster_listener
        .local_addr()
        .map_err(|e| StartError::Io(e.to_string()))?;
    let ca = Arc::new(ManagerCa::new(store.clone(), signer.clone()));
    raft_transport.set_tls(
        ClientTls::with_trust(&trust, serving_cert.cluster())
            .map_err(|e| StartError::Tls(e.to_string()))?,
    );
    let rpc_router = baton_rpc::server::router(
        dispatcher.clone(),
        ca,
        Arc::new(RaftEndpoint::new(raft_store.clone())),
    );
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
    let api_tls =
        api_tls_config(&trust, serving_cert.clone()).map_err(|e| StartError::Tls(e.to_string()))?;
    let api_listener = TcpListener::bind(config.api)
        .await
        .map_err(|e| StartError::Io(format!("cannot listen on {}: {e}", config.api)))?;
    let api_addr = api_listener
        .local_addr()
        .map_err(|e| StartError::Io(e.to_string()))?;
    let app = router(Arc::new(AppState {
        store: store.clone(),
        raft: raft_store.clone(),
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

    let api_url = https_url(api_addr);
    let admin_config = write_admin_config(dir, &signer, &cluster, &api_url)
        .await
        .map_err(StartError::Io)?;
    // Started last: a start that fails earlier leaves no loop writing files.
    let renew_now = Arc::new(tokio::sync::Notify::new());
    tasks.push(tokio::spawn(crate::renew::renew_loop(
        SelfRenewal {
            store: store.clone(),
            signer: signer.clone(),
            now: renew_now.clone(),
            node_id: identity.node_id.clone(),
            data_dir: dir.clone(),
            cert: serving_cert,
        },
        manager_stop.clone(),
    )));
    tasks.push(tokio::spawn(crate::trust::run(
        TrustSync {
            store: store.clone(),
            trust,
            revocations,
            signer,
            node_id: identity.node_id.clone(),
            renew_now,
            data_dir: dir.clone(),
            api_url,
        },
        manager_stop.clone(),
    )));
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
        root_pem: cluster.trust_pem(),
        manager_stop,
        server_stop,
        tasks,
        raft_store,
    })
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
        self.raft_store.shutdown().await;
    }

    /// Stops the control loop and the dispatcher's sessions only (used by
    /// `baton dev` before it stops its agent).
    pub fn stop_control(&self) {
        self.manager_stop.cancel();
    }
}
