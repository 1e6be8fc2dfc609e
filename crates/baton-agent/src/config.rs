//! The operator's configuration of an agent.

use std::path::PathBuf;

use baton_spec::Resources;

/// Default size at which a task's log is rotated: 10 MiB.
pub const DEFAULT_LOG_MAX_BYTES: u64 = 10 << 20;

/// Default number of finished tasks whose directory (and log) a node keeps.
pub const DEFAULT_MAX_FINISHED_TASKS: usize = 100;

/// How an agent runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgentConfig {
    /// Where the agent keeps its node id and its tasks' directories
    /// (`tasks/<task_id>/`: working directory, `task.log`, records).
    pub data_dir: PathBuf,
    /// Host name reported to the cluster.
    pub hostname: String,
    /// Offer the `raw` driver (plain processes, no isolation).
    pub enable_raw: bool,
    /// Resources offered to tasks; `None` measures the host (CPUs x 1000
    /// millicores, `MemTotal` bytes, the free space of the filesystem holding
    /// `data_dir`).
    pub capacity: Option<Resources>,
    /// A task's `task.log` is rotated to `task.log.1` when it reaches this size,
    /// so one task uses at most twice this on disk for logs.
    pub log_max_bytes: u64,
    /// Directories of finished tasks kept on this node; the oldest beyond this
    /// number are deleted.
    pub max_finished_tasks: usize,
    /// Labels the node registers with (`--label k=v`).
    pub labels: std::collections::BTreeMap<String, String>,
    /// The IP other hosts reach this node at, given to tasks in
    /// `BATON_ADDR_<NAME>` of their published ports; `None` gives `0.0.0.0`
    /// (every address of the node).
    pub advertise_ip: Option<std::net::IpAddr>,
    /// The `baton` binary, run as `baton shim` for each exec task; `None`
    /// leaves the exec driver off (a library user without the binary).
    pub shim: Option<PathBuf>,
    /// The cgroup under which each exec task gets its own (`<parent>/<task>`).
    pub cgroup_parent: String,
}

/// Default of [`AgentConfig::cgroup_parent`].
pub const DEFAULT_CGROUP_PARENT: &str = "/baton";

impl AgentConfig {
    /// A configuration with the defaults: measured capacity, 10 MiB logs,
    /// 100 finished tasks kept.
    pub fn new(data_dir: PathBuf, hostname: String, enable_raw: bool) -> AgentConfig {
        AgentConfig {
            data_dir,
            hostname,
            enable_raw,
            capacity: None,
            labels: std::collections::BTreeMap::new(),
            advertise_ip: None,
            shim: None,
            cgroup_parent: DEFAULT_CGROUP_PARENT.to_owned(),
            log_max_bytes: DEFAULT_LOG_MAX_BYTES,
            max_finished_tasks: DEFAULT_MAX_FINISHED_TASKS,
        }
    }

    /// `data_dir/tasks`.
    pub(crate) fn tasks_dir(&self) -> PathBuf {
        self.data_dir.join("tasks")
    }

    /// Where each task's tmpfs (its secrets, configs, an exec task's
    /// runtime spec) is mounted while it runs: `run/<task_id>`.
    pub(crate) fn run_dir(&self) -> PathBuf {
        self.data_dir.join("run")
    }
}
