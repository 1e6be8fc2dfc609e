//! The scheduler: places new and pending tasks on nodes, explains the ones
//! that fit nowhere, and evicts lower-priority tasks for those whose job may
//! preempt.
//!
//! **Feasibility.** A node takes a task if it takes new tasks of the job at
//! all ([`crate::feasible::takes_new`]: ready, active, the driver, every
//! constraint), holds its resources (CPU, memory, disk: free capacity minus
//! what this pass already placed there), has every static port of the task
//! free and a free dynamic port for each dynamic one (the lowest free ports
//! of the dynamic range), and holds fewer than `max_per_node` of the job's
//! unfinished tasks. A global task (slot [`Slot::Node`]) only goes to its node.
//!
//! **Order.** By job priority, highest first; within a priority, global
//! tasks first (each has one possible node, the others have many); then by
//! job name and slot. Priority comes before the global-first rule so that
//! nothing of a lower priority takes room a higher one needs: a preempting
//! task's freed room would otherwise go to the lower-priority global task it
//! evicted, and the two would evict each other forever. Nothing depends on
//! hash order: the same snapshot always yields the same plan.
//!
//! **Ranking.** Among the nodes that take a task: with a spread, the
//! attribute value furthest below its share of the job's tasks (nodes without
//! the attribute only when no valued node has room; see `spread.rs`); then
//! the highest affinity score; then the job's strategy: binpack takes the
//! fullest node that holds the task (least free memory, then CPU), which
//! leaves whole nodes free for big tasks and for draining, spread the
//! emptiest; then the lowest node id.
//!
//! **Cost.** Tasks are grouped in placement classes (`class.rs`); each class
//! keeps its nodes in trees ordered by free resources (`index.rs`), one per
//! spread value and affinity score, so a placement is a few O(log n) searches
//! and re-files its node in each class holding it, O(log n) each. No pass
//! scans nodes per task. A node that can no longer take a class's smallest
//! request leaves the class, and a request shape that fit nowhere in a class
//! fails at once for every request of the class at least as large (free
//! resources only shrink during a pass).
//!
//! **Explanations.** A task that fits nowhere stays pending with the reasons
//! nodes refused it, counted per reason (`explain.rs`), computed once per
//! request shape against the pass's final free resources, so the same state
//! always yields the same text and a pass does not rewrite a message that
//! did not change.
//!
//! **Preemption.** A task that fits nowhere, of a job with `preempt: true`,
//! waits for room being freed or evicts tasks of lower-priority jobs
//! (`preempt.rs`); it stays pending until a later pass places it.

mod class;
mod explain;
mod index;
mod jobs;
mod nodes;
mod preempt;
mod spread;

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, HashMap};

use baton_spec::{JobSpec, Resources};
use baton_state::{
    PlanPlacement, PlanStop, PlanUnplaced, Slot, State, Task, TaskId, TaskState, Timestamp,
};

use self::class::{ClassKey, Classes};
use self::jobs::JobRules;
use self::nodes::Nodes;
use self::preempt::Preemption;
use self::spread::SpreadCounts;

/// What the scheduler decided.
#[derive(Debug)]
pub(crate) struct Scheduled<'a> {
    /// Existing pending tasks to place.
    pub(crate) place: Vec<PlanPlacement>,
    /// Tasks that fit nowhere, with why (existing ones only when the text changed).
    pub(crate) unplaced: Vec<PlanUnplaced>,
    /// Tasks evicted for higher-priority ones.
    pub(crate) preempt: Vec<PlanStop>,
    /// Every task tried and not placed, whether or not its text changed.
    failed: BTreeSet<TaskId>,
    nodes: Nodes<'a>,
}

impl Scheduled<'_> {
    /// Whether the task was tried and fit nowhere.
    pub(crate) fn is_unplaced(&self, task: &TaskId) -> bool {
        self.failed.contains(task)
    }

    /// Whether stopping `old` frees room on its node for a task of `spec`,
    /// after this pass's placements: the node takes the job
    /// ([`crate::feasible::takes_new`]), the task's static ports are free
    /// there once `old`'s are, and its resources fit once `old`'s are released.
    pub(crate) fn frees_room(&self, state: &State, spec: &JobSpec, old: &Task) -> bool {
        let Some(node) = old.node.as_ref().and_then(|id| state.node(id)) else {
            return false;
        };
        let Some(idx) = self.nodes.position(&node.id) else {
            return false;
        };
        let in_use = state.ports_in_use(&node.id);
        let ports_free = spec
            .task
            .ports
            .iter()
            .filter_map(|p| p.static_port)
            .all(|port| {
                in_use.is_none_or(|used| !used.contains(&port))
                    || old.ports.values().any(|p| *p == port)
            });
        crate::feasible::takes_new(state, node, spec)
            && ports_free
            && spec
                .task
                .resources
                .fits_in(&self.nodes.free[idx].saturating_add(&old.resources))
    }
}

/// Places `create` (new tasks, updated in place: node, ports and state
/// `assigned` set) and `pending` (existing tasks, into [`Scheduled::place`]).
/// Tasks whose backoff runs past `now` are left alone.
pub(crate) fn schedule<'a>(
    state: &'a State,
    now: Timestamp,
    create: &mut [Task],
    pending: &[&Task],
) -> Scheduled<'a> {
    let mut pass = Pass {
        state,
        nodes: Nodes::new(state),
        jobs: Vec::new(),
        classes: Classes::default(),
        preemption: Preemption::default(),
        preempted: Vec::new(),
    };
    let items = pass.order(now, create, pending);
    let mut place = Vec::new();
    let mut misses: Vec<(Item, bool)> = Vec::new();
    for item in items {
        let need = item.src.task(create, pending).resources;
        let Some(idx) = pass.find(&item, &need) else {
            let waits = match item.target {
                _ if !pass.jobs[item.job].preempt => false,
                Target::Unregistered => false,
                Target::Node(idx) => {
                    let id = item.src.task(create, pending).id.clone();
                    pass.preempt(item.job, &id, &need, Some(idx))
                }
                Target::Anywhere => {
                    let id = item.src.task(create, pending).id.clone();
                    pass.preempt(item.job, &id, &need, None)
                }
            };
            misses.push((item, waits));
            continue;
        };
        let ports = pass.commit(idx, item.job, &need);
        let node = pass.nodes.list[idx].id.clone();
        match item.src {
            Src::Pending(i) => place.push(PlanPlacement {
                task: pending[i].id.clone(),
                node,
                ports,
            }),
            Src::Create(i) => {
                let task = &mut create[i];
                task.node = Some(node);
                task.ports = ports;
                task.status.state = TaskState::Assigned;
            }
        }
    }
    let (unplaced, failed) = pass.explain(&misses, create, pending);
    Scheduled {
        place,
        unplaced,
        preempt: pass.preempted,
        failed,
        nodes: pass.nodes,
    }
}

/// A task to place: an index into `pending` or into `create`.
#[derive(Clone, Copy, Debug)]
enum Src {
    Pending(usize),
    Create(usize),
}

impl Src {
    fn task<'t>(self, create: &'t [Task], pending: &[&'t Task]) -> &'t Task {
        match self {
            Src::Pending(i) => pending[i],
            Src::Create(i) => &create[i],
        }
    }
}

/// Where a task may go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Target {
    /// Any node of its class.
    Anywhere,
    /// Only this node (a global task).
    Node(usize),
    /// A global task for a node the state does not know.
    Unregistered,
}

/// One task to place, with what its order and its search need.
#[derive(Clone, Copy, Debug)]
struct Item {
    src: Src,
    /// Index into [`Pass::jobs`].
    job: usize,
    target: Target,
    /// Slot number, or the node's rank for a global task.
    slot: u64,
}

/// One scheduling pass.
#[derive(Debug)]
struct Pass<'a> {
    state: &'a State,
    nodes: Nodes<'a>,
    /// The jobs with tasks to place.
    jobs: Vec<JobRules<'a>>,
    classes: Classes<'a>,
    preemption: Preemption<'a>,
    /// Tasks evicted so far.
    preempted: Vec<PlanStop>,
}

impl<'a> Pass<'a> {
    /// The tasks to place (backoff over), in placement order; sets up their
    /// jobs and classes.
    fn order(&mut self, now: Timestamp, create: &[Task], pending: &[&Task]) -> Vec<Item> {
        let ready = |task: &Task| task.not_before.is_none_or(|at| at <= now);
        let tasks = pending
            .iter()
            .enumerate()
            .map(|(i, &t)| (Src::Pending(i), t))
            .chain(create.iter().enumerate().map(|(i, t)| (Src::Create(i), t)));
        let mut by_name: HashMap<&str, usize> = HashMap::new();
        let mut last: Option<(&str, usize)> = None;
        let mut items = Vec::with_capacity(create.len() + pending.len());
        for (src, task) in tasks {
            if !ready(task) {
                continue;
            }
            let job = match last {
                Some((name, job)) if name == task.job => job,
                _ => {
                    let n = self.jobs.len();
                    let job = *by_name.entry(task.job.as_str()).or_insert(n);
                    if job == n {
                        let rules = JobRules::new(self.state, &self.nodes, &task.job, task.driver);
                        self.jobs.push(rules);
                    }
                    job
                }
            };
            last = Some((task.job.as_str(), job));
            let (target, slot) = match &task.slot {
                Slot::Index(i) => {
                    self.jobs[job].placing(*i);
                    (Target::Anywhere, u64::from(*i))
                }
                Slot::Node(id) => match self.nodes.position(id) {
                    Some(idx) => (Target::Node(idx), idx as u64),
                    None => (Target::Unregistered, u64::MAX),
                },
            };
            if target == Target::Anywhere {
                let c = match self.jobs[job].class {
                    Some(c) => self.classes.grow(c, &task.resources),
                    None => {
                        let key = ClassKey::of(job, &self.jobs[job]);
                        self.classes.join(key, job, &task.resources)
                    }
                };
                self.jobs[job].class = Some(c);
            }
            items.push(Item {
                src,
                job,
                target,
                slot,
            });
        }
        jobs::count_tasks(self.state, &self.nodes, &mut self.jobs);
        let mut by_rank: Vec<usize> = (0..self.jobs.len()).collect();
        by_rank.sort_by(|&a, &b| self.jobs[a].name.cmp(&self.jobs[b].name));
        let mut rank = vec![0; self.jobs.len()];
        for (r, &job) in by_rank.iter().enumerate() {
            rank[job] = r;
        }
        // Stable: equal keys (two tasks of one slot) keep the reconciler's order.
        items.sort_by_key(|item| {
            (
                Reverse(self.jobs[item.job].priority),
                item.target == Target::Anywhere,
                rank[item.job],
                item.slot,
            )
        });
        items
    }

    /// The node for a task, if any takes it.
    fn find(&mut self, item: &Item, need: &Resources) -> Option<usize> {
        match item.target {
            Target::Unregistered => None,
            Target::Node(idx) => {
                let rules = &self.jobs[item.job];
                (explain::refusal(self.state, &self.nodes, rules, idx, need).is_none()
                    && rules.below_cap(idx))
                .then_some(idx)
            }
            Target::Anywhere => {
                let c = self.jobs[item.job]
                    .class
                    .expect("tasks that may go anywhere have a class");
                self.classes.build(c, self.state, &self.nodes, &self.jobs);
                let rules = &mut self.jobs[item.job];
                if rules.spread.is_none()
                    && let Some(spread) = rules.spread_spec()
                {
                    let class = self.classes.get(c);
                    let mut counts = SpreadCounts::new(spread, &class.values);
                    for (idx, &n) in rules.spread_per_node().iter().enumerate() {
                        for _ in 0..n {
                            counts.add(class.value_of(idx));
                        }
                    }
                    rules.spread = Some(counts);
                }
                self.classes
                    .find(c, rules.spread.as_mut(), rules.strategy, need)
            }
        }
    }

    /// Places a task of job `job` on node `idx`: takes its resources and
    /// ports, counts it, and re-files the node. Returns its ports.
    fn commit(&mut self, idx: usize, job: usize, need: &Resources) -> BTreeMap<String, u16> {
        self.nodes.take(idx, need);
        let ports = self.nodes.take_ports(idx, self.jobs[job].ports);
        let rules = &mut self.jobs[job];
        rules.placed_on(idx);
        if let (Some(counts), Some(c)) = (rules.spread.as_mut(), rules.class) {
            counts.add(self.classes.get(c).value_of(idx));
        }
        self.classes.refresh(idx, &self.nodes, &self.jobs);
        ports
    }

    /// Explanations for the tasks that fit nowhere (`waits`: a preempting
    /// task waits for room being freed); new tasks get theirs in place.
    fn explain(
        &self,
        misses: &[(Item, bool)],
        create: &mut [Task],
        pending: &[&Task],
    ) -> (Vec<PlanUnplaced>, BTreeSet<TaskId>) {
        #[derive(PartialEq, Eq, PartialOrd, Ord)]
        enum Shape {
            Class(usize, Resources),
            Node(usize, usize, Resources),
        }
        let mut texts: BTreeMap<Shape, String> = BTreeMap::new();
        let mut unplaced = Vec::new();
        let mut failed = BTreeSet::new();
        for &(item, waits) in misses {
            let task = item.src.task(create, pending);
            let need = task.resources;
            let mut reason = match (item.target, &task.slot) {
                (Target::Anywhere, _) => {
                    let c = self.jobs[item.job].class.expect("class set");
                    texts
                        .entry(Shape::Class(c, need))
                        .or_insert_with(|| {
                            let rules = &self.jobs[self.classes.get(c).job];
                            explain::anywhere(self.state, &self.nodes, rules, &need)
                        })
                        .clone()
                }
                (Target::Node(idx), _) => texts
                    .entry(Shape::Node(item.job, idx, need))
                    .or_insert_with(|| {
                        let rules = &self.jobs[item.job];
                        explain::on_node(self.state, &self.nodes, rules, idx, &need)
                    })
                    .clone(),
                (Target::Unregistered, Slot::Node(id)) => format!("node {id} is not registered"),
                (Target::Unregistered, Slot::Index(_)) => "no node fits".to_owned(),
            };
            if waits {
                // Not naming the node: the next pass may claim the same room
                // on another node, and the text must not change for that.
                reason.push_str("; waiting for stopping tasks to free room");
            }
            failed.insert(task.id.clone());
            match item.src {
                Src::Pending(i) => {
                    if pending[i].status.message != reason {
                        unplaced.push(PlanUnplaced {
                            task: pending[i].id.clone(),
                            reason,
                        });
                    }
                }
                Src::Create(i) => {
                    create[i].status.message = reason.clone();
                    unplaced.push(PlanUnplaced {
                        task: create[i].id.clone(),
                        reason,
                    });
                }
            }
        }
        (unplaced, failed)
    }
}

#[cfg(test)]
mod tests;
