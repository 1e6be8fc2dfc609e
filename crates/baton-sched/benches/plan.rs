//! Benchmarks of one scheduler pass at scale: 100,000 service tasks (100 jobs of
//! 1,000 replicas) on 1,000 nodes, from empty; applying the resulting plan; and
//! the steady-state pass over the converged state, which must be empty.
//!
//! `cargo bench -p baton-sched` (small sample sizes: about a minute).

use std::collections::BTreeSet;
use std::hint::black_box;
use std::time::Duration;

use baton_sched::plan;
use baton_spec::{
    DriverKind, JobKind, JobSpec, Resources, RestartCondition, RestartPolicy, SpecFormat, TaskSpec,
};
use baton_state::{
    Command, Node, NodeAvailability, NodeId, NodeState, State, TaskState, Timestamp,
};
use criterion::{BatchSize, Criterion, SamplingMode, criterion_group, criterion_main};

const NOW: Timestamp = Timestamp(1_700_000_000_000);
const MI: u64 = 1 << 20;
const GI: u64 = 1 << 30;

fn job(index: usize, replicas: u32, resources: Resources) -> JobSpec {
    JobSpec {
        placement: Default::default(),
        name: format!("job-{index:03}"),
        kind: JobKind::Service { replicas },
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
            resources,
            kill_timeout: Duration::from_secs(10),
        },
        restart: RestartPolicy {
            condition: RestartCondition::Always,
            max_attempts: 0,
            delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(60),
        },
    }
}

/// 1,000 nodes and 100 jobs of 1,000 replicas; `shape` gives each job's resources.
fn cluster(node_capacity: Resources, shape: impl Fn(usize) -> Resources) -> State {
    let mut state = State::default();
    for i in 0..1000 {
        let node = Node {
            drain_deadline: None,
            labels: Default::default(),
            operator_labels: Default::default(),
            id: NodeId(format!("node-{i:04}")),
            hostname: format!("host-{i:04}"),
            capacity: node_capacity,
            drivers: BTreeSet::from([DriverKind::Raw]),
            state: NodeState::Ready,
            availability: NodeAvailability::Active,
            registered_at: NOW,
            state_since: NOW,
            address: None,
            version: String::new(),
        };
        state
            .apply(Command::RegisterNode { node, now: NOW })
            .expect("register");
    }
    for j in 0..100 {
        let spec = job(j, 1000, shape(j));
        state
            .apply(Command::PutJob {
                spec,
                format: SpecFormat::Yaml,
                source: String::new(),
                now: NOW,
            })
            .expect("put job");
    }
    state
}

fn bench_cluster(c: &mut Criterion, name: &str, empty: &State) {
    let first = plan(empty, NOW, 1);
    let placed = first
        .plan
        .create
        .iter()
        .filter(|t| t.status.state == TaskState::Assigned)
        .count();
    assert_eq!(first.plan.create.len(), 100_000);
    assert_eq!(placed, 100_000, "every task fits");
    let mut converged = empty.clone();
    converged
        .apply(Command::ApplyPlan {
            plan: first.plan.clone(),
            now: NOW,
        })
        .expect("apply");
    assert_eq!(converged.n_tasks(), 100_000);
    assert!(
        plan(&converged, NOW, 2).plan.is_empty(),
        "steady state is empty"
    );

    let mut group = c.benchmark_group(name);
    // Each iteration takes tens of milliseconds: ten flat samples are enough.
    group
        .sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    group.bench_function("plan_from_empty", |b| {
        b.iter(|| plan(black_box(empty), NOW, 1))
    });
    group.bench_function("apply_plan", |b| {
        b.iter_batched(
            || (empty.clone(), first.plan.clone()),
            |(mut state, plan)| {
                state
                    .apply(Command::ApplyPlan { plan, now: NOW })
                    .expect("apply")
            },
            BatchSize::LargeInput,
        )
    });
    group.bench_function("plan_steady_state", |b| {
        b.iter(|| plan(black_box(&converged), NOW, 2))
    });
    group.finish();
}

fn benches(c: &mut Criterion) {
    // Uniform: CPU binds first (160 tasks per node by CPU, 512 by memory), so
    // full nodes keep free memory and must leave the index.
    let uniform = cluster(
        Resources {
            disk_bytes: 0,
            cpu_millis: 16_000,
            memory_bytes: 64 * GI,
        },
        |_| Resources {
            disk_bytes: 0,
            cpu_millis: 100,
            memory_bytes: 128 * MI,
        },
    );
    bench_cluster(c, "uniform_100k_tasks_1k_nodes", &uniform);

    // Mixed shapes: nodes end partly full in different dimensions.
    let shapes = [
        (100, 128 * MI),
        (250, 512 * MI),
        (500, 256 * MI),
        (50, GI),
        (1000, 2 * GI),
    ];
    let mixed = cluster(
        Resources {
            disk_bytes: 0,
            cpu_millis: 64_000,
            memory_bytes: 256 * GI,
        },
        |j| {
            let (cpu_millis, memory_bytes) = shapes[j % shapes.len()];
            Resources {
                disk_bytes: 0,
                cpu_millis,
                memory_bytes,
            }
        },
    );
    bench_cluster(c, "mixed_100k_tasks_1k_nodes", &mixed);
}

criterion_group!(plan_benches, benches);
criterion_main!(plan_benches);
