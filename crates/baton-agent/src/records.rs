//! What the agent persists in its data directory, and how: the node id, and per
//! task a `run.json` while its process runs and a `status.json` once it finished.
//!
//! Every file is written atomically (temporary file, fsync, rename, fsync of the
//! directory), so a crash leaves either the old or the new version, never half
//! of one. Records carry a `version` and are read back strictly.

use std::fs;
use std::path::{Path, PathBuf};

use baton_state::{ExitInfo, TaskState};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::error::AgentError;

/// File name of a task's run record.
pub(crate) const RUN_RECORD: &str = "run.json";
/// File name of a task's final status.
pub(crate) const STATUS_RECORD: &str = "status.json";
/// File name of the node id.
const NODE_ID_FILE: &str = "node-id";

/// A task's process, as recorded while it runs: enough to find it again after
/// a crash of the agent, and to tell it from a later process that reused its pid.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RunRecord {
    /// Record format; 1.
    pub version: u32,
    /// Job name (for logs).
    pub job: String,
    /// Host pid, also the process group id (tasks lead their own group).
    pub pid: u32,
    /// Field 22 of `/proc/<pid>/stat`: clock ticks after boot the process started.
    pub start_time: u64,
}

/// How a task ended, as recorded on this node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct StatusRecord {
    /// Record format; 1.
    pub version: u32,
    /// Job name (for logs).
    pub job: String,
    /// Terminal state.
    pub state: TaskState,
    /// Explanation.
    pub message: String,
    /// How the process ended, if it ran.
    pub exit: Option<ExitInfo>,
    /// Milliseconds since the Unix epoch when it ended; orders garbage collection.
    pub finished_at_ms: u64,
}

/// Current version of both records.
pub(crate) const RECORD_VERSION: u32 = 1;

/// Writes `bytes` to `path` atomically: a crash leaves the old content or the new.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), AgentError> {
    baton_files::write_atomic(path, bytes, 0o644).map_err(|e| AgentError::io("write", path, e))
}

/// Writes a record as JSON, atomically.
pub(crate) fn write_record<T: Serialize>(path: &Path, record: &T) -> Result<(), AgentError> {
    let bytes = serde_json::to_vec_pretty(record).map_err(|e| AgentError::Record {
        path: path.to_owned(),
        reason: e.to_string(),
    })?;
    write_atomic(path, &bytes)
}

/// Reads a record; `Ok(None)` if the file does not exist.
pub(crate) fn read_record<T: DeserializeOwned>(path: &Path) -> Result<Option<T>, AgentError> {
    let bytes = match fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(AgentError::io("read", path, e)),
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| AgentError::Record {
            path: path.to_owned(),
            reason: e.to_string(),
        })
}

/// Path of the node id file in `data_dir`.
pub(crate) fn node_id_path(data_dir: &Path) -> PathBuf {
    data_dir.join(NODE_ID_FILE)
}

/// The node id persisted in `data_dir`, created (16 random hex digits) on first use.
pub(crate) fn load_or_create_node_id(data_dir: &Path) -> Result<String, AgentError> {
    let path = node_id_path(data_dir);
    match fs::read_to_string(&path) {
        Ok(text) => {
            let id = text.trim();
            if id.len() == 16 && id.bytes().all(|b| b.is_ascii_hexdigit()) {
                Ok(id.to_owned())
            } else {
                Err(AgentError::Record {
                    path,
                    reason: "expected 16 hex digits".to_owned(),
                })
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let id = format!("{:016x}", rand::random::<u64>());
            write_atomic(&path, format!("{id}\n").as_bytes())?;
            Ok(id)
        }
        Err(e) => Err(AgentError::io("read", &path, e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_id_is_created_once_and_kept() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = load_or_create_node_id(dir.path()).expect("create");
        assert_eq!(first.len(), 16);
        assert!(first.bytes().all(|b| b.is_ascii_hexdigit()));
        let second = load_or_create_node_id(dir.path()).expect("load");
        assert_eq!(first, second);
        // No temporary file is left behind.
        let names: Vec<_> = fs::read_dir(dir.path())
            .expect("read_dir")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("node-id")]);
    }

    #[test]
    fn corrupt_node_id_is_an_error_not_a_new_identity() {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::write(node_id_path(dir.path()), "zz").expect("write");
        let err = load_or_create_node_id(dir.path()).expect_err("corrupt");
        assert!(err.to_string().contains("expected 16 hex digits"), "{err}");
    }

    #[test]
    fn run_record_round_trips() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(RUN_RECORD);
        let record = RunRecord {
            version: RECORD_VERSION,
            job: "web".to_owned(),
            pid: 42,
            start_time: 1234,
        };
        write_record(&path, &record).expect("write");
        assert_eq!(read_record::<RunRecord>(&path).expect("read"), Some(record));
        assert_eq!(
            read_record::<RunRecord>(&dir.path().join("absent")).expect("read"),
            None
        );
    }
}
