//! `baton manager` and `baton agent`: the two long-running roles.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use baton_manager::identity::ExternalCaInit;
use baton_manager::runtime::{self, ManagerConfig, RunningManager};
use baton_rpc::Dispatcher;
use baton_spec::Resources;
use clap::{Args, Subcommand};
use tokio_util::sync::CancellationToken;

use crate::Failure;

/// `baton manager`: run a manager (its options), or `baton manager unlock`.
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct ManagerCli {
    #[command(subcommand)]
    pub command: Option<ManagerCmd>,
    #[command(flatten)]
    pub run: Option<ManagerArgs>,
}

/// `baton manager` subcommands.
#[derive(Debug, Subcommand)]
pub enum ManagerCmd {
    /// Give a locked manager (autolock) the cluster's unlock key. The key is
    /// read from a prompt, or from standard input when it is not a
    /// terminal; never from an argument, which `ps` would show.
    Unlock {
        /// The locked manager's data dir (its unlock socket is in `keys/`).
        #[arg(long, value_name = "DIR")]
        data_dir: PathBuf,
    },
}

/// `baton manager` options.
#[derive(Debug, Args)]
pub struct ManagerArgs {
    /// Where the state, the cluster CA and this manager's identity live.
    #[arg(long, value_name = "DIR")]
    pub data_dir: PathBuf,
    /// Cluster port (agents and managers connect here; mutual TLS).
    #[arg(long, value_name = "ADDR", default_value = "0.0.0.0:7451")]
    pub listen: SocketAddr,
    /// User API port (HTTPS with admin client certificates).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:7450")]
    pub api: SocketAddr,
    /// Cluster address others should use, when `--listen` is not it.
    #[arg(long, value_name = "ADDR")]
    pub advertise: Option<String>,
    /// How long a node of a small cluster may go without a heartbeat before it
    /// is marked down and its tasks move elsewhere (agents heartbeat every
    /// second up to 50 nodes; on a larger cluster the period grows to keep
    /// the manager under 50 heartbeats a second, and the grace grows by three
    /// times that growth).
    #[arg(long, value_name = "DURATION", default_value = "4s", value_parser = duration)]
    pub node_down_grace: Duration,
    /// Lifetime of node certificates (renewed at 50-80% of it).
    #[arg(long, value_name = "DURATION", default_value = "2160h", value_parser = duration)]
    pub cert_expiry: Duration,
    /// Create the cluster with an external CA: the managers hold no root
    /// key and relay every CSR to this cfssl-compatible authenticated
    /// signing endpoint (https://HOST:PORT/api/v1/cfssl/authsign). Used when
    /// the cluster is created; later starts read it from the state.
    #[arg(long, value_name = "URL", requires_all = ["external_ca_cert", "external_ca_key_file"])]
    pub external_ca: Option<String>,
    /// With --external-ca: the external CA's root certificate (PEM), which
    /// becomes the cluster's root. The signer's TLS certificate must chain to it.
    #[arg(long, value_name = "FILE", requires = "external_ca")]
    pub external_ca_cert: Option<PathBuf>,
    /// With --external-ca: a file holding the signer's authentication key
    /// (cfssl "standard" auth key, hex).
    #[arg(long, value_name = "FILE", requires = "external_ca")]
    pub external_ca_key_file: Option<PathBuf>,
    /// Join the cluster of the manager at this cluster address as another
    /// manager (with the manager join token) instead of creating a cluster.
    #[arg(long, value_name = "ADDR", conflicts_with = "external_ca")]
    pub join: Option<String>,
    /// With --join: the manager join token, needed on the first start only.
    /// Prefer BATON_JOIN_TOKEN: a command-line argument is visible to `ps`.
    #[arg(
        long,
        env = "BATON_JOIN_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN",
        requires = "join"
    )]
    pub token: Option<String>,
    /// Disaster recovery when a majority of the managers is lost for good:
    /// restart this manager, from its own data, as the only member of a new
    /// cluster. Writes it had not applied are lost; the other managers must
    /// never be started again with their old data. Start the others anew
    /// with --join, and `baton node rm` the lost ones.
    #[arg(long, conflicts_with = "join")]
    pub force_new_cluster: bool,
    /// Log filter (tracing `EnvFilter` syntax), also read from BATON_LOG.
    #[arg(long, env = "BATON_LOG", default_value = "info")]
    pub log: String,
}

/// Reads the external CA options into what the manager needs.
fn external_ca(args: &ManagerArgs) -> Result<Option<ExternalCaInit>, Failure> {
    let (Some(url), Some(cert), Some(key)) = (
        &args.external_ca,
        &args.external_ca_cert,
        &args.external_ca_key_file,
    ) else {
        return Ok(None);
    };
    let read = |path: &PathBuf, what: &str| {
        std::fs::read_to_string(path)
            .map_err(|e| Failure::usage(format!("{what} {}: {e}", path.display())))
    };
    Ok(Some(ExternalCaInit {
        url: url.clone(),
        root_pem: read(cert, "--external-ca-cert")?,
        auth_key: baton_state::Secret::new(read(key, "--external-ca-key-file")?.trim().to_owned()),
    }))
}

/// `baton agent` options.
#[derive(Debug, Args)]
pub struct AgentArgs {
    /// Where this node's identity, task directories and logs live.
    #[arg(long, value_name = "DIR")]
    pub data_dir: PathBuf,
    /// A manager's cluster address.
    #[arg(long, value_name = "ADDR")]
    pub join: String,
    /// Join token, needed on the first start only. Prefer BATON_JOIN_TOKEN:
    /// a command-line argument is visible to `ps`.
    #[arg(
        long,
        env = "BATON_JOIN_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    pub token: Option<String>,
    /// Offer the `raw` driver (no isolation: off unless asked for).
    #[arg(long)]
    pub enable_raw: bool,
    /// CPU to offer to tasks (e.g. 2, 500m); default: every core.
    #[arg(long, value_parser = cpu)]
    pub cpu: Option<u64>,
    /// Memory to offer to tasks (e.g. 4Gi); default: all of it.
    #[arg(long, value_parser = memory)]
    pub memory: Option<u64>,
    /// Disk to offer to tasks (e.g. 20Gi); default: the space free on the
    /// filesystem holding --data-dir when the agent starts.
    #[arg(long, value_name = "SIZE", value_parser = memory)]
    pub disk: Option<u64>,
    #[command(flatten)]
    pub labels: LabelArgs,
    /// The IP address other hosts reach this node at. Tasks find it in
    /// BATON_ADDR_<NAME> of their published ports; default 0.0.0.0 (any
    /// address of the node).
    #[arg(long, value_name = "IP")]
    pub advertise_ip: Option<IpAddr>,
    /// The cgroup under which each exec task gets its own, in every
    /// hierarchy (cgroup v1) or in the unified one (v2).
    #[arg(long, value_name = "PATH", default_value = baton_agent::DEFAULT_CGROUP_PARENT)]
    pub cgroup_parent: String,
    /// Log filter (tracing `EnvFilter` syntax), also read from BATON_LOG.
    #[arg(long, env = "BATON_LOG", default_value = "info")]
    pub log: String,
}

/// `--label KEY=VALUE`, of `baton agent` and `baton dev`.
#[derive(Debug, Default, Args)]
pub struct LabelArgs {
    /// Label this node (repeatable): placement rules see it as
    /// node.labels.KEY. Keys: 1 to 63 of A-Z a-z 0-9 . _ / -, starting with
    /// a letter or digit; at most 64 labels. The node registers them at
    /// every start; `baton node label` overrides them from the cluster.
    #[arg(long = "label", value_name = "KEY=VALUE", value_parser = label)]
    pub labels: Vec<(String, String)>,
}

impl LabelArgs {
    /// The labels as a map: a key given twice, or too many labels, is a
    /// usage error.
    pub fn to_map(&self) -> Result<BTreeMap<String, String>, Failure> {
        let mut labels = BTreeMap::new();
        for (key, value) in &self.labels {
            if labels.insert(key.clone(), value.clone()).is_some() {
                return Err(Failure::usage(format!(
                    "--label {key} is given more than once"
                )));
            }
        }
        baton_spec::check_labels(&labels).map_err(|e| Failure::usage(format!("--label: {e}")))?;
        Ok(labels)
    }
}

fn duration(s: &str) -> Result<Duration, String> {
    baton_spec::parse_duration(s)
}

fn cpu(s: &str) -> Result<u64, String> {
    baton_spec::parse_cpu(s)
}

fn memory(s: &str) -> Result<u64, String> {
    baton_spec::parse_memory(s)
}

/// `KEY=VALUE`, checked.
pub fn label(s: &str) -> Result<(String, String), String> {
    baton_spec::parse_label(s)
}

/// Starts the tracing subscriber (plain text on stderr, colours on a terminal).
pub fn init_tracing(filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
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

/// Starts a manager with `config`, mapping errors for the CLI.
pub async fn start_manager(config: ManagerConfig) -> Result<RunningManager, Failure> {
    runtime::start(config)
        .await
        .map_err(|e| Failure::op(format!("manager: {e}")))
}

/// `baton manager …`: run one, or unlock one.
pub async fn manager(cli: ManagerCli) -> Result<(), Failure> {
    match (cli.command, cli.run) {
        (Some(ManagerCmd::Unlock { data_dir }), _) => unlock(&data_dir).await,
        (None, Some(args)) => run_manager(args).await,
        (None, None) => Err(Failure::usage("baton manager needs --data-dir DIR")),
    }
}

/// `baton manager unlock`: reads the key (without echo on a terminal) and
/// gives it to the locked manager of `data_dir`.
async fn unlock(data_dir: &Path) -> Result<(), Failure> {
    let key = zeroize::Zeroizing::new(read_unlock_key()?);
    if key.trim().is_empty() {
        return Err(Failure::usage("no unlock key given"));
    }
    baton_manager::unlock::send_key(data_dir, &key)
        .await
        .map_err(Failure::op)?;
    println!("manager unlocked");
    Ok(())
}

/// One line from a prompt with echo off, or from stdin when it is not a
/// terminal.
fn read_unlock_key() -> Result<String, Failure> {
    use std::io::{BufRead, IsTerminal, Write};
    let stdin = std::io::stdin();
    let terminal = stdin.is_terminal();
    let saved = if terminal {
        eprint!("Unlock key: ");
        let _ = std::io::stderr().flush();
        let saved = rustix::termios::tcgetattr(&stdin).ok();
        if let Some(saved) = &saved {
            let mut quiet = saved.clone();
            quiet.local_modes -= rustix::termios::LocalModes::ECHO;
            let _ =
                rustix::termios::tcsetattr(&stdin, rustix::termios::OptionalActions::Now, &quiet);
        }
        saved
    } else {
        None
    };
    let mut line = String::new();
    let read = stdin.lock().read_line(&mut line);
    if let Some(saved) = saved {
        let _ = rustix::termios::tcsetattr(&stdin, rustix::termios::OptionalActions::Now, &saved);
    }
    if terminal {
        eprintln!();
    }
    read.map_err(|e| Failure::op(format!("cannot read the unlock key: {e}")))?;
    Ok(line)
}

/// Runs `baton manager` until SIGINT or SIGTERM.
pub async fn run_manager(args: ManagerArgs) -> Result<(), Failure> {
    init_tracing(&args.log);
    let external_ca = external_ca(&args)?;
    let start = start_manager(ManagerConfig {
        data_dir: args.data_dir,
        listen: args.listen,
        api: args.api,
        advertise: args.advertise,
        cert_validity: args.cert_expiry,
        node_down_grace: args.node_down_grace,
        external_ca,
        join: args.join.map(|addr| runtime::JoinConfig {
            addr,
            token: args.token.map(baton_state::Secret::new),
        }),
        force_new_cluster: args.force_new_cluster,
    });
    // A locked manager waits in `start` for its unlock key: a signal ends
    // the wait.
    let manager = tokio::select! {
        manager = start => manager?,
        () = shutdown_signal() => {
            tracing::info!("shutting down");
            return Ok(());
        }
    };
    if let Some(tokens) = &manager.created {
        println!(
            "cluster {} created. Join tokens (also: baton cluster join-token worker|manager):",
            manager.cluster_id
        );
        println!("  worker:  {}", tokens.worker);
        println!("  manager: {}", tokens.manager);
    }
    println!(
        "baton manager ready: node {} · cluster port {} · api {} · admin config {}",
        manager.node_id,
        manager.cluster_addr,
        runtime::https_url(manager.api_addr),
        manager.admin_config.display()
    );
    shutdown_signal().await;
    tracing::info!("shutting down");
    manager.stop().await;
    Ok(())
}

/// A running agent: its task, its stop token.
pub struct RunningAgent {
    /// Resolves when the agent ends.
    pub task: tokio::task::JoinHandle<Result<(), baton_agent::AgentError>>,
    /// Cancel to stop it (and its tasks).
    pub stop: CancellationToken,
    /// Its node id.
    pub node_id: baton_state::NodeId,
}

/// How an agent offers its node, besides the cluster it joins.
#[derive(Clone, Debug, Default)]
pub struct AgentOptions {
    /// Offer the `raw` driver.
    pub enable_raw: bool,
    /// CPU to offer, millicores; `None` measures.
    pub cpu: Option<u64>,
    /// Memory to offer, bytes; `None` measures.
    pub memory: Option<u64>,
    /// Disk to offer, bytes; `None` measures the data dir's filesystem.
    pub disk: Option<u64>,
    /// The node's labels.
    pub labels: BTreeMap<String, String>,
    /// The node's address for published ports.
    pub advertise_ip: Option<IpAddr>,
    /// The cgroup parent of exec tasks; `None` for the default.
    pub cgroup_parent: Option<String>,
}

impl AgentOptions {
    /// The capacity to configure: `None` (the agent measures it all) unless
    /// something is given, then the rest measured here.
    fn capacity(&self, data_dir: &Path) -> Option<Resources> {
        if self.cpu.is_none() && self.memory.is_none() && self.disk.is_none() {
            return None;
        }
        let host = baton_agent::measure_capacity(data_dir);
        Some(Resources {
            cpu_millis: self.cpu.unwrap_or(host.cpu_millis),
            memory_bytes: self.memory.unwrap_or(host.memory_bytes),
            disk_bytes: self.disk.unwrap_or(host.disk_bytes),
        })
    }
}

/// Joins (or rejoins) a cluster and starts the agent.
pub async fn start_agent(
    data_dir: PathBuf,
    manager_addr: &str,
    token: Option<&str>,
    options: AgentOptions,
) -> Result<RunningAgent, Failure> {
    std::fs::create_dir_all(&data_dir)
        .map_err(|e| Failure::op(format!("cannot create {}: {e}", data_dir.display())))?;
    let identity = baton_agent::identity::load_or_join(&data_dir, manager_addr, token)
        .await
        .map_err(|e| Failure::op(format!("join: {e}")))?;
    let tls = identity
        .client_tls()
        .map_err(|e| Failure::op(format!("tls: {e}")))?;
    // Every manager this node knows, the join address always among them; the
    // session goes to the leader, found through them.
    let managers = baton_agent::ManagerList::load(&data_dir, manager_addr);
    let connector = baton_agent::managers::grpc_connector(tls);
    // A malformed --join fails here rather than in an endless retry.
    connector(manager_addr)
        .map_err(|e| Failure::op(format!("cannot reach {manager_addr}: {e}")))?;
    let dispatcher: Arc<dyn Dispatcher> = Arc::new(baton_agent::FailoverDispatcher::new(
        managers.clone(),
        connector,
    ));
    let stop = CancellationToken::new();
    tokio::spawn(baton_agent::identity::renew_loop(
        identity.clone(),
        managers.clone(),
        stop.clone(),
    ));
    let capacity = options.capacity(&data_dir);
    let mut config = baton_agent::AgentConfig::new(data_dir, hostname(), options.enable_raw);
    config.capacity = capacity;
    config.labels = options.labels;
    config.advertise_ip = options.advertise_ip;
    // Exec tasks' shims are this very binary.
    config.shim = std::env::current_exe().ok();
    if let Some(parent) = options.cgroup_parent {
        config.cgroup_parent = parent;
    }
    let node_id = identity.node_id.clone();
    // What the cluster pushes for the node: roots (a root CA rotation) go to
    // the identity, the managers to the list.
    let (updates_tx, mut updates_rx) = tokio::sync::mpsc::unbounded_channel();
    let update_identity = identity.clone();
    tokio::spawn(async move {
        while let Some(update) = updates_rx.recv().await {
            match update {
                baton_agent::ClusterUpdate::Trust(update) => {
                    if let Err(e) = update_identity.apply_trust(&update) {
                        tracing::error!(error = %e, "cannot take the cluster's new roots");
                    }
                }
                baton_agent::ClusterUpdate::Managers(addrs) => managers.update(addrs),
            }
        }
    });
    let task = tokio::spawn(baton_agent::Agent::run(
        config,
        dispatcher,
        Some(updates_tx),
        stop.clone(),
    ));
    Ok(RunningAgent {
        task,
        stop,
        node_id,
    })
}

/// Runs `baton agent` until SIGINT or SIGTERM.
pub async fn run_agent(args: AgentArgs) -> Result<(), Failure> {
    init_tracing(&args.log);
    let options = AgentOptions {
        enable_raw: args.enable_raw,
        cgroup_parent: Some(args.cgroup_parent),
        cpu: args.cpu,
        memory: args.memory,
        disk: args.disk,
        labels: args.labels.to_map()?,
        advertise_ip: args.advertise_ip,
    };
    let mut agent = start_agent(args.data_dir, &args.join, args.token.as_deref(), options).await?;
    println!(
        "baton agent ready: node {} · manager {}",
        agent.node_id, args.join
    );
    let ended = tokio::select! {
        () = shutdown_signal() => None,
        done = &mut agent.task => Some(done),
    };
    let result = match ended {
        Some(done) => done,
        None => {
            agent.stop.cancel();
            agent.task.await
        }
    };
    match result {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(Failure::op(format!("agent: {e}"))),
        Err(e) => Err(Failure::op(format!("agent panicked: {e}"))),
    }
}

/// This machine's host name.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "localhost".to_owned())
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        agent: AgentArgs,
    }

    fn parse(extra: &[&str]) -> Result<AgentArgs, clap::Error> {
        let mut argv = vec!["agent", "--data-dir", "/tmp/x", "--join", "127.0.0.1:7451"];
        argv.extend_from_slice(extra);
        Cli::try_parse_from(argv).map(|cli| cli.agent)
    }

    #[derive(Debug, Parser)]
    struct ManagerParser {
        #[command(flatten)]
        manager: ManagerCli,
    }

    #[test]
    fn manager_runs_with_a_data_dir_or_unlocks_one_never_taking_the_key_as_an_argument() {
        let run = ManagerParser::try_parse_from(["manager", "--data-dir", "/d"]).expect("run");
        assert!(run.manager.command.is_none());
        assert_eq!(run.manager.run.expect("args").data_dir, PathBuf::from("/d"));
        let unlock = ManagerParser::try_parse_from(["manager", "unlock", "--data-dir", "/d"])
            .expect("unlock");
        assert!(matches!(
            unlock.manager.command,
            Some(ManagerCmd::Unlock { ref data_dir }) if data_dir == Path::new("/d")
        ));
        for argv in [
            vec!["manager", "unlock", "--data-dir", "/d", "BATON-UNLOCK-1-x"],
            vec![
                "manager",
                "unlock",
                "--data-dir",
                "/d",
                "--key",
                "BATON-UNLOCK-1-x",
            ],
            vec!["manager"],
        ] {
            assert!(ManagerParser::try_parse_from(&argv).is_err(), "{argv:?}");
        }
    }

    #[test]
    fn labels_are_repeatable_key_value_pairs() {
        let args = parse(&[
            "--label", "zone=a", "--label", "disk=ssd", "--label", "note=",
        ])
        .expect("parse");
        assert_eq!(
            args.labels.to_map().expect("labels"),
            BTreeMap::from([
                ("disk".to_owned(), "ssd".to_owned()),
                ("note".to_owned(), String::new()),
                ("zone".to_owned(), "a".to_owned()),
            ])
        );
        assert!(
            parse(&[])
                .expect("parse")
                .labels
                .to_map()
                .expect("none")
                .is_empty()
        );
    }

    #[test]
    fn bad_labels_are_usage_errors() {
        for (label, expected) in [
            ("zone", "is not a label (expected key=value"),
            ("-zone=a", "must start with a letter or digit"),
            ("zone=a\tb", "control character"),
        ] {
            let err = parse(&[&format!("--label={label}")]).expect_err(label);
            assert!(err.to_string().contains(expected), "{label}: {err}");
        }
        let twice = parse(&["--label", "zone=a", "--label", "zone=b"]).expect("parse");
        let err = twice.labels.to_map().expect_err("twice");
        assert_eq!(err.code, 2);
        assert_eq!(err.message, "--label zone is given more than once");
        let many: Vec<String> = (0..65).map(|i| format!("k{i}=v")).collect();
        let mut argv = Vec::new();
        for label in &many {
            argv.extend(["--label", label.as_str()]);
        }
        let err = parse(&argv)
            .expect("parse")
            .labels
            .to_map()
            .expect_err("too many");
        assert_eq!(err.message, "--label: 65 labels, more than the limit of 64");
    }

    #[test]
    fn disk_and_address_parse() {
        let args = parse(&["--disk", "20Gi", "--advertise-ip", "10.0.0.5"]).expect("parse");
        assert_eq!(args.disk, Some(20 << 30));
        assert_eq!(args.advertise_ip, Some(IpAddr::from([10, 0, 0, 5])));
        assert!(parse(&["--disk", "lots"]).is_err());
        assert!(parse(&["--advertise-ip", "host.example"]).is_err());
    }

    #[test]
    fn a_capacity_option_measures_only_what_is_not_given() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(AgentOptions::default().capacity(dir.path()), None);
        let options = AgentOptions {
            disk: Some(5 << 30),
            ..AgentOptions::default()
        };
        let capacity = options.capacity(dir.path()).expect("configured");
        assert_eq!(capacity.disk_bytes, 5 << 30);
        assert_eq!(capacity.cpu_millis, baton_agent::host_capacity().cpu_millis);
        let options = AgentOptions {
            cpu: Some(500),
            ..AgentOptions::default()
        };
        let capacity = options.capacity(dir.path()).expect("configured");
        assert_eq!(capacity.cpu_millis, 500);
        assert!(capacity.disk_bytes > 0, "measured");
    }
}
