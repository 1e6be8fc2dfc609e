//! Starting `baton dev` and running CLI commands against it.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

/// Path of the built binary.
pub fn baton_bin() -> &'static str {
    env!("CARGO_BIN_EXE_baton")
}

/// A running `baton dev`.
pub struct Dev {
    pub child: Option<Child>,
    pub dir: PathBuf,
    pub ready_line: String,
}

impl Dev {
    /// Starts `baton dev` on a fresh data dir.
    pub fn start() -> (Dev, tempfile::TempDir) {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dev = Dev::start_in(tmp.path());
        (dev, tmp)
    }

    /// Starts `baton dev` on `dir` and waits for its ready line.
    pub fn start_in(dir: &Path) -> Dev {
        Dev::spawn_in(dir).ready()
    }

    /// Starts `baton dev` on `dir`, without waiting for it to be ready.
    pub fn spawn_in(dir: &Path) -> Starting {
        let mut child = Command::new(baton_bin())
            .args(["dev", "--data-dir"])
            .arg(dir)
            .args(["--api", "127.0.0.1:0"])
            .env("BATON_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn baton dev");
        let stdout = child.stdout.take().expect("stdout");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if line.starts_with("baton dev ready") {
                    let _ = tx.send(line);
                }
            }
        });
        // Keep the log readable when a test fails, without blocking the child.
        let log_path = dir.join("dev.log");
        std::thread::spawn(move || {
            use std::io::Write;
            let mut log = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(log_path)
                .expect("dev log");
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let _ = writeln!(log, "{line}");
            }
        });
        Starting {
            dev: Dev {
                child: Some(child),
                dir: dir.to_owned(),
                ready_line: String::new(),
            },
            ready: rx,
        }
    }

    /// The client config it wrote.
    pub fn config(&self) -> PathBuf {
        self.dir.join("client.toml")
    }

    /// Runs a CLI command against it.
    pub fn cli(&self, args: &[&str]) -> Output {
        run_cli(&self.config(), args)
    }

    /// Runs a CLI command that must succeed; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "baton {args:?} failed ({:?}):\nstdout: {}\nstderr: {}",
            out.status.code(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `-o json` output of a read command.
    pub fn json(&self, args: &[&str]) -> Value {
        let mut all = args.to_vec();
        all.extend(["-o", "json"]);
        let text = self.ok(&all);
        serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("bad JSON from {args:?}: {e}\n{text}"))
    }

    /// Tasks of a job (JSON).
    pub fn tasks(&self, job: &str) -> Vec<Value> {
        self.json(&["task", "ls", "--job", job])
            .as_array()
            .expect("task list")
            .clone()
    }

    /// Running tasks of a job.
    pub fn running(&self, job: &str) -> Vec<Value> {
        self.tasks(job)
            .into_iter()
            .filter(|t| t["state"] == "running")
            .collect()
    }

    /// SIGTERM and wait: a clean stop.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let pid = i32::try_from(child.id()).expect("pid");
            signal(pid, "TERM");
            let status = wait_child(&mut child, Duration::from_secs(30));
            assert!(status.is_some(), "baton dev did not stop on SIGTERM");
        }
    }

    /// kill -9: a crash.
    pub fn crash(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Dev {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let pid = i32::try_from(child.id()).expect("pid");
            signal(pid, "TERM");
            if wait_child(&mut child, Duration::from_secs(20)).is_none() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        unmount_under(&self.dir);
    }
}

/// A `baton dev` that was started and may not be ready yet (a locked
/// manager waits for its key first). Dropped, it is stopped.
pub struct Starting {
    pub dev: Dev,
    ready: mpsc::Receiver<String>,
}

impl Starting {
    /// Waits for the ready line.
    pub fn ready(mut self) -> Dev {
        let ready_line = self
            .ready
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|_| {
                let log = std::fs::read_to_string(self.dev.dir.join("dev.log")).unwrap_or_default();
                panic!("baton dev did not become ready; its log:\n{log}")
            });
        self.dev.ready_line = ready_line;
        self.dev
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dev.dir.join("dev.log")).unwrap_or_default()
    }

    /// Its pid.
    pub fn pid(&self) -> u32 {
        self.dev.child.as_ref().expect("child").id()
    }
}

/// Detaches every mount under `dir`: the tmpfs of tasks whose agent was
/// killed and never restarted (a restarted agent sweeps them itself), so
/// that the test's directory can be removed and the host keeps no mounts.
pub fn unmount_under(dir: &Path) {
    let prefix = format!("{}/", dir.display());
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    for point in mountinfo.lines().filter_map(|line| line.split(' ').nth(4)) {
        if point.starts_with(&prefix) {
            let _ = Command::new("umount").args(["-l", point]).status();
        }
    }
}

fn wait_child(child: &mut Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

/// Sends a signal with kill(1).
pub fn signal(pid: i32, sig: &str) {
    let _ = Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .status();
}

/// Whether a pid is alive (and not a zombie).
pub fn alive(pid: i64) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|stat| {
            stat.rsplit_once(')')
                .map(|(_, rest)| !rest.trim_start().starts_with('Z'))
                .unwrap_or(false)
        })
        .unwrap_or(false)
}

/// Runs the CLI with a config file.
pub fn run_cli(config: &Path, args: &[&str]) -> Output {
    Command::new(baton_bin())
        .arg("--config")
        .arg(config)
        .args(args)
        .env_remove("BATON_CONFIG")
        .env_remove("BATON_ADDR")
        .output()
        .expect("run baton")
}

/// Polls `check` until it returns `Some`, or panics with `what` after `limit`.
pub fn wait_for<T>(what: &str, limit: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Writes a spec file into `dir`.
pub fn spec_file(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write spec");
    path
}

/// stdout + stderr as text.
pub fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A process whose stdout lines are collected; stderr goes to a log file.
pub struct Proc {
    pub child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
    log: PathBuf,
}

impl Proc {
    pub fn spawn(mut cmd: Command, log: &Path) -> Proc {
        let file = std::fs::File::create(log).expect("log file");
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::from(file))
            .spawn()
            .expect("spawn");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Proc {
            child,
            lines: rx,
            seen: Vec::new(),
            log: log.to_owned(),
        }
    }

    /// Waits for a stdout line starting with `prefix`.
    pub fn line(&mut self, prefix: &str) -> String {
        if let Some(line) = self.seen.iter().find(|l| l.starts_with(prefix)) {
            return line.clone();
        }
        loop {
            let line = self
                .lines
                .recv_timeout(Duration::from_secs(60))
                .unwrap_or_else(|_| {
                    let log = std::fs::read_to_string(&self.log).unwrap_or_default();
                    panic!(
                        "no line starting with {prefix:?}; saw {:?}; log:\n{log}",
                        self.seen
                    )
                });
            self.seen.push(line.clone());
            if line.starts_with(prefix) {
                return line;
            }
        }
    }

    /// Waits for `n` more stdout lines containing `needle`; returns every
    /// line seen so far.
    pub fn more_lines(&mut self, needle: &str, n: usize) -> Vec<String> {
        let mut found = 0;
        while found < n {
            let line = self
                .lines
                .recv_timeout(Duration::from_secs(30))
                .unwrap_or_else(|_| panic!("no more lines with {needle:?}; saw {:?}", self.seen));
            if line.contains(needle) {
                found += 1;
            }
            self.seen.push(line);
        }
        self.seen.clone()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM and wait for the exit.
    pub fn stop(&mut self) {
        signal(i32::try_from(self.child.id()).expect("pid"), "TERM");
        wait_for("the process to exit", Duration::from_secs(30), || {
            matches!(self.child.try_wait(), Ok(Some(_))).then_some(())
        });
    }
}

impl Proc {
    /// kill -9 and reap.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            signal(i32::try_from(self.child.id()).expect("pid"), "TERM");
            for _ in 0..400 {
                if let Ok(Some(_)) = self.child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(25));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// One `baton manager` and its agents, each a process on loopback, joined
/// with the worker token over mutual TLS.
pub struct Cluster {
    pub dir: PathBuf,
    pub cluster_addr: String,
    pub worker_token: String,
    pub admin: PathBuf,
    /// Declared before the manager: fields drop in order, so the agents
    /// stop first.
    pub agents: std::collections::BTreeMap<String, Proc>,
    pub manager: Proc,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for agent in self.agents.values_mut() {
            if let Ok(None) = agent.child.try_wait() {
                agent.stop();
            }
        }
        unmount_under(&self.dir);
    }
}

impl Cluster {
    /// Starts the manager on `dir/manager` and waits for its ready line.
    pub fn start(dir: &Path) -> Cluster {
        Cluster::start_with(dir, &[])
    }

    /// [`Cluster::start`] with `extra` manager options.
    pub fn start_with(dir: &Path, extra: &[&str]) -> Cluster {
        let mut cmd = Command::new(baton_bin());
        cmd.args(["manager", "--data-dir"])
            .arg(dir.join("manager"))
            .args(["--listen", "127.0.0.1:0", "--api", "127.0.0.1:0"])
            .args(extra);
        let mut manager = Proc::spawn(cmd, &dir.join("manager.log"));
        let worker_token = manager
            .line("  worker: ")
            .trim_start_matches("  worker: ")
            .trim()
            .to_owned();
        let ready = manager.line("baton manager ready");
        let cluster_addr = ready
            .split(" · ")
            .find_map(|part| part.strip_prefix("cluster port "))
            .expect("cluster port in the ready line")
            .to_owned();
        Cluster {
            dir: dir.to_owned(),
            manager,
            cluster_addr,
            worker_token,
            admin: dir.join("manager/admin.toml"),
            agents: std::collections::BTreeMap::new(),
        }
    }

    /// An agent (raw driver, `cpu`, 1 GiB) on `dir/name` joining through
    /// `join` with `token` (none: it must already have an identity).
    pub fn agent_cmd(&self, name: &str, join: &str, token: Option<&str>, cpu: &str) -> Command {
        let mut cmd = Command::new(baton_bin());
        cmd.args(["agent", "--data-dir"])
            .arg(self.dir.join(name))
            .args([
                "--join",
                join,
                "--enable-raw",
                "--cpu",
                cpu,
                "--memory",
                "1Gi",
            ])
            .env_remove("BATON_JOIN_TOKEN");
        if let Some(token) = token {
            cmd.env("BATON_JOIN_TOKEN", token);
        }
        cmd
    }

    /// Spawns an agent and waits for its ready line; returns its node id.
    pub fn run_agent(&mut self, name: &str, cmd: Command) -> String {
        let mut agent = Proc::spawn(cmd, &self.dir.join(format!("{name}.log")));
        let ready = agent.line("baton agent ready: node ");
        let id = ready
            .trim_start_matches("baton agent ready: node ")
            .split(' ')
            .next()
            .expect("node id")
            .to_owned();
        self.agents.insert(name.to_owned(), agent);
        id
    }

    /// An agent joining through `join` with `token`; returns its node id.
    pub fn add_agent_via(
        &mut self,
        name: &str,
        join: &str,
        token: Option<&str>,
        cpu: &str,
    ) -> String {
        let cmd = self.agent_cmd(name, join, token, cpu);
        self.run_agent(name, cmd)
    }

    /// An agent joining with the worker token, with `extra` options, once
    /// the cluster lists it `ready`; returns its node id.
    pub fn add_agent_with(&mut self, name: &str, cpu: &str, extra: &[&str]) -> String {
        let mut cmd = self.agent_cmd(name, &self.cluster_addr, Some(&self.worker_token), cpu);
        cmd.args(extra);
        let id = self.run_agent(name, cmd);
        self.wait_node_state(&id, "ready");
        id
    }

    /// [`Cluster::add_agent_with`] without extra options.
    pub fn add_agent(&mut self, name: &str, cpu: &str) -> String {
        self.add_agent_with(name, cpu, &[])
    }

    pub fn cli(&self, args: &[&str]) -> Output {
        run_cli(&self.admin, args)
    }

    /// The admin client config the manager wrote.
    pub fn admin_config(&self) -> baton_api::ClientConfig {
        baton_api::ClientConfig::load(&self.admin).expect("admin.toml")
    }

    /// The cluster's root CA, as the admin config holds it.
    pub fn root_pem(&self) -> String {
        self.admin_config().ca_cert
    }

    /// An agent's own `(cert, key)` PEM from its data dir.
    pub fn agent_identity(&self, name: &str) -> (String, String) {
        let dir = self.dir.join(name).join("identity");
        (
            std::fs::read_to_string(dir.join("cert.pem")).expect("agent cert"),
            std::fs::read_to_string(dir.join("key.pem")).expect("agent key"),
        )
    }

    /// A command that must succeed; its stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        let (stdout, stderr) = text(&out);
        assert!(out.status.success(), "baton {args:?}: {stderr}\n{stdout}");
        stdout
    }

    /// A command's `-o json` output.
    pub fn json(&self, args: &[&str]) -> Value {
        let mut all = args.to_vec();
        all.extend(["-o", "json"]);
        serde_json::from_str(&self.ok(&all)).expect("json")
    }

    /// Submits a spec file written to `dir/<name>.yaml` and waits until it runs.
    pub fn run_job(&self, name: &str, spec: &str) {
        let file = spec_file(&self.dir, &format!("{name}.yaml"), spec);
        self.ok(&["job", "run", file.to_str().expect("path")]);
    }

    pub fn tasks(&self, job: &str) -> Vec<Value> {
        self.json(&["task", "ls", "--job", job])
            .as_array()
            .expect("tasks")
            .clone()
    }

    /// The node `id` as `baton node ls -o json` lists it.
    pub fn node(&self, id: &str) -> Value {
        self.json(&["node", "ls"])
            .as_array()
            .expect("nodes")
            .iter()
            .find(|n| n["id"] == id)
            .cloned()
            .unwrap_or_else(|| panic!("node {id} not listed"))
    }

    pub fn node_state(&self, id: &str) -> Option<String> {
        self.json(&["node", "ls"])
            .as_array()
            .expect("nodes")
            .iter()
            .find(|n| n["id"] == id)
            .map(|n| n["state"].as_str().expect("state").to_owned())
    }

    pub fn wait_node_state(&self, id: &str, state: &str) {
        wait_for(
            &format!("node {id} to be {state}"),
            Duration::from_secs(30),
            || (self.node_state(id).as_deref() == Some(state)).then_some(()),
        );
    }
}

/// A single-threaded runtime for a test's async part.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// What a raw-driver node with `cpu_millis` and 1 GiB says of itself when
/// it opens a session as `node` (a test speaking the agents' protocol).
pub fn node_description(node: &str, hostname: &str, cpu_millis: u64) -> baton_rpc::NodeDescription {
    baton_rpc::NodeDescription {
        labels: Default::default(),
        node_id: baton_state::NodeId(node.to_owned()),
        hostname: hostname.to_owned(),
        capacity: baton_spec::Resources {
            disk_bytes: 0,
            cpu_millis,
            memory_bytes: 1 << 30,
        },
        drivers: std::collections::BTreeSet::from([baton_spec::DriverKind::Raw]),
        version: "0.0.0".to_owned(),
        address: None,
    }
}

/// Runs the CLI (no client config) with `input` on its stdin.
pub fn run_with_stdin(args: &[&std::ffi::OsStr], input: &[u8]) -> Output {
    use std::io::Write;
    let mut child = Command::new(baton_bin())
        .args(args)
        .env_remove("BATON_CONFIG")
        .env_remove("BATON_ADDR")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run baton");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input)
        .expect("write stdin");
    child.wait_with_output().expect("baton")
}
