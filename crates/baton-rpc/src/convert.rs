//! Wire messages ([`crate::pb`]) to and from the crate's types, by hand, and
//! the one place where [`RpcError`] and [`CaError`] map to and from gRPC
//! status codes.
//!
//! Conversions from the wire check everything a peer could get wrong (unknown
//! enum values, missing messages, undecodable specs) and say what was wrong;
//! they never panic on peer input.

use std::fmt;

use baton_spec::{DriverKind, Resources, TaskSpec};
use baton_state::{ExitInfo, NodeId, TaskDesired, TaskId, TaskReport, TaskState};
use tonic::{Code, Status};

use crate::pb;
use crate::server::CaError;
use crate::{
    Assignment, AssignmentSet, ExecEvent, ExecInput, ExecRequest, LogEvent, LogRequest,
    NodeDescription, RpcError, SessionMessage, TaskUsage, TrustUpdate, Winsize,
};

/// A wire message that does not convert to the crate's types.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConvertError {
    /// A required message field is absent.
    #[error("missing field {0}")]
    Missing(&'static str),
    /// An enum field holds a value this version does not know.
    #[error("unknown value {value} for {field}")]
    UnknownEnum {
        /// The field.
        field: &'static str,
        /// The number on the wire.
        value: i32,
    },
    /// The task spec bytes are not a valid spec.
    #[error("invalid task spec for task {task}: {error}")]
    Spec {
        /// The task.
        task: String,
        /// What the decoder said.
        error: String,
    },
}

impl From<ConvertError> for Status {
    fn from(e: ConvertError) -> Status {
        Status::invalid_argument(e.to_string())
    }
}

// ---- node description ----

pub(crate) fn node_description_to_wire(desc: &NodeDescription) -> pb::NodeDescription {
    pb::NodeDescription {
        hostname: desc.hostname.clone(),
        capacity: Some(resources_to_wire(&desc.capacity)),
        drivers: desc.drivers.iter().map(|d| d.as_str().to_owned()).collect(),
        version: desc.version.clone(),
        labels: desc
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
    }
}

/// `node_id` comes from the caller's certificate and `address` from its
/// connection: the wire message has neither.
pub(crate) fn node_description_from_wire(
    node_id: NodeId,
    address: Option<String>,
    wire: pb::NodeDescription,
) -> NodeDescription {
    NodeDescription {
        node_id,
        address,
        version: wire.version,
        hostname: wire.hostname,
        capacity: wire.capacity.map(resources_from_wire).unwrap_or_default(),
        // A driver this manager does not know cannot be scheduled on anyway;
        // a newer agent naming one must not fail its session.
        drivers: wire
            .drivers
            .into_iter()
            .filter_map(|name| serde_json::from_value::<DriverKind>(name.into()).ok())
            .collect(),
        labels: wire.labels.into_iter().collect(),
    }
}

fn resources_to_wire(res: &Resources) -> pb::Resources {
    pb::Resources {
        cpu_millis: res.cpu_millis,
        memory_bytes: res.memory_bytes,
        disk_bytes: res.disk_bytes,
    }
}

fn resources_from_wire(wire: pb::Resources) -> Resources {
    Resources {
        cpu_millis: wire.cpu_millis,
        memory_bytes: wire.memory_bytes,
        disk_bytes: wire.disk_bytes,
    }
}

// ---- task enums ----

fn task_state_to_wire(state: TaskState) -> pb::TaskState {
    match state {
        TaskState::Pending => pb::TaskState::Pending,
        TaskState::Assigned => pb::TaskState::Assigned,
        TaskState::Starting => pb::TaskState::Starting,
        TaskState::Running => pb::TaskState::Running,
        TaskState::Complete => pb::TaskState::Complete,
        TaskState::Failed => pb::TaskState::Failed,
        TaskState::Shutdown => pb::TaskState::Shutdown,
        TaskState::Lost => pb::TaskState::Lost,
    }
}

fn task_state_from_wire(field: &'static str, value: i32) -> Result<TaskState, ConvertError> {
    let unknown = ConvertError::UnknownEnum { field, value };
    match pb::TaskState::try_from(value).map_err(|_| unknown.clone())? {
        pb::TaskState::Unspecified => Err(unknown),
        pb::TaskState::Pending => Ok(TaskState::Pending),
        pb::TaskState::Assigned => Ok(TaskState::Assigned),
        pb::TaskState::Starting => Ok(TaskState::Starting),
        pb::TaskState::Running => Ok(TaskState::Running),
        pb::TaskState::Complete => Ok(TaskState::Complete),
        pb::TaskState::Failed => Ok(TaskState::Failed),
        pb::TaskState::Shutdown => Ok(TaskState::Shutdown),
        pb::TaskState::Lost => Ok(TaskState::Lost),
    }
}

fn task_desired_to_wire(desired: TaskDesired) -> pb::TaskDesired {
    match desired {
        TaskDesired::Running => pb::TaskDesired::Running,
        TaskDesired::Shutdown => pb::TaskDesired::Shutdown,
    }
}

fn task_desired_from_wire(value: i32) -> Result<TaskDesired, ConvertError> {
    let unknown = ConvertError::UnknownEnum {
        field: "Assignment.desired",
        value,
    };
    match pb::TaskDesired::try_from(value).map_err(|_| unknown.clone())? {
        pb::TaskDesired::Unspecified => Err(unknown),
        pb::TaskDesired::Running => Ok(TaskDesired::Running),
        pb::TaskDesired::Shutdown => Ok(TaskDesired::Shutdown),
    }
}

// ---- session messages ----

fn assignment_to_wire(a: &Assignment) -> Result<pb::Assignment, ConvertError> {
    // For now the spec travels as JSON of `TaskSpec`. Signed specs will carry
    // the bytes the engineer submitted, unchanged, in this field (plus an
    // appended signature field); derived data stays in the other fields.
    let spec_json = serde_json::to_vec(&a.spec).map_err(|e| ConvertError::Spec {
        task: a.task.0.clone(),
        error: e.to_string(),
    })?;
    Ok(pb::Assignment {
        task: a.task.0.clone(),
        job: a.job.clone(),
        job_version: a.job_version,
        slot: a.slot.clone(),
        spec_json,
        desired: task_desired_to_wire(a.desired).into(),
        state: task_state_to_wire(a.state).into(),
        ports: a
            .ports
            .iter()
            .map(|(name, port)| (name.clone(), u32::from(*port)))
            .collect(),
    })
}

fn assignment_from_wire(wire: pb::Assignment) -> Result<Assignment, ConvertError> {
    let spec: TaskSpec =
        serde_json::from_slice(&wire.spec_json).map_err(|e| ConvertError::Spec {
            task: wire.task.clone(),
            error: e.to_string(),
        })?;
    let ports = wire
        .ports
        .into_iter()
        .map(|(name, port)| {
            u16::try_from(port)
                .map(|port| (name, port))
                .map_err(|_| ConvertError::Spec {
                    task: wire.task.clone(),
                    error: format!("port {port} is out of range"),
                })
        })
        .collect::<Result<_, _>>()?;
    Ok(Assignment {
        task: TaskId(wire.task),
        job: wire.job,
        job_version: wire.job_version,
        slot: wire.slot,
        spec,
        desired: task_desired_from_wire(wire.desired)?,
        state: task_state_from_wire("Assignment.state", wire.state)?,
        ports,
    })
}

pub(crate) fn session_message_to_wire(
    msg: &SessionMessage,
) -> Result<pb::SessionMessage, ConvertError> {
    let message = match msg {
        SessionMessage::Assignments(set) => {
            pb::session_message::Message::Assignments(pb::AssignmentSet {
                seq: set.seq,
                tasks: set
                    .tasks
                    .iter()
                    .map(assignment_to_wire)
                    .collect::<Result<_, _>>()?,
                secrets: set
                    .secrets
                    .iter()
                    .map(|(name, value)| pb::FileData {
                        name: name.clone(),
                        data: value.expose().to_vec(),
                    })
                    .collect(),
                configs: set
                    .configs
                    .iter()
                    .map(|(name, data)| pb::FileData {
                        name: name.clone(),
                        data: data.clone(),
                    })
                    .collect(),
            })
        }
        SessionMessage::Logs(req) => pb::session_message::Message::Logs(pb::LogRequest {
            id: req.id,
            task: req.task.0.clone(),
            follow: req.follow,
        }),
        SessionMessage::Trust(update) => pb::session_message::Message::Trust(pb::TrustUpdate {
            roots_pem: update.roots_pem.clone(),
            renew_now: update.renew_now,
        }),
        SessionMessage::Managers(addrs) => {
            pb::session_message::Message::Managers(pb::ManagerList {
                addrs: addrs.clone(),
            })
        }
        SessionMessage::Exec(req) => pb::session_message::Message::Exec(pb::ExecRequest {
            id: req.id,
            task: req.task.0.clone(),
            command: req.command.clone(),
            tty: req.tty.map(winsize_to_wire),
        }),
    };
    Ok(pb::SessionMessage {
        message: Some(message),
    })
}

pub(crate) fn session_message_from_wire(
    wire: pb::SessionMessage,
) -> Result<SessionMessage, ConvertError> {
    match wire
        .message
        .ok_or(ConvertError::Missing("SessionMessage.message"))?
    {
        pb::session_message::Message::Assignments(set) => {
            Ok(SessionMessage::Assignments(AssignmentSet {
                seq: set.seq,
                tasks: set
                    .tasks
                    .into_iter()
                    .map(assignment_from_wire)
                    .collect::<Result<_, _>>()?,
                secrets: set
                    .secrets
                    .into_iter()
                    .map(|file| (file.name, baton_state::SecretBytes::new(file.data)))
                    .collect(),
                configs: set
                    .configs
                    .into_iter()
                    .map(|file| (file.name, file.data))
                    .collect(),
            }))
        }
        pb::session_message::Message::Logs(req) => Ok(SessionMessage::Logs(LogRequest {
            id: req.id,
            task: TaskId(req.task),
            follow: req.follow,
        })),
        pb::session_message::Message::Trust(update) => Ok(SessionMessage::Trust(TrustUpdate {
            roots_pem: update.roots_pem,
            renew_now: update.renew_now,
        })),
        pb::session_message::Message::Managers(list) => Ok(SessionMessage::Managers(list.addrs)),
        pb::session_message::Message::Exec(req) => Ok(SessionMessage::Exec(ExecRequest {
            id: req.id,
            task: TaskId(req.task),
            command: req.command,
            tty: req.tty.map(winsize_from_wire),
        })),
    }
}

// ---- usage ----

pub(crate) fn usage_to_wire(usage: &TaskUsage) -> pb::TaskUsage {
    pb::TaskUsage {
        task: usage.task.0.clone(),
        cpu_millis: usage.cpu_millis,
        memory_bytes: usage.memory_bytes,
        pids: usage.pids,
        at_ms: usage.at_ms,
    }
}

pub(crate) fn usage_from_wire(wire: pb::TaskUsage) -> TaskUsage {
    TaskUsage {
        task: TaskId(wire.task),
        cpu_millis: wire.cpu_millis,
        memory_bytes: wire.memory_bytes,
        pids: wire.pids,
        at_ms: wire.at_ms,
    }
}

// ---- exec sessions ----

fn winsize_to_wire(size: Winsize) -> pb::Winsize {
    pb::Winsize {
        rows: u32::from(size.rows),
        cols: u32::from(size.cols),
    }
}

/// Sizes beyond a `u16` are clamped (the kernel's `winsize` is 16-bit).
fn winsize_from_wire(size: pb::Winsize) -> Winsize {
    Winsize {
        rows: u16::try_from(size.rows).unwrap_or(u16::MAX),
        cols: u16::try_from(size.cols).unwrap_or(u16::MAX),
    }
}

fn exit_to_wire(exit: &ExitInfo) -> pb::ExitInfo {
    pb::ExitInfo {
        code: exit.code,
        signal: exit.signal,
        oom_killed: exit.oom_killed,
    }
}

fn exit_from_wire(exit: pb::ExitInfo) -> ExitInfo {
    ExitInfo {
        code: exit.code,
        signal: exit.signal,
        oom_killed: exit.oom_killed,
    }
}

pub(crate) fn exec_event_to_wire(event: ExecEvent) -> pb::exec_up::Event {
    match event {
        ExecEvent::Stdout(bytes) => pb::exec_up::Event::Stdout(bytes),
        ExecEvent::Stderr(bytes) => pb::exec_up::Event::Stderr(bytes),
        ExecEvent::Exit(exit) => pb::exec_up::Event::Exit(exit_to_wire(&exit)),
        ExecEvent::Error(message) => pb::exec_up::Event::Error(message),
    }
}

/// An exec event from the node; `None` for the opening message (not an
/// event) or an empty one.
pub(crate) fn exec_event_from_wire(wire: pb::ExecUp) -> Option<ExecEvent> {
    match wire.event? {
        pb::exec_up::Event::Open(_) => None,
        pb::exec_up::Event::Stdout(bytes) => Some(ExecEvent::Stdout(bytes)),
        pb::exec_up::Event::Stderr(bytes) => Some(ExecEvent::Stderr(bytes)),
        pb::exec_up::Event::Exit(exit) => Some(ExecEvent::Exit(exit_from_wire(exit))),
        pb::exec_up::Event::Error(message) => Some(ExecEvent::Error(message)),
    }
}

pub(crate) fn exec_input_to_wire(input: ExecInput) -> pb::ExecDown {
    pb::ExecDown {
        event: Some(match input {
            ExecInput::Stdin(bytes) => pb::exec_down::Event::Stdin(bytes),
            ExecInput::StdinEof => pb::exec_down::Event::StdinEof(pb::Empty {}),
            ExecInput::Resize(size) => pb::exec_down::Event::Resize(winsize_to_wire(size)),
        }),
    }
}

pub(crate) fn exec_input_from_wire(wire: pb::ExecDown) -> Option<ExecInput> {
    match wire.event? {
        pb::exec_down::Event::Stdin(bytes) => Some(ExecInput::Stdin(bytes)),
        pb::exec_down::Event::StdinEof(pb::Empty {}) => Some(ExecInput::StdinEof),
        pb::exec_down::Event::Resize(size) => Some(ExecInput::Resize(winsize_from_wire(size))),
    }
}

// ---- reports and logs ----

pub(crate) fn report_to_wire(report: &TaskReport) -> pb::TaskReport {
    pb::TaskReport {
        task: report.task.0.clone(),
        state: task_state_to_wire(report.state).into(),
        message: report.message.clone(),
        exit: report.exit.as_ref().map(exit_to_wire),
        pid: report.pid,
    }
}

pub(crate) fn report_from_wire(wire: pb::TaskReport) -> Result<TaskReport, ConvertError> {
    Ok(TaskReport {
        task: TaskId(wire.task),
        state: task_state_from_wire("TaskReport.state", wire.state)?,
        message: wire.message,
        exit: wire.exit.map(exit_from_wire),
        pid: wire.pid,
    })
}

pub(crate) fn log_event_to_wire(event: LogEvent) -> pb::send_logs_request::Event {
    match event {
        LogEvent::Data(bytes) => pb::send_logs_request::Event::Data(bytes),
        LogEvent::End => pb::send_logs_request::Event::End(pb::Empty {}),
        LogEvent::Error(message) => pb::send_logs_request::Event::Error(message),
    }
}

pub(crate) fn log_event_from_wire(
    wire: Option<pb::send_logs_request::Event>,
) -> Result<LogEvent, ConvertError> {
    match wire.ok_or(ConvertError::Missing("SendLogsRequest.event"))? {
        pb::send_logs_request::Event::Data(bytes) => Ok(LogEvent::Data(bytes)),
        pb::send_logs_request::Event::End(pb::Empty {}) => Ok(LogEvent::End),
        pb::send_logs_request::Event::Error(message) => Ok(LogEvent::Error(message)),
    }
}

// ---- errors <-> status: the one place ----

/// How a dispatcher error goes on the wire.
pub(crate) fn rpc_error_to_status(e: &RpcError) -> Status {
    match e {
        RpcError::Unavailable(msg) => Status::unavailable(msg.clone()),
        RpcError::NoSession(_) => Status::failed_precondition(e.to_string()),
        RpcError::PermissionDenied(msg) => Status::permission_denied(msg.clone()),
        RpcError::LogStreamClosed(_) | RpcError::ExecClosed(_) => Status::aborted(e.to_string()),
        RpcError::NotLeader(leader) => {
            let mut status = Status::unavailable(e.to_string());
            if let Some(addr) = leader
                && let Ok(value) = addr.parse()
            {
                status.metadata_mut().insert(LEADER_HEADER, value);
            }
            status
        }
    }
}

/// Metadata key of a [`RpcError::NotLeader`] refusal naming the leader.
const LEADER_HEADER: &str = "baton-leader";

/// What a dispatcher call's failure means to the agent. `node` and `request`
/// are the call's own context: statuses carry text, not typed fields. Anything
/// not known to be final (transport errors, timeouts, internal errors) is
/// `Unavailable`, so the agent retries.
pub(crate) fn status_to_rpc_error(status: &Status, node: &NodeId, request: u64) -> RpcError {
    match status.code() {
        Code::PermissionDenied | Code::Unauthenticated => {
            RpcError::PermissionDenied(status.message().to_owned())
        }
        Code::FailedPrecondition => RpcError::NoSession(node.clone()),
        Code::Aborted => RpcError::LogStreamClosed(request),
        Code::Unavailable
            if status
                .message()
                .starts_with("this manager is not the leader") =>
        {
            RpcError::NotLeader(
                status
                    .metadata()
                    .get(LEADER_HEADER)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned),
            )
        }
        _ => RpcError::Unavailable(DisplayStatus(status).to_string()),
    }
}

/// How a CA error goes on the wire.
pub(crate) fn ca_error_to_status(e: &CaError) -> Status {
    match e {
        CaError::PermissionDenied(msg) => Status::permission_denied(msg.clone()),
        CaError::InvalidRequest(msg) => Status::invalid_argument(msg.clone()),
        CaError::Unavailable(msg) => Status::unavailable(msg.clone()),
        // These two are client-side findings; a CaService returning them is a
        // server bug, and the caller can only retry.
        CaError::RootMismatch { .. } | CaError::InvalidResponse(_) => {
            Status::internal(e.to_string())
        }
    }
}

/// What a CA call's failure means to the caller.
pub(crate) fn status_to_ca_error(status: &Status) -> CaError {
    match status.code() {
        Code::PermissionDenied | Code::Unauthenticated => {
            CaError::PermissionDenied(status.message().to_owned())
        }
        Code::InvalidArgument => CaError::InvalidRequest(status.message().to_owned()),
        _ => CaError::Unavailable(DisplayStatus(status).to_string()),
    }
}

/// A status as one line: code, message and the transport error behind it.
struct DisplayStatus<'a>(&'a Status);

impl fmt::Display for DisplayStatus<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}: {}", self.0.code(), self.0.message())?;
        let mut source = std::error::Error::source(self.0);
        while let Some(e) = source {
            write!(f, ": {e}")?;
            source = e.source();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
