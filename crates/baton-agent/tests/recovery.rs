//! Restart safety: a restarted agent neither orphans nor duplicates tasks.

mod common;

use std::os::unix::process::CommandExt;

use baton_state::TaskState;
use common::*;

#[tokio::test]
async fn restarted_agent_kills_the_group_left_by_a_crashed_one_and_reports_it_lost() {
    let dir = tempfile::tempdir().expect("tempdir");
    let agent = TestAgent::start(dir.path());
    let task = task_id("orphan");
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
    let node_id = agent
        .dispatcher
        .description()
        .expect("session opened")
        .node_id;

    agent.crash().await;
    assert!(process_alive(pid), "a crash leaves the task running");
    assert!(process_alive(child));

    let again = TestAgent::start(dir.path());
    // Recovery happens before the session opens.
    eventually("a session", || {
        (again.dispatcher.sessions_opened() == 1).then_some(())
    })
    .await;
    assert!(!process_alive(pid), "leader killed");
    assert!(!process_alive(child), "whole group killed");
    assert_eq!(
        again.dispatcher.description().expect("session").node_id,
        node_id,
        "same node identity"
    );

    // The cluster still believes the task runs: it is lost, not started again.
    again.dispatcher.push(vec![running(a)]).await;
    let lost = again.dispatcher.wait_terminal(&task).await;
    assert_eq!(lost.state, TaskState::Lost);
    assert_eq!(lost.message, "agent restarted; task was killed");
    let other = task_id("after");
    again.dispatcher.push(vec![shell(&other, "exit 0")]).await;
    again.dispatcher.wait_terminal(&other).await;
    let states: Vec<_> = again
        .dispatcher
        .reports_of(&task)
        .iter()
        .map(|r| r.state)
        .collect();
    assert!(
        states.iter().all(|s| *s == TaskState::Lost),
        "never restarted: {states:?}"
    );
    assert!(!again.task_dir(&task).join("run.json").exists());
    again.stop().await;
}

#[tokio::test]
async fn a_recorded_pid_now_used_by_another_process_is_never_signalled() {
    let dir = tempfile::tempdir().expect("tempdir");
    // A process group leader that happens to have the recorded pid, but started
    // at another time: the pid was reused.
    let mut bystander = std::process::Command::new("/bin/sleep")
        .arg("1000")
        .process_group(0)
        .spawn()
        .expect("spawn bystander");
    let pid = bystander.id();
    let start_time = start_time(pid);
    let task = task_id("stale");
    let task_dir = dir.path().join("tasks").join(&task.0);
    std::fs::create_dir_all(&task_dir).expect("task dir");
    std::fs::write(
        task_dir.join("run.json"),
        format!(
            r#"{{"version":1,"job":"job","pid":{pid},"start_time":{}}}"#,
            start_time + 1
        ),
    )
    .expect("run record");

    let agent = TestAgent::start(dir.path());
    agent
        .dispatcher
        .push(vec![running(shell(&task, "true"))])
        .await;
    let lost = agent.dispatcher.wait_terminal(&task).await;
    assert_eq!(lost.state, TaskState::Lost);
    assert_eq!(lost.message, "agent restarted; task was not running");
    assert!(process_alive(pid), "the bystander lives");
    agent.stop().await;

    bystander.kill().expect("kill bystander");
    bystander.wait().expect("reap bystander");
}

#[tokio::test]
async fn unknown_task_the_cluster_believes_started_is_lost_never_started() {
    let dir = tempfile::tempdir().expect("tempdir");
    let agent = TestAgent::start(dir.path());
    let starting = task_id("was-starting");
    let was_running = task_id("was-running");
    let mut before_start = shutdown(shell(&task_id("stopped-early"), "true"));
    before_start.state = TaskState::Assigned;
    let mut a = shell(&starting, "true");
    a.state = TaskState::Starting;
    agent
        .dispatcher
        .push(vec![a, running(shell(&was_running, "true")), before_start])
        .await;

    for task in [&starting, &was_running] {
        let lost = agent.dispatcher.wait_terminal(task).await;
        assert_eq!(lost.state, TaskState::Lost);
        assert_eq!(lost.message, "agent restarted; task was not running");
        assert!(!agent.task_dir(task).exists(), "never started");
    }
    let stopped = agent
        .dispatcher
        .wait_terminal(&task_id("stopped-early"))
        .await;
    assert_eq!(stopped.state, TaskState::Shutdown);
    assert_eq!(stopped.message, "stopped before it started");
    agent.stop().await;
}
