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
use crate::keystore::{self, Keys};
use crate::raft::{GrpcRaftTransport, RaftEndpoint};
use crate::renew::SelfRenewal;
use crate::serving_cert::ServingCert;
use crate::signer::Signer;
use crate::trust::{TrustSync, manager_apis, write_admin_config};

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
    /// Join the cluster of the manager at this cluster address instead of
    /// creating one (first start only; later starts use it only if this
    /// manager was never added to the managers).
    pub join: Option<JoinConfig>,
    /// Disaster recovery: make this manager, from its own data, the only
    /// member of a new Raft cluster (see `docs/design/raft.md`).
    pub force_new_cluster: bool,
}

/// How a new manager joins an existing cluster.
#[derive(Clone)]
pub struct JoinConfig {
    /// A manager's cluster address.
    pub addr: String,
    /// The manager join token (needed on the first start only).
    pub token: Option<baton_state::Secret>,
}

impl std::fmt::Debug for JoinConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JoinConfig")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
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
    /// The keys could not be read or created.
    #[error(transparent)]
    Keys(#[from] keystore::KeystoreError),
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
    /// The data key (the store's, the sealed files'), held in memory only.
    pub data_key: baton_store::seal::SealKey,
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
///
/// In order: its keys (`keys/`, created on the first start; a locked
/// manager stops here); this manager's identity on disk (joining a cluster
/// through its CA on the first start with `join`); its Raft store (a new cluster of
/// one when this manager creates the cluster); the cluster port, so that
/// the other managers can reach it before anything needs a quorum; the
/// request to be added to the managers (a joining manager); the wait until
/// the store has recovered the committed state; then the identity checked
/// (renewed if unusable), the user API, and the loops.
pub async fn start(config: ManagerConfig) -> Result<RunningManager, StartError> {
    let dir = &config.data_dir;
    std::fs::create_dir_all(dir).map_err(|e| io("cannot create", dir, e))?;
    // The data key first: the store, the node key and the join tokens are
    // sealed with it.
    // Autolocked: nothing is served (no port is bound) until an operator
    // gives the unlock key on the local socket (`crate::unlock`).
    let (data_key, unlocked_with) = match keystore::open_or_create(&keystore::dir(dir))? {
        Keys::Unlocked(data_key) => (data_key, None),
        Keys::Locked => {
            let (data_key, key) = crate::unlock::wait_for_key(dir).await.map_err(|e| {
                io(
                    "cannot wait for the unlock key at",
                    &crate::unlock::socket_path(dir),
                    e,
                )
            })?;
            (data_key, Some(key.format().to_string()))
        }
    };
    if !identity::has_identity(dir)
        && let Some(join) = &config.join
    {
        let token = join.token.as_ref().ok_or_else(|| {
            StartError::Io(
                "joining a cluster needs the manager join token (--token or BATON_JOIN_TOKEN)"
                    .to_owned(),
            )
        })?;
        identity::join_cluster(dir, &data_key, &join.addr, token.expose()).await?;
    }
    // The store is this manager's Raft member; its id is the node id.
    let node_id = identity::load_or_create_node_id(dir)?;
    let member = raft_id(&node_id.0).ok_or_else(|| {
        StartError::Io(format!(
            "{}: {:?} is not a node id (16 hex digits)",
            dir.join("node/id").display(),
            node_id.0
        ))
    })?;
    // Bound first: with port 0 the address others dial (and the Raft
    // membership records) is only known once bound.
    let cluster_listener = TcpListener::bind(config.listen)
        .await
        .map_err(|e| StartError::Io(format!("cannot listen on {}: {e}", config.listen)))?;
    let cluster_addr = cluster_listener
        .local_addr()
        .map_err(|e| StartError::Io(e.to_string()))?;
    let advertised = config
        .advertise
        .clone()
        .unwrap_or_else(|| cluster_addr.to_string());
    // Raft traffic to other managers goes over the cluster port with this
    // manager's certificate.
    let raft_transport = Arc::new(GrpcRaftTransport::new());
    let store_config = RaftStoreConfig::new(
        baton_store::default_path(dir),
        member,
        advertised.clone(),
        data_key.clone(),
    );
    if config.force_new_cluster {
        if !identity::has_identity(dir) {
            return Err(StartError::Io(format!(
                "--force-new-cluster needs a manager's data dir; {} holds none",
                dir.display()
            )));
        }
        let forced = RaftStore::force_new_cluster(store_config.clone()).await?;
        tracing::warn!(
            kept_up_to = forced.last_applied,
            kept_beyond_commit = forced.beyond_commit,
            dropped_managers = ?forced.dropped.iter().map(|id| baton_store::raft::node_id(*id)).collect::<Vec<_>>(),
            "forced a new cluster of one manager from this data; remove the dropped managers with baton node rm"
        );
    }
    let raft_store = Arc::new(RaftStore::open(store_config, raft_transport.clone()).await?);
    let store: Arc<dyn Store> = raft_store.clone();
    let signer = Arc::new(Signer::new());
    let joined_root = identity::joined_root(dir)?;
    let is_member = raft_store.is_member().await?;
    // The certificate and roots the cluster port starts with.
    let (boot_cert, boot_key, boot_trust, created) = if identity::has_identity(dir) {
        let cert_path = dir.join("node").join("cert.pem");
        let cert =
            std::fs::read_to_string(&cert_path).map_err(|e| io("cannot read", &cert_path, e))?;
        let key = identity::read_node_key(dir, &data_key)?.ok_or_else(|| {
            StartError::Io(format!(
                "{} has a certificate but no key",
                dir.join("node").display()
            ))
        })?;
        let trust = match store.snapshot().state.cluster() {
            Some(cluster) => cluster.trust_pem(),
            None => joined_root.clone().ok_or_else(|| {
                StartError::Tls(format!(
                    "{} has a certificate but neither the cluster's state nor the root it joined with",
                    dir.display()
                ))
            })?,
        };
        (cert, key, trust, None)
    } else {
        // This manager creates the cluster: a Raft cluster of one, which
        // leads at once, then the cluster record and its identity.
        raft_store.initialize_alone().await?;
        let created = identity::load_or_create_with_key(
            dir,
            &data_key,
            store.as_ref(),
            &signer,
            config.cert_validity,
            config.external_ca.clone(),
        )
        .await?;
        let trust = store
            .snapshot()
            .state
            .cluster()
            .map(|c| c.trust_pem())
            .ok_or_else(|| StartError::Tls("the cluster record is missing".to_owned()))?;
        (
            created.cert_pem.clone(),
            zeroize::Zeroizing::new(created.key_pem.clone()),
            trust,
            Some(created),
        )
    };
    let trust = HotTrust::new(&boot_trust).map_err(|e| StartError::Tls(e.to_string()))?;
    // This manager's certificate, served by both listeners and renewed in
    // the background (started below) without a restart.
    let serving_cert =
        ServingCert::new(&boot_cert, &boot_key).map_err(|e| StartError::Tls(e.to_string()))?;
    raft_transport.set_tls(
        ClientTls::with_trust(&trust, serving_cert.cluster())
            .map_err(|e| StartError::Tls(e.to_string()))?,
    );
    let cluster_id = baton_pki::certificate_der(&boot_cert)
        .and_then(|der| baton_pki::peer_identity(&der))
        .map_err(|e| StartError::Tls(format!("this manager's certificate: {e}")))?
        .cluster_id;

    let manager_stop = CancellationToken::new();
    let server_stop = CancellationToken::new();
    // Whatever fails from here stops the listeners already started.
    let stop_on_failure = server_stop.clone().drop_guard();
    let mut tasks = Vec::new();

    // Sessions are held by the leader only (see `crate::leadership`).
    let dispatcher =
        DispatcherService::new(store.clone(), manager_stop.clone(), config.node_down_grace);

    // Cluster port: up before anything needs a quorum, since the other
    // managers need it to form one.
    let server_tls = ServerTls::with_trust(trust.clone(), &cluster_id, serving_cert.cluster())
        .map_err(|e| StartError::Tls(e.to_string()))?;
    let revocations = server_tls.revocations();
    let ca = Arc::new(ManagerCa::new(store.clone(), signer.clone()));
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

    if !is_member && joined_root.is_some() {
        let join = config.join.as_ref().ok_or_else(|| {
            StartError::Io(
                "this manager joined a cluster but was never added to its managers: start it again with --join ADDR".to_owned(),
            )
        })?;
        crate::raft::ask_to_be_added(&raft_transport, &join.addr, member, &advertised).await?;
    }
    raft_store.wait_ready().await?;
    // An identity loaded from disk is checked against the state now that it
    // is current: a certificate that cannot be served any more is replaced.
    let identity = match created {
        Some(created) => created,
        None => {
            let loaded = identity::load_or_create_with_key(
                dir,
                &data_key,
                store.as_ref(),
                &signer,
                config.cert_validity,
                config.external_ca.clone(),
            )
            .await?;
            if loaded.cert_pem != boot_cert {
                serving_cert
                    .swap(&loaded.cert_pem, &loaded.key_pem)
                    .map_err(|e| StartError::Tls(e.to_string()))?;
            }
            loaded
        }
    };
    let cluster = store
        .snapshot()
        .state
        .cluster()
        .cloned()
        .ok_or_else(|| StartError::Tls("the cluster record is missing".to_owned()))?;
    trust
        .set(&cluster.trust_pem())
        .map_err(|e| StartError::Tls(e.to_string()))?;

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
        data_key: data_key.clone(),
    }));
    tasks.push(tokio::spawn(serve(
        api_listener,
        api_tls,
        app,
        server_stop.clone(),
    )));

    let api_url = https_url(api_addr);
    // Where this manager serves, for agents (pushed the managers' cluster
    // addresses) and the admin config (every manager's API).
    let announce = baton_state::Command::SetManagerAddresses {
        id: identity.node_id.clone(),
        cluster: advertised.clone(),
        api: api_url.clone(),
    };
    if let Err(e) = store.propose(announce).await {
        tracing::warn!(error = %e, "could not record this manager's addresses");
    }
    let admin_written = (
        cluster.trust_pem(),
        manager_apis(&store.snapshot().state, &api_url),
    );
    let admin_config = write_admin_config(dir, &signer, &cluster, admin_written.1.clone())
        .await
        .map_err(StartError::Io)?;
    tasks.push(tokio::spawn(crate::leadership::run(
        raft_store.clone(),
        dispatcher.clone(),
        manager_stop.clone(),
    )));
    // This manager's keys follow the cluster's autolock setting.
    tasks.push(tokio::spawn(crate::unlock::follow(
        dir.clone(),
        data_key.clone(),
        unlocked_with,
        store.clone(),
        manager_stop.clone(),
    )));
    // Started last: a start that fails earlier leaves no loop writing files.
    let renew_now = Arc::new(tokio::sync::Notify::new());
    tasks.push(tokio::spawn(crate::renew::renew_loop(
        SelfRenewal {
            store: store.clone(),
            signer: signer.clone(),
            now: renew_now.clone(),
            node_id: identity.node_id.clone(),
            data_dir: dir.clone(),
            data_key: data_key.clone(),
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
            admin_written,
            raft: raft_store.clone(),
        },
        manager_stop.clone(),
    )));
    stop_on_failure.disarm();
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
        data_key,
        manager_stop,
        server_stop,
        tasks,
        raft_store,
    })
}

impl RunningManager {
    /// Hands over the leadership if it leads, stops the control loop and
    /// sessions (no new decisions), then the listeners, then closes the store.
    pub async fn stop(self) {
        // A leader hands over first, so the others need no election.
        self.raft_store
            .hand_over_leadership(Duration::from_secs(2))
            .await;
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
