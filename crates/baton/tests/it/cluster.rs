//! A real cluster on loopback: one `baton manager` and several `baton agent`
//! processes joined with tokens over mutual TLS.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::harness::{Cluster, alive, signal, spec_file, text, wait_for};

impl Cluster {
    /// Running slots of `job` by node.
    fn running_slots_by_node(&self, job: &str) -> BTreeMap<String, Vec<String>> {
        let mut by_node: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for task in self
            .json(&["task", "ls", "--job", job])
            .as_array()
            .expect("tasks")
        {
            if task["state"] == "running" {
                by_node
                    .entry(task["node"].as_str().expect("node").to_owned())
                    .or_default()
                    .push(task["slot"].as_str().expect("slot").to_owned());
            }
        }
        by_node
    }
}

fn service(name: &str, replicas: u32) -> String {
    format!(
        "name: {name}\nreplicas: {replicas}\ntask:\n  driver: raw\n  command: [\"/bin/sleep\", \"1000\"]\n  resources: {{cpu: 100m, memory: 16Mi}}\n  kill_timeout: 1s\nrestart:\n  delay: 100ms\n"
    )
}

#[test]
fn three_agents_join_with_the_token_and_a_service_spreads_over_them() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut cluster = Cluster::start(tmp.path());
    let mut ids: Vec<String> = ["a1", "a2", "a3"]
        .iter()
        .map(|name| cluster.add_agent(name, "200m"))
        .collect();
    ids.sort();
    let nodes = cluster.json(&["node", "ls"]);
    let mut listed: Vec<String> = nodes
        .as_array()
        .expect("nodes")
        .iter()
        .filter(|n| n["state"] == "ready")
        .map(|n| n["id"].as_str().expect("id").to_owned())
        .collect();
    listed.sort();
    assert_eq!(
        listed, ids,
        "every agent is a ready node under its cluster-assigned id"
    );

    let file = spec_file(tmp.path(), "web.yaml", &service("web", 6));
    let out = cluster.cli(&["job", "run", file.to_str().expect("path")]);
    assert!(out.status.success(), "{}", text(&out).1);
    let by_node = cluster.running_slots_by_node("web");
    assert_eq!(by_node.len(), 3, "{by_node:?}");
    assert!(
        by_node.values().all(|slots| slots.len() == 2),
        "{by_node:?}"
    );
}

#[test]
fn bad_tokens_are_refused_with_a_clear_message() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let cluster = Cluster::start(tmp.path());
    let good = cluster.worker_token.clone();
    // Same secret, another CA digest.
    let parts: Vec<&str> = good.split('-').collect();
    let wrong_ca = format!("BATON-1-{}-{}", "0".repeat(64), parts[3]);
    // This cluster's CA, an unknown secret.
    let wrong_secret = format!("BATON-1-{}-{}", parts[2], "0".repeat(64));
    for (what, token, expected) in [
        ("wrong CA digest", wrong_ca.as_str(), "refus"),
        (
            "unknown secret",
            wrong_secret.as_str(),
            "join token refused",
        ),
        ("garbage", "hello", "join"),
    ] {
        let out = cluster
            .agent_cmd(
                &format!("bad-{}", what.replace(' ', "-")),
                &cluster.cluster_addr,
                Some(token),
                "100m",
            )
            .output()
            .expect("run agent");
        let (_, stderr) = text(&out);
        assert_eq!(out.status.code(), Some(1), "{what}: {stderr}");
        assert!(stderr.contains(expected), "{what}: {stderr}");
        assert!(
            !stderr.contains(&parts[3][..16]),
            "{what}: the secret leaked: {stderr}"
        );
    }
    let nodes = cluster.json(&["node", "ls"]);
    assert_eq!(nodes.as_array().expect("nodes").len(), 0);
}

#[test]
fn a_killed_agent_goes_down_its_tasks_move_and_it_rejoins_without_duplicates() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut cluster = Cluster::start(tmp.path());
    let mut names = BTreeMap::new();
    for name in ["a1", "a2", "a3"] {
        let id = cluster.add_agent(name, "1");
        names.insert(id, name.to_owned());
    }
    let file = spec_file(tmp.path(), "web.yaml", &service("web", 2));
    let out = cluster.cli(&["job", "run", file.to_str().expect("path")]);
    assert!(out.status.success(), "{}", text(&out).1);
    let before = cluster.running_slots_by_node("web");
    let (victim_id, victim_slots) = before
        .iter()
        .next()
        .map(|(k, v)| (k.clone(), v.clone()))
        .expect("a node");
    let victim = names[&victim_id].clone();
    let pids: Vec<i64> = cluster
        .json(&["task", "ls", "--job", "web"])
        .as_array()
        .expect("tasks")
        .iter()
        .filter(|t| t["node"] == victim_id.as_str() && t["state"] == "running")
        .map(|t| t["pid"].as_i64().expect("pid"))
        .collect();
    assert_eq!(pids.len(), victim_slots.len());

    cluster.agents.get_mut(&victim).expect("victim").kill9();
    // The default grace on a small cluster is 4 s, checked every 250 ms (kill
    // to down measured at about 4.0 s); the bound here only stops a hung test.
    wait_for("the node to be down", Duration::from_secs(20), || {
        let nodes = cluster.json(&["node", "ls"]);
        nodes
            .as_array()
            .expect("nodes")
            .iter()
            .any(|n| n["id"] == victim_id.as_str() && n["state"] == "down")
            .then_some(())
    });
    wait_for(
        "the tasks to run elsewhere",
        Duration::from_secs(20),
        || {
            let now = cluster.running_slots_by_node("web");
            let total: usize = now.values().map(Vec::len).sum();
            (total == 2 && !now.contains_key(&victim_id)).then_some(())
        },
    );

    // It rejoins with its old identity (no token) and kills what it left behind.
    let cmd = cluster.agent_cmd(&victim, &cluster.cluster_addr, None, "1");
    let id = cluster.run_agent(&victim, cmd);
    assert_eq!(id, victim_id);
    for pid in pids {
        wait_for("the orphan to be killed", Duration::from_secs(10), || {
            (!alive(pid)).then_some(())
        });
    }
    wait_for(
        "the node to be ready again",
        Duration::from_secs(20),
        || {
            let nodes = cluster.json(&["node", "ls"]);
            nodes
                .as_array()
                .expect("nodes")
                .iter()
                .any(|n| n["id"] == victim_id.as_str() && n["state"] == "ready")
                .then_some(())
        },
    );
    let mut slots: Vec<String> = cluster
        .running_slots_by_node("web")
        .into_values()
        .flatten()
        .collect();
    slots.sort();
    assert_eq!(slots, vec!["0", "1"], "each slot runs exactly once");
}

/// The node's state as `baton node ls` shows it.
fn node_state(cluster: &Cluster, id: &str) -> Option<String> {
    cluster
        .json(&["node", "ls"])
        .as_array()
        .expect("nodes")
        .iter()
        .find(|n| n["id"] == id)
        .and_then(|n| n["state"].as_str().map(str::to_owned))
}

/// An agent that gets no CPU for 2 s (SIGSTOP: a starved or paused process)
/// misses its heartbeats meanwhile but is not marked down: the grace is three
/// periods and a second.
#[test]
fn an_agent_without_cpu_for_two_seconds_is_not_marked_down() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut cluster = Cluster::start(tmp.path());
    let id = cluster.add_agent("a1", "1");
    let pid = i32::try_from(cluster.agents["a1"].child.id()).expect("pid");
    assert_eq!(node_state(&cluster, &id).as_deref(), Some("ready"));

    signal(pid, "STOP");
    let stopped = Instant::now();
    while stopped.elapsed() < Duration::from_secs(2) {
        let state = node_state(&cluster, &id);
        if state.as_deref() != Some("ready") {
            signal(pid, "CONT");
            panic!(
                "{id} is {state:?} after {:?} without cpu",
                stopped.elapsed()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    signal(pid, "CONT");
    // Still ready for longer than a grace after it resumes.
    let resumed = Instant::now();
    while resumed.elapsed() < Duration::from_secs(5) {
        assert_eq!(
            node_state(&cluster, &id).as_deref(),
            Some("ready"),
            "{:?} after it resumed",
            resumed.elapsed()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}
