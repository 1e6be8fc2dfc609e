//! Test fixtures: specs, nodes, a small cluster driver over `State::apply`, and
//! a compact text rendering of plans for exact assertions.

use std::collections::BTreeSet;
use std::time::Duration;

use baton_spec::{
    DriverKind, JobKind, JobSpec, Resources, RestartCondition, RestartPolicy, SpecFormat, TaskSpec,
};
use baton_state::{
    Command, Event, ExitInfo, Node, NodeAvailability, NodeId, NodeState, Plan, State, Task,
    TaskDesired, TaskId, TaskReport, TaskState, Timestamp,
};

use crate::{PlanOutput, plan};

pub(crate) const MI: u64 = 1 << 20;
pub(crate) const GI: u64 = 1 << 30;
/// The clock at the start of every test: 2023-11-14T22:13:20.000Z.
pub(crate) const T0: Timestamp = Timestamp(1_700_000_000_000);

pub(crate) fn res(cpu_millis: u64, memory_bytes: u64) -> Resources {
    Resources {
        disk_bytes: 0,
        cpu_millis,
        memory_bytes,
    }
}

/// A ready, active node with the raw driver.
pub(crate) fn node(id: &str, cpu_millis: u64, memory_bytes: u64) -> Node {
    Node {
        drain_deadline: None,
        labels: Default::default(),
        operator_labels: Default::default(),
        id: NodeId(id.to_owned()),
        hostname: format!("{id}.local"),
        capacity: res(cpu_millis, memory_bytes),
        drivers: BTreeSet::from([DriverKind::Raw]),
        state: NodeState::Ready,
        availability: NodeAvailability::Active,
        registered_at: Timestamp(0),
        state_since: Timestamp(0),
        address: None,
        version: String::new(),
    }
}

/// Restart always, no attempt limit, 1s backoff doubling to 8s.
pub(crate) fn always() -> RestartPolicy {
    RestartPolicy {
        condition: RestartCondition::Always,
        max_attempts: 0,
        delay: Duration::from_secs(1),
        max_delay: Duration::from_secs(8),
    }
}

/// A job of `kind` running `sleep 3600` with 100m CPU and 64Mi.
pub(crate) fn spec(name: &str, kind: JobKind) -> JobSpec {
    JobSpec {
        placement: Default::default(),
        name: name.to_owned(),
        kind,
        task: TaskSpec {
            ports: Default::default(),
            image: None,
            capabilities: Vec::new(),
            pids_limit: baton_spec::DEFAULT_PIDS_LIMIT,
            secrets: Vec::new(),
            env_secrets: std::collections::BTreeMap::new(),
            configs: Vec::new(),
            driver: DriverKind::Raw,
            command: vec!["sleep".to_owned(), "3600".to_owned()],
            env: Default::default(),
            workdir: None,
            user: None,
            resources: res(100, 64 * MI),
            kill_timeout: Duration::from_secs(10),
        },
        restart: always(),
    }
}

pub(crate) fn service(name: &str, replicas: u32) -> JobSpec {
    spec(name, JobKind::Service { replicas })
}

pub(crate) fn batch(name: &str, completions: u32, parallelism: u32) -> JobSpec {
    let mut job = spec(
        name,
        JobKind::Batch {
            completions,
            parallelism,
        },
    );
    job.restart.condition = RestartCondition::OnFailure;
    job
}

pub(crate) fn global(name: &str) -> JobSpec {
    spec(name, JobKind::Global)
}

/// A state plus a clock, driven through `State::apply` like the manager would.
#[derive(Debug)]
pub(crate) struct Sim {
    pub(crate) state: State,
    pub(crate) now: Timestamp,
    pub(crate) seed: u64,
}

impl Sim {
    pub(crate) fn new() -> Sim {
        Sim {
            state: State::default(),
            now: T0,
            seed: 1,
        }
    }

    pub(crate) fn apply(&mut self, cmd: Command) -> Vec<Event> {
        self.state.apply(cmd).expect("command applies")
    }

    pub(crate) fn add_node(&mut self, node: Node) {
        let now = self.now;
        self.apply(Command::RegisterNode { node, now });
    }

    pub(crate) fn put(&mut self, spec: JobSpec) {
        let now = self.now;
        self.apply(Command::PutJob {
            spec,
            format: SpecFormat::Yaml,
            source: String::new(),
            now,
        });
    }

    pub(crate) fn stop_job(&mut self, name: &str) {
        let now = self.now;
        self.apply(Command::StopJob {
            name: name.to_owned(),
            now,
        });
    }

    pub(crate) fn node_down(&mut self, id: &str) {
        let now = self.now;
        self.apply(Command::NodeDown {
            id: NodeId(id.to_owned()),
            now,
        });
    }

    pub(crate) fn advance(&mut self, ms: u64) {
        self.now = Timestamp(self.now.0 + ms);
    }

    /// One pass, not applied. Each pass draws a new seed, as the manager does.
    pub(crate) fn pass(&mut self) -> PlanOutput {
        self.seed += 1;
        plan(&self.state, self.now, self.seed)
    }

    pub(crate) fn apply_plan(&mut self, plan: Plan) {
        let now = self.now;
        let events = self.apply(Command::ApplyPlan { plan, now });
        let ignored: Vec<&Event> = events
            .iter()
            .filter(|e| matches!(e, Event::Ignored { .. }))
            .collect();
        assert!(ignored.is_empty(), "plan items ignored: {ignored:?}");
    }

    /// One pass, applied.
    pub(crate) fn step(&mut self) -> PlanOutput {
        let out = self.pass();
        self.apply_plan(out.plan.clone());
        out
    }

    /// A report from the task's own node.
    pub(crate) fn report(&mut self, task: &TaskId, state: TaskState, exit: Option<ExitInfo>) {
        let node = self
            .state
            .task(task)
            .and_then(|t| t.node.clone())
            .expect("task on a node");
        let now = self.now;
        self.apply(Command::ReportTasks {
            node,
            reports: vec![TaskReport {
                task: task.clone(),
                state,
                message: String::new(),
                exit,
                pid: None,
            }],
            now,
        });
    }

    /// Every agent starts what it was assigned and finishes what it was told to stop.
    pub(crate) fn agents_ack(&mut self) {
        for (id, state) in self.agent_work() {
            self.report(&id, state, None);
        }
    }

    /// What the agents would report next: `running` for tasks they were
    /// assigned, `shutdown` for tasks they were told to stop.
    pub(crate) fn agent_work(&self) -> Vec<(TaskId, TaskState)> {
        self.state
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
            .collect()
    }

    /// Passes and agent acks until a pass is empty.
    pub(crate) fn converge(&mut self) {
        for _ in 0..100 {
            let out = self.step();
            self.agents_ack();
            if out.plan.is_empty() {
                return;
            }
        }
        panic!("no convergence in 100 passes");
    }

    /// Adds a task as is (through a plan, so apply's checks hold).
    pub(crate) fn inject(&mut self, task: Task) {
        let plan = Plan {
            create: vec![task],
            ..Plan::default()
        };
        self.apply_plan(plan);
    }

    /// Changes a node's availability (a drain without a deadline).
    pub(crate) fn set_availability(&mut self, id: &str, availability: NodeAvailability) {
        self.apply(Command::SetNodeAvailability {
            id: NodeId(id.to_owned()),
            availability,
            deadline: None,
        });
    }

    /// The job's tasks that are meant to run and have not finished.
    pub(crate) fn live(&self, job: &str) -> Vec<&Task> {
        self.state
            .tasks_of_job(job)
            .filter(|t| t.is_live())
            .collect()
    }

    /// The live task of a slot (panics unless exactly one).
    pub(crate) fn live_in(&self, job: &str, slot: &baton_state::Slot) -> TaskId {
        let ids: Vec<TaskId> = self
            .live(job)
            .into_iter()
            .filter(|t| &t.slot == slot)
            .map(|t| t.id.clone())
            .collect();
        assert_eq!(ids.len(), 1, "live tasks of {job}.{slot}: {ids:?}");
        ids[0].clone()
    }
}

/// A task of `job` as the reconciler would make it, in `state`, with `node`.
pub(crate) fn task(
    id: &str,
    job: &str,
    job_version: u64,
    slot: baton_state::Slot,
    state: TaskState,
    node: Option<&str>,
) -> Task {
    Task {
        ports: Default::default(),
        id: TaskId(id.to_owned()),
        job: job.to_owned(),
        job_version,
        slot,
        restarts: 0,
        node: node.map(|n| NodeId(n.to_owned())),
        resources: res(100, 64 * MI),
        driver: DriverKind::Raw,
        desired: TaskDesired::Running,
        status: baton_state::TaskStatus {
            state,
            since: T0,
            message: String::new(),
            exit: None,
            pid: None,
            started_at: None,
            finished_at: state.is_terminal().then_some(T0),
        },
        not_before: None,
        created_at: T0,
    }
}

/// `web.0` for `web.0.0123456789ab`.
pub(crate) fn short(id: &TaskId) -> &str {
    id.0.rsplit_once('.')
        .map_or(id.0.as_str(), |(head, _)| head)
}

fn describe(state: &State, id: &TaskId) -> String {
    match state.task(id) {
        Some(t) => format!("{} v{} r{}", short(id), t.job_version, t.restarts),
        None => format!("{id} (unknown)"),
    }
}

/// One line per plan item, ids shortened to `job.slot` plus version and restarts.
pub(crate) fn render(state: &State, plan: &Plan) -> Vec<String> {
    let mut lines = Vec::new();
    for t in &plan.create {
        let node = t.node.as_ref().map_or("-".to_owned(), |n| n.0.clone());
        let mut line = format!(
            "create {} v{} r{} on {node} {}",
            short(&t.id),
            t.job_version,
            t.restarts,
            t.status.state.as_str()
        );
        if let Some(at) = t.not_before {
            line.push_str(&format!(" not_before=+{}ms", at.millis_since(T0)));
        }
        if !t.status.message.is_empty() {
            line.push_str(&format!(": {}", t.status.message));
        }
        lines.push(line);
    }
    for p in &plan.place {
        lines.push(format!("place {} on {}", describe(state, &p.task), p.node));
    }
    for s in &plan.stop {
        lines.push(format!("stop {}: {}", describe(state, &s.task), s.reason));
    }
    for u in &plan.unplaced {
        let who = if state.task(&u.task).is_some() {
            describe(state, &u.task)
        } else {
            format!("{} (new)", short(&u.task))
        };
        lines.push(format!("unplaced {who}: {}", u.reason));
    }
    for id in &plan.remove {
        lines.push(format!("remove {}", describe(state, id)));
    }
    lines
}
