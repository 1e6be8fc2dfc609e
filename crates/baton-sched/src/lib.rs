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
/// follows the changes, not the size of the cluster. Without a mark, or when
/// nodes changed, every job is reconciled.
pub fn plan_since(
    state: &State,
    mark: Option<ChangeMark>,
    now: Timestamp,
    seed: u64,
) -> PlanOutput {
    let scope = mark.and_then(|mark| state.jobs_changed_since(mark));
    plan_scoped(state, now, seed, scope.as_ref())
}

/// Whether every static port of `task` is free on `node` once `old` (and
/// the ports it holds) is gone.
fn static_ports_free_once_freed(
    state: &State,
    node: &baton_state::Node,
    task: &baton_spec::TaskSpec,
    old: &baton_state::Task,
) -> bool {
    let in_use = state.ports_in_use(&node.id);
    task.ports.iter().filter_map(|p| p.static_port).all(|port| {
        in_use.is_none_or(|used| !used.contains(&port)) || old.ports.values().any(|p| *p == port)
    })
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
        make_room,
        evict_if_unplaced,
        next_wakeup,
    } = reconcile::reconcile(state, now, &mut ids, scope);
    let scheduled = schedule::schedule(state, now, &mut create, &pending);
    for room in make_room {
        let task = &room.spec.task;
        let helps = room
            .old
            .node
            .as_ref()
            .and_then(|id| state.node(id))
            .is_some_and(|node| {
                feasible::takes_new(state, node, room.spec)
                    && static_ports_free_once_freed(state, node, task, room.old)
                    && scheduled.fits_once_freed(
                        &node.id,
                        task.driver,
                        &task.resources,
                        &room.old.resources,
                    )
            });
        if scheduled.is_unplaced(&room.new_task) && helps {
            stop.push(PlanStop {
                task: room.old.id.clone(),
                reason: room.reason,
                preempted_by: None,
            });
        }
    }
    for evict in evict_if_unplaced {
        if scheduled.is_unplaced(&evict.new_task) {
            stop.push(PlanStop {
                task: evict.old.id.clone(),
                reason: format!("{} (its replacement fits nowhere)", evict.reason),
                preempted_by: None,
            });
        }
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
