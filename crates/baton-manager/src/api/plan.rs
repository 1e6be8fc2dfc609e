//! `baton job plan`: what submitting a spec would do, computed on a copy of
//! the state.
//!
//! The copy (an O(1) clone of the snapshot's persistent maps) gets the
//! `PutJob`, then the control loop's own passes ([`baton_sched::plan`]),
//! each applied to the copy, until a pass has nothing more to do. No agent
//! acknowledges anything on the copy, so the passes stop where the real
//! cluster would wait for one: a rolling update shows its first step, and the
//! slots that follow are counted. Nothing is proposed; the store never sees
//! any of it.

use std::collections::{BTreeMap, BTreeSet};

use baton_api::{JobPlan, PlannedTask};
use baton_state::{ApplyError, Command, Event, Slot, State, Task, TaskId, Timestamp};

use super::handlers::submit_outcome;

/// Passes run on the copy at most. The scheduler converges in one or two
/// (a pass over its own applied plan is empty unless something waits); the
/// bound only guards against a pass that keeps finding work.
const MAX_PASSES: u64 = 8;

/// What `put` (a [`Command::PutJob`] for job `name`) would do to that job,
/// from `state` at `now`. `seed` draws the task ids of the copy.
pub(super) fn plan_submission(
    state: &State,
    put: Command,
    name: &str,
    now: Timestamp,
    seed: u64,
) -> Result<JobPlan, ApplyError> {
    let mut after = state.clone();
    let outcome = submit_outcome(&after.apply(put)?);
    // Tasks of other jobs stopped to make room, with the task they make room for.
    let mut evictions: BTreeMap<TaskId, TaskId> = BTreeMap::new();
    for pass in 0..MAX_PASSES {
        let output = baton_sched::plan(&after, now, seed.wrapping_add(pass));
        if output.plan.is_empty() {
            break;
        }
        for stop in &output.plan.stop {
            if let Some(by) = &stop.preempted_by {
                evictions.insert(stop.task.clone(), by.clone());
            }
        }
        let events = after.apply(Command::ApplyPlan {
            plan: output.plan,
            now,
        })?;
        if events.iter().all(|e| matches!(e, Event::Ignored { .. })) {
            break;
        }
    }
    let job = after.job(name).ok_or_else(|| ApplyError::JobNotFound {
        name: name.to_owned(),
    })?;

    let mut plan = JobPlan {
        job: name.to_owned(),
        kind: job.spec.kind.as_str().to_owned(),
        outcome,
        version: job.version,
        create: Vec::new(),
        place: Vec::new(),
        stop: Vec::new(),
        preempt: Vec::new(),
        keep: Vec::new(),
        later_updates: 0,
    };
    let mut tasks: Vec<&Task> = after.tasks_of_job(name).collect();
    tasks.sort_by(|a, b| (&a.slot, &a.id).cmp(&(&b.slot, &b.id)));
    for task in &tasks {
        let Some(earlier) = state.task(&task.id) else {
            plan.create.push(planned(task));
            continue;
        };
        if !earlier.is_live() {
            // Already finished, or already being stopped: not this plan's doing.
            continue;
        }
        if !task.is_live() {
            plan.stop.push(planned(task));
        } else if earlier.node.is_none() && task.node.is_some() {
            plan.place.push(planned(task));
        } else {
            plan.keep.push(planned(task));
        }
    }
    for (evicted, by) in &evictions {
        let for_this_job = after.task(by).is_some_and(|t| t.job == name);
        if let Some(task) = after.task(evicted)
            && for_this_job
            && task.job != name
        {
            plan.preempt.push(planned(task));
        }
    }
    // A rolling update: slots whose only live tasks still run an older
    // version get their new task later, one at a time.
    let mut current_slots: BTreeSet<&Slot> = BTreeSet::new();
    let mut old_slots: BTreeSet<&Slot> = BTreeSet::new();
    for task in tasks.iter().filter(|t| t.is_live()) {
        if task.job_version == job.version {
            current_slots.insert(&task.slot);
        } else {
            old_slots.insert(&task.slot);
        }
    }
    plan.later_updates =
        u32::try_from(old_slots.difference(&current_slots).count()).unwrap_or(u32::MAX);
    Ok(plan)
}

/// A task as the plan shows it.
fn planned(task: &Task) -> PlannedTask {
    PlannedTask {
        id: task.id.0.clone(),
        job: task.job.clone(),
        job_version: task.job_version,
        slot: task.slot.to_string(),
        node: task.node.as_ref().map(|n| n.0.clone()),
        state: task.status.state.as_str().to_owned(),
        message: task.status.message.clone(),
        ports: task.ports.clone(),
    }
}
