//! `baton dev`: a manager and an agent in one process, in the foreground.
//!
//! The agent talks to the manager's dispatcher through the same
//! [`baton_rpc::Dispatcher`] trait a remote agent uses; only the transport is
//! in-process. The API listens on loopback, over TLS, behind a bearer token that
//! is written, with the CA certificate, to `DIR/client.toml` (mode 0600).

use std::fs;
use std::io::Write as _;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use baton_api::ClientConfig;
use baton_manager::api::{AppState, router, serve, server_tls_config};
use baton_manager::dispatcher::DispatcherService;
use baton_rpc::Dispatcher;
use baton_store::{LocalStore, LocalStoreConfig, Store};
use clap::Args;
use tokio_util::sync::CancellationToken;

use crate::Failure;

/// `baton dev` options.
#[derive(Debug, Args)]
pub struct DevArgs {
    /// Where the state, credentials, task logs and client config live.
    #[arg(long, value_name = "DIR")]
    data_dir: PathBuf,
    /// API listen address. Loopback by default: the API is for this machine.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:7450")]
    api: SocketAddr,
    /// Log filter (tracing `EnvFilter` syntax), also read from BATON_LOG.
    #[arg(long, env = "BATON_LOG", default_value = "info")]
    log: String,
}

fn io_failure(what: &str, path: &Path, e: std::io::Error) -> Failure {
    Failure::op(format!("{what} {}: {e}", path.display()))
}

/// Writes a file atomically with `mode` (see [`baton_files::write_atomic`]).
fn write_private(path: &Path, bytes: &[u8], mode: u32) -> Result<(), Failure> {
    baton_files::write_atomic(path, bytes, mode).map_err(|e| io_failure("cannot write", path, e))
}

/// The API's TLS material, made once and kept in `DIR/tls`.
struct Credentials {
    ca_cert_pem: String,
    cert_pem: String,
    key_pem: String,
    token: String,
}

fn load_or_create_credentials(dir: &Path, api: SocketAddr) -> Result<Credentials, Failure> {
    let tls_dir = dir.join("tls");
    let (ca_path, cert_path, key_path) = (
        tls_dir.join("ca.pem"),
        tls_dir.join("api.pem"),
        tls_dir.join("api-key.pem"),
    );
    let digest_path = dir.join("api-token.sha256");
    let client_path = dir.join("client.toml");
    let existing = (|| {
        let ca_cert_pem = fs::read_to_string(&ca_path).ok()?;
        let cert_pem = fs::read_to_string(&cert_path).ok()?;
        let key_pem = fs::read_to_string(&key_path).ok()?;
        let token = ClientConfig::load(&client_path).ok()?.token;
        let digest = fs::read_to_string(&digest_path).ok()?;
        (digest.trim() == baton_pki::hex(&baton_pki::token_digest(&token))).then_some(Credentials {
            ca_cert_pem,
            cert_pem,
            key_pem,
            token,
        })
    })();
    if let Some(creds) = existing {
        return Ok(creds);
    }
    fs::create_dir_all(&tls_dir).map_err(|e| io_failure("cannot create", &tls_dir, e))?;
    let mut sans = vec![
        "127.0.0.1".to_owned(),
        "::1".to_owned(),
        "localhost".to_owned(),
    ];
    let ip = api.ip().to_string();
    if !api.ip().is_unspecified() && !sans.contains(&ip) {
        sans.push(ip);
    }
    let server = baton_pki::generate_server_credentials("baton-dev", &sans)
        .map_err(|e| Failure::op(e.to_string()))?;
    let token = baton_pki::generate_token().map_err(|e| Failure::op(e.to_string()))?;
    write_private(&ca_path, server.ca_cert_pem.as_bytes(), 0o644)?;
    write_private(&cert_path, server.cert_pem.as_bytes(), 0o644)?;
    write_private(&key_path, server.key_pem.as_bytes(), 0o600)?;
    let digest = baton_pki::hex(&baton_pki::token_digest(&token));
    write_private(&digest_path, digest.as_bytes(), 0o600)?;
    Ok(Credentials {
        ca_cert_pem: server.ca_cert_pem.clone(),
        cert_pem: server.cert_pem.clone(),
        key_pem: server.key_pem.clone(),
        token,
    })
}

fn init_tracing(filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(term) => term,
        Err(e) => {
            tracing::error!(error = %e, "cannot watch SIGTERM");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

/// Runs `baton dev` until SIGINT or SIGTERM.
pub async fn run(args: DevArgs) -> Result<(), Failure> {
    init_tracing(&args.log);
    let dir = args.data_dir;
    fs::create_dir_all(&dir).map_err(|e| io_failure("cannot create", &dir, e))?;
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o700))
        .map_err(|e| io_failure("cannot restrict", &dir, e))?;
    let creds = load_or_create_credentials(&dir, args.api)?;

    let manager_dir = dir.join("manager");
    fs::create_dir_all(&manager_dir).map_err(|e| io_failure("cannot create", &manager_dir, e))?;
    let store = LocalStore::open(LocalStoreConfig::new(baton_store::default_path(
        &manager_dir,
    )))
    .map_err(|e| Failure::op(e.to_string()))?;
    let store: Arc<LocalStore> = Arc::new(store);
    let store_dyn: Arc<dyn Store> = store.clone();

    // Cancelled in order on shutdown: control loop and dispatcher first (no new
    // decisions), then the agent (stops the tasks), then the API.
    let manager_stop = CancellationToken::new();
    let agent_stop = CancellationToken::new();
    let api_stop = CancellationToken::new();

    let dispatcher = DispatcherService::new(store_dyn.clone(), manager_stop.clone());
    let control = tokio::spawn(baton_manager::control::run(
        store_dyn.clone(),
        manager_stop.clone(),
    ));

    let tls = server_tls_config(&creds.cert_pem, &creds.key_pem)
        .map_err(|e| Failure::op(e.to_string()))?;
    let listener = tokio::net::TcpListener::bind(args.api)
        .await
        .map_err(|e| Failure::op(format!("cannot listen on {}: {e}", args.api)))?;
    let local = listener
        .local_addr()
        .map_err(|e| Failure::op(format!("cannot read the listen address: {e}")))?;
    let app = router(Arc::new(AppState {
        store: store_dyn.clone(),
        dispatcher: dispatcher.clone(),
        token_digest: baton_pki::token_digest(&creds.token),
    }));
    let api = tokio::spawn(serve(listener, tls, app, api_stop.clone()));

    let host = if local.ip().is_unspecified() {
        "127.0.0.1".to_owned()
    } else if local.is_ipv6() {
        format!("[{}]", local.ip())
    } else {
        local.ip().to_string()
    };
    let client_config = ClientConfig {
        api: format!("https://{host}:{}", local.port()),
        token: creds.token.clone(),
        ca_cert: creds.ca_cert_pem.clone(),
    };
    let client_path = dir.join("client.toml");
    write_private(&client_path, client_config.to_toml().as_bytes(), 0o600)?;

    let agent_dispatcher: Arc<dyn Dispatcher> = dispatcher.clone();
    let agent_config = baton_agent::AgentConfig::new(dir.join("agent"), hostname(), true);
    let agent = tokio::spawn(baton_agent::Agent::run(
        agent_config,
        agent_dispatcher,
        agent_stop.clone(),
    ));

    // Ready means a submitted job can run: wait for the agent's node to register.
    let mut changes = store_dyn.subscribe();
    let registered = matches!(
        tokio::time::timeout(
            std::time::Duration::from_secs(30),
            changes.wait_for(|snap| {
                snap.state
                    .nodes()
                    .any(|n| n.state == baton_state::NodeState::Ready)
            }),
        )
        .await,
        Ok(Ok(_))
    );
    if !registered {
        return Err(Failure::op(
            "the agent did not register its node within 30s",
        ));
    }
    drop(changes);

    println!(
        "baton dev ready: api {} · client config {} · try: baton --config {} job run examples/web.yaml",
        client_config.api,
        client_path.display(),
        client_path.display()
    );
    let _ = std::io::stdout().flush();

    let mut agent = agent;
    let agent_early = tokio::select! {
        () = shutdown_signal() => None,
        done = &mut agent => Some(done),
    };
    tracing::info!("shutting down");
    manager_stop.cancel();
    let _ = control.await;
    let agent_result = match agent_early {
        Some(done) => done,
        None => {
            agent_stop.cancel();
            agent.await
        }
    };
    api_stop.cancel();
    let _ = api.await;
    drop(dispatcher);
    drop(store_dyn);
    if let Ok(store) = Arc::try_unwrap(store) {
        store.close();
    }
    match agent_result {
        Ok(Ok(())) => {
            tracing::info!("stopped");
            Ok(())
        }
        Ok(Err(e)) => Err(Failure::op(format!("agent failed: {e}"))),
        Err(e) => Err(Failure::op(format!("agent panicked: {e}"))),
    }
}

fn hostname() -> String {
    fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "localhost".to_owned())
}
