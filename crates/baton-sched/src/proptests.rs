//! Property tests: random clusters and jobs, driven through many passes with
//! simulated agents and failures, checked for safety at every step and for the
//! converged shape at the end. A failing case prints its inputs (and proptest
//! records it under `proptest-regressions/`).

use std::collections::BTreeMap;
use std::time::Duration;

use baton_spec::{JobKind, JobSpec, Resources, RestartCondition};
use baton_state::{
    Command, Event, ExitInfo, JobDesired, NodeAvailability, NodeId, RestartDecision, Slot, State,
    TaskDesired, TaskId, TaskState, Timestamp, restart_decision,
};
use proptest::prelude::*;

use crate::plan;
use crate::reconcile::HISTORY_PER_SLOT;
use crate::testkit::{MI, Sim, node, res, spec};

#[derive(Clone, Debug)]
struct NodeGen {
    cpu_millis: u64,
    memory_mi: u64,
    has_driver: bool,
    availability: NodeAvailability,
    down: bool,
}

#[derive(Clone, Debug)]
struct JobGen {
    kind: u8,
    count: u32,
    parallelism: u32,
    cpu_millis: u64,
    memory_mi: u64,
    condition: RestartCondition,
    max_attempts: u32,
    delay_ms: u64,
}

#[derive(Clone, Debug)]
enum Ev {
    Nothing,
    Fail(usize),
    Complete(usize),
    NodeDown(usize),
    NodeUp(usize),
    Availability(usize, NodeAvailability),
    Update(usize),
    Scale(usize, u32),
    Stop(usize),
    Start(usize),
}

fn availability() -> impl Strategy<Value = NodeAvailability> {
    prop_oneof![
        8 => Just(NodeAvailability::Active),
        1 => Just(NodeAvailability::Pause),
        1 => Just(NodeAvailability::Drain),
    ]
}

fn node_gen() -> impl Strategy<Value = NodeGen> {
    (
        (1u64..=16).prop_map(|c| c * 500),
        (1u64..=16).prop_map(|m| m * 256),
        prop::bool::weighted(0.9),
        availability(),
        prop::bool::weighted(0.1),
    )
        .prop_map(
            |(cpu_millis, memory_mi, has_driver, availability, down)| NodeGen {
                cpu_millis,
                memory_mi,
                has_driver,
                availability,
                down,
            },
        )
}

fn job_gen() -> impl Strategy<Value = JobGen> {
    (
        0u8..3,
        0u32..7,
        1u32..4,
        (1u64..=30).prop_map(|c| c * 50),
        (1u64..=32).prop_map(|m| m * 64),
        prop_oneof![
            Just(RestartCondition::Always),
            Just(RestartCondition::OnFailure),
            Just(RestartCondition::Never),
        ],
        0u32..4,
        prop_oneof![Just(100u64), Just(1000), Just(5000)],
    )
        .prop_map(
            |(
                kind,
                count,
                parallelism,
                cpu_millis,
                memory_mi,
                condition,
                max_attempts,
                delay_ms,
            )| {
                JobGen {
                    kind,
                    count,
                    parallelism,
                    cpu_millis,
                    memory_mi,
                    condition,
                    max_attempts,
                    delay_ms,
                }
            },
        )
}

fn ev() -> impl Strategy<Value = Ev> {
    prop_oneof![
        6 => Just(Ev::Nothing),
        4 => any::<usize>().prop_map(Ev::Fail),
        2 => any::<usize>().prop_map(Ev::Complete),
        1 => any::<usize>().prop_map(Ev::NodeDown),
        1 => any::<usize>().prop_map(Ev::NodeUp),
        1 => (any::<usize>(), availability()).prop_map(|(i, a)| Ev::Availability(i, a)),
        2 => any::<usize>().prop_map(Ev::Update),
        2 => (any::<usize>(), 0u32..7).prop_map(|(j, n)| Ev::Scale(j, n)),
        1 => any::<usize>().prop_map(Ev::Stop),
        1 => any::<usize>().prop_map(Ev::Start),
    ]
}

fn job_spec(index: usize, job: &JobGen) -> JobSpec {
    let kind = match job.kind {
        0 => JobKind::Service {
            replicas: job.count,
        },
        1 => JobKind::Batch {
            completions: job.count.max(1),
            parallelism: job.parallelism,
        },
        _ => JobKind::Global,
    };
    let mut spec = spec(&format!("j{index}"), kind);
    spec.task.resources = res(job.cpu_millis, job.memory_mi * MI);
    spec.restart.condition = job.condition;
    spec.restart.max_attempts = job.max_attempts;
    spec.restart.delay = Duration::from_millis(job.delay_ms);
    spec.restart.max_delay = Duration::from_millis(job.delay_ms * 4);
    spec
}

fn node_id(i: usize) -> String {
    format!("n{i}")
}

/// splitmix64, for the simulated agents' choices.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
}

struct World {
    sim: Sim,
    nodes: Vec<NodeGen>,
    specs: Vec<JobSpec>,
    rng: Rng,
    generation: u32,
    /// The state's mark when the last pass's plan was applied.
    mark: Option<baton_state::ChangeMark>,
}

impl World {
    fn new(nodes: Vec<NodeGen>, jobs: &[JobGen], seed: u64) -> World {
        let mut sim = Sim::new();
        sim.seed = seed;
        for (i, node_gen) in nodes.iter().enumerate() {
            let mut n = node(&node_id(i), node_gen.cpu_millis, node_gen.memory_mi * MI);
            if !node_gen.has_driver {
                n.drivers.clear();
            }
            n.availability = node_gen.availability;
            sim.add_node(n);
            if node_gen.down {
                sim.node_down(&node_id(i));
            }
        }
        let specs: Vec<JobSpec> = jobs
            .iter()
            .enumerate()
            .map(|(i, j)| job_spec(i, j))
            .collect();
        for spec in &specs {
            sim.put(spec.clone());
        }
        World {
            sim,
            nodes,
            specs,
            rng: Rng(seed),
            generation: 0,
            mark: None,
        }
    }

    fn running(&self) -> Vec<TaskId> {
        self.sim
            .state
            .tasks()
            .filter(|t| t.status.state == TaskState::Running)
            .map(|t| t.id.clone())
            .collect()
    }

    fn event(&mut self, ev: &Ev) {
        let n_nodes = self.nodes.len().max(1);
        let n_jobs = self.specs.len().max(1);
        match *ev {
            Ev::Nothing => {}
            Ev::Fail(k) | Ev::Complete(k) => {
                let running = self.running();
                if !running.is_empty() {
                    let id = running[k % running.len()].clone();
                    let (state, code) = match ev {
                        Ev::Fail(_) => (TaskState::Failed, 1),
                        _ => (TaskState::Complete, 0),
                    };
                    let exit = Some(ExitInfo {
                        code: Some(code),
                        signal: None,
                        oom_killed: false,
                    });
                    self.sim.report(&id, state, exit);
                }
            }
            Ev::NodeDown(i) => {
                if !self.nodes.is_empty() {
                    self.sim.node_down(&node_id(i % n_nodes));
                }
            }
            Ev::NodeUp(i) => {
                if let Some(node_gen) = self.nodes.get(i % n_nodes) {
                    let mut n = node(
                        &node_id(i % n_nodes),
                        node_gen.cpu_millis,
                        node_gen.memory_mi * MI,
                    );
                    if !node_gen.has_driver {
                        n.drivers.clear();
                    }
                    self.sim.add_node(n);
                }
            }
            Ev::Availability(i, a) => {
                if !self.nodes.is_empty() {
                    self.sim.set_availability(&node_id(i % n_nodes), a);
                }
            }
            Ev::Update(j) => {
                if let Some(spec) = self.specs.get_mut(j % n_jobs) {
                    self.generation += 1;
                    spec.task
                        .env
                        .insert("GEN".to_owned(), self.generation.to_string());
                    let spec = spec.clone();
                    self.sim.put(spec);
                }
            }
            Ev::Scale(j, count) => {
                if let Some(spec) = self.specs.get_mut(j % n_jobs) {
                    match &mut spec.kind {
                        JobKind::Service { replicas } => *replicas = count,
                        JobKind::Batch { completions, .. } => *completions = count.max(1),
                        JobKind::Global => {}
                    }
                    let spec = spec.clone();
                    self.sim.put(spec);
                }
            }
            Ev::Stop(j) => {
                if !self.specs.is_empty() {
                    let name = self.specs[j % n_jobs].name.clone();
                    self.sim.stop_job(&name);
                }
            }
            Ev::Start(j) => {
                if let Some(spec) = self.specs.get(j % n_jobs) {
                    let spec = spec.clone();
                    self.sim.put(spec);
                }
            }
        }
    }

    /// One pass: checks determinism, applies, checks safety. Returns the output.
    fn pass(&mut self) -> Result<crate::PlanOutput, TestCaseError> {
        self.sim.seed += 1;
        let out = plan(&self.sim.state, self.sim.now, self.sim.seed);
        prop_assert_eq!(&out, &plan(&self.sim.state, self.sim.now, self.sim.seed));
        // Reconciling only what changed since the last applied pass plans
        // exactly what a full pass plans.
        let since = crate::plan_since(&self.sim.state, self.mark, self.sim.now, self.sim.seed);
        prop_assert_eq!(&out, &since, "incremental pass differs from the full pass");
        let mark = self.sim.state.change_mark();
        let now = self.sim.now;
        let events = self
            .sim
            .state
            .apply(Command::ApplyPlan {
                plan: out.plan.clone(),
                now,
            })
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        let ignored: Vec<&Event> = events
            .iter()
            .filter(|e| matches!(e, Event::Ignored { .. }))
            .collect();
        prop_assert!(
            ignored.is_empty(),
            "a fresh plan had stale items: {:?}",
            ignored
        );
        self.mark = Some(mark);
        check_safety(&self.sim.state)?;
        Ok(out)
    }

    /// Agents act on what they were told; `percent` of the work is done this round.
    fn agents(&mut self, percent: u64) -> bool {
        let work: Vec<(TaskId, TaskState)> = self
            .sim
            .state
            .tasks()
            .filter(|t| t.node.is_some() && t.is_active())
            .filter_map(|t| {
                if t.desired == TaskDesired::Shutdown {
                    Some((t.id.clone(), TaskState::Shutdown))
                } else if t.status.state < TaskState::Running {
                    Some((t.id.clone(), TaskState::Running))
                } else {
                    None
                }
            })
            .collect();
        let any = !work.is_empty();
        for (id, state) in work {
            if self.rng.chance(percent) {
                self.sim.report(&id, state, None);
            }
        }
        any
    }
}

/// Never over-committed; never two live tasks of the current version in one slot;
/// at most one slot per job mid-update.
fn check_safety(state: &State) -> Result<(), TestCaseError> {
    let mut used: BTreeMap<&NodeId, Resources> = BTreeMap::new();
    for task in state.tasks().filter(|t| t.is_active()) {
        if let Some(n) = &task.node {
            let sum = used.entry(n).or_default();
            *sum = sum.saturating_add(&task.resources);
        }
    }
    for (id, sum) in used {
        let node = state.node(id).expect("task on a known node");
        prop_assert!(
            sum.fits_in(&node.capacity),
            "node {} over-committed: {:?} > {:?}",
            id,
            sum,
            node.capacity
        );
        prop_assert_eq!(sum, state.reserved(id));
    }
    for job in state.jobs() {
        // History is trimmed every pass; a pass may add one terminal task per slot
        // (a pending task it stops) and leave two live ones mid-update.
        let mut terminal: BTreeMap<&Slot, usize> = BTreeMap::new();
        for task in state.tasks_of_job(&job.name) {
            if task.status.state.is_terminal() {
                *terminal.entry(&task.slot).or_default() += 1;
            }
        }
        for (slot, n) in terminal {
            prop_assert!(
                n <= HISTORY_PER_SLOT + 2,
                "job {} slot {}: {} terminal tasks kept",
                job.name,
                slot,
                n
            );
        }
        let mut live: BTreeMap<&Slot, (u32, u32)> = BTreeMap::new();
        // A running task leaving a draining node stays until its replacement
        // runs (start, then stop): it is neither a duplicate nor an update step.
        let leaving = |task: &baton_state::Task| {
            task.status.state == TaskState::Running
                && task
                    .node
                    .as_ref()
                    .and_then(|n| state.node(n))
                    .is_some_and(|n| n.availability == NodeAvailability::Drain)
        };
        for task in state
            .tasks_of_job(&job.name)
            .filter(|t| t.is_live() && !leaving(t))
        {
            let entry = live.entry(&task.slot).or_default();
            entry.0 += 1;
            if task.job_version == job.version {
                entry.1 += 1;
            }
            if let (Slot::Node(slot_node), Some(on)) = (&task.slot, &task.node) {
                prop_assert_eq!(slot_node, on, "global task off its node");
            }
        }
        let mut updating = 0;
        for (slot, (all, current)) in &live {
            prop_assert!(
                *current <= 1,
                "job {} slot {}: {} live current tasks",
                job.name,
                slot,
                current
            );
            if *all > 1 {
                updating += 1;
            }
        }
        if updating > 1 {
            let detail: Vec<String> = state
                .tasks_of_job(&job.name)
                .map(|t| {
                    format!(
                        "{} v{} {:?} {:?} {:?}",
                        t.id, t.job_version, t.status.state, t.desired, t.node
                    )
                })
                .collect();
            prop_assert!(
                false,
                "job {} v{}: {} slots mid-update: {:#?}",
                job.name,
                job.version,
                updating,
                detail
            );
        }
    }
    Ok(())
}

/// Whether some node eligible for the task has room for it now.
fn could_place(state: &State, task: &baton_state::Task) -> bool {
    state.nodes().any(|n| {
        let pinned_ok = match &task.slot {
            Slot::Node(id) => id == &n.id,
            Slot::Index(_) => true,
        };
        pinned_ok && State::node_eligible(n, task.driver) && task.resources.fits_in(&state.free(n))
    })
}

/// The converged shape: every wanted slot has its one task (running, or pending
/// because nothing can hold it), unless the slot gave up or finished.
fn check_converged(state: &State) -> Result<(), TestCaseError> {
    for job in state.jobs() {
        let live: Vec<&baton_state::Task> = state
            .tasks_of_job(&job.name)
            .filter(|t| t.is_live())
            .collect();
        if job.desired == JobDesired::Stop {
            prop_assert!(live.is_empty(), "stopped job {} has live tasks", job.name);
            continue;
        }
        for task in &live {
            if task.status.state == TaskState::Pending {
                prop_assert!(task.node.is_none());
                prop_assert!(
                    !could_place(state, task),
                    "task {} pending although a node has room ({})",
                    task.id,
                    task.status.message
                );
                prop_assert!(!task.status.message.is_empty());
            } else {
                prop_assert_eq!(task.status.state, TaskState::Running);
            }
        }
        let latest = state.latest_by_slot(&job.name);
        let settled = |slot: &Slot| {
            latest.get(slot).is_some_and(|t| {
                t.job_version == job.version
                    && matches!(
                        restart_decision(&job.spec.kind, &job.spec.restart, t),
                        RestartDecision::GiveUp | RestartDecision::Done
                    )
            })
        };
        let paused = latest
            .iter()
            .any(|(slot, t)| t.job_version == job.version && settled(slot));
        let per_slot = |slot: &Slot| live.iter().filter(|t| &t.slot == slot).count();
        let wanted: Vec<Slot> = match job.spec.kind {
            JobKind::Service { replicas } => (0..replicas).map(Slot::Index).collect(),
            JobKind::Batch { .. } => Vec::new(),
            JobKind::Global => state
                .nodes()
                .filter(|n| State::node_eligible(n, job.spec.task.driver))
                .map(|n| Slot::Node(n.id.clone()))
                .collect(),
        };
        // An update stalls (start-first with no room anywhere, not even where the
        // old task runs): the old task keeps serving beside its pending successor.
        // Slots behind a stalled update keep their one old task.
        let mut stalled = 0;
        let mut behind = 0;
        for slot in &wanted {
            if settled(slot) {
                continue;
            }
            if paused {
                prop_assert!(per_slot(slot) >= 1, "job {} slot {} empty", job.name, slot);
                continue;
            }
            let in_slot: Vec<&&baton_state::Task> =
                live.iter().filter(|t| &t.slot == slot).collect();
            let current: Vec<&&baton_state::Task> = in_slot
                .iter()
                .copied()
                .filter(|t| t.job_version == job.version)
                .collect();
            match (current.len(), in_slot.len()) {
                (1, 1) => {}
                (1, _) => {
                    stalled += 1;
                    prop_assert_eq!(current[0].status.state, TaskState::Pending);
                }
                (0, 1) => behind += 1,
                _ => prop_assert!(false, "job {} slot {}: {:?}", job.name, slot, in_slot),
            }
        }
        prop_assert!(stalled <= 1, "job {}: {} stalled slots", job.name, stalled);
        prop_assert!(
            behind == 0 || stalled == 1,
            "job {}: update not finished",
            job.name
        );
        match job.spec.kind {
            JobKind::Service { replicas } => {
                for task in &live {
                    prop_assert!(matches!(task.slot, Slot::Index(i) if i < replicas));
                }
            }
            JobKind::Batch {
                completions,
                parallelism,
            } => {
                let current = live.iter().filter(|t| t.job_version == job.version).count();
                prop_assert!(current <= parallelism as usize);
                for task in &live {
                    prop_assert!(matches!(task.slot, Slot::Index(i) if i < completions));
                }
            }
            JobKind::Global => {
                for task in &live {
                    let Slot::Node(id) = &task.slot else {
                        return Err(TestCaseError::fail("global task in an index slot"));
                    };
                    let node = state.node(id).expect("slot node known");
                    prop_assert!(
                        State::node_eligible(node, job.spec.task.driver)
                            || node.availability == NodeAvailability::Pause,
                        "global task on ineligible node {}",
                        id
                    );
                }
            }
        }
    }
    Ok(())
}

fn run(
    nodes: Vec<NodeGen>,
    jobs: Vec<JobGen>,
    events: Vec<Ev>,
    seed: u64,
) -> Result<(), TestCaseError> {
    let mut world = World::new(nodes, &jobs, seed);
    // Chaos: events, passes and agents that act on only part of their work.
    for ev in &events {
        world.event(ev);
        world.pass()?;
        world.agents(70);
        world.sim.advance(300);
    }
    // Calm: agents do everything; time jumps to each backoff deadline.
    let mut rounds = 0;
    loop {
        rounds += 1;
        prop_assert!(rounds < 500, "no convergence");
        let out = world.pass()?;
        let worked = world.agents(100);
        if out.plan.is_empty() && !worked {
            match out.next_wakeup {
                Some(at) => world.sim.now = at,
                None => break,
            }
        }
    }
    check_converged(&world.sim.state)?;
    // A state loaded from its persisted form plans the same.
    let json = serde_json::to_string(&world.sim.state).expect("serialises");
    let loaded: State = serde_json::from_str(&json).expect("loads");
    prop_assert_eq!(
        plan(&world.sim.state, Timestamp(world.sim.now.0 + 1), 77),
        plan(&loaded, Timestamp(world.sim.now.0 + 1), 77)
    );
    Ok(())
}

proptest! {
    // 512 cases take about a second; PROPTEST_CASES overrides for longer hunts.
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(512),
        ..ProptestConfig::default()
    })]

    #[test]
    fn cluster_simulation_keeps_invariants(
        nodes in prop::collection::vec(node_gen(), 0..6),
        jobs in prop::collection::vec(job_gen(), 1..5),
        events in prop::collection::vec(ev(), 0..40),
        seed in any::<u64>(),
    ) {
        run(nodes, jobs, events, seed)?;
    }
}
