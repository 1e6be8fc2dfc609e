//! A task's log file: `task.log`, size-capped, rotated to `task.log.1`.
//!
//! Both stdout and stderr of a task go through one [`LogWriter`], so their
//! order is kept (at the granularity of the pipe reads). The file never grows
//! past the cap: a write that would cross it is split, the full file is renamed
//! to `task.log.1` (replacing the previous one) and a new `task.log` begins.
//! So one task uses at most twice the cap on disk.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::fs::{File, OpenOptions};
use tokio::io::AsyncWriteExt;
use tokio::sync::Mutex;

use crate::error::AgentError;

/// Name of the current log file in a task directory.
pub const LOG_FILE: &str = "task.log";
/// Name of the previous (rotated) log file in a task directory.
pub const ROTATED_LOG_FILE: &str = "task.log.1";

/// A shared handle to a task's rotating log.
#[derive(Clone, Debug)]
pub struct LogWriter {
    inner: Arc<Mutex<RotatingLog>>,
}

#[derive(Debug)]
struct RotatingLog {
    path: PathBuf,
    rotated: PathBuf,
    file: File,
    size: u64,
    max_bytes: u64,
}

impl LogWriter {
    /// Opens (appending) `dir/task.log`, rotated at `max_bytes` (at least 1).
    pub async fn open(dir: &Path, max_bytes: u64) -> Result<LogWriter, AgentError> {
        let path = dir.join(LOG_FILE);
        let file = open_append(&path).await?;
        let size = file
            .metadata()
            .await
            .map_err(|e| AgentError::io("stat", &path, e))?
            .len();
        Ok(LogWriter {
            inner: Arc::new(Mutex::new(RotatingLog {
                rotated: dir.join(ROTATED_LOG_FILE),
                path,
                file,
                size,
                max_bytes: max_bytes.max(1),
            })),
        })
    }

    /// Appends `bytes`, rotating as often as the cap requires. Returns once the
    /// bytes are in the file, so a reader sees them.
    pub async fn write(&self, mut bytes: &[u8]) -> Result<(), AgentError> {
        let mut log = self.inner.lock().await;
        while !bytes.is_empty() {
            if log.size >= log.max_bytes {
                log.rotate().await?;
            }
            let room = usize::try_from(log.max_bytes - log.size).unwrap_or(usize::MAX);
            let (now, rest) = bytes.split_at(room.min(bytes.len()));
            let path = log.path.clone();
            log.file
                .write_all(now)
                .await
                .map_err(|e| AgentError::io("write", &path, e))?;
            // tokio hands writes to a blocking thread; flushing waits for them.
            log.file
                .flush()
                .await
                .map_err(|e| AgentError::io("write", &path, e))?;
            log.size += now.len() as u64;
            bytes = rest;
        }
        Ok(())
    }
}

impl RotatingLog {
    async fn rotate(&mut self) -> Result<(), AgentError> {
        tokio::fs::rename(&self.path, &self.rotated)
            .await
            .map_err(|e| AgentError::io("rename", &self.path, e))?;
        self.file = open_append(&self.path).await?;
        self.size = 0;
        Ok(())
    }
}

/// Opens a log file for appending, never through a symlink and never
/// anything but a regular file: a task whose directory it can write must not
/// make the agent append its output to another file (`task.log` ->
/// `/etc/shadow`) or block on a FIFO.
async fn open_append(path: &Path) -> Result<File, AgentError> {
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .custom_flags(no_follow_flags())
        .open(path)
        .await
        .map_err(|e| AgentError::io("open", path, e))?;
    let meta = file
        .metadata()
        .await
        .map_err(|e| AgentError::io("stat", path, e))?;
    if !meta.is_file() {
        return Err(AgentError::io(
            "open",
            path,
            std::io::Error::other("not a regular file"),
        ));
    }
    Ok(file)
}

/// `O_NOFOLLOW | O_NONBLOCK`: a symlink fails to open (ELOOP) and a FIFO
/// does not block the open (regular files ignore O_NONBLOCK).
pub(crate) fn no_follow_flags() -> i32 {
    (nix::fcntl::OFlag::O_NOFOLLOW | nix::fcntl::OFlag::O_NONBLOCK).bits()
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn a_symlink_planted_as_the_log_is_not_followed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let victim = dir.path().join("victim");
        std::fs::write(&victim, b"precious").expect("victim");
        let task = dir.path().join("task");
        std::fs::create_dir(&task).expect("task dir");
        std::os::unix::fs::symlink(&victim, task.join(LOG_FILE)).expect("symlink");
        let err = LogWriter::open(&task, 1 << 20).await.expect_err("refused");
        assert!(err.to_string().contains("task.log"), "{err}");
        assert_eq!(std::fs::read(&victim).expect("victim"), b"precious");
    }

    #[tokio::test]
    async fn a_fifo_planted_as_the_log_is_refused_without_blocking() {
        let dir = tempfile::tempdir().expect("tempdir");
        nix::unistd::mkfifo(&dir.path().join(LOG_FILE), nix::sys::stat::Mode::S_IRWXU)
            .expect("mkfifo");
        // Refused at once (no reader: ENXIO; with one: not a regular file).
        let err = LogWriter::open(dir.path(), 1 << 20)
            .await
            .expect_err("refused");
        assert!(err.to_string().contains("task.log"), "{err}");
    }

    use super::*;

    #[tokio::test]
    async fn rotates_at_the_cap_exactly() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = LogWriter::open(dir.path(), 10).await.expect("open");
        log.write(b"0123456").await.expect("write");
        log.write(b"789abcdefghijklmnopqrstu").await.expect("write");
        // 31 bytes with a cap of 10: three full files, the first two rotated away
        // (each replacing the previous task.log.1), one byte in the current file.
        let current = std::fs::read(dir.path().join(LOG_FILE)).expect("read");
        let rotated = std::fs::read(dir.path().join(ROTATED_LOG_FILE)).expect("read");
        assert_eq!(rotated, b"klmnopqrst");
        assert_eq!(current, b"u");
    }

    #[tokio::test]
    async fn reopening_continues_the_size_count() {
        let dir = tempfile::tempdir().expect("tempdir");
        LogWriter::open(dir.path(), 4)
            .await
            .expect("open")
            .write(b"abc")
            .await
            .expect("write");
        let log = LogWriter::open(dir.path(), 4).await.expect("reopen");
        log.write(b"de").await.expect("write");
        let rotated = std::fs::read(dir.path().join(ROTATED_LOG_FILE)).expect("read");
        assert_eq!(rotated, b"abcd");
        let current = std::fs::read(dir.path().join(LOG_FILE)).expect("read");
        assert_eq!(current, b"e");
    }
}
