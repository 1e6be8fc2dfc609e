//! Simulated cluster at scale: 2,000 fake nodes over four zones, six jobs (four
//! services spread over zones under label constraints, with dynamic and static
//! host ports; a global job on `disk=ssd` nodes with a static port; a batch
//! job), fake agents that acknowledge what they are assigned, and a driver
//! that alternates scheduler passes and acknowledgements through
//! `State::apply` until the cluster settles. Safety invariants are checked
//! after every committed part of a plan and every batch of acknowledgements;
//! the settled shape after every convergence. Each scenario is one seeded
//! test; a failure names its seed, round and clock, and counts every kind of
//! broken invariant with examples.
//!
//! No processes, no clock, no threads: the agents are a function of the state.
//! An agent takes two rounds to start a task (`assigned` → `starting` →
//! `running`) and one to stop one, so a plan that stops a task before its
//! replacement runs shows as a slot with nothing running.
//!
//! Labels: zones come from the agents (`Node.labels`), except on one node in
//! ten where the operator set it; `disk=ssd` is always the operator's.
//! `UpdateNodeLabels` removes operator labels only, so only those zones can be
//! taken away that way (an agent's label changes when it registers again).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::time::Duration;

use baton_spec::{
    Attribute, Constraint, DYNAMIC_PORT_MAX, DYNAMIC_PORT_MIN, DriverKind, JobKind, JobSpec,
    Placement, PortSpec, Resources, RestartCondition, RestartPolicy, SpecFormat, Spread, TaskSpec,
};
use baton_state::{
    Command, Event, ExitInfo, Node, NodeAvailability, NodeId, NodeState, Plan, Slot, State, Task,
    TaskDesired, TaskId, TaskReport, TaskState, Timestamp,
};

use rand::SeedableRng;
use rand::seq::IndexedRandom;

use crate::{PlanOutput, plan};

const MI: u64 = 1 << 20;
const GI: u64 = 1 << 30;
/// The clock at the start of every scenario: 2023-11-14T22:13:20.000Z.
const T0: Timestamp = Timestamp(1_700_000_000_000);

/// Nodes of the simulated cluster. 2,000 nodes and about 8,000 live tasks keep
/// one scenario within a few seconds of a debug build.
const N_NODES: usize = 2_000;
const ZONES: [&str; 4] = ["a", "b", "c", "d"];
/// Clock advance per round: agents act within a round, so rounds are short.
const ROUND_MS: u64 = 100;
/// Items per committed part of a plan. The control loop commits parts of
/// 5,000 (`baton_manager::control::MAX_PLAN_ITEMS`); smaller parts here make
/// the initial placement land in several.
const PLAN_PART_ITEMS: usize = 1_000;
/// Rounds one convergence may take. A settled cluster needs about five (one
/// pass, two rounds of starting, one to see the plan empty); moves that start
/// before they stop need a few more.
const MAX_ROUNDS: usize = 40;
/// How long a batch task runs once started, in simulated time: longer than any
/// convergence, so batch tasks are running while the scenarios act.
const BATCH_RUN_MS: u64 = 60_000;

const WEB: &str = "web";
const API: &str = "api";
const CACHE: &str = "cache";
const EDGE: &str = "edge";
const EXPORTER: &str = "exporter";
const ETL: &str = "etl";

const WEB_REPLICAS: u32 = 4_000;
const EDGE_PORT: u16 = 8_080;
const EXPORTER_PORT: u16 = 9_100;
const ETL_PARALLELISM: u32 = 400;

/// The scenarios' randomness (node sizes; which nodes fail, drain, change
/// labels), seeded: each pass gets its own seed too.
type Rng = rand::rngs::StdRng;

/// One of `items`.
fn choose<T: Copy>(rng: &mut Rng, items: &[T]) -> T {
    *items.choose(rng).expect("a non-empty choice")
}

/// `k` distinct items of `items`.
fn sample<T: Clone>(rng: &mut Rng, items: &[T], k: usize) -> Vec<T> {
    items.choose_multiple(rng, k).cloned().collect()
}

fn node_id(i: usize) -> NodeId {
    NodeId(format!("n{i:04}"))
}

fn zone_of(i: usize) -> &'static str {
    ZONES[i % ZONES.len()]
}

/// Every third node has an SSD (set by the operator). With zones taken round
/// robin over four, SSD nodes fall evenly into every zone.
fn has_ssd(i: usize) -> bool {
    i.is_multiple_of(3)
}

/// One node in ten had its zone set by the operator rather than by its agent
/// (`baton node label`): those are the nodes whose zone an operator can remove.
fn zone_by_operator(i: usize) -> bool {
    i % 10 == 7
}

fn constraint(text: &str) -> Constraint {
    Constraint::parse(text).expect("the simulation's constraints parse")
}

fn spread_over_zones() -> Option<Spread> {
    Some(Spread {
        attribute: Attribute::Label("zone".to_owned()),
        targets: Vec::new(),
    })
}

fn port(name: &str, static_port: Option<u16>) -> PortSpec {
    PortSpec {
        name: name.to_owned(),
        static_port,
        publish: true,
    }
}

fn job_spec(name: &str, kind: JobKind, resources: Resources, placement: Placement) -> JobSpec {
    let restart = match kind {
        JobKind::Batch { .. } => RestartCondition::OnFailure,
        _ => RestartCondition::Always,
    };
    JobSpec {
        name: name.to_owned(),
        kind,
        task: TaskSpec {
            driver: DriverKind::Raw,
            command: vec!["sleep".to_owned(), "3600".to_owned()],
            env: Default::default(),
            workdir: None,
            user: None,
            resources,
            kill_timeout: Duration::from_secs(10),
            ports: Vec::new(),
            image: None,
            capabilities: Vec::new(),
            pids_limit: baton_spec::DEFAULT_PIDS_LIMIT,
            secrets: Vec::new(),
            env_secrets: std::collections::BTreeMap::new(),
            configs: Vec::new(),
        },
        restart: RestartPolicy {
            condition: restart,
            max_attempts: 0,
            delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(30),
        },
        placement,
    }
}

/// The simulated workload, about 8,000 live tasks: 6,700 service tasks, one
/// exporter per SSD node (667), 400 batch tasks at a time.
fn jobs() -> Vec<JobSpec> {
    let res = |cpu_millis, memory_bytes, disk_bytes| Resources {
        cpu_millis,
        memory_bytes,
        disk_bytes,
    };
    let mut web = job_spec(
        WEB,
        JobKind::Service {
            replicas: WEB_REPLICAS,
        },
        res(200, 256 * MI, GI),
        Placement {
            constraints: vec![constraint("node.labels.zone in (a, b, c, d)")],
            spread: spread_over_zones(),
            ..Placement::default()
        },
    );
    web.task.ports = vec![port("http", None)];
    let mut api = job_spec(
        API,
        JobKind::Service { replicas: 1_200 },
        res(500, 512 * MI, 2 * GI),
        Placement {
            constraints: vec![constraint("node.labels.disk == ssd")],
            spread: spread_over_zones(),
            ..Placement::default()
        },
    );
    api.task.ports = vec![port("grpc", None), port("metrics", None)];
    let cache = job_spec(
        CACHE,
        JobKind::Service { replicas: 1_200 },
        res(1_000, 2 * GI, 0),
        Placement {
            constraints: vec![constraint("node.labels.zone in (a, b, c)")],
            spread: spread_over_zones(),
            ..Placement::default()
        },
    );
    let mut edge = job_spec(
        EDGE,
        JobKind::Service { replicas: 300 },
        res(250, 128 * MI, 0),
        Placement {
            constraints: vec![constraint("node.labels.zone exists")],
            spread: spread_over_zones(),
            ..Placement::default()
        },
    );
    edge.task.ports = vec![port("https", Some(EDGE_PORT))];
    let mut exporter = job_spec(
        EXPORTER,
        JobKind::Global,
        res(50, 64 * MI, 0),
        Placement {
            constraints: vec![constraint("node.labels.disk == ssd")],
            ..Placement::default()
        },
    );
    exporter.task.ports = vec![port("metrics", Some(EXPORTER_PORT))];
    let etl = job_spec(
        ETL,
        JobKind::Batch {
            completions: 2_000,
            parallelism: ETL_PARALLELISM,
        },
        res(500, GI, 4 * GI),
        Placement::default(),
    );
    vec![web, api, cache, edge, exporter, etl]
}

/// Broken invariants, counted by kind with a few examples each, so one failure
/// shows every kind of problem at once.
#[derive(Debug, Default)]
struct Violations {
    by_kind: BTreeMap<&'static str, (usize, Vec<String>)>,
}

impl Violations {
    const EXAMPLES: usize = 3;

    fn push(&mut self, kind: &'static str, text: String) {
        let (n, examples) = self.by_kind.entry(kind).or_default();
        *n += 1;
        if examples.len() < Self::EXAMPLES {
            examples.push(text);
        }
    }

    fn extend(&mut self, other: Violations) {
        for (kind, (n, examples)) in other.by_kind {
            let (total, kept) = self.by_kind.entry(kind).or_default();
            *total += n;
            let room = Self::EXAMPLES.saturating_sub(kept.len());
            kept.extend(examples.into_iter().take(room));
        }
    }
}

/// Extra checks a scenario turns on.
#[derive(Debug, Default)]
struct Watches {
    /// After every acknowledgement, every service slot has a running task
    /// (moves start the replacement before they stop the old task).
    no_empty_slot: bool,
    /// No batch task on a draining node is stopped before the drain deadline.
    batch_drain_deadline: bool,
}

/// The cluster: a state, a clock, fake agents, and invariant checks.
#[derive(Debug)]
struct Cluster {
    state: State,
    now: Timestamp,
    /// The scenario's seed, named by every failure.
    seed: u64,
    /// Seed of the next pass: each pass draws a new one, as the manager does.
    pass_seed: u64,
    rng: Rng,
    /// Rounds run so far (all convergences).
    round: usize,
    /// The nodes as their agents describe themselves, to register them again.
    agents: BTreeMap<NodeId, Node>,
    watches: Watches,
    /// Batch tasks stopped on a draining node (once its deadline passed).
    drained_batch_stops: Vec<TaskId>,
}

impl Cluster {
    /// 2,000 nodes of mixed sizes, the jobs of [`jobs`], converged.
    fn new(seed: u64) -> Cluster {
        let mut cluster = Cluster {
            state: State::default(),
            now: T0,
            seed,
            pass_seed: seed.wrapping_mul(1_000_003),
            rng: Rng::seed_from_u64(seed),
            round: 0,
            agents: BTreeMap::new(),
            watches: Watches::default(),
            drained_batch_stops: Vec::new(),
        };
        for i in 0..N_NODES {
            let capacity = Resources {
                cpu_millis: choose(&mut cluster.rng, &[4_000, 8_000, 16_000]),
                memory_bytes: choose(&mut cluster.rng, &[8, 16, 32, 64]) * GI,
                disk_bytes: choose(&mut cluster.rng, &[100, 250, 500]) * GI,
            };
            let mut node = Node::new(
                node_id(i),
                format!("host-{i:04}"),
                capacity,
                BTreeSet::from([DriverKind::Raw]),
            );
            node.labels.insert("arch".to_owned(), "amd64".to_owned());
            if !zone_by_operator(i) {
                node.labels.insert("zone".to_owned(), zone_of(i).to_owned());
            }
            cluster.agents.insert(node.id.clone(), node.clone());
            cluster.apply(Command::RegisterNode {
                node,
                now: cluster.now,
            });
            let mut set = BTreeMap::new();
            if zone_by_operator(i) {
                set.insert("zone".to_owned(), zone_of(i).to_owned());
            }
            if has_ssd(i) {
                set.insert("disk".to_owned(), "ssd".to_owned());
            }
            if !set.is_empty() {
                cluster.set_labels(&node_id(i), set, &[]);
            }
        }
        for spec in jobs() {
            cluster.apply(Command::PutJob {
                spec,
                format: SpecFormat::Yaml,
                source: String::new(),
                now: cluster.now,
            });
        }
        cluster.converge("initial placement");
        cluster
    }

    fn apply(&mut self, cmd: Command) -> Vec<Event> {
        let kind = cmd.kind();
        match self.state.apply(cmd) {
            Ok(events) => events,
            Err(error) => self.fail(&format!("{kind} refused: {error}")),
        }
    }

    fn fail(&self, what: &str) -> ! {
        panic!(
            "seed {:#x}, round {}, t=+{}ms: {what}",
            self.seed,
            self.round,
            self.now.millis_since(T0)
        )
    }

    fn fail_all(&self, phase: &str, violations: &Violations) {
        if violations.by_kind.is_empty() {
            return;
        }
        let total: usize = violations.by_kind.values().map(|(n, _)| n).sum();
        let mut text = format!("{phase}: {total} violation(s)");
        for (kind, (n, examples)) in &violations.by_kind {
            let _ = write!(text, "\n  {kind}: {n}, e.g.");
            for example in examples {
                let _ = write!(text, "\n    {example}");
            }
        }
        self.fail(&text);
    }

    fn set_labels(&mut self, id: &NodeId, set: BTreeMap<String, String>, remove: &[&str]) {
        self.apply(Command::UpdateNodeLabels {
            id: id.clone(),
            set,
            remove: remove.iter().map(|k| (*k).to_owned()).collect(),
        });
    }

    fn advance_to(&mut self, at: Timestamp) {
        if at > self.now {
            self.now = at;
        }
    }

    /// Passes and acknowledgements until a pass is empty and no agent has
    /// anything left to do; then the settled shape is checked. Returns the
    /// number of rounds.
    fn converge(&mut self, what: &str) -> usize {
        let mut last = PlanOutput::default();
        for rounds in 1..=MAX_ROUNDS {
            let (out, n_reports) = self.round();
            let quiet = out.plan.is_empty() && n_reports == 0;
            last = out;
            if quiet {
                self.check_settled(what);
                return rounds;
            }
        }
        let mut text = format!("{what}: no convergence in {MAX_ROUNDS} rounds; last plan:");
        let plan = &last.plan;
        let _ = write!(
            text,
            " {} create, {} place, {} stop, {} unplaced, {} remove",
            plan.create.len(),
            plan.place.len(),
            plan.stop.len(),
            plan.unplaced.len(),
            plan.remove.len()
        );
        for task in plan.create.iter().take(3) {
            let _ = write!(text, "\n  create {} on {:?}", task.id, task.node);
        }
        for stop in plan.stop.iter().take(3) {
            let _ = write!(text, "\n  stop {}: {}", stop.task, stop.reason);
        }
        for unplaced in plan.unplaced.iter().take(3) {
            let _ = write!(text, "\n  unplaced {}: {}", unplaced.task, unplaced.reason);
        }
        self.fail(&text)
    }

    /// One pass applied, then one batch of acknowledgements, each followed by
    /// the safety checks. Returns the pass and the number of reports sent.
    fn round(&mut self) -> (PlanOutput, usize) {
        self.round += 1;
        self.pass_seed = self.pass_seed.wrapping_add(1);
        let out = plan(&self.state, self.now, self.pass_seed);
        let violations = self.check_plan(&out.plan);
        self.fail_all("plan", &violations);
        // Committed in parts, as the control loop commits a large plan: each
        // part must leave a consistent state on its own.
        for part in out.plan.clone().into_batches(PLAN_PART_ITEMS) {
            let events = self.apply(Command::ApplyPlan {
                plan: part,
                now: self.now,
            });
            let ignored: Vec<&Event> = events
                .iter()
                .filter(|e| matches!(e, Event::Ignored { .. }))
                .collect();
            if !ignored.is_empty() {
                self.fail(&format!(
                    "{} item(s) of a plan made from the current state were not applied, \
                     e.g. {:?}",
                    ignored.len(),
                    &ignored[..ignored.len().min(3)]
                ));
            }
            let violations = self.check_safety();
            self.fail_all("after a part of the plan", &violations);
        }
        let n_reports = self.agents_ack();
        let mut violations = self.check_safety();
        if self.watches.no_empty_slot {
            violations.extend(self.empty_service_slots());
        }
        self.fail_all("after the agents' reports", &violations);
        self.now = Timestamp(self.now.0 + ROUND_MS);
        (out, n_reports)
    }

    /// Every agent of a ready node acts on its tasks: a task to stop is stopped,
    /// an assigned one starts (one round), a starting one runs (one round), a
    /// batch task completes `BATCH_RUN_MS` after it started. One report per node.
    fn agents_ack(&mut self) -> usize {
        let batch_jobs: BTreeSet<String> = self
            .state
            .jobs()
            .filter(|j| matches!(j.spec.kind, JobKind::Batch { .. }))
            .map(|j| j.name.clone())
            .collect();
        let mut by_node: BTreeMap<NodeId, Vec<TaskReport>> = BTreeMap::new();
        for task in self.state.tasks() {
            let Some(node) = &task.node else { continue };
            if !task.is_active()
                || self
                    .state
                    .node(node)
                    .is_none_or(|n| n.state != NodeState::Ready)
            {
                continue;
            }
            let started = task.status.started_at.unwrap_or(self.now);
            let (state, exit) = match task.status.state {
                _ if task.desired == TaskDesired::Shutdown => (TaskState::Shutdown, None),
                TaskState::Assigned => (TaskState::Starting, None),
                TaskState::Starting => (TaskState::Running, None),
                TaskState::Running
                    if batch_jobs.contains(&task.job)
                        && self.now.millis_since(started) >= BATCH_RUN_MS =>
                {
                    let exit = ExitInfo {
                        code: Some(0),
                        signal: None,
                        oom_killed: false,
                    };
                    (TaskState::Complete, Some(exit))
                }
                _ => continue,
            };
            by_node.entry(node.clone()).or_default().push(TaskReport {
                task: task.id.clone(),
                state,
                message: String::new(),
                exit,
                pid: None,
            });
        }
        let mut n_reports = 0;
        for (node, reports) in by_node {
            n_reports += reports.len();
            let events = self.apply(Command::ReportTasks {
                node: node.clone(),
                reports,
                now: self.now,
            });
            if let Some(ignored) = events.iter().find(|e| matches!(e, Event::Ignored { .. })) {
                self.fail(&format!(
                    "node {node}'s report of its own task was ignored: {ignored:?}"
                ));
            }
        }
        n_reports
    }

    /// Placements and creations of a pass, against the state it was made from:
    /// ready, active nodes that satisfy the job's constraints, every port the
    /// job asks for, only wanted slots; and the drain watch.
    fn check_plan(&mut self, plan: &Plan) -> Violations {
        let mut violations = Violations::default();
        for task in &plan.create {
            let Some(job) = self.state.job(&task.job) else {
                violations.push(
                    "unknown job",
                    format!("created {} for an unknown job", task.id),
                );
                continue;
            };
            let wanted = match (&job.spec.kind, &task.slot) {
                (JobKind::Service { replicas }, Slot::Index(i)) => i < replicas,
                (JobKind::Batch { completions, .. }, Slot::Index(i)) => i < completions,
                (JobKind::Global, Slot::Node(id)) => self
                    .state
                    .node(id)
                    .is_some_and(|n| takes_new(&self.state, n, &job.spec)),
                _ => false,
            };
            if !wanted {
                violations.push(
                    "slot the job does not want",
                    format!(
                        "created {} for slot {} that {} does not want (a global job's \
                     slot must be a ready, active node satisfying its constraints)",
                        task.id, task.slot, task.job
                    ),
                );
            }
            if let Some(node) = &task.node {
                violations.extend(self.check_placement(&task.id, &task.job, node, &task.ports));
            }
        }
        for placement in &plan.place {
            let Some(task) = self.state.task(&placement.task) else {
                violations.push(
                    "unknown task",
                    format!("placed unknown task {}", placement.task),
                );
                continue;
            };
            violations.extend(self.check_placement(
                &task.id,
                &task.job,
                &placement.node,
                &placement.ports,
            ));
        }
        if self.watches.batch_drain_deadline {
            for stop in &plan.stop {
                let Some(task) = self.state.task(&stop.task) else {
                    continue;
                };
                let is_batch = self
                    .state
                    .job(&task.job)
                    .is_some_and(|j| matches!(j.spec.kind, JobKind::Batch { .. }));
                let Some(node) = task.node.as_ref().and_then(|n| self.state.node(n)) else {
                    continue;
                };
                if !is_batch || node.availability != NodeAvailability::Drain {
                    continue;
                }
                match node.drain_deadline {
                    Some(deadline) if self.now >= deadline => {
                        self.drained_batch_stops.push(task.id.clone());
                    }
                    deadline => violations.push(
                        "batch task stopped before the drain deadline",
                        format!(
                            "batch task {} stopped on draining node {} before its deadline \
                         {deadline:?} ({}): a drain lets batch tasks finish",
                            task.id, node.id, stop.reason
                        ),
                    ),
                }
            }
        }
        violations
    }

    fn check_placement(
        &self,
        task: &TaskId,
        job: &str,
        node_id: &NodeId,
        ports: &BTreeMap<String, u16>,
    ) -> Violations {
        let mut violations = Violations::default();
        let Some(spec) = self.state.job(job).map(|j| &j.spec) else {
            return violations;
        };
        let Some(node) = self.state.node(node_id) else {
            violations.push(
                "unknown node",
                format!("{task} placed on unknown node {node_id}"),
            );
            return violations;
        };
        if node.state != NodeState::Ready || node.availability != NodeAvailability::Active {
            violations.push(
                "placed on a node not ready or not active",
                format!(
                    "{task} placed on node {node_id} which is {:?}/{:?}",
                    node.state, node.availability
                ),
            );
        }
        for c in &spec.placement.constraints {
            if !c.matches(&self.state.node_view(node)) {
                violations.push(
                    "placed against a constraint",
                    format!(
                        "{task} placed on node {node_id} against constraint `{}` (labels {:?})",
                        c.as_str(),
                        node.effective_labels()
                    ),
                );
            }
        }
        let wanted: BTreeSet<&str> = spec.task.ports.iter().map(|p| p.name.as_str()).collect();
        let got: BTreeSet<&str> = ports.keys().map(String::as_str).collect();
        if wanted != got {
            violations.push(
                "placed without the ports the job asks for",
                format!("{task} placed with ports {got:?}, its job asks for {wanted:?}"),
            );
        }
        for p in &spec.task.ports {
            let Some(&number) = ports.get(&p.name) else {
                continue;
            };
            let ok = match p.static_port {
                Some(fixed) => number == fixed,
                None => (DYNAMIC_PORT_MIN..=DYNAMIC_PORT_MAX).contains(&number),
            };
            if !ok {
                violations.push(
                    "port outside what was asked",
                    format!(
                        "{task} got port {}={number}, asked for {:?}",
                        p.name, p.static_port
                    ),
                );
            }
        }
        violations
    }

    /// What must hold at every moment: no node over-committed (and the state's
    /// own accounting agrees), no host port held twice on a node, no slot with
    /// two live tasks (except one leaving a node it may not stay on while its
    /// replacement starts), batch parallelism respected, tasks only on known
    /// nodes, global tasks only on their own node.
    fn check_safety(&self) -> Violations {
        let state = &self.state;
        let mut violations = Violations::default();
        let mut used: BTreeMap<&NodeId, Resources> = BTreeMap::new();
        let mut ports: BTreeMap<&NodeId, BTreeMap<u16, &TaskId>> = BTreeMap::new();
        for task in state.tasks().filter(|t| t.is_active()) {
            let Some(node) = &task.node else { continue };
            if state.node(node).is_none() {
                violations.push(
                    "unknown node",
                    format!("{} is on unknown node {node}", task.id),
                );
            }
            let sum = used.entry(node).or_default();
            *sum = sum.saturating_add(&task.resources);
            let held = ports.entry(node).or_default();
            for (name, number) in &task.ports {
                if let Some(other) = held.insert(*number, &task.id) {
                    violations.push(
                        "host port held twice on a node",
                        format!(
                            "port {number} on node {node} held twice: {other} and {} ({name})",
                            task.id
                        ),
                    );
                }
            }
        }
        for (id, sum) in &used {
            let Some(node) = state.node(id) else { continue };
            if !sum.fits_in(&node.capacity) {
                violations.push(
                    "node over-committed",
                    format!(
                        "node {id} over-committed: tasks hold {sum:?}, capacity {:?}",
                        node.capacity
                    ),
                );
            }
            if *sum != state.reserved(id) {
                violations.push(
                    "reserved resources disagree",
                    format!(
                        "node {id}: tasks hold {sum:?} but the state reserves {:?}",
                        state.reserved(id)
                    ),
                );
            }
            let held: BTreeSet<u16> = ports
                .get(id)
                .map(|p| p.keys().copied().collect())
                .unwrap_or_default();
            let recorded: BTreeSet<u16> = state
                .ports_in_use(id)
                .map(|p| p.iter().copied().collect())
                .unwrap_or_default();
            if held != recorded {
                violations.push(
                    "ports in use disagree",
                    format!(
                        "node {id}: tasks hold ports {held:?} but the state records {recorded:?}"
                    ),
                );
            }
        }
        for job in state.jobs() {
            let mut by_slot: BTreeMap<&Slot, (usize, usize)> = BTreeMap::new();
            let mut live = 0;
            for task in state.tasks_of_job(&job.name).filter(|t| t.is_live()) {
                live += 1;
                let leaving = task
                    .node
                    .as_ref()
                    .and_then(|n| state.node(n))
                    .is_some_and(|n| must_leave(state, n, &job.spec));
                let (staying, total) = by_slot.entry(&task.slot).or_default();
                *total += 1;
                *staying += usize::from(!leaving);
                if let (Slot::Node(slot_node), Some(node)) = (&task.slot, &task.node)
                    && slot_node != node
                {
                    violations.push(
                        "global task off its node",
                        format!(
                            "global task {} of slot {slot_node} is on node {node}",
                            task.id
                        ),
                    );
                }
            }
            let batch = matches!(job.spec.kind, JobKind::Batch { .. });
            for (slot, (staying, total)) in by_slot {
                let duplicate = if batch {
                    total > 1
                } else {
                    staying > 1 || total > 2
                };
                if duplicate {
                    let ids: Vec<String> = state
                        .tasks_of_job(&job.name)
                        .filter(|t| t.is_live() && &t.slot == slot)
                        .map(|t| format!("{} ({:?} on {:?})", t.id, t.status.state, t.node))
                        .collect();
                    violations.push(
                        "slot with two live tasks",
                        format!("slot {}.{slot} has {total} live tasks: {ids:?}", job.name),
                    );
                }
            }
            if let JobKind::Batch { parallelism, .. } = job.spec.kind
                && live > parallelism as usize
            {
                violations.push(
                    "batch over its parallelism",
                    format!(
                        "batch {} has {live} live tasks, parallelism {parallelism}",
                        job.name
                    ),
                );
            }
        }
        violations
    }

    /// Service slots with no running task.
    fn empty_service_slots(&self) -> Violations {
        let mut violations = Violations::default();
        for job in self.state.jobs() {
            let JobKind::Service { replicas } = job.spec.kind else {
                continue;
            };
            let running: BTreeSet<&Slot> = self
                .state
                .tasks_of_job(&job.name)
                .filter(|t| t.status.state == TaskState::Running)
                .map(|t| &t.slot)
                .collect();
            for i in 0..replicas {
                if !running.contains(&Slot::Index(i)) {
                    let tasks: Vec<String> = self
                        .state
                        .tasks_of_job(&job.name)
                        .filter(|t| t.slot == Slot::Index(i))
                        .map(|t| {
                            format!(
                                "{} {:?}/{:?} on {:?}",
                                t.id, t.desired, t.status.state, t.node
                            )
                        })
                        .collect();
                    violations.push(
                        "service slot with nothing running",
                        format!(
                            "slot {}.{i} has no running task although spare capacity exists \
                         (stopped before its replacement ran?): {tasks:?}",
                            job.name
                        ),
                    );
                }
            }
        }
        violations
    }

    /// The shape once settled: every service slot runs exactly one task on a
    /// node it may stay on; every node eligible for the global job runs exactly
    /// one of its tasks and no other node does; the batch runs at most its
    /// parallelism, only where allowed; nothing is left to acknowledge.
    fn check_settled(&self, what: &str) {
        let state = &self.state;
        let mut violations = Violations::default();
        for task in state.tasks().filter(|t| t.is_active() && t.node.is_some()) {
            if task.desired == TaskDesired::Shutdown || task.status.state < TaskState::Running {
                violations.push(
                    "still in flight once settled",
                    format!(
                        "{} still in flight: {:?}/{:?}",
                        task.id, task.desired, task.status.state
                    ),
                );
            }
        }
        for job in state.jobs() {
            let spec = &job.spec;
            let live: Vec<&Task> = state
                .tasks_of_job(&job.name)
                .filter(|t| t.is_live())
                .collect();
            let misplaced = |task: &Task| -> Option<String> {
                let node = task.node.as_ref().and_then(|n| state.node(n))?;
                if !must_leave(state, node, spec) {
                    return None;
                }
                let batch_let_finish = matches!(spec.kind, JobKind::Batch { .. })
                    && node.availability == NodeAvailability::Drain
                    && constraints_hold(state, node, spec)
                    && node.drain_deadline.is_none_or(|d| self.now < d);
                (!batch_let_finish).then(|| {
                    format!(
                        "{} still runs on node {} ({:?}, labels {:?}) where {} may not stay",
                        task.id,
                        node.id,
                        node.availability,
                        node.effective_labels(),
                        job.name
                    )
                })
            };
            match spec.kind {
                JobKind::Service { replicas } => {
                    let mut by_slot: BTreeMap<u32, Vec<&Task>> = BTreeMap::new();
                    for &task in &live {
                        match task.slot {
                            Slot::Index(i) => by_slot.entry(i).or_default().push(task),
                            Slot::Node(_) => violations.push(
                                "service task with a node slot",
                                format!("service task {} has a node slot", task.id),
                            ),
                        }
                    }
                    for i in 0..replicas {
                        match by_slot.get(&i).map(Vec::as_slice) {
                            None | Some([]) => {
                                let why = state
                                    .latest_by_slot(&job.name)
                                    .get(&Slot::Index(i))
                                    .map(|t| format!("{:?}: {}", t.status.state, t.status.message))
                                    .unwrap_or_default();
                                violations.push(
                                    "service slot lost",
                                    format!(
                                        "slot {}.{i} lost: no live task (latest {why})",
                                        job.name
                                    ),
                                );
                            }
                            Some([task]) => {
                                if task.status.state != TaskState::Running {
                                    violations.push(
                                        "service slot not running",
                                        format!(
                                            "slot {}.{i}: {} is {:?}: {}",
                                            job.name,
                                            task.id,
                                            task.status.state,
                                            task.status.message
                                        ),
                                    );
                                }
                                if let Some(text) = misplaced(task) {
                                    violations.push("task on a node it may not stay on", text);
                                }
                            }
                            Some(tasks) => violations.push(
                                "slot with two live tasks",
                                format!("slot {}.{i} has {} live tasks", job.name, tasks.len()),
                            ),
                        }
                    }
                    let beyond = by_slot.range(replicas..).count();
                    if beyond > 0 {
                        violations.push(
                            "slots past the replicas still live",
                            format!(
                                "{}: {beyond} slots past {replicas} replicas still live",
                                job.name
                            ),
                        );
                    }
                }
                JobKind::Global => {
                    let mut on: BTreeMap<&NodeId, Vec<&Task>> = BTreeMap::new();
                    for &task in &live {
                        if let Slot::Node(id) = &task.slot {
                            on.entry(id).or_default().push(task);
                        }
                    }
                    for node in state.nodes() {
                        let eligible = takes_new(state, node, spec);
                        let tasks = on.get(&node.id).map(Vec::as_slice).unwrap_or_default();
                        match (eligible, tasks) {
                            (true, [task]) if task.status.state == TaskState::Running => {}
                            // Capacity allows only what is free: a node that
                            // became eligible while full keeps the task pending.
                            (true, [task])
                                if task.node.is_none() && !has_room(state, node, spec) => {}
                            (false, []) => {}
                            (true, tasks) => violations.push(
                                "global job not exactly once on an eligible node",
                                format!(
                                    "{} should run once on eligible node {} (labels {:?}, \
                                     free {:?}), has {:?}",
                                    job.name,
                                    node.id,
                                    node.effective_labels(),
                                    state.free(node),
                                    tasks
                                        .iter()
                                        .map(|t| format!(
                                            "{} {:?}: {}",
                                            t.id, t.status.state, t.status.message
                                        ))
                                        .collect::<Vec<_>>()
                                ),
                            ),
                            (false, tasks) => violations.push(
                                "global job on a node it may not use",
                                format!(
                                    "{} runs {} live task(s) on node {} which it may not \
                                 use ({:?}/{:?}, labels {:?})",
                                    job.name,
                                    tasks.len(),
                                    node.id,
                                    node.state,
                                    node.availability,
                                    node.effective_labels()
                                ),
                            ),
                        }
                    }
                }
                JobKind::Batch { parallelism, .. } => {
                    if live.len() > parallelism as usize {
                        violations.push(
                            "batch over its parallelism",
                            format!(
                                "batch {} runs {} tasks, parallelism {parallelism}",
                                job.name,
                                live.len()
                            ),
                        );
                    }
                    for &task in &live {
                        if let Some(text) = misplaced(task) {
                            violations.push("task on a node it may not stay on", text);
                        }
                    }
                }
            }
        }
        self.fail_all(&format!("{what}: settled"), &violations);
    }

    /// Live tasks of a service, by slot index.
    fn live_by_slot(&self, job: &str) -> BTreeMap<u32, TaskId> {
        let mut out = BTreeMap::new();
        for task in self.state.tasks_of_job(job).filter(|t| t.is_live()) {
            if let Slot::Index(i) = task.slot
                && let Some(other) = out.insert(i, task.id.clone())
            {
                self.fail(&format!(
                    "slot {job}.{i} has two live tasks: {other} and {}",
                    task.id
                ));
            }
        }
        out
    }

    /// Live tasks of every job, by id, with their node.
    fn live_tasks(&self) -> BTreeMap<TaskId, Option<NodeId>> {
        self.state
            .tasks()
            .filter(|t| t.is_live())
            .map(|t| (t.id.clone(), t.node.clone()))
            .collect()
    }

    /// Nodes that run a live task of `job`.
    fn nodes_running(&self, job: &str) -> BTreeSet<NodeId> {
        self.state
            .tasks_of_job(job)
            .filter(|t| t.is_live())
            .filter_map(|t| t.node.clone())
            .collect()
    }

    /// Live tasks per zone of a job.
    fn per_zone(&self, job: &str) -> BTreeMap<String, usize> {
        let mut out = BTreeMap::new();
        for task in self.state.tasks_of_job(job).filter(|t| t.is_live()) {
            let zone = task
                .node
                .as_ref()
                .and_then(|n| self.state.node(n))
                .and_then(|n| n.label("zone"))
                .unwrap_or("(none)");
            *out.entry(zone.to_owned()).or_default() += 1;
        }
        out
    }
}

fn constraints_hold(state: &State, node: &Node, spec: &JobSpec) -> bool {
    let view = state.node_view(node);
    spec.placement.constraints.iter().all(|c| c.matches(&view))
}

/// Whether `node` takes new tasks of `spec`: ready, active, with the driver,
/// satisfying every constraint.
fn takes_new(state: &State, node: &Node, spec: &JobSpec) -> bool {
    State::node_eligible(node, spec.task.driver) && constraints_hold(state, node, spec)
}

/// Whether `node` has the resources and the static ports free for one more
/// task of `spec`.
fn has_room(state: &State, node: &Node, spec: &JobSpec) -> bool {
    let ports_free = spec
        .task
        .ports
        .iter()
        .filter_map(|p| p.static_port)
        .all(|p| {
            state
                .ports_in_use(&node.id)
                .is_none_or(|used| !used.contains(&p))
        });
    spec.task.resources.fits_in(&state.free(node)) && ports_free
}

/// Whether a task of `spec` on `node` is to move away: the node is down or
/// draining, or no longer satisfies the job's constraints.
fn must_leave(state: &State, node: &Node, spec: &JobSpec) -> bool {
    node.state != NodeState::Ready
        || node.availability == NodeAvailability::Drain
        || !node.drivers.contains(&spec.task.driver)
        || !constraints_hold(state, node, spec)
}

/// The ids of `n` nodes drawn at random among those `keep` accepts.
fn pick_nodes(
    cluster: &mut Cluster,
    n: usize,
    keep: impl Fn(&State, &Node) -> bool,
) -> Vec<NodeId> {
    let candidates: Vec<NodeId> = cluster
        .state
        .nodes()
        .filter(|node| keep(&cluster.state, node))
        .map(|node| node.id.clone())
        .collect();
    assert!(
        candidates.len() >= n,
        "seed {:#x}: only {} candidate nodes, {n} wanted",
        cluster.seed,
        candidates.len()
    );
    sample(&mut cluster.rng, &candidates, n)
}

#[test]
fn sim_spread_balances_services_over_zones() {
    let mut cluster = Cluster::new(0x5EED_0001);
    let check = |cluster: &Cluster, when: &str| {
        for job in [WEB, API, CACHE, EDGE] {
            let spec = &cluster.state.job(job).expect("job exists").spec;
            let JobKind::Service { replicas } = spec.kind else {
                continue;
            };
            // The zones the job may use: values present on its eligible nodes.
            let zones: BTreeSet<&str> = cluster
                .state
                .nodes()
                .filter(|n| takes_new(&cluster.state, n, spec))
                .filter_map(|n| n.label("zone"))
                .collect();
            let share = replicas as usize / zones.len();
            // An even share, give or take 2% (and one task for rounding).
            let slack = share / 50 + 1;
            let counts = cluster.per_zone(job);
            for zone in &zones {
                let n = counts.get(*zone).copied().unwrap_or(0);
                assert!(
                    n.abs_diff(share) <= slack,
                    "seed {:#x}, {when}: {job} has {n} tasks in zone {zone}, \
                     even share {share} ± {slack}; per zone: {counts:?}",
                    cluster.seed
                );
            }
        }
    };
    check(&cluster, "initial placement");
    // A whole zone's tenth goes down: its tasks go back to the same zone.
    let lost = pick_nodes(&mut cluster, N_NODES / 40, |_, n| {
        n.label("zone") == Some("b")
    });
    for id in lost {
        cluster.apply(Command::NodeDown {
            id,
            now: cluster.now,
        });
    }
    cluster.converge("zone b loses a tenth of its nodes");
    check(&cluster, "after node loss in zone b");
}

#[test]
fn sim_node_loss_replaces_lost_tasks_elsewhere() {
    let mut cluster = Cluster::new(0x5EED_0002);
    let before = cluster.live_tasks();
    let down = pick_nodes(&mut cluster, N_NODES / 10, |_, _| true);
    let down_set: BTreeSet<&NodeId> = down.iter().collect();
    for id in &down {
        cluster.apply(Command::NodeDown {
            id: id.clone(),
            now: cluster.now,
        });
    }
    let on_down: Vec<&TaskId> = before
        .iter()
        .filter(|(_, node)| node.as_ref().is_some_and(|n| down_set.contains(n)))
        .map(|(id, _)| id)
        .collect();
    assert!(
        on_down.len() > 500,
        "seed {:#x}: the lost nodes ran only {} tasks",
        cluster.seed,
        on_down.len()
    );
    for id in &on_down {
        let task = cluster.state.task(id).expect("task kept");
        assert_eq!(task.status.state, TaskState::Lost, "{id} on a down node");
    }
    let rounds = cluster.converge("10% of nodes down");
    assert!(rounds <= 10, "node loss took {rounds} rounds");
    // Every lost service task has a running replacement on a live node, with
    // the same restart count (a lost task does not count as a failure).
    let live: BTreeMap<&str, BTreeMap<u32, TaskId>> = [WEB, API, CACHE, EDGE]
        .into_iter()
        .map(|job| (job, cluster.live_by_slot(job)))
        .collect();
    for id in &on_down {
        let task = cluster.state.task(id).expect("lost task kept as history");
        if task.job == EXPORTER || task.job == ETL {
            continue;
        }
        let Slot::Index(i) = task.slot else { continue };
        let replacement = &live[task.job.as_str()][&i];
        let new = cluster.state.task(replacement).expect("live task");
        let node = new.node.as_ref().expect("placed");
        assert!(
            !down_set.contains(node),
            "replacement {replacement} on down node {node}"
        );
        assert_eq!(new.restarts, task.restarts, "{replacement} replacing {id}");
    }
    // Tasks on the nodes that stayed were not touched.
    for (id, node) in &before {
        if node.as_ref().is_some_and(|n| !down_set.contains(n)) {
            let task = cluster.state.task(id).expect("task kept");
            let finished = task.job == ETL && task.status.state == TaskState::Complete;
            assert!(
                task.is_live() || finished,
                "seed {:#x}: {id} on a healthy node was {:?}/{:?}: {}",
                cluster.seed,
                task.desired,
                task.status.state,
                task.status.message
            );
        }
    }
}

#[test]
fn sim_rejoin_brings_no_duplicate_and_gives_the_global_job_its_tasks_back() {
    let mut cluster = Cluster::new(0x5EED_0003);
    let down = pick_nodes(&mut cluster, N_NODES / 10, |_, _| true);
    let lost: Vec<(NodeId, TaskId)> = cluster
        .state
        .tasks()
        .filter(|t| t.is_live())
        .filter_map(|t| {
            let node = t.node.clone()?;
            down.contains(&node).then(|| (node, t.id.clone()))
        })
        .collect();
    for id in &down {
        cluster.apply(Command::NodeDown {
            id: id.clone(),
            now: cluster.now,
        });
    }
    cluster.converge("10% of nodes down");
    let live_before = cluster.live_tasks();
    let ssd_down: BTreeSet<NodeId> = down
        .iter()
        .filter(|id| {
            cluster
                .state
                .node(id)
                .is_some_and(|n| n.label("disk") == Some("ssd"))
        })
        .cloned()
        .collect();
    assert!(!ssd_down.is_empty(), "some SSD nodes went down");

    // The nodes come back. Their agents still run the tasks they had and say
    // so; those tasks are lost for good and must stay so.
    for id in &down {
        let node = cluster.agents[id].clone();
        cluster.apply(Command::RegisterNode {
            node,
            now: cluster.now,
        });
    }
    let mut stale: BTreeMap<NodeId, Vec<TaskReport>> = BTreeMap::new();
    for (node, task) in &lost {
        stale.entry(node.clone()).or_default().push(TaskReport {
            task: task.clone(),
            state: TaskState::Running,
            message: String::new(),
            exit: None,
            pid: Some(4_242),
        });
    }
    for (node, reports) in stale {
        cluster.apply(Command::ReportTasks {
            node,
            reports,
            now: cluster.now,
        });
    }
    for (_, id) in &lost {
        let task = cluster.state.task(id).expect("lost task kept");
        assert_eq!(
            (task.status.state, task.is_live()),
            (TaskState::Lost, false),
            "seed {:#x}: lost task {id} came back",
            cluster.seed
        );
    }
    cluster.converge("nodes rejoined");

    // The replacements keep running where they are; nothing else moved.
    for (id, node) in &live_before {
        let task = cluster.state.task(id).expect("task kept");
        let finished = task.job == ETL && task.status.state == TaskState::Complete;
        assert!(
            (task.is_live() && &task.node == node) || finished,
            "seed {:#x}: {id} was {:?}/{:?} after the rejoin: {}",
            cluster.seed,
            task.desired,
            task.status.state,
            task.status.message
        );
    }
    // The global job runs again on every rejoined SSD node (check_settled
    // already asserts exactly one live task per eligible node).
    let exporter_nodes = cluster.nodes_running(EXPORTER);
    for id in &ssd_down {
        assert!(
            exporter_nodes.contains(id),
            "seed {:#x}: {EXPORTER} not back on rejoined node {id}",
            cluster.seed
        );
    }
}

#[test]
fn sim_drain_moves_services_first_and_lets_batch_finish_until_the_deadline() {
    let mut cluster = Cluster::new(0x5EED_0004);
    cluster.watches = Watches {
        no_empty_slot: true,
        batch_drain_deadline: true,
    };
    let batch_nodes = cluster.nodes_running(ETL);
    let service_nodes: BTreeSet<NodeId> = [WEB, API, CACHE, EDGE]
        .iter()
        .flat_map(|job| cluster.nodes_running(job))
        .collect();
    // Nodes running both batch and service tasks: 40 drain with a far deadline
    // (their batch tasks finish), 40 with a deadline that passes first.
    let both: Vec<NodeId> = batch_nodes.intersection(&service_nodes).cloned().collect();
    let picked = sample(&mut cluster.rng, &both, 80);
    assert_eq!(picked.len(), 80, "enough nodes run both batch and services");
    let (far, near) = picked.split_at(40);
    let started = cluster.now;
    let far_deadline = started.plus(Duration::from_secs(600));
    let near_deadline = started.plus(Duration::from_secs(5));
    for (ids, deadline) in [(far, far_deadline), (near, near_deadline)] {
        for id in ids {
            cluster.apply(Command::SetNodeAvailability {
                id: id.clone(),
                availability: NodeAvailability::Drain,
                deadline: Some(deadline),
            });
        }
    }
    let batch_on = |cluster: &Cluster, ids: &[NodeId]| -> Vec<TaskId> {
        cluster
            .state
            .tasks_of_job(ETL)
            .filter(|t| t.is_live() && t.node.as_ref().is_some_and(|n| ids.contains(n)))
            .map(|t| t.id.clone())
            .collect()
    };
    let far_batch = batch_on(&cluster, far);
    let near_batch = batch_on(&cluster, near);
    cluster.converge("80 nodes draining");
    assert!(
        cluster.now < near_deadline,
        "the drain converged before its first deadline"
    );
    // Services and the global job left the draining nodes (check_settled);
    // every batch task there still runs.
    for id in far_batch.iter().chain(&near_batch) {
        let task = cluster.state.task(id).expect("task kept");
        assert!(
            task.is_live() && task.status.state == TaskState::Running,
            "seed {:#x}: batch task {id} on a draining node was {:?}/{:?} before the \
             deadline: {}",
            cluster.seed,
            task.desired,
            task.status.state,
            task.status.message
        );
    }

    // The near deadline passes: those batch tasks are stopped and run again
    // elsewhere; the far ones keep running.
    cluster.advance_to(near_deadline);
    cluster.converge("first drain deadline passed");
    for id in &near_batch {
        let task = cluster.state.task(id).expect("task kept");
        assert_eq!(
            (task.desired, task.status.state),
            (TaskDesired::Shutdown, TaskState::Shutdown),
            "seed {:#x}: batch task {id} past its node's drain deadline",
            cluster.seed
        );
        let Slot::Index(i) = task.slot else { continue };
        let again = cluster
            .state
            .tasks_of_job(ETL)
            .find(|t| t.is_live() && t.slot == Slot::Index(i));
        assert!(
            again.is_some_and(|t| t.node.as_ref().is_some_and(|n| !near.contains(n))),
            "seed {:#x}: batch slot {i} not run again off the drained nodes",
            cluster.seed
        );
    }
    for id in &far_batch {
        let task = cluster.state.task(id).expect("task kept");
        assert!(task.is_live(), "{id} stopped before its deadline");
    }

    // The far batch tasks run to their end and complete on the draining nodes.
    cluster.advance_to(T0.plus(Duration::from_millis(BATCH_RUN_MS + 5_000)));
    cluster.converge("batch tasks on draining nodes finished");
    for id in &far_batch {
        let task = cluster.state.task(id).expect("task kept");
        assert_eq!(
            (task.desired, task.status.state),
            (TaskDesired::Running, TaskState::Complete),
            "seed {:#x}: batch task {id} let finish on its draining node",
            cluster.seed
        );
    }
    assert_eq!(
        cluster.drained_batch_stops.len(),
        near_batch.len(),
        "only the batch tasks past their deadline were stopped"
    );
    // Nothing new went to a draining node.
    let drained: BTreeSet<&NodeId> = picked.iter().collect();
    for task in cluster.state.tasks().filter(|t| t.is_live()) {
        if let Some(node) = &task.node {
            assert!(
                !drained.contains(node),
                "seed {:#x}: {} live on draining node {node}",
                cluster.seed,
                task.id
            );
        }
    }
}

#[test]
fn sim_label_changes_move_tasks_whose_constraints_no_longer_hold() {
    let mut cluster = Cluster::new(0x5EED_0005);
    // Nodes whose zone the operator set, that run zone-constrained services.
    let zone_jobs: BTreeSet<NodeId> = [WEB, CACHE, EDGE]
        .iter()
        .flat_map(|job| cluster.nodes_running(job))
        .collect();
    let unzoned = pick_nodes(&mut cluster, 40, |_, n| {
        zone_jobs.contains(&n.id) && n.operator_labels.contains_key("zone")
    });
    // SSD nodes running `api`, which needs an SSD.
    let api_nodes = cluster.nodes_running(API);
    let unssd = pick_nodes(&mut cluster, 40, |_, n| api_nodes.contains(&n.id));
    // Nodes that get an SSD: the global job gains a task there, if the node
    // has room for it; on a node packed full its task waits, explained.
    let exporter = cluster.state.job(EXPORTER).expect("exporter").spec.clone();
    let new_ssd = pick_nodes(&mut cluster, 40, |state, n| {
        n.label("disk").is_none() && has_room(state, n, &exporter)
    });
    let full: Vec<NodeId> = cluster
        .state
        .nodes()
        .filter(|n| {
            // Not one of the nodes losing their zone: tasks leave those.
            n.label("disk").is_none()
                && !unzoned.contains(&n.id)
                && !has_room(&cluster.state, n, &exporter)
        })
        .map(|n| n.id.clone())
        .collect();
    let full_ssd = sample(&mut cluster.rng, &full, 5);
    // Removing an operator label the node does not have changes nothing: the
    // agent's zone stays in effect.
    let agent_zoned = pick_nodes(&mut cluster, 20, |_, n| {
        zone_jobs.contains(&n.id) && !n.operator_labels.contains_key("zone")
    });
    let affected: BTreeSet<&NodeId> = unzoned.iter().chain(&unssd).collect();
    let before = cluster.live_tasks();

    for id in &unzoned {
        cluster.set_labels(id, BTreeMap::new(), &["zone"]);
    }
    for id in &unssd {
        cluster.set_labels(id, BTreeMap::new(), &["disk"]);
    }
    for id in new_ssd.iter().chain(&full_ssd) {
        let set = BTreeMap::from([("disk".to_owned(), "ssd".to_owned())]);
        cluster.set_labels(id, set, &[]);
    }
    for id in &agent_zoned {
        let events = cluster.apply(Command::UpdateNodeLabels {
            id: id.clone(),
            set: BTreeMap::new(),
            remove: BTreeSet::from(["zone".to_owned()]),
        });
        assert!(events.is_empty(), "no operator zone on {id}: {events:?}");
        let node = cluster.state.node(id).expect("node");
        assert!(node.label("zone").is_some(), "{id} keeps its agent's zone");
    }
    cluster.converge("labels changed");

    // check_settled asserted that no live task breaks its constraints and that
    // the global job runs exactly on the SSD nodes. Tasks whose node kept what
    // they need did not move.
    for (id, node) in &before {
        let task = cluster.state.task(id).expect("task kept");
        let Some(node_id) = node else { continue };
        let spec = &cluster.state.job(&task.job).expect("job").spec;
        let still_fits = cluster
            .state
            .node(node_id)
            .is_some_and(|n| constraints_hold(&cluster.state, n, spec));
        let finished = task.job == ETL && task.status.state == TaskState::Complete;
        if still_fits && !finished {
            assert!(
                task.is_live(),
                "seed {:#x}: {id} on {node_id} (affected: {}) moved although its \
                 constraints still hold: {:?}/{:?}: {}",
                cluster.seed,
                affected.contains(node_id),
                task.desired,
                task.status.state,
                task.status.message
            );
        }
    }
    let exporter_nodes = cluster.nodes_running(EXPORTER);
    for id in &new_ssd {
        assert!(exporter_nodes.contains(id), "{EXPORTER} gained node {id}");
    }
    for id in &full_ssd {
        let slot = Slot::Node(id.clone());
        let waiting = cluster
            .state
            .tasks_of_job(EXPORTER)
            .find(|t| t.is_live() && t.slot == slot);
        assert!(
            waiting.is_some_and(|t| t.node.is_none() && !t.status.message.is_empty()),
            "seed {:#x}: {EXPORTER} on full node {id} waits with an explanation: {waiting:?}",
            cluster.seed
        );
    }
    for id in &unssd {
        assert!(!exporter_nodes.contains(id), "{EXPORTER} left node {id}");
    }
    let moved = before
        .keys()
        .filter(|id| cluster.state.task(id).is_some_and(|t| !t.is_live()))
        .count();
    assert!(moved > 0, "some tasks had to move");
}

#[test]
fn sim_scaling_keeps_slots_and_task_ids() {
    let mut cluster = Cluster::new(0x5EED_0006);
    let original = cluster.live_by_slot(WEB);
    assert_eq!(original.len(), WEB_REPLICAS as usize);
    let version = cluster.state.job(WEB).expect("web").version;

    cluster.apply(Command::ScaleJob {
        name: WEB.to_owned(),
        replicas: 4_800,
        now: cluster.now,
    });
    cluster.converge("web scaled up to 4800");
    let up = cluster.live_by_slot(WEB);
    assert_eq!(
        up.keys().copied().collect::<Vec<u32>>(),
        (0..4_800).collect::<Vec<u32>>(),
        "slots 0..4800"
    );
    for (slot, id) in &original {
        assert_eq!(&up[slot], id, "slot web.{slot} kept its task");
    }
    let job = cluster.state.job(WEB).expect("web");
    assert_eq!(job.version, version + 1);
    for task in cluster.state.tasks_of_job(WEB).filter(|t| t.is_live()) {
        assert_eq!(task.job_version, job.version, "{} carried forward", task.id);
    }

    cluster.apply(Command::ScaleJob {
        name: WEB.to_owned(),
        replicas: 2_500,
        now: cluster.now,
    });
    cluster.converge("web scaled down to 2500");
    let down = cluster.live_by_slot(WEB);
    assert_eq!(
        down.keys().copied().collect::<Vec<u32>>(),
        (0..2_500).collect::<Vec<u32>>(),
        "the highest slots went"
    );
    for (slot, id) in &down {
        assert_eq!(&original[slot], id, "slot web.{slot} kept its task");
    }
    for (slot, id) in up.range(2_500..) {
        let task = cluster
            .state
            .task(id)
            .expect("stopped task kept as history");
        assert_eq!(
            (task.desired, task.status.state),
            (TaskDesired::Shutdown, TaskState::Shutdown),
            "web.{slot} ({id}) scaled down"
        );
    }
}

#[test]
fn sim_is_deterministic_for_a_seed() {
    // Two clusters from one seed reach the same placements.
    let placements = |cluster: &Cluster| -> Vec<(TaskId, Option<NodeId>, BTreeMap<String, u16>)> {
        cluster
            .state
            .tasks()
            .map(|t| (t.id.clone(), t.node.clone(), t.ports.clone()))
            .collect()
    };
    let a = Cluster::new(0x5EED_0007);
    let b = Cluster::new(0x5EED_0007);
    assert!(placements(&a) == placements(&b), "same seed, same cluster");
}
