//! `baton`: the one binary. `baton dev` runs a manager and an agent in one
//! process; every other subcommand is a client of the HTTPS API.
//!
//! Exit codes: 0 ok, 1 the operation failed, 2 usage or validation error.

mod cli;
mod dev;
mod files;
mod node;
mod output;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Baton: run services, batch jobs and global jobs, least privilege first.
#[derive(Debug, Parser)]
#[command(name = "baton", version, about)]
struct Args {
    #[command(flatten)]
    client: cli::ClientArgs,

    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Run a manager and an agent in this process, in the foreground.
    Dev(dev::DevArgs),
    /// Run a manager: creates a cluster on an empty data dir.
    Manager(node::ManagerCli),
    /// Run an agent: joins a cluster with a token, or rejoins with its identity.
    Agent(node::AgentArgs),
    /// Submit, inspect and stop jobs.
    #[command(subcommand)]
    Job(cli::JobCmd),
    /// Inspect tasks.
    #[command(subcommand)]
    Task(cli::TaskCmd),
    /// Print a task's output.
    Logs(cli::LogsArgs),
    /// Run a command inside a running task (exec or docker driver), with
    /// the task's user and confinement. Exits with the command's status.
    Exec(cli::ExecArgs),
    /// Inspect and manage nodes.
    #[command(subcommand)]
    Node(cli::NodeCmd),
    /// The cluster: its identity, join tokens, settings (certificate expiry).
    #[command(subcommand)]
    Cluster(cli::ClusterCmd),
    /// Secrets: values tasks read from files in /run/secrets or from
    /// environment variables; encrypted at rest, never shown, given only
    /// to the nodes running a task that uses them.
    #[command(subcommand)]
    Secret(files::FileCmd),
    /// Configs: files tasks read from /run/configs; like secrets, but not secret.
    #[command(subcommand)]
    Config(files::FileCmd),
}

/// The hidden subcommand the agent runs its exec tasks' shims with.
const SHIM_COMMAND: &str = baton_agent::SHIM_COMMAND;

/// A failure with its exit code: 1 the operation failed, 2 usage or validation.
#[derive(Debug)]
pub struct Failure {
    code: u8,
    message: String,
}

impl Failure {
    /// The operation failed.
    pub fn op(message: impl Into<String>) -> Failure {
        Failure {
            code: 1,
            message: message.into(),
        }
    }

    /// Bad usage or invalid input.
    pub fn usage(message: impl Into<String>) -> Failure {
        Failure {
            code: 2,
            message: message.into(),
        }
    }
}

impl From<baton_api::ApiError> for Failure {
    fn from(e: baton_api::ApiError) -> Failure {
        match &e {
            baton_api::ApiError::Status { status: 400, body } => {
                Failure::usage(if body.details.is_empty() {
                    body.message.clone()
                } else {
                    body.details.join("\n")
                })
            }
            baton_api::ApiError::Config(_) => Failure::usage(e.to_string()),
            _ => Failure::op(e.to_string()),
        }
    }
}

fn main() -> ExitCode {
    // `baton shim` (started by the agent for each exec task, never by hand)
    // must stay single-threaded: it is dispatched before anything else runs.
    if std::env::args_os()
        .nth(1)
        .is_some_and(|a| a == SHIM_COMMAND)
    {
        // The runtime's errors go to the shim's stderr: the task's log.
        node::init_tracing("error");
        let args: Vec<std::ffi::OsString> = std::env::args_os().skip(2).collect();
        return baton_isolate::shim::main(&args);
    }
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let result = runtime.block_on(async move {
        match args.command {
            Cmd::Dev(dev_args) => dev::run(dev_args).await,
            Cmd::Manager(manager) => node::manager(manager).await,
            Cmd::Agent(agent_args) => node::run_agent(agent_args).await,
            Cmd::Job(cmd) => cli::job(args.client, cmd).await,
            Cmd::Task(cmd) => cli::task(args.client, cmd).await,
            Cmd::Logs(logs) => cli::logs(args.client, logs).await,
            Cmd::Exec(exec) => cli::exec(args.client, exec).await,
            Cmd::Node(cmd) => cli::node(args.client, cmd).await,
            Cmd::Cluster(cmd) => cli::cluster(args.client, cmd).await,
            Cmd::Secret(cmd) => files::run(args.client, baton_spec::FileKind::Secret, cmd).await,
            Cmd::Config(cmd) => files::run(args.client, baton_spec::FileKind::Config, cmd).await,
        }
    });
    // Log streams and the like may hold blocking reads: don't wait for them.
    runtime.shutdown_background();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            for line in failure.message.lines() {
                eprintln!("error: {line}");
            }
            ExitCode::from(failure.code)
        }
    }
}
