//! The dispatcher: one session per agent.
//!
//! For each session a pusher task watches store snapshots, computes the node's
//! full assignment set ([`assignments_for`], pure) and pushes it whenever it
//! differs from the last one pushed. Reports are proposed as commands carrying
//! the session's node id; the state machine checks each reported task belongs
//! to that node. Log streams are brokered: the API asks for a log through the
//! owning node's session and the agent answers with [`Dispatcher::send_logs`].
//! A node removed while connected loses its session as soon as the
//! revocation is applied, and a revoked node cannot open one (nor be
//! registered again).
//!
//! # Leadership
//!
//! Only the leading manager holds sessions ([`DispatcherService::lead`],
//! from [`crate::leadership`]): the node states it records and the
//! assignments it pushes then come from one place, and a follower refuses a
//! session with [`RpcError::NotLeader`], naming the leader, so the agent
//! goes there. When leadership is lost every session ends, and the agents
//! find the new leader from the manager list every session is pushed
//! ([`SessionMessage::Managers`]). A new leader gives every node the grace
//! from the moment it started leading, so a failover marks nobody down.
//!
//! # Liveness
//!
//! Agents call [`Dispatcher::heartbeat`] at the period it answers,
//! [`heartbeat_period`]: 1 s on a small cluster, longer on a large one so the
//! managers never take more than [`MAX_HEARTBEATS_PER_SEC`] heartbeats a
//! second (Nomad's rule and default). Opening a session counts as a
//! heartbeat. One loop checks every node every [`CHECK_INTERVAL`]: a node
//! whose last heartbeat is older than [`node_down_grace`] (by default three
//! missed periods plus 1 s: 4 s on a small cluster) is marked down, whether
//! its session is still open (it is closed) or not. Marking a node down makes
//! its active tasks `lost`, and the reconciler replaces them elsewhere. An
//! agent that comes back opens a new session, which registers the node again;
//! its lost tasks are not in its assignments any more, so it stops whatever of
//! them it still runs (the agent never starts a task past `assigned`), and
//! nothing runs twice. A session whose node the state says is down is ended,
//! so that the agent re-registers. If the checker itself was held up (a
//! starved manager), the time it lost is not held against the nodes.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use baton_rpc::{
    Assignment, AssignmentSet, Dispatcher, ExecEvent, ExecInput, ExecRequest, LogEvent, LogRequest,
    NodeDescription, RpcError, Session, SessionMessage, TaskUsage, TrustUpdate, Winsize,
};
use baton_state::{Command, Node, NodeId, NodeState, State, TaskDesired, TaskId, TaskReport};
use baton_store::{Store, StoreError};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::now;

/// Most heartbeats a second the managers take, whatever the size of the
/// cluster: the period grows with the number of nodes to keep under it
/// (Nomad's `max_heartbeats_per_second`, with its default).
pub const MAX_HEARTBEATS_PER_SEC: u32 = 50;

/// Shortest heartbeat period, the one of every cluster up to
/// [`MAX_HEARTBEATS_PER_SEC`] nodes.
pub const MIN_HEARTBEAT_PERIOD: Duration = Duration::from_secs(1);

/// Heartbeats a node may miss in a row before it is marked down: a starved
/// or briefly partitioned agent is not down for one or two late heartbeats.
pub const MISSED_HEARTBEATS: u32 = 3;

/// Default grace on a small cluster (one at [`MIN_HEARTBEAT_PERIOD`]): a node
/// silent for longer is marked down and its tasks are rescheduled.
/// [`MISSED_HEARTBEATS`] periods plus 1 s of slack for a slow call: a killed
/// agent is down within 5 s (4 s plus at most one [`CHECK_INTERVAL`]), and an
/// agent held up for up to about 3 s is not.
pub const NODE_DOWN_GRACE: Duration = Duration::from_secs(4);

/// How often the one liveness loop looks at every node.
pub const CHECK_INTERVAL: Duration = Duration::from_millis(250);

/// A gap between two checks longer than this (plus [`CHECK_INTERVAL`]) means
/// the manager itself was held up; the gap is not held against the nodes.
const CHECKER_STALL: Duration = Duration::from_secs(1);

/// How long a node has to open an exec session it was asked for.
const EXEC_OPEN_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a node's usage report is shown (a few of its periods).
const USAGE_FRESH: Duration = Duration::from_secs(15);

/// Most tasks of one usage report kept.
const MAX_USAGE_TASKS: usize = 10_000;

/// Messages of one exec session buffered each way.
const EXEC_BUFFER: usize = 16;

/// The heartbeat period of a cluster of `nodes` nodes: `nodes /
/// MAX_HEARTBEATS_PER_SEC` seconds, at least [`MIN_HEARTBEAT_PERIOD`].
pub fn heartbeat_period(nodes: usize) -> Duration {
    let per_node_ms = 1000 / u64::from(MAX_HEARTBEATS_PER_SEC);
    let nodes = u64::try_from(nodes).unwrap_or(u64::MAX);
    Duration::from_millis(nodes.saturating_mul(per_node_ms)).max(MIN_HEARTBEAT_PERIOD)
}

/// How long a node of a cluster of `nodes` nodes may go without a heartbeat
/// before it is marked down: `small_cluster_grace` (the grace at
/// [`MIN_HEARTBEAT_PERIOD`], [`NODE_DOWN_GRACE`] by default) plus
/// [`MISSED_HEARTBEATS`] times whatever the period has grown beyond the
/// minimum.
pub fn node_down_grace(nodes: usize, small_cluster_grace: Duration) -> Duration {
    let growth = heartbeat_period(nodes).saturating_sub(MIN_HEARTBEAT_PERIOD);
    small_cluster_grace.saturating_add(growth.saturating_mul(MISSED_HEARTBEATS))
}

struct SessionEntry {
    generation: u64,
    tx: mpsc::Sender<SessionMessage>,
    cancel: CancellationToken,
    /// The last heartbeat (or the session's opening).
    last_heartbeat: Instant,
}

struct LogStream {
    node: NodeId,
    tx: mpsc::Sender<LogEvent>,
}

/// A node's latest usage report: when it came, and its tasks.
type NodeUsage = (Instant, HashMap<TaskId, TaskUsage>);

/// An exec session asked of a node, until the node opens its stream.
struct PendingExec {
    node: NodeId,
    /// Where the node's events go (to the API client).
    events: mpsc::Sender<ExecEvent>,
    /// The client's input, handed to the node's stream.
    input: mpsc::Receiver<ExecInput>,
}

/// The API side of an exec session: input to send, events to read.
#[derive(Debug)]
pub struct ExecSession {
    /// The command's input.
    pub input: mpsc::Sender<ExecInput>,
    /// Its output and how it ended.
    pub events: mpsc::Receiver<ExecEvent>,
}

/// Why a log stream or an exec session could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum LogStreamError {
    /// No such task.
    #[error("task {0} not found")]
    TaskNotFound(TaskId),
    /// The task never had a node.
    #[error("task {0} was never placed on a node, so it has no log")]
    NotPlaced(TaskId),
    /// Its node has no session.
    #[error("node {0} is not connected")]
    NodeNotConnected(NodeId),
}

/// Whether this manager takes sessions.
enum Leadership {
    /// It leads, until this term's token is cancelled (which ends every
    /// session of the term).
    Leading(CancellationToken),
    /// Another manager leads, at this cluster address when known.
    Following(Option<String>),
}

/// The dispatcher service.
pub struct DispatcherService {
    store: Arc<dyn Store>,
    sessions: Mutex<HashMap<NodeId, SessionEntry>>,
    /// Nodes the state calls ready that have no session, with their last
    /// sign of life. Lock after `sessions` when both are held.
    silent: Mutex<HashMap<NodeId, Instant>>,
    logs: Mutex<HashMap<u64, LogStream>>,
    execs: Mutex<HashMap<u64, PendingExec>>,
    /// The latest usage report of each node, and when it came.
    usage: Mutex<HashMap<NodeId, NodeUsage>>,
    next_id: AtomicU64,
    shutdown: CancellationToken,
    node_down_grace: Duration,
    /// Whether this manager takes sessions.
    leadership: Mutex<Leadership>,
    /// Every manager's cluster address, pushed to agents.
    managers: tokio::sync::watch::Sender<Vec<String>>,
    this: Weak<DispatcherService>,
}

impl std::fmt::Debug for DispatcherService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DispatcherService").finish_non_exhaustive()
    }
}

/// The full assignment set of a node: its tasks that are not finished.
pub fn assignments_for(state: &State, node: &NodeId) -> Vec<Assignment> {
    state
        .tasks_of_node(node)
        .filter(|task| task.is_active())
        .filter_map(|task| {
            let job = state.job(&task.job)?;
            Some(Assignment {
                task: task.id.clone(),
                job: task.job.clone(),
                job_version: task.job_version,
                slot: task.slot.to_string(),
                // Jobs keep only their current spec: an older-version task gets it
                // too, which the agent only reads to stop the task (kill_timeout),
                // as it never starts a task past `assigned` twice.
                spec: job.spec.task.clone(),
                desired: task.desired,
                state: task.status.state,
                ports: task.ports.clone(),
            })
        })
        .collect()
}

/// A node's whole assignment set (with `seq` 0): its tasks, and the secrets
/// and configs its live tasks (meant to run, not finished) name. Nothing
/// else: a node never sees a secret no task of its own uses, and one stops
/// being sent once its last such task is stopped or ends.
pub fn assignment_set(state: &State, node: &NodeId) -> AssignmentSet {
    let tasks = assignments_for(state, node);
    let live = tasks.iter().filter(|a| a.desired == TaskDesired::Running);
    let mut set = AssignmentSet::default();
    for assignment in live {
        for name in assignment.spec.secret_names() {
            if let Some(secret) = state.secret(name) {
                set.secrets.insert(name.to_owned(), secret.value.clone());
            }
        }
        for name in assignment.spec.config_names() {
            if let Some(config) = state.config(name) {
                set.configs.insert(name.to_owned(), config.data.clone());
            }
        }
    }
    set.tasks = tasks;
    set
}

impl DispatcherService {
    /// A dispatcher over a store; its sessions end when `shutdown` is cancelled.
    /// `node_down_grace` is the grace of a small cluster (see
    /// [`node_down_grace`]); liveness is checked once
    /// [`DispatcherService::watch_liveness`] is called.
    pub fn new(
        store: Arc<dyn Store>,
        shutdown: CancellationToken,
        node_down_grace: Duration,
    ) -> Arc<DispatcherService> {
        Arc::new_cyclic(|this| DispatcherService {
            store,
            sessions: Mutex::new(HashMap::new()),
            silent: Mutex::new(HashMap::new()),
            logs: Mutex::new(HashMap::new()),
            execs: Mutex::new(HashMap::new()),
            usage: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            shutdown,
            node_down_grace,
            leadership: Mutex::new(Leadership::Following(None)),
            managers: tokio::sync::watch::Sender::new(Vec::new()),
            this: this.clone(),
        })
    }

    /// Takes sessions until `term` is cancelled (this manager leads).
    /// Every node the state calls ready gets the grace from now.
    pub fn lead(&self, term: CancellationToken) {
        *self.lock_leadership() = Leadership::Leading(term.clone());
        self.watch_liveness(term);
    }

    /// Another manager leads (at `leader`, when known): sessions are
    /// refused, naming it. Sessions of an earlier term end with its token.
    pub fn follow(&self, leader: Option<String>) {
        *self.lock_leadership() = Leadership::Following(leader);
        self.lock_sessions().clear();
        self.lock_silent().clear();
    }

    /// Sets the managers' cluster addresses pushed to agents.
    pub fn set_managers(&self, mut addrs: Vec<String>) {
        addrs.sort();
        addrs.dedup();
        self.managers.send_if_modified(|current| {
            let changed = *current != addrs;
            *current = addrs;
            changed
        });
    }

    fn lock_leadership(&self) -> std::sync::MutexGuard<'_, Leadership> {
        self.leadership.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The current term's token if this manager leads, else the leader's
    /// address as far as it is known.
    fn leading(&self) -> Result<CancellationToken, Option<String>> {
        match &*self.lock_leadership() {
            Leadership::Leading(term) if !term.is_cancelled() => Ok(term.clone()),
            Leadership::Leading(_) => Err(None),
            Leadership::Following(leader) => Err(leader.clone()),
        }
    }

    fn lock_sessions(&self) -> std::sync::MutexGuard<'_, HashMap<NodeId, SessionEntry>> {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Removes `node`'s session if it is still the one of `generation` (a
    /// newer session of the same node stays).
    fn forget_session(&self, node: &NodeId, generation: u64) -> Option<SessionEntry> {
        let mut sessions = self.lock_sessions();
        if sessions
            .get(node)
            .is_some_and(|s| s.generation == generation)
        {
            sessions.remove(node)
        } else {
            None
        }
    }

    fn lock_silent(&self) -> std::sync::MutexGuard<'_, HashMap<NodeId, Instant>> {
        self.silent.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lock_logs(&self) -> std::sync::MutexGuard<'_, HashMap<u64, LogStream>> {
        self.logs.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts the liveness loop (until `term` ends), which marks down the
    /// nodes that miss their heartbeats. Every node the state calls ready
    /// but that has no session with this dispatcher (it was recorded by an
    /// earlier manager run or another leader) gets the grace from now: if
    /// it does not connect in time, it is marked down and its tasks are
    /// replaced.
    fn watch_liveness(&self, term: CancellationToken) {
        let snapshot = self.store.snapshot();
        let now = Instant::now();
        {
            let sessions = self.lock_sessions();
            let mut silent = self.lock_silent();
            for node in snapshot.state.nodes() {
                if node.state == NodeState::Ready && !sessions.contains_key(&node.id) {
                    silent.entry(node.id.clone()).or_insert(now);
                }
            }
        }
        tokio::spawn(check_liveness(self.this.clone(), term));
    }

    /// One pass of the liveness check at `now`: forgives `stall` (time the
    /// checker itself lost), ends the sessions of nodes silent for longer
    /// than the grace and returns every node to mark down.
    fn overdue(&self, now: Instant, stall: Duration) -> Vec<(NodeId, Instant)> {
        let mut down = Vec::new();
        let mut sessions = self.lock_sessions();
        let mut silent = self.lock_silent();
        let grace = node_down_grace(sessions.len() + silent.len(), self.node_down_grace);
        if !stall.is_zero() {
            tracing::warn!(stall = ?stall, "liveness check was held up; not counting it against nodes");
            for entry in sessions.values_mut() {
                entry.last_heartbeat += stall;
            }
            for since in silent.values_mut() {
                *since += stall;
            }
        }
        let late: Vec<NodeId> = sessions
            .iter()
            .filter(|(_, s)| now.saturating_duration_since(s.last_heartbeat) > grace)
            .map(|(id, _)| id.clone())
            .collect();
        for id in late {
            if let Some(entry) = sessions.remove(&id) {
                tracing::warn!(node_id = %id, grace = ?grace, "node down: missed its heartbeats");
                entry.cancel.cancel();
                down.push((id, entry.last_heartbeat));
            }
        }
        silent.retain(|id, since| {
            let late = now.saturating_duration_since(*since) > grace;
            if late {
                tracing::warn!(node_id = %id, grace = ?grace, "node down: no session");
                down.push((id.clone(), *since));
            }
            !late
        });
        down
    }

    /// Marks `node` (last seen at `since`) down, unless the state already
    /// does not call it ready. If that fails, the next check tries again.
    async fn mark_down(&self, node: &NodeId, since: Instant) {
        if self.leading().is_err() {
            // Leadership moved on: the new leader's own grace applies.
            return;
        }
        let ready = self
            .store
            .snapshot()
            .state
            .node(node)
            .is_some_and(|n| n.state == NodeState::Ready);
        if !ready {
            return;
        }
        let cmd = Command::NodeDown {
            id: node.clone(),
            now: now(),
        };
        if let Err(e) = self.store.propose(cmd).await {
            tracing::error!(node_id = %node, error = %e, "marking node down failed");
            let sessions = self.lock_sessions();
            if !sessions.contains_key(node) {
                self.lock_silent().entry(node.clone()).or_insert(since);
            }
        }
    }

    /// Asks the node running `task` to run `command` inside it. The node
    /// answers by opening an exec stream ([`Dispatcher::exec`]); until then
    /// the session waits here. The node refuses a task it does not run, or
    /// one whose driver isolates nothing.
    pub async fn request_exec(
        self: &Arc<Self>,
        task: &TaskId,
        command: Vec<String>,
        tty: Option<Winsize>,
    ) -> Result<ExecSession, LogStreamError> {
        let (node, session_tx) = self.session_of_task(task)?;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (events_tx, events_rx) = mpsc::channel(EXEC_BUFFER);
        let (input_tx, input_rx) = mpsc::channel(EXEC_BUFFER);
        {
            let mut execs = self.execs.lock().unwrap_or_else(|p| p.into_inner());
            // Sessions whose client gave up before their node answered.
            execs.retain(|_, pending| !pending.events.is_closed());
            execs.insert(
                id,
                PendingExec {
                    node: node.clone(),
                    events: events_tx,
                    input: input_rx,
                },
            );
        }
        let request = SessionMessage::Exec(ExecRequest {
            id,
            task: task.clone(),
            command,
            tty,
        });
        if session_tx.send(request).await.is_err() {
            self.execs
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&id);
            return Err(LogStreamError::NodeNotConnected(node));
        }
        // A node that never opens the session (it went away, or could not
        // reach this manager) must not leave the client waiting for ever.
        let waiting = Arc::downgrade(self);
        tokio::spawn(async move {
            tokio::time::sleep(EXEC_OPEN_TIMEOUT).await;
            let Some(dispatcher) = waiting.upgrade() else {
                return;
            };
            let pending = dispatcher
                .execs
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&id);
            if let Some(pending) = pending {
                let message = format!(
                    "node {} did not answer the exec request within {}s",
                    pending.node,
                    EXEC_OPEN_TIMEOUT.as_secs()
                );
                let _ = pending.events.send(ExecEvent::Error(message)).await;
            }
        });
        Ok(ExecSession {
            input: input_tx,
            events: events_rx,
        })
    }

    /// What a running task uses, as its node last reported, if that report
    /// is fresh. Only the task's own node is believed.
    pub fn usage(&self, task: &baton_state::Task) -> Option<TaskUsage> {
        if task.status.state != baton_state::TaskState::Running {
            return None;
        }
        let node = task.node.as_ref()?;
        let usage = self.usage.lock().unwrap_or_else(|p| p.into_inner());
        let (at, tasks) = usage.get(node)?;
        if at.elapsed() > USAGE_FRESH {
            return None;
        }
        tasks.get(&task.id).cloned()
    }

    /// The node a task is placed on, and that node's session.
    fn session_of_task(
        &self,
        task: &TaskId,
    ) -> Result<(NodeId, mpsc::Sender<SessionMessage>), LogStreamError> {
        let snapshot = self.store.snapshot();
        let node = snapshot
            .state
            .task(task)
            .ok_or_else(|| LogStreamError::TaskNotFound(task.clone()))?
            .node
            .clone()
            .ok_or_else(|| LogStreamError::NotPlaced(task.clone()))?;
        let session_tx = self
            .lock_sessions()
            .get(&node)
            .map(|s| s.tx.clone())
            .ok_or_else(|| LogStreamError::NodeNotConnected(node.clone()))?;
        Ok((node, session_tx))
    }

    /// Opens a stream of a task's log from the node that runs (or ran) it.
    pub async fn request_logs(
        &self,
        task: &TaskId,
        follow: bool,
    ) -> Result<mpsc::Receiver<LogEvent>, LogStreamError> {
        let (node, session_tx) = self.session_of_task(task)?;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(16);
        self.lock_logs().insert(
            id,
            LogStream {
                node: node.clone(),
                tx,
            },
        );
        let request = SessionMessage::Logs(LogRequest {
            id,
            task: task.clone(),
            follow,
        });
        if session_tx.send(request).await.is_err() {
            self.lock_logs().remove(&id);
            return Err(LogStreamError::NodeNotConnected(node));
        }
        Ok(rx)
    }

    /// Pushes a node's assignment set whenever it changes, until the session ends.
    async fn push_assignments(
        self: Arc<Self>,
        node: NodeId,
        generation: u64,
        tx: mpsc::Sender<SessionMessage>,
        cancel: CancellationToken,
    ) {
        let mut changes = self.store.subscribe();
        let mut managers = self.managers.subscribe();
        let mut last: Option<AssignmentSet> = None;
        let mut last_trust: Option<TrustUpdate> = None;
        let mut last_managers: Option<Vec<String>> = None;
        let mut seq = 0;
        loop {
            let snapshot = changes.borrow_and_update().clone();
            if snapshot.state.is_revoked(&node) {
                // Removed while connected: the session stream was authorised
                // before the revocation, so end it here; the agent's next
                // session is refused at the transport (revoked id).
                tracing::warn!(node_id = %node, "node revoked: ending its session");
                self.forget_session(&node, generation);
                return;
            }
            if snapshot
                .state
                .node(&node)
                .is_some_and(|n| n.state == NodeState::Down)
            {
                // Marked down (missed heartbeats, or a race with a new
                // session): its tasks are lost. End the session so that the
                // agent opens a new one, which registers the node again.
                tracing::warn!(node_id = %node, "node is down: ending its session");
                self.forget_session(&node, generation);
                return;
            }
            if let Some(update) = trust_for(&snapshot.state, &node)
                && last_trust.as_ref() != Some(&update)
            {
                if tx
                    .send(SessionMessage::Trust(update.clone()))
                    .await
                    .is_err()
                {
                    break;
                }
                last_trust = Some(update);
            }
            let addrs = managers.borrow_and_update().clone();
            if !addrs.is_empty() && last_managers.as_ref() != Some(&addrs) {
                if tx
                    .send(SessionMessage::Managers(addrs.clone()))
                    .await
                    .is_err()
                {
                    break;
                }
                last_managers = Some(addrs);
            }
            let current = assignment_set(&snapshot.state, &node);
            if last.as_ref() != Some(&current) {
                seq += 1;
                let set = AssignmentSet {
                    seq,
                    ..current.clone()
                };
                if tx.send(SessionMessage::Assignments(set)).await.is_err() {
                    break;
                }
                last = Some(current);
            }
            tokio::select! {
                () = cancel.cancelled() => {
                    // Shutting down: drop the session's sender too, so its
                    // stream ends and the server can drain.
                    self.forget_session(&node, generation);
                    return;
                }
                () = tx.closed() => break,
                changed = changes.changed() => if changed.is_err() { return },
                changed = managers.changed() => if changed.is_err() { return },
            }
        }
        // The agent went away. Unless it comes back within the grace of its
        // last heartbeat, the liveness loop marks its node down.
        if let Some(entry) = self.forget_session(&node, generation) {
            self.lock_silent()
                .insert(node.clone(), entry.last_heartbeat);
            tracing::info!(node_id = %node, "agent session closed");
        }
    }
}

/// The roots a node must trust now and whether its certificate comes from
/// a root being retired (it must renew at once).
fn trust_for(state: &State, node: &NodeId) -> Option<TrustUpdate> {
    let cluster = state.cluster()?;
    let renew_now = cluster.root_rotation.as_ref().is_some_and(|rotation| {
        state
            .member(node)
            .is_some_and(|m| !m.cert_root.eq_ignore_ascii_case(&rotation.new_root_digest))
    });
    Some(TrustUpdate {
        roots_pem: cluster.trust_pem(),
        renew_now,
    })
}

/// The liveness loop: every [`CHECK_INTERVAL`], marks down the nodes that
/// missed their heartbeats, until shutdown or the dispatcher is gone.
async fn check_liveness(dispatcher: Weak<DispatcherService>, shutdown: CancellationToken) {
    let mut ticks = tokio::time::interval(CHECK_INTERVAL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last = Instant::now();
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = ticks.tick() => {}
        }
        let Some(this) = dispatcher.upgrade() else {
            return;
        };
        let now = Instant::now();
        let gap = now.saturating_duration_since(last);
        last = now;
        let stall = if gap > CHECK_INTERVAL + CHECKER_STALL {
            gap.saturating_sub(CHECK_INTERVAL)
        } else {
            Duration::ZERO
        };
        for (node, since) in this.overdue(now, stall) {
            this.mark_down(&node, since).await;
        }
    }
}

fn unavailable(e: StoreError) -> RpcError {
    RpcError::Unavailable(e.to_string())
}

#[async_trait::async_trait]
impl Dispatcher for DispatcherService {
    async fn open_session(&self, desc: NodeDescription) -> Result<Session, RpcError> {
        if self.shutdown.is_cancelled() {
            return Err(RpcError::Unavailable("manager is shutting down".to_owned()));
        }
        let term = self.leading().map_err(RpcError::NotLeader)?;
        // The transport refuses revoked certificates too, from a copy of the
        // revocation set kept in step asynchronously; the state is the
        // authority, and a removed node must not be registered again.
        if self.store.snapshot().state.is_revoked(&desc.node_id) {
            tracing::warn!(node_id = %desc.node_id, "session refused: node revoked");
            return Err(RpcError::PermissionDenied(format!(
                "node {} was removed from the cluster: certificate revoked",
                desc.node_id
            )));
        }
        // Labels go into the replicated state and into every placement
        // decision: a worker (perhaps a compromised one) may not stuff it
        // with many, long or unprintable labels. An honest agent checks its
        // own at start, so this refusal is for the others.
        if let Err(reason) = baton_spec::check_labels(&desc.labels) {
            tracing::warn!(node_id = %desc.node_id, %reason, "session refused: invalid labels");
            return Err(RpcError::PermissionDenied(format!(
                "invalid node labels: {reason}"
            )));
        }
        let now = now();
        let node = Node {
            address: desc.address,
            version: desc.version,
            labels: desc.labels,
            registered_at: now,
            state_since: now,
            ..Node::new(
                desc.node_id.clone(),
                desc.hostname,
                desc.capacity,
                desc.drivers.into_iter().collect::<BTreeSet<_>>(),
            )
        };
        let node_id = desc.node_id.clone();
        self.store
            .propose(Command::RegisterNode { node, now })
            .await
            .map_err(|e| match e {
                // The state machine has the last word, in log order: a removal
                // that raced this session wins.
                StoreError::Rejected(rejected) => {
                    tracing::warn!(node_id = %node_id, reason = %rejected, "session refused");
                    RpcError::PermissionDenied(format!(
                        "node {node_id} is not a member of the cluster (removed or revoked)"
                    ))
                }
                other => unavailable(other),
            })?;
        let (tx, rx) = mpsc::channel(64);
        let cancel = term.child_token();
        let generation = self.next_id.fetch_add(1, Ordering::Relaxed);
        let replaced = {
            let mut sessions = self.lock_sessions();
            self.lock_silent().remove(&desc.node_id);
            sessions.insert(
                desc.node_id.clone(),
                SessionEntry {
                    generation,
                    tx: tx.clone(),
                    cancel: cancel.clone(),
                    last_heartbeat: Instant::now(),
                },
            )
        };
        if let Some(old) = replaced {
            old.cancel.cancel();
        }
        tracing::info!(node_id = %desc.node_id, "agent session opened");
        let this = self
            .this
            .upgrade()
            .ok_or_else(|| RpcError::Unavailable("dispatcher is gone".to_owned()))?;
        tokio::spawn(this.push_assignments(desc.node_id.clone(), generation, tx, cancel));
        Ok(Session {
            node_id: desc.node_id,
            messages: rx,
        })
    }

    async fn report(&self, node: &NodeId, reports: Vec<TaskReport>) -> Result<(), RpcError> {
        if !self.lock_sessions().contains_key(node) {
            return Err(RpcError::NoSession(node.clone()));
        }
        if reports.is_empty() {
            return Ok(());
        }
        self.store
            .propose(Command::ReportTasks {
                node: node.clone(),
                reports,
                now: now(),
            })
            .await
            .map(|_| ())
            .map_err(unavailable)
    }

    async fn send_logs(
        &self,
        node: &NodeId,
        request: u64,
        event: LogEvent,
    ) -> Result<(), RpcError> {
        let tx = {
            let logs = self.lock_logs();
            match logs.get(&request) {
                Some(stream) if &stream.node == node => stream.tx.clone(),
                // Same answer whether the stream exists or belongs to another node.
                _ => return Err(RpcError::LogStreamClosed(request)),
            }
        };
        let last = matches!(event, LogEvent::End | LogEvent::Error(_));
        let sent = tx.send(event).await;
        if last || sent.is_err() {
            self.lock_logs().remove(&request);
        }
        sent.map_err(|_| RpcError::LogStreamClosed(request))
    }

    async fn exec(
        &self,
        node: &NodeId,
        request: u64,
        mut events: mpsc::Receiver<ExecEvent>,
    ) -> Result<mpsc::Receiver<ExecInput>, RpcError> {
        let pending = {
            let mut execs = self.execs.lock().unwrap_or_else(|p| p.into_inner());
            match execs.get(&request) {
                // Same answer whether the session exists or is another node's.
                Some(pending) if &pending.node == node => execs.remove(&request),
                _ => None,
            }
        };
        let Some(PendingExec {
            events: to_client,
            input,
            ..
        }) = pending
        else {
            return Err(RpcError::ExecClosed(request));
        };
        tokio::spawn(async move {
            while let Some(event) = events.recv().await {
                if to_client.send(event).await.is_err() {
                    break;
                }
            }
        });
        Ok(input)
    }

    async fn report_usage(&self, node: &NodeId, usage: Vec<TaskUsage>) -> Result<(), RpcError> {
        if !self.lock_sessions().contains_key(node) {
            return Err(RpcError::NoSession(node.clone()));
        }
        let tasks = usage
            .into_iter()
            .take(MAX_USAGE_TASKS)
            .map(|u| (u.task.clone(), u))
            .collect();
        self.usage
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(node.clone(), (Instant::now(), tasks));
        Ok(())
    }

    async fn heartbeat(&self, node: &NodeId) -> Result<Duration, RpcError> {
        let mut sessions = self.lock_sessions();
        let nodes = sessions.len();
        let entry = sessions
            .get_mut(node)
            .ok_or_else(|| RpcError::NoSession(node.clone()))?;
        entry.last_heartbeat = Instant::now();
        Ok(heartbeat_period(nodes))
    }
}

#[cfg(test)]
mod tests {
    use baton_spec::Resources;
    use baton_state::{NodeRole, Timestamp};
    use baton_store::raft::RaftStore;

    use super::*;

    fn description(id: &str) -> NodeDescription {
        NodeDescription {
            labels: Default::default(),
            node_id: NodeId(id.to_owned()),
            hostname: "host".to_owned(),
            capacity: Resources {
                disk_bytes: 0,
                cpu_millis: 1000,
                memory_bytes: 1 << 30,
            },
            drivers: BTreeSet::new(),
            version: "test".to_owned(),
            address: None,
        }
    }

    #[test]
    fn the_period_grows_with_the_cluster_to_keep_under_the_heartbeat_rate() {
        assert_eq!(heartbeat_period(0), Duration::from_secs(1));
        assert_eq!(heartbeat_period(1), Duration::from_secs(1));
        assert_eq!(heartbeat_period(50), Duration::from_secs(1));
        assert_eq!(heartbeat_period(51), Duration::from_millis(1020));
        assert_eq!(heartbeat_period(500), Duration::from_secs(10));
        assert_eq!(heartbeat_period(10_000), Duration::from_secs(200));
        for nodes in [1, 49, 50, 51, 77, 500, 1234, 10_000] {
            let per_sec = nodes as f64 / heartbeat_period(nodes).as_secs_f64();
            assert!(
                per_sec <= f64::from(MAX_HEARTBEATS_PER_SEC),
                "{nodes}: {per_sec}"
            );
        }
    }

    #[test]
    fn the_grace_is_three_periods_and_a_second_by_default() {
        assert_eq!(NODE_DOWN_GRACE, Duration::from_secs(4));
        assert!(NODE_DOWN_GRACE + CHECK_INTERVAL <= Duration::from_secs(5));
        assert_eq!(node_down_grace(3, NODE_DOWN_GRACE), Duration::from_secs(4));
        assert_eq!(node_down_grace(50, NODE_DOWN_GRACE), Duration::from_secs(4));
        // 500 nodes: a 10 s period, three of them and a second.
        assert_eq!(
            node_down_grace(500, NODE_DOWN_GRACE),
            Duration::from_secs(31)
        );
        // The override is the grace of a small cluster and grows the same way.
        assert_eq!(
            node_down_grace(3, Duration::from_secs(2)),
            Duration::from_secs(2)
        );
        assert_eq!(
            node_down_grace(500, Duration::from_secs(2)),
            Duration::from_secs(29)
        );
        for nodes in [1, 50, 51, 500, 10_000] {
            assert!(
                node_down_grace(nodes, NODE_DOWN_GRACE)
                    > heartbeat_period(nodes) * MISSED_HEARTBEATS
            );
        }
    }

    async fn store_with_workers(dir: &std::path::Path, ids: &[&str]) -> Arc<dyn Store> {
        let store: Arc<dyn Store> = Arc::new(
            RaftStore::open_solo_at(
                &dir.join("state.redb"),
                baton_store::seal::SealKey::generate(),
            )
            .await
            .expect("store"),
        );
        crate::identity::load_or_create(
            dir,
            store.as_ref(),
            &crate::signer::Signer::new(),
            Duration::from_secs(3600),
            None,
        )
        .await
        .expect("cluster");
        for id in ids {
            store
                .propose(Command::AdmitNode {
                    id: NodeId((*id).to_owned()),
                    role: NodeRole::Worker,
                    cert_not_after: Timestamp(u64::MAX),
                    cert_root: String::new(),
                    now: now(),
                })
                .await
                .expect("admit");
        }
        store
    }

    fn node_state(store: &Arc<dyn Store>, id: &str) -> Option<NodeState> {
        store
            .snapshot()
            .state
            .node(&NodeId(id.to_owned()))
            .map(|n| n.state)
    }

    #[tokio::test]
    async fn a_node_that_stops_heartbeating_is_down_within_the_grace_and_one_that_heartbeats_is_not()
     {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = store_with_workers(dir.path(), &["alive", "silent"]).await;
        let shutdown = CancellationToken::new();
        let grace = Duration::from_secs(1);
        let dispatcher = DispatcherService::new(store.clone(), shutdown.clone(), grace);
        dispatcher.lead(shutdown.child_token());
        let alive = dispatcher
            .open_session(description("alive"))
            .await
            .expect("session");
        let silent_opened = Instant::now();
        let mut silent = dispatcher
            .open_session(description("silent"))
            .await
            .expect("session");
        let alive_id = NodeId("alive".to_owned());
        let silent_id = NodeId("silent".to_owned());
        assert_eq!(
            dispatcher.heartbeat(&alive_id).await,
            Ok(MIN_HEARTBEAT_PERIOD),
            "two nodes: the shortest period"
        );

        // `alive` heartbeats every 100 ms; `silent` says nothing after its
        // session opened (its stream stays open).
        let mut changes = store.subscribe();
        let mut beats = tokio::time::interval(Duration::from_millis(100));
        let down_after = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                tokio::select! {
                    _ = beats.tick() => {
                        assert_eq!(
                            dispatcher.heartbeat(&alive_id).await,
                            Ok(MIN_HEARTBEAT_PERIOD)
                        );
                    }
                    changed = changes.changed() => {
                        changed.expect("store");
                        if node_state(&store, "silent") == Some(NodeState::Down) {
                            return silent_opened.elapsed();
                        }
                    }
                }
            }
        })
        .await
        .expect("the silent node is marked down");
        assert!(down_after > grace, "not before the grace: {down_after:?}");
        assert!(
            down_after <= grace + CHECK_INTERVAL + Duration::from_millis(500),
            "within the grace and one check: {down_after:?}"
        );
        assert_eq!(node_state(&store, "alive"), Some(NodeState::Ready));

        // Its session is closed and the dispatcher no longer knows it.
        let ended = tokio::time::timeout(Duration::from_secs(10), async {
            while silent.messages.recv().await.is_some() {}
        })
        .await;
        assert!(ended.is_ok(), "the silent node's session ends");
        assert_eq!(
            dispatcher.heartbeat(&silent_id).await,
            Err(RpcError::NoSession(silent_id.clone()))
        );

        // Twice the grace later, the heartbeating node is still ready.
        let until = Instant::now() + grace * 2;
        while Instant::now() < until {
            beats.tick().await;
            assert_eq!(
                dispatcher.heartbeat(&alive_id).await,
                Ok(MIN_HEARTBEAT_PERIOD)
            );
        }
        assert_eq!(node_state(&store, "alive"), Some(NodeState::Ready));
        assert!(!alive.messages.is_closed(), "its session stays open");

        // The silent node comes back: a new session registers it again.
        let _back = dispatcher
            .open_session(description("silent"))
            .await
            .expect("session");
        assert_eq!(node_state(&store, "silent"), Some(NodeState::Ready));
        assert_eq!(
            dispatcher.heartbeat(&silent_id).await,
            Ok(MIN_HEARTBEAT_PERIOD)
        );
        shutdown.cancel();
    }

    #[tokio::test]
    async fn a_session_with_invalid_or_too_many_labels_is_refused_and_valid_labels_are_registered()
    {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = store_with_workers(dir.path(), &["w1"]).await;
        let shutdown = CancellationToken::new();
        let dispatcher =
            DispatcherService::new(store.clone(), shutdown.clone(), Duration::from_secs(5));
        dispatcher.lead(shutdown.child_token());
        let with_labels = |labels: &[(String, String)]| NodeDescription {
            labels: labels.iter().cloned().collect(),
            ..description("w1")
        };
        let too_many: Vec<(String, String)> = (0..=baton_spec::MAX_LABELS)
            .map(|i| (format!("k{i}"), "v".to_owned()))
            .collect();
        for (labels, expected) in [
            (
                too_many,
                "invalid node labels: 65 labels, more than the limit of 64",
            ),
            (
                vec![("-zone".to_owned(), "a".to_owned())],
                "invalid node labels: label key must start with a letter or digit",
            ),
            (
                vec![("zone".to_owned(), "x".repeat(256))],
                "invalid node labels: label zone: value is 256 characters long",
            ),
            (
                vec![("zone".to_owned(), "a\u{1b}[2J".to_owned())],
                "invalid node labels: label zone: value contains the control character",
            ),
        ] {
            match dispatcher.open_session(with_labels(&labels)).await {
                Err(RpcError::PermissionDenied(message)) => {
                    assert!(message.starts_with(expected), "{message}");
                }
                other => panic!("expected a refusal for {expected:?}, got {other:?}"),
            }
            assert_eq!(node_state(&store, "w1"), None, "nothing registered");
        }
        let _session = dispatcher
            .open_session(with_labels(&[("zone".to_owned(), "a".to_owned())]))
            .await
            .expect("valid labels");
        let snapshot = store.snapshot();
        let node = snapshot.state.node(&NodeId("w1".to_owned())).expect("node");
        assert_eq!(node.label("zone"), Some("a"));
        shutdown.cancel();
    }

    #[tokio::test]
    async fn a_closed_session_is_down_after_the_grace_of_its_last_heartbeat() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = store_with_workers(dir.path(), &["w1"]).await;
        let shutdown = CancellationToken::new();
        let grace = Duration::from_secs(1);
        let dispatcher = DispatcherService::new(store.clone(), shutdown.clone(), grace);
        dispatcher.lead(shutdown.child_token());
        let session = dispatcher
            .open_session(description("w1"))
            .await
            .expect("session");
        let opened = Instant::now();
        let mut changes = store.subscribe();
        drop(session);
        let down_after = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                changes.changed().await.expect("store");
                if node_state(&store, "w1") == Some(NodeState::Down) {
                    return opened.elapsed();
                }
            }
        })
        .await
        .expect("the node is marked down");
        assert!(down_after > grace, "not before the grace: {down_after:?}");
        assert!(
            down_after <= grace + CHECK_INTERVAL + Duration::from_millis(500),
            "{down_after:?}"
        );
        shutdown.cancel();
    }

    #[tokio::test]
    async fn a_removed_node_loses_its_open_session_and_cannot_open_another() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = store_with_workers(dir.path(), &["w1"]).await;
        let shutdown = CancellationToken::new();
        let dispatcher = DispatcherService::new(store.clone(), shutdown.clone(), NODE_DOWN_GRACE);
        dispatcher.lead(shutdown.child_token());
        let mut session = dispatcher
            .open_session(description("w1"))
            .await
            .expect("session");
        // A session starts with the roots to trust, then the assignments.
        let cluster = store.snapshot().state.cluster().cloned().expect("cluster");
        assert_eq!(
            session.messages.recv().await,
            Some(SessionMessage::Trust(TrustUpdate {
                roots_pem: cluster.trust_pem(),
                renew_now: false,
            }))
        );
        assert!(matches!(
            session.messages.recv().await,
            Some(SessionMessage::Assignments(_))
        ));

        store
            .propose(Command::RemoveNode {
                id: NodeId("w1".to_owned()),
                now: now(),
            })
            .await
            .expect("remove");
        let ended = tokio::time::timeout(Duration::from_secs(10), async {
            while session.messages.recv().await.is_some() {}
        })
        .await;
        assert!(ended.is_ok(), "the open session ends");
        assert_eq!(
            dispatcher
                .report(&NodeId("w1".to_owned()), Vec::new())
                .await,
            Err(RpcError::NoSession(NodeId("w1".to_owned())))
        );
        let refused = dispatcher.open_session(description("w1")).await;
        assert!(
            matches!(&refused, Err(RpcError::PermissionDenied(m)) if m.contains("revoked")),
            "{:?}",
            refused.map(|s| s.node_id)
        );
        assert!(
            store
                .snapshot()
                .state
                .node(&NodeId("w1".to_owned()))
                .is_none(),
            "a revoked node is not registered again"
        );
        shutdown.cancel();
    }
}
