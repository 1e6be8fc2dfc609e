//! Task start latency: how long each driver takes from the moment the agent
//! calls `Driver::start` until the task's process exists (the driver returned
//! its handle, pid known), and until its exit has been seen, for `raw`,
//! `exec` and `docker`, against floors of the same command started without
//! Baton: a bare fork+exec, `unshare -pmui -f` (pid, mount, uts and ipc
//! namespaces), and that plus a cgroup v1 set-up.
//!
//! `cargo bench -p baton --bench start_latency` (release build). Each row is
//! 200 sequential starts after 10 warm-ups of `/bin/true` (the busybox image's
//! `/bin/true` for docker); `BATON_BENCH_QUICK=1` makes it 20 after 2.
//! `BATON_BENCH_ONLY=exec,docker` runs only the named groups (`fork`,
//! `unshare`, `cgroup`, `raw`, `exec`, `docker`). Every time is measured from
//! just before the start (spawn, `Driver::start`) to the named point;
//! per-start set-up (task directory, log file) is outside it. Percentiles are
//! nearest-rank over the sorted samples.
//!
//! Rows that need root, cgroup v1 or a Docker engine are skipped with the
//! reason when the machine has none. Not a test: it prints figures.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use baton_agent::{DockerDriver, Driver, ExecDriver, LogWriter, RawDriver, TaskRun};
use baton_spec::{DEFAULT_PIDS_LIMIT, DriverKind, Resources, TaskSpec};
use baton_state::{NodeId, TaskId};
use tracing::field::{Field, Visit};
use tracing_subscriber::Layer;
use tracing_subscriber::filter::{LevelFilter, filter_fn};
use tracing_subscriber::layer::{Context, SubscriberExt};

/// The command every row starts.
const COMMAND: &str = "/bin/true";

use baton_testkit::drivers::{TEST_IMAGE as IMAGE, build_test_image};

/// Where cgroup v1 hierarchies are mounted.
const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// The bench's cgroups, under every hierarchy (and the exec driver's parent).
const BENCH_CGROUP: &str = "baton-bench";

/// The floor's cgroup limits, as the exec driver sets them for
/// `Resources::new(100, 64 << 20)` and the default pids limit: hierarchy,
/// file, value.
const FLOOR_LIMITS: [(&str, &str, &str); 3] = [
    ("memory", "memory.limit_in_bytes", "67108864"),
    ("pids", "pids.max", "1024"),
    ("cpu", "cpu.shares", "102"),
];

/// The job every bench task belongs to (docker: network `baton-bench`).
const JOB: &str = "bench";

/// The exec shim's own time for the last start (create + start of the
/// container, as it reports in `Started`), caught from the agent's debug log.
static SHIM_MICROS: Mutex<Option<u64>> = Mutex::new(None);

/// Source of unique task ids.
static NEXT_TASK: AtomicUsize = AtomicUsize::new(0);

/// How many starts a row makes.
#[derive(Clone, Copy, Debug)]
struct Counts {
    warmups: usize,
    runs: usize,
}

/// Figures of one row.
#[derive(Debug)]
struct Stats {
    n: usize,
    p50: Duration,
    p99: Duration,
    mean: Duration,
}

impl Stats {
    /// Nearest-rank percentiles and the mean; `None` without samples.
    fn of(mut samples: Vec<Duration>) -> Option<Stats> {
        if samples.is_empty() {
            return None;
        }
        samples.sort();
        let n = samples.len();
        let rank = |p: usize| samples[(p * n).div_ceil(100).clamp(1, n) - 1];
        let total: Duration = samples.iter().sum();
        Some(Stats {
            n,
            p50: rank(50),
            p99: rank(99),
            mean: total / u32::try_from(n).unwrap_or(u32::MAX),
        })
    }
}

/// Runs `start` `counts.warmups` times, then `counts.runs` times timed. Each
/// call returns the durations of its phases, in the order of `phases` (it
/// may return fewer: a phase it could not measure); the result is one row
/// per phase. The first failing call ends the row with its error.
async fn measure(
    counts: Counts,
    phases: &[&str],
    mut start: impl AsyncFnMut() -> Result<Vec<Duration>, String>,
) -> Result<Vec<(String, Option<Stats>)>, String> {
    for _ in 0..counts.warmups {
        start().await?;
    }
    let mut samples = vec![Vec::with_capacity(counts.runs); phases.len()];
    for _ in 0..counts.runs {
        for (phase, took) in samples.iter_mut().zip(start().await?) {
            phase.push(took);
        }
    }
    Ok(phases
        .iter()
        .zip(samples)
        .map(|(name, samples)| ((*name).to_owned(), Stats::of(samples)))
        .collect())
}

/// Prints a row group's result, or why it has none.
fn print_rows(group: &str, result: &Result<Vec<(String, Option<Stats>)>, String>) {
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    match result {
        Ok(rows) => {
            for (name, stats) in rows {
                let label = format!("{group}: {name}");
                match stats {
                    Some(s) => println!(
                        "{label:<46} {:>5} {:>9.3} {:>9.3} {:>9.3}",
                        s.n,
                        ms(s.p50),
                        ms(s.p99),
                        ms(s.mean)
                    ),
                    None => println!("{label:<46}     0   (no samples)"),
                }
            }
        }
        Err(reason) => println!("{group:<46} skipped: {reason}"),
    }
}

/// The p50 of phase `name` in a result.
fn p50(result: &Result<Vec<(String, Option<Stats>)>, String>, name: &str) -> Option<Duration> {
    result
        .as_ref()
        .ok()?
        .iter()
        .find(|(n, _)| n == name)
        .and_then(|(_, s)| s.as_ref())
        .map(|s| s.p50)
}

/// `/proc/loadavg`, without its last two fields.
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|e| format!("unknown ({e})"))
}

/// `unshare -p -m -u -i -f /bin/true`.
fn unshare_command() -> Command {
    let mut command = Command::new("unshare");
    command.args(["-p", "-m", "-u", "-i", "-f", COMMAND]);
    command
}

/// Runs a floor command to its end; it must succeed.
fn run_to_exit(mut command: Command) -> Result<Vec<Duration>, String> {
    let started = Instant::now();
    let status = command
        .status()
        .map_err(|e| format!("cannot run {command:?}: {e}"))?;
    let took = started.elapsed();
    if !status.success() {
        return Err(format!("{command:?}: {status}"));
    }
    Ok(vec![took])
}

/// A bare fork+exec: until `spawn` returned, and until the child was reaped.
fn fork_exec() -> Result<Vec<Duration>, String> {
    let started = Instant::now();
    let mut child = Command::new(COMMAND)
        .spawn()
        .map_err(|e| format!("cannot spawn {COMMAND}: {e}"))?;
    let spawned = started.elapsed();
    let status = child.wait().map_err(|e| format!("wait: {e}"))?;
    let exited = started.elapsed();
    if !status.success() {
        return Err(format!("{COMMAND}: {status}"));
    }
    Ok(vec![spawned, exited])
}

/// The id of the calling thread (`/proc/thread-self` is `<pid>/task/<tid>`).
fn thread_id() -> std::io::Result<String> {
    let link = std::fs::read_link("/proc/thread-self")?;
    link.file_name()
        .map(|tid| tid.to_string_lossy().into_owned())
        .ok_or_else(|| std::io::Error::other("no thread id"))
}

/// The namespace floor plus a cgroup v1 set-up, as one start: make a cgroup
/// in the memory, pids and cpu hierarchies, write its limits, start the
/// command inside it, wait for its end, remove the cgroups. The child gets
/// its cgroups the way a runtime's does (it is in them from its first
/// instruction): a short-lived thread moves itself into them and spawns it,
/// so no thread of the bench leaves its own cgroup for good.
fn cgroup_floor(n: usize) -> Result<Vec<Duration>, String> {
    let io = |what: &str, path: &Path, e: std::io::Error| format!("{what} {}: {e}", path.display());
    let started = Instant::now();
    let dirs: Vec<PathBuf> = FLOOR_LIMITS
        .iter()
        .map(|(hierarchy, _, _)| {
            Path::new(CGROUP_ROOT)
                .join(hierarchy)
                .join(BENCH_CGROUP)
                .join(format!("floor.{n}"))
        })
        .collect();
    for ((_, file, value), dir) in FLOOR_LIMITS.iter().zip(&dirs) {
        std::fs::create_dir_all(dir).map_err(|e| io("mkdir", dir, e))?;
        let file = dir.join(file);
        std::fs::write(&file, value).map_err(|e| io("write", &file, e))?;
    }
    let inside = dirs.clone();
    let spawner = std::thread::spawn(move || -> Result<std::process::Child, String> {
        let tid = thread_id().map_err(|e| format!("thread id: {e}"))?;
        for dir in &inside {
            let tasks = dir.join("tasks");
            std::fs::write(&tasks, &tid).map_err(|e| io("write", &tasks, e))?;
        }
        unshare_command()
            .spawn()
            .map_err(|e| format!("cannot run unshare: {e}"))
    });
    let mut child = spawner
        .join()
        .map_err(|_| "the spawning thread panicked".to_owned())??;
    let status = child.wait().map_err(|e| format!("wait: {e}"))?;
    for dir in &dirs {
        remove_cgroup(dir).map_err(|e| io("rmdir", dir, e))?;
    }
    let took = started.elapsed();
    if !status.success() {
        return Err(format!("unshare: {status}"));
    }
    Ok(vec![took])
}

/// Removes an empty cgroup, retrying while the kernel still counts a task
/// that has just exited in it (the spawning thread).
fn remove_cgroup(dir: &Path) -> std::io::Result<()> {
    let mut tries = 0;
    loop {
        match std::fs::remove_dir(dir) {
            Err(e) if e.kind() == std::io::ErrorKind::ResourceBusy && tries < 1000 => {
                tries += 1;
                std::thread::sleep(Duration::from_micros(50));
            }
            other => return other,
        }
    }
}

/// Removes the bench's cgroups from every hierarchy, best effort.
fn remove_bench_cgroups() {
    let Ok(hierarchies) = std::fs::read_dir(CGROUP_ROOT) else {
        return;
    };
    for hierarchy in hierarchies.flatten() {
        let _ = std::fs::remove_dir(hierarchy.path().join(BENCH_CGROUP));
    }
}

/// The spec of a bench task.
fn task_spec(driver: DriverKind, command: &[&str]) -> TaskSpec {
    TaskSpec {
        driver,
        command: command.iter().map(|s| (*s).to_owned()).collect(),
        env: BTreeMap::new(),
        workdir: None,
        user: None,
        resources: Resources::new(100, 64 << 20),
        kill_timeout: Duration::from_secs(1),
        ports: Vec::new(),
        image: (driver == DriverKind::Docker).then(|| IMAGE.to_owned()),
        capabilities: Vec::new(),
        pids_limit: DEFAULT_PIDS_LIMIT,
        secrets: Vec::new(),
        env_secrets: std::collections::BTreeMap::new(),
        configs: Vec::new(),
    }
}

/// A run of `spec` under a fresh task id, with its own directory and log.
async fn task_run(root: &Path, spec: &TaskSpec) -> Result<TaskRun, String> {
    let n = NEXT_TASK.fetch_add(1, Ordering::Relaxed);
    let task = TaskId(format!("bench.0.{}.{n}", std::process::id()));
    let task_dir = root.join("tasks").join(&task.0);
    tokio::fs::create_dir_all(&task_dir)
        .await
        .map_err(|e| format!("mkdir {}: {e}", task_dir.display()))?;
    let log = LogWriter::open(&task_dir, 1 << 20)
        .await
        .map_err(|e| format!("log: {e}"))?;
    Ok(TaskRun {
        task,
        job: JOB.to_owned(),
        slot: "0".to_owned(),
        node: NodeId("bench-node".to_owned()),
        spec: spec.clone(),
        task_dir,
        log,
        ports: BTreeMap::new(),
        advertise_ip: None,
        files: Default::default(),
        run_dir: std::path::PathBuf::from("/nonexistent/run"),
    })
}

/// One start through a driver: until `start` returned its handle, until
/// `wait` returned the exit, and, for exec, the shim's own time.
async fn driver_start(
    driver: &dyn Driver,
    root: &Path,
    spec: &TaskSpec,
) -> Result<Vec<Duration>, String> {
    let run = task_run(root, spec).await?;
    *SHIM_MICROS.lock().expect("shim time") = None;
    let started = Instant::now();
    let mut handle = driver.start(run).await.map_err(|e| format!("start: {e}"))?;
    let running = started.elapsed();
    let shim = SHIM_MICROS.lock().expect("shim time").take();
    let exit = handle.wait().await.map_err(|e| format!("wait: {e}"))?;
    let exited = started.elapsed();
    if !exit.success() {
        return Err(format!("the task ended {exit:?}"));
    }
    let mut phases = vec![running, exited];
    phases.extend(shim.map(Duration::from_micros));
    Ok(phases)
}

/// Catches the `micros` of the exec driver's `exec task started` event.
struct ShimTimes;

impl<S: tracing::Subscriber> Layer<S> for ShimTimes {
    fn on_event(&self, event: &tracing::Event<'_>, _: Context<'_, S>) {
        struct Micros(Option<u64>);
        impl Visit for Micros {
            fn record_u64(&mut self, field: &Field, value: u64) {
                if field.name() == "micros" {
                    self.0 = Some(value);
                }
            }
            fn record_debug(&mut self, _: &Field, _: &dyn Debug) {}
        }
        let mut micros = Micros(None);
        event.record(&mut micros);
        if let Some(value) = micros.0 {
            *SHIM_MICROS.lock().expect("shim time") = Some(value);
        }
    }
}

fn main() {
    let subscriber = tracing_subscriber::registry()
        .with(ShimTimes.with_filter(filter_fn(|meta| {
            meta.target() == "baton_agent::driver::exec" && *meta.level() == tracing::Level::DEBUG
        })))
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_filter(LevelFilter::WARN),
        );
    tracing::subscriber::set_global_default(subscriber).expect("tracing");

    let quick = std::env::var_os("BATON_BENCH_QUICK").is_some_and(|v| v == "1");
    let counts = if quick {
        Counts {
            warmups: 2,
            runs: 20,
        }
    } else {
        Counts {
            warmups: 10,
            runs: 200,
        }
    };
    let only = std::env::var("BATON_BENCH_ONLY").ok();
    let wanted = |group: &str| {
        only.as_deref()
            .is_none_or(|list| list.split(',').any(|g| g.trim() == group))
    };
    let root_user = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|ids| ids.split_whitespace().nth(1).map(|e| e == "0"))
        })
        .unwrap_or(false);
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();

    println!(
        "start latency: {} starts after {} warm-ups per row, command {COMMAND}",
        counts.runs, counts.warmups
    );
    println!(
        "cpus {cpus}, kernel {}, root {root_user}, loadavg before {}",
        kernel.trim(),
        loadavg()
    );
    println!(
        "times from just before the start to: 'spawned' spawn returned (pid known); \
         'start returned' Driver::start returned its handle (pid known); \
         'exited' the exit was reaped (Driver: TaskHandle::wait returned)"
    );
    println!(
        "{:<46} {:>5} {:>9} {:>9} {:>9}",
        "row", "n", "p50 ms", "p99 ms", "mean ms"
    );

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let tmp = tempfile::tempdir().expect("tempdir");

        if wanted("fork") {
            let result = measure(counts, &["spawned", "exited"], async || fork_exec()).await;
            print_rows("fork+exec", &result);
        }

        if wanted("unshare") {
            let result =
                measure(counts, &["exited"], async || run_to_exit(unshare_command())).await;
            print_rows("unshare -pmui -f", &result);
        }

        let mut floor = None;
        if wanted("cgroup") {
            let result = if !root_user {
                Err("needs root".to_owned())
            } else if !Path::new(CGROUP_ROOT).join("memory").is_dir() {
                Err(format!(
                    "no cgroup v1 memory hierarchy at {CGROUP_ROOT}/memory"
                ))
            } else {
                let mut n = 0;
                measure(counts, &["exited"], async || {
                    n += 1;
                    cgroup_floor(n)
                })
                .await
            };
            print_rows("unshare -pmui -f + cgroup v1", &result);
            floor = p50(&result, "exited");
        }

        if wanted("raw") {
            let driver = RawDriver::new();
            let spec = task_spec(DriverKind::Raw, &[COMMAND]);
            let root = tmp.path().join("raw");
            let result = measure(counts, &["start returned", "exited"], async || {
                driver_start(&driver, &root, &spec).await
            })
            .await;
            print_rows("raw", &result);
        }

        if wanted("exec") {
            let shim = PathBuf::from(env!("CARGO_BIN_EXE_baton"));
            let data_dir = tmp.path().join("exec");
            let result = match ExecDriver::probe(shim, &data_dir, &format!("/{BENCH_CGROUP}")) {
                Ok(driver) => {
                    let spec = task_spec(DriverKind::Exec, &[COMMAND]);
                    measure(
                        counts,
                        &[
                            "start returned",
                            "exited",
                            "shim create+start (its own clock)",
                        ],
                        async || driver_start(&driver, &data_dir, &spec).await,
                    )
                    .await
                }
                Err(reason) => Err(reason),
            };
            print_rows("exec", &result);
            if let (Some(exec), Some(floor)) = (p50(&result, "start returned"), floor) {
                println!(
                    "exec p50 start returned / floor+cgroup p50 = {:.1}x (goal: within 3x)",
                    exec.as_secs_f64() / floor.as_secs_f64()
                );
            }
        }

        if wanted("docker") {
            match DockerDriver::connect()
                .await
                .and_then(|d| build_test_image().map(|()| d))
            {
                Ok(driver) => {
                    let spec = task_spec(DriverKind::Docker, &[COMMAND]);
                    let root = tmp.path().join("docker");
                    // Fresh: the job's network is made by each start and
                    // removed by each wait, as for a lone task.
                    let result =
                        measure(counts, &["start returned", "exited+removed"], async || {
                            driver_start(&driver, &root, &spec).await
                        })
                        .await;
                    print_rows("docker, network per start", &result);
                    // Kept: another task of the job keeps its network, as
                    // for a job of several replicas.
                    let keeper = task_spec(DriverKind::Docker, &["/bin/sleep", "3600"]);
                    let result = match task_run(&root, &keeper).await {
                        Ok(run) => match driver.start(run).await {
                            Ok(mut keeper) => {
                                let result = measure(
                                    counts,
                                    &["start returned", "exited+removed"],
                                    async || driver_start(&driver, &root, &spec).await,
                                )
                                .await;
                                if let Err(e) = keeper.stop(Duration::from_secs(1)).await {
                                    eprintln!("cannot stop the network keeper: {e}");
                                }
                                result
                            }
                            Err(e) => Err(format!("network keeper: {e}")),
                        },
                        Err(e) => Err(e),
                    };
                    print_rows("docker, network kept", &result);
                }
                Err(reason) => print_rows("docker", &Err(reason)),
            }
        }
    });
    remove_bench_cgroups();
    println!("loadavg after {}", loadavg());
}
