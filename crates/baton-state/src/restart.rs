//! The restart rule, shared by the reconciler (what to do) and job summaries
//! (what to say).

use baton_spec::{JobKind, RestartCondition, RestartPolicy};

use crate::ids::Timestamp;
use crate::objects::{Task, TaskDesired, TaskState};

/// What should follow a slot's latest task.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RestartDecision {
    /// The task still runs (or is being stopped on purpose): nothing to do.
    Wait,
    /// The slot is done: a batch task exited 0, or a service task exited 0 under
    /// `on-failure`/`never`.
    Done,
    /// Start restart number `restarts`, not before `not_before`.
    Restart {
        /// The new task's restart count.
        restarts: u32,
        /// Backoff deadline.
        not_before: Timestamp,
    },
    /// The slot gave up: the policy forbids another restart.
    GiveUp,
}

/// Decides what follows `last`, the newest task of its slot.
pub fn restart_decision(kind: &JobKind, policy: &RestartPolicy, last: &Task) -> RestartDecision {
    let state = last.status.state;
    if !state.is_terminal() || last.desired == TaskDesired::Shutdown {
        return RestartDecision::Wait;
    }
    let finished = last.status.finished_at.unwrap_or(last.status.since);
    let next = |restarts: u32| RestartDecision::Restart {
        restarts,
        not_before: finished.plus(policy.backoff(restarts)),
    };
    match state {
        TaskState::Complete => match (kind, policy.condition) {
            (JobKind::Batch { .. }, _) => RestartDecision::Done,
            (_, RestartCondition::Always) => next(last.restarts.saturating_add(1)),
            _ => RestartDecision::Done,
        },
        // A lost task did not fail on its own: it is always replaced and does not
        // count against `max_attempts`.
        TaskState::Lost => RestartDecision::Restart {
            restarts: last.restarts,
            not_before: finished,
        },
        _ => {
            let exhausted = policy.max_attempts > 0 && last.restarts >= policy.max_attempts;
            if policy.condition == RestartCondition::Never || exhausted {
                RestartDecision::GiveUp
            } else {
                next(last.restarts.saturating_add(1))
            }
        }
    }
}
