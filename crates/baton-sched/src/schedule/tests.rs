//! Tests of [`schedule`] alone, on hand-made tasks.

use baton_state::{NodeId, Slot, Task, TaskId, TaskState};

use super::*;
use crate::testkit::{GI, MI, Sim, T0, node, res, service, task};

fn new_task(id: &str, cpu_millis: u64, memory_bytes: u64) -> Task {
    let mut t = task(id, "web", 1, Slot::Index(0), TaskState::Pending, None);
    t.resources = res(cpu_millis, memory_bytes);
    t
}

fn pinned(id: &str, node: &str) -> Task {
    task(
        id,
        "agent",
        1,
        Slot::Node(NodeId(node.to_owned())),
        TaskState::Pending,
        None,
    )
}

/// Where each new task went (`-` if nowhere) and its message.
fn placed(create: &[Task]) -> Vec<String> {
    create
        .iter()
        .map(|t| {
            let node = t.node.as_ref().map_or("-", |n| n.0.as_str());
            let state = t.status.state.as_str();
            if t.status.message.is_empty() {
                format!("{} -> {node} {state}", t.id)
            } else {
                format!("{} -> {node} {state}: {}", t.id, t.status.message)
            }
        })
        .collect()
}

/// Nodes with different free resources: n1 empty, n2 half full, n3 nearly full.
fn uneven() -> Sim {
    let mut sim = Sim::new();
    for id in ["n1", "n2", "n3"] {
        sim.add_node(node(id, 1000, GI));
    }
    sim.put(service("web", 1));
    sim.inject(with(
        task(
            "web.9.000000000002",
            "web",
            1,
            Slot::Index(9),
            TaskState::Running,
            Some("n2"),
        ),
        500,
        512 * MI,
    ));
    sim.inject(with(
        task(
            "web.9.000000000003",
            "web",
            1,
            Slot::Index(8),
            TaskState::Running,
            Some("n3"),
        ),
        800,
        896 * MI,
    ));
    sim
}

fn with(mut t: Task, cpu_millis: u64, memory_bytes: u64) -> Task {
    t.resources = res(cpu_millis, memory_bytes);
    t
}

#[test]
fn best_fit_picks_the_fullest_node_that_fits() {
    let sim = uneven();
    let mut create = vec![
        new_task("a", 300, 256 * MI), // n3 has 128Mi: too little; n2 has 512Mi
        new_task("b", 100, 64 * MI),  // n3 fits
        new_task("c", 900, 900 * MI), // only n1
    ];
    let out = schedule(&sim.state, sim.now, &mut create, &[]);
    assert_eq!(
        placed(&create),
        vec!["a -> n2 assigned", "b -> n3 assigned", "c -> n1 assigned"]
    );
    assert!(out.place.is_empty() && out.unplaced.is_empty());
}

#[test]
fn ties_go_to_the_lowest_node_id() {
    let mut sim = Sim::new();
    for id in ["n3", "n1", "n2"] {
        sim.add_node(node(id, 1000, GI));
    }
    let mut create = vec![new_task("a", 100, MI)];
    schedule(&sim.state, sim.now, &mut create, &[]);
    assert_eq!(placed(&create), vec!["a -> n1 assigned"]);
}

#[test]
fn node_short_of_cpu_is_skipped() {
    let sim = uneven();
    // n3 has the least free memory but only 200m CPU.
    let mut create = vec![new_task("a", 300, 64 * MI)];
    schedule(&sim.state, sim.now, &mut create, &[]);
    assert_eq!(placed(&create), vec!["a -> n2 assigned"]);
}

#[test]
fn placements_in_one_pass_add_up() {
    let mut sim = Sim::new();
    sim.add_node(node("n1", 1000, GI));
    let mut create = vec![
        new_task("a", 400, MI),
        new_task("b", 400, MI),
        new_task("c", 400, MI),
        new_task("d", 200, MI),
    ];
    let out = schedule(&sim.state, sim.now, &mut create, &[]);
    assert_eq!(
        placed(&create),
        vec![
            "a -> n1 assigned",
            "b -> n1 assigned",
            "c -> - pending: no node fits: 1 node: insufficient cpu",
            "d -> n1 assigned",
        ]
    );
    assert!(out.is_unplaced(&TaskId("c".to_owned())));
}

#[test]
fn pinned_tasks_go_only_to_their_node_and_first() {
    let mut sim = Sim::new();
    sim.add_node(node("n1", 1000, GI));
    sim.add_node(node("n2", 1000, GI));
    // The unpinned task comes first in the list but is placed after the pinned
    // ones, so it does not take the room n1's global task needs.
    let mut create = vec![
        new_task("a", 1000, MI),
        pinned("agent.n1", "n1"),
        pinned("agent.n2", "n2"),
    ];
    create[1].resources = res(100, MI);
    create[2].resources = res(1000, 2 * GI);
    schedule(&sim.state, sim.now, &mut create, &[]);
    assert_eq!(
        placed(&create),
        vec![
            "a -> n2 assigned",
            "agent.n1 -> n1 assigned",
            // Explained against the pass's final free resources (`a` took n2's CPU).
            "agent.n2 -> - pending: cannot run on node n2: insufficient cpu and memory",
        ]
    );
}

#[test]
fn existing_pending_tasks_are_placed_or_explained_once() {
    let mut sim = Sim::new();
    sim.add_node(node("n1", 1000, GI));
    sim.put(service("web", 1));
    sim.inject(with(
        task("fits", "web", 1, Slot::Index(0), TaskState::Pending, None),
        100,
        MI,
    ));
    sim.inject(with(
        task("huge", "web", 1, Slot::Index(1), TaskState::Pending, None),
        5000,
        MI,
    ));
    let fits = sim
        .state
        .task(&TaskId("fits".to_owned()))
        .expect("task")
        .clone();
    let mut huge = sim
        .state
        .task(&TaskId("huge".to_owned()))
        .expect("task")
        .clone();
    let out = schedule(&sim.state, sim.now, &mut [], &[&fits, &huge]);
    assert_eq!(
        out.place,
        vec![PlanPlacement {
            ports: Default::default(),
            task: TaskId("fits".to_owned()),
            node: NodeId("n1".to_owned()),
        }]
    );
    let reason = "no node fits: 1 node: insufficient cpu".to_owned();
    assert_eq!(
        out.unplaced,
        vec![PlanUnplaced {
            task: TaskId("huge".to_owned()),
            reason: reason.clone(),
        }]
    );
    // Same text already on the task: no churn.
    huge.status.message = reason;
    let out = schedule(&sim.state, sim.now, &mut [], &[&huge]);
    assert_eq!(out.unplaced, vec![]);
    assert!(out.is_unplaced(&huge.id));
}

#[test]
fn tasks_in_backoff_are_left_alone() {
    let mut sim = Sim::new();
    sim.add_node(node("n1", 1000, GI));
    let mut waiting = new_task("a", 100, MI);
    waiting.not_before = Some(Timestamp(T0.0 + 1));
    let mut create = vec![waiting];
    let out = schedule(&sim.state, sim.now, &mut create, &[]);
    assert_eq!(placed(&create), vec!["a -> - pending"]);
    assert!(!out.is_unplaced(&TaskId("a".to_owned())));
}

#[test]
fn a_failed_shape_fails_larger_requests_but_not_smaller() {
    let sim = uneven();
    let mut create = vec![
        new_task("a", 1100, MI),
        new_task("b", 1200, 2 * MI),
        new_task("c", 1000, MI),
    ];
    schedule(&sim.state, sim.now, &mut create, &[]);
    assert_eq!(
        placed(&create),
        vec![
            "a -> - pending: no node fits: 3 nodes: insufficient cpu",
            "b -> - pending: no node fits: 3 nodes: insufficient cpu",
            "c -> n1 assigned",
        ]
    );
}

#[test]
fn no_nodes_at_all() {
    let sim = Sim::new();
    let mut create = vec![new_task("a", 100, MI)];
    schedule(&sim.state, sim.now, &mut create, &[]);
    assert_eq!(
        placed(&create),
        vec!["a -> - pending: no node fits: no nodes registered"]
    );
}

#[test]
fn frees_room_counts_the_released_resources() {
    let sim = uneven();
    let out = schedule(&sim.state, sim.now, &mut [], &[]);
    let mut spec = service("web", 1);
    spec.task.resources = res(500, 512 * MI);
    let old = sim
        .state
        .task(&TaskId("web.9.000000000003".to_owned()))
        .expect("the task on n3")
        .clone();
    assert!(out.frees_room(&sim.state, &spec, &old));
    // A task holding nothing frees nothing.
    let mut empty = old.clone();
    empty.resources = res(0, 0);
    assert!(!out.frees_room(&sim.state, &spec, &empty));
    // Nor does it help a job whose constraints exclude the node.
    spec.placement
        .constraints
        .push(baton_spec::Constraint::parse("node.id != n3").expect("constraint"));
    assert!(!out.frees_room(&sim.state, &spec, &old));
}

/// A spread over `node.id` has a value per node: ranking the values must not
/// cost a sort of every node for every task (12,000 tasks took 12 s in a
/// debug build; now well under one).
#[test]
fn spread_over_node_ids_puts_one_task_on_each_node() {
    // One spread value per node: the case that used to cost nodes × tasks
    // (its speed is for benchmarks; this checks the outcome).
    let mut sim = Sim::new();
    for i in 0..2_000 {
        sim.add_node(node(&format!("n{i:05}"), 100_000, 64 * GI));
    }
    let mut spec = crate::testkit::service("web", 2_000);
    spec.placement.spread = Some(baton_spec::Spread {
        attribute: baton_spec::Attribute::Id,
        targets: Vec::new(),
    });
    sim.put(spec);
    let out = sim.pass();
    let nodes: BTreeSet<_> = out
        .plan
        .create
        .iter()
        .filter_map(|t| t.node.clone())
        .collect();
    assert_eq!(nodes.len(), 2_000, "one task per node");
}
