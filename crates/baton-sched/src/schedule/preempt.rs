//! Preemption: a task that fits nowhere, of a job with `preempt: true`, may
//! evict live tasks of jobs with a strictly lower priority.
//!
//! Evicted tasks keep their room until their node reports them stopped, so
//! the preempting task stays pending and a later pass places it. Two rules
//! keep passes from evicting more and more while that happens:
//!
//! - First, if the task would fit on a node it may use once the tasks being
//!   stopped there (desired `shutdown`, still active) are gone, nothing is
//!   evicted: it waits for that room and claims it, so the next waiting task
//!   does not count the same room.
//! - Otherwise it evicts on the node where that costs least: the lowest
//!   highest-evicted priority, then the fewest tasks, then the lowest node
//!   id. Victims chosen in this pass are not chosen twice.
//!
//! Either way the room is set aside for the rest of the pass (free resources
//! and free ports it will use are taken, and the task counts against its
//! job's `max_per_node` there), so a lower-priority task does not
//! take it in the meantime; tasks are placed highest priority first, so the
//! next pass gives it to the preempting task before anything lower.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet};

use baton_spec::{MIN_PRIORITY, Resources};
use baton_state::{PlanStop, Task, TaskDesired, TaskId};

use super::Pass;

/// What one node's tasks offer a preempting task.
#[derive(Debug, Default)]
struct NodeTasks<'a> {
    /// Live tasks with their job's priority, lowest priority first, then
    /// larger first, then by id; victims chosen in this pass are removed.
    live: Vec<(u32, &'a Task)>,
    /// The lowest priority in `live` (`u32::MAX` if none).
    lowest: u32,
    /// The largest CPU, memory and disk of a single task in `live`.
    largest: Resources,
    /// Room that tasks being stopped will release, not yet claimed.
    pool: Resources,
    /// Ports those tasks hold, not yet claimed.
    pool_ports: BTreeSet<u16>,
}

impl NodeTasks<'_> {
    fn summarize(&mut self) {
        self.lowest = self.live.first().map_or(u32::MAX, |(p, _)| *p);
        self.largest = Resources::default();
        for (_, task) in &self.live {
            let r = &task.resources;
            self.largest.cpu_millis = self.largest.cpu_millis.max(r.cpu_millis);
            self.largest.memory_bytes = self.largest.memory_bytes.max(r.memory_bytes);
            self.largest.disk_bytes = self.largest.disk_bytes.max(r.disk_bytes);
        }
    }

    fn has_pool(&self) -> bool {
        self.pool != Resources::default() || !self.pool_ports.is_empty()
    }
}

/// Preemption's view of the cluster during a pass, built on first use.
#[derive(Debug, Default)]
pub(super) struct Preemption<'a> {
    /// Per node index, once looked at.
    tables: Vec<Option<NodeTasks<'a>>>,
    /// Nodes looked at whose stopping tasks still have unclaimed room.
    pooled: BTreeSet<usize>,
    priorities: BTreeMap<&'a str, u32>,
    /// (class, priority, request) that found nothing: a request of that class
    /// at most that priority and at least that large finds nothing either.
    hopeless: Vec<(usize, u32, Resources)>,
    /// Per (class, request): every node below this index had too little room
    /// being freed for it. Room only shrinks, but for evictions, which move
    /// the cursors back; so a storm of equal waiting tasks scans each node
    /// about once, not once per task.
    cursors: BTreeMap<(usize, Resources), usize>,
    /// Classes whose nodes all have their table.
    prepared: BTreeSet<usize>,
}

/// How a node could hold the task: its ports are free, or held by tasks
/// being stopped, or by lower-priority tasks that must go.
struct PortPlan {
    /// Indexes (into `live`) of tasks holding ports the task needs.
    must_go: Vec<usize>,
    /// Whether every needed port is free or held by a task being stopped.
    no_victims: bool,
}

fn size_desc(task: &Task) -> Reverse<(u64, u64, u64)> {
    let r = &task.resources;
    Reverse((r.memory_bytes, r.cpu_millis, r.disk_bytes))
}

/// At least how many tasks no larger than `largest` cover `deficit`; `None`
/// if none can.
fn fewest(deficit: &Resources, largest: &Resources) -> Option<usize> {
    let mut n: u64 = 0;
    for (short, big) in [
        (deficit.cpu_millis, largest.cpu_millis),
        (deficit.memory_bytes, largest.memory_bytes),
        (deficit.disk_bytes, largest.disk_bytes),
    ] {
        if short > 0 {
            if big == 0 {
                return None;
            }
            n = n.max(short.div_ceil(big));
        }
    }
    Some(usize::try_from(n).unwrap_or(usize::MAX))
}

impl<'a> Pass<'a> {
    fn node_tasks(&mut self, idx: usize) -> &mut NodeTasks<'a> {
        if self.preemption.tables.is_empty() {
            self.preemption.tables = (0..self.nodes.len()).map(|_| None).collect();
        }
        if self.preemption.tables[idx].is_none() {
            let state = self.state;
            let priorities = &mut self.preemption.priorities;
            let mut table = NodeTasks::default();
            for task in state
                .tasks_of_node(&self.nodes.list[idx].id)
                .filter(|t| t.is_active())
            {
                if task.desired == TaskDesired::Shutdown {
                    table.pool = table.pool.saturating_add(&task.resources);
                    table.pool_ports.extend(task.ports.values().copied());
                } else {
                    let priority = *priorities.entry(task.job.as_str()).or_insert_with(|| {
                        state
                            .job(&task.job)
                            .map_or(MIN_PRIORITY, |job| job.spec.placement.priority)
                    });
                    table.live.push((priority, task));
                }
            }
            table.live.sort_by(|(pa, a), (pb, b)| {
                (pa, size_desc(a), &a.id).cmp(&(pb, size_desc(b), &b.id))
            });
            table.summarize();
            if table.has_pool() {
                self.preemption.pooled.insert(idx);
            }
            self.preemption.tables[idx] = Some(table);
        }
        self.preemption.tables[idx]
            .as_mut()
            .expect("the table was just built")
    }

    /// Whether job `job` may still use node `idx` (one of its candidates):
    /// below its cap, with dynamic ports left.
    fn usable(&self, job: usize, idx: usize) -> bool {
        let rules = &self.jobs[job];
        rules.below_cap(idx) && self.nodes.dynamic_room(idx, &rules.static_ports) >= rules.n_dynamic
    }

    /// How the ports of job `job` could be had on node `idx`; `None` if a
    /// port is held by something that will not go.
    fn port_plan(&mut self, idx: usize, job: usize) -> Option<PortPlan> {
        let below = self.jobs[job].priority;
        let mut plan = PortPlan {
            must_go: Vec::new(),
            no_victims: true,
        };
        for k in 0..self.jobs[job].static_ports.len() {
            let port = self.jobs[job].static_ports[k];
            if !self.nodes.in_use(idx, port) {
                continue;
            }
            if self.nodes.taken_by_pass(idx, port) {
                return None;
            }
            let table = self.node_tasks(idx);
            if table.pool_ports.contains(&port) {
                continue;
            }
            let holder = table.live.iter().position(|(priority, t)| {
                *priority < below && t.ports.values().any(|&p| p == port)
            })?;
            plan.no_victims = false;
            if !plan.must_go.contains(&holder) {
                plan.must_go.push(holder);
            }
        }
        Some(plan)
    }

    /// For a task of a preempting job that fits nowhere: waits for room being
    /// freed, or evicts lower-priority tasks to make some. `pinned` is the one
    /// node a global task may use. Returns whether it waits for room.
    pub(super) fn preempt(
        &mut self,
        job: usize,
        task: &TaskId,
        need: &Resources,
        pinned: Option<usize>,
    ) -> bool {
        let priority = self.jobs[job].priority;
        let class = match pinned {
            Some(_) => None,
            None => self.jobs[job].class,
        };
        if let Some(c) = class
            && self
                .preemption
                .hopeless
                .iter()
                .any(|&(hc, hp, ref shape)| hc == c && hp >= priority && shape.fits_in(need))
        {
            return false;
        }
        // The nodes it may use at all, sorted by index: borrowed from the
        // class for the duration (nothing else reads it meanwhile).
        let candidates: Vec<usize> = match (pinned, class) {
            (Some(idx), _) => {
                if self.jobs[job].takes_new(self.state, self.nodes.list[idx]) {
                    vec![idx]
                } else {
                    Vec::new()
                }
            }
            (None, Some(c)) => self.classes.take_eligible(c),
            (None, None) => Vec::new(),
        };
        let prepared = match class {
            Some(c) => !self.preemption.prepared.insert(c),
            None => false,
        };
        if !prepared {
            for &idx in &candidates {
                self.node_tasks(idx);
            }
        }
        let found = self
            .wait_for_room(job, class, &candidates, need)
            .or_else(|| self.evict(job, task, &candidates, need));
        if let Some(c) = class {
            self.classes.put_eligible(c, candidates);
        }
        if found.is_none()
            && let Some(c) = class
        {
            self.preemption.hopeless.push((c, priority, *need));
        }
        found.is_some()
    }

    /// The first node (by id, as evictions break ties) where the task fits
    /// once the tasks being stopped there are gone; claims that room. Only
    /// nodes with such tasks are looked at: on the others the task fits no
    /// better than it did a moment ago.
    fn wait_for_room(
        &mut self,
        job: usize,
        class: Option<usize>,
        candidates: &[usize],
        need: &Resources,
    ) -> Option<usize> {
        let from = class.map_or(0, |c| {
            self.preemption
                .cursors
                .get(&(c, *need))
                .copied()
                .unwrap_or(0)
        });
        let pooled: Vec<usize> = self.preemption.pooled.range(from..).copied().collect();
        let mut found = None;
        for idx in pooled {
            if candidates.binary_search(&idx).is_ok()
                && self.usable(job, idx)
                && self.port_plan(idx, job).is_some_and(|plan| plan.no_victims)
            {
                let pool = self.node_tasks(idx).pool;
                if need.fits_in(&self.nodes.free[idx].saturating_add(&pool)) {
                    found = Some(idx);
                    break;
                }
            }
        }
        if let Some(c) = class {
            // Past every node that failed; at the one found, whose leftover
            // room may still do for the next task of this shape.
            let upto = found.unwrap_or(usize::MAX);
            self.preemption.cursors.insert((c, *need), upto);
        }
        let idx = found?;
        self.claim(idx, job, need);
        Some(idx)
    }

    /// Evicts the cheapest set of lower-priority tasks that makes room, on
    /// the node where it is cheapest. A node whose lower bound (its lowest
    /// priority, and the fewest of its largest tasks that could cover what
    /// is missing) cannot beat the best so far is not looked at further.
    fn evict(
        &mut self,
        job: usize,
        by: &TaskId,
        candidates: &[usize],
        need: &Resources,
    ) -> Option<usize> {
        let below = self.jobs[job].priority;
        // (highest evicted priority, number evicted, node) and the victims.
        let mut best: Option<((u32, usize, usize), Vec<usize>)> = None;
        for &idx in candidates {
            let free = self.nodes.free[idx];
            let table = self.node_tasks(idx);
            if table.lowest >= below {
                continue;
            }
            let room = free.saturating_add(&table.pool);
            let Some(least) = fewest(&need.saturating_sub(&room), &table.largest) else {
                continue;
            };
            let bound = (table.lowest, least.max(1), idx);
            if best.as_ref().is_some_and(|(rank, _)| bound >= *rank) || !self.usable(job, idx) {
                continue;
            }
            let Some(plan) = self.port_plan(idx, job) else {
                continue;
            };
            let table = self.node_tasks(idx);
            let Some(victims) = select(&table.live, room, &plan.must_go, below, need) else {
                continue;
            };
            let highest = victims
                .iter()
                .map(|&v| table.live[v].0)
                .max()
                .unwrap_or(MIN_PRIORITY);
            let rank = (highest, victims.len(), idx);
            if best.as_ref().is_none_or(|(b, _)| rank < *b) {
                best = Some((rank, victims));
            }
        }
        let ((_, _, idx), mut victims) = best?;
        let reason = format!(
            "preempted by task {by} of job {} (priority {below})",
            self.jobs[job].name
        );
        victims.sort_unstable();
        let table = self.node_tasks(idx);
        let mut stops = Vec::with_capacity(victims.len());
        // Highest index first, so the earlier indexes stay valid.
        for &v in victims.iter().rev() {
            let (_, task) = table.live.remove(v);
            table.pool = table.pool.saturating_add(&task.resources);
            table.pool_ports.extend(task.ports.values().copied());
            stops.push(PlanStop {
                task: task.id.clone(),
                reason: reason.clone(),
                preempted_by: Some(by.clone()),
            });
        }
        table.summarize();
        self.preemption.pooled.insert(idx);
        for cursor in self.preemption.cursors.values_mut() {
            *cursor = (*cursor).min(idx);
        }
        stops.reverse();
        self.preempted.extend(stops);
        self.claim(idx, job, need);
        Some(idx)
    }

    /// Sets the room on node `idx` aside for the task: first what tasks being
    /// stopped release, then free resources and ports, which this pass then
    /// no longer hands to anything else; the task counts on the node.
    fn claim(&mut self, idx: usize, job: usize, need: &Resources) {
        let table = self.node_tasks(idx);
        // Component-wise (`Ord::min` would pick one of the two).
        let from_pool = Resources::min(need, &table.pool);
        table.pool = table.pool.saturating_sub(&from_pool);
        let mut free_ports = Vec::new();
        for &port in &self.jobs[job].static_ports {
            let table = self.preemption.tables[idx].as_mut().expect("built above");
            if !table.pool_ports.remove(&port) {
                free_ports.push(port);
            }
        }
        if !self.node_tasks(idx).has_pool() {
            self.preemption.pooled.remove(&idx);
        }
        for port in free_ports {
            self.nodes.hold(idx, port);
        }
        self.nodes.take(idx, &need.saturating_sub(&from_pool));
        // The task will go there: it counts against its job's `max_per_node`
        // for the rest of the pass, so another task of the job does not set
        // room aside (or evict) on a node the job can no longer use.
        self.jobs[job].claimed_on(idx);
        self.classes.refresh(idx, &self.nodes, &self.jobs);
    }
}

/// The victims (indexes into `live`) that make room for `need` on a node with
/// `room` free (counting tasks being stopped): the ones in `must_go`, then
/// tasks below priority `below` up to the lowest priority level that makes
/// room, largest first, without any that turn out not to be needed. `None`
/// if even every lower-priority task would not make room.
fn select(
    live: &[(u32, &Task)],
    room: Resources,
    must_go: &[usize],
    below: u32,
    need: &Resources,
) -> Option<Vec<usize>> {
    let mut base = room;
    for &v in must_go {
        base = base.saturating_add(&live[v].1.resources);
    }
    if need.fits_in(&base) {
        return Some(must_go.to_vec());
    }
    let others: Vec<usize> = (0..live.len())
        .filter(|v| live[*v].0 < below && !must_go.contains(v))
        .collect();
    // The lowest priority level whose tasks, with all below it, make room.
    let mut acc = base;
    let mut level = None;
    for &v in &others {
        acc = acc.saturating_add(&live[v].1.resources);
        if need.fits_in(&acc) {
            level = Some(live[v].0);
            break;
        }
    }
    let level = level?;
    let mut pool: Vec<usize> = others.into_iter().filter(|&v| live[v].0 <= level).collect();
    pool.sort_by_key(|&v| (size_desc(live[v].1), live[v].0, v));
    let mut acc = base;
    let mut chosen = Vec::new();
    for v in pool {
        if need.fits_in(&acc) {
            break;
        }
        acc = acc.saturating_add(&live[v].1.resources);
        chosen.push(v);
    }
    // Largest first can overshoot: drop any victim (smallest first) the room
    // does not need.
    for at in (0..chosen.len()).rev() {
        let without = acc.saturating_sub(&live[chosen[at]].1.resources);
        if need.fits_in(&without) {
            acc = without;
            chosen.remove(at);
        }
    }
    chosen.extend_from_slice(must_go);
    Some(chosen)
}
