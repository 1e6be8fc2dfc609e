//! Nothing lost: restarts keep jobs, kill -9 loses no acknowledged submission,
//! and tasks are neither orphaned nor duplicated across a crash.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::harness::{Dev, alive, run_cli, spec_file, wait_for};

fn service(name: &str, replicas: u32) -> String {
    format!(
        "name: {name}\nreplicas: {replicas}\ntask:\n  driver: raw\n  command: [\"/bin/sleep\", \"1000\"]\n  resources: {{cpu: 10m, memory: 4Mi}}\n  kill_timeout: 1s\nrestart:\n  delay: 100ms\n"
    )
}

fn pids(dev: &Dev, job: &str) -> Vec<i64> {
    dev.running(job)
        .iter()
        .map(|t| t["pid"].as_i64().expect("pid"))
        .collect()
}

#[test]
fn clean_restart_stops_tasks_and_brings_every_job_back() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut dev = Dev::start_in(tmp.path());
    let web = spec_file(tmp.path(), "web.yaml", &service("web", 2));
    let api = spec_file(tmp.path(), "api.yaml", &service("api", 1));
    dev.ok(&["job", "run", web.to_str().expect("path")]);
    dev.ok(&["job", "run", api.to_str().expect("path")]);
    let old: Vec<i64> = [pids(&dev, "web"), pids(&dev, "api")].concat();
    assert_eq!(old.len(), 3);

    dev.stop();
    for pid in &old {
        assert!(!alive(*pid), "task pid {pid} survived a clean stop");
    }

    let dev = Dev::start_in(tmp.path());
    let jobs = dev.json(&["job", "ls"]);
    let names: Vec<&str> = jobs
        .as_array()
        .expect("jobs")
        .iter()
        .map(|j| j["name"].as_str().expect("name"))
        .collect();
    assert_eq!(names, vec!["api", "web"]);
    wait_for("jobs running again", Duration::from_secs(20), || {
        (dev.running("web").len() == 2 && dev.running("api").len() == 1).then_some(())
    });
    let new: Vec<i64> = [pids(&dev, "web"), pids(&dev, "api")].concat();
    assert!(new.iter().all(|p| !old.contains(p)));
}

#[test]
fn kill_9_neither_orphans_nor_duplicates_tasks() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut dev = Dev::start_in(tmp.path());
    let web = spec_file(tmp.path(), "web.yaml", &service("web", 2));
    dev.ok(&["job", "run", web.to_str().expect("path")]);
    let old = pids(&dev, "web");
    assert_eq!(old.len(), 2);

    dev.crash();
    // The crashed agent's children outlive it (own process groups)...
    assert!(old.iter().all(|p| alive(*p)));

    // ...until it comes back: it kills them, reports them lost, and the slots run anew.
    let dev = Dev::start_in(tmp.path());
    for pid in &old {
        wait_for("the orphan to be killed", Duration::from_secs(10), || {
            (!alive(*pid)).then_some(())
        });
    }
    let running = wait_for("two fresh tasks", Duration::from_secs(20), || {
        let running = dev.running("web");
        (running.len() == 2).then_some(running)
    });
    let mut slots: Vec<&str> = running
        .iter()
        .map(|t| t["slot"].as_str().expect("slot"))
        .collect();
    slots.sort_unstable();
    assert_eq!(slots, vec!["0", "1"], "one task per slot, no duplicates");
    let lost = dev
        .tasks("web")
        .into_iter()
        .filter(|t| t["state"] == "lost")
        .count();
    assert_eq!(lost, 2);
}

#[test]
fn kill_9_during_submissions_loses_no_acknowledged_job() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut dev = Dev::start_in(tmp.path());
    let config = dev.config();
    let acked = Arc::new(Mutex::new(Vec::<String>::new()));
    let mut submitters = Vec::new();
    for worker in 0..4 {
        let acked = acked.clone();
        let config = config.clone();
        let dir = tmp.path().to_owned();
        submitters.push(std::thread::spawn(move || {
            for i in 0..100 {
                let name = format!("job-{worker}-{i}");
                let file = spec_file(&dir, &format!("{name}.yaml"), &service(&name, 0));
                let out = run_cli(
                    &config,
                    &["job", "run", "--detach", file.to_str().expect("path")],
                );
                if out.status.success() {
                    acked.lock().expect("lock").push(name);
                } else {
                    break;
                }
            }
        }));
    }
    wait_for(
        "some acknowledged submissions",
        Duration::from_secs(60),
        || (acked.lock().expect("lock").len() >= 20).then_some(()),
    );
    dev.crash();
    for s in submitters {
        s.join().expect("submitter");
    }
    let acked = acked.lock().expect("lock").clone();

    let dev = Dev::start_in(tmp.path());
    let jobs = dev.json(&["job", "ls"]);
    let stored: std::collections::BTreeSet<String> = jobs
        .as_array()
        .expect("jobs")
        .iter()
        .map(|j| j["name"].as_str().expect("name").to_owned())
        .collect();
    let missing: Vec<&String> = acked.iter().filter(|n| !stored.contains(*n)).collect();
    assert!(missing.is_empty(), "acknowledged but lost: {missing:?}");
    assert!(stored.len() >= acked.len());
}
