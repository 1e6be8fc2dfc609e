//! Jobs end to end: services, restarts, batches, updates, stop, logs.

use std::time::Duration;

use crate::harness::{Dev, alive, signal, spec_file, text, wait_for};

const SERVICE: &str = r#"name: web
type: service
replicas: 3
task:
  driver: raw
  command: ["/bin/sh", "-c", "echo hello from $BATON_SLOT; exec sleep 1000"]
  resources: {cpu: 10m, memory: 8Mi}
  kill_timeout: 2s
restart:
  policy: always
  delay: 100ms
  max_delay: 1s
"#;

#[test]
fn service_reaches_replicas_and_a_killed_task_is_restarted() {
    let (dev, tmp) = Dev::start();
    let file = spec_file(tmp.path(), "web.yaml", SERVICE);
    let out = dev.ok(&["job", "run", file.to_str().expect("path")]);
    assert!(out.contains("job web created (version 1)"), "{out}");
    assert!(out.contains("web: running — 3/3 running"), "{out}");

    let running = dev.running("web");
    assert_eq!(running.len(), 3, "{running:?}");
    let mut slots: Vec<String> = running
        .iter()
        .map(|t| t["slot"].as_str().expect("slot").to_owned())
        .collect();
    slots.sort();
    assert_eq!(slots, vec!["0", "1", "2"]);
    for task in &running {
        let pid = task["pid"].as_i64().expect("running raw task has a pid");
        assert!(alive(pid), "pid {pid} of {} is not alive", task["id"]);
        assert_eq!(task["restarts"], 0);
        assert!(task["node"].is_string());
    }

    // kill -9 one task: its slot gets a new task, running within 5 s.
    let victim = &running[0];
    let victim_id = victim["id"].as_str().expect("id").to_owned();
    let victim_slot = victim["slot"].as_str().expect("slot").to_owned();
    signal(
        i32::try_from(victim["pid"].as_i64().expect("pid")).expect("pid"),
        "KILL",
    );
    let replacement = wait_for(
        "the killed task's slot to run again",
        Duration::from_secs(5),
        || {
            dev.running("web")
                .into_iter()
                .find(|t| t["slot"] == victim_slot.as_str() && t["id"] != victim_id.as_str())
        },
    );
    assert_eq!(replacement["restarts"], 1);
    let tasks = dev.tasks("web");
    let old = tasks
        .iter()
        .find(|t| t["id"] == victim_id.as_str())
        .expect("old task kept in history");
    assert_eq!(old["state"], "failed");
    assert_eq!(old["signal"], 9);
    assert_eq!(dev.running("web").len(), 3);

    // Its output is in its log.
    let id = replacement["id"].as_str().expect("id");
    let log = wait_for("the task's log line", Duration::from_secs(5), || {
        let out = dev.ok(&["logs", id]);
        out.contains("hello from").then_some(out)
    });
    assert_eq!(log.trim(), format!("hello from {victim_slot}"));
}

#[test]
fn resubmitting_unchanged_spec_changes_nothing_and_changed_spec_replaces_tasks() {
    let (dev, tmp) = Dev::start();
    let file = spec_file(
        tmp.path(),
        "web.yaml",
        &SERVICE.replace("replicas: 3", "replicas: 2"),
    );
    dev.ok(&["job", "run", file.to_str().expect("path")]);
    let before: Vec<String> = dev
        .running("web")
        .iter()
        .map(|t| t["id"].to_string())
        .collect();
    assert_eq!(before.len(), 2);

    let out = dev.ok(&["job", "run", file.to_str().expect("path")]);
    assert!(out.contains("job web unchanged (version 1)"), "{out}");
    let mut after: Vec<String> = dev
        .running("web")
        .iter()
        .map(|t| t["id"].to_string())
        .collect();
    after.sort();
    let mut before_sorted = before.clone();
    before_sorted.sort();
    assert_eq!(before_sorted, after);

    let changed = SERVICE
        .replace("replicas: 3", "replicas: 2")
        .replace("hello from", "hi from");
    let file = spec_file(tmp.path(), "web.yaml", &changed);
    let out = dev.ok(&["job", "run", file.to_str().expect("path")]);
    assert!(out.contains("job web updated (version 2)"), "{out}");
    let tasks = wait_for(
        "both slots on version 2 and old tasks stopped",
        Duration::from_secs(20),
        || {
            let tasks = dev.tasks("web");
            let new_running = tasks
                .iter()
                .filter(|t| t["job_version"] == 2 && t["state"] == "running")
                .count();
            let old_live = tasks
                .iter()
                .filter(|t| t["job_version"] == 1 && t["state"] == "running")
                .count();
            (new_running == 2 && old_live == 0).then_some(tasks)
        },
    );
    for old in tasks.iter().filter(|t| t["job_version"] == 1) {
        assert_eq!(old["state"], "shutdown", "{old}");
    }
}

#[test]
fn batch_job_completes_and_says_so() {
    let (dev, tmp) = Dev::start();
    let file = spec_file(
        tmp.path(),
        "batch.yaml",
        r#"name: crunch
type: batch
completions: 4
parallelism: 2
task:
  driver: raw
  command: ["/bin/sh", "-c", "echo done $BATON_SLOT"]
  resources: {cpu: 10m, memory: 8Mi}
"#,
    );
    let out = dev.ok(&["job", "run", file.to_str().expect("path")]);
    assert!(out.contains("crunch: complete — 4/4 completed"), "{out}");
    let status = dev.json(&["job", "status", "crunch"]);
    assert_eq!(status["job"]["phase"], "complete");
    assert_eq!(status["job"]["completed"], 4);
    let complete = status["tasks"]
        .as_array()
        .expect("tasks")
        .iter()
        .filter(|t| t["state"] == "complete")
        .count();
    assert_eq!(complete, 4);
    let human = dev.ok(&["job", "status", "crunch"]);
    assert!(human.contains("phase:    complete"), "{human}");
}

#[test]
fn batch_that_always_fails_ends_failed_with_its_reason() {
    let (dev, tmp) = Dev::start();
    let file = spec_file(
        tmp.path(),
        "fail.yaml",
        r#"name: doomed
type: batch
task:
  driver: raw
  command: ["/bin/sh", "-c", "echo trying; exit 3"]
  resources: {cpu: 10m, memory: 8Mi}
restart:
  policy: on-failure
  max_attempts: 2
  delay: 50ms
  max_delay: 100ms
"#,
    );
    let out = dev.cli(&["job", "run", file.to_str().expect("path")]);
    let (stdout, stderr) = text(&out);
    assert_eq!(
        out.status.code(),
        Some(1),
        "stdout: {stdout}\nstderr: {stderr}"
    );
    assert!(
        stderr.contains("failed after 2 restarts: exit code 3"),
        "stderr: {stderr}"
    );
    let status = dev.json(&["job", "status", "doomed"]);
    assert_eq!(status["job"]["phase"], "failed");
    let failure = &status["job"]["failures"][0];
    assert_eq!(failure["restarts"], 2);
    assert_eq!(failure["exit_code"], 3);
    let failed = status["tasks"]
        .as_array()
        .expect("tasks")
        .iter()
        .filter(|t| t["state"] == "failed")
        .count();
    assert_eq!(failed, 3, "first run and two restarts");
    let human = dev.ok(&["job", "status", "doomed"]);
    assert!(
        human.contains("failed after 2 restarts: exit code 3"),
        "{human}"
    );
}

#[test]
fn stopping_a_job_stops_its_processes() {
    let (dev, tmp) = Dev::start();
    let file = spec_file(
        tmp.path(),
        "web.yaml",
        &SERVICE.replace("replicas: 3", "replicas: 2"),
    );
    dev.ok(&["job", "run", file.to_str().expect("path")]);
    let pids: Vec<i64> = dev
        .running("web")
        .iter()
        .map(|t| t["pid"].as_i64().expect("pid"))
        .collect();
    let out = dev.ok(&["job", "stop", "web"]);
    assert!(out.contains("job web stopping"), "{out}");
    wait_for("every task shut down", Duration::from_secs(10), || {
        dev.tasks("web")
            .iter()
            .all(|t| t["state"] == "shutdown")
            .then_some(())
    });
    for pid in pids {
        wait_for("task process gone", Duration::from_secs(5), || {
            (!alive(pid)).then_some(())
        });
    }
    let jobs = dev.json(&["job", "ls"]);
    assert_eq!(jobs[0]["phase"], "stopped");
}

#[test]
fn follow_logs_stream_until_the_task_ends() {
    let (dev, tmp) = Dev::start();
    let file = spec_file(
        tmp.path(),
        "count.yaml",
        r#"name: count
type: batch
task:
  driver: raw
  command: ["/bin/sh", "-c", "for i in 1 2 3; do echo line $i; sleep 0.2; done; echo oops >&2"]
  resources: {cpu: 10m, memory: 8Mi}
"#,
    );
    dev.ok(&["job", "run", "--detach", file.to_str().expect("path")]);
    let task = wait_for("the task to be placed", Duration::from_secs(10), || {
        dev.tasks("count")
            .into_iter()
            .find(|t| t["node"].is_string())
    });
    let id = task["id"].as_str().expect("id").to_owned();
    let out = wait_for("the log to be readable", Duration::from_secs(10), || {
        let out = dev.cli(&["logs", "-f", &id]);
        out.status.success().then_some(out)
    });
    let (stdout, _) = text(&out);
    assert_eq!(stdout, "line 1\nline 2\nline 3\noops\n");
}

#[test]
fn a_task_that_fits_nowhere_stays_pending_and_says_why() {
    let (dev, tmp) = Dev::start();
    let file = spec_file(
        tmp.path(),
        "huge.yaml",
        "name: huge\ntask:\n  driver: raw\n  command: [/bin/sleep, \"100\"]\n  resources: {memory: 100Ti}\n",
    );
    dev.ok(&["job", "run", "--detach", file.to_str().expect("path")]);
    let task = wait_for("the unplaced reason", Duration::from_secs(10), || {
        dev.tasks("huge").into_iter().find(|t| t["message"] != "")
    });
    assert_eq!(task["state"], "pending");
    assert_eq!(task["node"], serde_json::Value::Null);
    assert_eq!(task["message"], "no node fits: 1 node: insufficient memory");
    let job = dev.json(&["job", "status", "huge"]);
    assert_eq!(job["job"]["phase"], "pending");
}

#[test]
fn draining_the_only_node_stops_its_tasks_and_activating_it_brings_them_back() {
    let (dev, tmp) = Dev::start();
    let file = spec_file(
        tmp.path(),
        "web.yaml",
        &SERVICE.replace("replicas: 3", "replicas: 2"),
    );
    dev.ok(&["job", "run", file.to_str().expect("path")]);
    let node = dev.json(&["node", "ls"])[0]["id"]
        .as_str()
        .expect("node id")
        .to_owned();
    let out = dev.ok(&["node", "update", &node, "--availability", "drain"]);
    assert_eq!(out.trim(), format!("node {node} is now drain"));
    wait_for(
        "tasks off the draining node",
        Duration::from_secs(10),
        || {
            let tasks = dev.tasks("web");
            let pending = tasks
                .iter()
                .filter(|t| {
                    t["state"] == "pending" && t["message"] == "no node fits: 1 node: draining"
                })
                .count();
            (dev.running("web").is_empty() && pending == 2).then_some(())
        },
    );
    dev.ok(&["node", "update", &node, "--availability", "active"]);
    wait_for("tasks back on the node", Duration::from_secs(10), || {
        (dev.running("web").len() == 2).then_some(())
    });
    let bad = dev.cli(&["node", "update", "no-such-node", "--availability", "pause"]);
    assert_eq!(bad.status.code(), Some(1));
    assert!(
        text(&bad).1.contains("node no-such-node not found"),
        "{}",
        text(&bad).1
    );
}
