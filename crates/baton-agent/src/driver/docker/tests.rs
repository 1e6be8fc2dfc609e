//! The driver against the node's real Docker Engine, with the local image
//! `baton-test/busybox:1` (built by `scripts/test-image`, no registry).
//!
//! Without an engine each test is skipped, unless `BATON_REQUIRE_DOCKER` is
//! set (as in CI), when it fails with the reason. Each test has its own job
//! (`t<pid>-<test>`), so tests run in parallel, and removes its containers
//! and network even when an assertion fails.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::process::Command;

use baton_spec::{PortSpec, Resources, TaskSpec};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;
use crate::log_file::{LOG_FILE, LogWriter};

use baton_testkit::drivers::{TEST_IMAGE as IMAGE, build_test_image, skip_unless_required};

/// Pause between two looks at a condition being polled.
const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// The engine, with the test image on it; `None` (the test is skipped) when
/// there is no usable engine and `BATON_REQUIRE_DOCKER` is unset.
async fn engine_or_skip() -> Option<DockerDriver> {
    match DockerDriver::connect().await {
        Ok(driver) => {
            build_test_image().expect("the test image");
            Some(driver)
        }
        Err(reason) => {
            skip_unless_required("BATON_REQUIRE_DOCKER", "the docker driver", &reason);
            None
        }
    }
}

/// Polls `check` until it yields a value, at most `attempts` times.
async fn poll<T, F, Fut>(attempts: u32, mut check: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    for _ in 0..attempts {
        if let Some(value) = check().await {
            return Some(value);
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
    None
}

/// One test's job: its tasks' directories, and the cleanup of everything it
/// made on the engine.
struct TestJob {
    name: String,
    node: NodeId,
    dirs: Vec<tempfile::TempDir>,
    tasks: Vec<TaskId>,
}

impl TestJob {
    fn new(test: &str) -> TestJob {
        let pid = std::process::id();
        TestJob {
            name: format!("t{pid}-{test}"),
            node: NodeId(format!("test-node-{pid}")),
            dirs: Vec::new(),
            tasks: Vec::new(),
        }
    }

    /// A task of this job running `command` in the test image, with 64Mi,
    /// a tenth of a core and the default pids limit.
    async fn task(&mut self, command: &[&str]) -> TaskRun {
        let slot = self.tasks.len().to_string();
        let task = TaskId(format!("{}.{slot}.a", self.name));
        let dir = tempfile::tempdir().expect("tempdir");
        let run = TaskRun {
            task: task.clone(),
            job: self.name.clone(),
            slot,
            node: self.node.clone(),
            spec: TaskSpec {
                driver: DriverKind::Docker,
                command: command.iter().map(|s| (*s).to_owned()).collect(),
                env: BTreeMap::new(),
                workdir: None,
                user: None,
                resources: Resources::new(100, 64 << 20),
                kill_timeout: Duration::from_secs(5),
                ports: Vec::new(),
                image: Some(IMAGE.to_owned()),
                capabilities: Vec::new(),
                pids_limit: baton_spec::DEFAULT_PIDS_LIMIT,
                secrets: Vec::new(),
                env_secrets: std::collections::BTreeMap::new(),
                configs: Vec::new(),
            },
            task_dir: dir.path().to_owned(),
            log: LogWriter::open(dir.path(), 1 << 20).await.expect("log"),
            ports: BTreeMap::new(),
            advertise_ip: None,
            files: Default::default(),
            run_dir: std::path::PathBuf::from("/nonexistent/run"),
        };
        self.dirs.push(dir);
        self.tasks.push(task);
        run
    }

    fn network(&self) -> String {
        format!("baton-{}", self.name)
    }
}

impl Drop for TestJob {
    /// Best effort, also after a failed assertion: nothing a test made
    /// outlives it.
    fn drop(&mut self) {
        for task in &self.tasks {
            let _ = Command::new("docker")
                .args(["rm", "-f", &format!("baton-{}", task.0)])
                .output();
        }
        let _ = Command::new("docker")
            .args(["network", "rm", &self.network()])
            .output();
    }
}

fn log_of(run: &TaskRun) -> String {
    let path: PathBuf = run.task_dir.join(LOG_FILE);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

async fn start(driver: &DockerDriver, run: &TaskRun) -> Box<dyn TaskHandle> {
    match driver.start(run.clone()).await {
        Ok(handle) => handle,
        Err(e) => panic!("start {}: {e}", run.task),
    }
}

/// Whether the engine still has the task's container.
async fn container_exists(driver: &DockerDriver, task: &TaskId) -> bool {
    match driver
        .docker
        .inspect_container(&format!("baton-{}", task.0), None)
        .await
    {
        Ok(_) => true,
        Err(e) if is_status(&e, 404) => false,
        Err(e) => panic!("inspect {task}: {e}"),
    }
}

#[tokio::test]
async fn a_container_is_confined() {
    let Some(driver) = engine_or_skip().await else {
        return;
    };
    let mut job = TestJob::new("confined");
    let probe = r#"
id -u
grep -E '^(CapEff|NoNewPrivs|Seccomp):' /proc/self/status
(touch /probe && echo ROOT_RW) 2>/dev/null || echo ROOT_RO
ls /proc > /tmp/proc-list
echo "PIDS $(grep -c '^[0-9]' /tmp/proc-list)"
for comm in /proc/[0-9]*/comm; do echo "COMM $(cat $comm)"; done
test -e /proc/$AGENT_PID && echo HOST_VISIBLE || echo HOST_HIDDEN
(echo x >> /proc/$AGENT_PID/exe && echo EXE_WRITABLE) 2>/dev/null || echo EXE_REFUSED
(echo x >> /proc/1/exe && echo INIT_EXE_WRITABLE) 2>/dev/null || echo INIT_EXE_REFUSED
echo "FDS $(ls /proc/self/fd | tr '\n' ' ')"
"#;
    let mut run = job.task(&["sh", "-c", probe]).await;
    run.spec
        .env
        .insert("AGENT_PID".to_owned(), std::process::id().to_string());
    let mut handle = start(&driver, &run).await;
    let exit = handle.wait().await.expect("wait");
    let log = log_of(&run);
    assert!(exit.success(), "{exit:?}\n{log}");
    let lines: Vec<&str> = log.lines().map(str::trim_end).collect();
    for expected in [
        "65534",
        "CapEff:\t0000000000000000",
        "NoNewPrivs:\t1",
        "Seccomp:\t2",
        "ROOT_RO",
        "HOST_HIDDEN",
        "EXE_REFUSED",
        "INIT_EXE_REFUSED",
        // ls's own directory descriptor is the 3.
        "FDS 0 1 2 3",
    ] {
        assert!(lines.contains(&expected), "no line {expected:?} in:\n{log}");
    }
    let pids: usize = lines
        .iter()
        .find_map(|l| l.strip_prefix("PIDS "))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no PIDS line in:\n{log}"));
    assert!(pids <= 4, "{pids} processes visible:\n{log}");
    let own_comm = std::fs::read_to_string("/proc/self/comm").expect("own comm");
    let own_comm = own_comm.trim();
    assert!(
        !lines
            .iter()
            .any(|l| l.strip_prefix("COMM ") == Some(own_comm)),
        "the test process ({own_comm}) is visible:\n{log}"
    );
    assert!(!container_exists(&driver, &run.task).await);
}

#[tokio::test]
async fn a_memory_hog_is_oom_killed() {
    let Some(driver) = engine_or_skip().await else {
        return;
    };
    let mut job = TestJob::new("oom");
    let mut run = job
        .task(&["sh", "-c", "a=x; while :; do a=$a$a; done"])
        .await;
    run.spec.resources.memory_bytes = 32 << 20;
    let mut handle = start(&driver, &run).await;
    let exit = handle.wait().await.expect("wait");
    assert_eq!(
        exit,
        ExitInfo {
            code: None,
            signal: Some(9),
            oom_killed: true
        }
    );
}

#[tokio::test]
async fn a_fork_bomb_is_contained() {
    let Some(driver) = engine_or_skip().await else {
        return;
    };
    let mut job = TestJob::new("forkbomb");
    // Every call forks a sleeper and two more callers, until forks fail.
    // busybox sh exits on a failed fork, so the classic `f|f&` burns out by
    // itself; here the sleepers stay, holding the cgroup at its limit. The
    // main shell execs its own sleep, so the container lives until stopped.
    let mut run = job
        .task(&[
            "sh",
            "-c",
            "f(){ sleep 1000 & f & f & }; f; exec sleep 1000",
        ])
        .await;
    run.spec.pids_limit = 64;
    let mut handle = start(&driver, &run).await;
    // Each `stats` answer takes up to a second (engine 20.10 samples once a
    // second), so few attempts span a long time.
    let busy = poll(30, || async {
        let usage = driver.container_usage(&run.task).await?;
        assert!(usage.pids <= 64, "{usage:?}");
        (usage.pids > 10).then_some(usage)
    })
    .await;
    assert!(busy.is_some(), "the bomb never reached 10 processes");
    let (exit, _forced) = handle.stop(Duration::from_secs(10)).await.expect("stop");
    assert!(!exit.success(), "{exit:?}");
    assert!(!container_exists(&driver, &run.task).await);
}

#[tokio::test]
async fn a_missing_image_is_explained() {
    let Some(driver) = engine_or_skip().await else {
        return;
    };
    let mut job = TestJob::new("noimage");
    let mut run = job.task(&["true"]).await;
    run.spec.image = Some("baton-test/does-not-exist:1".to_owned());
    let err = match driver.start(run.clone()).await {
        Ok(_) => panic!("started without its image"),
        Err(e) => e.to_string(),
    };
    assert!(
        err.contains(
            "image \"baton-test/does-not-exist:1\" is not on this node and could not be pulled: "
        ),
        "{err}"
    );
    assert!(!container_exists(&driver, &run.task).await);
}

/// Whether the process `pid` sees a socket listening on `port` in its
/// network namespace (`/proc/<pid>/net/tcp{,6}`, read from the host; busybox
/// nc listens on an IPv6 socket when the kernel has IPv6).
fn listens(pid: u32, port: u16) -> bool {
    let local = format!(":{port:04X}");
    ["tcp", "tcp6"].iter().any(|table| {
        let table = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")).unwrap_or_default();
        table.lines().skip(1).any(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // `sl local_address rem_address st …`; state 0A is LISTEN.
            fields.get(1).is_some_and(|addr| addr.ends_with(&local)) && fields.get(3) == Some(&"0A")
        })
    })
}

#[tokio::test]
async fn containers_of_one_job_cannot_reach_each_other() {
    let Some(driver) = engine_or_skip().await else {
        return;
    };
    let mut job = TestJob::new("icc");
    let listener = job.task(&["nc", "-l", "-p", "8080"]).await;
    let mut listening = start(&driver, &listener).await;
    let pid = listening.pid();
    assert!(
        poll(200, || async { listens(pid, 8080).then_some(()) })
            .await
            .is_some(),
        "the listener never listened"
    );
    let inspect = driver
        .docker
        .inspect_container(&format!("baton-{}", listener.task.0), None)
        .await
        .expect("inspect listener");
    let ip = inspect
        .network_settings
        .and_then(|n| n.networks)
        .and_then(|mut networks| networks.remove(&job.network()))
        .and_then(|endpoint| endpoint.ip_address)
        .filter(|ip| !ip.is_empty())
        .expect("the listener's address on the job network");

    let mut client = job
        .task(&[
            "sh",
            "-c",
            "nc -w 2 $TARGET 8080 </dev/null && echo REACHED || echo BLOCKED",
        ])
        .await;
    client.spec.env.insert("TARGET".to_owned(), ip);
    let mut trying = start(&driver, &client).await;
    trying.wait().await.expect("wait for the client");
    let log = log_of(&client);
    assert!(log.contains("BLOCKED") && !log.contains("REACHED"), "{log}");

    listening.stop(Duration::from_secs(10)).await.expect("stop");
}

#[tokio::test]
async fn stop_stops_and_removes() {
    let Some(driver) = engine_or_skip().await else {
        return;
    };
    let mut job = TestJob::new("stop");
    let run = job.task(&["sleep", "1000"]).await;
    let mut handle = start(&driver, &run).await;
    // A generous grace: busybox sleep dies of SIGTERM (forwarded by
    // docker-init), so it is never needed in full.
    let (exit, forced) = handle.stop(Duration::from_secs(30)).await.expect("stop");
    assert_eq!(
        (exit, forced),
        (
            ExitInfo {
                code: None,
                signal: Some(15),
                oom_killed: false
            },
            false
        )
    );
    assert!(!container_exists(&driver, &run.task).await);
    // Its job's only task here: the network went with it.
    let network = driver.docker.inspect_network(&job.network(), None).await;
    assert!(
        matches!(&network, Err(e) if is_status(e, 404)),
        "{network:?}"
    );
    // A second wait (the runner may call again) answers the same.
    assert_eq!(handle.wait().await.expect("wait again"), exit);
}

/// A port of this host that is free now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind a free port")
        .port()
}

#[tokio::test]
async fn env_and_ports_reach_the_task() {
    let Some(driver) = engine_or_skip().await else {
        return;
    };
    let mut job = TestJob::new("env");
    let script = r#"echo "GREETING=$GREETING PORT=$BATON_PORT_HTTP ADDR=$BATON_ADDR_HTTP HOME=$HOME"
echo pong | nc -l -p $BATON_PORT_HTTP
exit 3"#;
    let mut run = job.task(&["sh", "-c", script]).await;
    let port = free_port();
    run.spec
        .env
        .insert("GREETING".to_owned(), "hello".to_owned());
    run.spec.ports.push(PortSpec {
        name: "http".to_owned(),
        static_port: None,
        publish: false,
    });
    run.ports.insert("http".to_owned(), port);
    let mut handle = start(&driver, &run).await;

    // The engine's proxy accepts at once and closes when the task is not
    // listening yet: try until the task answers.
    let answer = poll(200, || async {
        let mut conn = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .ok()?;
        let mut answer = String::new();
        conn.read_to_string(&mut answer).await.ok()?;
        let _ = conn.shutdown().await;
        (!answer.is_empty()).then_some(answer)
    })
    .await;
    assert_eq!(answer.as_deref(), Some("pong\n"));

    let exit = handle.wait().await.expect("wait");
    assert_eq!(exit.code, Some(3), "{exit:?}");
    let log = log_of(&run);
    assert!(
        log.contains(&format!(
            "GREETING=hello PORT={port} ADDR=0.0.0.0:{port} HOME=/tmp"
        )),
        "{log}"
    );
}

#[tokio::test]
async fn orphans_of_this_node_are_removed_and_kept_tasks_are_not() {
    let Some(driver) = engine_or_skip().await else {
        return;
    };
    let mut job = TestJob::new("orphans");
    job.node = NodeId(format!("orphan-node-{}", std::process::id()));
    let orphan = job.task(&["sleep", "1000"]).await;
    let kept = job.task(&["sleep", "1000"]).await;
    // The orphan's handle is dropped, as by an agent that crashed.
    drop(start(&driver, &orphan).await);
    let mut kept_handle = start(&driver, &kept).await;

    let removed = driver
        .remove_orphans(&job.node, |task| task == kept.task.0)
        .await;
    assert_eq!(removed, vec![orphan.task.0.clone()]);
    assert!(!container_exists(&driver, &orphan.task).await);
    assert!(container_exists(&driver, &kept.task).await);

    kept_handle
        .stop(Duration::from_secs(10))
        .await
        .expect("stop");
}
