//! Request and response bodies.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Answer of `GET /v1/health`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Health {
    /// `ok` when the manager serves requests.
    pub status: String,
    /// Last applied log index.
    pub index: u64,
}

/// An error answer: every non-2xx response has this body.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    /// Short machine-readable kind: `unauthorized` (no client certificate),
    /// `forbidden` (a certificate that may not call the API), `invalid_spec`,
    /// `invalid_request`, `not_found`, `conflict` (e.g. removing a ready node),
    /// `rejected` (the state refused the change), `unavailable`, `internal`.
    pub code: String,
    /// One human line.
    pub message: String,
    /// Every problem, for `invalid_spec` (one `file:line:col: path: message` each).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub details: Vec<String>,
}

/// What a job submission did.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum SubmitOutcome {
    /// A new job.
    Created,
    /// The spec changed: a new version replaces the tasks slot by slot.
    Updated,
    /// The same spec again: nothing changed.
    Unchanged,
}

/// Answer of `POST /v1/jobs`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SubmitResponse {
    /// What happened.
    pub outcome: SubmitOutcome,
    /// The job now.
    pub job: JobInfo,
}

/// A job slot that gave up.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SlotFailureInfo {
    /// Slot.
    pub slot: String,
    /// Its last task.
    pub task: String,
    /// Restarts before it gave up.
    pub restarts: u32,
    /// Last exit code, if it exited.
    pub exit_code: Option<i32>,
    /// Signal that killed it, if any.
    pub signal: Option<i32>,
    /// Why.
    pub message: String,
}

/// A job and its derived status.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct JobInfo {
    /// Name.
    pub name: String,
    /// `service`, `batch` or `global`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Version (increases on every change).
    pub version: u64,
    /// `run` or `stop`.
    pub desired: String,
    /// `pending`, `running`, `complete`, `failed` or `stopped`.
    pub phase: String,
    /// Slots wanted (replicas, completions or eligible nodes).
    pub desired_tasks: u32,
    /// Tasks of the current version running.
    pub running: u32,
    /// Tasks of the current version not yet running.
    pub pending: u32,
    /// Batch: successful completions.
    pub completed: u32,
    /// Slots that gave up.
    pub failures: Vec<SlotFailureInfo>,
    /// First submitted (ms since the epoch).
    pub created_at: u64,
    /// Last changed (ms since the epoch).
    pub updated_at: u64,
    /// The spec exactly as submitted (only in `GET /v1/jobs/{name}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
}

/// A task.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TaskInfo {
    /// Id.
    pub id: String,
    /// Job name.
    pub job: String,
    /// Job version it runs.
    pub job_version: u64,
    /// Slot.
    pub slot: String,
    /// Node it is placed on.
    pub node: Option<String>,
    /// `running` or `shutdown`.
    pub desired: String,
    /// `pending`, `assigned`, `starting`, `running`, `complete`, `failed`, `shutdown`, `lost`.
    pub state: String,
    /// Restarts of its slot before it.
    pub restarts: u32,
    /// Host pid while running (raw driver).
    pub pid: Option<u32>,
    /// Explanation of the state.
    pub message: String,
    /// Exit code, once exited.
    pub exit_code: Option<i32>,
    /// Signal that killed it.
    pub signal: Option<i32>,
    /// Created (ms since the epoch).
    pub created_at: u64,
    /// Started running (ms since the epoch).
    pub started_at: Option<u64>,
    /// Finished (ms since the epoch).
    pub finished_at: Option<u64>,
    /// Host ports it holds on its node, by port name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub ports: BTreeMap<String, u16>,
    /// What it uses, as its node last reported (running tasks, on the
    /// leading manager, while fresh).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<TaskUsageInfo>,
}

/// A running task's resource use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TaskUsageInfo {
    /// CPU over the node's last sampling period, millicores.
    pub cpu_millis: u64,
    /// Memory in use, bytes.
    pub memory_bytes: u64,
    /// Processes and threads.
    pub pids: u64,
    /// When the node sampled it (ms since the epoch, the node's clock).
    pub at: u64,
}

/// A node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct NodeInfo {
    /// Id.
    pub id: String,
    /// Host name.
    pub hostname: String,
    /// `worker` or `manager` (its membership), `-` if it is not a member.
    pub role: String,
    /// `ready` or `down`.
    pub state: String,
    /// `active`, `pause` or `drain`.
    pub availability: String,
    /// Drivers that work on it.
    pub drivers: Vec<String>,
    /// CPU offered, millicores.
    pub cpu_millis: u64,
    /// Memory offered, bytes.
    pub memory_bytes: u64,
    /// CPU reserved by its tasks.
    pub cpu_reserved: u64,
    /// Memory reserved by its tasks.
    pub memory_reserved: u64,
    /// Disk offered, bytes (what its agent measured, or `--disk`).
    #[serde(default)]
    pub disk_bytes: u64,
    /// Disk reserved by its tasks.
    #[serde(default)]
    pub disk_reserved: u64,
    /// CPU not reserved, millicores.
    #[serde(default)]
    pub cpu_free: u64,
    /// Memory not reserved, bytes.
    #[serde(default)]
    pub memory_free: u64,
    /// Disk not reserved, bytes.
    #[serde(default)]
    pub disk_free: u64,
    /// Host ports held by its tasks.
    #[serde(default)]
    pub ports_in_use: Vec<u16>,
    /// The labels placement rules see (`node.labels.<key>`): its agent's,
    /// overridden by the operator's.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// The labels its agent registered (`baton agent --label`).
    #[serde(default)]
    pub agent_labels: BTreeMap<String, String>,
    /// The labels an operator set (`baton node label`); they win over the
    /// agent's and survive its restarts.
    #[serde(default)]
    pub operator_labels: BTreeMap<String, String>,
    /// While it drains: when the tasks let finish are stopped anyway (ms
    /// since the epoch).
    #[serde(default)]
    pub drain_deadline: Option<u64>,
    /// Its tasks that are not finished.
    pub tasks: u32,
    /// Expiry of its current certificate (ms since the epoch), if it is a member.
    pub cert_expires_at: Option<u64>,
    /// Address its agent connected from, when known.
    pub address: Option<String>,
    /// Its agent's version.
    pub version: String,
}

/// Body of `POST /v1/nodes/{id}/availability`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AvailabilityRequest {
    /// `active` (takes tasks), `pause` (keeps its tasks, takes no new ones) or
    /// `drain` (its tasks move elsewhere).
    pub availability: String,
    /// With `drain` only: how long tasks that are let finish (batch) may run
    /// before they are stopped anyway, as a duration (`10m`, `1h30m`). Refused
    /// with any other availability.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline: Option<String>,
}

/// Body of `POST /v1/nodes/{id}/labels`: operator labels to set and to
/// remove. Operator labels win over the agent's and survive its restarts.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NodeLabelsRequest {
    /// Labels to set (`key: value`).
    #[serde(default)]
    pub set: BTreeMap<String, String>,
    /// Operator labels to remove, by key. A key only the node's agent sets
    /// cannot be removed here (restart the agent without that `--label`).
    #[serde(default)]
    pub remove: Vec<String>,
}

/// Body of `POST /v1/jobs/{name}/scale`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ScaleRequest {
    /// The new number of replicas (0 to 10000).
    pub replicas: u32,
}

/// Answer of `POST /v1/jobs/{name}/scale`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ScaleResponse {
    /// Replicas before (as this manager saw the job when the request came).
    pub previous: u32,
    /// Replicas now.
    pub replicas: u32,
    /// The job now.
    pub job: JobInfo,
}

/// Answer of `POST /v1/jobs/plan`: what submitting the spec would do to
/// that job, computed on a copy of the state; nothing is changed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct JobPlan {
    /// Job name.
    pub job: String,
    /// `service`, `batch` or `global`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Whether the submission would create the job, update it or change
    /// nothing.
    pub outcome: SubmitOutcome,
    /// The version the job would have.
    pub version: u64,
    /// New tasks: each with the node it would go to, or, pending, why it
    /// could be placed nowhere (`message`).
    pub create: Vec<PlannedTask>,
    /// Existing pending tasks that would get a node.
    pub place: Vec<PlannedTask>,
    /// Its tasks that would be stopped, each with why (`message`).
    pub stop: Vec<PlannedTask>,
    /// Tasks of other jobs that would be evicted to make room (preemption),
    /// each with why (`message`).
    pub preempt: Vec<PlannedTask>,
    /// Its tasks that would keep running (or keep waiting) as they are.
    pub keep: Vec<PlannedTask>,
    /// Slots of a rolling update that are replaced after these, one at a
    /// time, each once the previous new task runs.
    pub later_updates: u32,
}

/// A task in a [`JobPlan`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PlannedTask {
    /// Task id (for a new task: the id this plan drew; a real submission
    /// draws another).
    pub id: String,
    /// Job name.
    pub job: String,
    /// Job version it runs.
    pub job_version: u64,
    /// Slot.
    pub slot: String,
    /// Its node, if it has or would get one.
    pub node: Option<String>,
    /// Its state (`pending`, `assigned`, `running`, ...) after the plan.
    pub state: String,
    /// Why it is pending, or why it is stopped.
    pub message: String,
    /// Host ports it holds or would get, by port name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub ports: BTreeMap<String, u16>,
}

/// Answer of `GET /v1/cluster/join-tokens/{role}` and of its rotation.
///
/// The token lets a machine join the cluster: `Debug` never shows it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct JoinTokenInfo {
    /// `worker` or `manager`.
    pub role: String,
    /// The token, `BATON-1-<root CA digest>-<secret>`.
    pub token: String,
}

impl fmt::Debug for JoinTokenInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JoinTokenInfo")
            .field("role", &self.role)
            .field("token", &"<redacted>")
            .finish()
    }
}

/// Answer of `POST /v1/nodes/{id}/remove`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RemovedNode {
    /// The node removed; its certificate is refused from now on.
    pub id: String,
}

/// Answer of `GET /v1/cluster` and of `POST /v1/cluster/settings`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ClusterInfo {
    /// Cluster id (the O of every certificate).
    pub id: String,
    /// SHA-256 of the root CA certificate (DER), hex: what join tokens pin.
    pub root_ca_digest: String,
    /// Lifetime of node certificates issued from now on, in seconds. Nodes
    /// renew at a random point between 50% and 80% of it.
    pub cert_expiry_secs: u64,
    /// When the cluster was created (ms since the epoch).
    pub created_at: u64,
    /// Who signs certificates: `cluster` (the managers hold the root key)
    /// or the URL of the external CA they relay CSRs to.
    #[serde(default)]
    pub signer: String,
    /// A move to a new root CA, while it lasts.
    #[serde(default)]
    pub root_rotation: Option<RootRotationInfo>,
    /// The managers (the Raft members), as the answering manager sees them.
    #[serde(default)]
    pub managers: Vec<ManagerInfo>,
    /// Whether the cluster is autolocked: a restarted manager waits for the
    /// unlock key (`baton manager unlock`).
    #[serde(default)]
    pub autolock: bool,
    /// The answering manager's current Raft term.
    #[serde(default)]
    pub raft_term: u64,
    /// The last log index the answering manager has applied.
    #[serde(default)]
    pub raft_applied: u64,
}

/// One manager as a Raft member.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ManagerInfo {
    /// Node id.
    pub id: String,
    /// Cluster address.
    pub addr: String,
    /// User API URL, as the manager announced it.
    #[serde(default)]
    pub api: Option<String>,
    /// `leader`, `follower` (votes) or `standby` (keeps a copy of the state
    /// and serves the API but does not vote: demoted, or still catching up).
    pub raft_role: String,
    /// Answered the leader recently (as far as the answering manager knows).
    pub reachable: bool,
}

/// Progress of a root CA rotation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RootRotationInfo {
    /// SHA-256 of the new root certificate (DER), hex: what new join tokens pin.
    pub new_root_digest: String,
    /// When it started (ms since the epoch).
    pub started_at: u64,
    /// Nodes that still hold a certificate from the old root. The rotation
    /// finishes, and the old root stops being trusted, once this is empty
    /// (a node that is gone for good blocks it until `baton node rm`).
    pub pending_nodes: Vec<String>,
}

/// Body of `POST /v1/cluster/settings`: the settings to change; an absent
/// field keeps its value.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ClusterSettingsRequest {
    /// New lifetime of node certificates, in seconds (at least 1). Joins and
    /// renewals from now on use it; nodes pick it up at their next renewal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_expiry_secs: Option<u64>,
    /// Turn autolock on (the answer carries the new unlock key, once) or
    /// off. Turning it on when it is on changes nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autolock: Option<bool>,
}

/// Answer of `POST /v1/cluster/settings`: the cluster, and the unlock key
/// when this request turned autolock on.
///
/// `Debug` never shows the key.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ClusterSettingsResponse {
    /// The cluster after the change.
    pub cluster: ClusterInfo,
    /// The new unlock key, when autolock was just turned on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unlock_key: Option<String>,
}

impl fmt::Debug for ClusterSettingsResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClusterSettingsResponse")
            .field("cluster", &self.cluster)
            .field(
                "unlock_key",
                &self.unlock_key.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

/// Answer of `GET /v1/cluster/unlock-key` and of its rotation.
///
/// `Debug` never shows the key.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct UnlockKeyInfo {
    /// The key a restarted manager must be given (`baton manager unlock`).
    pub unlock_key: String,
}

impl fmt::Debug for UnlockKeyInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("UnlockKeyInfo { unlock_key: <redacted> }")
    }
}

/// A secret or config (`GET /v1/secrets`, `/v1/configs`, one by name, and
/// the answer of creating one). A secret's value is never in any answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct FileInfo {
    /// `secret` or `config`.
    pub kind: String,
    /// Name.
    pub name: String,
    /// Size of the value in bytes.
    pub size: u64,
    /// When created (Unix milliseconds).
    pub created_at: u64,
    /// The jobs that use it (it cannot be removed while any does).
    pub used_by: Vec<String>,
    /// A config's contents, base64: only in `GET /v1/configs/{name}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<String>,
}
