//! The scheduler: places new tasks and pending tasks on nodes.
//!
//! A task may go to a node eligible for its driver ([`State::node_eligible`])
//! whose free resources (capacity, minus what the node's unfinished tasks
//! reserve, minus what this pass already placed there) hold it. A global task
//! (slot [`Slot::Node`]) may only go to its own node.
//!
//! Ranking is best fit (bin packing): the eligible node with the least free
//! memory that still holds the task, then the least free CPU, then the lowest
//! node id. Packing leaves whole nodes free for large tasks and for draining.
//!
//! Cost: each driver has a [`BTreeSet`] of nodes keyed by free memory, so the
//! search starts at the first node with enough memory in O(log n) and walks
//! forward past nodes short of CPU. Two cuts keep that walk short: a node that
//! cannot hold the smallest task of the pass leaves the index, and a request
//! shape that fit nowhere fails at once for every request at least as large
//! (free resources only shrink during a pass).
//!
//! A task that fits nowhere stays pending with an explanation counted per
//! reason, computed once per request shape against the pass's final free
//! resources, so the same state always yields the same text and a pass does
//! not rewrite a message that did not change.

use std::collections::{BTreeMap, BTreeSet};

use baton_spec::{DriverKind, Resources};
use baton_state::{
    Node, NodeAvailability, NodeId, NodeState, PlanPlacement, PlanUnplaced, Slot, State, Task,
    TaskId, TaskState, Timestamp,
};

/// What the scheduler decided.
#[derive(Debug)]
pub(crate) struct Scheduled<'a> {
    /// Existing pending tasks to place.
    pub(crate) place: Vec<PlanPlacement>,
    /// Tasks that fit nowhere, with why (existing ones only when the text changed).
    pub(crate) unplaced: Vec<PlanUnplaced>,
    /// Every task tried and not placed, whether or not its text changed.
    failed: BTreeSet<TaskId>,
    cluster: Cluster<'a>,
}

impl Scheduled<'_> {
    /// Whether the task was tried and fit nowhere.
    pub(crate) fn is_unplaced(&self, task: &TaskId) -> bool {
        self.failed.contains(task)
    }

    /// Whether a task of `driver` needing `need` would fit on `node` once `freed`
    /// is released there, after this pass's placements.
    pub(crate) fn fits_once_freed(
        &self,
        node: &NodeId,
        driver: DriverKind,
        need: &Resources,
        freed: &Resources,
    ) -> bool {
        self.cluster.get(node).is_some_and(|entry| {
            State::node_eligible(entry.node, driver)
                && need.fits_in(&entry.free.saturating_add(freed))
        })
    }
}

/// Places `create` (new tasks, updated in place: node set, state `assigned`) and
/// `pending` (existing tasks, into [`Scheduled::place`]). Tasks whose backoff
/// runs past `now` are left alone.
pub(crate) fn schedule<'a>(
    state: &'a State,
    now: Timestamp,
    create: &mut [Task],
    pending: &[&Task],
) -> Scheduled<'a> {
    let ready = |task: &Task| task.not_before.is_none_or(|at| at <= now);
    let pinned = |task: &Task| matches!(task.slot, Slot::Node(_));
    // Global tasks go first: each has one possible node, the others have many.
    let mut order: Vec<Item> = Vec::with_capacity(create.len() + pending.len());
    for first in [true, false] {
        order.extend(
            (0..pending.len())
                .filter(|&i| pinned(pending[i]) == first && ready(pending[i]))
                .map(Item::Pending),
        );
        order.extend(
            (0..create.len())
                .filter(|&i| pinned(&create[i]) == first && ready(&create[i]))
                .map(Item::Create),
        );
    }
    let mut smallest: BTreeMap<DriverKind, Resources> = BTreeMap::new();
    for item in &order {
        let task = item.task(create, pending);
        if !pinned(task) {
            smallest
                .entry(task.driver)
                .and_modify(|least| *least = component_min(least, &task.resources))
                .or_insert(task.resources);
        }
    }
    let mut cluster = Cluster::new(state, &smallest);
    let mut place = Vec::new();
    let mut misses: Vec<Item> = Vec::new();
    for item in order {
        let task = item.task(create, pending);
        let found = match &task.slot {
            Slot::Node(id) => cluster.check(id, task.driver, &task.resources),
            Slot::Index(_) => cluster.best_fit(task.driver, &task.resources),
        };
        let Some(idx) = found else {
            misses.push(item);
            continue;
        };
        let resources = task.resources;
        cluster.commit(idx, &resources);
        let node = cluster.nodes[idx].node.id.clone();
        match item {
            Item::Pending(i) => place.push(PlanPlacement {
                task: pending[i].id.clone(),
                node,
                ports: Default::default(),
            }),
            Item::Create(i) => {
                let task = &mut create[i];
                task.node = Some(node);
                task.status.state = TaskState::Assigned;
            }
        }
    }
    // Explanations use the final free resources, so the next pass over the
    // applied plan computes the same text.
    let mut reasons: BTreeMap<(DriverKind, Resources, Option<NodeId>), String> = BTreeMap::new();
    let mut unplaced = Vec::new();
    let mut failed = BTreeSet::new();
    for item in misses {
        let task = item.task(create, pending);
        let target = match &task.slot {
            Slot::Node(id) => Some(id.clone()),
            Slot::Index(_) => None,
        };
        let reason = reasons
            .entry((task.driver, task.resources, target))
            .or_insert_with_key(|(driver, need, target)| {
                cluster.explain(*driver, need, target.as_ref())
            })
            .clone();
        failed.insert(task.id.clone());
        match item {
            Item::Pending(i) => {
                if pending[i].status.message != reason {
                    unplaced.push(PlanUnplaced {
                        task: pending[i].id.clone(),
                        reason,
                    });
                }
            }
            Item::Create(i) => {
                create[i].status.message = reason.clone();
                unplaced.push(PlanUnplaced {
                    task: create[i].id.clone(),
                    reason,
                });
            }
        }
    }
    Scheduled {
        place,
        unplaced,
        failed,
        cluster,
    }
}

/// A task to place: an index into `pending` or into `create`.
#[derive(Clone, Copy, Debug)]
enum Item {
    Pending(usize),
    Create(usize),
}

impl Item {
    fn task<'t>(self, create: &'t [Task], pending: &[&'t Task]) -> &'t Task {
        match self {
            Item::Pending(i) => pending[i],
            Item::Create(i) => &create[i],
        }
    }
}

/// Index key: free memory, free CPU, node index (node ids sort like indexes).
type FreeKey = (u64, u64, usize);

fn key(free: &Resources, idx: usize) -> FreeKey {
    (free.memory_bytes, free.cpu_millis, idx)
}

fn component_min(a: &Resources, b: &Resources) -> Resources {
    a.min(b)
}

#[derive(Debug)]
struct NodeFree<'a> {
    node: &'a Node,
    free: Resources,
}

/// The nodes eligible for one driver, ordered by free resources.
#[derive(Debug, Default)]
struct DriverIndex {
    by_free: BTreeSet<FreeKey>,
    /// The smallest request of the pass: a node that cannot hold it is dropped.
    smallest: Resources,
    /// Request shapes that fit nowhere.
    failed: Vec<Resources>,
}

/// Every node's free resources during a pass, with a free-resource index per driver.
#[derive(Debug)]
struct Cluster<'a> {
    /// Every node of the state, by id.
    nodes: Vec<NodeFree<'a>>,
    index: BTreeMap<DriverKind, DriverIndex>,
}

impl<'a> Cluster<'a> {
    fn new(state: &'a State, smallest: &BTreeMap<DriverKind, Resources>) -> Cluster<'a> {
        let nodes: Vec<NodeFree<'a>> = state
            .nodes()
            .map(|node| NodeFree {
                node,
                free: state.free(node),
            })
            .collect();
        let mut index = BTreeMap::new();
        for (&driver, &least) in smallest {
            let by_free = nodes
                .iter()
                .enumerate()
                .filter(|(_, n)| State::node_eligible(n.node, driver) && least.fits_in(&n.free))
                .map(|(idx, n)| key(&n.free, idx))
                .collect();
            index.insert(
                driver,
                DriverIndex {
                    by_free,
                    smallest: least,
                    failed: Vec::new(),
                },
            );
        }
        Cluster { nodes, index }
    }

    fn position(&self, id: &NodeId) -> Option<usize> {
        self.nodes.binary_search_by(|n| n.node.id.cmp(id)).ok()
    }

    fn get(&self, id: &NodeId) -> Option<&NodeFree<'a>> {
        self.position(id).map(|idx| &self.nodes[idx])
    }

    /// The best-fitting node for a request, if any.
    fn best_fit(&mut self, driver: DriverKind, need: &Resources) -> Option<usize> {
        let index = self.index.get_mut(&driver)?;
        if index.failed.iter().any(|shape| shape.fits_in(need)) {
            return None;
        }
        let found = index
            .by_free
            .range((need.memory_bytes, 0, 0)..)
            .find(|(_, cpu, _)| *cpu >= need.cpu_millis)
            .map(|&(_, _, idx)| idx);
        if found.is_none() {
            index.failed.push(*need);
        }
        found
    }

    /// Whether a pinned request fits its node.
    fn check(&self, id: &NodeId, driver: DriverKind, need: &Resources) -> Option<usize> {
        let idx = self.position(id)?;
        let entry = &self.nodes[idx];
        (State::node_eligible(entry.node, driver) && need.fits_in(&entry.free)).then_some(idx)
    }

    /// Takes `need` from a node and re-files it in every index it is in.
    fn commit(&mut self, idx: usize, need: &Resources) {
        let entry = &mut self.nodes[idx];
        let before = key(&entry.free, idx);
        entry.free = entry.free.saturating_sub(need);
        let after = key(&entry.free, idx);
        let free = entry.free;
        for index in self.index.values_mut() {
            if index.by_free.remove(&before) && index.smallest.fits_in(&free) {
                index.by_free.insert(after);
            }
        }
    }

    /// Why a request fits nowhere (or not on `target`), counted per reason:
    /// `no node fits: 3 nodes: insufficient memory; 1 node: down`.
    fn explain(&self, driver: DriverKind, need: &Resources, target: Option<&NodeId>) -> String {
        if let Some(id) = target {
            return match self.get(id) {
                None => format!("node {id} is not registered"),
                Some(entry) => match refusal(entry, driver, need) {
                    Some(reason) => format!("cannot run on node {id}: {reason}"),
                    None => format!("cannot run on node {id}"),
                },
            };
        }
        if self.nodes.is_empty() {
            return "no node fits: no nodes registered".to_owned();
        }
        let mut counts: BTreeMap<String, usize> = BTreeMap::new();
        for entry in &self.nodes {
            if let Some(reason) = refusal(entry, driver, need) {
                *counts.entry(reason).or_default() += 1;
            }
        }
        let mut counts: Vec<(String, usize)> = counts.into_iter().collect();
        // Most common reason first; equal counts stay in text order (stable sort).
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
}

/// Why one node refuses a request; `None` if it would take it.
fn refusal(entry: &NodeFree<'_>, driver: DriverKind, need: &Resources) -> Option<String> {
    let node = entry.node;
    if node.state == NodeState::Down {
        return Some("down".to_owned());
    }
    match node.availability {
        NodeAvailability::Drain => return Some("draining".to_owned()),
        NodeAvailability::Pause => return Some("paused".to_owned()),
        NodeAvailability::Active => {}
    }
    if !node.drivers.contains(&driver) {
        return Some(format!("driver {} not available", driver.as_str()));
    }
    let short_memory = need.memory_bytes > entry.free.memory_bytes;
    let short_cpu = need.cpu_millis > entry.free.cpu_millis;
    match (short_cpu, short_memory) {
        (true, true) => Some("insufficient cpu and memory".to_owned()),
        (true, false) => Some("insufficient cpu".to_owned()),
        (false, true) => Some("insufficient memory".to_owned()),
        (false, false) => None,
    }
}

#[cfg(test)]
mod tests;
