//! Streams a task's log to the dispatcher for one [`LogRequest`].
//!
//! Sends `task.log.1` then `task.log` as [`LogEvent::Data`] chunks of at most
//! 64 KiB. With `follow`, it then polls the file every 200 ms for new bytes
//! (polling keeps this free of inotify limits and is cheap at this rate),
//! follows rotation by draining the renamed file through the handle it holds
//! before opening the new `task.log`, and ends once the task's log is closed
//! and fully sent. It stops as soon as the reader is gone.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use baton_rpc::{Dispatcher, LogEvent, LogRequest};
use baton_state::NodeId;
use tokio::fs::File;
use tokio::io::AsyncReadExt;
use tokio::sync::watch;

use crate::error::describe_io;
use crate::log_file::{LOG_FILE, ROTATED_LOG_FILE};

/// Largest [`LogEvent::Data`] chunk.
pub(crate) const MAX_CHUNK: usize = 64 << 10;

/// How often a followed log is checked for new bytes.
const POLL_INTERVAL: Duration = Duration::from_millis(200);

/// Why streaming stopped early.
enum Stop {
    /// The reader is gone: say nothing more.
    ReaderGone,
    /// The log could not be read: tell the reader.
    Failed(String),
}

/// Streams the log in `dir` for `request`. `closed` becomes (or is) `true`
/// once nothing more will be written to the log.
pub(crate) async fn stream_log(
    dispatcher: Arc<dyn Dispatcher>,
    node: NodeId,
    request: LogRequest,
    dir: &Path,
    mut closed: watch::Receiver<bool>,
) {
    let sender = Sender {
        dispatcher: dispatcher.as_ref(),
        node: &node,
        request: request.id,
    };
    let last = match stream(&sender, dir, request.follow, &mut closed).await {
        Ok(()) => LogEvent::End,
        Err(Stop::ReaderGone) => return,
        Err(Stop::Failed(message)) => LogEvent::Error(message),
    };
    // The reader may be gone by now too; there is nobody left to tell.
    let _ = sender.send(last).await;
}

struct Sender<'a> {
    dispatcher: &'a dyn Dispatcher,
    node: &'a NodeId,
    request: u64,
}

impl Sender<'_> {
    async fn send(&self, event: LogEvent) -> Result<(), Stop> {
        self.dispatcher
            .send_logs(self.node, self.request, event)
            .await
            .map_err(|_| Stop::ReaderGone)
    }
}

async fn stream(
    sender: &Sender<'_>,
    dir: &Path,
    follow: bool,
    closed: &mut watch::Receiver<bool>,
) -> Result<(), Stop> {
    let current_path = dir.join(LOG_FILE);
    // Open the current file before the rotated one: if a rotation happens in
    // between, the handle already held is the file that became `task.log.1`,
    // which the identity check below then skips instead of sending twice.
    let mut current = open(&current_path).await?;
    if let Some(mut rotated) = open(&dir.join(ROTATED_LOG_FILE)).await? {
        let current_id = match &current {
            Some(file) => Some(identity(file).await?),
            None => None,
        };
        if current_id != Some(identity(&rotated).await?) {
            drain(sender, &mut rotated).await?;
        }
    }
    loop {
        // Read the flag before draining: if it was already set, every byte was
        // in the file before this drain.
        let finished = *closed.borrow_and_update();
        if let Some(file) = current.as_mut() {
            drain(sender, file).await?;
        }
        if follow && let Some(new) = rotated_away(&current_path, current.as_ref()).await? {
            // Whatever was written to the old file before the rename is read
            // through its handle; new writes go to the new file.
            if let Some(file) = current.as_mut() {
                drain(sender, file).await?;
            }
            current = Some(new);
            continue;
        }
        if !follow || finished {
            return Ok(());
        }
        tokio::select! {
            () = tokio::time::sleep(POLL_INTERVAL) => {}
            // A closed channel means the task's runner is gone: the next loop
            // reads the flag (or the last value) and finishes.
            _ = closed.changed() => {}
        }
    }
}

/// If `path` now names another file than `held`, opens it.
async fn rotated_away(path: &Path, held: Option<&File>) -> Result<Option<File>, Stop> {
    let Some(file) = open(path).await? else {
        return Ok(None);
    };
    let held_id = match held {
        Some(held) => Some(identity(held).await?),
        None => None,
    };
    if held_id == Some(identity(&file).await?) {
        Ok(None)
    } else {
        Ok(Some(file))
    }
}

/// Opens a log for reading, never through a symlink (a task that can write
/// its directory must not make `baton logs` read another file) and never
/// anything but a regular file.
async fn open(path: &Path) -> Result<Option<File>, Stop> {
    let opened = tokio::fs::OpenOptions::new()
        .read(true)
        .custom_flags(crate::log_file::no_follow_flags())
        .open(path)
        .await;
    match opened {
        Ok(file) => {
            let regular = file.metadata().await.is_ok_and(|m| m.is_file());
            if regular {
                Ok(Some(file))
            } else {
                Err(Stop::Failed(format!(
                    "cannot read {}: not a regular file",
                    path.display()
                )))
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        // O_NOFOLLOW's answer for a symlink.
        Err(e) if e.raw_os_error() == Some(nix::libc::ELOOP) => Err(Stop::Failed(format!(
            "cannot read {}: it is a symbolic link, which is never followed",
            path.display()
        ))),
        Err(e) => Err(Stop::Failed(format!(
            "cannot read {}: {}",
            path.display(),
            describe_io(&e)
        ))),
    }
}

async fn identity(file: &File) -> Result<(u64, u64), Stop> {
    let meta = file
        .metadata()
        .await
        .map_err(|e| Stop::Failed(format!("cannot read log: {}", describe_io(&e))))?;
    Ok((meta.dev(), meta.ino()))
}

/// Sends everything from the file's position to its end.
async fn drain(sender: &Sender<'_>, file: &mut File) -> Result<(), Stop> {
    let mut buf = vec![0u8; MAX_CHUNK];
    loop {
        let n = file
            .read(&mut buf)
            .await
            .map_err(|e| Stop::Failed(format!("cannot read log: {}", describe_io(&e))))?;
        if n == 0 {
            return Ok(());
        }
        sender.send(LogEvent::Data(buf[..n].to_vec())).await?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_symlink_planted_as_the_log_is_not_read() {
        let dir = tempfile::tempdir().expect("tempdir");
        let secret = dir.path().join("secret");
        std::fs::write(&secret, b"host secret").expect("secret");
        let log = dir.path().join(LOG_FILE);
        std::os::unix::fs::symlink(&secret, &log).expect("symlink");
        match open(&log).await {
            Err(Stop::Failed(message)) => assert!(message.contains("task.log"), "{message}"),
            Err(_) => panic!("refused for another reason"),
            Ok(file) => panic!("followed the symlink: {file:?}"),
        }
        // A regular log still opens, and a missing one is no error.
        std::fs::remove_file(&log).expect("rm");
        assert!(
            open(&log)
                .await
                .map_err(|_| "failed")
                .expect("missing")
                .is_none()
        );
        std::fs::write(&log, b"line\n").expect("log");
        assert!(
            open(&log)
                .await
                .map_err(|_| "failed")
                .expect("opens")
                .is_some()
        );
    }
}
