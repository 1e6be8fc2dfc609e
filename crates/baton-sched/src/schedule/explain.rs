//! Why a task fits nowhere: the first reason each node refuses it, counted
//! per reason (`no node fits: 3 nodes: insufficient memory; 1 node: down`).
//!
//! Computed once per request shape after the pass, against its final free
//! resources and ports, so a pass over the state its plan led to computes
//! the same text and does not rewrite an unchanged message.

use std::collections::BTreeMap;
use std::fmt;

use baton_spec::{DriverKind, Resources};
use baton_state::{NodeAvailability, NodeState, State};

use super::jobs::JobRules;
use super::nodes::Nodes;

/// Why one node does not take a task.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Refusal<'a> {
    /// The node's agent is gone.
    Down,
    /// The node moves its tasks away.
    Draining,
    /// The node takes no new tasks.
    Paused,
    /// The node lacks the task's driver.
    NoDriver(DriverKind),
    /// The first of the job's constraints the node fails, as written.
    Constraint(&'a str),
    /// The node holds `max_per_node` of the job's tasks already.
    MaxPerNode(u32),
    /// A static port of the task is held on the node.
    PortInUse(u16),
    /// The node's dynamic range is used up.
    NoDynamicPort,
    /// Which resources are short.
    Insufficient { cpu: bool, memory: bool, disk: bool },
    /// Not eligible for a reason none of the above names (never expected).
    Ineligible,
}

impl fmt::Display for Refusal<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::Down => f.write_str("down"),
            Refusal::Draining => f.write_str("draining"),
            Refusal::Paused => f.write_str("paused"),
            Refusal::NoDriver(driver) => write!(f, "no {} driver", driver.as_str()),
            Refusal::Constraint(text) => write!(f, "constraint {text} not met"),
            Refusal::MaxPerNode(max) => write!(f, "max_per_node {max} reached"),
            Refusal::PortInUse(port) => write!(f, "port {port} in use"),
            Refusal::NoDynamicPort => f.write_str("no dynamic port left"),
            Refusal::Ineligible => f.write_str("not eligible"),
            Refusal::Insufficient { cpu, memory, disk } => {
                let short: Vec<&str> = [(*cpu, "cpu"), (*memory, "memory"), (*disk, "disk")]
                    .into_iter()
                    .filter_map(|(is_short, name)| is_short.then_some(name))
                    .collect();
                match short.as_slice() {
                    [] => f.write_str("insufficient resources"),
                    [one] => write!(f, "insufficient {one}"),
                    [init @ .., last] => write!(f, "insufficient {} and {last}", init.join(", ")),
                }
            }
        }
    }
}

/// The first reason node `idx` refuses a task of `rules` needing `need`, in
/// the order a user would fix them: the node, the job's rules, then room.
/// `None` if it would take it.
pub(super) fn refusal<'a>(
    state: &State,
    nodes: &Nodes<'_>,
    rules: &JobRules<'a>,
    idx: usize,
    need: &Resources,
) -> Option<Refusal<'a>> {
    let node = nodes.list[idx];
    if !rules.takes_new(state, node) {
        if node.state == NodeState::Down {
            return Some(Refusal::Down);
        }
        match node.availability {
            NodeAvailability::Drain => return Some(Refusal::Draining),
            NodeAvailability::Pause => return Some(Refusal::Paused),
            NodeAvailability::Active => {}
        }
        if !node.drivers.contains(&rules.driver) {
            return Some(Refusal::NoDriver(rules.driver));
        }
        let view = state.node_view(node);
        let failed = rules
            .spec
            .into_iter()
            .flat_map(|spec| spec.placement.constraints.iter())
            .find(|c| !c.matches(&view));
        return Some(failed.map_or(Refusal::Ineligible, |c| Refusal::Constraint(c.as_str())));
    }
    // Tasks already there, not those room was set aside for: their room
    // shows as taken below, as it does for a task that may exceed no cap.
    if let Some(max) = rules.max_per_node
        && rules.on_node(idx) >= max
    {
        return Some(Refusal::MaxPerNode(max));
    }
    if let Some(port) = nodes.first_in_use(idx, &rules.static_ports) {
        return Some(Refusal::PortInUse(port));
    }
    if nodes.dynamic_room(idx, &rules.static_ports) < rules.n_dynamic {
        return Some(Refusal::NoDynamicPort);
    }
    let free = &nodes.free[idx];
    let cpu = need.cpu_millis > free.cpu_millis;
    let memory = need.memory_bytes > free.memory_bytes;
    let disk = need.disk_bytes > free.disk_bytes;
    (cpu || memory || disk).then_some(Refusal::Insufficient { cpu, memory, disk })
}

/// Why a task that may go anywhere fits nowhere, counted per reason, most
/// common first (equal counts in text order).
pub(super) fn anywhere(
    state: &State,
    nodes: &Nodes<'_>,
    rules: &JobRules<'_>,
    need: &Resources,
) -> String {
    if nodes.len() == 0 {
        return "no node fits: no nodes registered".to_owned();
    }
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for idx in 0..nodes.len() {
        if let Some(reason) = refusal(state, nodes, rules, idx, need) {
            *counts.entry(reason.to_string()).or_default() += 1;
        }
    }
    if counts.is_empty() {
        return "no node fits".to_owned();
    }
    let mut counts: Vec<(String, usize)> = counts.into_iter().collect();
    counts.sort_by_key(|(_, n)| std::cmp::Reverse(*n));
    let parts: Vec<String> = counts
        .iter()
        .map(|(reason, n)| {
            let noun = if *n == 1 { "node" } else { "nodes" };
            format!("{n} {noun}: {reason}")
        })
        .collect();
    format!("no node fits: {}", parts.join("; "))
}

/// Why a task pinned to node `idx` does not fit there.
pub(super) fn on_node(
    state: &State,
    nodes: &Nodes<'_>,
    rules: &JobRules<'_>,
    idx: usize,
    need: &Resources,
) -> String {
    let id = &nodes.list[idx].id;
    match refusal(state, nodes, rules, idx, need) {
        Some(reason) => format!("cannot run on node {id}: {reason}"),
        None => format!("cannot run on node {id}"),
    }
}
