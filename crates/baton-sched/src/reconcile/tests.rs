//! Tests of [`reconcile`] alone: its output before any placement.

use baton_spec::RestartCondition;
use baton_state::{ExitInfo, NodeAvailability, Plan, Slot, TaskState};

use super::*;
use crate::testkit::{GI, Sim, T0, batch, global, node, render, service, short, task};

/// The reconciler's output on the sim's state, one line per item.
fn lines(sim: &Sim) -> Vec<String> {
    let out = reconcile(&sim.state, sim.now, &mut IdGen::new(1), None);
    let mut lines = render(
        &sim.state,
        &Plan {
            create: out.create,
            stop: out.stop,
            remove: out.remove,
            ..Plan::default()
        },
    );
    lines.extend(
        out.pending
            .iter()
            .map(|t| format!("ready {}", short(&t.id))),
    );
    lines.extend(
        out.if_unplaced
            .iter()
            .filter(|m| m.room_for.is_some())
            .map(|m| {
                format!(
                    "make room for {} by stopping {}",
                    short(&m.new_task),
                    short(&m.old.id)
                )
            }),
    );
    if let Some(at) = out.next_wakeup {
        lines.push(format!("wakeup +{}ms", at.millis_since(T0)));
    }
    lines
}

fn exit(code: i32) -> Option<ExitInfo> {
    Some(ExitInfo {
        code: Some(code),
        signal: None,
        oom_killed: false,
    })
}

/// A new template (what tasks run), so tasks must be replaced.
fn changed(mut spec: baton_spec::JobSpec) -> baton_spec::JobSpec {
    spec.task.command.push("--v2".to_owned());
    spec
}

#[test]
fn service_creates_missing_slots_pending() {
    let mut sim = Sim::new();
    sim.put(service("web", 2));
    assert_eq!(
        lines(&sim),
        vec![
            "create web.0 v1 r0 on - pending",
            "create web.1 v1 r0 on - pending",
        ]
    );
}

#[test]
fn unplaced_pending_tasks_are_handed_to_the_scheduler() {
    let mut sim = Sim::new();
    sim.put(service("web", 1));
    sim.step();
    assert_eq!(lines(&sim), vec!["ready web.0"]);
}

#[test]
fn rolling_update_replaces_one_slot_at_a_time_start_before_stop() {
    let mut sim = Sim::new();
    sim.add_node(node("n1", 8000, 8 * GI));
    sim.put(service("web", 3));
    sim.converge();
    sim.put(changed(service("web", 3)));

    // The lowest slot gets its new task; the old one keeps serving (and is only
    // stopped first if the new one fits nowhere else).
    assert_eq!(
        lines(&sim),
        vec![
            "create web.0 v2 r0 on - pending",
            "make room for web.0 by stopping web.0",
        ]
    );
    sim.step();
    // Nothing more until the new task runs.
    assert_eq!(lines(&sim), Vec::<String>::new());
    sim.agents_ack();
    assert_eq!(lines(&sim), vec!["stop web.0 v1 r0: replaced by version 2"]);
    sim.step();
    // The old one is still shutting down: the next slot may start.
    assert_eq!(
        lines(&sim),
        vec![
            "create web.1 v2 r0 on - pending",
            "make room for web.1 by stopping web.1",
        ]
    );
    sim.step();
    sim.agents_ack();
    assert_eq!(lines(&sim), vec!["stop web.1 v1 r0: replaced by version 2"]);
    sim.converge();

    let versions: Vec<u64> = sim.live("web").iter().map(|t| t.job_version).collect();
    assert_eq!(versions, vec![2, 2, 2]);
    assert_eq!(sim.live("web").len(), 3);
    assert_eq!(lines(&sim), Vec::<String>::new());
}

#[test]
fn old_tasks_that_do_not_run_are_replaced_at_once() {
    let mut sim = Sim::new();
    sim.add_node(node("n1", 8000, 8 * GI));
    sim.put(service("web", 2));
    sim.step(); // assigned, never started
    sim.put(changed(service("web", 2)));
    assert_eq!(
        lines(&sim),
        vec![
            "create web.0 v2 r0 on - pending",
            "create web.1 v2 r0 on - pending",
            "stop web.0 v1 r0: replaced by version 2",
            "stop web.1 v1 r0: replaced by version 2",
        ]
    );
}

#[test]
fn update_pauses_while_the_new_version_cannot_run() {
    let mut sim = Sim::new();
    sim.add_node(node("n1", 8000, 8 * GI));
    let mut spec = service("web", 2);
    spec.restart.max_attempts = 1;
    sim.put(spec.clone());
    sim.converge();
    sim.put(changed(spec));
    sim.step();
    sim.agents_ack();
    let new = sim
        .live("web")
        .into_iter()
        .find(|t| t.job_version == 2)
        .map(|t| t.id.clone())
        .expect("new task");
    // Fails before the pass that would retire the old task: restart with backoff,
    // the old task keeps serving, the next slot waits.
    sim.report(&new, TaskState::Failed, exit(1));
    assert_eq!(
        lines(&sim),
        vec![
            "create web.0 v2 r1 on - pending not_before=+1000ms: \
             restart 1: waiting for backoff until 2023-11-14T22:13:21.000Z",
            "wakeup +1000ms",
        ]
    );
    sim.step();
    sim.now = Timestamp(T0.0 + 1000);
    sim.step();
    sim.agents_ack();
    let retry = sim
        .live("web")
        .into_iter()
        .find(|t| t.job_version == 2)
        .map(|t| t.id.clone())
        .expect("retry");
    sim.report(&retry, TaskState::Failed, exit(1));
    // Gave up: the update stops here, the old tasks keep running.
    assert_eq!(lines(&sim), Vec::<String>::new());
    let old: Vec<u64> = sim.live("web").iter().map(|t| t.job_version).collect();
    assert_eq!(old, vec![1, 1]);
}

#[test]
fn scale_change_keeps_running_tasks() {
    let mut sim = Sim::new();
    sim.add_node(node("n1", 8000, 8 * GI));
    sim.put(service("web", 2));
    sim.converge();
    sim.put(service("web", 3));
    assert_eq!(lines(&sim), vec!["create web.2 v2 r0 on - pending"]);
}

#[test]
fn batch_runs_at_most_parallelism_and_completes() {
    let mut sim = Sim::new();
    sim.add_node(node("n1", 8000, 8 * GI));
    sim.put(batch("etl", 4, 2));
    assert_eq!(
        lines(&sim),
        vec![
            "create etl.0 v1 r0 on - pending",
            "create etl.1 v1 r0 on - pending",
        ]
    );
    sim.step();
    sim.agents_ack();
    assert_eq!(lines(&sim), Vec::<String>::new());
    let first = sim.live_in("etl", &Slot::Index(0));
    sim.report(&first, TaskState::Complete, exit(0));
    assert_eq!(lines(&sim), vec!["create etl.2 v1 r0 on - pending"]);
    sim.converge();
    for index in 1..4 {
        let id = sim.live_in("etl", &Slot::Index(index));
        sim.report(&id, TaskState::Complete, exit(0));
        sim.converge();
    }
    assert_eq!(lines(&sim), Vec::<String>::new());
    let job = sim.state.job("etl").expect("job");
    let summary = sim.state.job_summary(job);
    assert_eq!(summary.phase, baton_state::JobPhase::Complete);
    assert_eq!(summary.completed, 4);
}

#[test]
fn batch_failure_restarts_within_parallelism_then_fails_the_job() {
    let mut sim = Sim::new();
    sim.add_node(node("n1", 8000, 8 * GI));
    let mut spec = batch("etl", 3, 1);
    spec.restart.max_attempts = 1;
    sim.put(spec);
    sim.converge();
    let first = sim.live_in("etl", &Slot::Index(0));
    sim.report(&first, TaskState::Failed, exit(2));
    // The restart takes the one parallel place; slot 1 waits.
    assert_eq!(
        lines(&sim),
        vec![
            "create etl.0 v1 r1 on - pending not_before=+1000ms: \
             restart 1: waiting for backoff until 2023-11-14T22:13:21.000Z",
            "wakeup +1000ms",
        ]
    );
    sim.step();
    sim.now = Timestamp(T0.0 + 1000);
    sim.converge();
    let retry = sim.live_in("etl", &Slot::Index(0));
    sim.report(&retry, TaskState::Failed, exit(2));
    // Gave up: the job failed, no further slot starts.
    assert_eq!(lines(&sim), Vec::<String>::new());
    let job = sim.state.job("etl").expect("job");
    assert_eq!(
        sim.state.job_summary(job).phase,
        baton_state::JobPhase::Failed
    );
}

#[test]
fn batch_slots_done_under_the_new_version_only() {
    let mut sim = Sim::new();
    sim.add_node(node("n1", 8000, 8 * GI));
    sim.put(batch("etl", 2, 2));
    sim.converge();
    let first = sim.live_in("etl", &Slot::Index(0));
    sim.report(&first, TaskState::Complete, exit(0));
    // More parallelism: nothing reruns, nothing is replaced.
    sim.put(batch("etl", 2, 3));
    assert_eq!(lines(&sim), Vec::<String>::new());
    // A new template: every slot runs again, the running one is replaced at once.
    sim.put(changed(batch("etl", 2, 3)));
    assert_eq!(
        lines(&sim),
        vec![
            "create etl.0 v3 r0 on - pending",
            "create etl.1 v3 r0 on - pending",
            "stop etl.1 v2 r0: replaced by version 3",
        ]
    );
}

#[test]
fn global_runs_on_each_eligible_node_and_on_a_node_that_joins_later() {
    let mut sim = Sim::new();
    sim.add_node(node("n1", 8000, 8 * GI));
    sim.add_node(node("n2", 8000, 8 * GI));
    let mut no_driver = node("n3", 8000, 8 * GI);
    no_driver.drivers.clear();
    sim.add_node(no_driver);
    let mut paused = node("n4", 8000, 8 * GI);
    paused.availability = NodeAvailability::Pause;
    sim.add_node(paused);
    sim.add_node(node("n5", 8000, 8 * GI));
    sim.node_down("n5");
    sim.put(global("agent"));
    assert_eq!(
        lines(&sim),
        vec![
            "create agent.n1 v1 r0 on - pending",
            "create agent.n2 v1 r0 on - pending",
        ]
    );
    sim.converge();
    sim.add_node(node("n6", 8000, 8 * GI));
    assert_eq!(lines(&sim), vec!["create agent.n6 v1 r0 on - pending"]);
    sim.converge();
    // A node that comes back gets its task again.
    sim.add_node(node("n5", 8000, 8 * GI));
    assert_eq!(lines(&sim), vec!["create agent.n5 v1 r0 on - pending"]);
    sim.converge();
    // Draining: the node's task stops and is not replaced.
    sim.set_availability("n2", NodeAvailability::Drain);
    assert_eq!(
        lines(&sim),
        vec!["stop agent.n2 v1 r0: node n2 is draining"]
    );
    sim.converge();
    // Paused: keeps its task.
    sim.set_availability("n1", NodeAvailability::Pause);
    assert_eq!(lines(&sim), Vec::<String>::new());
    // Active again: the drained node gets a task again.
    sim.set_availability("n2", NodeAvailability::Active);
    assert_eq!(lines(&sim), vec!["create agent.n2 v1 r0 on - pending"]);
}

#[test]
fn stopped_job_stops_pending_and_running_tasks() {
    let mut sim = Sim::new();
    sim.add_node(node("n1", 1000, GI));
    let mut big = service("web", 3);
    big.task.resources.cpu_millis = 400;
    sim.put(big);
    sim.converge(); // two run, one pending
    sim.stop_job("web");
    assert_eq!(
        lines(&sim),
        vec![
            "stop web.0 v1 r0: job stopped",
            "stop web.1 v1 r0: job stopped",
            "stop web.2 v1 r0: job stopped",
        ]
    );
}

#[test]
fn lost_task_is_replaced_at_once_without_counting_a_restart() {
    let mut sim = Sim::new();
    sim.add_node(node("n1", 8000, 8 * GI));
    sim.put(service("web", 1));
    sim.converge();
    sim.node_down("n1");
    assert_eq!(lines(&sim), vec!["create web.0 v1 r0 on - pending"]);
}

#[test]
fn lost_replacement_made_in_the_same_millisecond_counts_as_latest() {
    let mut sim = Sim::new();
    sim.add_node(node("n1", 8000, 8 * GI));
    sim.add_node(node("n2", 8000, 8 * GI));
    sim.put(service("web", 1));
    sim.converge();
    sim.node_down("n1");
    sim.step(); // replacement created at the same `now` as the lost task
    sim.agents_ack();
    assert_eq!(lines(&sim), Vec::<String>::new());
}

#[test]
fn drained_tasks_are_replaced_elsewhere() {
    let mut sim = Sim::new();
    sim.add_node(node("n1", 8000, 8 * GI));
    sim.put(service("web", 2));
    sim.converge();
    sim.add_node(node("n2", 8000, 8 * GI));
    sim.set_availability("n1", NodeAvailability::Drain);
    // Start first: the replacements are made while the old tasks keep running.
    assert_eq!(
        lines(&sim),
        vec![
            "create web.0 v1 r0 on - pending",
            "create web.1 v1 r0 on - pending",
        ]
    );
    sim.step();
    sim.agents_ack();
    // Then stop, once the replacements run.
    assert_eq!(
        lines(&sim),
        vec![
            "stop web.0 v1 r0: node n1 is draining",
            "stop web.1 v1 r0: node n1 is draining",
        ]
    );
    sim.converge();
    let nodes: Vec<String> = sim
        .live("web")
        .iter()
        .filter_map(|t| t.node.as_ref().map(|n| n.0.clone()))
        .collect();
    assert_eq!(nodes, vec!["n2", "n2"]);
}

#[test]
fn duplicate_live_tasks_keep_the_running_one() {
    let mut sim = Sim::new();
    sim.add_node(node("n1", 8000, 8 * GI));
    sim.put(service("web", 1));
    sim.inject(task(
        "web.0.aaaaaaaaaaaa",
        "web",
        1,
        Slot::Index(0),
        TaskState::Assigned,
        Some("n1"),
    ));
    sim.inject(task(
        "web.0.bbbbbbbbbbbb",
        "web",
        1,
        Slot::Index(0),
        TaskState::Assigned,
        Some("n1"),
    ));
    sim.report(
        &baton_state::TaskId("web.0.aaaaaaaaaaaa".to_owned()),
        TaskState::Running,
        None,
    );
    let out = reconcile(&sim.state, sim.now, &mut IdGen::new(1), None);
    assert_eq!(
        out.stop,
        vec![PlanStop {
            preempted_by: None,
            task: baton_state::TaskId("web.0.bbbbbbbbbbbb".to_owned()),
            reason: "duplicate of task web.0.aaaaaaaaaaaa".to_owned(),
        }]
    );
}

#[test]
fn history_keeps_five_terminal_tasks_per_slot() {
    let mut sim = Sim::new();
    sim.put(service("web", 1));
    // Seven failed runs of slot 0 and seven of slot 3, which no longer exists.
    for slot in [0, 3] {
        for restarts in 0..7 {
            let mut t = task(
                &format!("web.{slot}.{restarts:012x}"),
                "web",
                1,
                Slot::Index(slot),
                TaskState::Failed,
                None,
            );
            t.restarts = restarts;
            sim.inject(t);
        }
    }
    let mut spec = service("web", 1);
    spec.restart.condition = RestartCondition::Never;
    // Same template, other policy: the tasks carry over to version 2.
    sim.put(spec);
    let out = reconcile(&sim.state, sim.now, &mut IdGen::new(1), None);
    let removed: Vec<&str> = out.remove.iter().map(|id| id.0.as_str()).collect();
    assert_eq!(
        removed,
        vec![
            "web.0.000000000001",
            "web.0.000000000000",
            "web.3.000000000001",
            "web.3.000000000000",
        ]
    );
    assert!(out.create.is_empty());
}

fn labelled(id: &str, labels: &[(&str, &str)]) -> baton_state::Node {
    let mut n = node(id, 8000, 8 * GI);
    n.labels = labels
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    n
}

fn constrained(mut spec: baton_spec::JobSpec, rule: &str) -> baton_spec::JobSpec {
    spec.placement
        .constraints
        .push(baton_spec::Constraint::parse(rule).expect("valid constraint"));
    spec
}

fn set_labels(sim: &mut Sim, id: &str, set: &[(&str, &str)], remove: &[&str]) {
    sim.apply(baton_state::Command::UpdateNodeLabels {
        id: baton_state::NodeId(id.to_owned()),
        set: set
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        remove: remove.iter().map(|k| (*k).to_owned()).collect(),
    });
}

fn drain(sim: &mut Sim, id: &str, deadline: Option<u64>) {
    let deadline = deadline.map(|ms| baton_state::Timestamp(sim.now.0 + ms));
    sim.apply(baton_state::Command::SetNodeAvailability {
        id: baton_state::NodeId(id.to_owned()),
        availability: NodeAvailability::Drain,
        deadline,
    });
}

#[test]
fn batch_tasks_finish_on_a_draining_node_until_its_deadline() {
    let mut sim = Sim::new();
    sim.add_node(node("n1", 8000, 8 * GI));
    sim.put(batch("etl", 2, 2));
    sim.converge();
    sim.add_node(node("n2", 8000, 8 * GI));
    drain(&mut sim, "n1", Some(60_000));
    // Let finish: nothing moves, the pass wakes up at the deadline.
    assert_eq!(lines(&sim), vec!["wakeup +60000ms"]);
    sim.advance(60_000);
    assert_eq!(
        lines(&sim),
        vec![
            "create etl.0 v1 r0 on - pending",
            "create etl.1 v1 r0 on - pending",
            "stop etl.0 v1 r0: node n1 is draining and its deadline passed",
            "stop etl.1 v1 r0: node n1 is draining and its deadline passed",
        ]
    );
}

#[test]
fn batch_tasks_without_a_drain_deadline_are_never_stopped() {
    let mut sim = Sim::new();
    sim.add_node(node("n1", 8000, 8 * GI));
    sim.put(batch("etl", 1, 1));
    sim.converge();
    drain(&mut sim, "n1", None);
    sim.advance(3_600_000);
    assert_eq!(lines(&sim), Vec::<String>::new());
}

#[test]
fn a_drained_task_whose_replacement_fits_nowhere_is_stopped_anyway() {
    let mut sim = Sim::new();
    sim.add_node(node("n1", 8000, 8 * GI));
    sim.put(service("web", 1));
    sim.converge();
    drain(&mut sim, "n1", None);
    let out = sim.pass();
    let stops: Vec<&str> = out.plan.stop.iter().map(|s| s.reason.as_str()).collect();
    assert_eq!(
        stops,
        vec!["node n1 is draining (its replacement fits nowhere)"]
    );
    assert_eq!(out.plan.create.len(), 1, "the replacement waits, pending");
}

#[test]
fn service_tasks_leave_a_node_that_no_longer_satisfies_a_constraint() {
    let mut sim = Sim::new();
    sim.add_node(labelled("n1", &[("zone", "a")]));
    sim.add_node(labelled("n2", &[("zone", "b")]));
    sim.put(constrained(service("web", 1), "node.labels.zone == a"));
    sim.converge();
    assert_eq!(
        sim.live("web")[0].node.as_ref().map(|n| n.0.as_str()),
        Some("n1")
    );
    // The operator moves zone a to n2: the task moves there, start first.
    set_labels(&mut sim, "n1", &[("zone", "c")], &[]);
    set_labels(&mut sim, "n2", &[("zone", "a")], &[]);
    assert_eq!(lines(&sim), vec!["create web.0 v1 r0 on - pending"]);
    sim.step();
    sim.agents_ack();
    assert_eq!(
        lines(&sim),
        vec!["stop web.0 v1 r0: node n1 no longer satisfies constraint node.labels.zone == a"]
    );
    sim.converge();
    let live = sim.live("web");
    assert_eq!(live.len(), 1);
    assert_eq!(live[0].node.as_ref().map(|n| n.0.as_str()), Some("n2"));
}

#[test]
fn global_job_follows_its_constraint_as_labels_change() {
    let mut sim = Sim::new();
    sim.add_node(labelled("n1", &[("disk", "ssd")]));
    sim.add_node(labelled("n2", &[]));
    sim.put(constrained(global("cache"), "node.labels.disk == ssd"));
    assert_eq!(lines(&sim), vec!["create cache.n1 v1 r0 on - pending"]);
    sim.converge();
    // n2 gains the label: it gets a task.
    set_labels(&mut sim, "n2", &[("disk", "ssd")], &[]);
    assert_eq!(lines(&sim), vec!["create cache.n2 v1 r0 on - pending"]);
    sim.converge();
    // The agent of n1 re-registers without the label: its task stops.
    sim.add_node(labelled("n1", &[]));
    assert_eq!(
        lines(&sim),
        vec!["stop cache.n1 v1 r0: node n1 no longer satisfies constraint node.labels.disk == ssd"]
    );
}
