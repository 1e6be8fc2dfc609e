//! One task's life on this node, from start to a terminal state: the part of
//! the executor's runtime that drives a [`Driver`].
//!
//! A runner starts the task, persists its run record (so a restarted agent can
//! find the process), reports `running`, waits for the process to exit or for
//! a stop request, records the outcome in `status.json`, and reports it. It
//! reports through [`TaskEvent`]s to the agent's loop, which owns the task
//! states and the session.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use baton_rpc::Assignment;
use baton_spec::{format_duration, format_memory};
use baton_state::{ExitInfo, NodeId, TaskId, TaskState};
use tokio::sync::{mpsc, watch};

use crate::driver::{Driver, TaskFiles, TaskHandle, TaskRun};
use crate::error::AgentError;
use crate::executor::SHUTDOWN_BEFORE_START;
use crate::log_file::LogWriter;
use crate::process::{read_stat, signal_name};
use crate::records::{
    RECORD_VERSION, RUN_RECORD, RunRecord, STATUS_RECORD, StatusRecord, write_record,
};

/// Message of a task stopped because the agent itself shut down.
pub const LOST_AGENT_SHUTDOWN: &str = "agent shut down; task was stopped";

/// Why a task is being stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum StopReason {
    /// The cluster asked: the task ends `shutdown`.
    Asked,
    /// The agent is shutting down: the task ends `lost`, and the cluster
    /// replaces it once the agent is back.
    AgentShutdown,
}

/// A request to stop a task.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct StopRequest {
    /// SIGTERM-to-SIGKILL time.
    pub grace: Duration,
    /// Why.
    pub reason: StopReason,
}

/// What a runner tells the agent's loop.
#[derive(Debug)]
pub(crate) struct TaskEvent {
    /// Task.
    pub task: TaskId,
    /// What happened.
    pub update: TaskUpdate,
}

/// A runner's news.
#[derive(Debug)]
pub(crate) enum TaskUpdate {
    /// The process runs.
    Running {
        /// Host pid.
        pid: u32,
    },
    /// The task reached a terminal state (already recorded in `status.json`).
    Finished {
        /// Terminal state.
        state: TaskState,
        /// Explanation.
        message: String,
        /// How the process ended, if it ran.
        exit: Option<ExitInfo>,
        /// When, in milliseconds since the Unix epoch.
        finished_at_ms: u64,
    },
}

/// Everything a runner needs. No `Debug`: the assignment holds the task's
/// environment values, which must never reach a log.
pub(crate) struct Runner {
    /// The driver that runs the task.
    pub driver: Arc<dyn Driver>,
    /// The assignment it starts.
    pub assignment: Assignment,
    /// This node.
    pub node: NodeId,
    /// This node's address for published ports, if known.
    pub advertise_ip: Option<std::net::IpAddr>,
    /// `data_dir/tasks/<task_id>`.
    pub task_dir: PathBuf,
    /// Log rotation size.
    pub log_max_bytes: u64,
    /// Where the task's own tmpfs goes, if it needs one.
    pub run_dir: PathBuf,
    /// Its secrets and configs.
    pub files: TaskFiles,
    /// Stop requests.
    pub stop: watch::Receiver<Option<StopRequest>>,
    /// Where updates go.
    pub events: mpsc::Sender<TaskEvent>,
    /// Set to `true` once nothing more will be written to the task's log.
    pub log_closed: watch::Sender<bool>,
}

/// Milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The state and message for a process that ended by itself, under a memory
/// limit of `memory_limit` bytes.
pub(crate) fn exit_outcome(exit: ExitInfo, memory_limit: u64) -> (TaskState, String) {
    if exit.oom_killed {
        return (
            TaskState::Failed,
            format!(
                "OOM killed (memory limit {}; {exit})",
                format_memory(memory_limit)
            ),
        );
    }
    match (exit.code, exit.signal) {
        (_, Some(signal)) => (
            TaskState::Failed,
            format!("killed by signal {signal} ({})", signal_name(signal)),
        ),
        (Some(0), None) => (TaskState::Complete, "exit code 0".to_owned()),
        (Some(code), None) => (TaskState::Failed, format!("exit code {code}")),
        (None, None) => (TaskState::Failed, "unknown exit".to_owned()),
    }
}

impl Runner {
    /// Runs the task to a terminal state.
    pub(crate) async fn run(mut self) {
        let task = self.assignment.task.clone();
        let (state, message, exit) = self.drive().await;
        let finished_at_ms = now_ms();
        let status = StatusRecord {
            version: RECORD_VERSION,
            job: self.assignment.job.clone(),
            state,
            message: message.clone(),
            exit,
            finished_at_ms,
        };
        // The status is recorded before the run record goes: a crash in between
        // leaves both, and recovery trusts the status.
        if let Err(e) = write_record_async(self.task_dir.join(STATUS_RECORD), status).await {
            tracing::warn!(error = %e, "cannot record task status");
        }
        remove_run_record(&self.task_dir).await;
        self.log_closed.send_replace(true);
        // `reason`, not `message`: tracing takes a `message` field as the event's text.
        if state == TaskState::Failed {
            tracing::warn!(state = state.as_str(), reason = %message, "task finished");
        } else {
            tracing::info!(state = state.as_str(), reason = %message, "task finished");
        }
        let update = TaskUpdate::Finished {
            state,
            message,
            exit,
            finished_at_ms,
        };
        // The loop is gone only when the agent is: nobody to tell.
        let _ = self.events.send(TaskEvent { task, update }).await;
    }

    /// Starts and supervises the process; returns its terminal state.
    async fn drive(&mut self) -> (TaskState, String, Option<ExitInfo>) {
        let log = match self.prepare().await {
            Ok(log) => log,
            Err(e) => return (TaskState::Failed, format!("start failed: {e}"), None),
        };
        if let Some(request) = *self.stop.borrow() {
            return stopped_before_start(request.reason);
        }
        let run = TaskRun {
            task: self.assignment.task.clone(),
            job: self.assignment.job.clone(),
            slot: self.assignment.slot.clone(),
            node: self.node.clone(),
            spec: self.assignment.spec.clone(),
            task_dir: self.task_dir.clone(),
            log,
            ports: self.assignment.ports.clone(),
            advertise_ip: self.advertise_ip,
            files: std::mem::take(&mut self.files),
            run_dir: self.run_dir.clone(),
        };
        let mut handle = match self.driver.start(run).await {
            Ok(handle) => handle,
            Err(e) => return (TaskState::Failed, e.to_string(), None),
        };
        let pid = handle.pid();
        if let Err(e) = self.record_run(pid).await {
            // Without its record a crash of the agent would orphan the process:
            // do not let it run unrecorded.
            let _ = handle.stop(Duration::ZERO).await;
            return (
                TaskState::Failed,
                format!("start failed: cannot record the process: {e}"),
                None,
            );
        }
        tracing::info!(pid, "task running");
        let _ = self
            .events
            .send(TaskEvent {
                task: self.assignment.task.clone(),
                update: TaskUpdate::Running { pid },
            })
            .await;
        self.supervise(handle.as_mut()).await
    }

    async fn prepare(&self) -> Result<LogWriter, AgentError> {
        tokio::fs::create_dir_all(&self.task_dir)
            .await
            .map_err(|e| AgentError::io("create", &self.task_dir, e))?;
        LogWriter::open(&self.task_dir, self.log_max_bytes).await
    }

    /// Records the task's process so that a restarted agent can kill it.
    async fn record_run(&self, pid: u32) -> Result<(), AgentError> {
        // A raw task's process is not reaped before the handle waits for it,
        // so its /proc entry exists even if it already exited. An isolated
        // task may be over (reaped by its shim, its container gone) before
        // this: nothing to record, and its driver, not a pid, finds what a
        // crashed agent left of it.
        let Some(stat) = (pid != 0).then(|| read_stat(pid)).flatten() else {
            if self.driver.kind().is_isolated() {
                tracing::debug!(pid, "task ended before its process was recorded");
                return Ok(());
            }
            return Err(AgentError::Process {
                pid,
                reason: "no /proc entry".to_owned(),
            });
        };
        let record = RunRecord {
            version: RECORD_VERSION,
            job: self.assignment.job.clone(),
            pid,
            start_time: stat.start_time,
        };
        write_record_async(self.task_dir.join(RUN_RECORD), record).await
    }

    /// Waits for the process to exit by itself or for a stop request.
    async fn supervise(
        &mut self,
        handle: &mut dyn TaskHandle,
    ) -> (TaskState, String, Option<ExitInfo>) {
        let stop = self.stop.clone();
        let request = tokio::select! {
            res = handle.wait() => {
                return match res {
                    Ok(exit) => {
                        let (state, message) =
                            exit_outcome(exit, self.assignment.spec.resources.memory_bytes);
                        (state, message, Some(exit))
                    }
                    Err(e) => (TaskState::Failed, e.to_string(), None),
                };
            }
            request = first_stop(stop) => request,
        };
        tracing::info!(grace = %format_duration(request.grace), "stopping task");
        let (exit, forced) = match handle.stop(request.grace).await {
            Ok(done) => done,
            Err(e) => return (TaskState::Failed, e.to_string(), None),
        };
        let state = match request.reason {
            StopReason::Asked => TaskState::Shutdown,
            StopReason::AgentShutdown => TaskState::Lost,
        };
        let mut message = match request.reason {
            StopReason::Asked => "stopped".to_owned(),
            StopReason::AgentShutdown => LOST_AGENT_SHUTDOWN.to_owned(),
        };
        if forced {
            message.push_str(&format!(
                " (killed after kill timeout {})",
                format_duration(request.grace)
            ));
        }
        (state, message, Some(exit))
    }
}

/// The first stop request; never returns if the agent's loop is gone (then the
/// runner is aborted with it).
async fn first_stop(mut stop: watch::Receiver<Option<StopRequest>>) -> StopRequest {
    // Copied out at once: the watch guard must not live across an await.
    let request = stop.wait_for(Option::is_some).await.ok().and_then(|r| *r);
    match request {
        Some(request) => request,
        None => std::future::pending().await,
    }
}

fn stopped_before_start(reason: StopReason) -> (TaskState, String, Option<ExitInfo>) {
    match reason {
        StopReason::Asked => (TaskState::Shutdown, SHUTDOWN_BEFORE_START.to_owned(), None),
        StopReason::AgentShutdown => (TaskState::Lost, LOST_AGENT_SHUTDOWN.to_owned(), None),
    }
}

/// Writes a record on the blocking pool: it fsyncs twice, which must not stall
/// the runtime's workers.
async fn write_record_async<T: serde::Serialize + Send + 'static>(
    path: PathBuf,
    record: T,
) -> Result<(), AgentError> {
    tokio::task::spawn_blocking(move || write_record(&path, &record))
        .await
        .unwrap_or_else(|e| {
            Err(AgentError::Record {
                path: PathBuf::new(),
                reason: format!("writer task failed: {e}"),
            })
        })
}

async fn remove_run_record(task_dir: &std::path::Path) {
    let path = task_dir.join(RUN_RECORD);
    match tokio::fs::remove_file(&path).await {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => tracing::warn!(path = %path.display(), error = %e, "cannot remove run record"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_outcomes() {
        let exit = |code, signal| ExitInfo {
            code,
            signal,
            oom_killed: false,
        };
        let exit_outcome = |exit| exit_outcome(exit, 64 << 20);
        assert_eq!(
            exit_outcome(exit(Some(0), None)),
            (TaskState::Complete, "exit code 0".to_owned())
        );
        assert_eq!(
            exit_outcome(exit(Some(3), None)),
            (TaskState::Failed, "exit code 3".to_owned())
        );
        assert_eq!(
            exit_outcome(exit(None, Some(9))),
            (TaskState::Failed, "killed by signal 9 (SIGKILL)".to_owned())
        );
        let oom = ExitInfo {
            oom_killed: true,
            ..exit(None, Some(9))
        };
        assert_eq!(
            exit_outcome(oom),
            (
                TaskState::Failed,
                "OOM killed (memory limit 64Mi; killed by signal 9)".to_owned()
            )
        );
    }
}
