//! Start-up recovery: what an earlier run of the agent left in `data_dir/tasks`.
//!
//! A task directory with a `status.json` is a finished task, kept with its log.
//! One with only a `run.json` was running when the earlier agent died: if the
//! recorded process is still alive (same pid *and* start time) its whole process
//! group is killed and the agent waits until it is gone; either way the task is
//! `lost` ("agent restarted; task was killed" / "...was not running"). This runs
//! before the agent opens a session, so a restart neither orphans a task nor
//! runs it twice; the cluster learns of the loss once the session is open and
//! replaces the task.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use baton_state::{ExitInfo, NodeId, TaskId, TaskState};
use nix::sys::signal::Signal;

use crate::driver::Driver;
use crate::error::AgentError;
use crate::executor::LOST_NOT_RUNNING;
use crate::process::{group_has_live_members, is_alive, signal_group};
use crate::records::{
    RECORD_VERSION, RUN_RECORD, RunRecord, STATUS_RECORD, StatusRecord, read_record, write_record,
};
use crate::runner::now_ms;

/// Message of a task whose process an agent restart found alive and killed.
pub const LOST_KILLED: &str = "agent restarted; task was killed";

/// How long to wait for a killed process group to be gone. SIGKILL cannot be
/// caught, so only a process stuck in the kernel (uninterruptible I/O) takes
/// longer than a few milliseconds.
const KILL_WAIT: Duration = Duration::from_secs(10);

/// A finished task found on disk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Recovered {
    /// Task (its directory's name).
    pub task: TaskId,
    /// Its final status.
    pub status: StatusRecord,
}

/// A process left running by the earlier agent.
struct Leftover {
    task: TaskId,
    record: RunRecord,
}

/// Reads every task directory, kills what an earlier agent left running, and
/// returns every task as finished.
pub(crate) async fn recover(
    tasks_dir: &Path,
    node: &NodeId,
    drivers: &[Arc<dyn Driver>],
) -> Result<Vec<Recovered>, AgentError> {
    let mut recovered = Vec::new();
    let mut leftovers = Vec::new();
    let entries = std::fs::read_dir(tasks_dir).map_err(|e| AgentError::io("read", tasks_dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| AgentError::io("read", tasks_dir, e))?;
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        if name.starts_with('.') || !entry.path().is_dir() {
            continue;
        }
        let dir = entry.path();
        let task = TaskId(name);
        match read_record::<StatusRecord>(&dir.join(STATUS_RECORD)) {
            Ok(Some(status)) => {
                remove_if_present(&dir.join(RUN_RECORD));
                recovered.push(Recovered { task, status });
                continue;
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(task_id = %task, error = %e, "unreadable task status"),
        }
        match read_record::<RunRecord>(&dir.join(RUN_RECORD)) {
            Ok(Some(record)) => leftovers.push(Leftover { task, record }),
            Ok(None) => recovered.push(lost(&dir, task, String::new(), LOST_NOT_RUNNING)?),
            Err(e) => {
                tracing::warn!(task_id = %task, error = %e, "unreadable run record");
                recovered.push(lost(&dir, task, String::new(), LOST_NOT_RUNNING)?);
            }
        }
    }

    // Kill every live group first, then wait: the waits overlap.
    let mut killed = Vec::with_capacity(leftovers.len());
    for leftover in &leftovers {
        let RunRecord {
            pid, start_time, ..
        } = leftover.record;
        // A pid whose start time differs is another process now: never signal it.
        let alive = is_alive(pid, start_time);
        if alive {
            tracing::info!(task_id = %leftover.task, job = %leftover.record.job, pid, "killing task left by an earlier agent");
            if let Err(e) = signal_group(pid, Signal::SIGKILL) {
                tracing::warn!(task_id = %leftover.task, pid, error = %e, "cannot kill process group");
            }
        }
        killed.push(alive);
    }
    // What the drivers keep besides the process: an isolated task's cgroup
    // (if its shim died too), containers.
    let running: Vec<TaskId> = leftovers.iter().map(|l| l.task.clone()).collect();
    let mut held = BTreeSet::new();
    for driver in drivers {
        held.extend(driver.recover(node, &running).await);
    }
    let deadline = tokio::time::Instant::now() + KILL_WAIT;
    for (leftover, alive) in leftovers.into_iter().zip(killed) {
        let RunRecord {
            pid, start_time, ..
        } = leftover.record;
        if alive && !wait_gone(pid, start_time, deadline).await {
            tracing::error!(task_id = %leftover.task, pid, "task process group still alive after SIGKILL");
        }
        let dir = tasks_dir.join(&leftover.task.0);
        let message = if alive || held.contains(&leftover.task) {
            LOST_KILLED
        } else {
            LOST_NOT_RUNNING
        };
        recovered.push(lost(&dir, leftover.task, leftover.record.job, message)?);
        remove_if_present(&dir.join(RUN_RECORD));
    }
    Ok(recovered)
}

/// Records a task `lost` in its directory.
fn lost(dir: &Path, task: TaskId, job: String, message: &str) -> Result<Recovered, AgentError> {
    let status = StatusRecord {
        version: RECORD_VERSION,
        job,
        state: TaskState::Lost,
        message: message.to_owned(),
        exit: None::<ExitInfo>,
        finished_at_ms: now_ms(),
    };
    write_record(&dir.join(STATUS_RECORD), &status)?;
    Ok(Recovered { task, status })
}

/// Polls until the process and every member of its group are gone, or the
/// deadline passes. The process is not the agent's child, so `/proc` is all
/// there is to watch.
async fn wait_gone(pid: u32, start_time: u64, deadline: tokio::time::Instant) -> bool {
    loop {
        if !is_alive(pid, start_time) && !group_has_live_members(pid) {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn remove_if_present(path: &Path) {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => tracing::warn!(path = %path.display(), error = %e, "cannot remove record"),
    }
}
