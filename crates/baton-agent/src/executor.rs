//! The executor's pure core: from the node's assignment set and what the agent
//! knows locally, the actions that converge the two.
//!
//! [`step`] reads no clock, spawns nothing and is deterministic; the agent's
//! runtime ([`crate::Agent`]) carries its [`Action`]s out and feeds their
//! results back into the local view, where task states only move forward
//! ([`moves_forward`]). Running `step` again on a converged view yields nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use baton_rpc::Assignment;
use baton_state::{TaskDesired, TaskId, TaskState};

/// Message of a task the cluster believes started but this agent never ran
/// (it was started by an earlier run of the agent, or the record is stale).
pub const LOST_NOT_RUNNING: &str = "agent restarted; task was not running";

/// Message of a task stopped before the agent ever started it.
pub const SHUTDOWN_BEFORE_START: &str = "stopped before it started";

/// What the agent knows of one task it has handled.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalTask {
    /// Observed state; only moves forward.
    pub state: TaskState,
    /// A stop was requested and is under way.
    pub stopping: bool,
    /// SIGTERM-to-SIGKILL time recorded when it started, for stopping it once
    /// it is no longer assigned (and so its spec is no longer known).
    pub kill_timeout: Duration,
}

/// One thing the runtime must do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Start a task that was never started.
    Start(Box<Assignment>),
    /// Stop a running task: SIGTERM, then SIGKILL after `kill_timeout`.
    Stop {
        /// Task.
        task: TaskId,
        /// Grace period before SIGKILL.
        kill_timeout: Duration,
    },
    /// Record and report the task `lost`: the cluster thinks it was started,
    /// and this agent does not know it. It is never started again.
    ReportLost {
        /// Task.
        task: TaskId,
        /// Why.
        message: String,
    },
    /// Record and report the task `shutdown`: it was asked to stop before it
    /// was started.
    ReportShutdown {
        /// Task.
        task: TaskId,
        /// Why.
        message: String,
    },
}

/// Whether a task may move from state `from` to `to`: forward in lifecycle
/// order, or from any non-terminal state to a terminal one; never out of a
/// terminal state.
pub fn moves_forward(from: TaskState, to: TaskState) -> bool {
    !from.is_terminal() && (to > from || to.is_terminal())
}

/// The actions that converge `local` towards `assigned`.
///
/// - A task desired `running` that the agent does not know is started only if
///   the cluster recorded it `assigned`; in any later state it is reported
///   `lost` (an earlier agent started it), so a task never runs twice.
/// - A task desired `shutdown` is stopped if it runs here, or reported
///   `shutdown` if it was never started.
/// - A task running here that is absent from the set is stopped.
/// - Tasks already stopping or finished here need nothing more.
pub fn step(assigned: &[Assignment], local: &BTreeMap<TaskId, LocalTask>) -> Vec<Action> {
    let mut actions = Vec::new();
    let mut seen = BTreeSet::new();
    for assignment in assigned {
        if !seen.insert(&assignment.task) {
            continue;
        }
        match local.get(&assignment.task) {
            Some(task) => {
                if assignment.desired == TaskDesired::Shutdown
                    && !task.state.is_terminal()
                    && !task.stopping
                {
                    actions.push(Action::Stop {
                        task: assignment.task.clone(),
                        kill_timeout: assignment.spec.kill_timeout,
                    });
                }
            }
            None => match (assignment.desired, assignment.state) {
                (_, state) if state.is_terminal() => {}
                (_, TaskState::Starting | TaskState::Running) => {
                    actions.push(Action::ReportLost {
                        task: assignment.task.clone(),
                        message: LOST_NOT_RUNNING.to_owned(),
                    });
                }
                (TaskDesired::Running, TaskState::Assigned) => {
                    actions.push(Action::Start(Box::new(assignment.clone())));
                }
                (TaskDesired::Shutdown, _) => {
                    actions.push(Action::ReportShutdown {
                        task: assignment.task.clone(),
                        message: SHUTDOWN_BEFORE_START.to_owned(),
                    });
                }
                // A `pending` task is not placed yet; the dispatcher should not
                // send one, and there is nothing to do with it.
                (TaskDesired::Running, _) => {}
            },
        }
    }
    for (id, task) in local {
        if !seen.contains(id) && !task.state.is_terminal() && !task.stopping {
            actions.push(Action::Stop {
                task: id.clone(),
                kill_timeout: task.kill_timeout,
            });
        }
    }
    actions
}

#[cfg(test)]
mod tests;
