//! Placement end to end: node labels (agent's and operator's) with
//! constraints and spread, host ports given to tasks, scaling, planning a
//! submission without making it, and draining a node.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::harness::{Cluster, Dev, baton_bin, spec_file, text, wait_for};

/// Long enough for a task to be placed and started on a loaded machine;
/// the tests wait for conditions, this only bounds a hung one.
const CONVERGE: Duration = Duration::from_secs(30);

impl Cluster {
    /// Running tasks of `job`: node id -> how many.
    fn running_counts_by_node(&self, job: &str) -> BTreeMap<String, usize> {
        running_by_node(&self.json(&["task", "ls", "--job", job]))
    }
}

fn running_by_node(tasks: &Value) -> BTreeMap<String, usize> {
    let mut by_node = BTreeMap::new();
    for task in tasks.as_array().expect("tasks") {
        if task["state"] == "running" && task["desired"] == "running" {
            *by_node
                .entry(task["node"].as_str().expect("node").to_owned())
                .or_default() += 1;
        }
    }
    by_node
}

/// A service of `replicas` sleeping tasks, with `extra` top-level YAML.
fn service(name: &str, replicas: u32, extra: &str) -> String {
    format!(
        "name: {name}\nreplicas: {replicas}\n{extra}task:\n  driver: raw\n  command: [\"/bin/sleep\", \"1000\"]\n  resources: {{cpu: 10m, memory: 8Mi}}\n  kill_timeout: 1s\nrestart:\n  delay: 100ms\n"
    )
}

fn the_only_node(dev: &Dev) -> String {
    let nodes = dev.json(&["node", "ls"]);
    let nodes = nodes.as_array().expect("nodes");
    assert_eq!(nodes.len(), 1, "{nodes:?}");
    nodes[0]["id"].as_str().expect("id").to_owned()
}

#[test]
fn agent_labels_steer_constraints_and_operator_labels_override_them() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut cluster = Cluster::start(tmp.path());
    let a = cluster.add_agent_with("a", "1", &["--label", "zone=a", "--label", "disk=ssd"]);
    let b = cluster.add_agent_with("b", "1", &["--label", "zone=b"]);

    // The cluster sees each agent's labels; the table shows them compactly.
    let node_a = cluster.node(&a);
    assert_eq!(
        node_a["labels"],
        serde_json::json!({"zone": "a", "disk": "ssd"})
    );
    assert_eq!(node_a["agent_labels"], node_a["labels"]);
    assert_eq!(node_a["operator_labels"], serde_json::json!({}));
    assert!(
        node_a["disk_bytes"].as_u64().is_some_and(|d| d > 0),
        "{node_a}"
    );
    let table = cluster.ok(&["node", "ls"]);
    assert!(table.contains("disk=ssd,zone=a"), "{table}");

    // A hard constraint: every task on the zone=b node.
    cluster.run_job(
        "pinned",
        &service("pinned", 3, "constraints: [\"node.labels.zone == b\"]\n"),
    );
    let by_node = cluster.running_counts_by_node("pinned");
    assert_eq!(by_node, BTreeMap::from([(b.clone(), 3)]), "only on zone b");

    // An operator relabels a: zone=b wins over its agent's zone=a.
    let out = cluster.ok(&["node", "label", &a, "add", "zone=b", "rack=r1"]);
    assert!(out.contains("zone=b*"), "{out}");
    let node_a = cluster.node(&a);
    assert_eq!(node_a["labels"]["zone"], "b");
    assert_eq!(node_a["agent_labels"]["zone"], "a");
    assert_eq!(
        node_a["operator_labels"],
        serde_json::json!({"zone": "b", "rack": "r1"})
    );
    // Now both nodes are zone b: at most one per node puts one on each.
    cluster.run_job(
        "both",
        &service(
            "both",
            2,
            "constraints: [\"node.labels.zone == b\"]\nmax_per_node: 1\n",
        ),
    );
    assert_eq!(
        cluster.running_counts_by_node("both"),
        BTreeMap::from([(a.clone(), 1), (b.clone(), 1)])
    );

    // The agent's own label cannot be removed from the cluster; the
    // operator's can, and the agent's value shows again.
    let out = cluster.cli(&["node", "label", &a, "rm", "disk"]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("set by its agent") && stderr.contains("restart the agent without"),
        "{stderr}"
    );
    let out = cluster.ok(&["node", "label", &a, "rm", "zone", "rack"]);
    assert!(out.contains("zone is now a, as its agent sets it"), "{out}");
    assert_eq!(cluster.node(&a)["labels"]["zone"], "a");
    let out = cluster.cli(&["node", "label", &a, "add", "bad key=x"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out).1);

    // Spread over the zone: as many tasks in zone a as in zone b, although
    // binpacking alone would fill one node first.
    cluster.run_job(
        "spread",
        &service("spread", 4, "spread: {attribute: node.labels.zone}\n"),
    );
    assert_eq!(
        cluster.running_counts_by_node("spread"),
        BTreeMap::from([(a, 2), (b, 2)])
    );
}

#[test]
fn an_agent_refuses_invalid_labels_before_joining() {
    let tmp = tempfile::tempdir().expect("tempdir");
    for (label, expected) in [
        ("--label=-zone=a", "must start with a letter or digit"),
        ("--label=zone", "is not a label (expected key=value"),
    ] {
        let out = Command::new(baton_bin())
            .args(["agent", "--data-dir"])
            .arg(tmp.path().join("a"))
            .args(["--join", "127.0.0.1:1", label])
            .output()
            .expect("run agent");
        let (_, stderr) = text(&out);
        assert_eq!(out.status.code(), Some(2), "{label}: {stderr}");
        assert!(stderr.contains(expected), "{label}: {stderr}");
    }
}

const PORTS: &str = r#"name: ports
replicas: 1
task:
  driver: raw
  command: ["/bin/sh", "-c", "env | grep '^BATON_' | sort; exec sleep 1000"]
  resources: {cpu: 10m, memory: 8Mi}
  kill_timeout: 1s
  ports:
    - name: http
    - name: admin
      static: 18080
      publish: true
"#;

#[test]
fn a_task_is_told_its_dynamic_and_static_ports() {
    let (dev, tmp) = Dev::start();
    let file = spec_file(tmp.path(), "ports.yaml", PORTS);
    dev.ok(&["job", "run", file.to_str().expect("path")]);
    let task = dev.running("ports").pop().expect("a running task");
    let id = task["id"].as_str().expect("id");
    let http = task["ports"]["http"]
        .as_u64()
        .expect("a dynamic port assigned");
    assert!((20_000..=32_000).contains(&http), "{task}");
    assert_eq!(task["ports"]["admin"], 18080, "{task}");
    let log = wait_for("the task's environment in its log", CONVERGE, || {
        let out = dev.ok(&["logs", id]);
        out.contains("BATON_PORT_HTTP").then_some(out)
    });
    for line in [
        format!("BATON_PORT_HTTP={http}"),
        format!("BATON_ADDR_HTTP=127.0.0.1:{http}"),
        "BATON_PORT_ADMIN=18080".to_owned(),
        "BATON_ADDR_ADMIN=0.0.0.0:18080".to_owned(),
    ] {
        assert!(log.lines().any(|l| l == line), "{line} in:\n{log}");
    }
}

#[test]
fn a_second_task_wanting_a_static_port_taken_on_the_only_node_waits_and_says_why() {
    let (dev, tmp) = Dev::start();
    let spec = service("fixed", 2, "").replace(
        "  kill_timeout: 1s\n",
        "  kill_timeout: 1s\n  ports:\n    - name: web\n      static: 18081\n",
    );
    let file = spec_file(tmp.path(), "fixed.yaml", &spec);
    dev.ok(&["job", "run", "--detach", file.to_str().expect("path")]);
    let pending = wait_for(
        "one task running and one pending with a reason",
        CONVERGE,
        || {
            let tasks = dev.tasks("fixed");
            let running = tasks.iter().filter(|t| t["state"] == "running").count();
            let pending: Vec<&Value> = tasks
                .iter()
                .filter(|t| t["state"] == "pending" && t["message"] != "")
                .collect();
            (running == 1 && pending.len() == 1).then(|| pending[0].clone())
        },
    );
    let message = pending["message"].as_str().expect("message");
    assert!(
        message.contains("port") && message.contains("18081"),
        "{message}"
    );
    assert_eq!(pending["node"], Value::Null);
}

#[test]
fn a_service_scales_up_and_down() {
    let (dev, tmp) = Dev::start();
    let file = spec_file(tmp.path(), "web.yaml", &service("web", 1, ""));
    dev.ok(&["job", "run", file.to_str().expect("path")]);
    let out = dev.ok(&["job", "scale", "web", "3"]);
    assert!(
        out.contains("job web scaled from 1 to 3 replicas (version 2)"),
        "{out}"
    );
    wait_for("three running", CONVERGE, || {
        (dev.running("web").len() == 3).then_some(())
    });
    let out = dev.ok(&["job", "scale", "web", "3"]);
    assert!(out.contains("job web already has 3 replicas"), "{out}");
    let out = dev.ok(&["job", "scale", "web", "1"]);
    assert!(out.contains("job web scaled from 3 to 1 replicas"), "{out}");
    wait_for("one running, slots 1 and 2 stopped", CONVERGE, || {
        let tasks = dev.tasks("web");
        let running: Vec<&Value> = tasks.iter().filter(|t| t["state"] == "running").collect();
        let stopped = tasks
            .iter()
            .filter(|t| t["state"] == "shutdown" && (t["slot"] == "1" || t["slot"] == "2"))
            .count();
        (running.len() == 1 && running[0]["slot"] == "0" && stopped == 2).then_some(())
    });
    let job = dev.json(&["job", "status", "web"]);
    assert_eq!(job["job"]["desired_tasks"], 1);

    let batch = "name: once\ntype: batch\ntask:\n  driver: raw\n  command: [\"/bin/true\"]\n";
    let file = spec_file(tmp.path(), "once.yaml", batch);
    dev.ok(&["job", "run", "--detach", file.to_str().expect("path")]);
    let out = dev.cli(&["job", "scale", "once", "2"]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("only service jobs are scaled"), "{stderr}");
    let out = dev.cli(&["job", "scale", "nope", "2"]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("not found"), "{stderr}");
}

#[test]
fn a_plan_shows_where_tasks_would_go_and_changes_nothing() {
    let (dev, tmp) = Dev::start();
    let node = the_only_node(&dev);
    let file = spec_file(tmp.path(), "web.yaml", &service("web", 3, ""));
    let path = file.to_str().expect("path");

    let out = dev.ok(&["job", "plan", path]);
    assert!(
        out.contains("job web (service) would be created (version 1)"),
        "{out}"
    );
    assert!(out.contains("create 3 tasks, stop 0, keep 0"), "{out}");
    let creates: Vec<&str> = out
        .lines()
        .filter(|l| l.starts_with("create ") && l.contains(" web "))
        .collect();
    assert_eq!(creates.len(), 3, "{out}");
    assert!(creates.iter().all(|l| l.contains(&node)), "{out}");
    let plan = dev.json(&["job", "plan", path]);
    assert_eq!(plan["outcome"], "created");
    let create = plan["create"].as_array().expect("create");
    assert_eq!(create.len(), 3);
    assert!(create.iter().all(|t| t["node"] == node.as_str()), "{plan}");
    assert_eq!(
        dev.json(&["job", "ls"]),
        serde_json::json!([]),
        "nothing submitted"
    );
    assert_eq!(
        dev.json(&["task", "ls"]),
        serde_json::json!([]),
        "no task made"
    );

    // A task too big for the node: the plan says why.
    let big = service("big", 1, "").replace("cpu: 10m", "cpu: 10000");
    let big_file = spec_file(tmp.path(), "big.yaml", &big);
    let out = dev.ok(&["job", "plan", big_file.to_str().expect("path")]);
    assert!(out.contains("(1 cannot be placed)"), "{out}");
    assert!(out.contains("cannot be placed: "), "{out}");

    // An update: the first slot's replacement, and the rest counted.
    dev.ok(&["job", "run", path]);
    let before = dev.tasks("web");
    let changed = service("web", 3, "").replace("\"1000\"", "\"2000\"");
    let file = spec_file(tmp.path(), "web2.yaml", &changed);
    let out = dev.ok(&["job", "plan", file.to_str().expect("path")]);
    assert!(
        out.contains("job web (service) would be updated (version 2)"),
        "{out}"
    );
    assert!(out.contains("create 1 task, stop 0, keep 3"), "{out}");
    assert!(
        out.contains("then 2 more slots replaced one at a time"),
        "{out}"
    );
    let out = dev.ok(&["job", "plan", path]);
    assert!(out.contains("is unchanged (version 1)"), "{out}");
    assert!(out.contains("nothing would change"), "{out}");
    assert_eq!(dev.tasks("web"), before, "planning changed no task");
    assert_eq!(dev.json(&["job", "status", "web"])["job"]["version"], 1);

    // An invalid spec: the errors and exit code of `job run`.
    let bad = spec_file(tmp.path(), "bad.yaml", "name: Bad\ntask: {}\n");
    let plan = dev.cli(&["job", "plan", bad.to_str().expect("path")]);
    let run = dev.cli(&["job", "run", bad.to_str().expect("path")]);
    assert_eq!(plan.status.code(), Some(2));
    assert_eq!(text(&plan).1, text(&run).1);
}

#[test]
fn draining_a_node_moves_a_service_task_to_the_other_node() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut cluster = Cluster::start(tmp.path());
    let first = cluster.add_agent("a", "1");
    let second = cluster.add_agent("b", "1");
    cluster.run_job("web", &service("web", 1, ""));
    let by_node = cluster.running_counts_by_node("web");
    let (from, _) = by_node.first_key_value().expect("running");
    let from = from.clone();
    let to = if from == first { second } else { first };

    let out = cluster.cli(&[
        "node",
        "update",
        &from,
        "--availability",
        "pause",
        "--deadline",
        "1m",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out).1);
    assert!(
        text(&out)
            .1
            .contains("--deadline is for --availability drain")
    );

    let out = cluster.ok(&[
        "node",
        "update",
        &from,
        "--availability",
        "drain",
        "--deadline",
        "10m",
    ]);
    assert!(out.contains(&format!("node {from} is now drain")), "{out}");
    assert!(out.contains("tasks let finish are stopped at"), "{out}");
    let node = cluster.node(&from);
    assert_eq!(node["availability"], "drain");
    assert!(node["drain_deadline"].as_u64().is_some(), "{node}");
    let table = cluster.ok(&["node", "ls"]);
    assert!(table.contains("drain until"), "{table}");

    wait_for("the task to run on the other node", CONVERGE, || {
        let tasks = cluster.json(&["task", "ls", "--job", "web"]);
        let moved = running_by_node(&tasks) == BTreeMap::from([(to.clone(), 1)]);
        let old_stopped = tasks
            .as_array()
            .expect("tasks")
            .iter()
            .any(|t| t["node"] == from.as_str() && t["state"] == "shutdown");
        (moved && old_stopped).then_some(())
    });
}

#[test]
fn a_higher_priority_job_evicts_a_lower_one_only_when_it_may_preempt() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut cluster = Cluster::start(tmp.path());
    cluster.add_agent("a1", "1"); // 1 CPU
    let sized = |name: &str, extra: &str| service(name, 1, extra).replace("cpu: 10m", "cpu: 600m");
    cluster.run_job("low", &sized("low", "priority: 10\n"));
    // Higher priority without `preempt`: it waits, the low task keeps running.
    let polite = spec_file(
        tmp.path(),
        "polite.yaml",
        &sized("polite", "priority: 90\n"),
    );
    cluster.ok(&["job", "run", "--detach", polite.to_str().expect("path")]);
    wait_for("polite pending with a reason", CONVERGE, || {
        let tasks = cluster.json(&["task", "ls", "--job", "polite"]);
        tasks
            .as_array()
            .expect("tasks")
            .iter()
            .any(|t| {
                t["state"] == "pending"
                    && t["message"]
                        .as_str()
                        .is_some_and(|m| m.contains("insufficient cpu"))
            })
            .then_some(())
    });
    assert_eq!(
        cluster
            .running_counts_by_node("low")
            .values()
            .sum::<usize>(),
        1
    );
    cluster.ok(&["job", "stop", "polite"]);
    // With `preempt: true` it evicts the low task, which says by whom.
    let urgent = spec_file(
        tmp.path(),
        "urgent.yaml",
        &sized("urgent", "priority: 90\npreempt: true\n"),
    );
    cluster.ok(&["job", "run", "--detach", urgent.to_str().expect("path")]);
    wait_for("urgent running", CONVERGE, || {
        (cluster
            .running_counts_by_node("urgent")
            .values()
            .sum::<usize>()
            == 1)
            .then_some(())
    });
    let low = cluster.json(&["task", "ls", "--job", "low"]);
    let low = low.as_array().expect("tasks");
    let evicted = low
        .iter()
        .find(|t| t["desired"] == "shutdown")
        .unwrap_or_else(|| panic!("an evicted low task: {low:?}"));
    let message = evicted["message"].as_str().expect("message");
    assert!(
        message.starts_with("preempted by task urgent.") && message.contains("(priority 90)"),
        "{message}"
    );
    // Its replacement waits: nothing lower takes the room back.
    assert!(
        low.iter()
            .any(|t| t["state"] == "pending" && t["desired"] == "running"),
        "{low:?}"
    );
    assert_eq!(
        cluster
            .running_counts_by_node("low")
            .values()
            .sum::<usize>(),
        0
    );
}
