//! The node agent: it holds a session with the manager's dispatcher, converges
//! the node's tasks to the assignment set pushed down it, and reports every
//! task state change back.
//!
//! The executor is split engine/runtime: [`step`] is a pure function from the
//! assignment set and the local view to [`Action`]s; [`Agent`] carries them out
//! through a [`Driver`] ([`RawDriver`] for now) and feeds the results back.
//! Each task lives in `data_dir/tasks/<task_id>/` with its rotating `task.log`
//! and small records that let a restarted agent find, and kill, processes
//! left by a crashed one, so a restart neither orphans nor duplicates a task.
//!
//! Architecture invariants: the agent never depends on `baton-store`,
//! `baton-sched` or `baton-manager`, and never lists the cluster: it knows only
//! its own assignments. It starts a task only from state `assigned`; a task the
//! cluster believes started and the agent does not know is reported `lost`,
//! never started again. It never signals a pid whose start time differs from
//! the one it recorded. It logs no environment values.
//!
//! Managers run Raft and only the leader holds sessions: [`managers`] keeps
//! the list of managers the cluster pushes and finds the leader
//! ([`FailoverDispatcher`]).

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod agent;
mod config;
mod driver;
mod error;
mod executor;
mod fingerprint;
pub mod identity;
mod log_file;
mod log_stream;
pub mod managers;
mod process;
mod records;
mod recovery;
mod runner;

pub use agent::{Agent, ClusterUpdate};
pub use config::{
    AgentConfig, DEFAULT_CGROUP_PARENT, DEFAULT_LOG_MAX_BYTES, DEFAULT_MAX_FINISHED_TASKS,
};
pub use driver::{DockerDriver, Driver, ExecDriver, RawDriver, SHIM_COMMAND, TaskHandle, TaskRun};
pub use error::AgentError;
pub use executor::{
    Action, LOST_NOT_RUNNING, LocalTask, SHUTDOWN_BEFORE_START, moves_forward, step,
};
pub use fingerprint::{disk_free, host_capacity, measure_capacity};
pub use identity::{IdentityError, NodeIdentity, load_or_join, renew_loop};
pub use log_file::{LOG_FILE, LogWriter, ROTATED_LOG_FILE};
pub use managers::{FailoverDispatcher, ManagerList};
pub use recovery::LOST_KILLED;
pub use runner::LOST_AGENT_SHUTDOWN;
