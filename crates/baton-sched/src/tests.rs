//! End-to-end tests of [`plan`]: passes applied with `State::apply`, agents
//! simulated by reports.

use baton_spec::RestartCondition;
use baton_state::{
    ExitInfo, NodeId, Slot, Task, TaskDesired, TaskId, TaskState, TaskStatus, Timestamp,
};

use crate::ids::IdGen;
use crate::testkit::{MI, Sim, T0, node, render, service};
use crate::{PlanOutput, plan};

fn failed() -> Option<ExitInfo> {
    Some(ExitInfo {
        code: Some(1),
        signal: None,
    })
}

#[test]
fn initial_service_creation_fills_every_field() {
    let mut sim = Sim::new();
    sim.add_node(node("n1", 4000, 4096 * MI));
    sim.put(service("web", 1));
    let out = plan(&sim.state, sim.now, 42);
    let id = IdGen::new(42).task_id(&sim.state, "web", &Slot::Index(0));
    let expected = Task {
        ports: Default::default(),
        id,
        job: "web".to_owned(),
        job_version: 1,
        slot: Slot::Index(0),
        restarts: 0,
        node: Some(NodeId("n1".to_owned())),
        resources: crate::testkit::res(100, 64 * MI),
        driver: baton_spec::DriverKind::Raw,
        desired: TaskDesired::Running,
        status: TaskStatus {
            state: TaskState::Assigned,
            since: T0,
            message: String::new(),
            exit: None,
            pid: None,
            started_at: None,
            finished_at: None,
        },
        not_before: None,
        created_at: T0,
    };
    assert_eq!(
        out,
        PlanOutput {
            plan: baton_state::Plan {
                create: vec![expected],
                ..Default::default()
            },
            next_wakeup: None,
        }
    );
}

#[test]
fn plan_is_deterministic_for_a_seed() {
    let mut sim = Sim::new();
    sim.add_node(node("n1", 4000, 4096 * MI));
    sim.add_node(node("n2", 4000, 4096 * MI));
    sim.put(service("web", 5));
    sim.put(crate::testkit::global("agent"));
    assert_eq!(plan(&sim.state, sim.now, 9), plan(&sim.state, sim.now, 9));
    assert_ne!(plan(&sim.state, sim.now, 9), plan(&sim.state, sim.now, 10));
}

#[test]
fn service_fills_slots_bin_packed_then_is_idempotent() {
    let mut sim = Sim::new();
    sim.add_node(node("n1", 1000, 1024 * MI));
    sim.add_node(node("n2", 1000, 1024 * MI));
    sim.put(service("web", 3));
    let out = sim.step();
    assert_eq!(
        render(&sim.state, &out.plan),
        vec![
            "create web.0 v1 r0 on n1 assigned",
            "create web.1 v1 r0 on n1 assigned",
            "create web.2 v1 r0 on n1 assigned",
        ]
    );
    assert_eq!(sim.pass(), PlanOutput::default());
}

#[test]
fn scale_up_and_down_keeps_slots_stable() {
    let mut sim = Sim::new();
    sim.add_node(node("n1", 4000, 4096 * MI));
    sim.put(service("web", 3));
    sim.converge();
    let before: Vec<TaskId> = (0..3)
        .map(|i| sim.live_in("web", &Slot::Index(i)))
        .collect();

    sim.put(service("web", 5));
    let out = sim.step();
    assert_eq!(
        render(&sim.state, &out.plan),
        vec![
            "create web.3 v2 r0 on n1 assigned",
            "create web.4 v2 r0 on n1 assigned",
        ]
    );
    sim.agents_ack();

    sim.put(service("web", 2));
    let out = sim.step();
    assert_eq!(
        render(&sim.state, &out.plan),
        vec![
            "stop web.2 v3 r0: scaled down",
            "stop web.3 v3 r0: scaled down",
            "stop web.4 v3 r0: scaled down",
        ]
    );
    sim.agents_ack();
    assert_eq!(sim.pass(), PlanOutput::default());
    let after: Vec<TaskId> = (0..2)
        .map(|i| sim.live_in("web", &Slot::Index(i)))
        .collect();
    assert_eq!(after, before[..2]);
}

#[test]
fn restart_waits_for_backoff_and_reports_next_wakeup() {
    let mut sim = Sim::new();
    sim.add_node(node("n1", 4000, 4096 * MI));
    sim.put(service("web", 1));
    sim.converge();
    let first = sim.live_in("web", &Slot::Index(0));
    sim.advance(500);
    sim.report(&first, TaskState::Failed, failed());

    let out = sim.step();
    assert_eq!(
        render(&sim.state, &out.plan),
        vec![
            "create web.0 v1 r1 on - pending not_before=+1500ms: \
             restart 1: waiting for backoff until 2023-11-14T22:13:21.500Z"
        ]
    );
    assert_eq!(out.next_wakeup, Some(Timestamp(T0.0 + 1500)));
    // Nothing new before the deadline, but the wakeup is still reported.
    sim.advance(999);
    let out = sim.pass();
    assert!(out.plan.is_empty());
    assert_eq!(out.next_wakeup, Some(Timestamp(T0.0 + 1500)));

    sim.advance(1);
    let out = sim.step();
    assert_eq!(
        render(&sim.state, &out.plan),
        vec!["place web.0 v1 r1 on n1"]
    );
    assert_eq!(out.next_wakeup, None);
}

#[test]
fn gives_up_after_max_attempts() {
    let mut sim = Sim::new();
    sim.add_node(node("n1", 4000, 4096 * MI));
    let mut spec = service("web", 1);
    spec.restart.max_attempts = 2;
    sim.put(spec);
    for restarts in 0..=2 {
        let out = sim.step();
        sim.agents_ack();
        if restarts == 0 {
            assert_eq!(out.plan.create.len(), 1);
        }
        // Skip past the backoff and place the restart.
        if let Some(at) = out.next_wakeup {
            sim.now = at;
            sim.step();
            sim.agents_ack();
        }
        let task = sim.live_in("web", &Slot::Index(0));
        assert_eq!(sim.state.task(&task).map(|t| t.restarts), Some(restarts));
        sim.report(&task, TaskState::Failed, failed());
    }
    let out = sim.step();
    assert_eq!(out, PlanOutput::default());
    let job = sim.state.job("web").expect("job");
    let summary = sim.state.job_summary(job);
    assert_eq!(summary.phase, baton_state::JobPhase::Failed);
    assert_eq!(summary.failures.len(), 1);
    assert_eq!(summary.failures[0].restarts, 2);
}

#[test]
fn service_exit_zero_under_on_failure_is_done() {
    let mut sim = Sim::new();
    sim.add_node(node("n1", 4000, 4096 * MI));
    let mut spec = service("web", 1);
    spec.restart.condition = RestartCondition::OnFailure;
    sim.put(spec);
    sim.converge();
    let task = sim.live_in("web", &Slot::Index(0));
    sim.report(
        &task,
        TaskState::Complete,
        Some(ExitInfo {
            code: Some(0),
            signal: None,
        }),
    );
    assert_eq!(sim.pass(), PlanOutput::default());
}

#[test]
fn lost_tasks_are_replaced_on_another_node() {
    let mut sim = Sim::new();
    sim.add_node(node("n1", 1000, 1024 * MI));
    sim.add_node(node("n2", 1000, 1024 * MI));
    sim.put(service("web", 2));
    sim.converge();
    sim.advance(10);
    sim.node_down("n1");
    let out = sim.step();
    assert_eq!(
        render(&sim.state, &out.plan),
        vec![
            "create web.0 v1 r0 on n2 assigned",
            "create web.1 v1 r0 on n2 assigned",
        ]
    );
    sim.agents_ack();
    assert_eq!(sim.pass(), PlanOutput::default());
}

#[test]
fn stop_job_stops_every_live_task() {
    let mut sim = Sim::new();
    sim.add_node(node("n1", 4000, 4096 * MI));
    sim.put(service("web", 2));
    sim.converge();
    sim.stop_job("web");
    let out = sim.step();
    assert_eq!(
        render(&sim.state, &out.plan),
        vec![
            "stop web.0 v1 r0: job stopped",
            "stop web.1 v1 r0: job stopped"
        ]
    );
    sim.agents_ack();
    assert_eq!(sim.pass(), PlanOutput::default());
    // Submitting the job again runs its slots again, at restart 0.
    sim.put(service("web", 2));
    let out = sim.step();
    assert_eq!(
        render(&sim.state, &out.plan),
        vec![
            "create web.0 v3 r0 on n1 assigned",
            "create web.1 v3 r0 on n1 assigned",
        ]
    );
}

#[test]
fn unplaceable_task_explains_once() {
    let mut sim = Sim::new();
    let mut small = node("n1", 4000, 32 * MI);
    small.id = NodeId("n1".to_owned());
    sim.add_node(small);
    sim.add_node(node("n2", 4000, 32 * MI));
    sim.add_node(node("n3", 4000, 4096 * MI));
    let mut no_raw = node("n4", 4000, 4096 * MI);
    no_raw.drivers.clear();
    sim.add_node(no_raw);
    sim.add_node(node("n5", 4000, 4096 * MI));
    sim.node_down("n5");
    sim.put(service("web", 1));
    let mut big = service("big", 1);
    big.task.resources.memory_bytes = 1024 * MI;
    big.task.resources.cpu_millis = 8000;
    sim.put(big);
    let out = sim.step();
    assert_eq!(
        render(&sim.state, &out.plan),
        vec![
            "create big.0 v1 r0 on - pending: no node fits: \
             2 nodes: insufficient cpu and memory; 1 node: down; \
             1 node: driver raw not available; 1 node: insufficient cpu",
            "create web.0 v1 r0 on n3 assigned",
            "unplaced big.0 v1 r0: no node fits: \
             2 nodes: insufficient cpu and memory; 1 node: down; \
             1 node: driver raw not available; 1 node: insufficient cpu",
        ]
    );
    // The same reason again is not repeated.
    assert_eq!(sim.pass(), PlanOutput::default());
}

#[test]
fn global_update_makes_room_when_the_node_is_full() {
    let mut sim = Sim::new();
    sim.add_node(node("n1", 150, 1024 * MI));
    sim.put(crate::testkit::global("agent"));
    sim.converge();
    let mut spec = crate::testkit::global("agent");
    spec.task.command.push("--v2".to_owned());
    sim.put(spec);
    let out = sim.step();
    assert_eq!(
        render(&sim.state, &out.plan),
        vec![
            "create agent.n1 v2 r0 on - pending: cannot run on node n1: insufficient cpu",
            "stop agent.n1 v1 r0: replaced by version 2",
            "unplaced agent.n1 v2 r0: cannot run on node n1: insufficient cpu",
        ]
    );
    // Until the node reports the old task gone, nothing changes.
    assert_eq!(sim.pass(), PlanOutput::default());
    sim.agents_ack();
    let out = sim.step();
    assert_eq!(
        render(&sim.state, &out.plan),
        vec!["place agent.n1 v2 r0 on n1"]
    );
    sim.converge();
    let live: Vec<u64> = sim.live("agent").iter().map(|t| t.job_version).collect();
    assert_eq!(live, vec![2]);
}

#[test]
fn a_pass_over_its_own_applied_plan_is_empty() {
    let mut sim = Sim::new();
    sim.add_node(node("n1", 2000, 1024 * MI));
    sim.add_node(node("n2", 1000, 512 * MI));
    let mut heavy = service("heavy", 4);
    heavy.task.resources.cpu_millis = 700;
    sim.put(heavy);
    sim.put(service("web", 3));
    sim.put(crate::testkit::batch("etl", 5, 2));
    sim.put(crate::testkit::global("agent"));
    let check = |sim: &mut Sim| {
        let again = sim.pass();
        assert!(
            again.plan.is_empty(),
            "{:?}",
            render(&sim.state, &again.plan)
        );
    };
    sim.step();
    check(&mut sim);
    sim.agents_ack();
    check(&mut sim);
    // Failures: restarts wait for backoff; the pass after is empty again.
    let victims: Vec<TaskId> = sim
        .state
        .tasks()
        .filter(|t| t.status.state == TaskState::Running)
        .take(3)
        .map(|t| t.id.clone())
        .collect();
    for id in &victims {
        sim.report(id, TaskState::Failed, failed());
    }
    let out = sim.step();
    assert!(out.next_wakeup.is_some());
    check(&mut sim);
    sim.now = out.next_wakeup.expect("wakeup");
    sim.step();
    check(&mut sim);
    sim.node_down("n2");
    sim.step();
    check(&mut sim);
    sim.stop_job("web");
    sim.step();
    check(&mut sim);
}
