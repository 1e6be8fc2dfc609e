//! Tests of `State::apply`, the indexes it maintains, persistence and job summaries.

use std::collections::BTreeSet;
use std::time::Duration;

use baton_spec::{DriverKind, JobSpec, RestartCondition, RestartPolicy, SpecFormat, TaskSpec};

use super::*;
use crate::command::PlanPlacement;
use crate::command::PlanStop;
use crate::command::PlanUnplaced;
use crate::objects::{ExitInfo, TaskStatus};

const MI: u64 = 1 << 20;
const T0: Timestamp = Timestamp(1_000);
const T1: Timestamp = Timestamp(2_000);

fn res(cpu_millis: u64, memory_bytes: u64) -> Resources {
    Resources {
        disk_bytes: 0,
        cpu_millis,
        memory_bytes,
    }
}

fn spec(name: &str, kind: JobKind) -> JobSpec {
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
            command: vec!["sleep".to_owned(), "60".to_owned()],
            env: Default::default(),
            workdir: None,
            user: None,
            resources: res(100, 64 * MI),
            kill_timeout: Duration::from_secs(5),
        },
        restart: RestartPolicy {
            condition: RestartCondition::OnFailure,
            max_attempts: 1,
            delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(4),
        },
    }
}

fn service(name: &str, replicas: u32) -> JobSpec {
    spec(name, JobKind::Service { replicas })
}

fn node(id: &str) -> Node {
    Node {
        drain_deadline: None,
        labels: Default::default(),
        operator_labels: Default::default(),
        id: NodeId(id.to_owned()),
        hostname: id.to_owned(),
        capacity: res(1000, 1024 * MI),
        drivers: BTreeSet::from([DriverKind::Raw]),
        state: NodeState::Down,
        availability: NodeAvailability::Active,
        registered_at: Timestamp(0),
        state_since: Timestamp(0),
        address: None,
        version: String::new(),
    }
}

fn task(id: &str, job: &str, version: u64, slot: u32, node: Option<&str>) -> Task {
    Task {
        ports: Default::default(),
        id: TaskId(id.to_owned()),
        job: job.to_owned(),
        job_version: version,
        slot: Slot::Index(slot),
        restarts: 0,
        node: node.map(|n| NodeId(n.to_owned())),
        resources: res(100, 64 * MI),
        driver: DriverKind::Raw,
        desired: TaskDesired::Running,
        status: TaskStatus {
            state: if node.is_some() {
                TaskState::Assigned
            } else {
                TaskState::Pending
            },
            since: T0,
            message: String::new(),
            exit: None,
            pid: None,
            started_at: None,
            finished_at: None,
        },
        not_before: None,
        created_at: T0,
    }
}

fn id(s: &str) -> TaskId {
    TaskId(s.to_owned())
}

fn nid(s: &str) -> NodeId {
    NodeId(s.to_owned())
}

fn put(state: &mut State, spec: JobSpec) -> Vec<Event> {
    state
        .apply(Command::PutJob {
            spec,
            format: SpecFormat::Yaml,
            source: "bytes".to_owned(),
            now: T0,
        })
        .expect("put job")
}

fn register(state: &mut State, node: Node) {
    state
        .apply(Command::RegisterNode { node, now: T0 })
        .expect("register");
}

fn apply_plan(state: &mut State, plan: Plan) -> Vec<Event> {
    state
        .apply(Command::ApplyPlan { plan, now: T1 })
        .expect("apply plan")
}

fn create(state: &mut State, tasks: Vec<Task>) -> Vec<Event> {
    apply_plan(
        state,
        Plan {
            create: tasks,
            ..Plan::default()
        },
    )
}

fn report(state: &mut State, node: &str, task: &str, to: TaskState) -> Vec<Event> {
    state
        .apply(Command::ReportTasks {
            node: nid(node),
            reports: vec![TaskReport {
                task: id(task),
                state: to,
                message: format!("now {}", to.as_str()),
                exit: to.is_terminal().then_some(ExitInfo {
                    code: Some(if to == TaskState::Complete { 0 } else { 1 }),
                    signal: None,
                    oom_killed: false,
                }),
                pid: (to == TaskState::Running).then_some(42),
            }],
            now: T1,
        })
        .expect("report")
}

/// One service `web` (version 1) with two tasks on `n1`.
fn running_web() -> State {
    let mut state = State::default();
    register(&mut state, node("n1"));
    put(&mut state, service("web", 2));
    create(
        &mut state,
        vec![
            task("web.0.a", "web", 1, 0, Some("n1")),
            task("web.1.b", "web", 1, 1, Some("n1")),
        ],
    );
    state
}

#[test]
fn empty_state_has_nothing() {
    let state = State::default();
    assert_eq!(state.jobs().count(), 0);
    assert_eq!(state.n_tasks(), 0);
}

#[test]
fn put_job_new_starts_at_version_1() {
    let mut state = State::default();
    let events = put(&mut state, service("web", 2));
    assert_eq!(
        events,
        vec![Event::JobCreated {
            name: "web".to_owned(),
            version: 1
        }]
    );
    let job = state.job("web").expect("job");
    assert_eq!(
        (job.version, job.desired, job.created_at, job.updated_at),
        (1, JobDesired::Run, T0, T0)
    );
    assert_eq!(job.source, "bytes");
}

#[test]
fn put_job_unchanged_keeps_the_version() {
    let mut state = State::default();
    put(&mut state, service("web", 2));
    let events = put(&mut state, service("web", 2));
    assert_eq!(
        events,
        vec![Event::JobUnchanged {
            name: "web".to_owned(),
            version: 1
        }]
    );
}

#[test]
fn put_job_with_a_new_task_spec_leaves_tasks_on_the_old_version() {
    let mut state = running_web();
    let mut changed = service("web", 2);
    changed.task.command.push("--verbose".to_owned());
    let events = put(&mut state, changed);
    assert_eq!(
        events,
        vec![Event::JobUpdated {
            name: "web".to_owned(),
            version: 2
        }]
    );
    let versions: Vec<u64> = state.tasks().map(|t| t.job_version).collect();
    assert_eq!(versions, vec![1, 1]);
}

#[test]
fn put_job_with_new_counts_carries_tasks_forward() {
    let mut state = running_web();
    report(&mut state, "n1", "web.1.b", TaskState::Failed);
    put(&mut state, service("web", 5));
    let versions: Vec<u64> = state.tasks().map(|t| t.job_version).collect();
    assert_eq!(versions, vec![2, 2], "running and finished tasks alike");
    // A job type change is not a count change.
    put(&mut state, spec("web", JobKind::Global));
    let versions: Vec<u64> = state.tasks().map(|t| t.job_version).collect();
    assert_eq!(versions, vec![2, 2]);
}

#[test]
fn stop_job_bumps_the_version_once() {
    let mut state = running_web();
    let events = state
        .apply(Command::StopJob {
            name: "web".to_owned(),
            now: T1,
        })
        .expect("stop");
    assert_eq!(
        events,
        vec![Event::JobStopped {
            name: "web".to_owned(),
            version: 2
        }]
    );
    let job = state.job("web").expect("job");
    assert_eq!((job.desired, job.updated_at), (JobDesired::Stop, T1));
    let again = state
        .apply(Command::StopJob {
            name: "web".to_owned(),
            now: T1,
        })
        .expect("stop again");
    assert_eq!(
        again,
        vec![Event::JobUnchanged {
            name: "web".to_owned(),
            version: 2
        }]
    );
    // Submitting the same spec runs it again, as a new version and a new run:
    // the stopped version's tasks stay behind.
    let events = put(&mut state, service("web", 2));
    assert_eq!(
        events,
        vec![Event::JobUpdated {
            name: "web".to_owned(),
            version: 3
        }]
    );
    assert_eq!(state.job("web").map(|j| j.desired), Some(JobDesired::Run));
    let versions: Vec<u64> = state.tasks().map(|t| t.job_version).collect();
    assert_eq!(versions, vec![1, 1]);
}

#[test]
fn stop_of_an_unknown_job_is_an_error() {
    let mut state = State::default();
    let err = state
        .apply(Command::StopJob {
            name: "nope".to_owned(),
            now: T0,
        })
        .expect_err("unknown job");
    assert_eq!(
        err,
        ApplyError::JobNotFound {
            name: "nope".to_owned()
        }
    );
    assert_eq!(err.to_string(), "job \"nope\" not found");
}

#[test]
fn register_node_is_ready_and_keeps_first_registration_and_availability() {
    let mut state = State::default();
    let mut paused = node("n1");
    paused.availability = NodeAvailability::Pause;
    let events = state
        .apply(Command::RegisterNode {
            node: paused,
            now: T0,
        })
        .expect("register");
    assert_eq!(
        events,
        vec![Event::NodeStateChanged {
            id: nid("n1"),
            state: NodeState::Ready
        }]
    );
    // Registering again (an agent restart) keeps what the cluster decided.
    let mut again = node("n1");
    again.hostname = "renamed".to_owned();
    state
        .apply(Command::RegisterNode {
            node: again,
            now: T1,
        })
        .expect("register again");
    let n = state.node(&nid("n1")).expect("node");
    assert_eq!(
        (
            n.state,
            n.availability,
            n.registered_at,
            n.state_since,
            n.hostname.as_str()
        ),
        (NodeState::Ready, NodeAvailability::Pause, T0, T1, "renamed")
    );
}

#[test]
fn node_down_marks_tasks_lost_and_releases_reservations() {
    let mut state = running_web();
    assert_eq!(state.reserved(&nid("n1")), res(200, 128 * MI));
    let events = state
        .apply(Command::NodeDown {
            id: nid("n1"),
            now: T1,
        })
        .expect("node down");
    assert_eq!(
        events,
        vec![
            Event::NodeStateChanged {
                id: nid("n1"),
                state: NodeState::Down
            },
            Event::TaskStateChanged {
                id: id("web.0.a"),
                state: TaskState::Lost
            },
            Event::TaskStateChanged {
                id: id("web.1.b"),
                state: TaskState::Lost
            },
        ]
    );
    assert_eq!(state.reserved(&nid("n1")), Resources::default());
    let lost = state.task(&id("web.0.a")).expect("task");
    assert_eq!(lost.status.message, "node down");
    assert_eq!(lost.status.finished_at, Some(T1));
    // Down again: nothing more happens.
    let again = state
        .apply(Command::NodeDown {
            id: nid("n1"),
            now: T1,
        })
        .expect("node down again");
    assert_eq!(again, vec![]);
    assert_eq!(
        state.apply(Command::NodeDown {
            id: nid("n9"),
            now: T1
        }),
        Err(ApplyError::NodeNotFound { id: nid("n9") })
    );
}

#[test]
fn apply_plan_creates_places_stops_and_removes() {
    let mut state = running_web();
    let mut done = task("web.1.old", "web", 1, 1, None);
    done.status.state = TaskState::Failed;
    create(&mut state, vec![task("web.0.p", "web", 1, 0, None), done]);
    let events = apply_plan(
        &mut state,
        Plan {
            create: vec![task("web.1.c", "web", 1, 1, Some("n1"))],
            place: vec![PlanPlacement {
                ports: Default::default(),
                task: id("web.0.p"),
                node: nid("n1"),
            }],
            stop: vec![PlanStop {
                preempted_by: None,
                task: id("web.0.a"),
                reason: "scaled down".to_owned(),
            }],
            unplaced: vec![],
            remove: vec![id("web.1.old")],
        },
    );
    assert_eq!(
        events,
        vec![
            Event::TaskCreated { id: id("web.1.c") },
            Event::TaskPlaced {
                id: id("web.1.c"),
                node: nid("n1")
            },
            Event::TaskPlaced {
                id: id("web.0.p"),
                node: nid("n1")
            },
            Event::TaskStopping { id: id("web.0.a") },
            Event::TaskRemoved {
                id: id("web.1.old")
            },
        ]
    );
    let placed = state.task(&id("web.0.p")).expect("task");
    assert_eq!(
        (placed.status.state, placed.status.since),
        (TaskState::Assigned, T1)
    );
    let stopping = state.task(&id("web.0.a")).expect("task");
    assert_eq!(
        (
            stopping.desired,
            stopping.status.state,
            stopping.status.message.as_str()
        ),
        (TaskDesired::Shutdown, TaskState::Assigned, "scaled down")
    );
    // A stopping task still holds its resources until its node reports it gone.
    assert_eq!(state.reserved(&nid("n1")), res(400, 256 * MI));
    assert!(state.task(&id("web.1.old")).is_none());
    let on_node: Vec<&str> = state
        .tasks_of_node(&nid("n1"))
        .map(|t| t.id.0.as_str())
        .collect();
    assert_eq!(on_node, vec!["web.0.a", "web.0.p", "web.1.b", "web.1.c"]);
}

#[test]
fn apply_plan_ignores_stale_items() {
    let mut state = running_web();
    let mut paused = node("n2");
    paused.availability = NodeAvailability::Pause;
    register(&mut state, paused);
    let mut huge = task("web.1.huge", "web", 1, 1, Some("n1"));
    huge.resources = res(5000, MI);
    let events = apply_plan(
        &mut state,
        Plan {
            create: vec![
                task("web.0.old-version", "web", 7, 0, None),
                task("nope.0.x", "nope", 1, 0, None),
                task("web.0.a", "web", 1, 0, None),
                huge,
                task("web.1.paused", "web", 1, 1, Some("n2")),
            ],
            place: vec![PlanPlacement {
                ports: Default::default(),
                task: id("web.1.b"),
                node: nid("n1"),
            }],
            stop: vec![PlanStop {
                preempted_by: None,
                task: id("unknown"),
                reason: "x".to_owned(),
            }],
            unplaced: vec![],
            remove: vec![id("web.0.a")],
        },
    );
    let stale = |what: &str, task: &str| Event::Ignored {
        reason: format!("stale plan: cannot {what} task {task}"),
    };
    assert_eq!(
        events,
        vec![
            stale("create", "web.0.old-version"),
            stale("create", "nope.0.x"),
            stale("create", "web.0.a"),
            stale("create", "web.1.huge"),
            stale("create", "web.1.paused"),
            stale("place", "web.1.b"),
        ]
    );
    // The active task named in `remove` is kept.
    assert!(state.task(&id("web.0.a")).is_some());
    assert_eq!(state.n_tasks(), 2);
    // A stopped job takes no new tasks.
    state
        .apply(Command::StopJob {
            name: "web".to_owned(),
            now: T1,
        })
        .expect("stop");
    let events = create(&mut state, vec![task("web.0.late", "web", 2, 0, None)]);
    assert_eq!(events, vec![stale("create", "web.0.late")]);
}

#[test]
fn stopping_an_unplaced_task_shuts_it_down_at_once() {
    let mut state = running_web();
    create(&mut state, vec![task("web.0.p", "web", 1, 0, None)]);
    let events = apply_plan(
        &mut state,
        Plan {
            stop: vec![PlanStop {
                preempted_by: None,
                task: id("web.0.p"),
                reason: "job stopped".to_owned(),
            }],
            ..Plan::default()
        },
    );
    assert_eq!(
        events,
        vec![
            Event::TaskStopping { id: id("web.0.p") },
            Event::TaskStateChanged {
                id: id("web.0.p"),
                state: TaskState::Shutdown
            },
        ]
    );
    // Stopping it again changes nothing.
    let again = apply_plan(
        &mut state,
        Plan {
            stop: vec![PlanStop {
                preempted_by: None,
                task: id("web.0.p"),
                reason: "job stopped".to_owned(),
            }],
            ..Plan::default()
        },
    );
    assert_eq!(again, vec![]);
}

#[test]
fn unplaced_sets_the_message_of_pending_tasks_only() {
    let mut state = running_web();
    create(&mut state, vec![task("web.0.p", "web", 1, 0, None)]);
    let events = apply_plan(
        &mut state,
        Plan {
            unplaced: vec![
                PlanUnplaced {
                    task: id("web.0.p"),
                    reason: "no node fits".to_owned(),
                },
                PlanUnplaced {
                    task: id("web.0.a"),
                    reason: "no node fits".to_owned(),
                },
            ],
            ..Plan::default()
        },
    );
    assert_eq!(events, vec![]);
    let msg = |s: &State, t: &str| s.task(&id(t)).map(|t| t.status.message.clone());
    assert_eq!(msg(&state, "web.0.p").as_deref(), Some("no node fits"));
    assert_eq!(msg(&state, "web.0.a").as_deref(), Some(""));
}

#[test]
fn reports_move_task_state_forward_only() {
    let mut state = running_web();
    let events = report(&mut state, "n1", "web.0.a", TaskState::Running);
    assert_eq!(
        events,
        vec![Event::TaskStateChanged {
            id: id("web.0.a"),
            state: TaskState::Running
        }]
    );
    let t = state.task(&id("web.0.a")).expect("task");
    assert_eq!(
        (t.status.started_at, t.status.pid, t.status.message.as_str()),
        (Some(T1), Some(42), "now running")
    );
    // Backwards: ignored.
    assert_eq!(
        report(&mut state, "n1", "web.0.a", TaskState::Starting),
        vec![]
    );
    assert_eq!(
        state.task(&id("web.0.a")).map(|t| t.status.state),
        Some(TaskState::Running)
    );
    // Terminal: recorded with its exit, resources released.
    report(&mut state, "n1", "web.0.a", TaskState::Failed);
    let t = state.task(&id("web.0.a")).expect("task");
    assert_eq!(
        (t.status.state, t.status.finished_at, t.status.pid),
        (TaskState::Failed, Some(T1), None)
    );
    assert_eq!(
        t.status.exit,
        Some(ExitInfo {
            code: Some(1),
            signal: None,
            oom_killed: false
        })
    );
    assert_eq!(state.reserved(&nid("n1")), res(100, 64 * MI));
    // Out of a terminal state: ignored.
    assert_eq!(
        report(&mut state, "n1", "web.0.a", TaskState::Running),
        vec![]
    );
    assert_eq!(
        report(&mut state, "n1", "web.0.a", TaskState::Complete),
        vec![]
    );
}

#[test]
fn reports_for_another_nodes_task_are_rejected() {
    let mut state = running_web();
    register(&mut state, node("n2"));
    let events = report(&mut state, "n2", "web.0.a", TaskState::Failed);
    assert_eq!(
        events,
        vec![Event::Ignored {
            reason: "node n2 reported task web.0.a it does not run".to_owned()
        }]
    );
    assert_eq!(
        state.task(&id("web.0.a")).map(|t| t.status.state),
        Some(TaskState::Assigned)
    );
    // A task no node runs yet cannot be reported either.
    create(&mut state, vec![task("web.0.p", "web", 1, 0, None)]);
    let events = report(&mut state, "n1", "web.0.p", TaskState::Running);
    assert_eq!(
        events,
        vec![Event::Ignored {
            reason: "node n1 reported task web.0.p it does not run".to_owned()
        }]
    );
}

#[test]
fn serde_round_trip_rebuilds_indexes() {
    let mut state = running_web();
    report(&mut state, "n1", "web.1.b", TaskState::Complete);
    create(&mut state, vec![task("web.0.p", "web", 1, 0, None)]);
    let json = serde_json::to_string(&state).expect("serialise");
    let loaded: State = serde_json::from_str(&json).expect("load");
    assert_eq!(serde_json::to_string(&loaded).expect("serialise"), json);
    assert_eq!(loaded.reserved(&nid("n1")), state.reserved(&nid("n1")));
    assert_eq!(loaded.reserved(&nid("n1")), res(100, 64 * MI));
    let ids =
        |s: &State| -> Vec<String> { s.tasks_of_job("web").map(|t| t.id.0.clone()).collect() };
    assert_eq!(ids(&loaded), vec!["web.0.a", "web.0.p", "web.1.b"]);
    let on_node: Vec<&str> = loaded
        .tasks_of_node(&nid("n1"))
        .map(|t| t.id.0.as_str())
        .collect();
    assert_eq!(on_node, vec!["web.0.a", "web.1.b"]);
    // The persisted form holds only the primary tables.
    let value: serde_json::Value = serde_json::from_str(&json).expect("json");
    let keys: Vec<&String> = value.as_object().expect("object").keys().collect();
    assert_eq!(
        keys,
        vec![
            "cluster", "configs", "jobs", "members", "nodes", "revoked", "secrets", "tasks"
        ]
    );
}

#[test]
fn latest_by_slot_prefers_the_live_replacement_made_in_the_same_millisecond() {
    let mut state = running_web();
    state
        .apply(Command::NodeDown {
            id: nid("n1"),
            now: T0,
        })
        .expect("down");
    register(&mut state, node("n2"));
    // Same version, restarts and created_at as the lost tasks; one replacement id
    // sorts before the lost task's, the other after.
    create(
        &mut state,
        vec![
            task("web.0.0", "web", 1, 0, Some("n2")),
            task("web.1.z", "web", 1, 1, Some("n2")),
        ],
    );
    let latest = state.latest_by_slot("web");
    assert_eq!(
        latest.get(&Slot::Index(0)).map(|t| t.id.0.as_str()),
        Some("web.0.0")
    );
    assert_eq!(
        latest.get(&Slot::Index(1)).map(|t| t.id.0.as_str()),
        Some("web.1.z")
    );
}

fn summary(state: &State, job: &str) -> JobSummary {
    state.job_summary(state.job(job).expect("job"))
}

#[test]
fn job_summary_phases() {
    // Service: pending until every replica runs.
    let mut state = running_web();
    let s = summary(&state, "web");
    assert_eq!(
        (s.phase, s.desired, s.running, s.pending),
        (JobPhase::Pending, 2, 0, 2)
    );
    report(&mut state, "n1", "web.0.a", TaskState::Running);
    report(&mut state, "n1", "web.1.b", TaskState::Running);
    assert_eq!(summary(&state, "web").phase, JobPhase::Running);

    // A slot that gave up (on-failure, max_attempts 1, already restarted once).
    let mut retried = task("web.0.r", "web", 1, 0, Some("n1"));
    retried.restarts = 1;
    create(&mut state, vec![retried]);
    report(&mut state, "n1", "web.0.a", TaskState::Failed);
    report(&mut state, "n1", "web.0.r", TaskState::Failed);
    let s = summary(&state, "web");
    assert_eq!(s.phase, JobPhase::Failed);
    assert_eq!(
        s.failures,
        vec![SlotFailure {
            slot: Slot::Index(0),
            task: id("web.0.r"),
            restarts: 1,
            exit: Some(ExitInfo {
                code: Some(1),
                signal: None,
                oom_killed: false
            }),
            message: "now failed".to_owned(),
        }]
    );

    state
        .apply(Command::StopJob {
            name: "web".to_owned(),
            now: T1,
        })
        .expect("stop");
    assert_eq!(summary(&state, "web").phase, JobPhase::Stopped);

    // Batch: running while in progress, complete once every completion exited 0.
    put(
        &mut state,
        spec(
            "etl",
            JobKind::Batch {
                completions: 2,
                parallelism: 2,
            },
        ),
    );
    assert_eq!(summary(&state, "etl").phase, JobPhase::Pending);
    create(
        &mut state,
        vec![
            task("etl.0.a", "etl", 1, 0, Some("n1")),
            task("etl.1.b", "etl", 1, 1, Some("n1")),
        ],
    );
    report(&mut state, "n1", "etl.0.a", TaskState::Running);
    assert_eq!(summary(&state, "etl").phase, JobPhase::Running);
    report(&mut state, "n1", "etl.0.a", TaskState::Complete);
    report(&mut state, "n1", "etl.1.b", TaskState::Complete);
    let s = summary(&state, "etl");
    assert_eq!(
        (s.phase, s.completed, s.desired),
        (JobPhase::Complete, 2, 2)
    );

    // Global: one slot per eligible node.
    put(&mut state, spec("agent", JobKind::Global));
    assert_eq!(summary(&state, "agent").desired, 1);
}

#[test]
fn a_plan_splits_into_batches_that_keep_every_item_once_in_order() {
    use crate::command::{PlanStop, PlanUnplaced};
    let stop = |i: usize| PlanStop {
        task: TaskId(format!("s{i}")),
        reason: String::new(),
        preempted_by: None,
    };
    let unplaced = |i: usize| PlanUnplaced {
        task: TaskId(format!("u{i}")),
        reason: String::new(),
    };
    let plan = Plan {
        stop: (0..5).map(stop).collect(),
        unplaced: (0..4).map(unplaced).collect(),
        remove: vec![TaskId("r0".into())],
        ..Plan::default()
    };
    assert_eq!(plan.len(), 10);
    let batches = plan.clone().into_batches(4);
    assert_eq!(
        batches.iter().map(Plan::len).collect::<Vec<_>>(),
        vec![4, 4, 2]
    );
    let stops: Vec<PlanStop> = batches.iter().flat_map(|b| b.stop.clone()).collect();
    let unplaced: Vec<PlanUnplaced> = batches.iter().flat_map(|b| b.unplaced.clone()).collect();
    assert_eq!(stops, plan.stop);
    assert_eq!(unplaced, plan.unplaced);
    assert_eq!(batches[2].remove, plan.remove);
    assert_eq!(plan.clone().into_batches(10), vec![plan.clone()]);
    assert_eq!(
        plan.into_batches(0).len(),
        10,
        "at least one item per batch"
    );
}

fn with_port(mut task: Task, port: u16) -> Task {
    task.ports.insert("http".to_owned(), port);
    task
}

#[test]
fn a_host_port_is_held_by_one_active_task_per_node() {
    let mut state = State::default();
    register(&mut state, node("n1"));
    put(&mut state, service("web", 3));
    let events = create(
        &mut state,
        vec![
            with_port(task("web.0.a", "web", 1, 0, Some("n1")), 8080),
            with_port(task("web.1.b", "web", 1, 1, Some("n1")), 8080),
        ],
    );
    assert!(
        matches!(
            &events[..],
            [
                Event::TaskCreated { .. },
                Event::TaskPlaced { .. },
                Event::Ignored { .. }
            ]
        ),
        "the second task on port 8080 is refused: {events:?}"
    );
    assert_eq!(
        state
            .ports_in_use(&nid("n1"))
            .map(|p| p.iter().copied().collect::<Vec<_>>()),
        Some(vec![8080])
    );
    // A pending task placed with the port in use is refused; once the holder
    // ends, the port is free again.
    create(&mut state, vec![task("web.2.c", "web", 1, 2, None)]);
    let placement = |port: u16| PlanPlacement {
        task: id("web.2.c"),
        node: nid("n1"),
        ports: [("http".to_owned(), port)].into(),
    };
    let events = apply_plan(
        &mut state,
        Plan {
            place: vec![placement(8080)],
            ..Plan::default()
        },
    );
    assert!(matches!(&events[..], [Event::Ignored { .. }]), "{events:?}");
    report(&mut state, "n1", "web.0.a", TaskState::Failed);
    assert!(state.ports_in_use(&nid("n1")).is_none());
    let events = apply_plan(
        &mut state,
        Plan {
            place: vec![placement(8080)],
            ..Plan::default()
        },
    );
    assert!(
        matches!(&events[..], [Event::TaskPlaced { .. }]),
        "{events:?}"
    );
    assert_eq!(
        state.task(&id("web.2.c")).map(|t| t.ports.clone()),
        Some([("http".to_owned(), 8080)].into())
    );
}

#[test]
fn operator_labels_win_and_survive_the_agent_registering_again() {
    let mut state = State::default();
    let mut n1 = node("n1");
    n1.labels = [("zone".to_owned(), "a".to_owned())].into();
    register(&mut state, n1.clone());
    let events = state
        .apply(Command::UpdateNodeLabels {
            id: nid("n1"),
            set: [
                ("zone".to_owned(), "b".to_owned()),
                ("ssd".to_owned(), "yes".to_owned()),
            ]
            .into(),
            remove: BTreeSet::new(),
        })
        .expect("labels");
    assert_eq!(events, vec![Event::NodeLabelsChanged { id: nid("n1") }]);
    register(&mut state, n1);
    let node = state.node(&nid("n1")).expect("node");
    assert_eq!(node.label("zone"), Some("b"));
    assert_eq!(node.label("ssd"), Some("yes"));
    let events = state
        .apply(Command::UpdateNodeLabels {
            id: nid("n1"),
            set: Default::default(),
            remove: ["zone".to_owned()].into(),
        })
        .expect("labels");
    assert_eq!(events.len(), 1);
    assert_eq!(
        state.node(&nid("n1")).and_then(|n| n.label("zone")),
        Some("a"),
        "the agent's again"
    );
}

#[test]
fn scale_changes_only_a_service_count_and_keeps_its_tasks() {
    let mut state = running_web();
    let events = state
        .apply(Command::ScaleJob {
            name: "web".into(),
            replicas: 5,
            now: T1,
        })
        .expect("scale");
    assert_eq!(
        events,
        vec![Event::JobScaled {
            name: "web".into(),
            version: 2,
            replicas: 5
        }]
    );
    let job = state.job("web").expect("job");
    assert_eq!(job.spec.kind, JobKind::Service { replicas: 5 });
    assert!(
        state.tasks_of_job("web").all(|t| t.job_version == 2),
        "tasks carried forward"
    );
    put(
        &mut state,
        spec(
            "etl",
            JobKind::Batch {
                completions: 1,
                parallelism: 1,
            },
        ),
    );
    let err = state
        .apply(Command::ScaleJob {
            name: "etl".into(),
            replicas: 2,
            now: T1,
        })
        .expect_err("batch");
    assert!(
        err.to_string().contains("only service jobs are scaled"),
        "{err}"
    );
}

#[test]
fn a_preempting_stop_says_who_evicted_whom() {
    let mut state = running_web();
    let events = apply_plan(
        &mut state,
        Plan {
            stop: vec![PlanStop {
                task: id("web.0.a"),
                reason: "preempted".to_owned(),
                preempted_by: Some(id("db.0.x")),
            }],
            ..Plan::default()
        },
    );
    assert_eq!(
        events[0],
        Event::TaskPreempted {
            id: id("web.0.a"),
            by: id("db.0.x")
        }
    );
    // The node's report of the stop keeps the cluster's reason.
    report(&mut state, "n1", "web.0.a", TaskState::Shutdown);
    let task = state.task(&id("web.0.a")).expect("task");
    assert_eq!(task.status.state, TaskState::Shutdown);
    assert_eq!(task.status.message, "preempted");
    // A task that fails on its own still says why.
    report(&mut state, "n1", "web.1.b", TaskState::Failed);
    assert_eq!(
        state
            .task(&id("web.1.b"))
            .map(|t| t.status.message.as_str()),
        Some("now failed")
    );
}

fn create_secret(state: &mut State, name: &str, value: &[u8]) -> Result<Vec<Event>, ApplyError> {
    state.apply(Command::CreateSecret {
        name: name.to_owned(),
        value: crate::SecretBytes::new(value.to_vec()),
        now: T0,
    })
}

fn with_files(name: &str, secrets: &[&str], env_secret: Option<&str>, configs: &[&str]) -> JobSpec {
    let mount = |kind: baton_spec::FileKind, name: &&str| baton_spec::FileMount {
        name: (*name).to_owned(),
        target: Some(kind.default_target(name)),
        mode: kind.default_mode(),
        uid: None,
    };
    let mut spec = service(name, 1);
    spec.task.secrets = secrets
        .iter()
        .map(|n| mount(baton_spec::FileKind::Secret, n))
        .collect();
    spec.task.configs = configs
        .iter()
        .map(|n| mount(baton_spec::FileKind::Config, n))
        .collect();
    if let Some(secret) = env_secret {
        spec.task
            .env_secrets
            .insert("PASSWORD".to_owned(), secret.to_owned());
    }
    spec
}

#[test]
fn secrets_are_immutable_checked_and_survive_a_round_trip() {
    let mut state = State::default();
    assert_eq!(
        create_secret(&mut state, "db", b"hunter2"),
        Ok(vec![Event::FileCreated {
            kind: baton_spec::FileKind::Secret,
            name: "db".to_owned()
        }])
    );
    let again = create_secret(&mut state, "db", b"other").expect_err("immutable");
    assert_eq!(
        again.to_string(),
        "secret \"db\" already exists; secrets cannot be changed: create one under a new name \
         and update the jobs that use it"
    );
    assert_eq!(
        state.secret("db").map(|s| s.value.expose()),
        Some(&b"hunter2"[..])
    );

    let too_big = create_secret(&mut state, "big", &vec![0; baton_spec::MAX_FILE_BYTES + 1])
        .expect_err("too big");
    assert!(too_big.to_string().contains("500 KiB"), "{too_big}");
    let bad_name = create_secret(&mut state, "../x", b"v").expect_err("bad name");
    assert!(
        bad_name.to_string().contains("is not a valid name"),
        "{bad_name}"
    );

    state
        .apply(Command::CreateConfig {
            name: "app".to_owned(),
            data: b"port: 80\n".to_vec(),
            now: T1,
        })
        .expect("config");
    let json = serde_json::to_string(&state).expect("encode");
    assert!(!json.contains("hunter2"), "values are base64 in the record");
    let back: State = serde_json::from_str(&json).expect("decode");
    assert_eq!(back.secret("db"), state.secret("db"));
    assert_eq!(
        back.config("app").map(|c| &c.data[..]),
        Some(&b"port: 80\n"[..])
    );
    assert!(!format!("{:?}", state.secret("db")).contains("hunter2"));
}

#[test]
fn a_job_naming_a_missing_secret_or_config_is_refused_with_the_names() {
    let mut state = State::default();
    create_secret(&mut state, "db", b"v").expect("secret");
    let refused = state
        .apply(Command::PutJob {
            spec: with_files("web", &["db"], Some("api-key"), &["app"]),
            format: SpecFormat::Yaml,
            source: String::new(),
            now: T0,
        })
        .expect_err("missing");
    assert_eq!(
        refused.to_string(),
        "secret \"api-key\" does not exist, config \"app\" does not exist (create them first \
         with `baton secret create` or `baton config create`)"
    );
    assert!(state.job("web").is_none());
}

#[test]
fn a_secret_in_use_is_not_removed_and_the_jobs_are_named() {
    let mut state = running_web();
    create_secret(&mut state, "db", b"v").expect("secret");
    put(&mut state, with_files("api", &[], Some("db"), &[]));
    put(&mut state, with_files("worker", &["db"], None, &[]));
    let refused = state
        .apply(Command::RemoveSecret {
            name: "db".to_owned(),
        })
        .expect_err("in use");
    assert_eq!(
        refused.to_string(),
        "secret \"db\" is used by jobs api, worker; update or stop them first"
    );

    // A stopped job whose tasks are all gone no longer holds it; one still
    // stopping does.
    state
        .apply(Command::StopJob {
            name: "api".to_owned(),
            now: T1,
        })
        .expect("stop");
    create(
        &mut state,
        vec![task("worker.0.a", "worker", 1, 0, Some("n1"))],
    );
    state
        .apply(Command::StopJob {
            name: "worker".to_owned(),
            now: T1,
        })
        .expect("stop");
    assert_eq!(
        state.jobs_using(baton_spec::FileKind::Secret, "db"),
        ["worker"]
    );
    report(&mut state, "n1", "worker.0.a", TaskState::Failed);
    assert_eq!(
        state.apply(Command::RemoveSecret {
            name: "db".to_owned()
        }),
        Ok(vec![Event::FileRemoved {
            kind: baton_spec::FileKind::Secret,
            name: "db".to_owned()
        }])
    );
    let gone = state
        .apply(Command::RemoveSecret {
            name: "db".to_owned(),
        })
        .expect_err("gone");
    assert_eq!(gone.to_string(), "secret \"db\" not found");
}
