//! Secrets and configs end to end (issue 7): a task reads its secret from a
//! file and a variable (exec, docker and raw drivers); the value is nowhere
//! on disk afterwards; a node that runs no task using it is never sent it;
//! a secret in use cannot be removed.

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, SystemTime};

use baton_rpc::tls::{ClientTls, HotCert};
use baton_rpc::{AssignmentSet, Dispatcher, SessionMessage};
use serde_json::Value;

use baton_testkit::drivers::TEST_IMAGE;
use baton_testkit::files::{contains, files_under};

use crate::harness::{
    Cluster, Dev, node_description, run_with_stdin, runtime, spec_file, text, wait_for,
};
use crate::isolation::{docker_offered, exec_offered, finished_task};

/// A value no other test (or file) holds: the kernel's random UUID.
fn unique_value(what: &str) -> String {
    let uuid = std::fs::read_to_string("/proc/sys/kernel/random/uuid").expect("uuid");
    format!("{what}-{}", uuid.trim())
}

/// `baton secret create NAME -` with `value` on stdin (never in a file or
/// an argument).
fn create_secret(config: &Path, name: &str, value: &str) -> Output {
    let args: [&OsStr; 6] = [
        "--config".as_ref(),
        config.as_os_str(),
        "secret".as_ref(),
        "create".as_ref(),
        name.as_ref(),
        "-".as_ref(),
    ];
    run_with_stdin(&args, value.as_bytes())
}

/// The value's SHA-256 in hex, as the host's `sha256sum` prints it.
fn sha256_hex(value: &str) -> String {
    let mut child = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("sha256sum");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(value.as_bytes())
        .expect("write");
    let out = child.wait_with_output().expect("sha256sum");
    String::from_utf8_lossy(&out.stdout)[..64].to_owned()
}

/// Every regular file under `dir` changed since `since` whose bytes hold
/// `needle`. Files of other tests are skipped by their age.
fn files_holding(dir: &Path, needle: &[u8], since: SystemTime) -> Vec<PathBuf> {
    files_under(dir)
        .into_iter()
        .filter(|path| {
            path.metadata()
                .and_then(|meta| meta.modified())
                .is_ok_and(|modified| modified >= since)
                && std::fs::read(path).is_ok_and(|bytes| contains(&bytes, needle))
        })
        .collect()
}

/// Mount points under `dir` (a task's tmpfs left mounted would be one).
fn mounts_under(dir: &Path) -> Vec<String> {
    let dir = dir.to_string_lossy().into_owned();
    std::fs::read_to_string("/proc/self/mountinfo")
        .expect("mountinfo")
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .filter(|point| point.starts_with(&dir))
        .map(str::to_owned)
        .collect()
}

/// What each task prints: hashes of its secret (file and variable), its
/// config, and the secret file's mode and owner. Never the value itself.
/// Raw tasks are told the directories; isolated ones have the files at
/// their default targets.
const READER: &str = r#"S=${BATON_SECRETS_DIR:-/run/secrets}; C=${BATON_CONFIGS_DIR:-/run/configs}; sha256sum < $S/db | cut -c1-64; printf %s "$DB_PASSWORD" | sha256sum | cut -c1-64; cat $C/app; echo; stat -c '%a %u' $S/db; id -u"#;

#[test]
fn a_task_reads_its_secret_from_a_file_and_a_variable_and_no_disk_keeps_it() {
    let started = SystemTime::now();
    let (dev, _tmp) = Dev::start();
    let value = unique_value("hunter2");
    let out = create_secret(&dev.config(), "db", &value);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(!stdout.contains(&value) && !stderr.contains(&value));
    dev.ok(&["config", "create", "app", "--from-literal", "port: 8080"]);

    let mut drivers = vec![("raw", String::new())];
    if exec_offered(&dev) {
        drivers.push(("exec", String::new()));
    }
    if docker_offered(&dev) {
        drivers.push(("docker", format!("  image: {TEST_IMAGE}\n")));
    }
    for (driver, image) in &drivers {
        let uid = if *driver == "raw" { "0" } else { "65534" };
        let job = format!("read-{driver}");
        let spec = format!(
            "name: {job}\ntype: batch\ntask:\n  driver: {driver}\n{image}  command: [/bin/sh, -c, {script:?}]\n  \
             secrets: [db]\n  env_secrets: {{DB_PASSWORD: db}}\n  configs: [app]\n",
            script = READER,
        );
        let task = finished_task(&dev, &job, &spec);
        let log = dev.ok(&["logs", task["id"].as_str().expect("id")]);
        assert_eq!(task["state"], "complete", "{driver}: {task}\n{log}");
        let hash = sha256_hex(&value);
        assert_eq!(
            log.lines().collect::<Vec<_>>(),
            [
                hash.as_str(),
                hash.as_str(),
                "port: 8080",
                &format!("400 {uid}"),
                uid
            ],
            "{driver}"
        );
    }

    // Nothing shows the value: not the API, not the CLI.
    let inspect = dev.ok(&["secret", "inspect", "db", "-o", "json"]);
    assert!(!inspect.contains(&value), "{inspect}");
    let inspected: Value = serde_json::from_str(&inspect).expect("json");
    assert_eq!(inspected["size"], value.len());
    assert!(inspected.get("data").is_none(), "{inspect}");
    assert_eq!(
        dev.json(&["config", "inspect", "app"])["data"],
        "cG9ydDogODA4MA=="
    );

    // Every task has ended: their tmpfs are gone, and no file written since
    // the test started holds the value (the manager's store, the agent's
    // data dir and task logs, the dev log, /tmp).
    wait_for(
        "the tasks' tmpfs to be unmounted",
        Duration::from_secs(10),
        || mounts_under(&dev.dir).is_empty().then_some(()),
    );
    for dir in [dev.dir.as_path(), Path::new("/tmp")] {
        let holding = files_holding(dir, value.as_bytes(), started);
        assert!(holding.is_empty(), "the secret is on disk in {holding:?}");
    }
    // The store is encrypted as a whole: not even the job's name is there.
    let store = std::fs::read(dev.dir.join("manager/state.redb")).expect("store");
    assert!(!store.windows(9).any(|w| w == b"read-exec"));
}

#[test]
fn a_secret_in_use_cannot_be_removed_and_a_missing_one_is_named_at_submission() {
    let (dev, _tmp) = Dev::start();
    let spec = "name: web\ntask:\n  driver: raw\n  command: [/bin/sleep, \"1000\"]\n  \
                secrets: [db]\n  kill_timeout: 1s\n";
    let file = spec_file(&dev.dir, "web.yaml", spec);
    let refused = dev.cli(&["job", "run", file.to_str().expect("path")]);
    let (_, stderr) = text(&refused);
    assert_eq!(refused.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("secret \"db\" does not exist"), "{stderr}");

    assert!(create_secret(&dev.config(), "db", "v1").status.success());
    dev.ok(&["job", "run", file.to_str().expect("path")]);
    wait_for("web to run", Duration::from_secs(30), || {
        (dev.running("web").len() == 1).then_some(())
    });
    let removed = dev.cli(&["secret", "rm", "db"]);
    let (_, stderr) = text(&removed);
    assert_eq!(removed.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("secret \"db\" is used by job web; update or stop it first"),
        "{stderr}"
    );
    let listed = dev.json(&["secret", "ls"]);
    assert_eq!(listed[0]["used_by"], serde_json::json!(["web"]));
    let again = create_secret(&dev.config(), "db", "v2");
    assert!(
        text(&again).1.contains("secrets cannot be changed"),
        "{}",
        text(&again).1
    );

    dev.ok(&["job", "stop", "web"]);
    wait_for("web's task to end", Duration::from_secs(30), || {
        dev.tasks("web")
            .iter()
            .all(|t| t["state"] != "running")
            .then_some(())
    });
    wait_for("the secret to be free", Duration::from_secs(30), || {
        dev.cli(&["secret", "rm", "db"])
            .status
            .success()
            .then_some(())
    });
    assert_eq!(dev.json(&["secret", "ls"]), serde_json::json!([]));
}

#[test]
fn a_node_running_no_task_that_uses_a_secret_is_never_sent_it() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut cluster = Cluster::start(tmp.path());
    let a = cluster.add_agent("a", "1000m");
    let b = cluster.add_agent("b", "1000m");
    // B's agent goes; B's own certificate opens B's session from here, to
    // see exactly what the manager sends node B.
    cluster.agents.get_mut("b").expect("b").stop();
    let (cert, key) = cluster.agent_identity("b");
    let tls =
        ClientTls::new(&cluster.root_pem(), HotCert::new(&cert, &key).expect("b")).expect("tls");
    let value = unique_value("only-for-a");
    assert!(create_secret(&cluster.admin, "db", &value).status.success());

    let rt = runtime();
    let received: Vec<AssignmentSet> = rt.block_on(async {
        let channel = baton_rpc::transport::connect(&cluster.cluster_addr, &tls)
            .await
            .expect("connect");
        let dispatcher = baton_rpc::client::GrpcDispatcher::new(channel);
        let mut session = dispatcher
            .open_session(node_description(&b, "b", 1000))
            .await
            .expect("B's session");
        assert_eq!(session.node_id.0, b);
        // Both jobs are placed while B's session is open: one on A uses the
        // secret, one on B does not.
        let uses = format!(
            "name: uses\ntask:\n  driver: raw\n  command: [/bin/sh, -c, \"sha256sum $BATON_SECRETS_DIR/db | cut -c1-64; exec sleep 1000\"]\n  \
             secrets: [db]\n  kill_timeout: 1s\nconstraints: [\"node.id == {a}\"]\n"
        );
        let other = format!(
            "name: other\ntask:\n  driver: raw\n  command: [/bin/sleep, \"1000\"]\n  kill_timeout: 1s\n\
             constraints: [\"node.id == {b}\"]\n"
        );
        for (name, spec) in [("uses", &uses), ("other", &other)] {
            let file = spec_file(&cluster.dir, &format!("{name}.yaml"), spec);
            let out = cluster.cli(&["job", "run", "--detach", file.to_str().expect("path")]);
            assert!(out.status.success(), "{}", text(&out).1);
        }
        let mut received = Vec::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        // Until B was sent its task and A runs its own (so the secret was
        // sent to A), keeping B alive with heartbeats.
        loop {
            let a_runs = cluster.tasks("uses").iter().any(|t| t["state"] == "running");
            let b_sent = received
                .iter()
                .any(|set: &AssignmentSet| set.tasks.iter().any(|t| t.job == "other"));
            if a_runs && b_sent {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "B was sent {received:?}; A runs its task: {a_runs}"
            );
            dispatcher
                .heartbeat(&session.node_id)
                .await
                .expect("heartbeat");
            if let Ok(Some(message)) =
                tokio::time::timeout(Duration::from_millis(200), session.messages.recv()).await
                && let SessionMessage::Assignments(set) = message
            {
                received.push(set);
            }
        }
        received
    });
    for set in &received {
        assert!(
            set.secrets.is_empty(),
            "B was sent secrets {:?}",
            set.secrets.keys()
        );
        assert!(set.tasks.iter().all(|t| t.job != "uses"), "{set:?}");
    }
    // A was: its task read the secret.
    let task = cluster
        .tasks("uses")
        .into_iter()
        .find(|t| t["state"] == "running")
        .expect("A's task");
    let log = cluster.ok(&["logs", task["id"].as_str().expect("id")]);
    assert_eq!(log.trim(), sha256_hex(&value));
}

/// TCP ports process `pid` listens on (from its socket inodes and the
/// kernel's tables).
fn listening_ports(pid: u32) -> Vec<u16> {
    let inodes: BTreeSet<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|fds| {
            fds.flatten()
                .filter_map(|fd| std::fs::read_link(fd.path()).ok())
                .filter_map(|link| {
                    let link = link.to_string_lossy().into_owned();
                    link.strip_prefix("socket:[")
                        .and_then(|rest| rest.strip_suffix(']'))
                        .map(str::to_owned)
                })
                .collect()
        })
        .unwrap_or_default();
    let mut ports = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let text = std::fs::read_to_string(table).unwrap_or_default();
        for row in text.lines().skip(1) {
            let cols: Vec<&str> = row.split_whitespace().collect();
            // local_address is HEX_IP:HEX_PORT; state 0A is LISTEN; inode is column 9.
            if cols.len() > 9 && cols[3] == "0A" && inodes.contains(cols[9]) {
                let port = cols[1].rsplit(':').next().expect("port");
                ports.push(u16::from_str_radix(port, 16).expect("hex port"));
            }
        }
    }
    ports
}

/// `baton manager unlock --data-dir DIR` with `key` on stdin.
fn unlock(data_dir: &Path, key: &str) -> Output {
    let args: [&OsStr; 4] = [
        "manager".as_ref(),
        "unlock".as_ref(),
        "--data-dir".as_ref(),
        data_dir.as_os_str(),
    ];
    run_with_stdin(&args, format!("{key}\n").as_bytes())
}

#[test]
fn an_autolocked_manager_serves_nothing_but_unlock_until_given_its_key() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut dev = Dev::start_in(tmp.path());
    let value = unique_value("locked-away");
    assert!(create_secret(&dev.config(), "db", &value).status.success());
    let out = dev.ok(&["cluster", "update", "--autolock", "true"]);
    let key = out
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("BATON-UNLOCK-1-"))
        .unwrap_or_else(|| panic!("no unlock key in {out}"))
        .to_owned();
    assert_eq!(dev.ok(&["cluster", "unlock-key", "-q"]).trim(), key);
    assert_eq!(dev.json(&["cluster", "info"])["autolock"], true);
    // From now on no key that opens the store is on disk.
    let keys = tmp.path().join("manager/keys");
    wait_for("the key file to go", Duration::from_secs(10), || {
        (!keys.join("kek").exists()).then_some(())
    });
    let on_disk = files_holding(tmp.path(), key.as_bytes(), SystemTime::UNIX_EPOCH);
    assert!(
        on_disk.is_empty(),
        "the unlock key is on disk in {on_disk:?}"
    );
    dev.stop();

    let starting = Dev::spawn_in(tmp.path());
    wait_for(
        "the manager to wait for its key",
        Duration::from_secs(30),
        || {
            starting
                .log()
                .contains("this manager is locked")
                .then_some(())
        },
    );
    assert_eq!(listening_ports(starting.pid()), Vec::<u16>::new());
    let refused = dev.cli(&["job", "ls"]);
    assert!(!refused.status.success());

    let manager_dir = tmp.path().join("manager");
    // Another valid key (its first character after the prefix changed: the
    // last one carries padding bits, so changing it could make the text
    // malformed rather than wrong) and a malformed one.
    let payload = key.strip_prefix("BATON-UNLOCK-1-").expect("prefix");
    let first = if payload.starts_with('A') { 'B' } else { 'A' };
    let wrong = format!("BATON-UNLOCK-1-{first}{}", &payload[1..]);
    for (given, says) in [
        (wrong.as_str(), "wrong unlock key"),
        ("hunter2", "not an unlock key"),
    ] {
        let out = unlock(&manager_dir, given);
        let (_, stderr) = text(&out);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(stderr.contains(says), "{stderr}");
        assert_eq!(listening_ports(starting.pid()), Vec::<u16>::new());
    }

    let out = unlock(&manager_dir, &key);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(stdout.trim(), "manager unlocked");
    let dev = starting.ready();
    let secrets = dev.json(&["secret", "ls"]);
    assert_eq!(secrets[0]["name"], "db");
    assert_eq!(secrets[0]["size"], value.len());
    let task = finished_task(
        &dev,
        "read",
        "name: read\ntype: batch\ntask:\n  driver: raw\n  \
         command: [/bin/sh, -c, \"sha256sum < $BATON_SECRETS_DIR/db | cut -c1-64\"]\n  secrets: [db]\n",
    );
    assert_eq!(task["state"], "complete", "{task}");
    let log = dev.ok(&["logs", task["id"].as_str().expect("id")]);
    assert_eq!(log.trim(), sha256_hex(&value));
}
