//! Reconciler and scheduler: one pure pass from a state snapshot to a [`Plan`].
//!
//! [`plan`] runs the reconciler (`reconcile.rs`: desired slots against actual
//! tasks, giving tasks to create, stop and forget) and then the scheduler
//! (`schedule.rs`: nodes for new and pending tasks). The manager proposes the
//! result as `Command::ApplyPlan`, and `State::apply` re-checks every item, so a
//! plan computed on a stale snapshot is harmless.
//!
//! Architecture invariants: this crate reads no clock (`now` is an argument),
//! draws no randomness but from the `seed` argument, does no I/O and holds no
//! state between passes. The same `(state, now, seed)` always yields the same
//! output. A pass over the state that results from applying its own plan, at
//! the same `now`, yields an empty plan unless something was left waiting.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod feasible;
mod ids;
mod reconcile;
mod schedule;
mod timefmt;

#[cfg(test)]
mod placement_props;
#[cfg(test)]
mod proptests;
#[cfg(test)]
mod sim;
#[cfg(test)]
mod testkit;
#[cfg(test)]
mod tests;

use baton_state::{ChangeMark, Plan, PlanStop, State, Timestamp};

use crate::ids::IdGen;
use crate::reconcile::Reconciled;

/// The result of one pass.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PlanOutput {
    /// What to change.
    pub plan: Plan,
    /// The earliest time after `now` at which a pass would do something new (a
    /// restart backoff expiring), if any. Other changes arrive as commands.
    pub next_wakeup: Option<Timestamp>,
}

/// One reconcile + schedule pass over `state` at time `now`. Task ids are drawn
/// from `seed`: `<job>.<slot>.<12 lowercase hex>`.
pub fn plan(state: &State, now: Timestamp, seed: u64) -> PlanOutput {
    plan_scoped(state, now, seed, None)
}

/// The same pass as [`plan`], reconciling only the jobs that may have
/// something to do since `mark` (see [`State::jobs_changed_since`]): what a
/// pass over the state at `mark` planned was applied, so the jobs untouched
/// since then have nothing new to do. The result equals [`plan`]'s; its cost
/// follows the changes, not the size of the cluster. Without a mark (or one
/// of another history), every job is reconciled.
pub fn plan_since(
    state: &State,
    mark: Option<ChangeMark>,
    now: Timestamp,
    seed: u64,
) -> PlanOutput {
    let scope = mark.and_then(|mark| state.jobs_changed_since(mark));
    plan_scoped(state, now, seed, scope.as_ref())
}

fn plan_scoped(
    state: &State,
    now: Timestamp,
    seed: u64,
    scope: Option<&std::collections::BTreeSet<&str>>,
) -> PlanOutput {
    let mut ids = IdGen::new(seed);
    let Reconciled {
        mut create,
        pending,
        mut stop,
        remove,
        if_unplaced,
        next_wakeup,
    } = reconcile::reconcile(state, now, &mut ids, scope);
    let scheduled = schedule::schedule(state, now, &mut create, &pending);
    for fallback in if_unplaced {
        if !scheduled.is_unplaced(&fallback.new_task) {
            continue;
        }
        let reason = match fallback.room_for {
            Some(spec) if scheduled.frees_room(state, spec, fallback.old) => fallback.reason,
            Some(_) => continue,
            None => format!("{} (its replacement fits nowhere)", fallback.reason),
        };
        stop.push(PlanStop {
            task: fallback.old.id.clone(),
            reason,
            preempted_by: None,
        });
    }
    stop.extend(scheduled.preempt);
    PlanOutput {
        plan: Plan {
            create,
            place: scheduled.place,
            stop,
            unplaced: scheduled.unplaced,
            remove,
        },
        next_wakeup,
    }
}
