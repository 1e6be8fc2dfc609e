//! The seam between the executor and the ways a task can run.
//!
//! A [`Driver`] starts a task from a [`TaskRun`] and returns a [`TaskHandle`]
//! to wait for it or stop it. The executor does not know how a driver runs a
//! task: `exec` ([`ExecDriver`], isolated, the default), `docker`
//! ([`DockerDriver`]) and `raw` ([`RawDriver`], no isolation, off unless
//! enabled) sit behind the same trait, which also enters a running task
//! (`baton exec`), samples its usage and cleans up after a crashed agent.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use baton_rpc::{ExecEvent, ExecInput, Winsize};
use baton_spec::{DriverKind, TaskSpec};
use baton_state::{ExitInfo, NodeId, TaskId};
use tokio::sync::mpsc;

use crate::error::AgentError;
use crate::log_file::LogWriter;

mod docker;
mod exec;
mod files;
mod output;
mod ports;
mod raw;

pub use baton_isolate::cgroup::Usage;
pub use docker::DockerDriver;
pub use exec::{ExecDriver, SHIM_COMMAND};
pub use files::{NodeFiles, TaskFiles, sweep as sweep_run_dirs};
pub use raw::RawDriver;

/// Everything a driver needs to start one task.
#[derive(Clone)]
pub struct TaskRun {
    /// Task id.
    pub task: TaskId,
    /// Job name.
    pub job: String,
    /// Slot within the job, as text.
    pub slot: String,
    /// Node the task runs on.
    pub node: NodeId,
    /// What to run.
    pub spec: TaskSpec,
    /// The task's own directory (`data_dir/tasks/<task_id>/`), which exists;
    /// its working directory unless the spec names one.
    pub task_dir: PathBuf,
    /// Where the task's stdout and stderr go.
    pub log: LogWriter,
    /// Host ports the cluster gave the task on this node, by port name (see
    /// `ports.rs` for what the task is told).
    pub ports: BTreeMap<String, u16>,
    /// The node's address for published ports, if the agent was told it.
    pub advertise_ip: Option<IpAddr>,
    /// The secrets and configs it uses, with their values.
    pub files: TaskFiles,
    /// Where its own tmpfs goes, if it needs one (`data_dir/run/<task_id>`,
    /// not made yet).
    pub run_dir: PathBuf,
}

// By hand: the spec's environment values must never reach a log.
impl fmt::Debug for TaskRun {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TaskRun")
            .field("task", &self.task)
            .field("job", &self.job)
            .field("slot", &self.slot)
            .field("node", &self.node)
            .field("command", &self.spec.command)
            .field("env_keys", &self.spec.env.keys().collect::<Vec<_>>())
            .field("task_dir", &self.task_dir)
            .field("ports", &self.ports)
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

/// A way to run tasks.
#[async_trait::async_trait]
pub trait Driver: Send + Sync + fmt::Debug + 'static {
    /// Which driver this is.
    fn kind(&self) -> DriverKind;

    /// Starts the task. An error means it never ran; its message (`start
    /// failed: ...`) becomes the task's status message.
    async fn start(&self, run: TaskRun) -> Result<Box<dyn TaskHandle>, AgentError>;

    /// At agent start, before any task runs: ends whatever this driver still
    /// holds from an earlier agent on `node` (processes left in an isolated
    /// task's cgroup, containers), given the tasks that agent was running.
    /// Returns those of `running` it found something of.
    async fn recover(&self, _node: &NodeId, _running: &[TaskId]) -> BTreeSet<TaskId> {
        BTreeSet::new()
    }

    /// What the running `task` (whose main process is host pid `pid`) uses
    /// now; `None` when the driver cannot tell.
    async fn usage(&self, _task: &TaskId, _pid: Option<u32>) -> Option<Usage> {
        None
    }

    /// `baton exec`: runs `command` inside the running `task` (its
    /// namespaces, its container) with the task's confinement, on a
    /// pseudo-terminal of size `tty` if given, feeding it
    /// `input` and sending its output to `events`, ending with
    /// [`ExecEvent::Exit`] or [`ExecEvent::Error`]. If `events` closes (the
    /// client went away) the command is killed. The default: refused, for a
    /// driver that isolates nothing to enter.
    async fn exec(
        &self,
        _task: &TaskId,
        _command: Vec<String>,
        _tty: Option<Winsize>,
        _input: mpsc::Receiver<ExecInput>,
        events: mpsc::Sender<ExecEvent>,
    ) {
        let message = format!(
            "exec needs an isolated task (driver exec or docker); this one runs with {}",
            self.kind().as_str()
        );
        let _ = events.send(ExecEvent::Error(message)).await;
    }
}

/// A started task.
#[async_trait::async_trait]
pub trait TaskHandle: Send + fmt::Debug {
    /// Host pid of the task's main process (also its process group id).
    fn pid(&self) -> u32;

    /// Waits until the task has exited and its output is in its log.
    /// Cancel-safe: it may be dropped and called again, also after it returned.
    async fn wait(&mut self) -> Result<ExitInfo, AgentError>;

    /// Whether the task has been seen to end.
    fn ended(&self) -> bool;

    /// Asks the task to end (SIGTERM), or forces it (`force`: SIGKILL).
    /// Returns whether the signal was delivered.
    async fn signal_end(&mut self, force: bool) -> bool;

    /// Stops the task: asks it to end (SIGTERM), forces it (SIGKILL) after
    /// `grace`, and waits as [`TaskHandle::wait`]. Returns how it ended and
    /// whether it had to be forced.
    async fn stop(&mut self, grace: Duration) -> Result<(ExitInfo, bool), AgentError> {
        if !self.ended() {
            self.signal_end(false).await;
        }
        if let Ok(ended) = tokio::time::timeout(grace, self.wait()).await {
            return ended.map(|exit| (exit, false));
        }
        let forced = !self.ended() && self.signal_end(true).await;
        self.wait().await.map(|exit| (exit, forced))
    }
}
