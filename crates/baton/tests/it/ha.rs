//! Highly available managers as separate processes on loopback: three
//! `baton manager`s (two joined with the manager token), agents, the leader
//! killed, the CLI moving to the next manager, managers removed, demoted
//! and restarted.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::harness::{Proc, baton_bin, run_cli, spec_file, text, wait_for};

struct Manager {
    proc: Proc,
    id: String,
    cluster_addr: String,
    api: String,
}

struct Ha {
    dir: PathBuf,
    managers: Vec<Option<Manager>>,
    manager_token: String,
    worker_token: String,
    agents: Vec<Proc>,
}

fn ready_field<'a>(ready: &'a str, prefix: &str) -> &'a str {
    ready
        .split(" · ")
        .find_map(|part| part.strip_prefix(prefix))
        .unwrap_or_else(|| panic!("{prefix:?} in {ready:?}"))
        .split(' ')
        .next()
        .expect("value")
}

fn spawn_manager(dir: &Path, name: &str, join: Option<(&str, &str)>) -> Manager {
    let mut cmd = Command::new(baton_bin());
    cmd.args(["manager", "--data-dir"])
        .arg(dir.join(name))
        .args(["--listen", "127.0.0.1:0", "--api", "127.0.0.1:0"])
        .env_remove("BATON_JOIN_TOKEN");
    if let Some((addr, token)) = join {
        cmd.args(["--join", addr]).env("BATON_JOIN_TOKEN", token);
    }
    let mut proc = Proc::spawn(cmd, &dir.join(format!("{name}.log")));
    let ready = proc.line("baton manager ready");
    Manager {
        id: ready_field(&ready, "baton manager ready: node ").to_owned(),
        cluster_addr: ready_field(&ready, "cluster port ").to_owned(),
        api: ready_field(&ready, "api ").to_owned(),
        proc,
    }
}

impl Ha {
    /// Three managers, the second and third joined through the first.
    fn start(dir: &Path) -> Ha {
        let mut first = spawn_manager(dir, "m1", None);
        let token = |line: String, prefix: &str| line.trim_start_matches(prefix).trim().to_owned();
        let manager_token = token(first.proc.line("  manager: "), "  manager: ");
        let worker_token = token(first.proc.line("  worker: "), "  worker: ");
        let addr = first.cluster_addr.clone();
        let second = spawn_manager(dir, "m2", Some((&addr, &manager_token)));
        let third = spawn_manager(dir, "m3", Some((&addr, &manager_token)));
        Ha {
            dir: dir.to_owned(),
            managers: vec![Some(first), Some(second), Some(third)],
            manager_token,
            worker_token,
            agents: Vec::new(),
        }
    }

    /// The admin config of the first manager (it lists every manager).
    fn admin(&self) -> PathBuf {
        self.dir.join("m1/admin.toml")
    }

    fn json(&self, args: &[&str]) -> Value {
        let mut all = args.to_vec();
        all.extend(["-o", "json"]);
        let out = run_cli(&self.admin(), &all);
        let (stdout, stderr) = text(&out);
        assert!(out.status.success(), "{args:?}: {stderr}");
        serde_json::from_str(&stdout).expect("json")
    }

    /// The managers as the leader reports them, once one leads and sees
    /// `expected` reachable managers.
    fn status_with_leader(&self, reachable: usize) -> Value {
        wait_for(
            "a leader that sees the managers",
            Duration::from_secs(30),
            || {
                let out = run_cli(&self.admin(), &["cluster", "info", "-o", "json"]);
                if !out.status.success() {
                    return None;
                }
                let info: Value = serde_json::from_slice(&out.stdout).ok()?;
                let managers = info["managers"].as_array()?.clone();
                let leader = managers.iter().find(|m| m["raft_role"] == "leader")?;
                let leader_alive = self
                    .managers
                    .iter()
                    .flatten()
                    .any(|m| Some(m.id.as_str()) == leader["id"].as_str());
                let seen = managers.iter().filter(|m| m["reachable"] == true).count();
                (leader_alive && seen == reachable).then_some(info)
            },
        )
    }

    fn leader_index(&self) -> usize {
        let info = self.status_with_leader(self.managers.iter().flatten().count());
        let leader = info["managers"]
            .as_array()
            .expect("managers")
            .iter()
            .find(|m| m["raft_role"] == "leader")
            .expect("leader")["id"]
            .as_str()
            .expect("id")
            .to_owned();
        self.managers
            .iter()
            .position(|m| m.as_ref().is_some_and(|m| m.id == leader))
            .expect("the leader is one of ours")
    }

    fn add_agent(&mut self, name: &str, via: &str) -> String {
        let mut cmd = Command::new(baton_bin());
        cmd.args(["agent", "--data-dir"])
            .arg(self.dir.join(name))
            .args([
                "--join",
                via,
                "--enable-raw",
                "--cpu",
                "1",
                "--memory",
                "1Gi",
            ])
            .env("BATON_JOIN_TOKEN", &self.worker_token);
        let mut agent = Proc::spawn(cmd, &self.dir.join(format!("{name}.log")));
        let ready = agent.line("baton agent ready: node ");
        self.agents.push(agent);
        ready_field(&ready, "baton agent ready: node ").to_owned()
    }

    fn running(&self, job: &str) -> Vec<String> {
        self.json(&["task", "ls", "--job", job])
            .as_array()
            .expect("tasks")
            .iter()
            .filter(|t| t["state"] == "running")
            .map(|t| t["slot"].as_str().expect("slot").to_owned())
            .collect()
    }

    /// Submits a job and waits for it to run (`detach`: only submits).
    fn run_job(&self, name: &str, replicas: u32) {
        self.submit_job(name, replicas, false);
    }

    fn submit_job(&self, name: &str, replicas: u32, detach: bool) {
        let spec = format!(
            "name: {name}\nreplicas: {replicas}\ntask:\n  driver: raw\n  command: [\"/bin/sleep\", \"1000\"]\n  resources: {{cpu: 100m, memory: 16Mi}}\n  kill_timeout: 1s\n"
        );
        let file = spec_file(&self.dir, &format!("{name}.yaml"), &spec);
        let mut args = vec!["job", "run", file.to_str().expect("path")];
        if detach {
            args.push("--detach");
        }
        let out = run_cli(&self.admin(), &args);
        assert!(out.status.success(), "job run {name}: {}", text(&out).1);
    }
}

#[test]
fn three_managers_survive_the_leader_killed_and_agents_and_the_cli_follow() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut ha = Ha::start(tmp.path());

    // Every manager votes, and the admin config names every API.
    let info = ha.status_with_leader(3);
    let managers = info["managers"].as_array().expect("managers");
    assert_eq!(managers.len(), 3, "{info}");
    assert_eq!(
        managers
            .iter()
            .filter(|m| m["raft_role"] == "follower")
            .count(),
        2,
        "{info}"
    );
    wait_for(
        "admin.toml to list every manager",
        Duration::from_secs(10),
        || {
            let config = std::fs::read_to_string(ha.admin()).ok()?;
            ha.managers
                .iter()
                .flatten()
                .all(|m| config.contains(&m.api))
                .then_some(())
        },
    );

    // An agent joins through a follower-or-leader and is sent to the leader.
    let follower_addr = ha.managers[2].as_ref().expect("m3").cluster_addr.clone();
    ha.add_agent("a1", &follower_addr);
    ha.add_agent("a2", &follower_addr);
    ha.run_job("web", 4);
    wait_for("web to run", Duration::from_secs(30), || {
        (ha.running("web").len() == 4).then_some(())
    });

    // Kill the leader: another leads, the agents follow it, nothing is
    // marked down or started twice, and new work is taken.
    let leader = ha.leader_index();
    let mut dead = ha.managers[leader].take().expect("leader");
    dead.proc.kill9();
    let info = ha.status_with_leader(2);
    assert_ne!(
        info["managers"]
            .as_array()
            .expect("managers")
            .iter()
            .find(|m| m["raft_role"] == "leader")
            .expect("leader")["id"],
        dead.id.as_str()
    );
    ha.run_job("api", 2);
    wait_for(
        "api to run under the new leader",
        Duration::from_secs(30),
        || (ha.running("api").len() == 2).then_some(()),
    );
    let mut web = ha.running("web");
    web.sort();
    assert_eq!(
        web,
        ["0", "1", "2", "3"],
        "web kept its four slots, once each"
    );
    let nodes = ha.json(&["node", "ls"]);
    assert!(
        nodes
            .as_array()
            .expect("nodes")
            .iter()
            .all(|n| n["state"] == "ready"),
        "a failover marks no agent down: {nodes}"
    );

    // `--addr` picks one manager for one command.
    let survivor = ha.managers.iter().flatten().next().expect("a survivor");
    let out = Command::new(baton_bin())
        .args(["--config"])
        .arg(ha.admin())
        .args(["--addr", &survivor.api, "job", "ls"])
        .env_remove("BATON_ADDR")
        .output()
        .expect("run baton");
    assert!(out.status.success(), "{}", text(&out).1);
    assert!(text(&out).0.contains("api"), "{}", text(&out).0);

    // With two managers left, demoting one would lose quorum: refused.
    let other = ha
        .managers
        .iter()
        .flatten()
        .next()
        .expect("a survivor")
        .id
        .clone();
    let out = run_cli(&ha.admin(), &["node", "demote", &other]);
    assert!(!out.status.success());
    assert!(text(&out).1.contains("quorum"), "{}", text(&out).1);

    // The dead manager is removed from the membership; a new manager joins
    // and votes, so the cluster tolerates a loss again.
    let out = run_cli(&ha.admin(), &["node", "rm", &dead.id]);
    assert!(out.status.success(), "{}", text(&out).1);
    let addr = survivor.cluster_addr.clone();
    let token = ha.manager_token.clone();
    let fourth = spawn_manager(&ha.dir, "m4", Some((&addr, &token)));
    ha.managers.push(Some(fourth));
    let info = ha.status_with_leader(3);
    assert!(
        !info["managers"]
            .as_array()
            .expect("managers")
            .iter()
            .any(|m| m["id"] == dead.id.as_str()),
        "{info}"
    );

    // Now a demotion keeps a majority: the demoted manager is a standby.
    let demoted = ha.managers[3].as_ref().expect("m4").id.clone();
    let out = run_cli(&ha.admin(), &["node", "demote", &demoted]);
    assert!(out.status.success(), "{}", text(&out).1);
    let info = ha.status_with_leader(3);
    let role = info["managers"]
        .as_array()
        .expect("managers")
        .iter()
        .find(|m| m["id"] == demoted.as_str())
        .expect("m4")["raft_role"]
        .clone();
    assert_eq!(role, "standby", "{info}");
    let out = run_cli(&ha.admin(), &["node", "promote", &demoted]);
    assert!(out.status.success(), "{}", text(&out).1);

    // A leader stopped gracefully hands its leadership over first.
    let leader = ha.leader_index();
    let mut stopped = ha.managers[leader].take().expect("leader");
    stopped.proc.stop();
    assert!(
        stopped.proc.log_text().contains("leadership handed over"),
        "{}",
        stopped.proc.log_text()
    );
    ha.status_with_leader(2);
    ha.run_job("after-handover", 1);
}

#[test]
fn all_managers_stopped_and_started_again_keep_the_state_and_reconcile() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut ha = Ha::start(tmp.path());
    ha.status_with_leader(3);
    let via = ha.managers[0].as_ref().expect("m1").cluster_addr.clone();
    ha.add_agent("a1", &via);
    ha.run_job("web", 2);
    wait_for("web to run", Duration::from_secs(30), || {
        (ha.running("web").len() == 2).then_some(())
    });
    for manager in ha.managers.iter_mut().flatten() {
        manager.proc.stop();
    }
    // Same data dirs and addresses, no token: each restarts with its identity.
    let mut restarted = Vec::new();
    for (i, manager) in ha.managers.iter().enumerate() {
        let manager = manager.as_ref().expect("manager");
        let name = format!("m{}", i + 1);
        let mut cmd = Command::new(baton_bin());
        let api = manager.api.trim_start_matches("https://");
        cmd.args(["manager", "--data-dir"])
            .arg(ha.dir.join(&name))
            .args(["--listen", &manager.cluster_addr, "--api", api])
            .env_remove("BATON_JOIN_TOKEN");
        restarted.push(Proc::spawn(cmd, &ha.dir.join(format!("{name}-again.log"))));
    }
    for proc in &mut restarted {
        proc.line("baton manager ready");
    }
    let info = ha.status_with_leader(3);
    assert_eq!(info["managers"].as_array().expect("managers").len(), 3);
    wait_for(
        "web running again after the restart",
        Duration::from_secs(30),
        || (ha.running("web").len() == 2).then_some(()),
    );
    ha.run_job("after", 1);
    wait_for(
        "a job submitted after the restart",
        Duration::from_secs(30),
        || (ha.running("after").len() == 1).then_some(()),
    );
}

#[test]
fn a_survivor_forces_a_new_cluster_when_the_majority_is_lost_for_good() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut ha = Ha::start(tmp.path());
    ha.status_with_leader(3);
    ha.submit_job("kept", 1, true);
    // Two of the three managers are lost for good.
    let lost: Vec<String> = ha.managers[1..]
        .iter_mut()
        .map(|m| {
            let mut m = m.take().expect("manager");
            m.proc.kill9();
            m.id
        })
        .collect();
    // The survivor alone is no majority: a write is refused, clearly.
    let file = spec_file(
        &ha.dir,
        "refused.yaml",
        "name: refused\ntask:\n  driver: raw\n  command: [\"/bin/true\"]\n",
    );
    let out = run_cli(
        &ha.admin(),
        &["job", "run", "--detach", file.to_str().expect("path")],
    );
    assert!(
        !out.status.success(),
        "a lone survivor of three took a write"
    );
    assert!(text(&out).1.contains("majority"), "{}", text(&out).1);
    let survivor = ha.managers[0].take().expect("m1");
    let mut survivor_proc = survivor.proc;
    survivor_proc.stop();

    let mut cmd = Command::new(baton_bin());
    cmd.args(["manager", "--data-dir"])
        .arg(ha.dir.join("m1"))
        .args(["--listen", &survivor.cluster_addr])
        .args(["--api", survivor.api.trim_start_matches("https://")])
        .arg("--force-new-cluster")
        .env_remove("BATON_JOIN_TOKEN");
    let mut forced = Proc::spawn(cmd, &ha.dir.join("m1-forced.log"));
    forced.line("baton manager ready");
    ha.managers[0] = Some(Manager {
        proc: forced,
        id: survivor.id.clone(),
        cluster_addr: survivor.cluster_addr.clone(),
        api: survivor.api.clone(),
    });
    let info = ha.status_with_leader(1);
    let managers = info["managers"].as_array().expect("managers");
    assert_eq!(managers.len(), 1, "{info}");
    assert_eq!(managers[0]["id"], survivor.id.as_str());
    let jobs = ha.json(&["job", "ls"]);
    let names: Vec<&str> = jobs
        .as_array()
        .expect("jobs")
        .iter()
        .filter_map(|j| j["name"].as_str())
        .collect();
    assert!(names.contains(&"kept"), "{jobs}");
    // "refused" was answered with an unknown outcome: it is kept if it
    // reached the survivor's log (the survivor led), as etcd does.
    ha.submit_job("after", 1, true);
    for id in &lost {
        let out = run_cli(&ha.admin(), &["node", "rm", id]);
        assert!(out.status.success(), "rm {id}: {}", text(&out).1);
    }
}
