//! End-to-end tests of [`plan`]: passes applied with `State::apply`, agents
//! simulated by reports.

use std::collections::{BTreeMap, BTreeSet};

use baton_spec::{
    Affinity, Attribute, Constraint, JobSpec, PortSpec, RestartCondition, Spread, SpreadTarget,
    Strategy,
};
use baton_state::{
    Command, Event, ExitInfo, Node, NodeAvailability, NodeId, PlanPlacement, PlanStop, Slot, Task,
    TaskDesired, TaskId, TaskState, TaskStatus, Timestamp,
};

use crate::ids::IdGen;
use crate::testkit::{GI, MI, Sim, T0, node, render, res, service};
use crate::{PlanOutput, plan};

fn failed() -> Option<ExitInfo> {
    Some(ExitInfo {
        code: Some(1),
        signal: None,
        oom_killed: false,
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
            oom_killed: false,
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
             1 node: insufficient cpu; 1 node: no raw driver",
            "create web.0 v1 r0 on n3 assigned",
            "unplaced big.0 v1 r0: no node fits: \
             2 nodes: insufficient cpu and memory; 1 node: down; \
             1 node: insufficient cpu; 1 node: no raw driver",
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

// ---- Placement: constraints, affinities, spread, strategy, limits, ports,
// ---- priority, preemption and explanations, end to end through `plan`.

/// A ready, active raw node with labels.
fn labelled(id: &str, cpu_millis: u64, memory_bytes: u64, labels: &[(&str, &str)]) -> Node {
    let mut n = node(id, cpu_millis, memory_bytes);
    n.labels = labels
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    n
}

fn constraint(text: &str) -> Constraint {
    Constraint::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"))
}

/// A service of `replicas` tasks of `cpu_millis` and 64Mi.
fn sized(name: &str, replicas: u32, cpu_millis: u64) -> JobSpec {
    let mut spec = service(name, replicas);
    spec.task.resources = res(cpu_millis, 64 * MI);
    spec
}

fn zone_spread(targets: &[(&str, u32)]) -> Spread {
    Spread {
        attribute: Attribute::Label("zone".to_owned()),
        targets: targets
            .iter()
            .map(|(value, percent)| SpreadTarget {
                value: (*value).to_owned(),
                percent: *percent,
            })
            .collect(),
    }
}

fn port(name: &str, static_port: Option<u16>) -> PortSpec {
    PortSpec {
        name: name.to_owned(),
        static_port,
        publish: false,
    }
}

/// The node of each live task of `job`, in slot order (`-` if unplaced).
fn nodes_of(sim: &Sim, job: &str) -> Vec<String> {
    let mut tasks = sim.live(job);
    tasks.sort_by(|a, b| a.slot.cmp(&b.slot));
    tasks
        .iter()
        .map(|t| t.node.as_ref().map_or("-".to_owned(), |n| n.0.clone()))
        .collect()
}

/// How many live tasks of `job` each node holds.
fn count_by_node(sim: &Sim, job: &str) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for task in sim.live(job) {
        if let Some(n) = &task.node {
            *counts.entry(n.0.clone()).or_default() += 1;
        }
    }
    counts
}

/// How many live tasks of `job` each zone holds.
fn count_by_zone(sim: &Sim, job: &str) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for task in sim.live(job) {
        if let Some(n) = &task.node {
            let zone = sim
                .state
                .node(n)
                .and_then(|n| n.label("zone"))
                .unwrap_or("-")
                .to_owned();
            *counts.entry(zone).or_default() += 1;
        }
    }
    counts
}

/// The messages of the live pending tasks of `job`.
fn pending_messages(sim: &Sim, job: &str) -> Vec<String> {
    sim.live(job)
        .iter()
        .filter(|t| t.node.is_none())
        .map(|t| t.status.message.clone())
        .collect()
}

/// A running task of `job` injected on `node`.
fn running_on(id: &str, job: &str, slot: u32, node: &str, cpu_millis: u64) -> Task {
    let mut t = crate::testkit::task(
        id,
        job,
        1,
        Slot::Index(slot),
        TaskState::Running,
        Some(node),
    );
    t.resources = res(cpu_millis, 64 * MI);
    t
}

#[test]
fn every_kind_of_constraint_selects_its_nodes() {
    let cases: [(&str, &[&str]); 14] = [
        ("node.labels.zone == a", &["n1"]),
        ("node.labels.zone != a", &["n2", "n3"]),
        ("node.labels.zone in (a, b)", &["n1", "n2"]),
        ("node.labels.zone not in (a)", &["n2", "n3"]),
        ("node.labels.kernel =~ ^6\\.", &["n2"]),
        ("node.labels.kernel !~ ^6", &["n1", "n3"]),
        ("node.labels.kernel semver >=6.0.0", &["n2"]),
        ("node.labels.ssd exists", &["n1"]),
        ("node.labels.ssd not exists", &["n2", "n3"]),
        ("node.hostname == n2.local", &["n2"]),
        ("node.id in (n1, n3)", &["n1", "n3"]),
        ("node.role == worker", &["n1", "n2", "n3"]),
        ("node.drivers contains raw", &["n1", "n2", "n3"]),
        ("node.drivers not contains raw", &[]),
    ];
    for (text, expected) in cases {
        let mut sim = Sim::new();
        sim.add_node(labelled(
            "n1",
            4000,
            GI,
            &[("zone", "a"), ("kernel", "5.10.0"), ("ssd", "true")],
        ));
        sim.add_node(labelled(
            "n2",
            4000,
            GI,
            &[("zone", "b"), ("kernel", "6.1.0")],
        ));
        sim.add_node(labelled("n3", 4000, GI, &[]));
        // One task per node at most, so the nodes used are the nodes allowed.
        let mut spec = service("web", 3);
        spec.placement.constraints = vec![constraint(text)];
        spec.placement.max_per_node = Some(1);
        sim.put(spec);
        sim.step();
        let mut used: Vec<String> = count_by_node(&sim, "web").into_keys().collect();
        used.sort();
        assert_eq!(used, expected, "{text}");
        assert_eq!(
            pending_messages(&sim, "web").len(),
            3 - expected.len(),
            "{text}"
        );
    }
}

#[test]
fn a_constraint_that_fails_is_named_in_the_explanation() {
    let mut sim = Sim::new();
    sim.add_node(labelled("n1", 4000, GI, &[("zone", "a")]));
    sim.add_node(labelled("n2", 4000, GI, &[("zone", "b")]));
    sim.add_node(labelled("n3", 4000, GI, &[]));
    let mut spec = service("web", 2);
    spec.placement.constraints = vec![
        constraint("node.labels.zone exists"),
        constraint("node.labels.zone == a"),
    ];
    spec.placement.max_per_node = Some(1);
    sim.put(spec);
    sim.step();
    assert_eq!(nodes_of(&sim, "web"), vec!["n1", "-"]);
    // n3 fails the first constraint, n2 the second; n1 holds its one task.
    assert_eq!(
        pending_messages(&sim, "web"),
        vec![
            "no node fits: 1 node: constraint node.labels.zone == a not met; \
             1 node: constraint node.labels.zone exists not met; \
             1 node: max_per_node 1 reached"
        ]
    );
    assert_eq!(sim.pass(), PlanOutput::default());
}

#[test]
fn affinity_prefers_matching_nodes_until_they_are_full() {
    let mut sim = Sim::new();
    sim.add_node(labelled("n1", 1000, GI, &[("zone", "a")]));
    sim.add_node(labelled("n2", 1000, GI, &[("zone", "b")]));
    sim.add_node(labelled("n3", 1000, GI, &[("zone", "c")]));
    // Without affinity, binpack fills n1 first.
    let mut spec = sized("web", 3, 400);
    spec.placement.affinities = vec![
        Affinity {
            expr: constraint("node.labels.zone == b"),
            weight: 50,
        },
        Affinity {
            expr: constraint("node.labels.zone in (b, c)"),
            weight: 20,
        },
    ];
    sim.put(spec);
    sim.step();
    // n2 (score 70) takes two, then n3 (score 20) before n1 (score 0).
    assert_eq!(nodes_of(&sim, "web"), vec!["n2", "n2", "n3"]);
}

#[test]
fn negative_affinity_pushes_tasks_away() {
    let mut sim = Sim::new();
    sim.add_node(labelled("n1", 1000, GI, &[("zone", "a")]));
    sim.add_node(labelled("n2", 1000, GI, &[("zone", "b")]));
    let mut spec = sized("web", 3, 400);
    spec.placement.affinities = vec![Affinity {
        expr: constraint("node.labels.zone == a"),
        weight: -10,
    }];
    sim.put(spec);
    sim.step();
    assert_eq!(nodes_of(&sim, "web"), vec!["n2", "n2", "n1"]);
}

#[test]
fn spread_keeps_zones_within_one() {
    let mut sim = Sim::new();
    for (id, zone) in [
        ("n1", "a"),
        ("n2", "a"),
        ("n3", "b"),
        ("n4", "b"),
        ("n5", "c"),
        ("n6", "c"),
    ] {
        sim.add_node(labelled(id, 4000, 4 * GI, &[("zone", zone)]));
    }
    // Two tasks already run in zone a: the new ones go to b and c first.
    sim.put(sized("web", 2, 100));
    sim.inject(running_on("web.0.000000000001", "web", 0, "n1", 100));
    sim.inject(running_on("web.1.000000000002", "web", 1, "n2", 100));
    let mut spec = sized("web", 9, 100);
    spec.placement.spread = Some(zone_spread(&[]));
    sim.put(spec);
    sim.step();
    let zones = count_by_zone(&sim, "web");
    assert_eq!(
        zones,
        BTreeMap::from([
            ("a".to_owned(), 3),
            ("b".to_owned(), 3),
            ("c".to_owned(), 3)
        ])
    );
    // Within a zone, binpack still fills the fullest node first.
    assert_eq!(count_by_node(&sim, "web").get("n3"), Some(&3));
}

#[test]
fn spread_balances_what_capacity_allows() {
    let mut sim = Sim::new();
    sim.add_node(labelled("n1", 4000, 4 * GI, &[("zone", "a")]));
    sim.add_node(labelled("n2", 4000, 4 * GI, &[("zone", "b")]));
    // Zone c has room for one task only.
    sim.add_node(labelled("n3", 500, 4 * GI, &[("zone", "c")]));
    let mut spec = sized("web", 7, 500);
    spec.placement.spread = Some(zone_spread(&[]));
    sim.put(spec);
    sim.step();
    assert_eq!(
        count_by_zone(&sim, "web"),
        BTreeMap::from([
            ("a".to_owned(), 3),
            ("b".to_owned(), 3),
            ("c".to_owned(), 1)
        ])
    );
}

#[test]
fn spread_follows_targets() {
    let mut sim = Sim::new();
    for (id, zone) in [("n1", "a"), ("n2", "b"), ("n3", "c")] {
        sim.add_node(labelled(id, 8000, 8 * GI, &[("zone", zone)]));
    }
    // a: 50%; b and c share the other half.
    let mut spec = sized("web", 8, 100);
    spec.placement.spread = Some(zone_spread(&[("a", 50)]));
    sim.put(spec);
    let mut other = sized("api", 10, 100);
    other.placement.spread = Some(zone_spread(&[("a", 70), ("b", 30)]));
    sim.put(other);
    sim.step();
    assert_eq!(
        count_by_zone(&sim, "web"),
        BTreeMap::from([
            ("a".to_owned(), 4),
            ("b".to_owned(), 2),
            ("c".to_owned(), 2)
        ])
    );
    assert_eq!(
        count_by_zone(&sim, "api"),
        BTreeMap::from([("a".to_owned(), 7), ("b".to_owned(), 3)])
    );
}

#[test]
fn spread_uses_nodes_without_the_attribute_last() {
    let mut sim = Sim::new();
    sim.add_node(labelled("n1", 1000, GI, &[("zone", "a")]));
    sim.add_node(labelled("n2", 1000, GI, &[("zone", "b")]));
    sim.add_node(labelled("n3", 8000, 8 * GI, &[]));
    let mut spec = sized("web", 5, 500);
    spec.placement.spread = Some(zone_spread(&[]));
    sim.put(spec);
    sim.step();
    assert_eq!(
        count_by_node(&sim, "web"),
        BTreeMap::from([
            ("n1".to_owned(), 2),
            ("n2".to_owned(), 2),
            ("n3".to_owned(), 1)
        ])
    );
}

#[test]
fn binpack_fills_one_node_and_spread_strategy_uses_the_emptiest() {
    let run = |strategy: Strategy| {
        let mut sim = Sim::new();
        for id in ["n1", "n2", "n3"] {
            sim.add_node(node(id, 4000, 4 * GI));
        }
        let mut spec = sized("web", 4, 100);
        spec.placement.strategy = strategy;
        sim.put(spec);
        sim.step();
        nodes_of(&sim, "web")
    };
    assert_eq!(run(Strategy::Binpack), vec!["n1", "n1", "n1", "n1"]);
    assert_eq!(run(Strategy::Spread), vec!["n1", "n2", "n3", "n1"]);
}

#[test]
fn spread_strategy_prefers_the_node_with_most_free_memory() {
    let mut sim = Sim::new();
    sim.add_node(node("n1", 4000, 2 * GI));
    sim.add_node(node("n2", 1000, 4 * GI));
    let mut spec = sized("web", 1, 100);
    spec.placement.strategy = Strategy::Spread;
    sim.put(spec);
    sim.step();
    assert_eq!(nodes_of(&sim, "web"), vec!["n2"]);
}

#[test]
fn max_per_node_counts_running_and_new_tasks() {
    let mut sim = Sim::new();
    sim.add_node(node("n1", 4000, 4 * GI));
    sim.add_node(node("n2", 4000, 4 * GI));
    sim.put(sized("web", 1, 100));
    sim.inject(running_on("web.0.000000000001", "web", 0, "n1", 100));
    let mut spec = sized("web", 5, 100);
    spec.placement.max_per_node = Some(2);
    sim.put(spec);
    let out = sim.step();
    assert_eq!(
        count_by_node(&sim, "web"),
        BTreeMap::from([("n1".to_owned(), 2), ("n2".to_owned(), 2)])
    );
    assert_eq!(
        pending_messages(&sim, "web"),
        vec!["no node fits: 2 nodes: max_per_node 2 reached"]
    );
    assert_eq!(out.plan.unplaced.len(), 1);
    assert_eq!(sim.pass(), PlanOutput::default());
}

#[test]
fn static_ports_conflict_with_running_tasks_and_each_other() {
    let mut sim = Sim::new();
    sim.add_node(node("n1", 4000, 4 * GI));
    sim.add_node(node("n2", 4000, 4 * GI));
    sim.add_node(node("n3", 4000, 4 * GI));
    // Another job holds 8080 on n1.
    sim.put(sized("other", 1, 100));
    let mut holder = running_on("other.0.000000000001", "other", 0, "n1", 100);
    holder.ports = BTreeMap::from([("http".to_owned(), 8080)]);
    sim.inject(holder);
    let mut spec = sized("web", 3, 100);
    spec.task.ports = vec![port("http", Some(8080)), port("admin", None)];
    sim.put(spec);
    sim.step();
    assert_eq!(nodes_of(&sim, "web"), vec!["n2", "n3", "-"]);
    let ports: Vec<BTreeMap<String, u16>> = sim
        .live("web")
        .iter()
        .filter(|t| t.node.is_some())
        .map(|t| t.ports.clone())
        .collect();
    let expected = BTreeMap::from([("admin".to_owned(), 20000), ("http".to_owned(), 8080)]);
    assert_eq!(ports, vec![expected.clone(), expected]);
    assert_eq!(
        pending_messages(&sim, "web"),
        vec!["no node fits: 3 nodes: port 8080 in use"]
    );
    assert_eq!(sim.pass(), PlanOutput::default());
}

#[test]
fn dynamic_ports_take_the_lowest_free_ports() {
    let mut sim = Sim::new();
    sim.add_node(node("n1", 4000, 4 * GI));
    sim.put(sized("other", 1, 100));
    let mut holder = running_on("other.0.000000000001", "other", 0, "n1", 100);
    holder.ports = BTreeMap::from([("a".to_owned(), 20000), ("b".to_owned(), 20002)]);
    sim.inject(holder);
    let mut spec = sized("web", 2, 100);
    // A static port inside the dynamic range is not handed out again.
    spec.task.ports = vec![port("x", None), port("y", None)];
    sim.put(spec);
    let mut fixed = sized("fixed", 1, 100);
    fixed.task.ports = vec![port("p", Some(20003))];
    sim.put(fixed);
    sim.step();
    let mut got: Vec<Vec<u16>> = sim
        .live("web")
        .iter()
        .map(|t| t.ports.values().copied().collect())
        .collect();
    got.sort();
    assert_eq!(got, vec![vec![20001, 20004], vec![20005, 20006]]);
}

#[test]
fn pending_tasks_get_their_ports_when_placed() {
    let mut sim = Sim::new();
    let mut spec = sized("web", 1, 100);
    spec.task.ports = vec![port("http", Some(8080)), port("dyn", None)];
    sim.put(spec);
    sim.step();
    assert_eq!(nodes_of(&sim, "web"), vec!["-"]);
    sim.add_node(node("n1", 4000, 4 * GI));
    let out = sim.step();
    assert_eq!(out.plan.place.len(), 1);
    let expected = BTreeMap::from([("dyn".to_owned(), 20000), ("http".to_owned(), 8080)]);
    assert_eq!(out.plan.place[0].ports, expected);
    assert_eq!(sim.live("web")[0].ports, expected);
}

#[test]
fn higher_priority_jobs_are_placed_first_when_capacity_is_short() {
    let mut sim = Sim::new();
    sim.add_node(node("n1", 1000, 4 * GI));
    let mut low = sized("a-low", 2, 400);
    low.placement.priority = 10;
    sim.put(low);
    let mut high = sized("z-high", 2, 400);
    high.placement.priority = 90;
    sim.put(high);
    sim.step();
    assert_eq!(nodes_of(&sim, "z-high"), vec!["n1", "n1"]);
    assert_eq!(nodes_of(&sim, "a-low"), vec!["-", "-"]);
    assert_eq!(
        pending_messages(&sim, "a-low"),
        vec!["no node fits: 1 node: insufficient cpu"; 2]
    );
}

/// n1 full of `low` (priority 10) tasks; `high` (priority 60, 1 task of
/// `cpu_millis`) arrives.
fn full_node_then_high(preempt: bool, high_priority: u32, cpu_millis: u64) -> Sim {
    let mut sim = Sim::new();
    sim.add_node(node("n1", 1000, 4 * GI));
    let mut low = sized("low", 2, 500);
    low.placement.priority = 10;
    sim.put(low);
    sim.converge();
    let mut high = sized("high", 1, cpu_millis);
    high.placement.priority = high_priority;
    high.placement.preempt = preempt;
    sim.put(high);
    sim
}

#[test]
fn preemption_evicts_a_lower_priority_task_and_places_after_it_stops() {
    let mut sim = full_node_then_high(true, 60, 500);
    let out = sim.pass();
    let high = &out.plan.create[0];
    assert_eq!(high.node, None);
    assert_eq!(
        high.status.message,
        "no node fits: 1 node: insufficient cpu; waiting for stopping tasks to free room"
    );
    assert_eq!(out.plan.stop.len(), 1, "{:?}", out.plan.stop);
    let victim = out.plan.stop[0].task.clone();
    assert_eq!(sim.state.task(&victim).map(|t| t.job.as_str()), Some("low"));
    assert_eq!(
        out.plan.stop[0],
        PlanStop {
            task: victim.clone(),
            reason: format!("preempted by task {} of job high (priority 60)", high.id),
            preempted_by: Some(high.id.clone()),
        }
    );
    let high_id = high.id.clone();
    let now = sim.now;
    let events = sim
        .state
        .apply(Command::ApplyPlan {
            plan: out.plan,
            now,
        })
        .expect("applies");
    assert!(events.contains(&Event::TaskPreempted {
        id: victim.clone(),
        by: high_id.clone(),
    }));
    // While the victim stops, nothing more is evicted and nothing changes.
    assert_eq!(sim.pass(), PlanOutput::default());
    sim.agents_ack();
    let out = sim.step();
    assert_eq!(
        out.plan.place,
        vec![PlanPlacement {
            task: high_id,
            node: NodeId("n1".to_owned()),
            ports: BTreeMap::new(),
        }]
    );
    // The victim's replacement waits: it may not evict anything back.
    assert_eq!(
        pending_messages(&sim, "low"),
        vec!["no node fits: 1 node: insufficient cpu"]
    );
    sim.agents_ack();
    assert_eq!(sim.pass(), PlanOutput::default());
}

#[test]
fn preemption_needs_preempt_and_a_strictly_higher_priority() {
    for (preempt, priority) in [(false, 90), (true, 10)] {
        let mut sim = full_node_then_high(preempt, priority, 500);
        let out = sim.step();
        assert!(
            out.plan.stop.is_empty(),
            "{preempt} {priority}: {:?}",
            out.plan.stop
        );
        assert_eq!(
            pending_messages(&sim, "high"),
            vec!["no node fits: 1 node: insufficient cpu"]
        );
    }
}

#[test]
fn preemption_evicts_nothing_when_even_every_lower_task_would_not_do() {
    let mut sim = full_node_then_high(true, 60, 1500);
    let out = sim.step();
    assert!(out.plan.stop.is_empty());
    assert_eq!(
        pending_messages(&sim, "high"),
        vec!["no node fits: 1 node: insufficient cpu"]
    );
}

#[test]
fn preemption_picks_the_lowest_priorities_then_the_fewest_tasks() {
    let mut sim = Sim::new();
    for id in ["n1", "n2", "n3"] {
        sim.add_node(node(id, 1000, 4 * GI));
    }
    for (name, priority, replicas, cpu) in [
        ("mid", 30, 1, 1000),
        ("low", 10, 2, 500),
        ("big", 10, 1, 1000),
    ] {
        let mut spec = sized(name, replicas, cpu);
        spec.placement.priority = priority;
        sim.put(spec);
    }
    sim.converge();
    // mid fills one node, low's two tasks another, big the third.
    let holder = |sim: &Sim, job: &str| count_by_node(sim, job).into_keys().collect::<Vec<_>>();
    assert_eq!(holder(&sim, "low").len(), 1);
    let mut high = sized("high", 1, 1000);
    high.placement.priority = 90;
    high.placement.preempt = true;
    sim.put(high);
    let out = sim.step();
    // One priority-10 task (big) beats two priority-10 tasks (low), which
    // beat one priority-30 task (mid).
    let stopped: Vec<&str> = out
        .plan
        .stop
        .iter()
        .filter_map(|s| sim.state.task(&s.task).map(|t| t.job.as_str()))
        .collect();
    assert_eq!(stopped, vec!["big"]);
}

#[test]
fn preemption_prefers_lower_priority_victims_over_fewer() {
    let mut sim = Sim::new();
    sim.add_node(node("n1", 1000, 4 * GI));
    sim.add_node(node("n2", 1000, 4 * GI));
    for (name, priority, replicas, cpu) in [("mid", 30, 1, 1000), ("low", 10, 2, 500)] {
        let mut spec = sized(name, replicas, cpu);
        spec.placement.priority = priority;
        sim.put(spec);
    }
    sim.converge();
    let mut high = sized("high", 1, 1000);
    high.placement.priority = 90;
    high.placement.preempt = true;
    sim.put(high);
    let out = sim.step();
    let mut stopped: Vec<&str> = out
        .plan
        .stop
        .iter()
        .filter_map(|s| sim.state.task(&s.task).map(|t| t.job.as_str()))
        .collect();
    stopped.sort();
    assert_eq!(stopped, vec!["low", "low"]);
}

#[test]
fn preemption_within_a_node_takes_the_lowest_priority_first() {
    let mut sim = Sim::new();
    sim.add_node(node("n1", 1000, 4 * GI));
    for (name, priority) in [("p10", 10), ("p20", 20)] {
        let mut spec = sized(name, 1, 500);
        spec.placement.priority = priority;
        sim.put(spec);
    }
    sim.converge();
    let mut high = sized("high", 1, 500);
    high.placement.priority = 90;
    high.placement.preempt = true;
    sim.put(high);
    let out = sim.step();
    let stopped: Vec<&str> = out
        .plan
        .stop
        .iter()
        .filter_map(|s| sim.state.task(&s.task).map(|t| t.job.as_str()))
        .collect();
    assert_eq!(stopped, vec!["p10"]);
}

#[test]
fn preempting_tasks_of_one_pass_do_not_share_victims_or_evict_twice() {
    let mut sim = Sim::new();
    sim.add_node(node("n1", 1000, 4 * GI));
    sim.add_node(node("n2", 1000, 4 * GI));
    let mut low = sized("low", 4, 500);
    low.placement.priority = 10;
    sim.put(low);
    sim.converge();
    let mut high = sized("high", 3, 500);
    high.placement.priority = 90;
    high.placement.preempt = true;
    sim.put(high);
    let out = sim.step();
    let victims: BTreeSet<TaskId> = out.plan.stop.iter().map(|s| s.task.clone()).collect();
    assert_eq!(victims.len(), 3, "{:?}", out.plan.stop);
    // Victims stopping: the next passes wait.
    assert_eq!(sim.pass(), PlanOutput::default());
    sim.agents_ack();
    sim.step();
    assert_eq!(
        nodes_of(&sim, "high").iter().filter(|n| *n != "-").count(),
        3
    );
    sim.agents_ack();
    assert_eq!(sim.pass(), PlanOutput::default());
    assert_eq!(count_by_node(&sim, "low").values().sum::<usize>(), 1);
}

#[test]
fn a_preempting_task_waits_for_room_already_being_freed() {
    let mut sim = full_node_then_high(false, 60, 500);
    // Scale low down: its stopping task will free the room high needs.
    let mut low = sized("low", 1, 500);
    low.placement.priority = 10;
    sim.put(low);
    sim.step();
    let mut high = sized("high", 1, 500);
    high.placement.priority = 60;
    high.placement.preempt = true;
    sim.put(high);
    let out = sim.step();
    assert!(out.plan.stop.is_empty(), "{:?}", out.plan.stop);
    assert_eq!(
        pending_messages(&sim, "high"),
        vec!["no node fits: 1 node: insufficient cpu; waiting for stopping tasks to free room"]
    );
}

#[test]
fn explanations_count_every_reason() {
    let mut sim = Sim::new();
    let zone_a = [("zone", "a")];
    sim.add_node(labelled("n1", 4000, 4 * GI, &zone_a));
    sim.add_node(labelled("n2", 4000, 4 * GI, &zone_a));
    sim.add_node(labelled("n3", 4000, 4 * GI, &zone_a));
    let mut no_raw = labelled("n4", 4000, 4 * GI, &zone_a);
    no_raw.drivers.clear();
    sim.add_node(no_raw);
    sim.add_node(labelled("n5", 4000, 4 * GI, &[("zone", "b")]));
    for small in ["n6", "n7", "n8"] {
        sim.add_node(labelled(small, 4000, 32 * MI, &zone_a));
    }
    sim.add_node(labelled("n9", 4000, 4 * GI, &zone_a));
    sim.add_node(labelled("na", 4000, 4 * GI, &zone_a));
    sim.node_down("n1");
    sim.set_availability("n2", NodeAvailability::Drain);
    sim.set_availability("n3", NodeAvailability::Pause);
    // n9: another job holds port 8080; na: web's own task, at its limit.
    sim.put(sized("other", 1, 100));
    let mut holder = running_on("other.0.000000000001", "other", 0, "n9", 100);
    holder.ports = BTreeMap::from([("http".to_owned(), 8080)]);
    sim.inject(holder);
    let mut spec = sized("web", 1, 100);
    spec.task.ports = vec![port("http", Some(8080))];
    sim.put(spec.clone());
    let mut own = running_on("web.0.000000000002", "web", 0, "na", 100);
    own.ports = BTreeMap::from([("http".to_owned(), 8080)]);
    sim.inject(own);
    spec.kind = baton_spec::JobKind::Service { replicas: 2 };
    spec.placement.constraints = vec![constraint("node.labels.zone == a")];
    spec.placement.max_per_node = Some(1);
    sim.put(spec);
    sim.step();
    assert_eq!(
        pending_messages(&sim, "web"),
        vec![
            "no node fits: 3 nodes: insufficient memory; \
             1 node: constraint node.labels.zone == a not met; 1 node: down; \
             1 node: draining; 1 node: max_per_node 1 reached; 1 node: no raw driver; \
             1 node: paused; 1 node: port 8080 in use"
        ]
    );
    assert_eq!(sim.pass(), PlanOutput::default());
}

#[test]
fn global_tasks_respect_ports_on_their_node() {
    let mut sim = Sim::new();
    sim.add_node(node("n1", 4000, 4 * GI));
    sim.add_node(node("n2", 4000, 4 * GI));
    sim.put(sized("other", 1, 100));
    let mut holder = running_on("other.0.000000000001", "other", 0, "n1", 100);
    holder.ports = BTreeMap::from([("http".to_owned(), 9000)]);
    sim.inject(holder);
    let mut spec = crate::testkit::global("agent");
    spec.task.ports = vec![port("http", Some(9000))];
    sim.put(spec);
    sim.step();
    let placed: Vec<String> = count_by_node(&sim, "agent").into_keys().collect();
    assert_eq!(placed, vec!["n2"]);
    assert_eq!(
        pending_messages(&sim, "agent"),
        vec!["cannot run on node n1: port 9000 in use"]
    );
    assert_eq!(sim.pass(), PlanOutput::default());
}

#[test]
fn an_update_does_not_stop_the_old_task_where_the_new_one_may_not_go() {
    let mut sim = Sim::new();
    sim.add_node(labelled("n1", 150, 1024 * MI, &[("zone", "a")]));
    sim.put(service("web", 1));
    sim.converge();
    // Version 2 may only run in zone b, which no node is in: stopping the old
    // task would free room where the new one is not allowed.
    let mut spec = service("web", 1);
    spec.task.command.push("--v2".to_owned());
    spec.placement
        .constraints
        .push(constraint("node.labels.zone == b"));
    sim.put(spec);
    let out = sim.step();
    assert!(
        out.plan.stop.is_empty(),
        "the running task keeps serving: {:?}",
        out.plan.stop
    );
    assert_eq!(sim.live("web").len(), 2, "old running, new pending");
}

// ---- Review: regressions found in the scheduler rewrite.

/// A rolling update under a zone spread ends as balanced as it started: the
/// old task a new one replaces does not count against its zone.
#[test]
fn a_rolling_update_keeps_the_spread_balanced() {
    let mut sim = Sim::new();
    sim.add_node(labelled("n1", 4000, 4 * GI, &[("zone", "a")]));
    sim.add_node(labelled("n2", 4000, 4 * GI, &[("zone", "b")]));
    let mut spec = sized("web", 2, 100);
    spec.placement.spread = Some(zone_spread(&[]));
    sim.put(spec.clone());
    sim.converge();
    assert_eq!(
        count_by_zone(&sim, "web"),
        BTreeMap::from([("a".to_owned(), 1), ("b".to_owned(), 1)])
    );
    spec.task.command.push("--v2".to_owned());
    sim.put(spec);
    sim.converge();
    assert_eq!(
        count_by_zone(&sim, "web"),
        BTreeMap::from([("a".to_owned(), 1), ("b".to_owned(), 1)])
    );
}

/// Room set aside for a preempting task counts against its job's
/// `max_per_node`: a second task of the job does not evict on a node the job
/// may no longer use.
#[test]
fn preemption_does_not_evict_where_max_per_node_leaves_no_place() {
    let mut sim = Sim::new();
    sim.add_node(node("n1", 1000, 4 * GI));
    sim.add_node(node("n2", 1000, 4 * GI));
    let mut low = sized("low", 2, 500);
    low.placement.priority = 10;
    low.placement.constraints = vec![constraint("node.id == n1")];
    sim.put(low);
    let mut mid = sized("mid", 1, 1000);
    mid.placement.priority = 20;
    mid.placement.constraints = vec![constraint("node.id == n2")];
    sim.put(mid);
    sim.converge();
    assert_eq!(
        count_by_node(&sim, "low").into_keys().collect::<Vec<_>>(),
        vec!["n1"]
    );
    assert_eq!(
        count_by_node(&sim, "mid").into_keys().collect::<Vec<_>>(),
        vec!["n2"]
    );
    let mut high = sized("high", 2, 500);
    high.placement.priority = 90;
    high.placement.preempt = true;
    high.placement.max_per_node = Some(1);
    sim.put(high);
    let out = sim.step();
    let mut stopped: Vec<&str> = out
        .plan
        .stop
        .iter()
        .filter_map(|s| sim.state.task(&s.task).map(|t| t.job.as_str()))
        .collect();
    stopped.sort_unstable();
    assert_eq!(stopped, vec!["low", "mid"]);
    // The victims stop; each high task takes the room set aside for it.
    sim.agents_ack();
    sim.converge();
    assert_eq!(
        count_by_node(&sim, "high").len(),
        2,
        "{:?}",
        pending_messages(&sim, "high")
    );
}

#[test]
fn an_update_does_not_stop_the_old_task_when_its_new_port_is_held_by_another() {
    let mut sim = Sim::new();
    sim.add_node(node("n1", 300, 1024 * MI));
    // Another job holds port 9001 on the only node.
    let mut holder = service("holder", 1);
    holder.task.ports.push(baton_spec::PortSpec {
        name: "p".to_owned(),
        static_port: Some(9001),
        publish: false,
    });
    sim.put(holder);
    let mut agent = crate::testkit::global("agent");
    agent.task.resources = res(150, 64 * MI);
    sim.put(agent.clone());
    sim.converge();
    // Version 2 needs port 9001 too: stopping version 1 would not help.
    agent.task.command.push("--v2".to_owned());
    agent.task.ports.push(baton_spec::PortSpec {
        name: "p".to_owned(),
        static_port: Some(9001),
        publish: false,
    });
    sim.put(agent);
    let out = sim.step();
    assert!(out.plan.stop.is_empty(), "{:?}", out.plan.stop);
    assert_eq!(sim.live("agent").len(), 2, "old running, new pending");
}
