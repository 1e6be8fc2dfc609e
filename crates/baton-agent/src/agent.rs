//! The agent's runtime: node identity, the session with the dispatcher, and the
//! loop that carries out the executor's [`Action`]s and reports task states.
//!
//! One loop owns every piece of mutable state and takes one closed [`Event`] at
//! a time (shutdown, a runner's news, a session message, a session opened, a
//! report acknowledged, a background task ended). Each task's process is
//! supervised by its own [`Runner`]; log requests get their own streamer. Both
//! live in `JoinSet`s owned by the loop, so dropping the agent's future aborts
//! them, and their processes (not killed on drop) are found again by the next
//! agent through their run records.
//!
//! Heartbeats run in a task of their own, at the period the dispatcher answers
//! each one with, so an agent busy with reports, logs or tasks still
//! heartbeats on time. When they fail for longer than the dispatcher's grace
//! would allow (or the dispatcher no longer knows the session), the agent
//! drops its session and opens a new one.
//!
//! Opening a session is retried with backoff (100 ms doubled up to 10 s); a
//! session that delivered any message resets it, so when a working session
//! ends (its manager went away or stopped leading) the next attempt comes
//! after ~100 ms and, through [`crate::FailoverDispatcher`], goes to another
//! manager.
//!
//! Reports are at least once: every state change goes into an outbox that is
//! sent in batches, put back on error and retried with backoff; a new session
//! replaces the outbox with the current state of every known task.

use std::collections::BTreeMap;
use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use baton_rpc::{
    Assignment, Dispatcher, ExecEvent, ExecRequest, LogEvent, LogRequest, NodeDescription,
    RpcError, Session, SessionMessage, TaskUsage, TrustUpdate,
};
use baton_spec::DriverKind;
use baton_state::{ExitInfo, NodeId, TaskId, TaskReport, TaskState};
use tokio::sync::{mpsc, watch};
use tokio::task::{JoinError, JoinSet};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::config::AgentConfig;
use crate::driver::{Driver, NodeFiles, TaskFiles, Usage, sweep_run_dirs};
use crate::error::AgentError;
use crate::executor::{Action, LocalTask, moves_forward, step};
use crate::fingerprint;
use crate::log_stream::stream_log;
use crate::records::load_or_create_node_id;
use crate::recovery::recover;
use crate::runner::{Runner, StopReason, StopRequest, TaskEvent, TaskUpdate, now_ms};

/// Most reports sent in one call; the rest follow in the next batch.
const MAX_BATCH: usize = 512;

/// Runner news waiting for the loop. Runners wait when it is full, which only
/// slows their reporting.
const EVENT_QUEUE: usize = 256;

/// How often the agent samples and reports what its tasks use.
const USAGE_PERIOD: Duration = Duration::from_secs(3);

/// Messages of one exec session buffered each way.
const EXEC_BUFFER: usize = 16;

/// Longest wait for the dispatcher to open a session or take a report before
/// the call counts as failed and is retried: a hung call must not stop the
/// agent from reporting forever.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Retry delays: 100 ms doubled per attempt up to 10 s.
const BACKOFF_BASE: Duration = Duration::from_millis(100);
const BACKOFF_CAP: Duration = Duration::from_secs(10);

/// Heartbeat period until the dispatcher answers with its own (the
/// dispatcher's period on a small cluster).
const DEFAULT_HEARTBEAT_PERIOD: Duration = Duration::from_secs(1);

/// Bounds on the period the agent accepts from a dispatcher.
const MIN_HEARTBEAT_PERIOD: Duration = Duration::from_millis(100);
const MAX_HEARTBEAT_PERIOD: Duration = Duration::from_secs(300);

/// Heartbeats that may fail in a row (plus 1 s) before the agent gives up on
/// its session: the dispatcher's own rule for marking a node down.
const MISSED_HEARTBEATS: u32 = 3;

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// The node agent. Built and driven by [`Agent::run`].
pub struct Agent {
    config: AgentConfig,
    dispatcher: Arc<dyn Dispatcher>,
    /// What the node says about itself when it opens a session.
    description: NodeDescription,
    /// The id the cluster knows the node by (the session's).
    node_id: NodeId,
    drivers: BTreeMap<DriverKind, Arc<dyn Driver>>,
    /// Every task this node knows: running ones and the recent finished ones.
    tasks: BTreeMap<TaskId, Known>,
    /// The last assignment set received.
    assigned: Vec<Assignment>,
    /// The secrets and configs of that set (memory only).
    files: NodeFiles,
    session: Option<OpenSession>,
    /// Increases with every session; report outcomes of older ones are ignored.
    generation: u64,
    /// Reports not yet acknowledged, in order.
    outbox: Vec<TaskReport>,
    session_failures: u32,
    report_failures: u32,
    /// Where pushed roots and managers go (see [`Agent::run`]).
    cluster_updates: Option<mpsc::UnboundedSender<ClusterUpdate>>,
    events_tx: mpsc::Sender<TaskEvent>,
    events_rx: mpsc::Receiver<TaskEvent>,
    runners: JoinSet<()>,
    streamers: JoinSet<()>,
    /// The previous usage sample of each running task, for CPU rates.
    usage: Arc<std::sync::Mutex<UsageSamples>>,
    /// The heartbeat task of the current session.
    heartbeats: JoinSet<()>,
    /// Generations whose heartbeats gave up.
    heartbeat_lost_tx: mpsc::Sender<u64>,
    heartbeat_lost_rx: mpsc::Receiver<u64>,
}

impl fmt::Debug for Agent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Agent")
            .field("node_id", &self.node_id)
            .field("tasks", &self.tasks.len())
            .field("session", &self.session.is_some())
            .finish_non_exhaustive()
    }
}

/// What the agent knows of one task.
struct Known {
    local: LocalTask,
    job: String,
    message: String,
    exit: Option<ExitInfo>,
    pid: Option<u32>,
    /// Milliseconds since the Unix epoch; set once terminal.
    finished_at_ms: Option<u64>,
    /// Whether `data_dir/tasks/<id>/` belongs to it.
    has_dir: bool,
    /// While its runner runs.
    runner: Option<RunnerHandle>,
}

impl Known {
    fn report(&self, task: &TaskId) -> TaskReport {
        TaskReport {
            task: task.clone(),
            state: self.local.state,
            message: self.message.clone(),
            exit: self.exit,
            pid: self.pid,
        }
    }
}

struct RunnerHandle {
    stop: watch::Sender<Option<StopRequest>>,
    log_closed: watch::Receiver<bool>,
    /// The driver running the task (for `baton exec`).
    driver: Arc<dyn Driver>,
}

struct OpenSession {
    node_id: NodeId,
    messages: mpsc::Receiver<SessionMessage>,
}

struct ReportOutcome {
    generation: u64,
    batch: Vec<TaskReport>,
    result: Result<(), RpcError>,
}

/// What the cluster pushes down a session that is not the agent's business:
/// the agent hands it to whoever keeps the node's TLS trust and its list of
/// managers (see [`Agent::run`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClusterUpdate {
    /// The roots to trust from now on (a root CA rotation).
    Trust(TrustUpdate),
    /// The cluster addresses of every manager.
    Managers(Vec<String>),
}

/// Everything the loop reacts to.
enum Event {
    Shutdown,
    Task(TaskEvent),
    Session(Option<SessionMessage>),
    SessionOpened(Result<Session, RpcError>),
    Reported(ReportOutcome),
    HeartbeatLost(u64),
    RunnerDone(Result<(), JoinError>),
    SampleUsage,
}

/// What the usage sampler keeps between two samples.
#[derive(Default)]
struct UsageSamples {
    /// Per task: cumulative CPU time (ns) and when it was read.
    last: HashMap<TaskId, (u64, std::time::Instant)>,
    /// A sampling pass is running (a slow engine must not pile them up).
    busy: bool,
}

/// Turns fresh samples into reports: the CPU rate over the time since a
/// task's previous sample (so a task is reported from its second sample on).
/// Tasks not sampled this time are forgotten.
fn usage_report(
    last: &mut HashMap<TaskId, (u64, std::time::Instant)>,
    sampled: Vec<(TaskId, Option<Usage>, std::time::Instant)>,
    now_ms: u64,
) -> Vec<TaskUsage> {
    let mut report = Vec::new();
    let mut next = HashMap::with_capacity(sampled.len());
    for (task, usage, at) in sampled {
        let Some(usage) = usage else { continue };
        if let Some((cpu_ns, then)) = last.get(&task) {
            let elapsed_ns = at.saturating_duration_since(*then).as_nanos().max(1);
            let used_ns = u128::from(usage.cpu_ns.saturating_sub(*cpu_ns));
            report.push(TaskUsage {
                task: task.clone(),
                cpu_millis: u64::try_from(used_ns * 1000 / elapsed_ns).unwrap_or(u64::MAX),
                memory_bytes: usage.memory_bytes,
                pids: usage.pids,
                at_ms: now_ms,
            });
        }
        next.insert(task, (usage.cpu_ns, at));
    }
    *last = next;
    report
}

/// Delay before retry number `attempt` (0-based): 100 ms doubled per attempt,
/// capped at 10 s, then scaled by `jitter` (in `[0, 1)`) into the upper half of
/// that, so agents restarted together do not retry in step.
pub(crate) fn backoff(attempt: u32, jitter: f64) -> Duration {
    let factor = 1u32 << attempt.min(16);
    let delay = BACKOFF_BASE.saturating_mul(factor).min(BACKOFF_CAP);
    delay.mul_f64(0.5 + 0.5 * jitter.clamp(0.0, 1.0))
}

/// Whether a task id can name its directory: one plain path component. Task
/// ids come from the cluster; a manager must not be able to make the agent
/// write (or delete) outside `data_dir/tasks`.
pub(crate) fn valid_dir_name(task: &TaskId) -> bool {
    let name = task.0.as_str();
    !name.is_empty() && name.len() <= 255 && !name.starts_with('.') && !name.contains(['/', '\0'])
}

impl Agent {
    /// Runs the agent until `shutdown` is cancelled: recovers what an earlier
    /// run left, keeps a session with `dispatcher` open, converges the node's
    /// tasks to its assignments and reports their states. On shutdown it stops
    /// every task (in parallel, each with its kill timeout) and returns without
    /// reporting: the next start reports them lost.
    ///
    /// Returns an error only if the data directory cannot be used or the
    /// configuration is invalid (labels).
    ///
    /// The roots the cluster pushes (a root CA rotation) and the list of its
    /// managers go to `cluster_updates`, whose owner keeps the node's TLS
    /// trust, renewal and [`crate::ManagerList`] in line; the agent itself
    /// has no use for them.
    pub async fn run(
        config: AgentConfig,
        dispatcher: Arc<dyn Dispatcher>,
        cluster_updates: Option<mpsc::UnboundedSender<ClusterUpdate>>,
        shutdown: CancellationToken,
    ) -> Result<(), AgentError> {
        let mut agent = Agent::prepare(config, dispatcher).await?;
        agent.cluster_updates = cluster_updates;
        let span = tracing::info_span!("agent", node_id = %agent.node_id);
        agent.main_loop(shutdown).instrument(span).await;
        Ok(())
    }

    async fn prepare(
        config: AgentConfig,
        dispatcher: Arc<dyn Dispatcher>,
    ) -> Result<Agent, AgentError> {
        // The dispatcher refuses a session with invalid labels; say so here,
        // once, rather than retrying a session that can never open.
        baton_spec::check_labels(&config.labels).map_err(AgentError::Config)?;
        let tasks_dir = config.tasks_dir();
        std::fs::create_dir_all(&tasks_dir).map_err(|e| AgentError::io("create", &tasks_dir, e))?;
        let node_id = NodeId(load_or_create_node_id(&config.data_dir)?);
        let (drivers, problems) = fingerprint::drivers(&config).await;
        for (driver, problem) in &problems {
            tracing::warn!(driver = driver.as_str(), "driver unavailable: {problem}");
        }
        let every_driver: Vec<Arc<dyn Driver>> = drivers.values().cloned().collect();
        let recovered = recover(&tasks_dir, &node_id, &every_driver).await?;
        // The tasks an earlier agent ran are gone now: so go their tmpfs.
        sweep_run_dirs(&config.run_dir());
        let tasks = recovered
            .into_iter()
            .map(|rec| {
                let known = Known {
                    local: LocalTask {
                        state: rec.status.state,
                        stopping: false,
                        kill_timeout: Duration::ZERO,
                    },
                    job: rec.status.job,
                    message: rec.status.message,
                    exit: rec.status.exit,
                    pid: None,
                    finished_at_ms: Some(rec.status.finished_at_ms),
                    has_dir: true,
                    runner: None,
                };
                (rec.task, known)
            })
            .collect();
        let description = NodeDescription {
            node_id: node_id.clone(),
            hostname: config.hostname.clone(),
            capacity: fingerprint::capacity(&config),
            drivers: drivers.keys().copied().collect(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            address: None,
            labels: config.labels.clone(),
        };
        let (events_tx, events_rx) = mpsc::channel(EVENT_QUEUE);
        let (heartbeat_lost_tx, heartbeat_lost_rx) = mpsc::channel(4);
        let mut agent = Agent {
            config,
            dispatcher,
            description,
            node_id,
            drivers,
            tasks,
            assigned: Vec::new(),
            files: NodeFiles::default(),
            session: None,
            generation: 0,
            outbox: Vec::new(),
            session_failures: 0,
            cluster_updates: None,
            report_failures: 0,
            events_tx,
            events_rx,
            runners: JoinSet::new(),
            streamers: JoinSet::new(),
            usage: Arc::default(),
            heartbeats: JoinSet::new(),
            heartbeat_lost_tx,
            heartbeat_lost_rx,
        };
        agent.collect_garbage();
        Ok(agent)
    }

    async fn main_loop(&mut self, shutdown: CancellationToken) {
        tracing::info!(tasks = self.tasks.len(), "agent started");
        let mut opening = Some(self.open_session(Duration::ZERO));
        let mut reporting: Option<BoxFuture<ReportOutcome>> = None;
        let mut usage_tick = tokio::time::interval(USAGE_PERIOD);
        usage_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let event = tokio::select! {
                biased;
                () = shutdown.cancelled() => Event::Shutdown,
                Some(event) = self.events_rx.recv() => Event::Task(event),
                message = next_message(&mut self.session) => Event::Session(message),
                opened = poll_slot(&mut opening) => Event::SessionOpened(opened),
                outcome = poll_slot(&mut reporting) => Event::Reported(outcome),
                Some(generation) = self.heartbeat_lost_rx.recv() => Event::HeartbeatLost(generation),
                // The heartbeat task ends only by reporting itself lost.
                Some(_) = self.heartbeats.join_next() => continue,
                Some(done) = self.runners.join_next() => Event::RunnerDone(done),
                // Streamers need nothing after they end.
                Some(_) = self.streamers.join_next() => continue,
                _ = usage_tick.tick() => Event::SampleUsage,
            };
            match event {
                Event::Shutdown => {
                    self.stop_all().await;
                    return;
                }
                Event::Task(event) => self.on_task_event(event),
                Event::Session(Some(message)) => {
                    // The session works: when it ends (its manager went away,
                    // or stopped leading), the first retry comes after
                    // ~100 ms, not after the backoff of earlier failures.
                    self.session_failures = 0;
                    self.on_message(message);
                }
                Event::Session(None) => {
                    tracing::info!("session closed");
                    self.session = None;
                    self.heartbeats.abort_all();
                    let delay = self.next_session_delay();
                    opening = Some(self.open_session(delay));
                }
                Event::HeartbeatLost(generation) => {
                    if generation == self.generation && self.session.is_some() {
                        tracing::warn!("heartbeats failing; opening a new session");
                        self.session = None;
                        self.heartbeats.abort_all();
                        let delay = self.next_session_delay();
                        opening = Some(self.open_session(delay));
                    }
                }
                Event::SessionOpened(Ok(session)) => self.on_session_opened(session),
                Event::SessionOpened(Err(e)) => {
                    tracing::warn!(error = %e, "cannot open session");
                    let delay = self.next_session_delay();
                    opening = Some(self.open_session(delay));
                }
                Event::Reported(outcome) => self.on_reported(outcome),
                Event::RunnerDone(Err(e)) if e.is_panic() => {
                    tracing::error!(error = %e, "task runner panicked");
                }
                Event::RunnerDone(_) => {}
                Event::SampleUsage => self.sample_usage(),
            }
            if reporting.is_none() {
                reporting = self.next_report();
            }
        }
    }

    fn on_message(&mut self, message: SessionMessage) {
        match message {
            SessionMessage::Assignments(set) => {
                tracing::debug!(
                    seq = set.seq,
                    tasks = set.tasks.len(),
                    secrets = set.secrets.len(),
                    configs = set.configs.len(),
                    "assignments"
                );
                self.assigned = set.tasks;
                // The previous values are dropped (and wiped) here: what no
                // live task of this node uses any more is not kept.
                self.files = NodeFiles {
                    secrets: set.secrets,
                    configs: set.configs,
                };
                self.converge();
            }
            SessionMessage::Logs(request) => self.serve_logs(request),
            SessionMessage::Exec(request) => self.serve_exec(request),
            SessionMessage::Trust(update) => self.push_update(ClusterUpdate::Trust(update)),
            SessionMessage::Managers(addrs) => {
                tracing::debug!(managers = addrs.len(), "managers");
                self.push_update(ClusterUpdate::Managers(addrs));
            }
        }
    }

    fn push_update(&self, update: ClusterUpdate) {
        if let Some(sink) = &self.cluster_updates {
            let _ = sink.send(update);
        }
    }

    fn open_session(&self, delay: Duration) -> BoxFuture<Result<Session, RpcError>> {
        let dispatcher = self.dispatcher.clone();
        let description = self.description.clone();
        Box::pin(async move {
            tokio::time::sleep(delay).await;
            tokio::time::timeout(CALL_TIMEOUT, dispatcher.open_session(description))
                .await
                .unwrap_or_else(|_| Err(RpcError::Unavailable("open session timed out".to_owned())))
        })
    }

    fn next_session_delay(&mut self) -> Duration {
        let delay = backoff(self.session_failures, rand::random());
        self.session_failures = self.session_failures.saturating_add(1);
        delay
    }

    fn on_session_opened(&mut self, session: Session) {
        if session.node_id != self.node_id {
            tracing::info!(cluster_node_id = %session.node_id, "cluster knows this node by another id");
        }
        tracing::info!("session open");
        self.generation += 1;
        self.node_id = session.node_id;
        self.session = Some(OpenSession {
            node_id: self.node_id.clone(),
            messages: session.messages,
        });
        // The dispatcher may have missed anything sent before: tell it the
        // current state of every task (it ignores what it already knows).
        self.outbox = self
            .tasks
            .iter()
            .map(|(id, known)| known.report(id))
            .collect();
        self.report_failures = 0;
        self.heartbeats.abort_all();
        self.heartbeats.spawn(heartbeat_loop(
            self.dispatcher.clone(),
            self.node_id.clone(),
            self.generation,
            self.heartbeat_lost_tx.clone(),
        ));
    }

    fn next_report(&mut self) -> Option<BoxFuture<ReportOutcome>> {
        let node = self.session.as_ref()?.node_id.clone();
        if self.outbox.is_empty() {
            return None;
        }
        let n = self.outbox.len().min(MAX_BATCH);
        let batch: Vec<TaskReport> = self.outbox.drain(..n).collect();
        let delay = match self.report_failures {
            0 => Duration::ZERO,
            n => backoff(n - 1, rand::random()),
        };
        let generation = self.generation;
        let dispatcher = self.dispatcher.clone();
        Some(Box::pin(async move {
            tokio::time::sleep(delay).await;
            let result =
                tokio::time::timeout(CALL_TIMEOUT, dispatcher.report(&node, batch.clone()))
                    .await
                    .unwrap_or_else(|_| Err(RpcError::Unavailable("report timed out".to_owned())));
            ReportOutcome {
                generation,
                batch,
                result,
            }
        }))
    }

    fn on_reported(&mut self, outcome: ReportOutcome) {
        if outcome.generation != self.generation {
            // A new session re-sent everything already.
            return;
        }
        match outcome.result {
            Ok(()) => self.report_failures = 0,
            Err(e) => {
                tracing::warn!(error = %e, reports = outcome.batch.len(), "report failed; will retry");
                self.report_failures = self.report_failures.saturating_add(1);
                self.outbox.splice(0..0, outcome.batch);
            }
        }
    }

    fn on_task_event(&mut self, event: TaskEvent) {
        match event.update {
            TaskUpdate::Running { pid } => {
                self.transition(
                    &event.task,
                    TaskState::Running,
                    String::new(),
                    None,
                    Some(pid),
                );
            }
            TaskUpdate::Finished {
                state,
                message,
                exit,
                finished_at_ms,
            } => {
                self.transition(&event.task, state, message, exit, None);
                if let Some(known) = self.tasks.get_mut(&event.task) {
                    known.runner = None;
                    known.finished_at_ms = Some(finished_at_ms);
                }
                self.collect_garbage();
            }
        }
        self.converge();
    }

    /// Moves a task's state forward and queues the report; ignores moves back.
    fn transition(
        &mut self,
        task: &TaskId,
        state: TaskState,
        message: String,
        exit: Option<ExitInfo>,
        pid: Option<u32>,
    ) {
        let Some(known) = self.tasks.get_mut(task) else {
            return;
        };
        if !moves_forward(known.local.state, state) {
            tracing::debug!(task_id = %task, from = known.local.state.as_str(), to = state.as_str(), "ignored backward state change");
            return;
        }
        known.local.state = state;
        known.message = message;
        known.exit = exit;
        known.pid = pid;
        self.outbox.push(known.report(task));
    }

    /// Runs the executor's step and carries out its actions.
    fn converge(&mut self) {
        let view: BTreeMap<TaskId, LocalTask> = self
            .tasks
            .iter()
            .map(|(id, known)| (id.clone(), known.local.clone()))
            .collect();
        for action in step(&self.assigned, &view) {
            self.execute(action);
        }
    }

    fn execute(&mut self, action: Action) {
        match action {
            Action::Start(assignment) => self.start_task(*assignment),
            Action::Stop { task, kill_timeout } => {
                tracing::info!(task_id = %task, "stop requested");
                if let Some(known) = self.tasks.get_mut(&task) {
                    known.local.stopping = true;
                    if let Some(runner) = &known.runner {
                        runner.stop.send_replace(Some(StopRequest {
                            grace: kill_timeout,
                            reason: StopReason::Asked,
                        }));
                    }
                }
            }
            Action::ReportLost { task, message } => {
                self.insert_finished(task, TaskState::Lost, message);
            }
            Action::ReportShutdown { task, message } => {
                self.insert_finished(task, TaskState::Shutdown, message);
            }
        }
    }

    fn start_task(&mut self, assignment: Assignment) {
        let task = assignment.task.clone();
        if !valid_dir_name(&task) {
            tracing::warn!(task_id = %task, "refusing a task id that is not a plain name");
            self.insert_finished(
                task,
                TaskState::Failed,
                "start failed: invalid task id".to_owned(),
            );
            return;
        }
        let Some(driver) = self.drivers.get(&assignment.spec.driver).cloned() else {
            let message = AgentError::DriverUnavailable {
                driver: assignment.spec.driver,
            }
            .to_string();
            self.insert_finished(task, TaskState::Failed, message);
            return;
        };
        let files = match TaskFiles::pick(&assignment.spec, &self.files) {
            Ok(files) => files,
            Err(e) => {
                self.insert_finished(task, TaskState::Failed, e.to_string());
                return;
            }
        };
        tracing::info!(task_id = %task, job = %assignment.job, "starting task");
        let (stop_tx, stop_rx) = watch::channel(None);
        let (closed_tx, closed_rx) = watch::channel(false);
        let known = Known {
            local: LocalTask {
                state: TaskState::Starting,
                stopping: false,
                kill_timeout: assignment.spec.kill_timeout,
            },
            job: assignment.job.clone(),
            message: String::new(),
            exit: None,
            pid: None,
            finished_at_ms: None,
            has_dir: true,
            runner: Some(RunnerHandle {
                stop: stop_tx,
                log_closed: closed_rx,
                driver: driver.clone(),
            }),
        };
        self.outbox.push(known.report(&task));
        self.tasks.insert(task.clone(), known);
        let span = tracing::info_span!("task", task_id = %task, job = %assignment.job, node_id = %self.node_id);
        let runner = Runner {
            driver,
            task_dir: self.config.tasks_dir().join(&task.0),
            run_dir: self.config.run_dir().join(&task.0),
            files,
            assignment,
            node: self.node_id.clone(),
            advertise_ip: self.config.advertise_ip,
            log_max_bytes: self.config.log_max_bytes,
            stop: stop_rx,
            events: self.events_tx.clone(),
            log_closed: closed_tx,
        };
        self.runners.spawn(runner.run().instrument(span));
    }

    /// Records a task that finishes without running here (lost, shut down
    /// before start, refused) and queues its report.
    fn insert_finished(&mut self, task: TaskId, state: TaskState, message: String) {
        tracing::info!(task_id = %task, state = state.as_str(), reason = %message, "task finished without running");
        let job = self
            .assigned
            .iter()
            .find(|a| a.task == task)
            .map(|a| a.job.clone())
            .unwrap_or_default();
        let known = Known {
            local: LocalTask {
                state,
                stopping: false,
                kill_timeout: Duration::ZERO,
            },
            job,
            message,
            exit: None,
            pid: None,
            finished_at_ms: Some(now_ms()),
            has_dir: false,
            runner: None,
        };
        self.outbox.push(known.report(&task));
        self.tasks.insert(task, known);
        self.collect_garbage();
    }

    fn serve_logs(&mut self, request: LogRequest) {
        let Some(session) = &self.session else {
            return;
        };
        let node = session.node_id.clone();
        let dispatcher = self.dispatcher.clone();
        match self.tasks.get(&request.task).filter(|known| known.has_dir) {
            Some(known) => {
                let closed = match &known.runner {
                    Some(runner) => runner.log_closed.clone(),
                    // Finished: nothing more will be written.
                    None => watch::channel(true).1,
                };
                let dir = self.config.tasks_dir().join(&request.task.0);
                let span = tracing::debug_span!("logs", task_id = %request.task, job = %known.job, request = request.id);
                self.streamers.spawn(
                    async move { stream_log(dispatcher, node, request, &dir, closed).await }
                        .instrument(span),
                );
            }
            None => {
                let message = format!("no logs for task {} on this node", request.task);
                self.streamers.spawn(async move {
                    let _ = dispatcher
                        .send_logs(&node, request.id, LogEvent::Error(message))
                        .await;
                });
            }
        }
    }

    /// Samples what each running task uses, through its driver, and reports
    /// it (in the background; one pass at a time).
    fn sample_usage(&mut self) {
        let Some(session) = &self.session else {
            return;
        };
        {
            let mut samples = self.usage.lock().unwrap_or_else(|p| p.into_inner());
            if samples.busy {
                return;
            }
            samples.busy = true;
        }
        let node = session.node_id.clone();
        let dispatcher = self.dispatcher.clone();
        let running: Vec<(TaskId, Option<u32>, Arc<dyn Driver>)> = self
            .tasks
            .iter()
            .filter(|(_, known)| known.local.state == TaskState::Running)
            .filter_map(|(id, known)| {
                let runner = known.runner.as_ref()?;
                Some((id.clone(), known.pid, runner.driver.clone()))
            })
            .collect();
        let state = self.usage.clone();
        self.streamers.spawn(async move {
            let sampled = futures::future::join_all(running.into_iter().map(
                |(task, pid, driver)| async move {
                    let usage = driver.usage(&task, pid).await;
                    (task, usage, std::time::Instant::now())
                },
            ))
            .await;
            let report = {
                let mut samples = state.lock().unwrap_or_else(|p| p.into_inner());
                samples.busy = false;
                usage_report(&mut samples.last, sampled, crate::runner::now_ms())
            };
            if !report.is_empty()
                && let Err(e) = dispatcher.report_usage(&node, report).await
            {
                tracing::debug!(error = %e, "cannot report usage");
            }
        });
    }

    /// Runs a `baton exec` command in a running task, through its driver,
    /// over an exec stream this node opens.
    fn serve_exec(&mut self, request: ExecRequest) {
        let Some(session) = &self.session else {
            return;
        };
        let node = session.node_id.clone();
        let dispatcher = self.dispatcher.clone();
        let driver = self
            .tasks
            .get(&request.task)
            .filter(|known| known.local.state == TaskState::Running)
            .and_then(|known| known.runner.as_ref())
            .map(|runner| runner.driver.clone());
        let span = tracing::info_span!("exec", task_id = %request.task, request = request.id);
        self.streamers.spawn(
            async move {
                let (events, events_rx) = mpsc::channel(EXEC_BUFFER);
                let input = match dispatcher.exec(&node, request.id, events_rx).await {
                    Ok(input) => input,
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot open the exec stream");
                        return;
                    }
                };
                match driver {
                    Some(driver) => {
                        tracing::info!(program = ?request.command.first(), "exec");
                        driver
                            .exec(&request.task, request.command, request.tty, input, events)
                            .await;
                    }
                    None => {
                        let message = format!("task {} is not running on this node", request.task);
                        let _ = events.send(ExecEvent::Error(message)).await;
                    }
                }
            }
            .instrument(span),
        );
    }

    /// Forgets the oldest finished tasks beyond the configured number, with
    /// their directories.
    fn collect_garbage(&mut self) {
        let mut finished: Vec<(u64, TaskId)> = self
            .tasks
            .iter()
            .filter(|(_, known)| known.local.state.is_terminal())
            .map(|(id, known)| (known.finished_at_ms.unwrap_or(0), id.clone()))
            .collect();
        let excess = finished
            .len()
            .saturating_sub(self.config.max_finished_tasks);
        if excess == 0 {
            return;
        }
        finished.sort();
        for (_, task) in finished.into_iter().take(excess) {
            let Some(known) = self.tasks.remove(&task) else {
                continue;
            };
            if known.has_dir {
                let dir = self.config.tasks_dir().join(&task.0);
                tracing::debug!(task_id = %task, "removing finished task directory");
                if let Err(e) = std::fs::remove_dir_all(&dir) {
                    tracing::warn!(task_id = %task, error = %e, "cannot remove task directory");
                }
            }
        }
    }

    /// Stops every running task in parallel, each with its kill timeout, and
    /// waits for them. Nothing is reported.
    async fn stop_all(&mut self) {
        let mut n_stopping = 0;
        for known in self.tasks.values() {
            if let Some(runner) = &known.runner {
                n_stopping += 1;
                // A task already being stopped keeps its request.
                runner.stop.send_if_modified(|request| {
                    if request.is_some() {
                        return false;
                    }
                    *request = Some(StopRequest {
                        grace: known.local.kill_timeout,
                        reason: StopReason::AgentShutdown,
                    });
                    true
                });
            }
        }
        tracing::info!(tasks = n_stopping, "agent stopping; stopping tasks");
        // Runners' news has no reader any more; closing lets them finish.
        self.events_rx.close();
        while let Some(done) = self.runners.join_next().await {
            if let Err(e) = done
                && e.is_panic()
            {
                tracing::error!(error = %e, "task runner panicked");
            }
        }
        self.streamers.shutdown().await;
        tracing::info!("agent stopped");
    }
}

/// Heartbeats `node` at the period the dispatcher answers with, each call
/// bounded by the period. Ends, saying `generation` is lost, when the
/// dispatcher no longer knows the session or when no heartbeat succeeded for
/// [`MISSED_HEARTBEATS`] periods plus 1 s.
async fn heartbeat_loop(
    dispatcher: Arc<dyn Dispatcher>,
    node: NodeId,
    generation: u64,
    lost: mpsc::Sender<u64>,
) {
    let mut period = DEFAULT_HEARTBEAT_PERIOD;
    let mut last_ok = tokio::time::Instant::now();
    loop {
        let started = tokio::time::Instant::now();
        match tokio::time::timeout(period, dispatcher.heartbeat(&node)).await {
            Ok(Ok(wanted)) => {
                period = wanted.clamp(MIN_HEARTBEAT_PERIOD, MAX_HEARTBEAT_PERIOD);
                last_ok = tokio::time::Instant::now();
            }
            // A manager that no longer leads holds no session either.
            Ok(Err(
                e @ (RpcError::NoSession(_)
                | RpcError::PermissionDenied(_)
                | RpcError::NotLeader(_)),
            )) => {
                tracing::info!(error = %e, "heartbeat refused");
                let _ = lost.send(generation).await;
                return;
            }
            Ok(Err(e)) => tracing::debug!(error = %e, "heartbeat failed"),
            Err(_) => tracing::debug!(period = ?period, "heartbeat timed out"),
        }
        let grace = period
            .saturating_mul(MISSED_HEARTBEATS)
            .saturating_add(Duration::from_secs(1));
        if last_ok.elapsed() > grace {
            tracing::warn!(grace = ?grace, "no heartbeat got through");
            let _ = lost.send(generation).await;
            return;
        }
        tokio::time::sleep_until(started + period).await;
    }
}

/// The next message of the open session; never completes without one.
async fn next_message(session: &mut Option<OpenSession>) -> Option<SessionMessage> {
    match session {
        Some(session) => session.messages.recv().await,
        None => std::future::pending().await,
    }
}

/// Completes with the output of the future in `slot` and empties it; never
/// completes while `slot` is empty. Cancel-safe: the future stays in the slot.
async fn poll_slot<T>(slot: &mut Option<BoxFuture<T>>) -> T {
    match slot {
        Some(future) => {
            let output = future.await;
            *slot = None;
            output
        }
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_is_reported_from_the_second_sample_as_a_rate() {
        let mut last = HashMap::new();
        let t0 = std::time::Instant::now();
        let task = TaskId("web.0.a".to_owned());
        let usage = |cpu_ns| {
            Some(Usage {
                cpu_ns,
                memory_bytes: 64 << 20,
                pids: 3,
            })
        };
        // The first sample only sets the baseline.
        let first = usage_report(&mut last, vec![(task.clone(), usage(1_000_000_000), t0)], 1);
        assert!(first.is_empty());
        // Half a core over two seconds: one second of CPU.
        let t1 = t0 + Duration::from_secs(2);
        let second = usage_report(&mut last, vec![(task.clone(), usage(2_000_000_000), t1)], 2);
        assert_eq!(
            second,
            [TaskUsage {
                task: task.clone(),
                cpu_millis: 500,
                memory_bytes: 64 << 20,
                pids: 3,
                at_ms: 2,
            }]
        );
        // A task not sampled any more is forgotten; one without figures too.
        let third = usage_report(&mut last, vec![(task.clone(), None, t1)], 3);
        assert!(third.is_empty() && last.is_empty());
    }

    #[test]
    fn backoff_doubles_to_a_cap_with_jitter_in_the_upper_half() {
        assert_eq!(backoff(0, 0.0), Duration::from_millis(50));
        assert_eq!(backoff(0, 1.0), Duration::from_millis(100));
        assert_eq!(backoff(3, 0.0), Duration::from_millis(400));
        assert_eq!(backoff(7, 0.999), Duration::from_secs(10).mul_f64(0.9995));
        assert_eq!(backoff(u32::MAX, 0.0), Duration::from_secs(5));
    }

    #[test]
    fn task_ids_that_are_not_plain_names_are_refused() {
        let ok = |s: &str| valid_dir_name(&TaskId(s.to_owned()));
        assert!(ok("web.0.0123456789ab"));
        assert!(!ok(""));
        assert!(!ok(".."));
        assert!(!ok(".hidden"));
        assert!(!ok("../../etc"));
        assert!(!ok("a/b"));
        assert!(!ok("a\0b"));
    }
}
