//! User-written job specs: the typed, validated [`JobSpec`] and the parser that
//! produces it from the YAML or JSON bytes an engineer submitted.
//!
//! Architecture invariant: this crate does no I/O and knows nothing of the
//! cluster. A [`JobSpec`] only comes out of [`parse_job`] (or from the store,
//! which only ever persisted specs that came out of it).

#![forbid(unsafe_code)]
#![warn(missing_docs)]

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

mod constraint;
mod files;
mod label;
mod parse;
mod quantity;

pub use constraint::{Attribute, Constraint, ConstraintError, NodeAttributes, Op};
pub use files::{
    FileKind, FileMount, MAX_FILE_BYTES, MAX_FILE_NAME_LEN, MAX_TASK_FILES, file_name_problem,
    file_size_problem,
};
pub use label::{
    MAX_LABEL_VALUE_CHARS, MAX_LABELS, check_label, check_label_key, check_labels, parse_label,
};

pub use parse::{
    MAX_REPORTED_ERRORS, MAX_SPEC_BYTES, MAX_SPEC_DEPTH, SpecError, SpecErrors, parse_job,
};
pub use quantity::{
    format_duration, format_memory, human_memory, parse_cpu, parse_duration, parse_memory,
};

/// The format of submitted spec bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SpecFormat {
    /// YAML 1.2 (the CLI's format).
    Yaml,
    /// JSON (the HTTP API's format).
    Json,
}

/// A validated job spec. Built only by [`parse_job`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobSpec {
    /// Unique job name: `[a-z0-9-]`, 1 to 63 characters, starting and ending alphanumeric.
    pub name: String,
    /// Job type and its counts.
    pub kind: JobKind,
    /// What each task runs.
    pub task: TaskSpec,
    /// What happens when a task exits.
    pub restart: RestartPolicy,
    /// Where its tasks may go and how they are ranked, and their priority.
    #[serde(default)]
    pub placement: Placement,
}

/// What is wrong with an absolute working directory, if anything: a
/// directory in a kernel filesystem is how a task reaches the host through
/// a leaked descriptor (`/proc/self/fd/7`: runc's CVE-2024-21626), and `..`,
/// `.` or `//` would hide such a path. Checked at submission and again by
/// the agent (which does not trust the manager's copy).
pub fn workdir_problem(dir: &str) -> Option<String> {
    path_problem(dir, "a task's working directory")
}

/// What is wrong with an absolute path inside a task (`what` names it in
/// the message), if anything: the rules of [`workdir_problem`].
pub fn path_problem(dir: &str, what: &str) -> Option<String> {
    let inner = dir.strip_prefix('/').unwrap_or(dir);
    let inner = inner.strip_suffix('/').unwrap_or(inner);
    let components: Vec<&str> = inner.split('/').collect();
    if !inner.is_empty()
        && components
            .iter()
            .any(|c| c.is_empty() || *c == "." || *c == "..")
    {
        return Some(
            "is not a plain absolute path (expected no \".\", \"..\" or empty component)"
                .to_owned(),
        );
    }
    match components.first() {
        Some(first @ (&"proc" | &"sys" | &"dev")) => Some(format!(
            "is under /{first} ({what} cannot be in a kernel filesystem)"
        )),
        _ => None,
    }
}

/// Most replicas a service may ask for.
pub const MAX_REPLICAS: u32 = 10_000;

/// Lowest job priority.
pub const MIN_PRIORITY: u32 = 0;
/// Highest job priority.
pub const MAX_PRIORITY: u32 = 100;
/// Priority of a job that does not say.
pub const DEFAULT_PRIORITY: u32 = 50;

/// Where a job's tasks may go and how the candidates are ranked.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placement {
    /// Hard rules: a node that fails one never gets a task of this job.
    #[serde(default)]
    pub constraints: Vec<Constraint>,
    /// Soft preferences: among the nodes that fit, those matching more weight
    /// are preferred (negative weights push away).
    #[serde(default)]
    pub affinities: Vec<Affinity>,
    /// Spread the tasks over the values of one attribute (e.g. zones).
    #[serde(default)]
    pub spread: Option<Spread>,
    /// How nodes that fit equally are ranked.
    #[serde(default)]
    pub strategy: Strategy,
    /// At most this many of the job's tasks on one node.
    #[serde(default)]
    pub max_per_node: Option<u32>,
    /// Higher priorities are placed first, and may evict lower ones when
    /// `preempt` is set.
    #[serde(default = "default_priority")]
    pub priority: u32,
    /// Whether a task of this job that fits nowhere may evict tasks of jobs
    /// with a lower priority.
    #[serde(default)]
    pub preempt: bool,
}

fn default_priority() -> u32 {
    DEFAULT_PRIORITY
}

impl Default for Placement {
    fn default() -> Placement {
        Placement {
            constraints: Vec::new(),
            affinities: Vec::new(),
            spread: None,
            strategy: Strategy::default(),
            max_per_node: None,
            priority: DEFAULT_PRIORITY,
            preempt: false,
        }
    }
}

/// A soft placement preference.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Affinity {
    /// The nodes it is about.
    pub expr: Constraint,
    /// How much they are preferred: -100 to 100, never 0.
    pub weight: i32,
}

/// Spreading over the values of one node attribute.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Spread {
    /// The attribute whose values the tasks are spread over.
    pub attribute: Attribute,
    /// Wanted share per value, in percent (summing to at most 100); values
    /// not named share the rest evenly. Empty: every value present on an
    /// eligible node gets an even share.
    #[serde(default)]
    pub targets: Vec<SpreadTarget>,
}

/// One value's share of a spread.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpreadTarget {
    /// The attribute's value.
    pub value: String,
    /// Percent of the tasks wanted there.
    pub percent: u32,
}

/// How nodes that fit are ranked.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Strategy {
    /// The fullest node that holds the task: whole nodes stay free for big tasks.
    #[default]
    Binpack,
    /// The emptiest node: tasks spread over as many nodes as possible.
    Spread,
}

impl Strategy {
    /// The word users write in `strategy:`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Strategy::Binpack => "binpack",
            Strategy::Spread => "spread",
        }
    }
}

/// First host port handed out to tasks that ask for a dynamic port.
pub const DYNAMIC_PORT_MIN: u16 = 20_000;
/// Last host port handed out dynamically.
pub const DYNAMIC_PORT_MAX: u16 = 32_000;

/// A host port a task needs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortSpec {
    /// Its name: `[a-z][a-z0-9_]*`; the task finds the port number in
    /// `BATON_PORT_<NAME>` (upper case).
    pub name: String,
    /// A fixed host port; `None` for one chosen from the dynamic range.
    #[serde(default, rename = "static")]
    pub static_port: Option<u16>,
    /// Whether the port is meant to be reachable from other hosts. Unpublished
    /// ports are for loopback: `BATON_ADDR_<NAME>` is `127.0.0.1:<port>`.
    #[serde(default)]
    pub publish: bool,
}

/// The job types.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", tag = "type")]
pub enum JobKind {
    /// Keeps `replicas` tasks running, one per slot `0..replicas`.
    Service {
        /// Number of tasks to keep running.
        replicas: u32,
    },
    /// Runs until `completions` tasks exited 0, at most `parallelism` at once.
    Batch {
        /// Successful exits needed.
        completions: u32,
        /// Tasks running at once, at most.
        parallelism: u32,
    },
    /// One task on every eligible node.
    Global,
}

impl JobKind {
    /// The word users write in `type:`.
    pub fn as_str(&self) -> &'static str {
        match self {
            JobKind::Service { .. } => "service",
            JobKind::Batch { .. } => "batch",
            JobKind::Global => "global",
        }
    }
}

/// The driver that runs a task.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DriverKind {
    /// A plain child process of the agent, no isolation. Off on every agent
    /// unless enabled in its configuration.
    Raw,
    /// An isolated process (the default): its own pid, mount, uts, ipc and
    /// cgroup namespaces, cgroup limits, seccomp, no capabilities, no new
    /// privileges, an unprivileged user, the host's files read-only.
    Exec,
    /// A Docker container, through the node's Docker engine.
    Docker,
}

impl DriverKind {
    /// Every driver, in the order `driver:` lists them in errors.
    pub const ALL: [DriverKind; 3] = [DriverKind::Exec, DriverKind::Docker, DriverKind::Raw];

    /// The word users write in `driver:`.
    pub fn as_str(&self) -> &'static str {
        match self {
            DriverKind::Raw => "raw",
            DriverKind::Exec => "exec",
            DriverKind::Docker => "docker",
        }
    }

    /// Whether the task runs isolated from the host (namespaces or a
    /// container), so that `baton exec` can enter it.
    pub fn is_isolated(&self) -> bool {
        !matches!(self, DriverKind::Raw)
    }
}

/// What one task runs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskSpec {
    /// Which driver runs it.
    pub driver: DriverKind,
    /// argv; never empty.
    pub command: Vec<String>,
    /// Extra environment.
    pub env: BTreeMap<String, String>,
    /// Working directory (absolute), if set.
    pub workdir: Option<String>,
    /// User name or numeric uid to run as, if set.
    pub user: Option<String>,
    /// Reserved resources.
    pub resources: Resources,
    /// Time between SIGTERM and SIGKILL on stop.
    pub kill_timeout: Duration,
    /// Host ports it needs.
    #[serde(default)]
    pub ports: Vec<PortSpec>,
    /// The image to run (docker driver only, which requires it).
    #[serde(default)]
    pub image: Option<String>,
    /// Capabilities added to the task's empty set (isolated drivers only),
    /// upper-case without the `CAP_` prefix, from [`ALLOWED_CAPABILITIES`].
    #[serde(default)]
    pub capabilities: Vec<String>,
    /// Most processes and threads the task may have at once (isolated drivers).
    #[serde(default = "default_pids_limit")]
    pub pids_limit: u32,
    /// Secrets mounted as files.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<FileMount>,
    /// Environment variables set from secrets: variable -> secret name. The
    /// weaker option: a process's environment is readable by whatever can
    /// read its `/proc/PID/environ`, is inherited by its children, and a
    /// docker engine stores it in the container's configuration on disk.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env_secrets: BTreeMap<String, String>,
    /// Configs mounted as files.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub configs: Vec<FileMount>,
}

impl TaskSpec {
    /// The names of the secrets the task uses (files and variables), sorted,
    /// each once.
    pub fn secret_names(&self) -> std::collections::BTreeSet<&str> {
        self.secrets
            .iter()
            .map(|s| s.name.as_str())
            .chain(self.env_secrets.values().map(String::as_str))
            .collect()
    }

    /// The names of the configs the task mounts, sorted, each once.
    pub fn config_names(&self) -> std::collections::BTreeSet<&str> {
        self.configs.iter().map(|c| c.name.as_str()).collect()
    }

    /// The names of the task's files of `kind`.
    pub fn file_names(&self, kind: FileKind) -> std::collections::BTreeSet<&str> {
        match kind {
            FileKind::Secret => self.secret_names(),
            FileKind::Config => self.config_names(),
        }
    }
}

/// Default of [`TaskSpec::pids_limit`].
pub const DEFAULT_PIDS_LIMIT: u32 = 1024;

/// Bounds of `resources.pids`.
pub const PIDS_LIMIT_RANGE: std::ops::RangeInclusive<u32> = 16..=65_536;

fn default_pids_limit() -> u32 {
    DEFAULT_PIDS_LIMIT
}

/// The capabilities a task may add: Docker's default set, minus none. Anything
/// else (`SYS_ADMIN`, `NET_ADMIN`, `SYS_PTRACE`, …) would let a task reach
/// beyond itself, so a spec naming it is refused.
pub const ALLOWED_CAPABILITIES: &[&str] = &[
    "AUDIT_WRITE",
    "CHOWN",
    "DAC_OVERRIDE",
    "FOWNER",
    "FSETID",
    "KILL",
    "MKNOD",
    "NET_BIND_SERVICE",
    "NET_RAW",
    "SETFCAP",
    "SETGID",
    "SETPCAP",
    "SETUID",
    "SYS_CHROOT",
];

/// Resources a task reserves on its node (and a node's capacity).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Resources {
    /// CPU in millicores (1000 = one core).
    pub cpu_millis: u64,
    /// Memory in bytes.
    pub memory_bytes: u64,
    /// Local disk in bytes.
    #[serde(default)]
    pub disk_bytes: u64,
}

impl Resources {
    /// CPU and memory, no disk.
    pub const fn new(cpu_millis: u64, memory_bytes: u64) -> Resources {
        Resources {
            cpu_millis,
            memory_bytes,
            disk_bytes: 0,
        }
    }

    /// Whether `self` fits inside `free`.
    pub fn fits_in(&self, free: &Resources) -> bool {
        self.cpu_millis <= free.cpu_millis
            && self.memory_bytes <= free.memory_bytes
            && self.disk_bytes <= free.disk_bytes
    }

    /// Component-wise sum, saturating.
    pub fn saturating_add(&self, other: &Resources) -> Resources {
        Resources {
            cpu_millis: self.cpu_millis.saturating_add(other.cpu_millis),
            memory_bytes: self.memory_bytes.saturating_add(other.memory_bytes),
            disk_bytes: self.disk_bytes.saturating_add(other.disk_bytes),
        }
    }

    /// Component-wise difference, saturating at zero.
    pub fn saturating_sub(&self, other: &Resources) -> Resources {
        Resources {
            cpu_millis: self.cpu_millis.saturating_sub(other.cpu_millis),
            memory_bytes: self.memory_bytes.saturating_sub(other.memory_bytes),
            disk_bytes: self.disk_bytes.saturating_sub(other.disk_bytes),
        }
    }

    /// Component-wise minimum.
    pub fn min(&self, other: &Resources) -> Resources {
        Resources {
            cpu_millis: self.cpu_millis.min(other.cpu_millis),
            memory_bytes: self.memory_bytes.min(other.memory_bytes),
            disk_bytes: self.disk_bytes.min(other.disk_bytes),
        }
    }
}

/// When a finished task is replaced.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestartCondition {
    /// After every exit (a batch task that exited 0 counts as done, not restarted).
    Always,
    /// After a non-zero exit, a signal or a start failure.
    OnFailure,
    /// Never.
    Never,
}

impl RestartCondition {
    /// The word users write in `restart.policy`.
    pub fn as_str(&self) -> &'static str {
        match self {
            RestartCondition::Always => "always",
            RestartCondition::OnFailure => "on-failure",
            RestartCondition::Never => "never",
        }
    }
}

/// Restart policy with exponential backoff.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestartPolicy {
    /// When to restart.
    pub condition: RestartCondition,
    /// Restarts of one slot before it is `failed`; 0 means no limit.
    pub max_attempts: u32,
    /// Delay before the first restart; doubled on each further one.
    pub delay: Duration,
    /// Cap of the doubled delay.
    pub max_delay: Duration,
}

impl RestartPolicy {
    /// Backoff before restart number `attempt` (1-based): `delay * 2^(attempt-1)`,
    /// capped at `max_delay`.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let shift = attempt.saturating_sub(1).min(31);
        let factor = 1u32 << shift;
        self.delay
            .checked_mul(factor)
            .unwrap_or(self.max_delay)
            .min(self.max_delay.max(self.delay))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_caps() {
        let policy = RestartPolicy {
            condition: RestartCondition::Always,
            max_attempts: 0,
            delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(30),
        };
        let got: Vec<u64> = (1..=7).map(|a| policy.backoff(a).as_secs()).collect();
        assert_eq!(got, vec![1, 2, 4, 8, 16, 30, 30]);
        assert_eq!(policy.backoff(1000), Duration::from_secs(30));
    }
}
