//! Task lifecycle with real processes: start, exit, kill, stop, environment,
//! working directory and user.

mod common;

use std::time::{Duration, Instant};

use baton_state::{ExitInfo, TaskState};
use common::*;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

fn pid_of(pid: u32) -> Pid {
    Pid::from_raw(i32::try_from(pid).expect("pid fits"))
}

#[tokio::test]
async fn task_reports_starting_then_running_with_a_live_pid_and_fails_on_kill_9() {
    let dir = tempfile::tempdir().expect("tempdir");
    let agent = TestAgent::start(dir.path());
    let task = task_id("sleeper");
    agent
        .dispatcher
        .push(vec![assignment(&task, &["/bin/sleep", "1000"])])
        .await;

    let running = agent
        .dispatcher
        .wait_report(&task, TaskState::Running)
        .await;
    let pid = running.pid.expect("running report carries the pid");
    assert!(process_alive(pid), "pid {pid} runs");
    let states: Vec<_> = agent
        .dispatcher
        .reports_of(&task)
        .iter()
        .map(|r| r.state)
        .collect();
    assert_eq!(states, vec![TaskState::Starting, TaskState::Running]);
    // While it runs, its run record exists.
    assert!(agent.task_dir(&task).join("run.json").exists());

    kill(pid_of(pid), Signal::SIGKILL).expect("kill -9");
    let failed = agent.dispatcher.wait_terminal(&task).await;
    assert_eq!(failed.state, TaskState::Failed);
    assert_eq!(failed.message, "killed by signal 9 (SIGKILL)");
    assert_eq!(
        failed.exit,
        Some(ExitInfo {
            code: None,
            signal: Some(9),
            oom_killed: false
        })
    );
    assert_eq!(failed.pid, None);
    assert!(!agent.task_dir(&task).join("run.json").exists());
    assert!(agent.task_dir(&task).join("status.json").exists());
    agent.stop().await;
}

#[tokio::test]
async fn exit_codes_map_to_complete_and_failed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let agent = TestAgent::start(dir.path());
    let ok = task_id("ok");
    let bad = task_id("bad");
    agent
        .dispatcher
        .push(vec![shell(&ok, "exit 0"), shell(&bad, "exit 3")])
        .await;

    let done = agent.dispatcher.wait_terminal(&ok).await;
    assert_eq!(done.state, TaskState::Complete);
    assert_eq!(
        done.exit,
        Some(ExitInfo {
            code: Some(0),
            signal: None,
            oom_killed: false
        })
    );
    let failed = agent.dispatcher.wait_terminal(&bad).await;
    assert_eq!(failed.state, TaskState::Failed);
    assert_eq!(failed.message, "exit code 3");
    assert_eq!(failed.exit.and_then(|e| e.code), Some(3));
    agent.stop().await;
}

#[tokio::test]
async fn spawn_failure_is_reported_failed_with_the_reason() {
    let dir = tempfile::tempdir().expect("tempdir");
    let agent = TestAgent::start(dir.path());
    let nope = task_id("nope");
    let notexec = task_id("notexec");
    let badwd = task_id("badwd");
    let not_executable = dir.path().join("script.sh");
    std::fs::write(&not_executable, "#!/bin/sh\n").expect("write script");
    let not_executable = not_executable.display().to_string();
    let mut in_missing_dir = assignment(&badwd, &["/bin/true"]);
    in_missing_dir.spec.workdir = Some("/no/such/dir".to_owned());
    agent
        .dispatcher
        .push(vec![
            assignment(&nope, &["/bin/nope"]),
            assignment(&notexec, &[not_executable.as_str()]),
            in_missing_dir,
        ])
        .await;

    let failed = agent.dispatcher.wait_terminal(&nope).await;
    assert_eq!(failed.state, TaskState::Failed);
    assert_eq!(
        failed.message,
        "start failed: /bin/nope: No such file or directory"
    );
    assert_eq!(failed.exit, None);
    let failed = agent.dispatcher.wait_terminal(&notexec).await;
    assert_eq!(
        failed.message,
        format!("start failed: {not_executable}: Permission denied")
    );
    let failed = agent.dispatcher.wait_terminal(&badwd).await;
    assert_eq!(
        failed.message,
        "start failed: workdir /no/such/dir: No such file or directory"
    );
    agent.stop().await;
}

#[tokio::test]
async fn stop_sends_sigterm_to_the_process_group() {
    let dir = tempfile::tempdir().expect("tempdir");
    let agent = TestAgent::start(dir.path());
    let task = task_id("term");
    // The shell waits on a child: SIGTERM must reach the whole group.
    let a = shell(&task, "sleep 1000 & echo child=$!; wait");
    agent.dispatcher.push(vec![a.clone()]).await;
    let pid = agent
        .dispatcher
        .wait_report(&task, TaskState::Running)
        .await
        .pid
        .expect("pid");
    let log = agent.wait_log(&task, "child=").await;
    let child: u32 = log
        .trim()
        .strip_prefix("child=")
        .and_then(|s| s.parse().ok())
        .expect("child pid");

    let asked = Instant::now();
    agent.dispatcher.push(vec![shutdown(a)]).await;
    let stopped = agent.dispatcher.wait_terminal(&task).await;
    assert_eq!(stopped.state, TaskState::Shutdown);
    assert_eq!(stopped.message, "stopped");
    assert_eq!(stopped.exit.and_then(|e| e.signal), Some(15));
    assert!(
        asked.elapsed() < Duration::from_secs(5),
        "no SIGKILL needed"
    );
    assert!(!process_alive(pid));
    assert!(
        !process_alive(child),
        "the group's other process is gone too"
    );
    agent.stop().await;
}

#[tokio::test]
async fn task_ignoring_sigterm_is_killed_after_kill_timeout() {
    let dir = tempfile::tempdir().expect("tempdir");
    let agent = TestAgent::start(dir.path());
    let task = task_id("stubborn");
    let mut a = shell(
        &task,
        "trap '' TERM; echo ready; while :; do sleep 0.05; done",
    );
    a.spec.kill_timeout = Duration::from_millis(300);
    agent.dispatcher.push(vec![a.clone()]).await;
    agent.wait_log(&task, "ready").await;

    let asked = Instant::now();
    agent.dispatcher.push(vec![shutdown(a)]).await;
    let stopped = agent.dispatcher.wait_terminal(&task).await;
    assert!(asked.elapsed() >= Duration::from_millis(300));
    assert_eq!(stopped.state, TaskState::Shutdown);
    assert_eq!(stopped.message, "stopped (killed after kill timeout 300ms)");
    assert_eq!(stopped.exit.and_then(|e| e.signal), Some(9));
    agent.stop().await;
}

#[tokio::test]
async fn task_absent_from_the_set_is_stopped() {
    let dir = tempfile::tempdir().expect("tempdir");
    let agent = TestAgent::start(dir.path());
    let task = task_id("absent");
    agent
        .dispatcher
        .push(vec![assignment(&task, &["/bin/sleep", "1000"])])
        .await;
    agent
        .dispatcher
        .wait_report(&task, TaskState::Running)
        .await;
    agent.dispatcher.push(vec![]).await;
    let stopped = agent.dispatcher.wait_terminal(&task).await;
    assert_eq!(stopped.state, TaskState::Shutdown);
    agent.stop().await;
}

#[tokio::test]
async fn task_gets_a_clean_environment_with_baton_variables_and_spec_env() {
    // Cargo sets this for the test process: the agent has it, the task must not.
    assert!(std::env::var_os("CARGO_MANIFEST_DIR").is_some());
    let dir = tempfile::tempdir().expect("tempdir");
    let agent = TestAgent::start(dir.path());
    let task = task_id("env");
    let mut a = assignment(&task, &["/usr/bin/env"]);
    a.spec
        .env
        .insert("GREETING".to_owned(), "hello world".to_owned());
    a.spec
        .env
        .insert("BATON_TASK_ID".to_owned(), "forged".to_owned());
    agent.dispatcher.push(vec![a]).await;
    agent
        .dispatcher
        .wait_report(&task, TaskState::Complete)
        .await;

    let log = agent.log(&task);
    let mut vars: Vec<&str> = log
        .lines()
        .map(|l| l.split('=').next().unwrap_or(l))
        .collect();
    vars.sort_unstable();
    assert_eq!(
        vars,
        vec![
            "BATON_JOB",
            "BATON_NODE_ID",
            "BATON_SLOT",
            "BATON_TASK_ID",
            "GREETING",
            "HOME",
            "PATH"
        ],
        "{log}"
    );
    assert!(
        log.contains(&format!("BATON_TASK_ID={}\n", task.0)),
        "{log}"
    );
    assert!(log.contains("GREETING=hello world\n"));
    assert!(log.contains("BATON_JOB=job\n"));
    assert!(log.contains("BATON_SLOT=0\n"));
    assert!(log.contains("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n"));
    let node_id = std::fs::read_to_string(dir.path().join("node-id")).expect("node id");
    assert!(log.contains(&format!("BATON_NODE_ID={}\n", node_id.trim())));
    assert!(!log.contains("CARGO_MANIFEST_DIR"));
    agent.stop().await;
}

#[tokio::test]
async fn workdir_defaults_to_the_task_dir_and_follows_the_spec() {
    let dir = tempfile::tempdir().expect("tempdir");
    let agent = TestAgent::start(dir.path());
    let default = task_id("wd-default");
    let custom = task_id("wd-custom");
    let elsewhere = tempfile::tempdir().expect("tempdir");
    let mut a = shell(&custom, "pwd");
    a.spec.workdir = Some(elsewhere.path().display().to_string());
    agent.dispatcher.push(vec![shell(&default, "pwd"), a]).await;
    agent
        .dispatcher
        .wait_report(&default, TaskState::Complete)
        .await;
    agent
        .dispatcher
        .wait_report(&custom, TaskState::Complete)
        .await;

    assert_eq!(
        agent.log(&default).trim(),
        agent.task_dir(&default).display().to_string()
    );
    assert_eq!(
        agent.log(&custom).trim(),
        elsewhere.path().display().to_string()
    );
    agent.stop().await;
}

#[tokio::test]
async fn task_runs_as_the_spec_user_without_the_agents_groups() {
    let dir = tempfile::tempdir().expect("tempdir");
    // The task (as nobody) must be able to enter its own directory.
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .expect("chmod");
    let agent = TestAgent::start(dir.path());
    let task = task_id("nobody");
    let unknown = task_id("unknown-user");
    let mut a = shell(&task, "id -u; id -G; pwd");
    a.spec.user = Some("nobody".to_owned());
    let mut b = shell(&unknown, "true");
    b.spec.user = Some("no-such-user-here".to_owned());
    agent.dispatcher.push(vec![a, b]).await;

    let failed = agent.dispatcher.wait_terminal(&unknown).await;
    assert_eq!(
        failed.message,
        "start failed: unknown user no-such-user-here"
    );
    let report = agent.dispatcher.wait_terminal(&task).await;
    if nix::unistd::geteuid().is_root() {
        assert_eq!(report.state, TaskState::Complete, "{}", report.message);
        let nobody = nix::unistd::User::from_name("nobody")
            .expect("passwd")
            .expect("nobody exists");
        let log = agent.log(&task);
        let lines: Vec<&str> = log.lines().collect();
        assert_eq!(
            lines,
            vec![
                nobody.uid.to_string().as_str(),
                // Only its own group: root's supplementary groups are dropped.
                nobody.gid.to_string().as_str(),
                agent.task_dir(&task).display().to_string().as_str(),
            ]
        );
    } else {
        assert_eq!(
            report.message,
            "start failed: cannot run as user nobody: the agent is not root"
        );
    }
    agent.stop().await;
}

#[tokio::test]
async fn graceful_shutdown_stops_tasks_without_reporting_and_next_start_reports_them_lost() {
    let dir = tempfile::tempdir().expect("tempdir");
    let agent = TestAgent::start(dir.path());
    let task = task_id("shutdown");
    let mut a = shell(
        &task,
        "trap '' TERM; echo ready; while :; do sleep 0.05; done",
    );
    a.spec.kill_timeout = Duration::from_millis(200);
    let quick = task_id("quick");
    agent
        .dispatcher
        .push(vec![a.clone(), assignment(&quick, &["/bin/sleep", "1000"])])
        .await;
    let pid = agent
        .dispatcher
        .wait_report(&task, TaskState::Running)
        .await
        .pid
        .expect("pid");
    let quick_pid = agent
        .dispatcher
        .wait_report(&quick, TaskState::Running)
        .await
        .pid
        .expect("pid");
    agent.wait_log(&task, "ready").await;
    let first = agent.dispatcher.clone();
    let n_reports = first.reports().len();
    agent.stop().await;

    assert!(!process_alive(pid));
    assert!(!process_alive(quick_pid));
    assert_eq!(
        first.reports().len(),
        n_reports,
        "nothing reported on shutdown"
    );

    let again = TestAgent::start(dir.path());
    again.dispatcher.push(vec![running(a)]).await;
    let lost = again.dispatcher.wait_terminal(&task).await;
    assert_eq!(lost.state, TaskState::Lost);
    assert_eq!(
        lost.message,
        "agent shut down; task was stopped (killed after kill timeout 200ms)"
    );
    let lost = again.dispatcher.wait_terminal(&quick).await;
    assert_eq!(lost.state, TaskState::Lost);
    assert_eq!(lost.message, "agent shut down; task was stopped");
    assert!(
        again
            .dispatcher
            .reports()
            .iter()
            .all(|r| r.state.is_terminal()),
        "nothing restarted"
    );
    again.stop().await;
}

#[tokio::test]
async fn finished_task_dirs_beyond_the_limit_are_removed_oldest_first() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cfg = config(dir.path());
    cfg.max_finished_tasks = 2;
    let agent = TestAgent::start_with(cfg);
    let tasks: Vec<_> = (0..3).map(|i| task_id(&format!("gc{i}"))).collect();
    for task in &tasks {
        // One at a time, so they finish in order; a finished task leaves the
        // set, as the dispatcher sends only unfinished ones.
        agent.dispatcher.push(vec![shell(task, "echo hi")]).await;
        agent.dispatcher.wait_terminal(task).await;
    }
    eventually("oldest task dir removed", || {
        (!agent.task_dir(&tasks[0]).exists()).then_some(())
    })
    .await;
    assert!(agent.task_dir(&tasks[1]).exists());
    assert!(agent.task_dir(&tasks[2]).exists());
    agent.stop().await;
}

#[tokio::test]
async fn a_task_finds_its_host_ports_and_where_to_listen_in_its_environment() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cfg = config(dir.path());
    cfg.advertise_ip = Some("10.9.8.7".parse().expect("ip"));
    let agent = TestAgent::start_with(cfg);
    let task = task_id("ports");
    let mut ports = shell(&task, "env | grep '^BATON_.*_' | sort; echo end");
    ports.spec.ports = vec![
        baton_spec::PortSpec {
            name: "http".to_owned(),
            static_port: None,
            publish: true,
        },
        baton_spec::PortSpec {
            name: "metrics".to_owned(),
            static_port: Some(9100),
            publish: false,
        },
    ];
    ports.ports = [("http".to_owned(), 20_321), ("metrics".to_owned(), 9100)].into();
    agent.dispatcher.push(vec![ports]).await;
    let log = agent.wait_log(&task, "end").await;
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("_PORT_") || l.contains("_ADDR_"))
        .collect();
    assert_eq!(
        lines,
        [
            "BATON_ADDR_HTTP=10.9.8.7:20321",
            "BATON_ADDR_METRICS=127.0.0.1:9100",
            "BATON_PORT_HTTP=20321",
            "BATON_PORT_METRICS=9100",
        ]
    );
    agent.stop().await;
}
