//! Stored objects: jobs, tasks and nodes. Desired state is kept apart from
//! observed status.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use baton_spec::{DriverKind, JobSpec, NodeAttributes, Resources, SpecFormat};
use serde::{Deserialize, Serialize};

use crate::ids::{NodeId, TaskId, Timestamp};
use crate::secret::{Secret, SecretBytes, base64_bytes};

/// What the user wants of a job.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobDesired {
    /// Keep its tasks running (or run the batch to completion).
    Run,
    /// Stop every task.
    Stop,
}

/// A job: the user's spec, kept with the exact bytes submitted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Job {
    /// Unique name (the job's id).
    pub name: String,
    /// Increases on every accepted change of spec or of `desired`; tasks carry
    /// the version they were made for. Never decreases (signed specs need that).
    pub version: u64,
    /// The validated spec.
    pub spec: JobSpec,
    /// Format of `source`.
    pub format: SpecFormat,
    /// The spec exactly as submitted.
    pub source: String,
    /// Run or stop.
    pub desired: JobDesired,
    /// When first submitted.
    pub created_at: Timestamp,
    /// When `version` last changed.
    pub updated_at: Timestamp,
}

/// A task's place within its job.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Slot {
    /// Service replica or batch completion number.
    Index(u32),
    /// Global jobs: one slot per node.
    Node(NodeId),
}

impl fmt::Display for Slot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Slot::Index(i) => write!(f, "{i}"),
            Slot::Node(n) => write!(f, "{n}"),
        }
    }
}

/// What the cluster wants of a task.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskDesired {
    /// Run it.
    Running,
    /// Stop it (or never start it).
    Shutdown,
}

/// Observed lifecycle of a task. States only move forward (in declaration order),
/// except that any non-terminal state may jump to a terminal one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskState {
    /// Waiting for a node (or for its restart backoff).
    Pending,
    /// Placed on a node; the node has not started it yet.
    Assigned,
    /// The node is starting it.
    Starting,
    /// Its process runs.
    Running,
    /// Exited 0.
    Complete,
    /// Exited non-zero, was killed by a signal, or could not start.
    Failed,
    /// Stopped because the cluster asked it to.
    Shutdown,
    /// Its node lost track of it (node down, agent restart).
    Lost,
}

impl TaskState {
    /// Whether the task is finished for good.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            TaskState::Complete | TaskState::Failed | TaskState::Shutdown | TaskState::Lost
        )
    }

    /// The lowercase word used in the API and CLI.
    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::Pending => "pending",
            TaskState::Assigned => "assigned",
            TaskState::Starting => "starting",
            TaskState::Running => "running",
            TaskState::Complete => "complete",
            TaskState::Failed => "failed",
            TaskState::Shutdown => "shutdown",
            TaskState::Lost => "lost",
        }
    }
}

/// How a task's process ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitInfo {
    /// Exit code, if it exited.
    pub code: Option<i32>,
    /// Signal number, if a signal killed it.
    pub signal: Option<i32>,
    /// Whether the kernel killed it for going over its memory limit (the
    /// driver read this from the task's cgroup or container).
    #[serde(default)]
    pub oom_killed: bool,
}

impl ExitInfo {
    /// Whether this is a clean exit 0.
    pub fn success(&self) -> bool {
        self.code == Some(0) && self.signal.is_none()
    }
}

impl fmt::Display for ExitInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.code, self.signal) {
            (_, Some(sig)) => write!(f, "killed by signal {sig}"),
            (Some(code), None) => write!(f, "exit code {code}"),
            (None, None) => f.write_str("unknown exit"),
        }
    }
}

/// Observed status of a task.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskStatus {
    /// Lifecycle state.
    pub state: TaskState,
    /// When `state` was entered.
    pub since: Timestamp,
    /// Human explanation (why pending, why failed).
    pub message: String,
    /// How the process ended, once it did.
    pub exit: Option<ExitInfo>,
    /// Host pid of the task's process while it runs (raw driver).
    pub pid: Option<u32>,
    /// When it started running.
    pub started_at: Option<Timestamp>,
    /// When it reached a terminal state.
    pub finished_at: Option<Timestamp>,
}

/// One run of one slot of a job.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Task {
    /// Unique id.
    pub id: TaskId,
    /// Owning job's name.
    pub job: String,
    /// Job version this task runs. When a running job changes only its counts or
    /// restart policy, apply moves the previous version's tasks to the new
    /// version, so only a change of what tasks run replaces them.
    pub job_version: u64,
    /// Place within the job.
    pub slot: Slot,
    /// How many times this slot was restarted before this task (0 for the first run).
    pub restarts: u32,
    /// Node it is placed on.
    pub node: Option<NodeId>,
    /// Resources reserved on that node while the task is not terminal.
    pub resources: Resources,
    /// Driver it needs.
    pub driver: DriverKind,
    /// What the cluster wants.
    pub desired: TaskDesired,
    /// What was observed.
    pub status: TaskStatus,
    /// Restart backoff: not to be placed before this time.
    pub not_before: Option<Timestamp>,
    /// When created.
    pub created_at: Timestamp,
    /// Host ports held on its node while it is not terminal, by port name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub ports: BTreeMap<String, u16>,
}

impl Task {
    /// Whether the task counts against its node and slot: not terminal and meant to run,
    /// or still running while it is being stopped.
    pub fn is_active(&self) -> bool {
        !self.status.state.is_terminal()
    }

    /// Whether it is meant to run and has not finished.
    pub fn is_live(&self) -> bool {
        self.desired == TaskDesired::Running && !self.status.state.is_terminal()
    }

    /// Whether `self` is a later run of its slot than `other`: a newer job version,
    /// then more restarts, then created later. Ties (a replacement created in the
    /// same millisecond as the task it replaces) go to the task still meant to run,
    /// then to the unfinished one, then to the larger id, so the order is total and
    /// every reader agrees on a slot's latest task.
    pub fn is_newer_than(&self, other: &Task) -> bool {
        self.recency() > other.recency()
    }

    fn recency(&self) -> (u64, u32, Timestamp, bool, bool, &TaskId) {
        (
            self.job_version,
            self.restarts,
            self.created_at,
            self.desired == TaskDesired::Running,
            !self.status.state.is_terminal(),
            &self.id,
        )
    }
}

/// Whether a node is reachable.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeState {
    /// Its agent holds a session.
    Ready,
    /// Its agent is gone.
    Down,
}

/// Whether a node takes new tasks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeAvailability {
    /// Takes tasks.
    Active,
    /// Keeps its tasks, takes no new ones.
    Pause,
    /// Moves its tasks away.
    Drain,
}

/// A node of the cluster.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    /// Cluster-assigned id.
    pub id: NodeId,
    /// Host name it reported.
    pub hostname: String,
    /// Resources it offers to tasks.
    pub capacity: Resources,
    /// Drivers that work on it.
    pub drivers: BTreeSet<DriverKind>,
    /// Reachability.
    pub state: NodeState,
    /// Scheduling availability.
    pub availability: NodeAvailability,
    /// When it first registered.
    pub registered_at: Timestamp,
    /// When its state last changed.
    pub state_since: Timestamp,
    /// Address its agent connected from, when known.
    #[serde(default)]
    pub address: Option<String>,
    /// Its agent's version.
    #[serde(default)]
    pub version: String,
    /// Labels its agent was started with (`--label k=v`), replaced at every
    /// registration.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Labels set by an operator (`baton node label`); they win over the
    /// agent's and survive its restarts.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub operator_labels: BTreeMap<String, String>,
    /// While draining: when tasks that are let finish (batch) are stopped anyway.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drain_deadline: Option<Timestamp>,
}

impl Node {
    /// A ready, active node offering `capacity` and `drivers`, with no labels.
    pub fn new(
        id: NodeId,
        hostname: impl Into<String>,
        capacity: Resources,
        drivers: BTreeSet<DriverKind>,
    ) -> Node {
        Node {
            id,
            hostname: hostname.into(),
            capacity,
            drivers,
            state: NodeState::Ready,
            availability: NodeAvailability::Active,
            registered_at: Timestamp(0),
            state_since: Timestamp(0),
            address: None,
            version: String::new(),
            labels: BTreeMap::new(),
            operator_labels: BTreeMap::new(),
            drain_deadline: None,
        }
    }

    /// A label's value: the operator's, else the agent's.
    pub fn label(&self, key: &str) -> Option<&str> {
        self.operator_labels
            .get(key)
            .or_else(|| self.labels.get(key))
            .map(String::as_str)
    }

    /// Every label in effect (the operator's win).
    pub fn effective_labels(&self) -> BTreeMap<String, String> {
        let mut labels = self.labels.clone();
        labels.extend(
            self.operator_labels
                .iter()
                .map(|(k, v)| (k.clone(), v.clone())),
        );
        labels
    }
}

/// A node with its role, as placement rules see it.
#[derive(Clone, Copy, Debug)]
pub struct NodeView<'a> {
    /// The node.
    pub node: &'a Node,
    /// Its role in the cluster.
    pub role: NodeRole,
}

impl NodeAttributes for NodeView<'_> {
    fn label(&self, key: &str) -> Option<&str> {
        self.node.label(key)
    }

    fn hostname(&self) -> &str {
        &self.node.hostname
    }

    fn role(&self) -> &str {
        self.role.as_str()
    }

    fn id(&self) -> &str {
        &self.node.id.0
    }

    fn has_driver(&self, driver: &str) -> bool {
        self.node.drivers.iter().any(|d| d.as_str() == driver)
    }
}

/// Phase of a job, derived from its tasks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobPhase {
    /// Not all tasks run yet.
    Pending,
    /// Every slot runs (service, global) or the batch is in progress.
    Running,
    /// Batch: every completion reached.
    Complete,
    /// A slot exhausted its restarts.
    Failed,
    /// Stopped by the user.
    Stopped,
}

/// A slot that gave up.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotFailure {
    /// The slot.
    pub slot: Slot,
    /// Its last task.
    pub task: TaskId,
    /// Restarts before giving up.
    pub restarts: u32,
    /// Last exit, if the process ran.
    pub exit: Option<ExitInfo>,
    /// Why it failed.
    pub message: String,
}

/// A job's derived status.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobSummary {
    /// Phase.
    pub phase: JobPhase,
    /// Slots wanted now (replicas, completions, eligible nodes).
    pub desired: u32,
    /// Tasks of the current version running.
    pub running: u32,
    /// Tasks not yet running.
    pub pending: u32,
    /// Batch: successful completions.
    pub completed: u32,
    /// Slots that gave up.
    pub failures: Vec<SlotFailure>,
}

/// The role a node was admitted with (and that its certificate carries).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeRole {
    /// Runs the control plane (and may run tasks).
    Manager,
    /// Runs tasks only.
    Worker,
}

impl NodeRole {
    /// The lowercase word used in the API, the CLI and certificates.
    pub fn as_str(self) -> &'static str {
        match self {
            NodeRole::Manager => "manager",
            NodeRole::Worker => "worker",
        }
    }
}

/// Cluster-wide identity settings: the root CA (and how certificates are
/// signed), join-token digests, the certificate lifetime, and a root
/// rotation in progress.
///
/// The root CA's key lives here, replicated with the rest of the state, so
/// that any manager can sign (`Debug` redacts it; the store file is 0600).
/// With an external CA the managers hold no root key at all and relay CSRs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cluster {
    /// Cluster id (the O of every certificate).
    pub id: String,
    /// The root CA certificate every node trusts, PEM.
    pub root_ca_pem: String,
    /// SHA-256 (hex) of that certificate's DER: what join tokens pin.
    #[serde(default)]
    pub root_digest: String,
    /// The root CA's private key, PEM, when the managers sign certificates
    /// themselves; `None` with an external CA.
    #[serde(default)]
    pub root_ca_key: Option<Secret>,
    /// The external signer, when the managers only relay CSRs.
    #[serde(default)]
    pub external_ca: Option<ExternalCa>,
    /// A move to a new root CA, while it lasts.
    #[serde(default)]
    pub root_rotation: Option<RootRotation>,
    /// SHA-256 (hex) of the worker join token's secret; the token itself is
    /// never stored.
    pub worker_token_digest: String,
    /// SHA-256 (hex) of the manager join token's secret.
    pub manager_token_digest: String,
    /// Lifetime of node certificates issued from now on (joins, renewals).
    pub cert_validity: std::time::Duration,
    /// When the cluster was created.
    pub created_at: Timestamp,
    /// Autolock: the key (its text form) that every manager's data key is
    /// wrapped with instead of a key file, so that a restarted manager
    /// serves nothing until an operator gives it. `None`: not locked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unlock_key: Option<Secret>,
}

impl Cluster {
    /// Every root a node must trust now, PEM: the current root and, during a
    /// rotation, the new one.
    pub fn trust_pem(&self) -> String {
        match &self.root_rotation {
            None => self.root_ca_pem.clone(),
            Some(rotation) => {
                let mut bundle = self.root_ca_pem.trim_end().to_owned();
                bundle.push('\n');
                bundle.push_str(&rotation.new_root_pem);
                bundle
            }
        }
    }

    /// The digest of the root new certificates are issued from: the new root
    /// during a rotation, the current one otherwise.
    pub fn issuing_root_digest(&self) -> &str {
        match &self.root_rotation {
            Some(rotation) => &rotation.new_root_digest,
            None => &self.root_digest,
        }
    }

    /// Whether `digest` names a root nodes trust now.
    pub fn trusts_root(&self, digest: &str) -> bool {
        !digest.is_empty()
            && (self.root_digest.eq_ignore_ascii_case(digest)
                || self
                    .root_rotation
                    .as_ref()
                    .is_some_and(|r| r.new_root_digest.eq_ignore_ascii_case(digest)))
    }
}

/// A cfssl-compatible signer the managers relay CSRs to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExternalCa {
    /// The signer's authenticated signing endpoint (https).
    pub url: String,
    /// The signer's authentication key (cfssl "standard" auth key, hex).
    pub auth_key: Secret,
}

/// A move of the whole cluster to a new root CA. New certificates come from
/// the new root, each with a cross-signed copy of the new root (issued by the
/// old one) as its intermediate, so peers that still trust only the old root
/// accept them; every node trusts both roots. Once every member holds a
/// certificate from the new root, the old root is dropped.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RootRotation {
    /// The new root certificate, PEM.
    pub new_root_pem: String,
    /// SHA-256 (hex) of its DER.
    pub new_root_digest: String,
    /// Its private key, PEM.
    pub new_root_key: Secret,
    /// The new root's key and subject, certified by the old root, PEM.
    pub cross_signed_pem: String,
    /// When the rotation started.
    pub started_at: Timestamp,
}

/// A node's membership: admitted by a join, ended by removal (which revokes it).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// The id the cluster assigned.
    pub id: NodeId,
    /// Its role.
    pub role: NodeRole,
    /// When it joined.
    pub admitted_at: Timestamp,
    /// Expiry of its current certificate.
    pub cert_not_after: Timestamp,
    /// SHA-256 (hex) of the root that issued its current certificate.
    #[serde(default)]
    pub cert_root: String,
    /// A manager's cluster address (`host:port`), as it last announced it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_addr: Option<String>,
    /// A manager's user API URL, as it last announced it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_url: Option<String>,
}

/// A secret kept by the cluster: immutable once created; its value is shown
/// to no one, and given only to nodes running a task that uses it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretEntry {
    /// Name (see [`baton_spec::file_name_problem`]).
    pub name: String,
    /// The value.
    pub value: SecretBytes,
    /// When created.
    pub created_at: Timestamp,
}

/// A config kept by the cluster: like a secret, immutable, but not secret.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigEntry {
    /// Name (see [`baton_spec::file_name_problem`]).
    pub name: String,
    /// The contents.
    #[serde(with = "base64_bytes")]
    pub data: Vec<u8>,
    /// When created.
    pub created_at: Timestamp,
}
