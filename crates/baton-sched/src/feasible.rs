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

/// Whether `node` may keep running a task of `spec` it already runs: paused
/// nodes keep their tasks; a node that lost the driver, is down or draining,
/// or no longer satisfies a constraint does not.
pub(crate) fn may_keep(state: &State, node: &Node, spec: &JobSpec) -> bool {
    node.availability != NodeAvailability::Drain
        && node.drivers.contains(&spec.task.driver)
        && constraints_hold(state, node, spec)
}
