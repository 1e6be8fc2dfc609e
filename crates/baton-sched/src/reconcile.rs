//! The reconciler: compares what each job wants (its slots) with the tasks it
//! has, and decides which tasks to create, stop and forget. It places nothing:
//! new tasks come out pending, and [`crate::schedule`] finds them nodes.
//!
//! Rules, per job with desired state `run`:
//!
//! - **service**: slots `0..replicas`, each with one live task of the current
//!   version. An empty slot follows its latest task's [`restart_decision`]; a slot
//!   that never ran, or whose latest task ran an older version, starts at
//!   restart 0 at once. Slots past `replicas` are stopped ("scaled down").
//! - **update** (tasks of an older job version still live): one slot at a time,
//!   start before stop. A slot holding an old task and a new one waits until the
//!   new one runs, then stops the old; otherwise the lowest slot with only an old
//!   running task gets its new-version task. Old tasks that are not running
//!   serve nobody and are replaced at once. When the new task fits nowhere but
//!   would fit where the old one runs, the old one is stopped first (see
//!   [`MakeRoom`]): a full cluster updates stop-first instead of not at all.
//! - **batch**: slots `0..completions`; a slot is done once its latest
//!   current-version task completed. Slots start in order with at most
//!   `parallelism` live tasks (restarts included). A slot that gives up fails the
//!   job: no further slot starts. Old-version tasks are stopped at once.
//! - **global**: one slot per node eligible for the job (driver, constraints),
//!   its task pinned to that node. Tasks on nodes that drain, lost the driver
//!   or no longer satisfy a constraint are stopped; a paused node keeps its
//!   task but gets no new one. A node that joins or gains a label gets its task.
//! - **leaving a node**: a running service task whose node drains, lost its
//!   driver or no longer satisfies the job's constraints gets a replacement
//!   first and is stopped once the replacement runs (or at once if the
//!   replacement fits nowhere, so a drain always completes). Tasks that do
//!   not run yet move at once. Batch tasks finish where they are, unless the
//!   node's drain deadline passes.
//! - A job with desired state `stop` has every live task stopped.
//! - History: each slot keeps its [`HISTORY_PER_SLOT`] newest terminal tasks
//!   (always including its latest, which restart decisions read); older ones
//!   are removed.

use std::collections::{BTreeMap, BTreeSet};

use baton_spec::{JobKind, JobSpec};
use baton_state::{
    Job, JobDesired, NodeAvailability, PlanStop, RestartDecision, Slot, State, Task, TaskDesired,
    TaskId, TaskState, TaskStatus, Timestamp, restart_decision,
};

use crate::feasible;
use crate::ids::IdGen;
use crate::timefmt::rfc3339;

/// Terminal tasks kept per slot; older ones are removed. Five covers a crash
/// loop's recent exits for `baton task ls` without letting a slot that restarts
/// every few seconds grow the state without bound.
pub(crate) const HISTORY_PER_SLOT: usize = 5;

/// What the reconciler wants done.
#[derive(Debug, Default)]
pub(crate) struct Reconciled<'a> {
    /// New tasks, not yet placed (`node` unset, state `pending`).
    pub(crate) create: Vec<Task>,
    /// Existing pending tasks whose backoff is over, to be placed.
    pub(crate) pending: Vec<&'a Task>,
    /// Tasks to stop.
    pub(crate) stop: Vec<PlanStop>,
    /// Terminal tasks to forget.
    pub(crate) remove: Vec<TaskId>,
    /// Old tasks to stop if their replacement cannot be placed.
    pub(crate) if_unplaced: Vec<IfUnplaced<'a>>,
    /// The earliest backoff deadline after `now`.
    pub(crate) next_wakeup: Option<Timestamp>,
}

/// An old task to stop if its replacement fits nowhere this pass.
///
/// - An update step (`room_for` set): if the new task fits nowhere but would
///   fit where the old one runs once it is gone, the old one is stopped first
///   (stop-first); otherwise the update would wait forever on a full cluster,
///   and always for a global job on a node without room for two.
/// - A task that must leave its node (`room_for` unset) keeps running until
///   its replacement runs, unless the replacement fits nowhere: then it is
///   stopped anyway, so a drain completes even on a full cluster.
#[derive(Debug)]
pub(crate) struct IfUnplaced<'a> {
    /// The replacement.
    pub(crate) new_task: TaskId,
    /// The task it replaces.
    pub(crate) old: &'a Task,
    /// Stop reason for the old task.
    pub(crate) reason: String,
    /// For an update step, the new task's job spec: stop the old task only
    /// if that frees room the new one may use.
    pub(crate) room_for: Option<&'a JobSpec>,
}

/// One reconcile pass over every job, or over the jobs in `scope`.
pub(crate) fn reconcile<'a>(
    state: &'a State,
    now: Timestamp,
    ids: &mut IdGen,
    scope: Option<&BTreeSet<&str>>,
) -> Reconciled<'a> {
    let mut pass = Pass {
        state,
        now,
        ids,
        out: Reconciled::default(),
        stopped: BTreeSet::new(),
    };
    match scope {
        None => state.jobs().for_each(|job| pass.job(job)),
        Some(names) => names
            .iter()
            .filter_map(|name| state.job(name))
            .for_each(|job| pass.job(job)),
    }
    pass.out
}

/// A job's tasks grouped by slot; within a slot, by id.
type Slots<'a> = BTreeMap<&'a Slot, Vec<&'a Task>>;

struct Pass<'a, 'g> {
    state: &'a State,
    now: Timestamp,
    ids: &'g mut IdGen,
    out: Reconciled<'a>,
    /// Tasks this pass stops, so later rules do not count them as live.
    stopped: BTreeSet<&'a TaskId>,
}

/// One slot's tasks after the per-slot stops, as the job rules need them.
#[derive(Debug, Default)]
struct SlotView<'a> {
    /// The live current-version task kept (duplicates are stopped).
    current: Option<&'a Task>,
    /// Live old-version tasks that run (rolling updates replace these one by one).
    old_running: Vec<&'a Task>,
    /// An old-version task still holds a node while being stopped.
    old_stopping: bool,
    /// A current-version task stopped by this pass because it must leave its node.
    drained: Option<&'a Task>,
    /// A running current-version task that must leave its node, kept until
    /// its replacement runs, with why it leaves.
    moving: Option<(&'a Task, String)>,
    /// The slot's newest task (by [`Task::is_newer_than`]).
    latest: Option<&'a Task>,
}

/// What an empty slot should run next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct NextRun {
    restarts: u32,
    not_before: Option<Timestamp>,
}

impl<'a> Pass<'a, '_> {
    fn job(&mut self, job: &'a Job) {
        let mut slots: Slots<'a> = BTreeMap::new();
        for task in self.state.tasks_of_job(&job.name) {
            slots.entry(&task.slot).or_default().push(task);
        }
        if job.desired == JobDesired::Stop {
            for task in slots.values().flatten() {
                if task.is_live() {
                    self.stop(task, "job stopped".to_owned());
                }
            }
        } else {
            match job.spec.kind {
                JobKind::Service { replicas } => self.service(job, &slots, replicas),
                JobKind::Batch {
                    completions,
                    parallelism,
                } => self.batch(job, &slots, completions, parallelism),
                JobKind::Global => self.global(job, &slots),
            }
        }
        self.collect_pending(&slots);
        self.collect_history(&slots);
    }

    fn service(&mut self, job: &'a Job, slots: &Slots<'a>, replicas: u32) {
        for (slot, tasks) in slots {
            let reason = match slot {
                Slot::Index(i) if *i < replicas => continue,
                Slot::Index(_) => "scaled down",
                Slot::Node(_) => "job type changed",
            };
            self.stop_live(tasks, reason);
        }
        let wanted: Vec<Slot> = (0..replicas).map(Slot::Index).collect();
        self.rolling(job, slots, &wanted);
    }

    fn global(&mut self, job: &'a Job, slots: &Slots<'a>) {
        let spec = &job.spec;
        let mut wanted = Vec::new();
        for node in self.state.nodes() {
            if feasible::takes_new(self.state, node, spec) {
                wanted.push(Slot::Node(node.id.clone()));
            }
        }
        for (slot, tasks) in slots {
            let reason = match slot {
                Slot::Index(_) => "job type changed".to_owned(),
                Slot::Node(id) => match self.state.node(id) {
                    None => "node removed".to_owned(),
                    Some(node) if feasible::takes_new(self.state, node, spec) => continue,
                    Some(node) => match feasible::why_leave(self.state, node, spec, true) {
                        Some(reason) => reason,
                        // A paused node keeps what it runs; it only takes nothing new.
                        None if node.availability == NodeAvailability::Pause => continue,
                        None => "node no longer eligible".to_owned(),
                    },
                },
            };
            self.stop_live(tasks, &reason);
        }
        self.rolling(job, slots, &wanted);
    }

    /// Why a live task of `job` must leave its node, if it must (see
    /// [`feasible::why_leave`]). Global tasks are pinned and handled by
    /// [`Pass::global`]. A batch task finishes where it is, unless its node
    /// drains with a deadline that passed.
    fn must_move(&mut self, job: &Job, task: &Task) -> Option<String> {
        let node = self.state.node(task.node.as_ref()?)?;
        if matches!(job.spec.kind, JobKind::Batch { .. }) {
            let deadline = node
                .drain_deadline
                .filter(|_| node.availability == NodeAvailability::Drain)?;
            if deadline > self.now {
                self.wake_at(deadline);
                return None;
            }
            return Some(format!(
                "node {} is draining and its deadline passed",
                node.id
            ));
        }
        let current = task.job_version == job.version;
        feasible::why_leave(self.state, node, &job.spec, current)
    }

    /// Services and global jobs: fill empty slots, roll updates one slot at a time.
    fn rolling(&mut self, job: &'a Job, slots: &Slots<'a>, wanted: &[Slot]) {
        let replaced = format!("replaced by version {}", job.version);
        // A slot mid-update (or whose update this pass advanced) holds back the next.
        let mut busy = false;
        let mut waiting: Vec<(&Slot, Vec<&'a Task>)> = Vec::new();
        for slot in wanted {
            let tasks = slots.get(slot).map(Vec::as_slice).unwrap_or_default();
            let mut view = self.triage(job, tasks, true);
            if let Some((moving, reason)) = view.moving.take() {
                match view.current {
                    Some(new) if new.status.state == TaskState::Running => {
                        self.stop(moving, reason);
                    }
                    Some(new) => {
                        if new.status.state == TaskState::Pending && new.node.is_none() {
                            self.evict_if_unplaced(new.id.clone(), moving, reason);
                        }
                    }
                    None => {
                        let next = NextRun {
                            restarts: moving.restarts,
                            not_before: None,
                        };
                        let id = self.create(job, slot, next);
                        self.evict_if_unplaced(id, moving, reason);
                        continue;
                    }
                }
            }
            match (view.current, view.old_running.is_empty()) {
                (Some(new), false) => {
                    busy = true;
                    if new.status.state == TaskState::Running {
                        for old in &view.old_running {
                            self.stop(old, replaced.clone());
                        }
                    } else if new.status.state == TaskState::Pending && new.node.is_none() {
                        self.make_room(new.id.clone(), job, &view.old_running, &replaced);
                    }
                }
                (Some(new), true) => {
                    if view.old_stopping && new.status.state != TaskState::Running {
                        busy = true;
                    }
                }
                (None, false) => {
                    let started = view.drained.is_some()
                        || view
                            .latest
                            .is_some_and(|latest| latest.job_version == job.version);
                    if !started {
                        waiting.push((slot, view.old_running));
                        continue;
                    }
                    // The new version already ran here and ended: follow its restart
                    // rule while the old task keeps serving; a slot that gave up
                    // pauses the update.
                    busy = true;
                    if let Some(next) = self.refill(job, &view) {
                        let id = self.create(job, slot, next);
                        if next.not_before.is_none() {
                            self.make_room(id, job, &view.old_running, &replaced);
                        }
                    }
                }
                (None, true) => {
                    if let Some(next) = self.refill(job, &view) {
                        self.create(job, slot, next);
                        busy |= view.old_stopping;
                    }
                }
            }
        }
        if busy {
            return;
        }
        if let Some((slot, old_running)) = waiting.into_iter().next() {
            let next = NextRun {
                restarts: 0,
                not_before: None,
            };
            let id = self.create(job, slot, next);
            self.make_room(id, job, &old_running, &replaced);
        }
    }

    fn batch(&mut self, job: &'a Job, slots: &Slots<'a>, completions: u32, parallelism: u32) {
        for (slot, tasks) in slots {
            let reason = match slot {
                Slot::Index(i) if *i < completions => continue,
                Slot::Index(_) => "scaled down",
                Slot::Node(_) => "job type changed",
            };
            self.stop_live(tasks, reason);
        }
        let mut live: u32 = 0;
        let mut failed = false;
        // (slot, next run, whether the slot never ran in this version)
        let mut todo: Vec<(Slot, NextRun, bool)> = Vec::new();
        for index in 0..completions {
            let slot = Slot::Index(index);
            let tasks = slots.get(&slot).map(Vec::as_slice).unwrap_or_default();
            let view = self.triage(job, tasks, false);
            if view.current.is_some() {
                live += 1;
                continue;
            }
            let fresh = view.drained.is_none()
                && view
                    .latest
                    .is_none_or(|latest| latest.job_version != job.version);
            if let Some(latest) = view.latest
                && !fresh
                && restart_decision(&job.spec.kind, &job.spec.restart, latest)
                    == RestartDecision::GiveUp
            {
                failed = true;
            }
            if let Some(next) = self.refill(job, &view) {
                todo.push((slot, next, fresh));
            }
        }
        for (slot, next, fresh) in todo {
            if live >= parallelism {
                break;
            }
            if fresh && failed {
                continue;
            }
            self.create(job, &slot, next);
            live += 1;
        }
    }

    /// Stops, in one slot: tasks on draining nodes, old-version tasks that do not
    /// run (or all of them when `rolling` is off), and duplicate current tasks.
    fn triage(&mut self, job: &'a Job, tasks: &[&'a Task], rolling: bool) -> SlotView<'a> {
        let replaced = || format!("replaced by version {}", job.version);
        let mut view = SlotView::default();
        let mut current: Vec<&'a Task> = Vec::new();
        for &task in tasks {
            if view.latest.is_none_or(|latest| task.is_newer_than(latest)) {
                view.latest = Some(task);
            }
            let old = task.job_version < job.version;
            if !task.is_live() {
                view.old_stopping |= old && task.is_active() && task.node.is_some();
                continue;
            }
            if let Some(reason) = self.must_move(job, task) {
                // A running service task keeps serving until its replacement
                // runs (start, then stop); anything else goes at once.
                if !old && rolling && task.status.state == TaskState::Running {
                    if let Some((earlier, _)) = &view.moving {
                        self.stop(earlier, reason.clone());
                    }
                    view.moving = Some((task, reason));
                } else {
                    self.stop(task, reason);
                    if old {
                        view.old_stopping = true;
                    } else {
                        view.drained = Some(task);
                    }
                }
                continue;
            }
            if !old {
                current.push(task);
            } else if rolling && task.status.state == TaskState::Running {
                view.old_running.push(task);
            } else {
                self.stop(task, replaced());
                view.old_stopping |= task.node.is_some();
            }
        }
        // An update that overtook another can leave two old tasks running in a slot;
        // the newer one already replaced the older.
        if view.old_running.len() > 1 {
            view.old_running.sort_by(|a, b| order_newest_first(a, b));
            let newest = view.old_running[0];
            for &older in &view.old_running[1..] {
                self.stop(older, format!("replaced by version {}", newest.job_version));
            }
            view.old_running.truncate(1);
        }
        // Two live tasks for one slot of one version never come out of a pass; if a
        // race ever made them, keep the one that runs (then the newest).
        current.sort_by(|a, b| {
            let rank = |t: &Task| t.status.state == TaskState::Running;
            rank(b).cmp(&rank(a)).then_with(|| order_newest_first(a, b))
        });
        let mut current = current.into_iter();
        view.current = current.next();
        if let Some(keep) = view.current {
            for extra in current {
                self.stop(extra, format!("duplicate of task {}", keep.id));
            }
        }
        view
    }

    /// What an empty slot runs next: the replacement of a task this pass drained
    /// away, or what follows its newest task.
    fn refill(&self, job: &Job, view: &SlotView<'a>) -> Option<NextRun> {
        match view.drained {
            Some(drained) => Some(NextRun {
                restarts: drained.restarts,
                not_before: None,
            }),
            None => self.next_run(job, view.latest),
        }
    }

    /// What follows a slot whose newest task is `latest`, if anything: a slot
    /// that never ran this version starts fresh, otherwise the restart policy
    /// decides. A task stopped on purpose in a slot that is wanted again (a
    /// global job's node became eligible again) is run again, with no backoff.
    fn next_run(&self, job: &Job, latest: Option<&Task>) -> Option<NextRun> {
        let fresh = NextRun {
            restarts: 0,
            not_before: None,
        };
        let Some(latest) = latest else {
            return Some(fresh);
        };
        if latest.job_version != job.version {
            return Some(fresh);
        }
        match restart_decision(&job.spec.kind, &job.spec.restart, latest) {
            RestartDecision::Restart {
                restarts,
                not_before,
            } => Some(NextRun {
                restarts,
                not_before: (not_before > self.now).then_some(not_before),
            }),
            RestartDecision::Wait
                if latest.status.state.is_terminal() && latest.desired == TaskDesired::Shutdown =>
            {
                Some(NextRun {
                    restarts: latest.restarts,
                    not_before: None,
                })
            }
            RestartDecision::Wait | RestartDecision::Done | RestartDecision::GiveUp => None,
        }
    }

    fn create(&mut self, job: &Job, slot: &Slot, next: NextRun) -> TaskId {
        let id = self.ids.task_id(self.state, &job.name, slot);
        let message = match next.not_before {
            Some(at) => {
                self.wake_at(at);
                format!(
                    "restart {}: waiting for backoff until {}",
                    next.restarts,
                    rfc3339(at)
                )
            }
            None => String::new(),
        };
        self.out.create.push(Task {
            id: id.clone(),
            job: job.name.clone(),
            job_version: job.version,
            slot: slot.clone(),
            restarts: next.restarts,
            node: None,
            resources: job.spec.task.resources,
            driver: job.spec.task.driver,
            desired: TaskDesired::Running,
            status: TaskStatus {
                state: TaskState::Pending,
                since: self.now,
                message,
                exit: None,
                pid: None,
                started_at: None,
                finished_at: None,
            },
            not_before: next.not_before,
            created_at: self.now,
            ports: Default::default(),
        });
        id
    }

    fn make_room(&mut self, new_task: TaskId, job: &'a Job, old: &[&'a Task], reason: &str) {
        for &old in old {
            self.out.if_unplaced.push(IfUnplaced {
                new_task: new_task.clone(),
                old,
                reason: reason.to_owned(),
                room_for: Some(&job.spec),
            });
        }
    }

    fn evict_if_unplaced(&mut self, new_task: TaskId, old: &'a Task, reason: String) {
        self.out.if_unplaced.push(IfUnplaced {
            new_task,
            old,
            reason,
            room_for: None,
        });
    }

    fn stop(&mut self, task: &'a Task, reason: String) {
        if self.stopped.insert(&task.id) {
            self.out.stop.push(PlanStop {
                task: task.id.clone(),
                reason,
                preempted_by: None,
            });
        }
    }

    fn stop_live(&mut self, tasks: &[&'a Task], reason: &str) {
        for &task in tasks {
            if task.is_live() {
                self.stop(task, reason.to_owned());
            }
        }
    }

    fn wake_at(&mut self, at: Timestamp) {
        if at > self.now {
            self.out.next_wakeup = Some(self.out.next_wakeup.map_or(at, |w| w.min(at)));
        }
    }

    /// Pending tasks left alive by this pass: placeable now, or waiting for backoff.
    fn collect_pending(&mut self, slots: &Slots<'a>) {
        for &task in slots.values().flatten() {
            let waiting = task.is_live()
                && task.status.state == TaskState::Pending
                && task.node.is_none()
                && !self.stopped.contains(&task.id);
            if !waiting {
                continue;
            }
            match task.not_before {
                Some(at) if at > self.now => self.wake_at(at),
                _ => self.out.pending.push(task),
            }
        }
    }

    fn collect_history(&mut self, slots: &Slots<'a>) {
        for tasks in slots.values() {
            let mut done: Vec<&Task> = tasks
                .iter()
                .copied()
                .filter(|t| t.status.state.is_terminal())
                .collect();
            if done.len() <= HISTORY_PER_SLOT {
                continue;
            }
            done.sort_by(|a, b| order_newest_first(a, b));
            self.out
                .remove
                .extend(done[HISTORY_PER_SLOT..].iter().map(|t| t.id.clone()));
        }
    }
}

fn order_newest_first(a: &Task, b: &Task) -> std::cmp::Ordering {
    if a.is_newer_than(b) {
        std::cmp::Ordering::Less
    } else if b.is_newer_than(a) {
        std::cmp::Ordering::Greater
    } else {
        std::cmp::Ordering::Equal
    }
}

#[cfg(test)]
mod tests;
