//! Isolated tasks end to end (issue 6): what a task of the `exec` driver can
//! see and do, checked from inside the task and from the host.
//!
//! These need an agent that offers `exec` (root, cgroups, seccomp). CI runs
//! as root and sets `BATON_REQUIRE_EXEC=1`, so there a node without `exec`
//! fails the test; elsewhere the tests skip and say so.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;

use crate::harness::{Dev, spec_file, wait_for};

/// Whether the node of `dev` offers the exec driver; panics when it does not
/// and `BATON_REQUIRE_EXEC` is set.
fn exec_offered(dev: &Dev) -> bool {
    let nodes = dev.json(&["node", "ls"]);
    let offered = nodes.as_array().expect("node list").iter().any(|n| {
        n["drivers"]
            .as_array()
            .is_some_and(|d| d.iter().any(|d| d == "exec"))
    });
    if !offered {
        let log = std::fs::read_to_string(dev.dir.join("dev.log")).unwrap_or_default();
        let reason = log
            .lines()
            .find(|l| l.contains("driver unavailable"))
            .unwrap_or("(no reason logged)")
            .to_owned();
        assert!(
            std::env::var_os("BATON_REQUIRE_EXEC").is_none(),
            "BATON_REQUIRE_EXEC is set but the node does not offer exec: {reason}"
        );
        eprintln!("skipped: this node cannot run exec tasks: {reason}");
    }
    offered
}

/// Runs a batch job and waits until its one task has finished; returns it.
fn finished_task(dev: &Dev, job: &str, spec: &str) -> Value {
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
echo work > /work/w && echo tmp > /tmp/t && cat /work/w /tmp/t
"#;

#[test]
fn an_exec_task_is_confined() {
    let (dev, _tmp) = Dev::start();
    if !exec_offered(&dev) {
        return;
    }
    let agent_pid = dev.child.as_ref().expect("dev").id();
    let spec = format!(
        "name: probe\ntype: batch\nrestart: {{policy: never}}\ntask:\n  \
         command: [/bin/sh, -c, {probe}]\n  env: {{AGENT_PID: \"{agent_pid}\"}}\n",
        probe = serde_json::to_string(PROBE).expect("json string")
    );
    let task = finished_task(&dev, "probe", &spec);
    let log = log_of(&dev, &task);
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
        "work",
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
    let spec = "name: hog\ntype: batch\nrestart: {policy: never}\ntask:\n  \
                command: [/bin/sh, -c, 'a=x; while :; do a=$a$a; done']\n  \
                resources: {memory: 32Mi}\n";
    let task = finished_task(&dev, "hog", spec);
    assert_eq!(task["state"], "failed", "{task}");
    let message = task["message"].as_str().expect("message");
    assert!(
        message.starts_with("OOM killed (memory limit 32Mi"),
        "{message}"
    );
    let id = task["id"].as_str().expect("id");
    assert!(!cgroup_dir("memory", id).exists(), "cgroup left behind");
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
