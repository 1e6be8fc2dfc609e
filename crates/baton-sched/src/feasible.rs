//! Whether a node may take a job's tasks at all, before resources: the one
//! definition the reconciler (global jobs, constraint enforcement) and the
//! scheduler share.

use baton_spec::JobSpec;
use baton_state::{Node, NodeAvailability, State};

/// Whether every hard constraint of `spec` holds on `node` (its labels,
/// hostname, role, id, drivers), whatever the node's state.
pub(crate) fn constraints_hold(state: &State, node: &Node, spec: &JobSpec) -> bool {
    let view = state.node_view(node);
    spec.placement.constraints.iter().all(|c| c.matches(&view))
}

/// Whether `node` takes new tasks of `spec` now: ready, active, offering the
/// task's driver, and satisfying every constraint.
pub(crate) fn takes_new(state: &State, node: &Node, spec: &JobSpec) -> bool {
    State::node_eligible(node, spec.task.driver) && constraints_hold(state, node, spec)
}

/// Why `node` may no longer run a task of `spec`, if so: it drains, no
/// longer offers the task's driver, or (when `constraints`) fails one of
/// the job's constraints. A paused node keeps its tasks; a down node's tasks
/// are already lost. `constraints` is off for a task of an older job
/// version: it is held to its own version's rules, and the rolling update
/// replaces it.
pub(crate) fn why_leave(
    state: &State,
    node: &Node,
    spec: &JobSpec,
    constraints: bool,
) -> Option<String> {
    let id = &node.id;
    if node.availability == NodeAvailability::Drain {
        return Some(format!("node {id} is draining"));
    }
    let driver = spec.task.driver;
    if !node.drivers.contains(&driver) {
        return Some(format!(
            "node {id} no longer offers the {} driver",
            driver.as_str()
        ));
    }
    // Checked for every running task on every pass: no role lookup for the
    // jobs without constraints.
    if !constraints || spec.placement.constraints.is_empty() {
        return None;
    }
    let view = state.node_view(node);
    spec.placement
        .constraints
        .iter()
        .find(|c| !c.matches(&view))
        .map(|c| format!("node {id} no longer satisfies constraint {c}"))
}
