//! One job's placement rules as a pass uses them: its spec's constraints,
//! ports, priority and limits, and its tasks counted per node and per spread
//! value (the state's plus this pass's).

use std::collections::HashMap;

use baton_spec::{
    Affinity, DEFAULT_PRIORITY, DriverKind, JobKind, JobSpec, PortSpec, Spread, Strategy,
};
use baton_state::{Node, Slot, State, Task};

use super::nodes::Nodes;
use super::spread::SpreadCounts;
use crate::feasible;

/// A job with tasks to place in this pass.
#[derive(Debug)]
pub(super) struct JobRules<'a> {
    /// Its name.
    pub(super) name: String,
    /// Its spec; `None` for tasks of a job the state does not know (placed by
    /// driver and resources alone).
    pub(super) spec: Option<&'a JobSpec>,
    /// The driver its tasks need.
    pub(super) driver: DriverKind,
    /// Higher goes first.
    pub(super) priority: u32,
    /// Whether its tasks may evict lower-priority ones.
    pub(super) preempt: bool,
    /// Fullest or emptiest node first.
    pub(super) strategy: Strategy,
    /// Host ports of each task.
    pub(super) ports: &'a [PortSpec],
    /// The static ones among them, in spec order.
    pub(super) static_ports: Vec<u16>,
    /// How many dynamic ones.
    pub(super) n_dynamic: u32,
    /// At most this many of its tasks on one node.
    pub(super) max_per_node: Option<u32>,
    /// Its unfinished tasks per node index, the state's (see [`count_tasks`])
    /// and this pass's; only with `max_per_node` or a spread.
    per_node: Vec<u32>,
    /// What its spread counts per node index: the tasks that stay, that is
    /// live ones (not being stopped) of slots this pass does not place (a
    /// slot placed now gets a new task that replaces the one it has), and
    /// this pass's; only with a spread.
    spread_per_node: Vec<u32>,
    /// The slots this pass places, sorted once counted; only with a spread.
    placing: Vec<u32>,
    /// Per node index, its tasks that preemption set room aside for in this
    /// pass (they go there next pass); only with `max_per_node`, once any.
    claimed: Vec<u32>,
    /// The placement class of its tasks that may go anywhere.
    pub(super) class: Option<usize>,
    /// Its tasks per spread value, once its class is built.
    pub(super) spread: Option<SpreadCounts>,
}

impl<'a> JobRules<'a> {
    pub(super) fn new(
        state: &'a State,
        nodes: &Nodes<'a>,
        name: &str,
        driver: DriverKind,
    ) -> JobRules<'a> {
        // Counts are filled by `count_tasks`, for every job at once.
        let spec = state.job(name).map(|job| &job.spec);
        let ports: &'a [PortSpec] = spec.map_or(&[], |s| s.task.ports.as_slice());
        let static_ports: Vec<u16> = ports.iter().filter_map(|p| p.static_port).collect();
        let n_dynamic = ports.iter().filter(|p| p.static_port.is_none()).count();
        let max_per_node = spec.and_then(|s| s.placement.max_per_node);
        let counted = max_per_node.is_some() || spec.is_some_and(|s| s.placement.spread.is_some());
        let per_node = if counted {
            vec![0; nodes.len()]
        } else {
            Vec::new()
        };
        let spread_per_node = if spec.is_some_and(|s| s.placement.spread.is_some()) {
            vec![0; nodes.len()]
        } else {
            Vec::new()
        };
        JobRules {
            name: name.to_owned(),
            spec,
            driver: spec.map_or(driver, |s| s.task.driver),
            priority: spec.map_or(DEFAULT_PRIORITY, |s| s.placement.priority),
            preempt: spec.is_some_and(|s| s.placement.preempt),
            strategy: spec.map_or(Strategy::Binpack, |s| s.placement.strategy),
            ports,
            static_ports,
            n_dynamic: u32::try_from(n_dynamic).expect("few ports"),
            max_per_node,
            per_node,
            spread_per_node,
            placing: Vec::new(),
            claimed: Vec::new(),
            class: None,
            spread: None,
        }
    }

    /// Whether the node takes new tasks of the job at all (ready, active,
    /// driver, constraints): [`feasible::takes_new`].
    pub(super) fn takes_new(&self, state: &State, node: &Node) -> bool {
        match self.spec {
            Some(spec) => feasible::takes_new(state, node, spec),
            None => State::node_eligible(node, self.driver),
        }
    }

    /// Its affinities.
    pub(super) fn affinities(&self) -> &'a [Affinity] {
        self.spec.map_or(&[], |s| s.placement.affinities.as_slice())
    }

    /// Its spread, if any.
    pub(super) fn spread_spec(&self) -> Option<&'a Spread> {
        self.spec.and_then(|s| s.placement.spread.as_ref())
    }

    /// Its unfinished tasks on a node (0 unless it has `max_per_node` or a
    /// spread).
    pub(super) fn on_node(&self, idx: usize) -> u32 {
        self.per_node.get(idx).copied().unwrap_or(0)
    }

    /// Whether `max_per_node` still lets a task onto the node, counting the
    /// tasks room was set aside for there.
    pub(super) fn below_cap(&self, idx: usize) -> bool {
        self.max_per_node.is_none_or(|max| {
            let claimed = self.claimed.get(idx).copied().unwrap_or(0);
            self.on_node(idx).saturating_add(claimed) < max
        })
    }

    /// Counts a task that preemption set room aside for on a node, against
    /// `max_per_node`.
    pub(super) fn claimed_on(&mut self, idx: usize) {
        if self.max_per_node.is_some() {
            if self.claimed.is_empty() {
                self.claimed = vec![0; self.per_node.len()];
            }
            if let Some(count) = self.claimed.get_mut(idx) {
                *count += 1;
            }
        }
    }

    /// Whether it counts its tasks per node.
    fn counted(&self) -> bool {
        !self.per_node.is_empty()
    }

    /// Its tasks per node index as its spread counts them: the tasks that
    /// stay, and this pass's.
    pub(super) fn spread_per_node(&self) -> &[u32] {
        &self.spread_per_node
    }

    /// Notes that this pass places a task of slot `slot` (with a spread only).
    pub(super) fn placing(&mut self, slot: u32) {
        if !self.spread_per_node.is_empty() {
            self.placing.push(slot);
        }
    }

    /// Counts one of its tasks of the state on node `idx`.
    fn count(&mut self, task: &Task, idx: usize) {
        self.per_node[idx] += 1;
        if !self.spread_per_node.is_empty()
            && task.is_live()
            && !matches!(task.slot, Slot::Index(i) if self.placing.binary_search(&i).is_ok())
        {
            self.spread_per_node[idx] += 1;
        }
    }

    /// A rough number of its tasks in the state, to choose how to count them.
    fn estimate(&self, n_nodes: usize) -> usize {
        let kind = self.spec.map(|s| s.kind);
        let n = match kind {
            Some(JobKind::Service { replicas }) => replicas as usize,
            Some(JobKind::Batch { parallelism, .. }) => parallelism as usize,
            Some(JobKind::Global) => n_nodes,
            None => 0,
        };
        // Finished tasks kept as history, and tasks being stopped.
        2 * n
    }

    /// Counts a task placed on a node.
    pub(super) fn placed_on(&mut self, idx: usize) {
        if let Some(count) = self.per_node.get_mut(idx) {
            *count += 1;
        }
        if let Some(count) = self.spread_per_node.get_mut(idx) {
            *count += 1;
        }
    }
}

/// Counts the unfinished tasks in the state of every job that counts them,
/// per node. A job's own task list costs a lookup by task id per task; when
/// the counted jobs hold a good share of the state (a large job scaled up, a
/// node lost under spread services), one sequential walk over every task is
/// several times cheaper.
pub(super) fn count_tasks(state: &State, nodes: &Nodes<'_>, jobs: &mut [JobRules<'_>]) {
    let counted: Vec<usize> = (0..jobs.len()).filter(|&j| jobs[j].counted()).collect();
    if counted.is_empty() {
        return;
    }
    for &j in &counted {
        jobs[j].placing.sort_unstable();
        jobs[j].placing.dedup();
    }
    let estimate: usize = counted.iter().map(|&j| jobs[j].estimate(nodes.len())).sum();
    if estimate.saturating_mul(6) >= state.n_tasks() {
        let by_name: HashMap<String, usize> =
            counted.iter().map(|&j| (jobs[j].name.clone(), j)).collect();
        for task in state.tasks().filter(|t| t.is_active()) {
            if let (Some(&j), Some(idx)) = (
                by_name.get(task.job.as_str()),
                task.node.as_ref().and_then(|id| nodes.position(id)),
            ) {
                jobs[j].count(task, idx);
            }
        }
    } else {
        for j in counted {
            let rules = &mut jobs[j];
            for task in state.tasks_of_job(&rules.name).filter(|t| t.is_active()) {
                if let Some(idx) = task.node.as_ref().and_then(|id| nodes.position(id)) {
                    rules.count(task, idx);
                }
            }
        }
    }
}
