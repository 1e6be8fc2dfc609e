//! The scheduler at scale: wall time from submitting work to every placement
//! committed with `State::apply`, split between `plan` and `apply`, on one core
//! (a pass is single-threaded). Not run in CI.
//!
//! - A: 10,000 nodes of mixed sizes over four zones, half `tier=prod`; 100
//!   service jobs of 10,000 replicas (1,000,000 tasks) of mixed sizes, each
//!   spread over `node.labels.zone` with one label constraint.
//! - Memory of the state holding A's 1,000,000 tasks: live bytes counted by
//!   the global allocator (`cap`, a counting wrapper around `System`; the
//!   workspace forbids `unsafe`, so the wrapper comes from a crate), and RSS.
//! - Loss of 10% of A's nodes once every task runs: from the `NodeDown`
//!   commands to every lost task placed again.
//! - SwarmKit's scheduler benchmark shapes (`manager/scheduler/scheduler_test.go`):
//!   1,000 nodes × 10,000 tasks, 1,000 × 100,000, and 5,000 × 100,000 where
//!   the tasks need a label a third of the nodes have.
//!
//! Each scenario runs passes (`plan`, then the plan committed in parts of
//! 5,000 items as the control loop does) until a pass places nothing; the
//! clock stops after the last commit that placed something. The last pass,
//! over the settled state, is reported apart ("idle pass"): it is what every
//! later change costs the control loop.
//!
//! `cargo bench -p baton-sched --bench scale` (several minutes, ~6 GiB);
//! `BATON_BENCH_QUICK=1` runs sizes ten to a hundred times smaller. The
//! results are printed and written to `target/bench-scale.txt`. Every input
//! comes from fixed seeds.

use std::alloc::System;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use baton_sched::plan_since;
use baton_spec::{
    Attribute, Constraint, DriverKind, JobKind, JobSpec, Placement, Resources, RestartCondition,
    RestartPolicy, SpecFormat, Spread, Strategy, TaskSpec,
};
use baton_state::{
    ChangeMark, Command, Event, Node, NodeId, State, TaskReport, TaskState, Timestamp,
};
use cap::Cap;
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::{IndexedRandom, SliceRandom};

#[global_allocator]
static ALLOCATOR: Cap<System> = Cap::new(System, usize::MAX);

const NOW: Timestamp = Timestamp(1_700_000_000_000);
const MI: u64 = 1 << 20;
const GI: u64 = 1 << 30;
const ZONES: [&str; 4] = ["a", "b", "c", "d"];
/// Items per committed plan: `baton_manager::control::MAX_PLAN_ITEMS`.
const MAX_PLAN_ITEMS: usize = 5_000;
/// A scenario that still places after this many passes is broken.
const MAX_PASSES: usize = 50;

/// The bench measures wall time; the crate's clippy.toml bans the clock for
/// the scheduler's own code, which this is not.
#[allow(clippy::disallowed_methods)]
fn stopwatch() -> Instant {
    Instant::now()
}

fn constraint(text: &str) -> Constraint {
    Constraint::parse(text).expect("the bench's constraints parse")
}

fn service(name: String, replicas: u32, resources: Resources, placement: Placement) -> JobSpec {
    JobSpec {
        name,
        kind: JobKind::Service { replicas },
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
            condition: RestartCondition::Always,
            max_attempts: 0,
            delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(60),
        },
        placement,
    }
}

fn register(state: &mut State, node: Node) {
    state
        .apply(Command::RegisterNode { node, now: NOW })
        .expect("a node registers");
}

fn put(state: &mut State, spec: JobSpec) {
    state
        .apply(Command::PutJob {
            spec,
            format: SpecFormat::Yaml,
            source: String::new(),
            now: NOW,
        })
        .expect("a job is accepted");
}

/// Scenario A's cluster: `n_nodes` nodes (4/8/16/32 cores with 8/32/64/128 GiB,
/// 200 GiB to 1 TiB of disk, drawn at random), zones round robin, every other
/// group of four nodes `tier=prod` (the rest `tier=dev`), so tiers are
/// independent of zones; `n_jobs` services of `replicas`, sizes cycling through
/// 25-100 millicores, 32-256 MiB and 0-1 GiB of disk. One job in four needs
/// `tier == prod`, one in four `zone in (a, b, c)`, the others `zone exists`;
/// all spread over zones. About 40% of the CPU and 20% of the memory is used.
fn cluster_a(n_nodes: usize, n_jobs: usize, replicas: u32) -> State {
    let mut state = State::default();
    let mut rng = StdRng::seed_from_u64(0xA11CE);
    let sizes = [
        (4_000, 8 * GI),
        (8_000, 32 * GI),
        (16_000, 64 * GI),
        (32_000, 128 * GI),
    ];
    let disks = [200 * GI, 500 * GI, 1_024 * GI];
    for i in 0..n_nodes {
        let (cpu_millis, memory_bytes) = *sizes.choose(&mut rng).expect("sizes");
        let capacity = Resources {
            cpu_millis,
            memory_bytes,
            disk_bytes: *disks.choose(&mut rng).expect("disks"),
        };
        let mut node = Node::new(
            NodeId(format!("node-{i:05}")),
            format!("host-{i:05}"),
            capacity,
            [DriverKind::Raw].into(),
        );
        node.labels
            .insert("zone".to_owned(), ZONES[i % ZONES.len()].to_owned());
        let tier = if (i / 4).is_multiple_of(2) {
            "prod"
        } else {
            "dev"
        };
        node.labels.insert("tier".to_owned(), tier.to_owned());
        register(&mut state, node);
    }
    let cpus = [25, 50, 100];
    let memories = [32 * MI, 64 * MI, 128 * MI, 256 * MI];
    let disks = [0, 256 * MI, GI];
    for j in 0..n_jobs {
        let resources = Resources {
            cpu_millis: cpus[j % cpus.len()],
            memory_bytes: memories[j % memories.len()],
            disk_bytes: disks[(j / 3) % disks.len()],
        };
        let rule = match j % 4 {
            0 => "node.labels.tier == prod",
            1 => "node.labels.zone in (a, b, c)",
            _ => "node.labels.zone exists",
        };
        let placement = Placement {
            constraints: vec![constraint(rule)],
            spread: Some(Spread {
                attribute: Attribute::Label("zone".to_owned()),
                targets: Vec::new(),
            }),
            ..Placement::default()
        };
        put(
            &mut state,
            service(format!("svc-{j:03}"), replicas, resources, placement),
        );
    }
    state
}

/// SwarmKit's shape: identical nodes, one service of `n_tasks` small tasks
/// placed on the least loaded node (SwarmKit's only strategy); with
/// `constrained`, every third node has `network=special` and the tasks need it.
fn cluster_swarmkit(n_nodes: usize, n_tasks: u32, constrained: bool) -> State {
    let mut state = State::default();
    for i in 0..n_nodes {
        let mut node = Node::new(
            NodeId(format!("node-{i:05}")),
            format!("host-{i:05}"),
            Resources {
                cpu_millis: 16_000,
                memory_bytes: 64 * GI,
                disk_bytes: 100 * GI,
            },
            [DriverKind::Raw].into(),
        );
        if constrained && i.is_multiple_of(3) {
            node.labels
                .insert("network".to_owned(), "special".to_owned());
        }
        register(&mut state, node);
    }
    let placement = Placement {
        constraints: if constrained {
            vec![constraint("node.labels.network == special")]
        } else {
            Vec::new()
        },
        strategy: Strategy::Spread,
        ..Placement::default()
    };
    let resources = Resources {
        cpu_millis: 10,
        memory_bytes: 16 * MI,
        disk_bytes: 0,
    };
    put(
        &mut state,
        service("swarm".to_owned(), n_tasks, resources, placement),
    );
    state
}

/// What one scenario's passes did.
#[derive(Debug, Default)]
struct Run {
    /// Tasks that got a node (`TaskPlaced` events of the commits).
    placed: usize,
    /// Plan items `apply` refused (stale or conflicting); zero when healthy.
    ignored: usize,
    /// Passes that placed something.
    passes: usize,
    /// Time in `plan` for those passes.
    plan: Duration,
    /// Time in `State::apply` for their commits.
    apply: Duration,
    /// Wall time from the first pass to the last commit that placed.
    total: Duration,
    /// The pass that found nothing left to place.
    idle_pass: Duration,
}

impl Run {
    fn per_second(&self) -> f64 {
        self.placed as f64 / self.total.as_secs_f64().max(1e-9)
    }
}

/// Passes and commits until a pass places nothing.
fn place_all(state: &mut State, seed: u64, mut mark: Option<ChangeMark>) -> Run {
    let mut run = Run::default();
    let started = stopwatch();
    for pass in 0..MAX_PASSES {
        let clock = stopwatch();
        let out = plan_since(state, mark, NOW, seed.wrapping_add(pass as u64));
        let planned = clock.elapsed();
        mark = Some(state.change_mark());
        let placing =
            out.plan.create.iter().any(|t| t.node.is_some()) || !out.plan.place.is_empty();
        let clock = stopwatch();
        let mut placed = 0;
        for part in out.plan.into_batches(MAX_PLAN_ITEMS) {
            let events = state
                .apply(Command::ApplyPlan {
                    plan: part,
                    now: NOW,
                })
                .expect("ApplyPlan never fails as a whole");
            for event in &events {
                match event {
                    Event::TaskPlaced { .. } => placed += 1,
                    Event::Ignored { .. } => run.ignored += 1,
                    _ => {}
                }
            }
        }
        let applied = clock.elapsed();
        if !placing {
            run.idle_pass = planned;
            return run;
        }
        run.passes += 1;
        run.placed += placed;
        run.plan += planned;
        run.apply += applied;
        run.total = started.elapsed();
    }
    panic!("still placing after {MAX_PASSES} passes: {run:?}")
}

/// Not timed: whether every placed task's node satisfies its job's constraints,
/// and the largest deviation of a job's per-zone count from an even share of
/// the zones its eligible nodes offer, in percent.
fn check_placements(state: &State) -> (usize, usize, f64) {
    let mut unplaced = 0;
    let mut broken = 0;
    let mut worst: f64 = 0.0;
    for job in state.jobs() {
        let spec = &job.spec;
        let mut per_zone: BTreeMap<&str, usize> = BTreeMap::new();
        for node in state.nodes() {
            let view = state.node_view(node);
            if spec.placement.constraints.iter().all(|c| c.matches(&view))
                && let Some(zone) = node.label("zone")
            {
                per_zone.entry(zone).or_default();
            }
        }
        let mut n_tasks = 0;
        for task in state.tasks_of_job(&job.name) {
            let Some(node) = task.node.as_ref().and_then(|n| state.node(n)) else {
                unplaced += 1;
                continue;
            };
            n_tasks += 1;
            let view = state.node_view(node);
            if !spec.placement.constraints.iter().all(|c| c.matches(&view)) {
                broken += 1;
            }
            if let Some(zone) = node.label("zone") {
                *per_zone.entry(zone).or_default() += 1;
            }
        }
        if spec.placement.spread.is_some() && !per_zone.is_empty() {
            let share = n_tasks as f64 / per_zone.len() as f64;
            for n in per_zone.values() {
                worst = worst.max((*n as f64 - share).abs() / share.max(1.0) * 100.0);
            }
        }
    }
    (unplaced, broken, worst)
}

/// Every agent reports its tasks running, one report per node.
fn agents_report_running(state: &mut State) {
    let mut by_node: BTreeMap<NodeId, Vec<TaskReport>> = BTreeMap::new();
    for task in state.tasks() {
        if let Some(node) = &task.node
            && task.status.state == TaskState::Assigned
        {
            by_node.entry(node.clone()).or_default().push(TaskReport {
                task: task.id.clone(),
                state: TaskState::Running,
                message: String::new(),
                exit: None,
                pid: None,
            });
        }
    }
    for (node, reports) in by_node {
        state
            .apply(Command::ReportTasks {
                node,
                reports,
                now: NOW,
            })
            .expect("reports apply");
    }
}

/// Resident set size of this process, from /proc (0 where there is none).
fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix("VmRSS:"))
                .and_then(|rest| {
                    rest.trim()
                        .trim_end_matches("kB")
                        .trim()
                        .parse::<u64>()
                        .ok()
                })
        })
        .map_or(0, |kib| kib * 1024)
}

fn secs(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64())
}

/// Thousands separated by commas.
fn count(n: f64) -> String {
    let digits = format!("{:.0}", n);
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// The report, printed as it grows and written to a file at the end.
struct Report {
    text: String,
}

impl Report {
    fn line(&mut self, line: &str) {
        println!("{line}");
        let _ = std::io::stdout().flush();
        self.text.push_str(line);
        self.text.push('\n');
    }

    fn header(&mut self) {
        self.line(&format!(
            "{:<44} {:>6} {:>9} {:>9} {:>6} {:>8} {:>7} {:>7} {:>12} {:>7}  {}",
            "scenario",
            "nodes",
            "tasks",
            "placed",
            "passes",
            "total s",
            "plan s",
            "apply s",
            "placements/s",
            "idle s",
            "reference"
        ));
    }

    fn row(&mut self, name: &str, nodes: usize, tasks: usize, run: &Run, reference: &str) {
        let mut line = format!(
            "{:<44} {:>6} {:>9} {:>9} {:>6} {:>8} {:>7} {:>7} {:>12} {:>7}  {}",
            name,
            nodes,
            count(tasks as f64),
            count(run.placed as f64),
            run.passes,
            secs(run.total),
            secs(run.plan),
            secs(run.apply),
            count(run.per_second()),
            secs(run.idle_pass),
            reference
        );
        if run.ignored > 0 {
            let _ = write!(line, "  ({} plan items ignored by apply!)", run.ignored);
        }
        self.line(&line);
    }

    /// `target/bench-scale.txt`: the bench runs as `target/<profile>/deps/scale-*`.
    fn save(&self) {
        let target = std::env::current_exe()
            .ok()
            .and_then(|exe| Some(exe.parent()?.parent()?.parent()?.to_path_buf()))
            .unwrap_or_else(|| PathBuf::from("target"));
        let path = target.join("bench-scale.txt");
        match std::fs::write(&path, &self.text) {
            Ok(()) => println!("written to {}", path.display()),
            Err(error) => eprintln!("cannot write {}: {error}", path.display()),
        }
    }
}

fn main() {
    // `cargo bench` passes `--bench`; there are no other options.
    let quick = std::env::var_os("BATON_BENCH_QUICK").is_some_and(|v| v != "0");
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|rest| rest.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_else(|| "unknown cpu".to_owned());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mut report = Report {
        text: String::new(),
    };
    report.line(&format!(
        "baton-sched scale bench ({}), {cpu}, {cores} cores; every pass runs on one core",
        if quick {
            "quick sizes: BATON_BENCH_QUICK"
        } else {
            "full sizes"
        }
    ));
    report.header();

    // A: build nodes and jobs (not timed), then place everything.
    let (a_nodes, a_jobs, a_replicas) = if quick {
        (1_000, 10, 1_000)
    } else {
        (10_000, 100, 10_000)
    };
    let a_tasks = a_jobs * a_replicas as usize;
    let mut state = cluster_a(a_nodes, a_jobs, a_replicas);
    let (bytes_before, rss_before) = (ALLOCATOR.allocated(), rss_bytes());
    let run = place_all(&mut state, 1, None);
    let (bytes_after, rss_after) = (ALLOCATOR.allocated(), rss_bytes());
    report.row(
        &format!("A: {a_jobs} services x {a_replicas}, spread + constraint"),
        a_nodes,
        a_tasks,
        &run,
        "",
    );
    let (unplaced, broken, worst) = check_placements(&state);
    let a_check = format!(
        "A checked: {unplaced} tasks unplaced, {broken} on a node against their \
         constraint, per-zone counts within {worst:.2}% of an even share"
    );

    // Once every task runs: one task fails. The control loop's next pass
    // reconciles only that job (`plan_since`); a full pass walks every task.
    agents_report_running(&mut state);
    let settled = state.change_mark();
    let failed = state
        .tasks()
        .find(|t| t.status.state == TaskState::Running)
        .map(|t| (t.id.clone(), t.node.clone()));
    if let Some((task, Some(node))) = failed {
        state
            .apply(Command::ReportTasks {
                node,
                reports: vec![TaskReport {
                    task,
                    state: TaskState::Failed,
                    message: "exit 1".to_owned(),
                    exit: None,
                    pid: None,
                }],
                now: NOW,
            })
            .expect("report applies");
    }
    let clock = stopwatch();
    let full = baton_sched::plan(&state, NOW, 98);
    let full_time = clock.elapsed();
    let clock = stopwatch();
    let incremental = plan_since(&state, Some(settled), NOW, 98);
    let incremental_time = clock.elapsed();
    assert_eq!(
        full, incremental,
        "the incremental pass plans what the full one does"
    );
    let mark = state.change_mark();
    state
        .apply(Command::ApplyPlan {
            plan: incremental.plan,
            now: NOW,
        })
        .expect("plan applies");
    let one_failure = format!(
        "A settled, one task fails: next pass {} s reconciling only its job \
         (a full pass: {} s)",
        secs(incremental_time),
        secs(full_time)
    );

    // The loss of 10% of A's nodes.
    let n_down = a_nodes / 10;
    let mut rng = StdRng::seed_from_u64(0x105E);
    let mut ids: Vec<NodeId> = state.nodes().map(|n| n.id.clone()).collect();
    let (down, _) = ids.partial_shuffle(&mut rng, n_down);
    let down = down.to_vec();
    let started = stopwatch();
    let mut lost = 0;
    for id in down {
        let events = state
            .apply(Command::NodeDown { id, now: NOW })
            .expect("a known node goes down");
        lost += events
            .iter()
            .filter(|e| {
                matches!(
                    e,
                    Event::TaskStateChanged {
                        state: TaskState::Lost,
                        ..
                    }
                )
            })
            .count();
    }
    let down_time = started.elapsed();
    let mut run = place_all(&mut state, 1_000, Some(mark));
    run.total += down_time;
    report.row(
        &format!("A, {n_down} nodes down: lost tasks placed again"),
        a_nodes,
        lost,
        &run,
        &format!("NodeDown commands: {} s", secs(down_time)),
    );
    drop(state);

    // SwarmKit's shapes.
    let shapes: [(usize, u32, bool, &str); 3] = if quick {
        [
            (100, 1_000, false, ""),
            (100, 10_000, false, ""),
            (500, 10_000, true, ""),
        ]
    } else {
        [
            (1_000, 10_000, false, "SwarmKit ~11,500/s"),
            (1_000, 100_000, false, "SwarmKit ~8,800/s"),
            (5_000, 100_000, true, "SwarmKit ~1,540/s"),
        ]
    };
    for (nodes, tasks, constrained, reference) in shapes {
        let mut state = cluster_swarmkit(nodes, tasks, constrained);
        let run = place_all(&mut state, 7, None);
        let name = if constrained {
            "SwarmKit shape, label on 1/3 of nodes"
        } else {
            "SwarmKit shape"
        };
        report.row(name, nodes, tasks as usize, &run, reference);
    }

    report.line("");
    report.line(&a_check);
    report.line(&one_failure);
    let grown = bytes_after.saturating_sub(bytes_before);
    let rss_grown = rss_after.saturating_sub(rss_before);
    report.line(&format!(
        "memory of A's state with {} tasks: {} MiB live ({} bytes per task, counted by \
         the allocator); RSS grew {} MiB ({} bytes per task)",
        count(a_tasks as f64),
        count(grown as f64 / MI as f64),
        count(grown as f64 / a_tasks as f64),
        count(rss_grown as f64 / MI as f64),
        count(rss_grown as f64 / a_tasks as f64),
    ));
    report.line(&format!(
        "peak heap during the run: {} MiB",
        count(ALLOCATOR.max_allocated() as f64 / MI as f64)
    ));
    report.save();
}
