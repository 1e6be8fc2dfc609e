//! The client subcommands: each loads the client config and calls the API.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use baton_api::{
    ApiClient, ClientConfig, ClusterInfo, ClusterSettingsRequest, JobInfo, JobPlan, NodeInfo,
    NodeLabelsRequest, PlannedTask, SubmitOutcome, TaskInfo,
};
use baton_spec::SpecFormat;
use clap::{Args, Subcommand};
use futures::StreamExt;

use crate::Failure;
use crate::output::{Format, format_utc_clock_ms, format_utc_ms, or_dash, print_json, print_table};

/// `baton job …`
#[derive(Debug, Subcommand)]
pub enum JobCmd {
    /// Create or update a job from a spec file (YAML, or JSON if it ends in .json).
    Run {
        /// Spec file.
        file: PathBuf,
        /// Return once submitted, without waiting for the tasks.
        #[arg(long)]
        detach: bool,
    },
    /// Check a spec file without submitting it.
    Validate {
        /// Spec file.
        file: PathBuf,
    },
    /// List jobs.
    Ls {
        /// Output format.
        #[arg(short, long, value_enum, default_value_t)]
        output: Format,
    },
    /// Show a job's status and tasks.
    Status {
        /// Job name.
        name: String,
        /// Output format.
        #[arg(short, long, value_enum, default_value_t)]
        output: Format,
    },
    /// Stop a job's tasks.
    Stop {
        /// Job name.
        name: String,
    },
    /// Set the number of replicas of a service. Running tasks are kept:
    /// new slots are added, or the highest ones stopped.
    Scale {
        /// Job name.
        name: String,
        /// The new number of replicas.
        replicas: u32,
    },
    /// Show what `job run` of a spec file would do, without doing it: whether
    /// the job is new, updated or unchanged, which tasks would be created and
    /// on which node (or why they fit nowhere), stopped, or kept.
    Plan {
        /// Spec file.
        file: PathBuf,
        /// Output format.
        #[arg(short, long, value_enum, default_value_t)]
        output: Format,
    },
}

/// `baton task …`
#[derive(Debug, Subcommand)]
pub enum TaskCmd {
    /// List tasks.
    Ls {
        /// Only this job's tasks.
        #[arg(long)]
        job: Option<String>,
        /// Output format.
        #[arg(short, long, value_enum, default_value_t)]
        output: Format,
    },
    /// Show what a running task uses (CPU, memory, processes), a line per
    /// sample its node reports, until the task stops or Ctrl-C.
    Stats {
        /// Task id.
        task: String,
        /// Print the latest sample once and exit.
        #[arg(long)]
        no_stream: bool,
    },
}

/// `baton node …`
#[derive(Debug, Subcommand)]
pub enum NodeCmd {
    /// List nodes.
    Ls {
        /// Output format.
        #[arg(short, long, value_enum, default_value_t)]
        output: Format,
    },
    /// Remove a node from the cluster and revoke its certificate. Its tasks
    /// are replaced elsewhere. A node that is still `ready`, or a manager
    /// that is running, needs `--force`. A manager leaves the managers'
    /// membership first; refused if the managers left would lose quorum.
    Rm {
        /// Node id.
        node: String,
        /// Remove it even though its agent is connected.
        #[arg(long)]
        force: bool,
    },
    /// Make a standby manager vote again.
    Promote {
        /// Node id of a manager.
        node: String,
    },
    /// Make a manager a standby: it keeps a copy of the state and serves
    /// the API but no longer votes. Refused if the voters left would lose
    /// quorum. (A worker becomes a manager by joining as one: `baton
    /// manager --join` with the manager token.)
    Demote {
        /// Node id of a manager.
        node: String,
    },
    /// Change a node's availability.
    Update {
        /// Node id.
        node: String,
        /// `active` takes tasks; `pause` keeps its tasks and takes no new ones;
        /// `drain` moves its service tasks elsewhere (start, then stop).
        #[arg(long, value_parser = ["active", "pause", "drain"])]
        availability: String,
        /// With `--availability drain`: how long tasks that are let finish
        /// (batch) may keep running before they are stopped anyway (e.g. 10m).
        #[arg(long, value_name = "DURATION", value_parser = duration_text)]
        deadline: Option<String>,
    },
    /// Set or remove a node's labels (operator labels: they override the
    /// labels its agent registers, and survive the agent's restarts).
    Label {
        /// Node id.
        node: String,
        #[command(subcommand)]
        action: LabelAction,
    },
}

/// `baton node label NODE …`
#[derive(Debug, Subcommand)]
pub enum LabelAction {
    /// Set labels: `KEY=VALUE …`.
    Add {
        /// Labels to set.
        #[arg(required = true, value_name = "KEY=VALUE", value_parser = crate::node::label)]
        labels: Vec<(String, String)>,
    },
    /// Remove labels set with `add`, by key. A label the node's agent sets
    /// (`baton agent --label`) goes only by restarting the agent without it.
    Rm {
        /// Keys to remove.
        #[arg(required = true, value_name = "KEY")]
        keys: Vec<String>,
    },
}

/// `baton cluster …`
#[derive(Debug, Subcommand)]
pub enum ClusterCmd {
    /// Print the token that lets a machine join as a worker or a manager.
    JoinToken {
        /// Which token.
        #[arg(value_parser = ["worker", "manager"])]
        role: String,
        /// Replace the token first: the old one admits nobody from now on;
        /// nodes that joined with it are not disturbed.
        #[arg(long)]
        rotate: bool,
        /// Print only the token.
        #[arg(short, long)]
        quiet: bool,
    },
    /// Show the cluster: id, root CA digest, certificate expiry, creation time.
    #[command(visible_alias = "status")]
    Info {
        /// Output format.
        #[arg(short, long, value_enum, default_value_t)]
        output: Format,
    },
    /// Show the root CA and the progress of a root rotation; with --rotate,
    /// start moving the whole cluster to a new root CA with no downtime.
    Ca {
        /// Start a root rotation: nodes get certificates from a new root
        /// (cross-signed by the old one for the transition) and the old root
        /// is dropped once every node has moved. Join tokens change their
        /// root digest. Copies of admin.toml must be taken again afterwards.
        #[arg(long)]
        rotate: bool,
        /// Output format.
        #[arg(short, long, value_enum, default_value_t)]
        output: Format,
    },
    /// Change cluster-wide settings.
    Update {
        /// Lifetime of node certificates issued from now on (e.g. 2160h, 1h,
        /// 30s); nodes pick it up at their next renewal, at 50-80% of their
        /// current certificate's life.
        #[arg(long, value_name = "DURATION", value_parser = duration)]
        cert_expiry: Option<Duration>,
        /// Autolock: with `true`, every manager's data key is wrapped by an
        /// unlock key printed here once, and no key is left on the
        /// managers' disks: a restarted manager serves nothing until
        /// `baton manager unlock` gives it the key. `false` turns it off.
        #[arg(long, value_name = "BOOL")]
        autolock: Option<bool>,
    },
    /// Print the unlock key of an autolocked cluster; with --rotate, replace
    /// it first (running managers rewrap their keys at once; one that is
    /// down keeps needing the key it was locked with).
    UnlockKey {
        /// Replace the key.
        #[arg(long)]
        rotate: bool,
        /// Print only the key.
        #[arg(short, long)]
        quiet: bool,
    },
}

fn duration(s: &str) -> Result<Duration, String> {
    baton_spec::parse_duration(s)
}

/// A duration, checked here and sent as written.
fn duration_text(s: &str) -> Result<String, String> {
    baton_spec::parse_duration(s).map(|_| s.to_owned())
}

fn print_cluster(info: &ClusterInfo) {
    println!("id:              {}", info.id);
    println!("root ca digest:  {}", info.root_ca_digest);
    println!(
        "cert expiry:     {}",
        baton_spec::format_duration(Duration::from_secs(info.cert_expiry_secs))
    );
    println!("created:         {} UTC", format_utc_ms(info.created_at));
    println!("signer:          {}", info.signer);
    println!(
        "raft:            term {}, applied index {}",
        info.raft_term, info.raft_applied
    );
    println!("managers:");
    for m in &info.managers {
        println!(
            "  {}  {:<9} {:<22} {}",
            m.id,
            m.raft_role,
            m.addr,
            if m.reachable {
                "reachable"
            } else {
                "unreachable"
            }
        );
    }
    match &info.root_rotation {
        None => println!("root rotation:   none"),
        Some(r) => {
            println!("root rotation:   to {}", r.new_root_digest);
            println!("  started:       {} UTC", format_utc_ms(r.started_at));
            if r.pending_nodes.is_empty() {
                println!("  pending nodes: none (finishing)");
            } else {
                println!(
                    "  pending nodes: {} ({})",
                    r.pending_nodes.len(),
                    r.pending_nodes.join(", ")
                );
            }
        }
    }
}

/// `baton logs TASK_ID [-f]`
#[derive(Debug, Args)]
pub struct LogsArgs {
    /// Task id.
    task: String,
    /// Keep printing new output until the task ends.
    #[arg(short, long)]
    follow: bool,
}

/// `baton exec TASK -- COMMAND [ARG...]`
#[derive(Debug, Args)]
pub struct ExecArgs {
    /// Task id of a running task of the exec or docker driver.
    task: String,
    /// The command and its arguments (after `--`).
    #[arg(last = true, required = true, num_args = 1..)]
    command: Vec<String>,
}

/// How the client commands reach the API: options of every subcommand.
#[derive(Debug, Args)]
pub struct ClientArgs {
    /// Client configuration file (a manager writes DATA_DIR/admin.toml;
    /// `baton dev` writes DIR/client.toml).
    #[arg(long, global = true, env = "BATON_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Use this manager's API instead of the addresses in the client config,
    /// for this command: https://HOST:PORT or HOST:PORT. Several,
    /// comma-separated, are tried in order.
    #[arg(
        long = "addr",
        global = true,
        env = "BATON_ADDR",
        value_name = "URL_OR_HOST:PORT",
        value_delimiter = ',',
        value_parser = baton_api::parse_api_addr
    )]
    addrs: Vec<String>,
    /// Reads see every write acknowledged before them, whichever manager
    /// answers (the leader confirms with a majority); without it a manager
    /// answers from the state it has applied, which on a follower may lag
    /// by a few milliseconds.
    #[arg(long, global = true, env = "BATON_LINEARIZABLE")]
    linearizable: bool,
}

pub(crate) fn client(args: ClientArgs) -> Result<ApiClient, Failure> {
    let path = args.config.ok_or_else(|| {
        Failure::usage(
            "no client config: pass --config FILE or set BATON_CONFIG (baton dev writes DIR/client.toml)",
        )
    })?;
    let mut config = ClientConfig::load(&path).map_err(|e| {
        Failure::usage(format!(
            "{e} (a client config has apis, ca_cert, cert and key: use the admin.toml/client.toml the manager wrote)"
        ))
    })?;
    if !args.addrs.is_empty() {
        config.apis = args.addrs;
    }
    let client = ApiClient::new(&config)?;
    Ok(if args.linearizable {
        client.linearizable()
    } else {
        client
    })
}

fn read_spec(file: &Path) -> Result<(String, Vec<u8>, SpecFormat), Failure> {
    let bytes = std::fs::read(file)
        .map_err(|e| Failure::usage(format!("cannot read {}: {e}", file.display())))?;
    let format = if file.extension().is_some_and(|e| e == "json") {
        SpecFormat::Json
    } else {
        SpecFormat::Yaml
    };
    Ok((file.display().to_string(), bytes, format))
}

/// Runs a `job` subcommand.
pub async fn job(client_args: ClientArgs, cmd: JobCmd) -> Result<(), Failure> {
    match cmd {
        JobCmd::Validate { file } => {
            let (name, bytes, format) = read_spec(&file)?;
            let spec = baton_spec::parse_job(&name, &bytes, format)
                .map_err(|e| Failure::usage(e.to_string()))?;
            println!("{name}: valid {} job {:?}", spec.kind.as_str(), spec.name);
            Ok(())
        }
        JobCmd::Run { file, detach } => {
            let (name, bytes, format) = read_spec(&file)?;
            // Validate locally first: the same rules as the server, with no round trip.
            baton_spec::parse_job(&name, &bytes, format)
                .map_err(|e| Failure::usage(e.to_string()))?;
            let api = client(client_args)?;
            let resp = api
                .submit_job(&name, bytes, format == SpecFormat::Yaml)
                .await?;
            let what = match resp.outcome {
                SubmitOutcome::Created => "created",
                SubmitOutcome::Updated => "updated",
                SubmitOutcome::Unchanged => "unchanged",
            };
            println!(
                "job {} {what} (version {})",
                resp.job.name, resp.job.version
            );
            if detach {
                return Ok(());
            }
            wait_for_job(&api, &resp.job.name).await
        }
        JobCmd::Ls { output } => {
            let jobs = client(client_args)?.list_jobs().await?;
            if output == Format::Json {
                print_json(&jobs);
                return Ok(());
            }
            print_table(
                &["name", "type", "version", "phase", "running", "desired"],
                jobs.iter()
                    .map(|j| {
                        vec![
                            j.name.clone(),
                            j.kind.clone(),
                            j.version.to_string(),
                            j.phase.clone(),
                            j.running.to_string(),
                            j.desired_tasks.to_string(),
                        ]
                    })
                    .collect(),
            );
            Ok(())
        }
        JobCmd::Status { name, output } => {
            let api = client(client_args)?;
            let job = api.get_job(&name).await?;
            let tasks = api.list_tasks(Some(&name)).await?;
            if output == Format::Json {
                print_json(&serde_json::json!({ "job": job, "tasks": tasks }));
                return Ok(());
            }
            print_job_status(&job, &tasks);
            Ok(())
        }
        JobCmd::Stop { name } => {
            let job = client(client_args)?.stop_job(&name).await?;
            println!("job {} stopping (version {})", job.name, job.version);
            Ok(())
        }
        JobCmd::Scale { name, replicas } => {
            let resp = client(client_args)?.scale_job(&name, replicas).await?;
            if resp.previous == resp.replicas {
                println!(
                    "job {} already has {} replicas (version {})",
                    resp.job.name, resp.replicas, resp.job.version
                );
            } else {
                println!(
                    "job {} scaled from {} to {} replicas (version {})",
                    resp.job.name, resp.previous, resp.replicas, resp.job.version
                );
            }
            Ok(())
        }
        JobCmd::Plan { file, output } => {
            let (name, bytes, format) = read_spec(&file)?;
            // The same validation as `job run`, with the same exit code.
            baton_spec::parse_job(&name, &bytes, format)
                .map_err(|e| Failure::usage(e.to_string()))?;
            let plan = client(client_args)?
                .plan_job(&name, bytes, format == SpecFormat::Yaml)
                .await?;
            if output == Format::Json {
                print_json(&plan);
            } else {
                print_plan(&plan);
            }
            Ok(())
        }
    }
}

/// `s` when `n` is not 1.
fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

fn ports_text(task: &PlannedTask) -> String {
    task.ports
        .iter()
        .map(|(name, port)| format!("{name}={port}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// A human summary of a plan: one line for the job, a table of the tasks
/// the plan touches, and what follows.
fn print_plan(plan: &JobPlan) {
    let what = match plan.outcome {
        SubmitOutcome::Created => "would be created",
        SubmitOutcome::Updated => "would be updated",
        SubmitOutcome::Unchanged => "is unchanged",
    };
    println!(
        "job {} ({}) {what} (version {})",
        plan.job, plan.kind, plan.version
    );
    let placed = plan.create.iter().filter(|t| t.node.is_some()).count();
    let waiting = plan.create.len() - placed;
    let mut summary = vec![format!(
        "create {} task{}",
        plan.create.len(),
        plural(plan.create.len())
    )];
    if waiting > 0 {
        summary[0].push_str(&format!(" ({waiting} cannot be placed)"));
    }
    if !plan.place.is_empty() {
        summary.push(format!("place {} pending", plan.place.len()));
    }
    summary.push(format!("stop {}", plan.stop.len()));
    if !plan.preempt.is_empty() {
        summary.push(format!("preempt {} of other jobs", plan.preempt.len()));
    }
    summary.push(format!("keep {}", plan.keep.len()));
    println!("{}", summary.join(", "));
    let rows: Vec<Vec<String>> = [
        ("create", &plan.create),
        ("place", &plan.place),
        ("stop", &plan.stop),
        ("preempt", &plan.preempt),
        ("keep", &plan.keep),
    ]
    .into_iter()
    .flat_map(|(action, tasks)| {
        tasks.iter().map(move |t| {
            let detail = match action {
                "create" | "place" if t.node.is_none() => {
                    format!("cannot be placed: {}", t.message)
                }
                "create" | "place" => "would run here".to_owned(),
                "stop" | "preempt" => t.message.clone(),
                _ if t.message.is_empty() => t.state.clone(),
                _ => format!("{}: {}", t.state, t.message),
            };
            vec![
                action.to_owned(),
                t.job.clone(),
                t.slot.clone(),
                t.id.clone(),
                or_dash(t.node.clone()),
                if t.ports.is_empty() {
                    "-".to_owned()
                } else {
                    ports_text(t)
                },
                detail,
            ]
        })
    })
    .collect();
    if !rows.is_empty() {
        println!();
        print_table(
            &["action", "job", "slot", "task", "node", "ports", "detail"],
            rows,
        );
    }
    if plan.later_updates > 0 {
        println!();
        println!(
            "then {} more slot{} replaced one at a time, each once the previous new task runs",
            plan.later_updates,
            plural(usize::try_from(plan.later_updates).unwrap_or(usize::MAX))
        );
    }
    if plan.create.is_empty()
        && plan.place.is_empty()
        && plan.stop.is_empty()
        && plan.preempt.is_empty()
        && plan.later_updates == 0
    {
        println!("nothing would change");
    }
}

fn progress_line(job: &JobInfo) -> String {
    if job.kind == "batch" {
        format!(
            "{}: {} — {}/{} completed, {} running",
            job.name, job.phase, job.completed, job.desired_tasks, job.running
        )
    } else {
        format!(
            "{}: {} — {}/{} running",
            job.name, job.phase, job.running, job.desired_tasks
        )
    }
}

fn failure_lines(job: &JobInfo) -> String {
    job.failures
        .iter()
        .map(|f| {
            let exit = match (f.exit_code, f.signal) {
                (_, Some(sig)) => format!("killed by signal {sig}"),
                (Some(code), None) => format!("exit code {code}"),
                (None, None) => f.message.clone(),
            };
            format!(
                "job {}: task {} (slot {}) failed after {} restarts: {exit}",
                job.name, f.task, f.slot, f.restarts
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Shows progress until the job runs (or completes), or fails.
async fn wait_for_job(api: &ApiClient, name: &str) -> Result<(), Failure> {
    let mut last = String::new();
    loop {
        let job = api.get_job(name).await?;
        let mut line = progress_line(&job);
        if job.phase == "pending" {
            // Say why tasks wait (no node fits, restart backoff), once per reason.
            let tasks = api.list_tasks(Some(name)).await?;
            let mut reasons: Vec<&str> = tasks
                .iter()
                .filter(|t| {
                    t.job_version == job.version && t.state == "pending" && !t.message.is_empty()
                })
                .map(|t| t.message.as_str())
                .collect();
            reasons.sort_unstable();
            reasons.dedup();
            if !reasons.is_empty() {
                line = format!("{line} ({})", reasons.join("; "));
            }
        }
        if line != last {
            println!("{line}");
            let _ = std::io::stdout().flush();
            last = line;
        }
        match job.phase.as_str() {
            "running" if job.kind != "batch" => return Ok(()),
            "complete" => return Ok(()),
            "failed" => return Err(Failure::op(failure_lines(&job))),
            "stopped" => return Err(Failure::op(format!("job {name} was stopped"))),
            _ => {}
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn print_job_status(job: &JobInfo, tasks: &[TaskInfo]) {
    println!("name:     {}", job.name);
    println!("type:     {}", job.kind);
    println!("version:  {}", job.version);
    println!("desired:  {}", job.desired);
    println!("phase:    {}", job.phase);
    if job.kind == "batch" {
        println!("complete: {}/{}", job.completed, job.desired_tasks);
    } else {
        println!("running:  {}/{}", job.running, job.desired_tasks);
    }
    if !job.failures.is_empty() {
        println!("failures:");
        for line in failure_lines(job).lines() {
            println!("  {line}");
        }
    }
    println!();
    print_tasks(tasks);
}

fn exit_text(task: &TaskInfo) -> String {
    match (task.exit_code, task.signal) {
        (_, Some(sig)) => format!("signal {sig}"),
        (Some(code), None) => format!("exit {code}"),
        (None, None) => "-".to_owned(),
    }
}

fn print_tasks(tasks: &[TaskInfo]) {
    print_table(
        &[
            "id", "job", "slot", "node", "state", "restarts", "pid", "cpu", "mem", "exit",
            "message",
        ],
        tasks
            .iter()
            .map(|t| {
                vec![
                    t.id.clone(),
                    t.job.clone(),
                    t.slot.clone(),
                    or_dash(t.node.clone()),
                    t.state.clone(),
                    t.restarts.to_string(),
                    or_dash(t.pid),
                    or_dash(t.usage.map(|u| format!("{}m", u.cpu_millis))),
                    or_dash(t.usage.map(|u| baton_spec::human_memory(u.memory_bytes))),
                    exit_text(t),
                    t.message.clone(),
                ]
            })
            .collect(),
    );
}

/// Runs a `task` subcommand.
pub async fn task(client_args: ClientArgs, cmd: TaskCmd) -> Result<(), Failure> {
    match cmd {
        TaskCmd::Ls { job, output } => {
            let tasks = client(client_args)?.list_tasks(job.as_deref()).await?;
            if output == Format::Json {
                print_json(&tasks);
            } else {
                print_tasks(&tasks);
            }
            Ok(())
        }
        TaskCmd::Stats { task, no_stream } => task_stats(client_args, &task, no_stream).await,
    }
}

/// How often `task stats` asks for a fresh sample (nodes report every 3 s).
const STATS_POLL: Duration = Duration::from_secs(1);

/// Prints a task's usage: a header, then a line per new sample.
async fn task_stats(client_args: ClientArgs, id: &str, no_stream: bool) -> Result<(), Failure> {
    let api = client(client_args)?;
    let mut last_at = None;
    let mut printed_header = false;
    loop {
        let task = api.get_task(id).await?;
        if task.state != "running" {
            return if printed_header {
                Ok(())
            } else {
                Err(Failure::op(format!(
                    "task {id} is {}, not running",
                    task.state
                )))
            };
        }
        if let Some(usage) = task.usage
            && last_at != Some(usage.at)
        {
            if !printed_header {
                println!("{:<12} {:>8} {:>10} {:>6}", "TIME", "CPU", "MEM", "PIDS");
                printed_header = true;
            }
            println!(
                "{:<12} {:>8} {:>10} {:>6}",
                format_utc_clock_ms(usage.at),
                format!("{}m", usage.cpu_millis),
                baton_spec::human_memory(usage.memory_bytes),
                usage.pids
            );
            let _ = std::io::stdout().flush();
            last_at = Some(usage.at);
            if no_stream {
                return Ok(());
            }
        }
        tokio::time::sleep(STATS_POLL).await;
    }
}

/// Runs `logs`.
pub async fn logs(client_args: ClientArgs, args: LogsArgs) -> Result<(), Failure> {
    let api = client(client_args)?;
    let mut stream = Box::pin(api.logs(&args.task, args.follow).await?);
    let mut stdout = std::io::stdout();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
        match stdout.write_all(&chunk).and_then(|()| stdout.flush()) {
            Ok(()) => {}
            // The reader went away (`baton logs -f | head`): done, like any Unix tool.
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(()),
            Err(e) => return Err(Failure::op(format!("writing output: {e}"))),
        }
    }
    Ok(())
}

/// Runs a command inside a running task: its stdin is ours, its output
/// ours, and our exit status is its own (128 + N when signal N killed it).
pub async fn exec(client_args: ClientArgs, args: ExecArgs) -> Result<(), Failure> {
    use baton_api::exec::{ClientFrame, ExecStart, ServerFrame, TtySize};
    use std::io::IsTerminal;

    let api = client(client_args)?;
    // A terminal on our side: one on the command's side too, of our size,
    // with ours in raw mode (restored on the way out) so keys pass through.
    let tty = std::io::stdin().is_terminal() && std::io::stdout().is_terminal();
    let size = || {
        rustix::termios::tcgetwinsize(std::io::stdout())
            .ok()
            .map(|w| TtySize {
                rows: w.ws_row,
                cols: w.ws_col,
            })
    };
    let _raw = if tty { RawMode::enter() } else { None };
    let (tx, rx) = tokio::sync::mpsc::channel::<ClientFrame>(8);
    // Our stdin, read on a thread of its own (a blocking read of a terminal
    // or pipe), until its end.
    let stdin_tx = tx.clone();
    std::thread::spawn(move || {
        use std::io::Read;
        let mut stdin = std::io::stdin().lock();
        let mut buf = vec![0u8; 16 << 10];
        loop {
            match stdin.read(&mut buf) {
                Ok(0) | Err(_) => {
                    let _ = stdin_tx.blocking_send(ClientFrame::StdinEof);
                    return;
                }
                Ok(n) => {
                    let bytes = bytes::Bytes::copy_from_slice(&buf[..n]);
                    if stdin_tx.blocking_send(ClientFrame::Stdin(bytes)).is_err() {
                        return;
                    }
                }
            }
        }
    });
    if tty
        && let Ok(mut resized) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::window_change())
    {
        tokio::spawn(async move {
            while resized.recv().await.is_some() {
                if let Some(size) = size()
                    && tx.send(ClientFrame::Resize(size)).await.is_err()
                {
                    return;
                }
            }
        });
    }
    let start = ExecStart {
        command: args.command,
        tty: if tty { size() } else { None },
    };
    let input = tokio_stream::wrappers::ReceiverStream::new(rx);
    let mut frames = Box::pin(api.exec(&args.task, start, input).await?);
    let mut stdout = std::io::stdout();
    let mut stderr = std::io::stderr();
    while let Some(frame) = frames.next().await {
        match frame? {
            ServerFrame::Stdout(bytes) => {
                let _ = stdout.write_all(&bytes).and_then(|()| stdout.flush());
            }
            ServerFrame::Stderr(bytes) => {
                let _ = stderr.write_all(&bytes).and_then(|()| stderr.flush());
            }
            ServerFrame::Exit(exit) => {
                let status = match (exit.code, exit.signal) {
                    (_, Some(signal)) => 128 + signal,
                    (Some(code), None) => code,
                    (None, None) => 1,
                };
                return if status == 0 {
                    Ok(())
                } else {
                    Err(Failure {
                        code: u8::try_from(status & 0xff).unwrap_or(1),
                        message: String::new(),
                    })
                };
            }
            ServerFrame::Error(message) => return Err(Failure::op(message)),
        }
    }
    Err(Failure::op(
        "the exec session ended without the command's exit",
    ))
}

/// Our terminal in raw mode until dropped.
struct RawMode {
    saved: rustix::termios::Termios,
}

impl RawMode {
    fn enter() -> Option<RawMode> {
        let saved = rustix::termios::tcgetattr(std::io::stdin()).ok()?;
        let mut raw = saved.clone();
        raw.make_raw();
        rustix::termios::tcsetattr(
            std::io::stdin(),
            rustix::termios::OptionalActions::Now,
            &raw,
        )
        .ok()?;
        Some(RawMode { saved })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let _ = rustix::termios::tcsetattr(
            std::io::stdin(),
            rustix::termios::OptionalActions::Now,
            &self.saved,
        );
    }
}

/// Runs a `cluster` subcommand.
pub async fn cluster(client_args: ClientArgs, cmd: ClusterCmd) -> Result<(), Failure> {
    match cmd {
        ClusterCmd::JoinToken {
            role,
            rotate,
            quiet,
        } => {
            let api = client(client_args)?;
            let info = if rotate {
                api.rotate_join_token(&role).await?
            } else {
                api.join_token(&role).await?
            };
            if quiet {
                println!("{}", info.token);
                return Ok(());
            }
            if rotate {
                println!("The {role} join token was rotated: the old one no longer admits anyone.");
            }
            let command = if role == "manager" {
                "manager"
            } else {
                "agent"
            };
            println!("To join this cluster as a {role}, run on the new machine:");
            println!();
            println!(
                "    baton {command} --data-dir DIR --join MANAGER_ADDR --token {}",
                info.token
            );
            println!();
            println!(
                "where MANAGER_ADDR is the cluster address of a manager (its --listen or --advertise)."
            );
            Ok(())
        }
        ClusterCmd::Info { output } => {
            let info = client(client_args)?.cluster_info().await?;
            if output == Format::Json {
                print_json(&info);
            } else {
                print_cluster(&info);
            }
            Ok(())
        }
        ClusterCmd::Ca { rotate, output } => {
            let api = client(client_args)?;
            let info = if rotate {
                api.rotate_root_ca().await?
            } else {
                api.cluster_info().await?
            };
            if output == Format::Json {
                print_json(&info);
                return Ok(());
            }
            if rotate {
                println!(
                    "Root CA rotation started: every node renews from the new root; the old root is dropped once all have moved."
                );
            }
            print_cluster(&info);
            Ok(())
        }
        ClusterCmd::Update {
            cert_expiry,
            autolock,
        } => {
            if cert_expiry.is_none() && autolock.is_none() {
                return Err(Failure::usage(
                    "nothing to update: pass --cert-expiry DURATION or --autolock true|false",
                ));
            }
            // Certificates count whole seconds; the manager refuses less than one.
            let settings = ClusterSettingsRequest {
                cert_expiry_secs: cert_expiry.map(|d| d.as_secs()),
                autolock,
            };
            let answer = client(client_args)?.update_cluster(&settings).await?;
            if cert_expiry.is_some() {
                println!(
                    "certificate expiry set to {}: new certificates use it, nodes pick it up at their next renewal",
                    baton_spec::format_duration(Duration::from_secs(
                        answer.cluster.cert_expiry_secs
                    ))
                );
            }
            match (autolock, &answer.unlock_key) {
                (Some(true), Some(key)) => {
                    println!("autolock is on. The unlock key (shown once; store it safely):");
                    println!();
                    println!("    {key}");
                    println!();
                    println!(
                        "A restarted manager serves nothing until given it: baton manager unlock --data-dir DIR"
                    );
                }
                (Some(true), None) => {
                    println!("autolock was already on (baton cluster unlock-key prints the key)");
                }
                (Some(false), _) => {
                    println!(
                        "autolock is off: managers keep their key-encryption key on disk again"
                    );
                }
                (None, _) => {}
            }
            Ok(())
        }
        ClusterCmd::UnlockKey { rotate, quiet } => {
            let info = client(client_args)?.unlock_key(rotate).await?;
            if quiet {
                println!("{}", info.unlock_key);
            } else {
                if rotate {
                    println!("unlock key rotated; the old key no longer unlocks running managers");
                }
                println!("unlock key: {}", info.unlock_key);
            }
            Ok(())
        }
    }
}

/// Widest labels cell of `node ls`, in chars; `-o json` has them all.
const LABELS_WIDTH: usize = 40;

/// A node's labels in effect as `k=v,k=v`, an operator's marked `*`, cut
/// to `width` chars with `…`; `-` for none.
fn labels_text(node: &NodeInfo, width: usize) -> String {
    if node.labels.is_empty() {
        return "-".to_owned();
    }
    let text = node
        .labels
        .iter()
        .map(|(key, value)| {
            let mark = if node.operator_labels.contains_key(key) {
                "*"
            } else {
                ""
            };
            format!("{key}={value}{mark}")
        })
        .collect::<Vec<_>>()
        .join(",");
    if text.chars().count() <= width {
        return text;
    }
    let mut cut: String = text.chars().take(width.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

/// Runs a `node` subcommand.
pub async fn node(client_args: ClientArgs, cmd: NodeCmd) -> Result<(), Failure> {
    match cmd {
        NodeCmd::Rm { node, force } => {
            let removed = client(client_args)?.remove_node(&node, force).await?;
            println!(
                "node {} removed; its certificate is refused from now on",
                removed.id
            );
            Ok(())
        }
        NodeCmd::Promote { node } => {
            let manager = client(client_args)?.promote_node(&node).await?;
            println!("manager {} is now a {}", manager.id, manager.raft_role);
            Ok(())
        }
        NodeCmd::Demote { node } => {
            let manager = client(client_args)?.demote_node(&node).await?;
            println!(
                "manager {} is now a {} (it does not vote)",
                manager.id, manager.raft_role
            );
            Ok(())
        }
        NodeCmd::Update {
            node,
            availability,
            deadline,
        } => {
            if deadline.is_some() && availability != "drain" {
                return Err(Failure::usage(format!(
                    "--deadline is for --availability drain, not {availability}"
                )));
            }
            let node = client(client_args)?
                .set_node_availability(&node, &availability, deadline.as_deref())
                .await?;
            match node.drain_deadline {
                Some(at) => println!(
                    "node {} is now {}; tasks let finish are stopped at {} UTC",
                    node.id,
                    node.availability,
                    format_utc_ms(at)
                ),
                None => println!("node {} is now {}", node.id, node.availability),
            }
            Ok(())
        }
        NodeCmd::Label { node, action } => {
            let request = match &action {
                LabelAction::Add { labels } => {
                    let mut set = std::collections::BTreeMap::new();
                    for (key, value) in labels {
                        if set.insert(key.clone(), value.clone()).is_some() {
                            return Err(Failure::usage(format!(
                                "label {key} is given more than once"
                            )));
                        }
                    }
                    NodeLabelsRequest {
                        set,
                        remove: Vec::new(),
                    }
                }
                LabelAction::Rm { keys } => NodeLabelsRequest {
                    set: Default::default(),
                    remove: keys.clone(),
                },
            };
            let node = client(client_args)?
                .update_node_labels(&node, &request)
                .await?;
            if let LabelAction::Rm { keys } = &action {
                for key in keys {
                    if let Some(value) = node.agent_labels.get(key) {
                        println!("{key} is now {value}, as its agent sets it");
                    }
                }
            }
            println!(
                "node {} labels: {}",
                node.id,
                labels_text(&node, usize::MAX)
            );
            if !node.operator_labels.is_empty() {
                println!("(* set with baton node label; the others by its agent's --label)");
            }
            Ok(())
        }
        NodeCmd::Ls { output } => {
            let nodes = client(client_args)?.list_nodes().await?;
            if output == Format::Json {
                print_json(&nodes);
                return Ok(());
            }
            print_table(
                &[
                    "id",
                    "hostname",
                    "role",
                    "state",
                    "availability",
                    "address",
                    "cert expires",
                    "version",
                    "drivers",
                    "cpu",
                    "memory",
                    "disk",
                    "tasks",
                    "labels",
                ],
                nodes
                    .iter()
                    .map(|n| {
                        vec![
                            n.id.clone(),
                            n.hostname.clone(),
                            n.role.clone(),
                            n.state.clone(),
                            match n.drain_deadline {
                                Some(at) => {
                                    format!("{} until {}", n.availability, format_utc_ms(at))
                                }
                                None => n.availability.clone(),
                            },
                            or_dash(n.address.clone()),
                            or_dash(n.cert_expires_at.map(format_utc_ms)),
                            if n.version.is_empty() {
                                "-".to_owned()
                            } else {
                                n.version.clone()
                            },
                            n.drivers.join(","),
                            format!("{}m/{}m", n.cpu_reserved, n.cpu_millis),
                            format!(
                                "{}/{}",
                                baton_spec::human_memory(n.memory_reserved),
                                baton_spec::human_memory(n.memory_bytes)
                            ),
                            format!(
                                "{}/{}",
                                baton_spec::human_memory(n.disk_reserved),
                                baton_spec::human_memory(n.disk_bytes)
                            ),
                            n.tasks.to_string(),
                            labels_text(n, LABELS_WIDTH),
                        ]
                    })
                    .collect(),
            );
            if nodes.iter().any(|n| !n.operator_labels.is_empty()) {
                println!("labels marked * are set with baton node label");
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, Parser};

    use super::*;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        client: ClientArgs,
        #[command(subcommand)]
        cmd: Cmd,
    }

    #[derive(Debug, Subcommand)]
    enum Cmd {
        #[command(subcommand)]
        Cluster(ClusterCmd),
        #[command(subcommand)]
        Node(NodeCmd),
        #[command(subcommand)]
        Job(JobCmd),
    }

    fn parse(args: &[&str]) -> Result<Cmd, clap::Error> {
        Cli::try_parse_from(std::iter::once("baton").chain(args.iter().copied())).map(|c| c.cmd)
    }

    #[test]
    fn node_label_adds_and_removes() {
        let cmd = parse(&["node", "label", "n1", "add", "zone=b", "rack=r1"]).expect("parse");
        let Cmd::Node(NodeCmd::Label {
            node,
            action: LabelAction::Add { labels },
        }) = cmd
        else {
            panic!("{cmd:?}");
        };
        assert_eq!(node, "n1");
        assert_eq!(
            labels,
            [
                ("zone".to_owned(), "b".to_owned()),
                ("rack".to_owned(), "r1".to_owned())
            ]
        );
        let cmd = parse(&["node", "label", "n1", "rm", "zone", "rack"]).expect("parse");
        assert!(matches!(
            cmd,
            Cmd::Node(NodeCmd::Label { action: LabelAction::Rm { ref keys }, .. }) if keys == &["zone", "rack"]
        ));
        for bad in [
            &["node", "label", "n1", "add"][..],
            &["node", "label", "n1", "rm"],
            &["node", "label", "n1", "add", "zone"],
            &["node", "label", "n1", "add", "x y=a"],
            &["node", "label", "n1"],
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn node_update_takes_a_drain_deadline() {
        let cmd = parse(&[
            "node",
            "update",
            "n1",
            "--availability",
            "drain",
            "--deadline",
            "10m",
        ])
        .expect("parse");
        assert!(matches!(
            cmd,
            Cmd::Node(NodeCmd::Update { ref availability, deadline: Some(ref d), .. })
                if availability == "drain" && d == "10m"
        ));
        let err = parse(&[
            "node",
            "update",
            "n1",
            "--availability",
            "drain",
            "--deadline",
            "soon",
        ])
        .expect_err("bad duration");
        assert!(err.to_string().contains("is not a duration"), "{err}");
    }

    #[test]
    fn job_scale_and_plan_parse() {
        let cmd = parse(&["job", "scale", "web", "5"]).expect("parse");
        assert!(matches!(
            cmd,
            Cmd::Job(JobCmd::Scale { ref name, replicas: 5 }) if name == "web"
        ));
        assert!(parse(&["job", "scale", "web", "-1"]).is_err());
        assert!(parse(&["job", "scale", "web"]).is_err());
        let cmd = parse(&["job", "plan", "web.yaml", "-o", "json"]).expect("parse");
        assert!(matches!(
            cmd,
            Cmd::Job(JobCmd::Plan { ref file, output: Format::Json }) if file == Path::new("web.yaml")
        ));
    }

    #[test]
    fn labels_are_shown_compactly_with_the_operators_marked() {
        let mut node: NodeInfo = serde_json::from_value(serde_json::json!({
            "id": "n1", "hostname": "h", "role": "worker", "state": "ready",
            "availability": "active", "drivers": [], "cpu_millis": 1000,
            "memory_bytes": 1, "cpu_reserved": 0, "memory_reserved": 0, "tasks": 0,
            "cert_expires_at": null, "address": null, "version": "",
        }))
        .expect("an older manager's node decodes");
        assert_eq!(labels_text(&node, LABELS_WIDTH), "-");
        node.labels = [("zone", "b"), ("disk", "ssd")]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        node.operator_labels = [("zone".to_owned(), "b".to_owned())].into();
        assert_eq!(labels_text(&node, LABELS_WIDTH), "disk=ssd,zone=b*");
        assert_eq!(labels_text(&node, 8), "disk=ss…");
    }

    #[test]
    fn cluster_and_node_commands_parse() {
        Cli::command().debug_assert();
        let cli =
            Cli::try_parse_from(["baton", "cluster", "join-token", "worker", "--rotate", "-q"])
                .expect("parse");
        assert!(matches!(
            cli.cmd,
            Cmd::Cluster(ClusterCmd::JoinToken { ref role, rotate: true, quiet: true }) if role == "worker"
        ));
        assert!(Cli::try_parse_from(["baton", "cluster", "join-token", "admin"]).is_err());
        let cli = Cli::try_parse_from(["baton", "cluster", "update", "--cert-expiry", "90s"])
            .expect("parse");
        assert!(matches!(
            cli.cmd,
            Cmd::Cluster(ClusterCmd::Update { cert_expiry: Some(d), autolock: None }) if d == Duration::from_secs(90)
        ));
        assert!(
            Cli::try_parse_from(["baton", "cluster", "update", "--cert-expiry", "soon"]).is_err()
        );
        let cli = Cli::try_parse_from(["baton", "cluster", "status", "-o", "json"]).expect("parse");
        assert!(matches!(
            cli.cmd,
            Cmd::Cluster(ClusterCmd::Info {
                output: Format::Json
            })
        ));
        let cli = Cli::try_parse_from(["baton", "node", "rm", "n1", "--force"]).expect("parse");
        assert!(matches!(
            cli.cmd,
            Cmd::Node(NodeCmd::Rm { ref node, force: true }) if node == "n1"
        ));
    }

    #[test]
    fn addr_overrides_the_config_and_defaults_to_https() {
        let cli = Cli::try_parse_from([
            "baton",
            "node",
            "ls",
            "--addr",
            "10.0.0.1:7443,https://m2.example:7443/",
        ])
        .expect("parse");
        assert_eq!(
            cli.client.addrs,
            ["https://10.0.0.1:7443", "https://m2.example:7443"]
        );
        let err = Cli::try_parse_from(["baton", "--addr", "http://10.0.0.1:7443", "node", "ls"])
            .expect_err("plain http");
        assert!(err.to_string().contains("not an https:// URL"), "{err}");
        let help = Cli::command().render_long_help().to_string();
        assert!(help.contains("--addr <URL_OR_HOST:PORT>"), "{help}");
        assert!(help.contains("BATON_ADDR"), "{help}");
    }
}
