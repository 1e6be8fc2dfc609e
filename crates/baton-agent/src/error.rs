//! The agent's one error type.

use std::io;
use std::path::{Path, PathBuf};

use baton_spec::DriverKind;
use nix::errno::Errno;

/// Everything that can go wrong in the agent.
///
/// Two tiers, as the rest of Baton: the `Start*`, `UnknownUser`, `NotRoot` and
/// `DriverUnavailable` variants describe one task that cannot run (the task is
/// reported `failed` with this message and the agent carries on); `Io` and
/// `Record` on the agent's own data directory at start-up, and `Config`,
/// mean this node is broken and [`crate::Agent::run`] returns them.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// A file system operation on the agent's data failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done (`create`, `read`, `rename`, ...).
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// A persisted record could not be read back.
    #[error("bad record {path}: {reason}")]
    Record {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The task's process could not be started.
    #[error("start failed: {what}: {reason}")]
    StartFailed {
        /// The program or directory that could not be used.
        what: String,
        /// Why, as the operating system says it (`No such file or directory`).
        reason: String,
    },
    /// The spec names a user this host does not know.
    #[error("start failed: unknown user {user}")]
    UnknownUser {
        /// The user as written in the spec.
        user: String,
    },
    /// The spec asks for another user, and only root may switch users.
    #[error("start failed: cannot run as user {user}: the agent is not root")]
    NotRoot {
        /// The user as written in the spec.
        user: String,
    },
    /// The task needs a driver this node does not offer.
    #[error("start failed: driver {} is not enabled on this node", .driver.as_str())]
    DriverUnavailable {
        /// The driver.
        driver: DriverKind,
    },
    /// The agent's configuration is unusable (e.g. an invalid label).
    #[error("config: {0}")]
    Config(String),
    /// Signalling or waiting for a task's process failed.
    #[error("process {pid}: {reason}")]
    Process {
        /// The host pid.
        pid: u32,
        /// What failed.
        reason: String,
    },
}

impl AgentError {
    /// An [`AgentError::Io`] for `path`.
    pub(crate) fn io(op: &'static str, path: &Path, source: io::Error) -> AgentError {
        AgentError::Io {
            op,
            path: path.to_owned(),
            source,
        }
    }
}

/// The operating system's words for an I/O error, without the `(os error N)`
/// suffix std adds: `No such file or directory`.
pub(crate) fn describe_io(err: &io::Error) -> String {
    match err.raw_os_error() {
        Some(code) => Errno::from_raw(code).desc().to_owned(),
        None => err.to_string(),
    }
}
