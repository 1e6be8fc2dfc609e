use std::collections::BTreeMap;
use std::time::Duration;

use baton_rpc::Assignment;
use baton_spec::{DriverKind, Resources, TaskSpec};
use baton_state::{TaskDesired, TaskId, TaskState};

use super::*;

fn id(s: &str) -> TaskId {
    TaskId(s.to_owned())
}

fn assignment(task: &str, desired: TaskDesired, state: TaskState) -> Assignment {
    Assignment {
        ports: Default::default(),
        task: id(task),
        job: "web".to_owned(),
        job_version: 1,
        slot: "0".to_owned(),
        spec: TaskSpec {
            ports: Default::default(),
            image: None,
            capabilities: Vec::new(),
            pids_limit: baton_spec::DEFAULT_PIDS_LIMIT,
            secrets: Vec::new(),
            env_secrets: std::collections::BTreeMap::new(),
            configs: Vec::new(),
            driver: DriverKind::Raw,
            command: vec!["/bin/true".to_owned()],
            env: BTreeMap::new(),
            workdir: None,
            user: None,
            resources: Resources::default(),
            kill_timeout: Duration::from_secs(7),
        },
        desired,
        state,
    }
}

fn local(entries: &[(&str, TaskState, bool)]) -> BTreeMap<TaskId, LocalTask> {
    entries
        .iter()
        .map(|&(task, state, stopping)| {
            (
                id(task),
                LocalTask {
                    state,
                    stopping,
                    kill_timeout: Duration::from_secs(3),
                },
            )
        })
        .collect()
}

#[test]
fn step_starts_an_assigned_task() {
    let a = assignment("web.0.a", TaskDesired::Running, TaskState::Assigned);
    assert_eq!(
        step(std::slice::from_ref(&a), &BTreeMap::new()),
        vec![Action::Start(Box::new(a))]
    );
}

#[test]
fn step_never_starts_an_unknown_task_past_assigned() {
    let set = [
        assignment("web.0.a", TaskDesired::Running, TaskState::Starting),
        assignment("web.1.b", TaskDesired::Running, TaskState::Running),
    ];
    assert_eq!(
        step(&set, &BTreeMap::new()),
        vec![
            Action::ReportLost {
                task: id("web.0.a"),
                message: "agent restarted; task was not running".to_owned(),
            },
            Action::ReportLost {
                task: id("web.1.b"),
                message: "agent restarted; task was not running".to_owned(),
            },
        ]
    );
}

#[test]
fn step_stops_a_running_task_desired_shutdown_with_its_kill_timeout() {
    let set = [assignment(
        "web.0.a",
        TaskDesired::Shutdown,
        TaskState::Running,
    )];
    assert_eq!(
        step(&set, &local(&[("web.0.a", TaskState::Running, false)])),
        vec![Action::Stop {
            task: id("web.0.a"),
            kill_timeout: Duration::from_secs(7),
        }]
    );
}

#[test]
fn step_stops_local_tasks_absent_from_the_set() {
    let view = local(&[
        ("web.0.a", TaskState::Running, false),
        ("web.1.b", TaskState::Starting, false),
        ("web.2.c", TaskState::Complete, false),
    ]);
    assert_eq!(
        step(&[], &view),
        vec![
            Action::Stop {
                task: id("web.0.a"),
                kill_timeout: Duration::from_secs(3),
            },
            Action::Stop {
                task: id("web.1.b"),
                kill_timeout: Duration::from_secs(3),
            },
        ]
    );
}

#[test]
fn step_reports_shutdown_for_a_task_stopped_before_it_started() {
    let set = [assignment(
        "web.0.a",
        TaskDesired::Shutdown,
        TaskState::Assigned,
    )];
    assert_eq!(
        step(&set, &BTreeMap::new()),
        vec![Action::ReportShutdown {
            task: id("web.0.a"),
            message: "stopped before it started".to_owned(),
        }]
    );
}

#[test]
fn step_is_idempotent_when_converged() {
    let set = [
        // Runs here and should.
        assignment("web.0.a", TaskDesired::Running, TaskState::Running),
        // Being stopped already.
        assignment("web.1.b", TaskDesired::Shutdown, TaskState::Running),
        // Finished here; the cluster has not caught up with the report yet.
        assignment("web.2.c", TaskDesired::Running, TaskState::Running),
        // Reported lost earlier.
        assignment("web.3.d", TaskDesired::Running, TaskState::Running),
        // Finished, as the cluster knows.
        assignment("web.4.e", TaskDesired::Running, TaskState::Failed),
    ];
    let view = local(&[
        ("web.0.a", TaskState::Running, false),
        ("web.1.b", TaskState::Running, true),
        ("web.2.c", TaskState::Failed, false),
        ("web.3.d", TaskState::Lost, false),
        // Absent and being stopped.
        ("web.9.z", TaskState::Running, true),
    ]);
    assert_eq!(step(&set, &view), vec![]);
}

#[test]
fn step_ignores_a_repeated_task_in_one_set() {
    let a = assignment("web.0.a", TaskDesired::Running, TaskState::Assigned);
    assert_eq!(
        step(&[a.clone(), a.clone()], &BTreeMap::new()),
        vec![Action::Start(Box::new(a))]
    );
}

#[test]
fn states_only_move_forward() {
    use TaskState::*;
    assert!(moves_forward(Assigned, Starting));
    assert!(moves_forward(Starting, Running));
    assert!(moves_forward(Running, Failed));
    assert!(moves_forward(Starting, Lost));
    assert!(!moves_forward(Running, Starting));
    assert!(!moves_forward(Running, Running));
    assert!(!moves_forward(Failed, Lost));
    assert!(!moves_forward(Complete, Running));
}
