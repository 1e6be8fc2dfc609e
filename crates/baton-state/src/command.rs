//! Commands (the persisted log records) and the events their application yields.
//!
//! Append, never renumber: `Command` variants are persisted in the log; add new
//! variants at the end and never change the meaning of an existing one.

use baton_spec::{JobSpec, SpecFormat};
use serde::{Deserialize, Serialize};

use crate::ids::{NodeId, TaskId, Timestamp};
use crate::objects::{
    Cluster, ExitInfo, Node, NodeAvailability, NodeRole, NodeState, Task, TaskState,
};
use crate::secret::SecretBytes;

/// A change to the cluster state. Carries every input that varies between runs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Command {
    /// Create or update a job from a validated spec and its source bytes.
    PutJob {
        /// Validated spec.
        spec: JobSpec,
        /// Format of `source`.
        format: SpecFormat,
        /// Bytes as submitted.
        source: String,
        /// Clock at the edge.
        now: Timestamp,
    },
    /// Stop a job's tasks; the job stays, with desired state `stop`.
    StopJob {
        /// Job name.
        name: String,
        /// Clock at the edge.
        now: Timestamp,
    },
    /// A node (re)registered; it is `ready` from now on.
    RegisterNode {
        /// The node as it describes itself (state and timestamps are set by apply).
        node: Node,
        /// Clock at the edge.
        now: Timestamp,
    },
    /// A node lost its session: it is `down` and its unfinished tasks are `lost`.
    NodeDown {
        /// Node id.
        id: NodeId,
        /// Clock at the edge.
        now: Timestamp,
    },
    /// The result of one reconcile + schedule pass.
    ApplyPlan {
        /// What to change.
        plan: Plan,
        /// Clock at the edge.
        now: Timestamp,
    },
    /// Task state changes observed by a node.
    ReportTasks {
        /// The reporting node (from its authenticated session, never from the report).
        node: NodeId,
        /// The observations.
        reports: Vec<TaskReport>,
        /// Clock at the edge.
        now: Timestamp,
    },
    /// Creates the cluster identity. Refused if the cluster exists.
    InitCluster {
        /// The cluster.
        cluster: Cluster,
    },
    /// Replaces a join token (by its digest): the old one stops admitting nodes;
    /// nodes already joined are not affected.
    RotateJoinToken {
        /// Which token.
        role: NodeRole,
        /// SHA-256 (hex) of the new token's secret.
        digest: String,
    },
    /// A node joined: the cluster assigned it `id` and `role` and signed its
    /// certificate. Refused for an id in use or revoked.
    AdmitNode {
        /// Assigned id.
        id: NodeId,
        /// Role from the token used.
        role: NodeRole,
        /// Its certificate's expiry.
        cert_not_after: Timestamp,
        /// Digest of the root that issued the certificate.
        #[serde(default)]
        cert_root: String,
        /// Clock at the edge.
        now: Timestamp,
    },
    /// A member renewed its certificate.
    RenewNodeCert {
        /// Node.
        id: NodeId,
        /// New expiry.
        cert_not_after: Timestamp,
        /// Digest of the root that issued the new certificate.
        #[serde(default)]
        cert_root: String,
    },
    /// Removes a node from the cluster for good: its membership ends, its id is
    /// revoked (its certificate is refused from then on) and its unfinished
    /// tasks are `lost`.
    RemoveNode {
        /// Node.
        id: NodeId,
        /// Clock at the edge.
        now: Timestamp,
    },
    /// Changes whether a node takes new tasks.
    SetNodeAvailability {
        /// Node.
        id: NodeId,
        /// New availability.
        availability: NodeAvailability,
        /// For a drain: when tasks let finish (batch) are stopped anyway.
        #[serde(default)]
        deadline: Option<Timestamp>,
    },
    /// Changes the lifetime of node certificates issued from now on (joins
    /// and renewals); certificates already issued keep theirs, and their
    /// holders pick the new lifetime up at their next renewal. Refused below
    /// one second (certificates count whole seconds).
    SetCertValidity {
        /// New lifetime.
        validity: std::time::Duration,
    },
    /// Starts moving the cluster to a new root CA: from now on certificates
    /// are issued from the new root and nodes trust both. Refused with an
    /// external CA and while another rotation runs.
    StartRootRotation {
        /// The new root and its cross-signed copy.
        rotation: crate::objects::RootRotation,
    },
    /// Ends a root rotation: the new root becomes the only one. Refused
    /// unless every member holds a certificate from the new root.
    FinishRootRotation {
        /// The new root's digest (a finish for another rotation is refused).
        new_root_digest: String,
    },
    /// Records where a manager serves (it says so at every start): its
    /// cluster address (agents' sessions, other managers) and its user API.
    /// Refused for a node that is not a manager member.
    SetManagerAddresses {
        /// The manager.
        id: NodeId,
        /// Cluster address, `host:port`.
        cluster: String,
        /// User API URL, `https://host:port`.
        api: String,
    },
    /// Sets and removes operator labels of a node.
    UpdateNodeLabels {
        /// Node.
        id: NodeId,
        /// Labels to set.
        set: std::collections::BTreeMap<String, String>,
        /// Labels to remove.
        remove: std::collections::BTreeSet<String>,
    },
    /// Changes the number of replicas of a service job (a new job version
    /// that keeps the running tasks).
    ScaleJob {
        /// Job name.
        name: String,
        /// New replica count.
        replicas: u32,
        /// Clock at the edge.
        now: Timestamp,
    },
    /// Stores a new secret. Refused if the name is taken (secrets never
    /// change), invalid, or the value too large.
    CreateSecret {
        /// Name.
        name: String,
        /// The value.
        value: SecretBytes,
        /// Clock at the edge.
        now: Timestamp,
    },
    /// Forgets a secret. Refused while a job uses it.
    RemoveSecret {
        /// Name.
        name: String,
    },
    /// Stores a new config. Refused if the name is taken (configs never
    /// change), invalid, or the contents too large.
    CreateConfig {
        /// Name.
        name: String,
        /// The contents.
        #[serde(with = "crate::secret::base64_bytes")]
        data: Vec<u8>,
        /// Clock at the edge.
        now: Timestamp,
    },
    /// Forgets a config. Refused while a job uses it.
    RemoveConfig {
        /// Name.
        name: String,
    },
    /// Turns autolock on with `key` (or replaces the key), or off (`None`).
    SetUnlockKey {
        /// The unlock key, as its text form.
        key: Option<crate::secret::Secret>,
    },
}

impl Command {
    /// The command's name as it is persisted (`cmd` tag), for logs: it
    /// never shows the command's contents.
    pub fn kind(&self) -> &'static str {
        match self {
            Command::PutJob { .. } => "put_job",
            Command::StopJob { .. } => "stop_job",
            Command::RegisterNode { .. } => "register_node",
            Command::NodeDown { .. } => "node_down",
            Command::ApplyPlan { .. } => "apply_plan",
            Command::ReportTasks { .. } => "report_tasks",
            Command::InitCluster { .. } => "init_cluster",
            Command::RotateJoinToken { .. } => "rotate_join_token",
            Command::AdmitNode { .. } => "admit_node",
            Command::RenewNodeCert { .. } => "renew_node_cert",
            Command::RemoveNode { .. } => "remove_node",
            Command::SetNodeAvailability { .. } => "set_node_availability",
            Command::SetCertValidity { .. } => "set_cert_validity",
            Command::StartRootRotation { .. } => "start_root_rotation",
            Command::FinishRootRotation { .. } => "finish_root_rotation",
            Command::SetManagerAddresses { .. } => "set_manager_addresses",
            Command::UpdateNodeLabels { .. } => "update_node_labels",
            Command::ScaleJob { .. } => "scale_job",
            Command::CreateSecret { .. } => "create_secret",
            Command::RemoveSecret { .. } => "remove_secret",
            Command::CreateConfig { .. } => "create_config",
            Command::RemoveConfig { .. } => "remove_config",
            Command::SetUnlockKey { .. } => "set_unlock_key",
        }
    }
}

/// One task state observation from the node running it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskReport {
    /// Task.
    pub task: TaskId,
    /// Observed state.
    pub state: TaskState,
    /// Explanation.
    pub message: String,
    /// Exit, for terminal states.
    pub exit: Option<ExitInfo>,
    /// Host pid while running.
    pub pid: Option<u32>,
}

/// What a reconcile + schedule pass wants changed. Built by `baton-sched`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    /// New tasks, placed (`node` set, state `assigned`) or `pending`.
    pub create: Vec<Task>,
    /// Existing pending tasks to place.
    pub place: Vec<PlanPlacement>,
    /// Tasks to stop.
    pub stop: Vec<PlanStop>,
    /// Pending tasks that fit nowhere, with why.
    pub unplaced: Vec<PlanUnplaced>,
    /// Terminal tasks to forget (history beyond the retention limit).
    pub remove: Vec<TaskId>,
}

impl Plan {
    /// Number of items (tasks created, placed, stopped, explained, removed).
    pub fn len(&self) -> usize {
        self.create.len()
            + self.place.len()
            + self.stop.len()
            + self.unplaced.len()
            + self.remove.len()
    }

    /// Splits the plan into plans of at most `max_items` items each (at least
    /// one), in order: stops first (they free room), then creations,
    /// placements, explanations and removals. Each part applies on its own:
    /// `apply` re-checks every item, so a part applied after a crash of the
    /// proposer without the others leaves a consistent state.
    pub fn into_batches(self, max_items: usize) -> Vec<Plan> {
        let max_items = max_items.max(1);
        if self.len() <= max_items {
            return vec![self];
        }
        let mut batches = Batches {
            done: Vec::new(),
            current: Plan::default(),
            max_items,
        };
        batches.extend(self.stop, |plan| &mut plan.stop);
        batches.extend(self.create, |plan| &mut plan.create);
        batches.extend(self.place, |plan| &mut plan.place);
        batches.extend(self.unplaced, |plan| &mut plan.unplaced);
        batches.extend(self.remove, |plan| &mut plan.remove);
        batches.done.push(batches.current);
        batches.done
    }

    /// Whether applying it would change nothing.
    pub fn is_empty(&self) -> bool {
        self.create.is_empty()
            && self.place.is_empty()
            && self.stop.is_empty()
            && self.unplaced.is_empty()
            && self.remove.is_empty()
    }
}

/// Plans being filled up to a number of items each.
struct Batches {
    done: Vec<Plan>,
    current: Plan,
    max_items: usize,
}

impl Batches {
    fn extend<T>(&mut self, items: Vec<T>, field: fn(&mut Plan) -> &mut Vec<T>) {
        for item in items {
            if self.current.len() >= self.max_items {
                self.done.push(std::mem::take(&mut self.current));
            }
            field(&mut self.current).push(item);
        }
    }
}

/// Place a pending task on a node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanPlacement {
    /// Task.
    pub task: TaskId,
    /// Node.
    pub node: NodeId,
    /// Host ports it gets there, by name.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub ports: std::collections::BTreeMap<String, u16>,
}

/// Stop a task.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanStop {
    /// Task.
    pub task: TaskId,
    /// Why (shown in its status).
    pub reason: String,
    /// The higher-priority task it makes room for, when it is preempted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preempted_by: Option<TaskId>,
}

/// A pending task that could not be placed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanUnplaced {
    /// Task.
    pub task: TaskId,
    /// Why, summarised per reason.
    pub reason: String,
}

/// What applying a command did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// A new secret or config.
    FileCreated {
        /// Secret or config.
        kind: baton_spec::FileKind,
        /// Name.
        name: String,
    },
    /// A secret or config removed.
    FileRemoved {
        /// Secret or config.
        kind: baton_spec::FileKind,
        /// Name.
        name: String,
    },
    /// Autolock turned on, its key replaced, or turned off.
    UnlockKeyChanged {
        /// Whether the cluster is locked now.
        autolock: bool,
    },
    /// A new job.
    JobCreated {
        /// Name.
        name: String,
        /// Version.
        version: u64,
    },
    /// A changed job.
    JobUpdated {
        /// Name.
        name: String,
        /// New version.
        version: u64,
    },
    /// A resubmission that changed nothing.
    JobUnchanged {
        /// Name.
        name: String,
        /// Current version.
        version: u64,
    },
    /// A job was asked to stop.
    JobStopped {
        /// Name.
        name: String,
        /// New version.
        version: u64,
    },
    /// A node changed state.
    NodeStateChanged {
        /// Node.
        id: NodeId,
        /// New state.
        state: NodeState,
    },
    /// A task was created.
    TaskCreated {
        /// Task.
        id: TaskId,
    },
    /// A task was placed on a node.
    TaskPlaced {
        /// Task.
        id: TaskId,
        /// Node.
        node: NodeId,
    },
    /// A task's observed state changed.
    TaskStateChanged {
        /// Task.
        id: TaskId,
        /// New state.
        state: TaskState,
    },
    /// A task was asked to stop.
    TaskStopping {
        /// Task.
        id: TaskId,
    },
    /// A task was evicted to make room for a task of a higher priority.
    TaskPreempted {
        /// The evicted task.
        id: TaskId,
        /// The task it makes room for.
        by: TaskId,
    },
    /// A job's replica count changed.
    JobScaled {
        /// Name.
        name: String,
        /// New version.
        version: u64,
        /// New replica count.
        replicas: u32,
    },
    /// A node's operator labels changed.
    NodeLabelsChanged {
        /// Node.
        id: NodeId,
    },
    /// A terminal task was forgotten.
    TaskRemoved {
        /// Task.
        id: TaskId,
    },
    /// The cluster identity was created.
    ClusterCreated {
        /// Cluster id.
        id: String,
    },
    /// A join token was replaced.
    JoinTokenRotated {
        /// Which.
        role: NodeRole,
    },
    /// A node became a member.
    NodeAdmitted {
        /// Node.
        id: NodeId,
        /// Role.
        role: NodeRole,
    },
    /// A member's certificate was renewed.
    NodeCertRenewed {
        /// Node.
        id: NodeId,
    },
    /// A node was removed and revoked.
    NodeRemoved {
        /// Node.
        id: NodeId,
    },
    /// A node's availability changed.
    NodeAvailabilityChanged {
        /// Node.
        id: NodeId,
        /// New availability.
        availability: NodeAvailability,
    },
    /// A root rotation started.
    RootRotationStarted {
        /// The new root's digest.
        new_root_digest: String,
    },
    /// A root rotation finished: the new root is the only one.
    RootRotationFinished {
        /// The root's digest.
        root_digest: String,
    },
    /// A manager's addresses changed.
    ManagerAddressesChanged {
        /// The manager.
        id: NodeId,
    },
    /// The lifetime of newly issued node certificates changed.
    CertValidityChanged {
        /// New lifetime.
        validity: std::time::Duration,
    },
    /// Part of a command was not applied (stale plan, report for another node's task).
    Ignored {
        /// Why.
        reason: String,
    },
}
