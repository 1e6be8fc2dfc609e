//! Property tests of placement: random clusters (capacities, zones, labels,
//! drivers, availability) and random jobs (constraints, spread, affinities,
//! ports, `max_per_node`, priority, preemption), placed to a fixed point with
//! [`crate::plan`] and `State::apply`, agents starting and stopping whatever
//! they are told. Checked after every pass: no node over-committed, every
//! placed task on a node its job allows, no host port held twice on a node,
//! `max_per_node` respected, preemption only of lower priorities by jobs that
//! may preempt, and plans that apply without a stale item. At the fixed
//! point: no pending task that a node could take (checked against a plain
//! scan, not the scheduler's indexes), and, where capacity allows, spread
//! within one across zones and one global task on every eligible node.

use std::collections::{BTreeMap, BTreeSet};

use baton_spec::{
    Affinity, Attribute, Constraint, JobKind, JobSpec, PortSpec, Resources, Spread, SpreadTarget,
    Strategy as Ranking,
};
use baton_state::{Command, Event, NodeAvailability, NodeId, Slot, State, Task, TaskId};
use proptest::prelude::*;

use crate::feasible;
use crate::plan;
use crate::testkit::{MI, Sim, node, res, service, spec};

const ZONES: [&str; 3] = ["a", "b", "c"];

#[derive(Clone, Debug)]
struct NodeGen {
    cpu_millis: u64,
    memory_mi: u64,
    disk_mi: u64,
    /// Index into [`ZONES`], or none.
    zone: Option<usize>,
    ssd: bool,
    has_driver: bool,
    availability: NodeAvailability,
    down: bool,
}

#[derive(Clone, Debug)]
struct JobGen {
    global: bool,
    replicas: u32,
    cpu_millis: u64,
    memory_mi: u64,
    disk_mi: u64,
    /// Index into [`CONSTRAINTS`].
    constraint: usize,
    affinity: Option<(usize, i32)>,
    /// None, even spread, or a target for zone a.
    spread: Option<Option<u32>>,
    static_port: Option<u16>,
    dynamic_ports: usize,
    max_per_node: Option<u32>,
    priority: u32,
    preempt: bool,
    strategy: Ranking,
}

/// Constraints the generated jobs pick from (the first: none).
const CONSTRAINTS: [&str; 6] = [
    "",
    "node.labels.zone == a",
    "node.labels.zone != b",
    "node.labels.zone in (a, c)",
    "node.labels.ssd exists",
    "node.labels.ssd not exists",
];

fn node_gen() -> impl Strategy<Value = NodeGen> {
    (
        (1u64..=8).prop_map(|c| c * 500),
        (1u64..=8).prop_map(|m| m * 256),
        (0u64..=4).prop_map(|d| d * 512),
        prop::option::weighted(0.85, 0usize..3),
        any::<bool>(),
        prop::bool::weighted(0.9),
        prop_oneof![
            8 => Just(NodeAvailability::Active),
            1 => Just(NodeAvailability::Pause),
            1 => Just(NodeAvailability::Drain),
        ],
        prop::bool::weighted(0.1),
    )
        .prop_map(
            |(cpu_millis, memory_mi, disk_mi, zone, ssd, has_driver, availability, down)| NodeGen {
                cpu_millis,
                memory_mi,
                disk_mi,
                zone,
                ssd,
                has_driver,
                availability,
                down,
            },
        )
}

fn job_gen() -> impl Strategy<Value = JobGen> {
    (
        (
            prop::bool::weighted(0.2),
            0u32..8,
            (1u64..=20).prop_map(|c| c * 50),
            (1u64..=16).prop_map(|m| m * 32),
            prop_oneof![Just(0u64), Just(128), Just(700)],
            0..CONSTRAINTS.len(),
            prop::option::weighted(0.3, (1..CONSTRAINTS.len(), -50i32..=50)),
        ),
        (
            prop::option::weighted(0.4, prop::option::weighted(0.3, 0u32..=100)),
            prop::option::weighted(0.3, prop_oneof![Just(8080u16), Just(8081), Just(20000)]),
            0usize..3,
            prop::option::weighted(0.3, 1u32..3),
            0u32..=100,
            prop::bool::weighted(0.4),
            prop_oneof![Just(Ranking::Binpack), Just(Ranking::Spread)],
        ),
    )
        .prop_map(
            |(
                (global, replicas, cpu_millis, memory_mi, disk_mi, constraint, affinity),
                (spread, static_port, dynamic_ports, max_per_node, priority, preempt, strategy),
            )| JobGen {
                global,
                replicas,
                cpu_millis,
                memory_mi,
                disk_mi,
                constraint,
                affinity: affinity.map(|(c, w)| (c, if w == 0 { 1 } else { w })),
                spread,
                static_port,
                dynamic_ports,
                max_per_node,
                priority,
                preempt,
                strategy,
            },
        )
}

fn parse(text: &str) -> Constraint {
    Constraint::parse(text).expect("generated constraints parse")
}

fn job_spec(index: usize, job: &JobGen) -> JobSpec {
    let kind = if job.global {
        JobKind::Global
    } else {
        JobKind::Service {
            replicas: job.replicas,
        }
    };
    let mut spec = spec(&format!("j{index}"), kind);
    spec.task.resources = Resources {
        cpu_millis: job.cpu_millis,
        memory_bytes: job.memory_mi * MI,
        disk_bytes: job.disk_mi * MI,
    };
    if job.constraint > 0 {
        spec.placement.constraints = vec![parse(CONSTRAINTS[job.constraint])];
    }
    if let Some((c, weight)) = job.affinity {
        spec.placement.affinities = vec![Affinity {
            expr: parse(CONSTRAINTS[c]),
            weight,
        }];
    }
    spec.placement.spread = job.spread.map(|target| Spread {
        attribute: Attribute::Label("zone".to_owned()),
        targets: target
            .map(|percent| SpreadTarget {
                value: "a".to_owned(),
                percent,
            })
            .into_iter()
            .collect(),
    });
    if let Some(port) = job.static_port {
        spec.task.ports.push(PortSpec {
            name: "fixed".to_owned(),
            static_port: Some(port),
            publish: true,
        });
    }
    for i in 0..job.dynamic_ports {
        spec.task.ports.push(PortSpec {
            name: format!("dyn{i}"),
            static_port: None,
            publish: false,
        });
    }
    spec.placement.max_per_node = job.max_per_node;
    spec.placement.priority = job.priority;
    spec.placement.preempt = job.preempt;
    spec.placement.strategy = job.strategy;
    spec
}

fn build(nodes: &[NodeGen], jobs: &[JobSpec], seed: u64) -> Sim {
    let mut sim = Sim::new();
    sim.seed = seed;
    for (i, node_gen) in nodes.iter().enumerate() {
        let id = format!("n{i}");
        let mut n = node(&id, node_gen.cpu_millis, node_gen.memory_mi * MI);
        n.capacity.disk_bytes = node_gen.disk_mi * MI;
        if let Some(zone) = node_gen.zone {
            n.labels.insert("zone".to_owned(), ZONES[zone].to_owned());
        }
        if node_gen.ssd {
            n.labels.insert("ssd".to_owned(), "yes".to_owned());
        }
        if !node_gen.has_driver {
            n.drivers.clear();
        }
        n.availability = node_gen.availability;
        sim.add_node(n);
        if node_gen.down {
            sim.node_down(&id);
        }
    }
    for spec in jobs {
        sim.put(spec.clone());
    }
    sim
}

/// Safety after every applied pass.
fn check_safety(state: &State) -> Result<(), TestCaseError> {
    let mut used: BTreeMap<&NodeId, Resources> = BTreeMap::new();
    let mut ports: BTreeMap<(&NodeId, u16), &TaskId> = BTreeMap::new();
    let mut per_node: BTreeMap<(&str, &NodeId), u32> = BTreeMap::new();
    for task in state.tasks().filter(|t| t.is_active()) {
        let Some(n) = &task.node else { continue };
        let sum = used.entry(n).or_default();
        *sum = sum.saturating_add(&task.resources);
        for &port in task.ports.values() {
            if let Some(other) = ports.insert((n, port), &task.id) {
                prop_assert!(
                    false,
                    "port {} on {} held by {} and {}",
                    port,
                    n,
                    other,
                    task.id
                );
            }
        }
        *per_node.entry((task.job.as_str(), n)).or_default() += 1;
    }
    for (id, sum) in &used {
        let capacity = state.node(id).expect("known node").capacity;
        prop_assert!(
            sum.fits_in(&capacity),
            "node {} over-committed: {:?} > {:?}",
            id,
            sum,
            capacity
        );
    }
    for ((job, n), count) in per_node {
        let max = state.job(job).and_then(|j| j.spec.placement.max_per_node);
        prop_assert!(
            max.is_none_or(|max| count <= max),
            "job {} has {} tasks on {} (max {:?})",
            job,
            count,
            n,
            max
        );
    }
    for task in state.tasks().filter(|t| t.is_live()) {
        let (Some(n), Some(job)) = (&task.node, state.job(&task.job)) else {
            continue;
        };
        let node = state.node(n).expect("known node");
        let view = state.node_view(node);
        for c in &job.spec.placement.constraints {
            prop_assert!(c.matches(&view), "task {} on {} breaks {}", task.id, n, c);
        }
        if let Slot::Node(slot_node) = &task.slot {
            prop_assert_eq!(slot_node, n, "global task off its node");
        }
    }
    Ok(())
}

/// Whether a node could take the pending task now, by a plain scan of the
/// rules (independent of the scheduler's indexes and cuts).
fn room_for(state: &State, task: &Task) -> Option<NodeId> {
    let job = state.job(&task.job)?;
    let spec = &job.spec;
    state
        .nodes()
        .filter(|n| match &task.slot {
            Slot::Node(id) => id == &n.id,
            Slot::Index(_) => true,
        })
        .find(|n| {
            let in_use = state.ports_in_use(&n.id);
            let held = |p: u16| in_use.is_some_and(|ports| ports.contains(&p));
            let statics: Vec<u16> = spec
                .task
                .ports
                .iter()
                .filter_map(|p| p.static_port)
                .collect();
            let n_dynamic = spec.task.ports.len() - statics.len();
            let dynamic_free = (baton_spec::DYNAMIC_PORT_MIN..=baton_spec::DYNAMIC_PORT_MAX)
                .filter(|&p| !held(p) && !statics.contains(&p))
                .take(n_dynamic)
                .count();
            let on_node = state
                .tasks_of_node(&n.id)
                .filter(|t| t.is_active() && t.job == task.job)
                .count();
            feasible::takes_new(state, n, spec)
                && task.resources.fits_in(&state.free(n))
                && statics.iter().all(|&p| !held(p))
                && dynamic_free == n_dynamic
                && spec
                    .placement
                    .max_per_node
                    .is_none_or(|max| on_node < max as usize)
        })
        .map(|n| n.id.clone())
}

/// Passes, applied, with agents doing all their work, until nothing changes.
fn settle(sim: &mut Sim) -> Result<(), TestCaseError> {
    for _ in 0..60 {
        sim.seed += 1;
        let out = plan(&sim.state, sim.now, sim.seed);
        prop_assert_eq!(
            &out,
            &plan(&sim.state, sim.now, sim.seed),
            "not deterministic"
        );
        for stop in &out.plan.stop {
            let Some(by) = &stop.preempted_by else {
                continue;
            };
            let preemptor_job = out
                .plan
                .create
                .iter()
                .find(|t| &t.id == by)
                .or_else(|| sim.state.task(by))
                .map(|t| t.job.clone())
                .expect("the preempting task exists");
            let spec = &sim.state.job(&preemptor_job).expect("job").spec;
            let victim = sim.state.task(&stop.task).expect("victim exists");
            let victim_priority = sim
                .state
                .job(&victim.job)
                .map_or(0, |j| j.spec.placement.priority);
            prop_assert!(spec.placement.preempt, "{} preempted without preempt", by);
            prop_assert!(
                victim_priority < spec.placement.priority,
                "{} (priority {}) evicted {} (priority {})",
                by,
                spec.placement.priority,
                stop.task,
                victim_priority
            );
        }
        let now = sim.now;
        let events = sim
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
            "stale items in a fresh plan: {:?}",
            ignored
        );
        check_safety(&sim.state)?;
        let work = sim.agent_work();
        if out.plan.is_empty() && work.is_empty() {
            return Ok(());
        }
        for (id, state) in work {
            sim.report(&id, state, None);
        }
    }
    prop_assert!(false, "no fixed point in 60 passes");
    Ok(())
}

/// At the fixed point, every pending task is explained and no node could take it.
fn check_settled(state: &State) -> Result<(), TestCaseError> {
    for task in state.tasks().filter(|t| t.is_live() && t.node.is_none()) {
        prop_assert!(
            !task.status.message.is_empty(),
            "{} pending unexplained",
            task.id
        );
        prop_assert_eq!(
            room_for(state, task),
            None,
            "task {} pending ({}) although a node has room",
            &task.id,
            &task.status.message
        );
    }
    Ok(())
}

/// The zones a job may use: those on nodes that take its tasks.
fn zones_of(state: &State, spec: &JobSpec) -> BTreeSet<String> {
    state
        .nodes()
        .filter(|n| feasible::takes_new(state, n, spec))
        .filter_map(|n| n.label("zone").map(str::to_owned))
        .collect()
}

proptest! {
    // 1,024 cases of each take about a second in debug; PROPTEST_CASES
    // overrides for longer hunts.
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(1024),
        ..ProptestConfig::default()
    })]

    #[test]
    fn placement_is_safe_and_complete_on_random_clusters(
        nodes in prop::collection::vec(node_gen(), 0..8),
        jobs in prop::collection::vec(job_gen(), 1..6),
        seed in any::<u64>(),
    ) {
        let specs: Vec<JobSpec> = jobs.iter().enumerate().map(|(i, j)| job_spec(i, j)).collect();
        let mut sim = build(&nodes, &specs, seed);
        settle(&mut sim)?;
        check_settled(&sim.state)?;
        // A pass over the settled state, persisted and loaded, plans the same.
        let json = serde_json::to_string(&sim.state).expect("serialises");
        let loaded: State = serde_json::from_str(&json).expect("loads");
        prop_assert_eq!(plan(&sim.state, sim.now, 7), plan(&loaded, sim.now, 7));
    }

    #[test]
    fn spread_is_within_one_and_global_covers_every_eligible_node_when_room_allows(
        zones in prop::collection::vec(0usize..3, 1..9),
        ssd in prop::collection::vec(any::<bool>(), 9),
        jobs in prop::collection::vec(
            (0u32..12, 0..CONSTRAINTS.len(), prop::bool::weighted(0.25), 1u64..=4, any::<bool>()),
            1..5,
        ),
        seed in any::<u64>(),
    ) {
        // Every node can hold every task of every job at once.
        let specs: Vec<JobSpec> = jobs
            .iter()
            .enumerate()
            .map(|(i, &(replicas, constraint, global, cpu, spread_strategy))| {
                let mut job = if global {
                    spec(&format!("j{i}"), JobKind::Global)
                } else {
                    service(&format!("j{i}"), replicas)
                };
                job.task.resources = res(cpu * 10, MI);
                if constraint > 0 {
                    job.placement.constraints = vec![parse(CONSTRAINTS[constraint])];
                }
                job.placement.spread = Some(Spread {
                    attribute: Attribute::Label("zone".to_owned()),
                    targets: Vec::new(),
                });
                if spread_strategy {
                    job.placement.strategy = Ranking::Spread;
                }
                job.task.ports.push(PortSpec {
                    name: "dyn".to_owned(),
                    static_port: None,
                    publish: false,
                });
                job
            })
            .collect();
        let nodes: Vec<NodeGen> = zones
            .iter()
            .zip(&ssd)
            .map(|(&zone, &ssd)| NodeGen {
                cpu_millis: 100_000,
                memory_mi: 1024,
                disk_mi: 0,
                zone: Some(zone),
                ssd,
                has_driver: true,
                availability: NodeAvailability::Active,
                down: false,
            })
            .collect();
        let mut sim = build(&nodes, &specs, seed);
        settle(&mut sim)?;
        check_settled(&sim.state)?;
        for spec in &specs {
            let live: Vec<&Task> = sim.state.tasks_of_job(&spec.name).filter(|t| t.is_live()).collect();
            let allowed = sim.state.nodes().any(|n| feasible::takes_new(&sim.state, n, spec));
            prop_assert_eq!(
                live.iter().all(|t| t.node.is_some()),
                allowed || live.is_empty(),
                "{}: placed iff a node allows it",
                &spec.name
            );
            match spec.kind {
                JobKind::Global => {
                    let eligible: BTreeSet<NodeId> = sim
                        .state
                        .nodes()
                        .filter(|n| feasible::takes_new(&sim.state, n, spec))
                        .map(|n| n.id.clone())
                        .collect();
                    let mut on: BTreeMap<NodeId, usize> = BTreeMap::new();
                    for t in &live {
                        if let Some(n) = &t.node {
                            *on.entry(n.clone()).or_default() += 1;
                        }
                    }
                    prop_assert!(on.values().all(|&n| n == 1), "{}: {:?}", spec.name, on);
                    let covered: BTreeSet<NodeId> = on.into_keys().collect();
                    prop_assert_eq!(covered, eligible, "global job {}", &spec.name);
                }
                _ => {
                    let mut per_zone: BTreeMap<String, usize> = zones_of(&sim.state, spec)
                        .into_iter()
                        .map(|z| (z, 0))
                        .collect();
                    for t in &live {
                        let Some(n) = t.node.as_ref().and_then(|n| sim.state.node(n)) else {
                            continue;
                        };
                        let zone = n.label("zone").expect("every node has a zone").to_owned();
                        *per_zone.get_mut(&zone).expect("a zone the job may use") += 1;
                    }
                    let max = per_zone.values().max().copied().unwrap_or(0);
                    let min = per_zone.values().min().copied().unwrap_or(0);
                    prop_assert!(max - min <= 1, "{}: {:?}", spec.name, per_zone);
                }
            }
        }
    }
}
