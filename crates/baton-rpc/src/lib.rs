//! The protocol between a manager's dispatcher and an agent.
//!
//! The agent opens a [`Session`]; the dispatcher pushes the node's full
//! [`AssignmentSet`] down it every time that set changes (push, never pull: the
//! agent never lists the cluster) and asks for task logs through it. The agent
//! reports task state changes with [`Dispatcher::report`] and streams requested
//! logs with [`Dispatcher::send_logs`], and says it is alive with
//! [`Dispatcher::heartbeat`] at the period the dispatcher answers.
//!
//! [`Dispatcher`] is the seam: `baton dev` connects the agent to the manager
//! in-process through it; the networked transport (gRPC over mutual TLS)
//! implements the same trait, so agent code does not change.
//!
//! Architecture invariant: a node's identity is the session's, never a field of
//! a request. The dispatcher authorises every report against the stored task.
//!
//! # The networked transport
//!
//! The same protocol runs as gRPC (`proto/baton.proto`, generated into [`pb`])
//! over mutual TLS:
//!
//! - [`tls`]: rustls configurations (TLS 1.3, aws-lc-rs, ALPN h2) for the
//!   cluster port, the hot-swappable node certificate [`tls::HotCert`], and the
//!   one-way "bootstrap" configuration a joining node uses to fetch the root.
//! - [`transport`]: the accept loop [`transport::serve`] (handshakes off the
//!   accept loop, with a timeout) and [`transport::connect`] for clients.
//! - [`auth`]: who the caller is, read from its verified certificate, and the
//!   role checks every handler makes.
//! - [`server`]: [`server::DispatcherServer`] and [`server::CaServer`], which
//!   put a [`Dispatcher`] and a [`server::CaService`] on the wire.
//! - [`client`]: [`client::GrpcDispatcher`], a [`Dispatcher`] over a channel
//!   (so the agent does not know which transport it uses), and
//!   [`client::CaClient`].
//! - `convert`: wire messages to and from this crate's types, by hand.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

use std::collections::BTreeSet;
use std::time::Duration;

use baton_spec::{DriverKind, Resources, TaskSpec};
use baton_state::{ExitInfo, NodeId, TaskDesired, TaskId, TaskReport, TaskState};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

pub mod auth;
pub mod client;
mod convert;
pub mod renewal;
pub mod server;
pub mod tls;
pub mod transport;

/// The protobuf messages and tonic services generated from `proto/baton.proto`.
///
/// Use the crate's own types everywhere else: these are converted by hand at
/// the edge.
#[allow(
    missing_docs,
    missing_debug_implementations,
    clippy::all,
    clippy::pedantic,
    clippy::unwrap_used
)]
pub mod pb {
    tonic::include_proto!("baton.v1");
}

/// What an agent says about its node when it opens a session.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeDescription {
    /// The node's id (from its persisted identity).
    ///
    /// Over the network this field is never sent: identity comes from the
    /// certificate, never the request. [`server::DispatcherServer`] fills it
    /// from the caller's verified certificate before the dispatcher sees it.
    pub node_id: NodeId,
    /// Host name.
    pub hostname: String,
    /// Resources it offers to tasks.
    pub capacity: Resources,
    /// Drivers that work on it.
    pub drivers: BTreeSet<DriverKind>,
    /// The agent's version.
    pub version: String,
    /// The address the node connected from. Never sent by the agent: the
    /// server fills it from the connection.
    pub address: Option<String>,
    /// Labels the agent was started with.
    pub labels: std::collections::BTreeMap<String, String>,
}

/// One task the node must run (or stop).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Assignment {
    /// Task id.
    pub task: TaskId,
    /// Job name.
    pub job: String,
    /// Job version the task runs.
    pub job_version: u64,
    /// Slot within the job, as text (`3`, or a node id for global jobs).
    pub slot: String,
    /// What to run.
    pub spec: TaskSpec,
    /// Run or stop.
    pub desired: TaskDesired,
    /// The state the cluster last recorded. An agent starts only `assigned`
    /// tasks: one in a later state that it does not know was started by an
    /// earlier run of the agent, and is reported `lost`, never started twice.
    pub state: TaskState,
    /// Host ports the cluster gave the task on this node, by port name.
    #[serde(default)]
    pub ports: std::collections::BTreeMap<String, u16>,
}

/// The full set of a node's assignments. Each push replaces the previous one.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AssignmentSet {
    /// Increases with every push on a session.
    pub seq: u64,
    /// The tasks.
    pub tasks: Vec<Assignment>,
    /// The secrets the set's live tasks use, by name: only those, and only
    /// in the set of the node that runs them.
    #[serde(default)]
    pub secrets: std::collections::BTreeMap<String, baton_state::SecretBytes>,
    /// The configs the set's live tasks use, by name.
    #[serde(default)]
    pub configs: std::collections::BTreeMap<String, Vec<u8>>,
}

/// A request for a task's log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogRequest {
    /// Correlates [`Dispatcher::send_logs`] calls with this request.
    pub id: u64,
    /// Task.
    pub task: TaskId,
    /// Keep streaming new output until the task ends or the reader goes away.
    pub follow: bool,
}

/// One piece of a log stream.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum LogEvent {
    /// Log bytes, in order.
    Data(Vec<u8>),
    /// The stream is complete.
    End,
    /// The stream failed (no such task on this node, unreadable file).
    Error(String),
}

/// What the dispatcher sends down a session.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SessionMessage {
    /// The node's full assignment set.
    Assignments(AssignmentSet),
    /// Start streaming a task's log.
    Logs(LogRequest),
    /// The roots to trust from now on.
    Trust(TrustUpdate),
    /// The cluster addresses of every manager, to reconnect to another one
    /// when this one goes.
    Managers(Vec<String>),
    /// Run a command inside a running task; answered with
    /// [`Dispatcher::exec`].
    Exec(ExecRequest),
}

/// A `baton exec` session asked of a node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecRequest {
    /// Correlates the [`Dispatcher::exec`] stream with this request.
    pub id: u64,
    /// The running task to enter.
    pub task: TaskId,
    /// argv.
    pub command: Vec<String>,
    /// Run it on a pseudo-terminal of this size.
    pub tty: Option<Winsize>,
}

/// The size of a terminal.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Winsize {
    /// Rows.
    pub rows: u16,
    /// Columns.
    pub cols: u16,
}

/// The resource use of one running task, as its node sampled it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskUsage {
    /// Task.
    pub task: TaskId,
    /// CPU used over the node's last sampling period, in millicores.
    pub cpu_millis: u64,
    /// Memory in use (without reclaimable file cache where the driver can
    /// tell), bytes.
    pub memory_bytes: u64,
    /// Processes and threads.
    pub pids: u64,
    /// When it was sampled, ms since the Unix epoch (the node's clock).
    pub at_ms: u64,
}

/// What flows from the node in an exec session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExecEvent {
    /// Output on the command's stdout.
    Stdout(Vec<u8>),
    /// Output on its stderr.
    Stderr(Vec<u8>),
    /// It ended (last event).
    Exit(ExitInfo),
    /// It could not run, or the session broke (last event).
    Error(String),
}

/// What flows to the node in an exec session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExecInput {
    /// Bytes for the command's stdin.
    Stdin(Vec<u8>),
    /// Its stdin is closed.
    StdinEof,
    /// Its terminal was resized.
    Resize(Winsize),
}

/// The roots a node must trust: sent when a session opens and whenever they
/// change during a root CA rotation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrustUpdate {
    /// PEM bundle of root certificates.
    pub roots_pem: String,
    /// The node's certificate comes from a root being retired: renew it now.
    pub renew_now: bool,
}

/// An open session: the node's cluster identity and the stream of messages.
#[derive(Debug)]
pub struct Session {
    /// Identity the cluster knows the node by.
    pub node_id: NodeId,
    /// Messages from the dispatcher; closed when the session ends.
    pub messages: mpsc::Receiver<SessionMessage>,
}

/// Errors of the dispatcher protocol.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RpcError {
    /// The dispatcher is not serving (shutting down, not the leader): retry later
    /// or elsewhere.
    #[error("dispatcher unavailable: {0}")]
    Unavailable(String),
    /// The session is unknown or was replaced: open a new one.
    #[error("no session for node {0}")]
    NoSession(NodeId),
    /// The caller may not do this.
    #[error("permission denied: {0}")]
    PermissionDenied(String),
    /// The log reader went away: stop streaming.
    #[error("log stream {0} closed")]
    LogStreamClosed(u64),
    /// The exec session is unknown, not this node's, or its client went away.
    #[error("exec session {0} closed")]
    ExecClosed(u64),
    /// Only the leading manager holds sessions: this one does not lead. The
    /// leader's cluster address, when this manager knows it.
    #[error("this manager is not the leader{}", .0.as_ref().map(|a| format!(" (the leader is at {a})")).unwrap_or_default())]
    NotLeader(Option<String>),
}

/// The dispatcher service, as an agent sees it.
#[async_trait::async_trait]
pub trait Dispatcher: Send + Sync + 'static {
    /// Opens (or replaces) the node's session.
    async fn open_session(&self, node: NodeDescription) -> Result<Session, RpcError>;

    /// Reports task state changes. At-least-once: reports may repeat; state only
    /// moves forward.
    async fn report(&self, node: &NodeId, reports: Vec<TaskReport>) -> Result<(), RpcError>;

    /// Sends the next piece of a requested log stream.
    async fn send_logs(&self, node: &NodeId, request: u64, event: LogEvent)
    -> Result<(), RpcError>;

    /// Carries exec session `request` (asked for with
    /// [`SessionMessage::Exec`]): `events` go up, and the command's input
    /// comes back. Only the node the request went to may carry it.
    async fn exec(
        &self,
        _node: &NodeId,
        request: u64,
        _events: mpsc::Receiver<ExecEvent>,
    ) -> Result<mpsc::Receiver<ExecInput>, RpcError> {
        Err(RpcError::ExecClosed(request))
    }

    /// Reports the latest resource use of the node's running tasks. Kept in
    /// memory by the leader for `baton task ls` and `task stats`.
    async fn report_usage(&self, _node: &NodeId, _usage: Vec<TaskUsage>) -> Result<(), RpcError> {
        Ok(())
    }

    /// Says the node is alive. Returns the period at which the dispatcher
    /// wants the next heartbeats; a node that stays silent for longer than
    /// the dispatcher's grace is marked down. Needs an open session
    /// ([`RpcError::NoSession`] otherwise: open a new one).
    async fn heartbeat(&self, node: &NodeId) -> Result<Duration, RpcError>;
}
