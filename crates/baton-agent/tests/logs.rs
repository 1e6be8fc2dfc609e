//! Task logs: capture of stdout and stderr, rotation, and streaming.

mod common;

use baton_rpc::LogEvent;
use baton_state::TaskState;
use common::*;

#[tokio::test]
async fn stdout_and_stderr_go_to_the_task_log() {
    let dir = tempfile::tempdir().expect("tempdir");
    let agent = TestAgent::start(dir.path());
    let task = task_id("both");
    agent
        .dispatcher
        .push(vec![shell(&task, "echo out; echo err >&2; echo out2")])
        .await;
    agent
        .dispatcher
        .wait_report(&task, TaskState::Complete)
        .await;
    let log = agent.log(&task);
    let mut lines: Vec<&str> = log.lines().collect();
    lines.sort_unstable();
    assert_eq!(lines, vec!["err", "out", "out2"]);
    agent.stop().await;
}

#[tokio::test]
async fn log_rotates_at_the_configured_cap() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cfg = config(dir.path());
    cfg.log_max_bytes = 1000;
    let agent = TestAgent::start_with(cfg);
    let task = task_id("rotate");
    agent
        .dispatcher
        .push(vec![shell(&task, "head -c 2500 /dev/zero | tr '\\0' a")])
        .await;
    agent
        .dispatcher
        .wait_report(&task, TaskState::Complete)
        .await;
    let current = std::fs::read(agent.task_dir(&task).join("task.log")).expect("log");
    let rotated = std::fs::read(agent.task_dir(&task).join("task.log.1")).expect("rotated");
    // 2500 bytes: two full files of 1000 (the first replaced by the second) and 500.
    assert_eq!(rotated, vec![b'a'; 1000]);
    assert_eq!(current, vec![b'a'; 500]);
    agent.stop().await;
}

#[tokio::test]
async fn log_request_of_a_finished_task_sends_rotated_then_current_and_ends() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cfg = config(dir.path());
    cfg.log_max_bytes = 8;
    let agent = TestAgent::start_with(cfg);
    let task = task_id("finished");
    agent
        .dispatcher
        .push(vec![shell(&task, "printf 0123456789abcdef; printf XYZ")])
        .await;
    agent
        .dispatcher
        .wait_report(&task, TaskState::Complete)
        .await;

    for follow in [false, true] {
        let id = agent.dispatcher.request_logs(&task, follow).await;
        let (data, last) = agent.dispatcher.wait_log_end(id).await;
        assert_eq!(last, LogEvent::End);
        // The first 8 bytes were rotated away twice; what is kept comes in order.
        assert_eq!(String::from_utf8_lossy(&data), "89abcdefXYZ");
    }
    agent.stop().await;
}

#[tokio::test]
async fn followed_log_streams_new_output_and_ends_after_the_task_exits() {
    let dir = tempfile::tempdir().expect("tempdir");
    let gate = tempfile::tempdir().expect("tempdir");
    let go = gate.path().join("go");
    let agent = TestAgent::start(dir.path());
    let task = task_id("follow");
    let script = format!(
        "echo first; while [ ! -e {} ]; do sleep 0.02; done; echo second",
        go.display()
    );
    agent.dispatcher.push(vec![shell(&task, &script)]).await;
    agent.wait_log(&task, "first").await;

    let id = agent.dispatcher.request_logs(&task, true).await;
    eventually("first line streamed", || {
        (agent.dispatcher.log_data(id) == b"first\n").then_some(())
    })
    .await;
    assert!(
        !agent
            .dispatcher
            .log_events(id)
            .iter()
            .any(|e| matches!(e, LogEvent::End)),
        "a followed stream does not end while the task runs"
    );
    std::fs::write(&go, "").expect("open the gate");
    let (data, last) = agent.dispatcher.wait_log_end(id).await;
    assert_eq!(last, LogEvent::End);
    assert_eq!(data, b"first\nsecond\n");
    agent.stop().await;
}

#[tokio::test]
async fn followed_log_survives_rotation_without_loss_or_duplicates() {
    let dir = tempfile::tempdir().expect("tempdir");
    let gate = tempfile::tempdir().expect("tempdir");
    let go = gate.path().join("go");
    let mut cfg = config(dir.path());
    cfg.log_max_bytes = 1000;
    let agent = TestAgent::start_with(cfg);
    let task = task_id("follow-rotate");
    // 600 bytes, wait, then 600 more: the log rotates while it is followed.
    let script = format!(
        "head -c 600 /dev/zero | tr '\\0' a; while [ ! -e {} ]; do sleep 0.02; done; \
         head -c 600 /dev/zero | tr '\\0' b",
        go.display()
    );
    agent.dispatcher.push(vec![shell(&task, &script)]).await;
    let id = agent.dispatcher.request_logs(&task, true).await;
    eventually("first part streamed", || {
        (agent.dispatcher.log_data(id).len() == 600).then_some(())
    })
    .await;
    std::fs::write(&go, "").expect("open the gate");
    let (data, last) = agent.dispatcher.wait_log_end(id).await;
    assert_eq!(last, LogEvent::End);
    let mut expected = vec![b'a'; 600];
    expected.extend(vec![b'b'; 600]);
    assert_eq!(data, expected);
    assert!(agent.task_dir(&task).join("task.log.1").exists());
    agent.stop().await;
}

#[tokio::test]
async fn large_logs_are_sent_in_chunks_of_at_most_64_kib() {
    let dir = tempfile::tempdir().expect("tempdir");
    let agent = TestAgent::start(dir.path());
    let task = task_id("big");
    agent
        .dispatcher
        .push(vec![shell(&task, "head -c 200000 /dev/zero")])
        .await;
    agent
        .dispatcher
        .wait_report(&task, TaskState::Complete)
        .await;
    let id = agent.dispatcher.request_logs(&task, false).await;
    let (data, _) = agent.dispatcher.wait_log_end(id).await;
    assert_eq!(data.len(), 200_000);
    let events = agent.dispatcher.log_events(id);
    assert!(events.iter().all(|e| match e {
        LogEvent::Data(bytes) => !bytes.is_empty() && bytes.len() <= 64 << 10,
        _ => true,
    }));
    agent.stop().await;
}

#[tokio::test]
async fn log_request_for_an_unknown_task_is_an_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let agent = TestAgent::start(dir.path());
    let task = task_id("never");
    agent.dispatcher.push(vec![]).await;
    let id = agent.dispatcher.request_logs(&task, true).await;
    let (data, last) = agent.dispatcher.wait_log_end(id).await;
    assert!(data.is_empty());
    assert_eq!(
        last,
        LogEvent::Error(format!("no logs for task {} on this node", task.0))
    );
    agent.stop().await;
}

#[tokio::test]
async fn streaming_stops_when_the_reader_is_gone() {
    let dir = tempfile::tempdir().expect("tempdir");
    let agent = TestAgent::start(dir.path());
    let task = task_id("chatty");
    agent
        .dispatcher
        .push(vec![shell(
            &task,
            "while :; do echo tick; sleep 0.02; done",
        )])
        .await;
    let id = agent.dispatcher.request_logs(&task, true).await;
    eventually("some data", || {
        (!agent.dispatcher.log_data(id).is_empty()).then_some(())
    })
    .await;
    agent.dispatcher.close_log(id);
    eventually("one rejected send", || {
        (agent.dispatcher.rejected_log_sends(id) == 1).then_some(())
    })
    .await;
    // Let the task write for several poll intervals (200 ms each): a streamer
    // still running would try to send that.
    let ticks = agent.log(&task).lines().count();
    eventually("more output", || {
        (agent.log(&task).lines().count() > ticks + 40).then_some(())
    })
    .await;
    assert_eq!(agent.dispatcher.rejected_log_sends(id), 1);
    agent.stop().await;
}
