//! Isolated tasks end to end (issue 6): what a task of the `exec` driver can
//! see and do, checked from inside the task and from the host.
//!
//! These need an agent that offers `exec` (root, cgroups, seccomp). CI runs
//! as root and sets `BATON_REQUIRE_EXEC=1`, so there a node without `exec`
//! fails the test; elsewhere the tests skip and say so.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;

use baton_testkit::drivers::{TEST_IMAGE, build_test_image, skip_unless_required};

use crate::harness::{Dev, spec_file, wait_for};

/// Whether the node of `dev` offers `driver`; panics when it does not and
/// the variable `require` is set (as CI sets them).
fn offered(dev: &Dev, driver: &str, require: &str) -> bool {
    let nodes = dev.json(&["node", "ls"]);
    let offered = nodes.as_array().expect("node list").iter().any(|n| {
        n["drivers"]
            .as_array()
            .is_some_and(|d| d.iter().any(|d| d == driver))
    });
    if !offered {
        let log = std::fs::read_to_string(dev.dir.join("dev.log")).unwrap_or_default();
        let reason = log
            .lines()
            .find(|l| l.contains("driver unavailable") && l.contains(driver))
            .unwrap_or("(no reason logged)");
        skip_unless_required(require, &format!("the {driver} driver"), reason);
    }
    offered
}

pub(crate) fn exec_offered(dev: &Dev) -> bool {
    offered(dev, "exec", "BATON_REQUIRE_EXEC")
}

/// Whether docker tasks can run, with the local test image built.
pub(crate) fn docker_offered(dev: &Dev) -> bool {
    if !offered(dev, "docker", "BATON_REQUIRE_DOCKER") {
        return false;
    }
    build_test_image().expect("the test image");
    true
}

/// Runs a batch job and waits until its one task has finished; returns it.
pub(crate) fn finished_task(dev: &Dev, job: &str, spec: &str) -> Value {
    let file = spec_file(&dev.dir, &format!("{job}.yaml"), spec);
    let file = file.to_str().expect("path");
    // `job run` waits for the batch and exits non-zero when it failed.
    let _ = dev.cli(&["job", "run", file]);
    wait_for("the task to finish", Duration::from_secs(60), || {
        dev.tasks(job)
            .into_iter()
            .find(|t| t["state"] == "complete" || t["state"] == "failed")
    })
}

fn log_of(dev: &Dev, task: &Value) -> String {
    dev.ok(&["logs", task["id"].as_str().expect("task id")])
}

/// The checks run inside a task. `AGENT_PID` is the agent's host pid.
const PROBE: &str = r#"id -u
grep -E '^(CapEff|NoNewPrivs|Seccomp):' /proc/self/status
(touch /probe && echo ROOT_RW) 2>/dev/null || echo ROOT_RO
(touch /usr/probe && echo USR_RW) 2>/dev/null || echo USR_RO
echo PROCS $(ls /proc | grep -c '^[0-9]')
test -e /proc/$AGENT_PID && echo AGENT_VISIBLE || echo AGENT_HIDDEN
(echo x >> /proc/$AGENT_PID/exe && echo AGENT_EXE_WRITABLE) 2>/dev/null || echo AGENT_EXE_REFUSED
(echo x >> /proc/1/exe && echo INIT_EXE_WRITABLE) 2>/dev/null || echo INIT_EXE_REFUSED
echo FDS $(ls /proc/self/fd | tr '\n' ' ')
(ls /var/lib /root /home /run) >/dev/null 2>&1 && echo HOST_DIRS || echo NO_HOST_DIRS
(unshare -U true && echo UNSHARE_OK) 2>/dev/null || echo UNSHARE_REFUSED
(ln -s /etc/shadow ../task.log.1 && echo PLANTED) 2>/dev/null || echo CANNOT_PLANT
echo home > $HOME/w && echo tmp > /tmp/t && cat $HOME/w /tmp/t
"#;

#[test]
fn an_exec_task_is_confined() {
    let (dev, _tmp) = Dev::start();
    if !exec_offered(&dev) {
        return;
    }
    probe_is_confined(&dev, "");
}

#[test]
fn a_docker_task_is_confined() {
    let (dev, _tmp) = Dev::start();
    if !docker_offered(&dev) {
        return;
    }
    probe_is_confined(&dev, &format!("  driver: docker\n  image: {TEST_IMAGE}\n"));
}

/// Runs [`PROBE`] as a task with the extra task fields `driver`, and checks
/// what it saw.
fn probe_is_confined(dev: &Dev, driver: &str) {
    let agent_pid = dev.child.as_ref().expect("dev").id();
    let spec = format!(
        "name: probe\ntype: batch\nrestart: {{policy: never}}\ntask:\n{driver}  \
         command: [/bin/sh, -c, {probe}]\n  env: {{AGENT_PID: \"{agent_pid}\"}}\n",
        probe = serde_json::to_string(PROBE).expect("json string")
    );
    let task = finished_task(dev, "probe", &spec);
    let log = log_of(dev, &task);
    assert_eq!(task["state"], "complete", "{task}\n{log}");
    let lines: Vec<&str> = log.lines().collect();
    for expected in [
        "65534",
        "CapEff:\t0000000000000000",
        "NoNewPrivs:\t1",
        "Seccomp:\t2",
        "ROOT_RO",
        "USR_RO",
        "AGENT_HIDDEN",
        "AGENT_EXE_REFUSED",
        "INIT_EXE_REFUSED",
        "NO_HOST_DIRS",
        "UNSHARE_REFUSED",
        "CANNOT_PLANT",
        "home",
        "tmp",
    ] {
        assert!(lines.contains(&expected), "no line {expected:?} in:\n{log}");
    }
    // The task's own processes only: tini, sh, and the probe's commands.
    let procs: usize = lines
        .iter()
        .find_map(|l| l.strip_prefix("PROCS "))
        .and_then(|n| n.trim().parse().ok())
        .expect("PROCS line");
    assert!(procs <= 5, "{procs} processes visible:\n{log}");
    // Nothing of the agent or the shim beyond stdio: 0, 1, 2 and the
    // directory `ls` itself opened.
    let fds = lines
        .iter()
        .find_map(|l| l.strip_prefix("FDS "))
        .expect("FDS line");
    assert_eq!(fds.trim(), "0 1 2 3", "{log}");
}

/// The cgroup directory of a task on this host, for a controller (v1) or the
/// unified hierarchy (v2).
fn cgroup_dir(controller: &str, task: &str) -> PathBuf {
    let v1 = PathBuf::from("/sys/fs/cgroup").join(controller);
    if v1.is_dir() {
        v1.join("baton").join(task)
    } else {
        PathBuf::from("/sys/fs/cgroup/baton").join(task)
    }
}

#[test]
fn a_memory_hog_is_oom_killed_and_reported_so() {
    let (dev, _tmp) = Dev::start();
    if !exec_offered(&dev) {
        return;
    }
    let task = memory_hog(&dev, "");
    let id = task["id"].as_str().expect("id");
    assert!(!cgroup_dir("memory", id).exists(), "cgroup left behind");
}

#[test]
fn a_memory_hog_in_docker_is_oom_killed_and_reported_so() {
    let (dev, _tmp) = Dev::start();
    if !docker_offered(&dev) {
        return;
    }
    memory_hog(&dev, &format!("  driver: docker\n  image: {TEST_IMAGE}\n"));
}

#[test]
fn a_missing_image_is_explained() {
    let (dev, _tmp) = Dev::start();
    if !docker_offered(&dev) {
        return;
    }
    let spec = "name: ghost\ntype: batch\nrestart: {policy: never}\ntask:\n  driver: docker\n  \
                image: baton-test/does-not-exist:1\n  command: [/bin/true]\n";
    let task = finished_task(&dev, "ghost", spec);
    assert_eq!(task["state"], "failed", "{task}");
    let message = task["message"].as_str().expect("message");
    assert!(
        message.contains(
            "image \"baton-test/does-not-exist:1\" is not on this node and could not be pulled"
        ),
        "{message}"
    );
}

/// Runs a task that allocates without end under a 32Mi limit; checks it
/// failed as OOM killed and returns it.
fn memory_hog(dev: &Dev, driver: &str) -> Value {
    let spec = format!(
        "name: hog\ntype: batch\nrestart: {{policy: never}}\ntask:\n{driver}  \
         command: [/bin/sh, -c, 'a=x; while :; do a=$a$a; done']\n  \
         resources: {{memory: 32Mi}}\n"
    );
    let task = finished_task(dev, "hog", &spec);
    assert_eq!(task["state"], "failed", "{task}");
    let message = task["message"].as_str().expect("message");
    assert!(
        message.starts_with("OOM killed (memory limit 32Mi"),
        "{message}"
    );
    task
}

#[test]
fn a_fork_bomb_is_held_by_the_pids_limit() {
    let (dev, _tmp) = Dev::start();
    if !exec_offered(&dev) {
        return;
    }
    // The bomb forks until the limit refuses, forever; the task's shell then
    // becomes `sleep` (exec, no fork), so the task runs while the host checks.
    let spec = "name: bomb\ntask:\n  \
                command: [/bin/sh, -c, 'f(){ f|f& }; f; exec sleep 1000']\n  \
                resources: {pids: 64}\n";
    let file = spec_file(&dev.dir, "bomb.yaml", spec);
    dev.ok(&["job", "run", "--detach", file.to_str().expect("path")]);
    let task = wait_for("the bomb to run", Duration::from_secs(30), || {
        dev.running("bomb").into_iter().next()
    });
    let id = task["id"].as_str().expect("id").to_owned();
    let pids = cgroup_dir("pids", &id);
    // The kernel counts each fork it refused at the limit.
    let refused = wait_for(
        "a fork refused at the limit",
        Duration::from_secs(30),
        || {
            let events = std::fs::read_to_string(pids.join("pids.events")).ok()?;
            let n: u64 = events.strip_prefix("max ")?.trim().parse().ok()?;
            (n > 0).then_some(n)
        },
    );
    assert!(refused > 0);
    let max: u64 = std::fs::read_to_string(pids.join("pids.max"))
        .expect("pids.max")
        .trim()
        .parse()
        .expect("number");
    assert_eq!(max, 64);
    let current: u64 = std::fs::read_to_string(pids.join("pids.current"))
        .expect("pids.current")
        .trim()
        .parse()
        .expect("number");
    assert!(current <= 64, "{current} processes");
    // The rest of the node still works: another task starts and finishes.
    let other = finished_task(
        &dev,
        "other",
        "name: other\ntype: batch\ntask:\n  command: [/bin/true]\n",
    );
    assert_eq!(other["state"], "complete", "{other}");
    // Stopping the job ends every process of the bomb and removes its cgroup.
    dev.ok(&["job", "stop", "bomb"]);
    wait_for("the bomb's cgroup to go", Duration::from_secs(30), || {
        (!pids.exists()).then_some(())
    });
}

#[test]
fn a_symlink_planted_by_a_raw_task_is_not_followed_by_logs() {
    let (dev, _tmp) = Dev::start();
    // A raw task runs as its agent (root here) in its own task directory, so
    // it can plant a link where the rotated log goes.
    let spec = "name: plant\ntype: batch\nrestart: {policy: never}\ntask:\n  driver: raw\n  \
                command: [/bin/sh, -c, 'echo planted; ln -sf /etc/passwd task.log.1']\n";
    let task = finished_task(&dev, "plant", spec);
    assert_eq!(task["state"], "complete", "{task}");
    let out = dev.cli(&["logs", task["id"].as_str().expect("id")]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stdout.contains("root:x:0:0"),
        "followed the link:\n{stdout}"
    );
    assert!(
        stderr.contains("task.log.1: it is a symbolic link, which is never followed"),
        "stdout: {stdout}\nstderr: {stderr}"
    );
}

#[test]
fn an_exec_task_does_not_outlive_a_crashed_agent() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut dev = Dev::start_in(tmp.path());
    if !exec_offered(&dev) {
        return;
    }
    let file = spec_file(
        &dev.dir,
        "sleeper.yaml",
        "name: sleeper\ntask:\n  command: [/bin/sleep, '1000']\n",
    );
    dev.ok(&["job", "run", file.to_str().expect("path")]);
    let task = dev.running("sleeper").into_iter().next().expect("running");
    let id = task["id"].as_str().expect("id").to_owned();
    let pid = task["pid"].as_i64().expect("pid");
    let cgroup = cgroup_dir("pids", &id);
    assert!(cgroup.exists(), "{}", cgroup.display());
    // kill -9 of the agent alone: its shims see their sockets close and end
    // their tasks, so nothing runs unwatched until the agent is back.
    dev.crash();
    wait_for("the task's cgroup to go", Duration::from_secs(30), || {
        (!cgroup.exists()).then_some(())
    });
    assert!(
        !crate::harness::alive(pid),
        "task process {pid} still alive"
    );
    // The restarted agent reports it lost; the service gets a new task.
    let dev = Dev::start_in(tmp.path());
    let replaced = wait_for("a replacement", Duration::from_secs(60), || {
        let tasks = dev.tasks("sleeper");
        let old = tasks.iter().find(|t| t["id"] == id.as_str())?;
        (old["state"] == "lost").then_some(())?;
        tasks.into_iter().find(|t| t["state"] == "running")
    });
    assert_ne!(replaced["id"], id.as_str());
}

/// Starts a service `name` of one sleeping task with the extra task fields
/// `driver`; returns its task id once it runs.
fn running_sleeper(dev: &Dev, name: &str, driver: &str) -> String {
    let spec = format!("name: {name}\ntask:\n{driver}  command: [/bin/sleep, '1000']\n");
    let file = spec_file(&dev.dir, &format!("{name}.yaml"), &spec);
    dev.ok(&["job", "run", file.to_str().expect("path")]);
    let task = wait_for("the task to run", Duration::from_secs(30), || {
        dev.running(name).into_iter().next()
    });
    task["id"].as_str().expect("id").to_owned()
}

/// `baton exec` into `task`: checks the command runs confined, gets our
/// stdin, and gives us its output and its exit status.
fn exec_is_confined(dev: &Dev, task: &str) {
    let mut child = std::process::Command::new(crate::harness::baton_bin())
        .args(["--config"])
        .arg(dev.config())
        .args(["exec", task, "--", "/bin/sh", "-c"])
        .arg(
            "id -u; grep -E '^(CapEff|NoNewPrivs|Seccomp):' /proc/self/status; \
             (touch /probe && echo ROOT_RW) 2>/dev/null || echo ROOT_RO; \
             read line; echo \"got $line\"; echo to-stderr >&2; exit 7",
        )
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("baton exec");
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().expect("stdin");
        stdin.write_all(b"from-stdin\n").expect("write stdin");
    }
    let out = child.wait_with_output().expect("baton exec");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(7),
        "stdout: {stdout}\nstderr: {stderr}"
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines,
        [
            "65534",
            "CapEff:\t0000000000000000",
            "NoNewPrivs:\t1",
            "Seccomp:\t2",
            "ROOT_RO",
            "got from-stdin"
        ],
        "stderr: {stderr}"
    );
    assert_eq!(stderr.trim(), "to-stderr");
}

#[test]
fn exec_enters_an_exec_task_confined() {
    let (dev, _tmp) = Dev::start();
    if !exec_offered(&dev) {
        return;
    }
    let task = running_sleeper(&dev, "sleeper", "");
    exec_is_confined(&dev, &task);
}

#[test]
fn exec_enters_a_docker_task_confined() {
    let (dev, _tmp) = Dev::start();
    if !docker_offered(&dev) {
        return;
    }
    let task = running_sleeper(
        &dev,
        "sleeper",
        &format!("  driver: docker\n  image: {TEST_IMAGE}\n"),
    );
    exec_is_confined(&dev, &task);
}

#[test]
fn exec_refuses_a_raw_task_and_a_finished_one() {
    let (dev, _tmp) = Dev::start();
    let task = running_sleeper(&dev, "plain", "  driver: raw\n");
    let out = dev.cli(&["exec", &task, "--", "/bin/true"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(
            "exec needs an isolated task (driver exec or docker); this one runs with raw"
        ),
        "{stderr}"
    );
    dev.ok(&["job", "stop", "plain"]);
    wait_for("the task to stop", Duration::from_secs(30), || {
        dev.running("plain").is_empty().then_some(())
    });
    let out = dev.cli(&["exec", &task, "--", "/bin/true"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("is not running on this node"), "{stderr}");
    let out = dev.cli(&["exec", "no-such-task", "--", "/bin/true"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("not found"));
}

#[test]
fn usage_of_running_tasks_is_shown() {
    let (dev, _tmp) = Dev::start();
    if !exec_offered(&dev) {
        return;
    }
    // A task that burns CPU in a shell loop.
    let spec = "name: burn\ntask:\n  command: [/bin/sh, -c, 'while :; do :; done']\n  \
                resources: {cpu: 500m}\n";
    let file = spec_file(&dev.dir, "burn.yaml", spec);
    dev.ok(&["job", "run", file.to_str().expect("path")]);
    // Nodes report every few seconds, from a task's second sample on.
    let usage = wait_for("the task's usage", Duration::from_secs(60), || {
        let task = dev.running("burn").into_iter().next()?;
        let usage = task.get("usage")?.clone();
        (usage["cpu_millis"].as_u64()? > 100).then_some((task, usage))
    });
    let (task, usage) = usage;
    assert!(
        usage["memory_bytes"].as_u64().expect("memory") > 0,
        "{usage}"
    );
    assert!(usage["pids"].as_u64().expect("pids") >= 1, "{usage}");
    let id = task["id"].as_str().expect("id");
    let out = dev.ok(&["task", "stats", id, "--no-stream"]);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    assert!(
        lines[0].contains("CPU") && lines[0].contains("MEM"),
        "{out}"
    );
    assert!(
        lines[1]
            .split_whitespace()
            .nth(1)
            .is_some_and(|c| c.ends_with('m')),
        "{out}"
    );
    // `task ls` shows the same columns.
    let table = dev.ok(&["task", "ls"]);
    assert!(
        table.lines().next().is_some_and(|h| h.contains("CPU")),
        "{table}"
    );
}

/// `baton exec` run on a terminal (util-linux `script` gives it one, of 40
/// rows and 100 columns): the command gets a terminal too. Returns what the
/// command printed and our exit status.
fn exec_on_a_terminal(dev: &Dev, task: &str, command: &str) -> (String, Option<i32>) {
    let exec = format!(
        "stty rows 40 cols 100; {} --config {} exec {task} -- /bin/sh -c '{command}'",
        crate::harness::baton_bin(),
        dev.config().display()
    );
    let mut child = std::process::Command::new("script")
        .args(["-qec", &exec, "/dev/null"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("script (util-linux)");
    // Held open, never written: no end of input reaches the terminal.
    let _stdin = child.stdin.take();
    let out = child.wait_with_output().expect("script");
    (
        String::from_utf8_lossy(&out.stdout).replace('\r', ""),
        out.status.code(),
    )
}

#[test]
fn exec_from_a_terminal_gets_a_terminal() {
    let (dev, _tmp) = Dev::start();
    if !exec_offered(&dev) {
        return;
    }
    let task = running_sleeper(&dev, "sleeper", "");
    let (out, code) = exec_on_a_terminal(
        &dev,
        &task,
        "tty; test -t 0 && echo STDIN_IS_TTY; stty size; grep Seccomp: /proc/self/status; exit 5",
    );
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines,
        ["/dev/pts/0", "STDIN_IS_TTY", "40 100", "Seccomp:\t2"],
        "{out}"
    );
    assert_eq!(code, Some(5), "{out}");
}

#[test]
fn exec_from_a_terminal_gets_a_terminal_in_docker() {
    let (dev, _tmp) = Dev::start();
    if !docker_offered(&dev) {
        return;
    }
    let task = running_sleeper(
        &dev,
        "sleeper",
        &format!("  driver: docker\n  image: {TEST_IMAGE}\n"),
    );
    // The engine (API 1.41) sizes an exec's terminal only once it runs, so
    // the size is not checked here.
    let (out, code) =
        exec_on_a_terminal(&dev, &task, "tty; test -t 0 && echo STDIN_IS_TTY; exit 5");
    let lines: Vec<&str> = out.lines().map(str::trim).collect();
    assert!(lines.contains(&"STDIN_IS_TTY"), "{out}");
    assert!(lines.iter().any(|l| l.starts_with("/dev/pts/")), "{out}");
    assert_eq!(code, Some(5), "{out}");
}
