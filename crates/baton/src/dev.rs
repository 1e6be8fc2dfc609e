//! `baton dev`: a manager and an agent in one process, in the foreground.
//!
//! It runs the same code as `baton manager` and `baton agent`: the manager
//! creates a cluster in `DIR/manager`, the agent joins it with the worker token
//! over the cluster port (gRPC over mutual TLS, on loopback) and keeps its
//! identity in `DIR/agent`. The user API listens on loopback; `DIR/client.toml`
//! (mode 0600) holds the admin client certificate to call it.

use std::fs;
use std::io::Write as _;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::time::Duration;

use baton_manager::identity::{DEFAULT_CERT_VALIDITY, stored_tokens_with_key};
use baton_manager::runtime::{ManagerConfig, https_url};
use clap::Args;

use crate::Failure;
use crate::node::{
    AgentOptions, LabelArgs, init_tracing, shutdown_signal, start_agent, start_manager,
};

/// `baton dev` options.
#[derive(Debug, Args)]
pub struct DevArgs {
    /// Where the state, credentials, task logs and client config live.
    #[arg(long, value_name = "DIR")]
    data_dir: PathBuf,
    /// API listen address. Loopback by default: the API is for this machine.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:7450")]
    api: SocketAddr,
    #[command(flatten)]
    labels: LabelArgs,
    /// Log filter (tracing `EnvFilter` syntax), also read from BATON_LOG.
    #[arg(long, env = "BATON_LOG", default_value = "info")]
    log: String,
}

/// Runs `baton dev` until SIGINT or SIGTERM.
pub async fn run(args: DevArgs) -> Result<(), Failure> {
    init_tracing(&args.log);
    let labels = args.labels.to_map()?;
    let dir = args.data_dir;
    fs::create_dir_all(&dir)
        .and_then(|()| fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)))
        .map_err(|e| Failure::op(format!("cannot create {}: {e}", dir.display())))?;
    let manager_dir = dir.join("manager");
    let manager = start_manager(ManagerConfig {
        data_dir: manager_dir.clone(),
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        api: args.api,
        advertise: None,
        cert_validity: DEFAULT_CERT_VALIDITY,
        node_down_grace: baton_manager::dispatcher::NODE_DOWN_GRACE,
        external_ca: None,
        join: None,
        force_new_cluster: false,
    })
    .await?;

    // The admin config, where `baton dev` users expect it.
    let client_path = dir.join("client.toml");
    let admin = fs::read(&manager.admin_config).map_err(|e| {
        Failure::op(format!(
            "cannot read {}: {e}",
            manager.admin_config.display()
        ))
    })?;
    baton_files::write_atomic(&client_path, &admin, 0o600)
        .map_err(|e| Failure::op(format!("cannot write {}: {e}", client_path.display())))?;

    // The agent joins like any other: with the worker token, over mutual TLS.
    let token = stored_tokens_with_key(&manager_dir, &manager.data_key)
        .map_err(|e| Failure::op(e.to_string()))?
        .map(|t| t.worker);
    let agent = start_agent(
        dir.join("agent"),
        &manager.cluster_addr.to_string(),
        token.as_deref(),
        AgentOptions {
            enable_raw: true,
            labels,
            ..AgentOptions::default()
        },
    )
    .await;
    let mut agent = match agent {
        Ok(agent) => agent,
        Err(e) => {
            manager.stop().await;
            return Err(e);
        }
    };

    // Ready means a submitted job can run: wait for the agent's node.
    let mut changes = manager.store.subscribe();
    let node_id = agent.node_id.clone();
    let registered = matches!(
        tokio::time::timeout(
            Duration::from_secs(30),
            changes.wait_for(|snap| {
                snap.state
                    .node(&node_id)
                    .is_some_and(|n| n.state == baton_state::NodeState::Ready)
            }),
        )
        .await,
        Ok(Ok(_))
    );
    drop(changes);
    if !registered {
        agent.stop.cancel();
        let _ = agent.task.await;
        manager.stop().await;
        return Err(Failure::op(
            "the agent did not register its node within 30s",
        ));
    }

    println!(
        "baton dev ready: api {} · client config {} · try: baton --config {} job run examples/web.yaml",
        https_url(manager.api_addr),
        client_path.display(),
        client_path.display()
    );
    let _ = std::io::stdout().flush();

    let agent_early = tokio::select! {
        () = shutdown_signal() => None,
        done = &mut agent.task => Some(done),
    };
    tracing::info!("shutting down");
    // No new decisions first, then the agent stops its tasks, then the rest.
    manager.stop_control();
    let agent_result = match agent_early {
        Some(done) => done,
        None => {
            agent.stop.cancel();
            agent.task.await
        }
    };
    manager.stop().await;
    match agent_result {
        Ok(Ok(())) => {
            tracing::info!("stopped");
            Ok(())
        }
        Ok(Err(e)) => Err(Failure::op(format!("agent failed: {e}"))),
        Err(e) => Err(Failure::op(format!("agent panicked: {e}"))),
    }
}
