//! Test fixtures: an in-memory fake dispatcher, an agent started on a temporary
//! data directory, assignment builders, and polling with a deadline.

#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use baton_agent::{Agent, AgentConfig, AgentError};
use baton_rpc::{
    Assignment, AssignmentSet, Dispatcher, LogEvent, LogRequest, NodeDescription, RpcError,
    Session, SessionMessage,
};
use baton_spec::{DriverKind, Resources, TaskSpec};
use baton_state::{NodeId, TaskDesired, TaskId, TaskReport, TaskState};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// How long any awaited condition may take.
pub const DEADLINE: Duration = Duration::from_secs(15);

/// Polls `check` every 10 ms until it returns `Some`, failing after [`DEADLINE`].
pub async fn eventually<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Awaits `future`, failing after [`DEADLINE`].
pub async fn within<T>(what: &str, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(DEADLINE, future)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

#[derive(Default)]
struct FakeState {
    session: Option<mpsc::Sender<SessionMessage>>,
    sessions_opened: u32,
    description: Option<NodeDescription>,
    seq: u64,
    reports: Vec<TaskReport>,
    report_calls: u32,
    fail_reports: u32,
    logs: HashMap<u64, Vec<LogEvent>>,
    closed_logs: HashSet<u64>,
    rejected_logs: HashMap<u64, u32>,
    next_log: u64,
    heartbeats: u32,
    heartbeat_period: Option<Duration>,
    refuse_heartbeats: bool,
}

/// A dispatcher that records what the agent sends and lets a test push
/// assignment sets and log requests.
#[derive(Default)]
pub struct FakeDispatcher {
    state: Mutex<FakeState>,
}

impl FakeDispatcher {
    pub fn new() -> Arc<FakeDispatcher> {
        Arc::new(FakeDispatcher::default())
    }

    fn lock(&self) -> MutexGuard<'_, FakeState> {
        self.state.lock().expect("fake dispatcher lock")
    }

    /// Sessions opened so far.
    pub fn sessions_opened(&self) -> u32 {
        self.lock().sessions_opened
    }

    /// Heartbeats taken so far.
    pub fn heartbeats(&self) -> u32 {
        self.lock().heartbeats
    }

    /// The period heartbeats answer with (1 s unless set).
    pub fn set_heartbeat_period(&self, period: Duration) {
        self.lock().heartbeat_period = Some(period);
    }

    /// Answers heartbeats with "no session" (as a dispatcher that marked the
    /// node down), or takes them again.
    pub fn refuse_heartbeats(&self, refuse: bool) {
        self.lock().refuse_heartbeats = refuse;
    }

    /// What the agent said when it last opened a session.
    pub fn description(&self) -> Option<NodeDescription> {
        self.lock().description.clone()
    }

    /// Pushes a full assignment set once a session is open.
    pub async fn push(&self, tasks: Vec<Assignment>) {
        let tx = eventually("a session", || self.lock().session.clone()).await;
        let seq = {
            let mut state = self.lock();
            state.seq += 1;
            state.seq
        };
        tx.send(SessionMessage::Assignments(AssignmentSet {
            seq,
            tasks,
            ..AssignmentSet::default()
        }))
        .await
        .expect("session open");
    }

    /// Ends the current session, as a restarting dispatcher would.
    pub fn close_session(&self) {
        self.lock().session = None;
    }

    /// Makes the next `n` report calls fail.
    pub fn fail_next_reports(&self, n: u32) {
        self.lock().fail_reports = n;
    }

    /// Report calls so far, failed ones included.
    pub fn report_calls(&self) -> u32 {
        self.lock().report_calls
    }

    /// Every accepted report, in order.
    pub fn reports(&self) -> Vec<TaskReport> {
        self.lock().reports.clone()
    }

    /// Accepted reports of one task, in order.
    pub fn reports_of(&self, task: &TaskId) -> Vec<TaskReport> {
        self.reports()
            .into_iter()
            .filter(|r| &r.task == task)
            .collect()
    }

    /// Waits for a report of `task` in `state`.
    pub async fn wait_report(&self, task: &TaskId, state: TaskState) -> TaskReport {
        eventually(&format!("{task} {}", state.as_str()), || {
            self.reports()
                .into_iter()
                .find(|r| &r.task == task && r.state == state)
        })
        .await
    }

    /// Waits for any terminal report of `task`.
    pub async fn wait_terminal(&self, task: &TaskId) -> TaskReport {
        eventually(&format!("{task} terminal"), || {
            self.reports()
                .into_iter()
                .find(|r| &r.task == task && r.state.is_terminal())
        })
        .await
    }

    /// Asks the agent for a task's log; returns the request id.
    pub async fn request_logs(&self, task: &TaskId, follow: bool) -> u64 {
        let tx = eventually("a session", || self.lock().session.clone()).await;
        let id = {
            let mut state = self.lock();
            state.next_log += 1;
            state.next_log
        };
        tx.send(SessionMessage::Logs(LogRequest {
            id,
            task: task.clone(),
            follow,
        }))
        .await
        .expect("session open");
        id
    }

    /// The log bytes received so far for a request.
    pub fn log_data(&self, id: u64) -> Vec<u8> {
        self.lock()
            .logs
            .get(&id)
            .into_iter()
            .flatten()
            .filter_map(|event| match event {
                LogEvent::Data(bytes) => Some(bytes.clone()),
                _ => None,
            })
            .flatten()
            .collect()
    }

    /// Every event received for a request.
    pub fn log_events(&self, id: u64) -> Vec<LogEvent> {
        self.lock().logs.get(&id).cloned().unwrap_or_default()
    }

    /// Waits until a request's stream ended (End or Error); returns the data
    /// and the last event.
    pub async fn wait_log_end(&self, id: u64) -> (Vec<u8>, LogEvent) {
        let last = eventually("end of log stream", || {
            self.log_events(id)
                .last()
                .filter(|e| !matches!(e, LogEvent::Data(_)))
                .cloned()
        })
        .await;
        (self.log_data(id), last)
    }

    /// `send_logs` calls refused after [`FakeDispatcher::close_log`].
    pub fn rejected_log_sends(&self, id: u64) -> u32 {
        self.lock().rejected_logs.get(&id).copied().unwrap_or(0)
    }

    /// Makes further `send_logs` calls of a request fail, as when the reader left.
    pub fn close_log(&self, id: u64) {
        self.lock().closed_logs.insert(id);
    }
}

#[async_trait::async_trait]
impl Dispatcher for FakeDispatcher {
    async fn open_session(&self, node: NodeDescription) -> Result<Session, RpcError> {
        let (tx, rx) = mpsc::channel(16);
        let mut state = self.lock();
        state.sessions_opened += 1;
        state.session = Some(tx);
        let node_id = node.node_id.clone();
        state.description = Some(node);
        Ok(Session {
            node_id,
            messages: rx,
        })
    }

    async fn report(&self, _node: &NodeId, reports: Vec<TaskReport>) -> Result<(), RpcError> {
        let mut state = self.lock();
        state.report_calls += 1;
        if state.fail_reports > 0 {
            state.fail_reports -= 1;
            return Err(RpcError::Unavailable("test says no".to_owned()));
        }
        state.reports.extend(reports);
        Ok(())
    }

    async fn send_logs(
        &self,
        _node: &NodeId,
        request: u64,
        event: LogEvent,
    ) -> Result<(), RpcError> {
        let mut state = self.lock();
        if state.closed_logs.contains(&request) {
            *state.rejected_logs.entry(request).or_default() += 1;
            return Err(RpcError::LogStreamClosed(request));
        }
        state.logs.entry(request).or_default().push(event);
        Ok(())
    }

    async fn heartbeat(&self, node: &NodeId) -> Result<Duration, RpcError> {
        let mut state = self.lock();
        if state.refuse_heartbeats {
            return Err(RpcError::NoSession(node.clone()));
        }
        state.heartbeats += 1;
        Ok(state.heartbeat_period.unwrap_or(Duration::from_secs(1)))
    }
}

/// An agent running on a data directory.
pub struct TestAgent {
    pub dispatcher: Arc<FakeDispatcher>,
    pub shutdown: CancellationToken,
    pub handle: JoinHandle<Result<(), AgentError>>,
    pub data_dir: PathBuf,
}

impl TestAgent {
    /// Starts an agent with the raw driver and the given log cap.
    pub fn start(data_dir: &Path) -> TestAgent {
        TestAgent::start_with(config(data_dir))
    }

    pub fn start_with(config: AgentConfig) -> TestAgent {
        let dispatcher = FakeDispatcher::new();
        let shutdown = CancellationToken::new();
        let data_dir = config.data_dir.clone();
        let handle = tokio::spawn(Agent::run(
            config,
            dispatcher.clone(),
            None,
            shutdown.clone(),
        ));
        TestAgent {
            dispatcher,
            shutdown,
            handle,
            data_dir,
        }
    }

    /// Stops the agent the graceful way and waits for it.
    pub async fn stop(self) {
        self.shutdown.cancel();
        within("agent shutdown", self.handle)
            .await
            .expect("agent task")
            .expect("agent result");
    }

    /// Simulates a crash: the agent's future is dropped with everything it
    /// owns; its processes keep running (as they would after kill -9).
    pub async fn crash(self) {
        self.handle.abort();
        let res = within("agent abort", self.handle).await;
        assert!(res.is_err_and(|e| e.is_cancelled()));
    }

    /// The task's directory.
    pub fn task_dir(&self, task: &TaskId) -> PathBuf {
        self.data_dir.join("tasks").join(&task.0)
    }

    /// The task's current `task.log`.
    pub fn log(&self, task: &TaskId) -> String {
        std::fs::read_to_string(self.task_dir(task).join("task.log")).unwrap_or_default()
    }

    /// Waits until the task's log contains `needle`.
    pub async fn wait_log(&self, task: &TaskId, needle: &str) -> String {
        eventually(&format!("{needle:?} in the log of {task}"), || {
            let log = self.log(task);
            log.contains(needle).then_some(log)
        })
        .await
    }
}

/// A configuration with the raw driver on.
pub fn config(data_dir: &Path) -> AgentConfig {
    AgentConfig::new(data_dir.to_owned(), "test-host".to_owned(), true)
}

pub fn task_id(name: &str) -> TaskId {
    TaskId(format!("job.{name}.0123456789ab"))
}

/// A task to start: desired running, recorded `assigned`.
pub fn assignment(task: &TaskId, command: &[&str]) -> Assignment {
    Assignment {
        ports: Default::default(),
        task: task.clone(),
        job: "job".to_owned(),
        job_version: 1,
        slot: "0".to_owned(),
        spec: TaskSpec {
            ports: Default::default(),
            image: None,
            capabilities: Vec::new(),
            pids_limit: baton_spec::DEFAULT_PIDS_LIMIT,
            secrets: Vec::new(),
            env_secrets: std::collections::BTreeMap::new(),
            configs: Vec::new(),
            driver: DriverKind::Raw,
            command: command.iter().map(|s| (*s).to_owned()).collect(),
            env: BTreeMap::new(),
            workdir: None,
            user: None,
            resources: Resources::default(),
            kill_timeout: Duration::from_secs(5),
        },
        desired: TaskDesired::Running,
        state: TaskState::Assigned,
    }
}

/// `sh -c script`.
pub fn shell(task: &TaskId, script: &str) -> Assignment {
    assignment(task, &["/bin/sh", "-c", script])
}

/// The same assignment as the cluster would send it once the task runs.
pub fn running(mut a: Assignment) -> Assignment {
    a.state = TaskState::Running;
    a
}

/// The same assignment, asked to stop.
pub fn shutdown(mut a: Assignment) -> Assignment {
    a.desired = TaskDesired::Shutdown;
    a.state = TaskState::Running;
    a
}

/// Whether a live (not zombie) process has this pid.
pub fn process_alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|text| {
            let after = &text[text.rfind(')')? + 1..];
            after
                .split_whitespace()
                .next()
                .map(|s| s != "Z" && s != "X")
        })
        .unwrap_or(false)
}

/// Field 22 of `/proc/<pid>/stat`.
pub fn start_time(pid: u32) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    let after = &text[text.rfind(')').expect("comm") + 1..];
    after
        .split_whitespace()
        .nth(19)
        .and_then(|s| s.parse().ok())
        .expect("start time")
}
