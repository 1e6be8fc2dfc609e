//! The session with the dispatcher: node description, reconnection,
//! heartbeats, and at-least-once reporting.

mod common;

use std::time::Duration;

use baton_spec::{DriverKind, Resources};
use baton_state::{TaskId, TaskState};
use common::*;

#[tokio::test]
async fn node_describes_itself_and_keeps_its_id_across_restarts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let agent = TestAgent::start(dir.path());
    agent.dispatcher.push(vec![]).await;
    let first = agent.dispatcher.description().expect("session");
    assert_eq!(first.hostname, "test-host");
    // Raw is enabled; exec needs a baton binary for its shims (none here);
    // docker is offered when this machine's engine answers.
    assert!(
        first.drivers.contains(&DriverKind::Raw),
        "{:?}",
        first.drivers
    );
    assert!(
        !first.drivers.contains(&DriverKind::Exec),
        "{:?}",
        first.drivers
    );
    let host = baton_agent::host_capacity();
    assert_eq!(
        (first.capacity.cpu_millis, first.capacity.memory_bytes),
        (host.cpu_millis, host.memory_bytes)
    );
    // The free space of the data dir's filesystem, measured at start.
    assert!(first.capacity.disk_bytes > 0, "{:?}", first.capacity);
    assert_eq!(first.node_id.0.len(), 16);
    agent.stop().await;

    let mut cfg = config(dir.path());
    cfg.enable_raw = false;
    let capacity = Resources {
        disk_bytes: 0,
        cpu_millis: 500,
        memory_bytes: 1 << 30,
    };
    cfg.capacity = Some(capacity);
    let again = TestAgent::start_with(cfg);
    again.dispatcher.push(vec![]).await;
    let second = again.dispatcher.description().expect("session");
    assert_eq!(second.node_id, first.node_id);
    assert_eq!(second.capacity, capacity);
    assert!(
        !second.drivers.contains(&DriverKind::Raw),
        "{:?}",
        second.drivers
    );

    // Without the raw driver, a raw task cannot start.
    let task = task_id("no-driver");
    again.dispatcher.push(vec![shell(&task, "true")]).await;
    let failed = again.dispatcher.wait_terminal(&task).await;
    assert_eq!(failed.state, TaskState::Failed);
    assert_eq!(
        failed.message,
        "start failed: driver raw is not enabled on this node"
    );
    again.stop().await;
}

#[tokio::test]
async fn reopened_session_gets_the_state_of_every_known_task_again() {
    let dir = tempfile::tempdir().expect("tempdir");
    let agent = TestAgent::start(dir.path());
    let task = task_id("steady");
    let done = task_id("done");
    agent
        .dispatcher
        .push(vec![
            assignment(&task, &["/bin/sleep", "1000"]),
            shell(&done, "exit 0"),
        ])
        .await;
    let pid = agent
        .dispatcher
        .wait_report(&task, TaskState::Running)
        .await
        .pid;
    agent.dispatcher.wait_terminal(&done).await;

    agent.dispatcher.close_session();
    eventually("a second session", || {
        (agent.dispatcher.sessions_opened() == 2).then_some(())
    })
    .await;
    let count = |id: &TaskId, state| {
        agent
            .dispatcher
            .reports_of(id)
            .iter()
            .filter(|r| r.state == state)
            .count()
    };
    eventually("state re-sent", || {
        (count(&task, TaskState::Running) == 2 && count(&done, TaskState::Complete) == 2)
            .then_some(())
    })
    .await;
    let resent = agent
        .dispatcher
        .reports_of(&task)
        .into_iter()
        .rfind(|r| r.state == TaskState::Running)
        .expect("re-sent");
    assert_eq!(resent.pid, pid);
    // The task kept running through the reconnection.
    assert!(process_alive(pid.expect("pid")));
    agent.stop().await;
}

#[tokio::test]
async fn failed_reports_are_retried_in_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let agent = TestAgent::start(dir.path());
    let task = task_id("retried");
    agent.dispatcher.push(vec![]).await;
    agent.dispatcher.fail_next_reports(3);
    agent.dispatcher.push(vec![shell(&task, "exit 0")]).await;
    agent.dispatcher.wait_terminal(&task).await;
    let states: Vec<_> = agent
        .dispatcher
        .reports_of(&task)
        .iter()
        .map(|r| r.state)
        .collect();
    assert_eq!(
        states,
        vec![TaskState::Starting, TaskState::Running, TaskState::Complete]
    );
    assert!(agent.dispatcher.report_calls() >= 4);
    agent.stop().await;
}

#[tokio::test]
async fn task_ids_that_are_not_plain_names_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let agent = TestAgent::start(dir.path());
    let task = TaskId("../escape".to_owned());
    agent.dispatcher.push(vec![shell(&task, "true")]).await;
    let failed = agent.dispatcher.wait_terminal(&task).await;
    assert_eq!(failed.state, TaskState::Failed);
    assert_eq!(failed.message, "start failed: invalid task id");
    assert!(!dir.path().join("escape").exists());
    agent.stop().await;
}

#[tokio::test]
async fn the_agent_heartbeats_at_the_period_the_dispatcher_gives() {
    let dir = tempfile::tempdir().expect("tempdir");
    let agent = TestAgent::start(dir.path());
    agent
        .dispatcher
        .set_heartbeat_period(Duration::from_millis(50));
    agent.dispatcher.push(vec![]).await;
    eventually("a first heartbeat", || {
        (agent.dispatcher.heartbeats() >= 1).then_some(())
    })
    .await;
    let start = tokio::time::Instant::now();
    eventually("ten more heartbeats", || {
        (agent.dispatcher.heartbeats() >= 11).then_some(())
    })
    .await;
    // At the default 1 s period they would take 10 s.
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(agent.dispatcher.sessions_opened(), 1);
    agent.stop().await;
}

#[tokio::test]
async fn a_refused_heartbeat_makes_the_agent_open_a_new_session() {
    let dir = tempfile::tempdir().expect("tempdir");
    let agent = TestAgent::start(dir.path());
    agent
        .dispatcher
        .set_heartbeat_period(Duration::from_millis(50));
    agent.dispatcher.push(vec![]).await;
    eventually("a heartbeat", || {
        (agent.dispatcher.heartbeats() >= 1).then_some(())
    })
    .await;
    agent.dispatcher.refuse_heartbeats(true);
    eventually("a second session", || {
        (agent.dispatcher.sessions_opened() >= 2).then_some(())
    })
    .await;
    agent.dispatcher.refuse_heartbeats(false);
    let before = agent.dispatcher.heartbeats();
    eventually("heartbeats on the new session", || {
        (agent.dispatcher.heartbeats() > before).then_some(())
    })
    .await;
    agent.stop().await;
}
