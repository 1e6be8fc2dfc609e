//! Certificate rotation on a real cluster (issue 3, items 7 and 9): with a
//! seconds-long certificate expiry, the agent and the manager renew their
//! certificates with fresh keys in the background while a task keeps running;
//! `baton cluster update --cert-expiry` changes the lifetime of new
//! certificates; `baton cluster ca --rotate` moves the whole cluster to a new
//! root CA without stopping anything.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;

use crate::harness::{Cluster, baton_bin, run_cli, spec_file, text, wait_for};

/// The one agent of these tests: `dir/agent`.
const AGENT: &str = "agent";

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

#[test]
fn certificates_rotate_with_fresh_keys_while_a_task_keeps_running() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut cluster = Cluster::start_with(tmp.path(), &["--cert-expiry", "12s"]);
    let node_id = cluster.add_agent(AGENT, "1");
    let spec = spec_file(
        tmp.path(),
        "sleeper.yaml",
        "name: sleeper\nreplicas: 1\ntask:\n  driver: raw\n  command: [\"/bin/sleep\", \"1000\"]\n  resources: {cpu: 100m, memory: 16Mi}\n  kill_timeout: 1s\n",
    );
    let out = cluster.cli(&["job", "run", spec.to_str().expect("path")]);
    assert!(out.status.success(), "{}", text(&out).1);
    let tasks = cluster.json(&["task", "ls", "--job", "sleeper"]);
    let task = tasks
        .as_array()
        .and_then(|t| t.iter().find(|t| t["state"] == "running"))
        .cloned()
        .expect("a running task");
    let (task_id, pid) = (task["id"].clone(), task["pid"].clone());
    assert!(pid.as_u64().is_some(), "{task}");

    let identity = cluster.dir.join(AGENT).join("identity");
    let manager_node = tmp.path().join("manager/node");
    let agent_cert = read(&identity.join("cert.pem"));
    let agent_key = read(&identity.join("key.pem"));
    let manager_cert = read(&manager_node.join("cert.pem"));
    // Sealed (binary): compared as bytes.
    let sealed_key = |dir: &std::path::Path| std::fs::read(dir.join("key.sealed")).expect("key");
    let manager_key = sealed_key(&manager_node);
    let first_expiry = cluster.node(&node_id)["cert_expires_at"]
        .as_u64()
        .expect("cert expiry of a member");

    // The task and the node, unchanged: checked on every poll below.
    let unchanged = |cluster: &Cluster| {
        let tasks = cluster.json(&["task", "ls", "--job", "sleeper"]);
        let tasks = tasks.as_array().expect("tasks");
        assert_eq!(tasks.len(), 1, "no task replaced or added: {tasks:?}");
        assert_eq!(
            (&tasks[0]["id"], &tasks[0]["state"], &tasks[0]["pid"]),
            (&task_id, &Value::from("running"), &pid),
            "the same task keeps running in the same process"
        );
        let node = cluster.node(&node_id);
        assert_eq!(node["state"], "ready", "{node}");
        node
    };

    // Renewal happens at 50-80 % of 12 s; allow several lifetimes for slow machines.
    let deadline = Instant::now() + Duration::from_secs(60);
    let renewed_expiry = loop {
        let node = unchanged(&cluster);
        let agent_done = read(&identity.join("cert.pem")) != agent_cert
            && read(&identity.join("key.pem")) != agent_key;
        let manager_done = read(&manager_node.join("cert.pem")) != manager_cert
            && sealed_key(&manager_node) != manager_key;
        let expiry = node["cert_expires_at"].as_u64().unwrap_or(0);
        if agent_done && manager_done && expiry > first_expiry {
            break expiry;
        }
        assert!(
            Instant::now() < deadline,
            "no rotation within 60 s: agent renewed {agent_done}, manager renewed {manager_done}, expiry {first_expiry} -> {expiry}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(renewed_expiry > first_expiry);

    // Past the first certificates' expiry, nothing depends on them: the
    // session, the task and the API (which serves the renewed manager
    // certificate) all carry on.
    while now_ms() <= first_expiry + 1000 {
        unchanged(&cluster);
        std::thread::sleep(Duration::from_millis(200));
    }
    let node = unchanged(&cluster);
    assert!(
        node["cert_expires_at"].as_u64().unwrap_or(0) > now_ms(),
        "the listed certificate is current: {node}"
    );
}

#[test]
fn cluster_update_sets_the_cert_expiry_and_refuses_zero() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut cluster = Cluster::start(tmp.path());

    let info = cluster.json(&["cluster", "info"]);
    assert_eq!(info["cert_expiry_secs"], 90 * 86_400, "{info}");
    let root_digest = info["root_ca_digest"].as_str().expect("digest").to_owned();
    assert_eq!(root_digest.len(), 64);
    assert!(
        cluster.worker_token.contains(&root_digest),
        "tokens pin the root digest shown"
    );
    assert!(info["id"].as_str().is_some_and(|id| !id.is_empty()));
    assert!(info["created_at"].as_u64().is_some_and(|t| t > 0));

    let out = cluster.cli(&["cluster", "update", "--cert-expiry", "0s"]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.starts_with("error: cert expiry: 0s is out of range"),
        "{stderr}"
    );
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");

    let out = cluster.cli(&["cluster", "update"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).1.contains("nothing to update"));

    let out = cluster.cli(&["cluster", "update", "--cert-expiry", "1h"]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(stdout.contains("certificate expiry set to 1h"), "{stdout}");
    let info = cluster.json(&["cluster", "info"]);
    assert_eq!(info["cert_expiry_secs"], 3600, "{info}");
    let out = cluster.cli(&["cluster", "status"]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("cert expiry:") && l.ends_with(" 1h")),
        "{stdout}"
    );
    // The lone manager is listed as the leader of its Raft cluster of one,
    // under its node id.
    let manager_id = read(&tmp.path().join("manager/node/id")).trim().to_owned();
    assert!(
        stdout
            .lines()
            .any(|l| l.contains(&manager_id) && l.contains("leader") && l.ends_with("reachable")),
        "{stdout}"
    );

    // A node that joins now gets a certificate with the new lifetime.
    let before = now_ms();
    let node_id = cluster.add_agent(AGENT, "1");
    let expiry = cluster.node(&node_id)["cert_expires_at"]
        .as_u64()
        .expect("cert expiry");
    let after = now_ms();
    assert!(
        expiry + 1000 >= before + 3_600_000 && expiry <= after + 3_600_000,
        "joined at {before}..{after}, certificate expires at {expiry}"
    );
}

/// The SHA-256 (hex) of the root that issued the leaf of `chain_pem`, among
/// `roots`.
fn issuer_of(chain_pem: &str, roots: &[(&str, &str)]) -> String {
    let leaf = baton_pki::certificate_der(chain_pem).expect("leaf");
    let (_, leaf) = x509_parser::parse_x509_certificate(&leaf).expect("parse");
    for (digest, pem) in roots {
        let der = baton_pki::certificate_der(pem).expect("root");
        let (_, root) = x509_parser::parse_x509_certificate(&der).expect("parse");
        if root.subject().as_raw() == leaf.issuer().as_raw() {
            return (*digest).to_owned();
        }
    }
    panic!("issued by none of the roots")
}

#[test]
fn a_root_ca_rotation_moves_every_node_to_the_new_root_without_downtime() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut cluster = Cluster::start(tmp.path());
    let node_id = cluster.add_agent(AGENT, "1");
    let spec = spec_file(
        tmp.path(),
        "sleeper.yaml",
        "name: sleeper\nreplicas: 1\ntask:\n  driver: raw\n  command: [\"/bin/sleep\", \"1000\"]\n  resources: {cpu: 100m, memory: 16Mi}\n  kill_timeout: 1s\n",
    );
    let out = cluster.cli(&["job", "run", spec.to_str().expect("path")]);
    assert!(out.status.success(), "{}", text(&out).1);
    let task = cluster
        .json(&["task", "ls", "--job", "sleeper"])
        .as_array()
        .and_then(|t| t.iter().find(|t| t["state"] == "running").cloned())
        .expect("a running task");
    let old_root = cluster.json(&["cluster", "ca"])["root_ca_digest"]
        .as_str()
        .expect("digest")
        .to_owned();
    let old_root_pem = read(&cluster.dir.join(AGENT).join("identity/root.pem"));
    let old_admin = tmp.path().join("admin-before.toml");
    std::fs::copy(&cluster.admin, &old_admin).expect("copy admin.toml");
    let old_token = cluster.worker_token.clone();

    let out = cluster.cli(&["cluster", "ca", "--rotate"]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(stdout.contains("Root CA rotation started"), "{stdout}");
    // Every node renews from the new root at once; then the old root goes.
    let info = wait_for("the rotation to finish", Duration::from_secs(60), || {
        let info = cluster.json(&["cluster", "ca"]);
        (info["root_rotation"].is_null() && info["root_ca_digest"] != old_root.as_str())
            .then_some(info)
    });
    let new_root = info["root_ca_digest"].as_str().expect("digest").to_owned();
    // The task never stopped: same task, same process.
    let now_task = cluster
        .json(&["task", "ls", "--job", "sleeper"])
        .as_array()
        .cloned()
        .expect("tasks");
    assert_eq!(now_task.len(), 1, "{now_task:?}");
    assert_eq!(
        (
            &now_task[0]["id"],
            &now_task[0]["pid"],
            &now_task[0]["state"]
        ),
        (&task["id"], &task["pid"], &Value::from("running"))
    );
    assert_eq!(cluster.node(&node_id)["state"], "ready");

    // The agent trusts only the new root now and holds a certificate from it;
    // so does the manager.
    let agent_roots = wait_for(
        "the agent to drop the old root",
        Duration::from_secs(30),
        || {
            let roots = read(&cluster.dir.join(AGENT).join("identity/root.pem"));
            (baton_pki::pem_certificates(&roots).len() == 1 && roots != old_root_pem)
                .then_some(roots)
        },
    );
    let roots = [
        (old_root.as_str(), old_root_pem.as_str()),
        (new_root.as_str(), agent_roots.as_str()),
    ];
    let agent_cert = read(&cluster.dir.join(AGENT).join("identity/cert.pem"));
    assert_eq!(issuer_of(&agent_cert, &roots), new_root);
    let manager_cert = read(&tmp.path().join("manager/node/cert.pem"));
    assert_eq!(issuer_of(&manager_cert, &roots), new_root);

    // Join tokens name the new root; the old token's root is refused, clearly.
    let token = cluster
        .cli(&["cluster", "join-token", "worker", "-q"])
        .stdout;
    let token = String::from_utf8(token).expect("utf-8").trim().to_owned();
    assert!(token.contains(&new_root), "{token}");
    let out = Command::new(baton_bin())
        .args(["agent", "--data-dir"])
        .arg(tmp.path().join("late-old"))
        .args(["--join", &cluster.cluster_addr])
        .env("BATON_JOIN_TOKEN", &old_token)
        .output()
        .expect("run agent");
    assert!(!out.status.success());
    let stderr = text(&out).1;
    assert!(
        stderr.contains(&old_root) && stderr.contains(&new_root),
        "{stderr}"
    );
    let join = cluster.cluster_addr.clone();
    cluster.add_agent_via("late-new", &join, Some(&token), "1");
    let mut late = cluster.agents.remove("late-new").expect("the late agent");
    late.stop();

    // An admin config from before the rotation holds a certificate from the
    // retired root: refused. The rewritten admin.toml works (every call above).
    let out = run_cli(&old_admin, &["job", "ls"]);
    let stderr = text(&out).1;
    assert!(
        !out.status.success() && stderr.contains("no manager answered"),
        "the old root's admin certificate is refused in the handshake: {stderr}"
    );
}
