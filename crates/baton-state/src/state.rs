//! [`State`]: the tables, their indexes, and `apply`.

use std::collections::BTreeMap;

use baton_spec::{JobKind, Resources};
use imbl::{OrdMap, OrdSet};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::command::{Command, Event, Plan, TaskReport};
use crate::ids::{NodeId, TaskId, Timestamp};
use crate::objects::{
    Cluster, ConfigEntry, Job, JobDesired, JobPhase, JobSummary, Member, Node, NodeAvailability,
    NodeRole, NodeState, NodeView, SecretEntry, Slot, SlotFailure, Task, TaskDesired, TaskState,
};
use crate::restart::{RestartDecision, restart_decision};

/// A command that cannot be applied; the state is left unchanged.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, serde::Serialize, serde::Deserialize)]
pub enum ApplyError {
    /// The named job does not exist.
    #[error("job {name:?} not found")]
    JobNotFound {
        /// Name asked for.
        name: String,
    },
    /// The named node does not exist.
    #[error("node {id} not found")]
    NodeNotFound {
        /// Id asked for.
        id: NodeId,
    },
    /// The cluster identity exists already.
    #[error("the cluster is already initialised")]
    ClusterExists,
    /// No cluster identity yet.
    #[error("the cluster is not initialised")]
    NoCluster,
    /// The node id is a member already, or was revoked.
    #[error("node id {id} is taken or revoked")]
    NodeIdTaken {
        /// Id asked for.
        id: NodeId,
    },
    /// The node is not a member (never joined, or removed).
    #[error("node {id} is not a member of the cluster")]
    NotAMember {
        /// Id asked for.
        id: NodeId,
    },
    /// A certificate lifetime too short to issue (certificates count whole
    /// seconds, so anything under one second would expire as it is issued).
    #[error("certificate expiry must be at least 1s, got {millis}ms")]
    CertValidityTooShort {
        /// The lifetime asked for, in milliseconds.
        millis: u128,
    },
    /// The cluster signs with an external CA: the managers hold no root key
    /// to rotate.
    #[error(
        "this cluster's certificates are signed by an external CA; the managers hold no root key to rotate"
    )]
    ExternalCaRotation,
    /// A root rotation runs already.
    #[error("a root CA rotation is already in progress (to root {new_root_digest})")]
    RotationInProgress {
        /// The new root of the running rotation.
        new_root_digest: String,
    },
    /// No root rotation runs (or another one than the command names).
    #[error("no root CA rotation to root {new_root_digest} is in progress")]
    NoSuchRotation {
        /// The root named.
        new_root_digest: String,
    },
    /// Only services have a replica count to change.
    #[error("job {name:?} is a {kind} job; only service jobs are scaled (change its spec instead)")]
    NotScalable {
        /// Job name.
        name: String,
        /// Its kind.
        kind: String,
    },
    /// More replicas than a spec may ask for.
    #[error("{replicas} replicas is more than the limit of {max}", max = baton_spec::MAX_REPLICAS)]
    TooManyReplicas {
        /// The count asked for.
        replicas: u32,
    },
    /// A stopped job is not scaled (submitting it again starts it).
    #[error("job {name:?} is stopped; submit it again to run it")]
    JobStopped {
        /// Job name.
        name: String,
    },
    /// A secret or config of that name exists (they never change).
    #[error(
        "{kind} {name:?} already exists; {kind}s cannot be changed: create one under a new name and update the jobs that use it"
    )]
    FileExists {
        /// Secret or config.
        kind: baton_spec::FileKind,
        /// Name.
        name: String,
    },
    /// No secret or config of that name.
    #[error("{kind} {name:?} not found")]
    FileNotFound {
        /// Secret or config.
        kind: baton_spec::FileKind,
        /// Name.
        name: String,
    },
    /// A job uses the secret or config.
    #[error("{kind} {name:?} is used by job{} {}; update or stop {} first", if jobs.len() == 1 { "" } else { "s" }, jobs.join(", "), if jobs.len() == 1 { "it" } else { "them" })]
    FileInUse {
        /// Secret or config.
        kind: baton_spec::FileKind,
        /// Name.
        name: String,
        /// The jobs using it.
        jobs: Vec<String>,
    },
    /// A job names secrets or configs that do not exist.
    #[error("{} (create {} first with `baton secret create` or `baton config create`)", missing.iter().map(|(kind, name)| format!("{kind} {name:?} does not exist")).collect::<Vec<_>>().join(", "), if missing.len() == 1 { "it" } else { "them" })]
    MissingFiles {
        /// What is missing.
        missing: Vec<(baton_spec::FileKind, String)>,
    },
    /// A secret or config name or value that cannot be stored.
    #[error("{kind} {problem}")]
    InvalidFile {
        /// Secret or config.
        kind: baton_spec::FileKind,
        /// What is wrong, with the name.
        problem: String,
    },
    /// Some members still hold certificates from the old root.
    #[error("{} node(s) still hold certificates from the old root: {}", pending.len(), pending.iter().map(|n| n.0.as_str()).collect::<Vec<_>>().join(", "))]
    RotationPending {
        /// Members not moved yet.
        pending: Vec<NodeId>,
    },
}

/// The whole cluster state. Cloning is O(1) (persistent maps), so readers take
/// snapshots freely.
#[derive(Clone, Debug, Default)]
pub struct State {
    jobs: OrdMap<String, Job>,
    tasks: OrdMap<TaskId, Task>,
    nodes: OrdMap<NodeId, Node>,
    // Indexes, derived from `tasks`; rebuilt on load, never persisted.
    tasks_by_job: OrdMap<String, OrdSet<TaskId>>,
    tasks_by_node: OrdMap<NodeId, OrdSet<TaskId>>,
    reserved: OrdMap<NodeId, Resources>,
    ports_used: OrdMap<NodeId, OrdSet<u16>>,
    /// Jobs with a task waiting for a node (pending, unplaced, meant to run),
    /// with how many.
    waiting: OrdMap<String, u32>,
    /// Change tracking, never persisted: see [`ChangeMark`].
    changes: Changes,
    cluster: Option<Cluster>,
    members: OrdMap<NodeId, Member>,
    revoked: OrdSet<NodeId>,
    secrets: OrdMap<String, SecretEntry>,
    configs: OrdMap<String, ConfigEntry>,
}

/// Where a state is in its history, for [`State::jobs_changed_since`]: the
/// state's lineage (every state built from scratch or loaded starts a new
/// one; clones share it) and the number of commands applied since.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChangeMark {
    lineage: u64,
    generation: u64,
}

/// Which jobs and nodes changed, by generation.
#[derive(Clone, Debug)]
struct Changes {
    lineage: u64,
    /// Commands applied to this lineage (successful or not).
    generation: u64,
    /// The generation at which each job, or one of its tasks, last changed.
    jobs: OrdMap<String, u64>,
    /// The generation at which each node (what it offers, its state,
    /// availability, labels or role) last changed.
    nodes: OrdMap<NodeId, u64>,
}

impl Default for Changes {
    fn default() -> Changes {
        // A process-wide counter, not randomness: it only tells two
        // histories apart and never influences what `apply` does.
        static LINEAGES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        Changes {
            lineage: LINEAGES.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            generation: 0,
            jobs: OrdMap::new(),
            nodes: OrdMap::new(),
        }
    }
}

/// The persisted form: the primary tables only.
#[derive(Serialize, Deserialize)]
struct StateRecord {
    jobs: BTreeMap<String, Job>,
    tasks: Vec<Task>,
    nodes: Vec<Node>,
    #[serde(default)]
    cluster: Option<Cluster>,
    #[serde(default)]
    members: Vec<Member>,
    #[serde(default)]
    revoked: Vec<NodeId>,
    #[serde(default)]
    secrets: Vec<SecretEntry>,
    #[serde(default)]
    configs: Vec<ConfigEntry>,
}

impl Serialize for State {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        StateRecord {
            jobs: self
                .jobs
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            tasks: self.tasks.values().cloned().collect(),
            nodes: self.nodes.values().cloned().collect(),
            cluster: self.cluster.clone(),
            members: self.members.values().cloned().collect(),
            revoked: self.revoked.iter().cloned().collect(),
            secrets: self.secrets.values().cloned().collect(),
            configs: self.configs.values().cloned().collect(),
        }
        .serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for State {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let record = StateRecord::deserialize(deserializer)?;
        let mut state = State {
            jobs: record.jobs.into_iter().collect(),
            nodes: record
                .nodes
                .into_iter()
                .map(|n| (n.id.clone(), n))
                .collect(),
            cluster: record.cluster,
            members: record
                .members
                .into_iter()
                .map(|m| (m.id.clone(), m))
                .collect(),
            revoked: record.revoked.into_iter().collect(),
            secrets: record
                .secrets
                .into_iter()
                .map(|s| (s.name.clone(), s))
                .collect(),
            configs: record
                .configs
                .into_iter()
                .map(|c| (c.name.clone(), c))
                .collect(),
            ..State::default()
        };
        for task in record.tasks {
            state.insert_task(task);
        }
        Ok(state)
    }
}

impl State {
    /// All jobs by name.
    pub fn jobs(&self) -> impl Iterator<Item = &Job> {
        self.jobs.values()
    }

    /// One job.
    pub fn job(&self, name: &str) -> Option<&Job> {
        self.jobs.get(name)
    }

    /// Number of tasks (all states).
    pub fn n_tasks(&self) -> usize {
        self.tasks.len()
    }

    /// All tasks by id.
    pub fn tasks(&self) -> impl Iterator<Item = &Task> {
        self.tasks.values()
    }

    /// One task.
    pub fn task(&self, id: &TaskId) -> Option<&Task> {
        self.tasks.get(id)
    }

    /// A job's tasks, by id.
    pub fn tasks_of_job<'a>(&'a self, name: &str) -> impl Iterator<Item = &'a Task> + 'a {
        self.tasks_by_job
            .get(name)
            .into_iter()
            .flat_map(|ids| ids.iter())
            .filter_map(|id| self.tasks.get(id))
    }

    /// A node's tasks (every state), by id.
    pub fn tasks_of_node<'a>(&'a self, node: &NodeId) -> impl Iterator<Item = &'a Task> + 'a {
        self.tasks_by_node
            .get(node)
            .into_iter()
            .flat_map(|ids| ids.iter())
            .filter_map(|id| self.tasks.get(id))
    }

    /// All nodes by id.
    pub fn nodes(&self) -> impl Iterator<Item = &Node> {
        self.nodes.values()
    }

    /// One node.
    pub fn node(&self, id: &NodeId) -> Option<&Node> {
        self.nodes.get(id)
    }

    /// Resources held on a node by its non-terminal tasks.
    pub fn reserved(&self, node: &NodeId) -> Resources {
        self.reserved.get(node).copied().unwrap_or_default()
    }

    /// Capacity left on a node.
    pub fn free(&self, node: &Node) -> Resources {
        node.capacity.saturating_sub(&self.reserved(&node.id))
    }

    /// Host ports held on a node by its non-terminal tasks.
    pub fn ports_in_use(&self, node: &NodeId) -> Option<&OrdSet<u16>> {
        self.ports_used.get(node)
    }

    /// A node as placement rules see it: with its role (a node that is not a
    /// member, as in tests without a cluster, is a worker).
    pub fn node_view<'a>(&'a self, node: &'a Node) -> NodeView<'a> {
        let role = self
            .members
            .get(&node.id)
            .map_or(NodeRole::Worker, |m| m.role);
        NodeView { node, role }
    }

    /// Where this state is in its history.
    pub fn change_mark(&self) -> ChangeMark {
        ChangeMark {
            lineage: self.changes.lineage,
            generation: self.changes.generation,
        }
    }

    /// The jobs that may need reconciling since `mark` (taken from an earlier
    /// version of this state): jobs changed since (the job or any of its
    /// tasks), jobs with tasks waiting for a node, jobs with tasks on a node
    /// that changed since or drains with a deadline, and every global job if
    /// any node changed. `None` means every job: `mark` is of another
    /// history.
    pub fn jobs_changed_since(&self, mark: ChangeMark) -> Option<std::collections::BTreeSet<&str>> {
        if mark.lineage != self.changes.lineage || mark.generation > self.changes.generation {
            return None;
        }
        let mut jobs: std::collections::BTreeSet<&str> = self
            .changes
            .jobs
            .iter()
            .filter(|(_, generation)| **generation > mark.generation)
            .map(|(job, _)| job.as_str())
            .collect();
        jobs.extend(self.waiting.keys().map(String::as_str));
        // A node that changed concerns the jobs with tasks on it (they may
        // have to leave) and every global job (one task per eligible node);
        // jobs waiting for room are in already.
        let mut any_node = false;
        for (id, generation) in &self.changes.nodes {
            if *generation > mark.generation {
                any_node = true;
                jobs.extend(self.tasks_of_node(id).map(|t| t.job.as_str()));
            }
        }
        if any_node {
            jobs.extend(
                self.jobs
                    .values()
                    .filter(|job| matches!(job.spec.kind, JobKind::Global))
                    .map(|job| job.name.as_str()),
            );
        }
        // A drain deadline wakes the pass up (before) and moves batch tasks
        // (after): the jobs on such nodes are looked at every time.
        for node in self.nodes.values() {
            if node.drain_deadline.is_some() {
                jobs.extend(self.tasks_of_node(&node.id).map(|t| t.job.as_str()));
            }
        }
        Some(jobs)
    }

    fn touch(&mut self, job: &str) {
        let generation = self.changes.generation;
        upsert(
            &mut self.changes.jobs,
            job,
            || generation,
            |at| *at = generation,
        );
    }

    /// Whether a node takes new tasks of a driver.
    pub fn node_eligible(node: &Node, driver: baton_spec::DriverKind) -> bool {
        node.state == NodeState::Ready
            && node.availability == NodeAvailability::Active
            && node.drivers.contains(&driver)
    }

    /// Applies one command. On error nothing changed.
    pub fn apply(&mut self, cmd: Command) -> Result<Vec<Event>, ApplyError> {
        self.changes.generation += 1;
        // Every command that can change what a node offers to placement is
        // listed here (the match is exhaustive on purpose: a new command
        // must decide).
        let node = match &cmd {
            Command::RegisterNode { node, .. } => Some(node.id.clone()),
            Command::NodeDown { id, .. }
            | Command::RemoveNode { id, .. }
            | Command::SetNodeAvailability { id, .. }
            | Command::UpdateNodeLabels { id, .. }
            | Command::AdmitNode { id, .. } => Some(id.clone()),
            Command::PutJob { .. }
            | Command::StopJob { .. }
            | Command::ScaleJob { .. }
            | Command::ApplyPlan { .. }
            | Command::ReportTasks { .. }
            | Command::InitCluster { .. }
            | Command::RotateJoinToken { .. }
            | Command::RenewNodeCert { .. }
            | Command::SetCertValidity { .. }
            | Command::StartRootRotation { .. }
            | Command::FinishRootRotation { .. }
            | Command::SetManagerAddresses { .. }
            | Command::CreateSecret { .. }
            | Command::RemoveSecret { .. }
            | Command::CreateConfig { .. }
            | Command::RemoveConfig { .. }
            | Command::SetUnlockKey { .. } => None,
        };
        if let Some(id) = node {
            self.changes.nodes.insert(id, self.changes.generation);
        }
        match cmd {
            Command::PutJob {
                spec,
                format,
                source,
                now,
            } => {
                self.check_files_exist(&spec.task)?;
                Ok(self.put_job(spec, format, source, now))
            }
            Command::StopJob { name, now } => self.stop_job(&name, now),
            Command::RegisterNode { node, now } => self.register_node(node, now),
            Command::NodeDown { id, now } => self.node_down(&id, now),
            Command::ApplyPlan { plan, now } => Ok(self.apply_plan(plan, now)),
            Command::ReportTasks { node, reports, now } => {
                Ok(self.report_tasks(&node, reports, now))
            }
            Command::InitCluster { cluster } => self.init_cluster(cluster),
            Command::RotateJoinToken { role, digest } => self.rotate_join_token(role, digest),
            Command::AdmitNode {
                id,
                role,
                cert_not_after,
                cert_root,
                now,
            } => self.admit_node(id, role, cert_not_after, cert_root, now),
            Command::RenewNodeCert {
                id,
                cert_not_after,
                cert_root,
            } => self.renew_node_cert(&id, cert_not_after, cert_root),
            Command::RemoveNode { id, now } => self.remove_node(&id, now),
            Command::SetNodeAvailability {
                id,
                availability,
                deadline,
            } => self.set_node_availability(&id, availability, deadline),
            Command::SetCertValidity { validity } => self.set_cert_validity(validity),
            Command::StartRootRotation { rotation } => self.start_root_rotation(rotation),
            Command::FinishRootRotation { new_root_digest } => {
                self.finish_root_rotation(&new_root_digest)
            }
            Command::SetManagerAddresses { id, cluster, api } => {
                self.set_manager_addresses(&id, cluster, api)
            }
            Command::UpdateNodeLabels { id, set, remove } => {
                self.update_node_labels(&id, set, &remove)
            }
            Command::ScaleJob {
                name,
                replicas,
                now,
            } => self.scale_job(&name, replicas, now),
            Command::CreateSecret { name, value, now } => self.create_secret(name, value, now),
            Command::RemoveSecret { name } => self.remove_file(baton_spec::FileKind::Secret, name),
            Command::CreateConfig { name, data, now } => self.create_config(name, data, now),
            Command::RemoveConfig { name } => self.remove_file(baton_spec::FileKind::Config, name),
            Command::SetUnlockKey { key } => self.set_unlock_key(key),
        }
    }

    fn update_node_labels(
        &mut self,
        id: &NodeId,
        set: std::collections::BTreeMap<String, String>,
        remove: &std::collections::BTreeSet<String>,
    ) -> Result<Vec<Event>, ApplyError> {
        let node = self
            .nodes
            .get_mut(id)
            .ok_or_else(|| ApplyError::NodeNotFound { id: id.clone() })?;
        let before = node.operator_labels.clone();
        node.operator_labels.retain(|k, _| !remove.contains(k));
        node.operator_labels.extend(set);
        if node.operator_labels == before {
            return Ok(Vec::new());
        }
        Ok(vec![Event::NodeLabelsChanged { id: id.clone() }])
    }

    fn scale_job(
        &mut self,
        name: &str,
        replicas: u32,
        now: Timestamp,
    ) -> Result<Vec<Event>, ApplyError> {
        self.touch(name);
        let job = self
            .jobs
            .get_mut(name)
            .ok_or_else(|| ApplyError::JobNotFound {
                name: name.to_owned(),
            })?;
        let JobKind::Service { replicas: current } = job.spec.kind else {
            return Err(ApplyError::NotScalable {
                name: name.to_owned(),
                kind: job.spec.kind.as_str().to_owned(),
            });
        };
        if job.desired == JobDesired::Stop {
            return Err(ApplyError::JobStopped {
                name: name.to_owned(),
            });
        }
        if replicas > baton_spec::MAX_REPLICAS {
            return Err(ApplyError::TooManyReplicas { replicas });
        }
        if current == replicas {
            return Ok(vec![Event::JobUnchanged {
                name: name.to_owned(),
                version: job.version,
            }]);
        }
        let from = job.version;
        job.spec.kind = JobKind::Service { replicas };
        job.version += 1;
        job.updated_at = now;
        let version = job.version;
        self.carry_tasks_forward(name, from, version);
        Ok(vec![Event::JobScaled {
            name: name.to_owned(),
            version,
            replicas,
        }])
    }

    fn put_job(
        &mut self,
        spec: baton_spec::JobSpec,
        format: baton_spec::SpecFormat,
        source: String,
        now: Timestamp,
    ) -> Vec<Event> {
        let name = spec.name.clone();
        self.touch(&name);
        match self.jobs.get_mut(&name) {
            Some(job) if job.spec == spec && job.desired == JobDesired::Run => {
                vec![Event::JobUnchanged {
                    name,
                    version: job.version,
                }]
            }
            Some(job) => {
                let carry = job.desired == JobDesired::Run
                    && job.spec.task == spec.task
                    && std::mem::discriminant(&job.spec.kind) == std::mem::discriminant(&spec.kind);
                let from = job.version;
                job.version += 1;
                job.spec = spec;
                job.format = format;
                job.source = source;
                job.desired = JobDesired::Run;
                job.updated_at = now;
                let version = job.version;
                if carry {
                    self.carry_tasks_forward(&name, from, version);
                }
                vec![Event::JobUpdated { name, version }]
            }
            None => {
                self.jobs.insert(
                    name.clone(),
                    Job {
                        name: name.clone(),
                        version: 1,
                        spec,
                        format,
                        source,
                        desired: JobDesired::Run,
                        created_at: now,
                        updated_at: now,
                    },
                );
                vec![Event::JobCreated { name, version: 1 }]
            }
        }
    }

    fn stop_job(&mut self, name: &str, now: Timestamp) -> Result<Vec<Event>, ApplyError> {
        self.touch(name);
        let job = self
            .jobs
            .get_mut(name)
            .ok_or_else(|| ApplyError::JobNotFound {
                name: name.to_owned(),
            })?;
        if job.desired == JobDesired::Stop {
            return Ok(vec![Event::JobUnchanged {
                name: name.to_owned(),
                version: job.version,
            }]);
        }
        job.desired = JobDesired::Stop;
        job.version += 1;
        job.updated_at = now;
        Ok(vec![Event::JobStopped {
            name: name.to_owned(),
            version: job.version,
        }])
    }

    /// When a running job changes only its counts or its restart policy, the new
    /// version takes over the previous version's tasks (running, completed and
    /// failed alike): their task spec is unchanged, so scaling or re-tuning a job
    /// neither replaces its running tasks nor reruns its completed batch slots.
    /// Tasks of older versions ran another task spec and stay behind. A job that
    /// was stopped starts over: submitting it again is a new run.
    fn carry_tasks_forward(&mut self, job: &str, from: u64, to: u64) {
        let ids: Vec<TaskId> = self
            .tasks_of_job(job)
            .filter(|t| t.job_version == from)
            .map(|t| t.id.clone())
            .collect();
        for id in ids {
            if let Some(task) = self.tasks.get_mut(&id) {
                task.job_version = to;
            }
        }
    }

    fn register_node(&mut self, mut node: Node, now: Timestamp) -> Result<Vec<Event>, ApplyError> {
        // Decided here, in log order, so a session racing `node rm` cannot bring
        // a revoked node back: a revoked id never registers again, and once a
        // cluster exists only its members do.
        if self.revoked.contains(&node.id)
            || (self.cluster.is_some() && !self.members.contains_key(&node.id))
        {
            return Err(ApplyError::NotAMember { id: node.id });
        }
        if let Some(old) = self.nodes.get(&node.id) {
            node.registered_at = old.registered_at;
            node.availability = old.availability;
            node.drain_deadline = old.drain_deadline;
            node.operator_labels = old.operator_labels.clone();
        } else {
            node.registered_at = now;
        }
        node.state = NodeState::Ready;
        node.state_since = now;
        let id = node.id.clone();
        self.nodes.insert(id.clone(), node);
        Ok(vec![Event::NodeStateChanged {
            id,
            state: NodeState::Ready,
        }])
    }

    pub(crate) fn node_down(
        &mut self,
        id: &NodeId,
        now: Timestamp,
    ) -> Result<Vec<Event>, ApplyError> {
        let node = self
            .nodes
            .get_mut(id)
            .ok_or_else(|| ApplyError::NodeNotFound { id: id.clone() })?;
        let mut events = Vec::new();
        if node.state != NodeState::Down {
            node.state = NodeState::Down;
            node.state_since = now;
            events.push(Event::NodeStateChanged {
                id: id.clone(),
                state: NodeState::Down,
            });
        }
        let active: Vec<TaskId> = self
            .tasks_of_node(id)
            .filter(|t| t.is_active())
            .map(|t| t.id.clone())
            .collect();
        for task_id in active {
            let report = TaskReport {
                task: task_id,
                state: TaskState::Lost,
                message: "node down".to_owned(),
                exit: None,
                pid: None,
            };
            events.extend(self.set_task_state(report, now));
        }
        Ok(events)
    }

    fn apply_plan(&mut self, plan: Plan, now: Timestamp) -> Vec<Event> {
        let mut events = Vec::new();
        for task in plan.create {
            let ok = self.jobs.get(&task.job).is_some_and(|job| {
                job.version == task.job_version && job.desired == JobDesired::Run
            }) && !self.tasks.contains_key(&task.id)
                && task
                    .node
                    .as_ref()
                    .is_none_or(|n| self.fits(n, &task, &task.ports));
            if !ok {
                events.push(Event::Ignored {
                    reason: format!("stale plan: cannot create task {}", task.id),
                });
                continue;
            }
            let id = task.id.clone();
            let node = task.node.clone();
            self.insert_task(task);
            events.push(Event::TaskCreated { id: id.clone() });
            if let Some(node) = node {
                events.push(Event::TaskPlaced { id, node });
            }
        }
        for placement in plan.place {
            let ok = self.tasks.get(&placement.task).is_some_and(|t| {
                t.status.state == TaskState::Pending
                    && t.node.is_none()
                    && t.desired == TaskDesired::Running
                    && self.fits(&placement.node, t, &placement.ports)
            });
            if !ok {
                events.push(Event::Ignored {
                    reason: format!("stale plan: cannot place task {}", placement.task),
                });
                continue;
            }
            let mut task = self.remove_task(&placement.task).expect("checked above");
            task.node = Some(placement.node.clone());
            task.ports = placement.ports;
            task.status.state = TaskState::Assigned;
            task.status.since = now;
            task.status.message = String::new();
            self.insert_task(task);
            events.push(Event::TaskPlaced {
                id: placement.task,
                node: placement.node,
            });
        }
        for unplaced in plan.unplaced {
            if let Some(task) = self.tasks.get_mut(&unplaced.task)
                && task.status.state == TaskState::Pending
            {
                task.status.message = unplaced.reason;
            }
        }
        for stop in plan.stop {
            let stopping = self.stop_task(&stop.task, stop.reason, now);
            if let Some(by) = stop.preempted_by
                && !stopping.is_empty()
            {
                events.push(Event::TaskPreempted {
                    id: stop.task.clone(),
                    by,
                });
            }
            events.extend(stopping);
        }
        for id in plan.remove {
            if self.tasks.get(&id).is_some_and(|t| !t.is_active()) {
                self.remove_task(&id);
                events.push(Event::TaskRemoved { id });
            }
        }
        events
    }

    fn stop_task(&mut self, id: &TaskId, reason: String, now: Timestamp) -> Vec<Event> {
        let Some(task) = self.tasks.get(id) else {
            return Vec::new();
        };
        if task.desired == TaskDesired::Shutdown || task.status.state.is_terminal() {
            return Vec::new();
        }
        // Out and in again, so the indexes (tasks waiting, changed jobs) follow.
        let Some(mut task) = self.remove_task(id) else {
            return Vec::new();
        };
        task.desired = TaskDesired::Shutdown;
        task.status.message = reason.clone();
        let placed = task.node.is_some();
        self.insert_task(task);
        let mut events = vec![Event::TaskStopping { id: id.clone() }];
        // A task no node has yet is stopped at once; otherwise its node stops it
        // and reports `shutdown`.
        if !placed {
            events.extend(self.set_task_state(
                TaskReport {
                    task: id.clone(),
                    state: TaskState::Shutdown,
                    message: reason,
                    exit: None,
                    pid: None,
                },
                now,
            ));
        }
        events
    }

    fn report_tasks(
        &mut self,
        node: &NodeId,
        reports: Vec<TaskReport>,
        now: Timestamp,
    ) -> Vec<Event> {
        let mut events = Vec::new();
        for report in reports {
            // Authorisation from the stored object: a node reports only its own tasks.
            let owned = self
                .tasks
                .get(&report.task)
                .is_some_and(|t| t.node.as_ref() == Some(node));
            if !owned {
                events.push(Event::Ignored {
                    reason: format!("node {node} reported task {} it does not run", report.task),
                });
                continue;
            }
            events.extend(self.set_task_state(report, now));
        }
        events
    }

    /// Moves a task's observed state forward; backwards moves and moves out of a
    /// terminal state are ignored.
    fn set_task_state(&mut self, report: TaskReport, now: Timestamp) -> Vec<Event> {
        let Some(current) = self.tasks.get(&report.task) else {
            return Vec::new();
        };
        let from = current.status.state;
        let forward = !from.is_terminal() && (report.state > from || report.state.is_terminal());
        if !forward {
            // Same state again: refresh details such as the pid only.
            if report.state == from
                && !from.is_terminal()
                && let Some(task) = self.tasks.get_mut(&report.task)
                && report.pid.is_some()
            {
                task.status.pid = report.pid;
            }
            return Vec::new();
        }
        let mut task = self.remove_task(&report.task).expect("looked up above");
        task.status.state = report.state;
        task.status.since = now;
        // A task the cluster stopped keeps the cluster's reason (scaled
        // down, preempted by…, node draining): the node's "stopped" says less.
        let keeps_reason = report.state == TaskState::Shutdown
            && task.desired == TaskDesired::Shutdown
            && !task.status.message.is_empty();
        if !keeps_reason && (!report.message.is_empty() || report.state.is_terminal()) {
            task.status.message = report.message;
        }
        if report.state == TaskState::Running {
            task.status.started_at = Some(now);
            task.status.pid = report.pid;
        }
        if report.state.is_terminal() {
            task.status.finished_at = Some(now);
            task.status.exit = report.exit;
            task.status.pid = None;
        }
        let id = task.id.clone();
        self.insert_task(task);
        vec![Event::TaskStateChanged {
            id,
            state: report.state,
        }]
    }

    /// Whether `task` may be placed on a node with `ports`: the node takes
    /// its driver, has the resources free and none of the ports in use.
    fn fits(&self, node_id: &NodeId, task: &Task, ports: &BTreeMap<String, u16>) -> bool {
        let ports_free = || {
            self.ports_used
                .get(node_id)
                .is_none_or(|used| ports.values().all(|p| !used.contains(p)))
        };
        self.nodes.get(node_id).is_some_and(|node| {
            Self::node_eligible(node, task.driver)
                && task.resources.fits_in(&self.free(node))
                && ports_free()
        })
    }

    /// Whether a task waits for a node: pending, unplaced, meant to run.
    fn is_waiting(task: &Task) -> bool {
        task.status.state == TaskState::Pending
            && task.node.is_none()
            && task.desired == TaskDesired::Running
    }

    fn insert_task(&mut self, task: Task) {
        self.touch(&task.job);
        if Self::is_waiting(&task) {
            upsert(&mut self.waiting, &task.job, || 1, |n| *n += 1);
        }
        let id = &task.id;
        upsert(
            &mut self.tasks_by_job,
            &task.job,
            || OrdSet::unit(id.clone()),
            |ids| {
                ids.insert(id.clone());
            },
        );
        if let Some(node) = &task.node {
            upsert(
                &mut self.tasks_by_node,
                node,
                || OrdSet::unit(id.clone()),
                |ids| {
                    ids.insert(id.clone());
                },
            );
            if task.is_active() {
                let need = task.resources;
                upsert(
                    &mut self.reserved,
                    node,
                    || need,
                    |held| {
                        *held = held.saturating_add(&need);
                    },
                );
                if !task.ports.is_empty() {
                    let ports = || task.ports.values().copied();
                    upsert(
                        &mut self.ports_used,
                        node,
                        || ports().collect(),
                        |used| {
                            used.extend(ports());
                        },
                    );
                }
            }
        }
        self.tasks.insert(task.id.clone(), task);
    }

    fn remove_task(&mut self, id: &TaskId) -> Option<Task> {
        let task = self.tasks.remove(id)?;
        self.touch(&task.job);
        if Self::is_waiting(&task) {
            shrink(&mut self.waiting, &task.job, |n| *n -= 1, |n| *n == 0);
        }
        let forget = |ids: &mut OrdSet<TaskId>| {
            ids.remove(id);
        };
        shrink(&mut self.tasks_by_job, &task.job, forget, OrdSet::is_empty);
        if let Some(node) = &task.node {
            shrink(&mut self.tasks_by_node, node, forget, OrdSet::is_empty);
            if task.is_active() {
                let held = self.reserved(node).saturating_sub(&task.resources);
                self.reserved.insert(node.clone(), held);
                let release = |used: &mut OrdSet<u16>| {
                    for port in task.ports.values() {
                        used.remove(port);
                    }
                };
                shrink(&mut self.ports_used, node, release, OrdSet::is_empty);
            }
        }
        Some(task)
    }

    /// The newest task of each slot of a job, by [`Task::is_newer_than`]: the
    /// newest job version, then the most restarts, then the latest created.
    pub fn latest_by_slot<'a>(&'a self, job: &str) -> BTreeMap<Slot, &'a Task> {
        let mut latest: BTreeMap<Slot, &Task> = BTreeMap::new();
        for task in self.tasks_of_job(job) {
            let newer = latest
                .get(&task.slot)
                .is_none_or(|cur| task.is_newer_than(cur));
            if newer {
                latest.insert(task.slot.clone(), task);
            }
        }
        latest
    }

    /// Number of nodes a global job of this driver would run on.
    pub fn n_eligible_nodes(&self, driver: baton_spec::DriverKind) -> usize {
        self.nodes
            .values()
            .filter(|n| Self::node_eligible(n, driver))
            .count()
    }

    /// The derived status of a job.
    pub fn job_summary(&self, job: &Job) -> JobSummary {
        let desired = match job.spec.kind {
            JobKind::Service { replicas } => replicas,
            JobKind::Batch { completions, .. } => completions,
            JobKind::Global => {
                u32::try_from(self.n_eligible_nodes(job.spec.task.driver)).unwrap_or(u32::MAX)
            }
        };
        let mut summary = JobSummary {
            phase: JobPhase::Pending,
            desired,
            running: 0,
            pending: 0,
            completed: 0,
            failures: Vec::new(),
        };
        for task in self.tasks_of_job(&job.name) {
            if task.job_version != job.version || task.desired != TaskDesired::Running {
                continue;
            }
            match task.status.state {
                TaskState::Running => summary.running += 1,
                TaskState::Complete => summary.completed += 1,
                s if !s.is_terminal() => summary.pending += 1,
                _ => {}
            }
        }
        for (slot, task) in self.latest_by_slot(&job.name) {
            if task.job_version != job.version {
                continue;
            }
            if restart_decision(&job.spec.kind, &job.spec.restart, task) == RestartDecision::GiveUp
            {
                summary.failures.push(SlotFailure {
                    slot,
                    task: task.id.clone(),
                    restarts: task.restarts,
                    exit: task.status.exit,
                    message: task.status.message.clone(),
                });
            }
        }
        summary.phase = if job.desired == JobDesired::Stop {
            JobPhase::Stopped
        } else if !summary.failures.is_empty() {
            JobPhase::Failed
        } else if matches!(job.spec.kind, JobKind::Batch { .. }) {
            if summary.completed >= desired {
                JobPhase::Complete
            } else if summary.running > 0 {
                JobPhase::Running
            } else {
                JobPhase::Pending
            }
        } else if summary.running >= desired && summary.pending == 0 {
            JobPhase::Running
        } else {
            JobPhase::Pending
        };
        summary
    }
}

/// Updates the value at `key`, or inserts `new()` there: the key is cloned
/// only for a new entry (indexes are updated once per task placed, a million
/// times for a large plan).
fn upsert<K, Q, V>(
    map: &mut OrdMap<K, V>,
    key: &Q,
    new: impl FnOnce() -> V,
    update: impl FnOnce(&mut V),
) where
    K: Ord + Clone + std::borrow::Borrow<Q>,
    Q: Ord + ToOwned<Owned = K> + ?Sized,
    V: Clone,
{
    match map.get_mut(key) {
        Some(value) => update(value),
        None => {
            map.insert(key.to_owned(), new());
        }
    }
}

/// Updates the value at `key`, if there is one, and drops the entry once it
/// is `empty`.
fn shrink<K, Q, V>(
    map: &mut OrdMap<K, V>,
    key: &Q,
    update: impl FnOnce(&mut V),
    empty: impl FnOnce(&V) -> bool,
) where
    K: Ord + Clone + std::borrow::Borrow<Q>,
    Q: Ord + ?Sized,
    V: Clone,
{
    if let Some(value) = map.get_mut(key) {
        update(value);
        if empty(value) {
            map.remove(key);
        }
    }
}

mod files;
mod membership;

pub use membership::MIN_CERT_VALIDITY;

#[cfg(test)]
mod tests;
