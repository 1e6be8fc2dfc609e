//! What every driver does with a task's output: copy it into the task's
//! log, and wait for the last of it once the task ended.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::task::JoinHandle;

use crate::log_file::LogWriter;

/// How long to wait, after a task ended, for the rest of its output to reach
/// the log. Only a process that escaped the task (left its process group, or
/// a stuck engine) can keep its output open this long.
pub(super) const OUTPUT_GRACE: Duration = Duration::from_secs(2);

/// The copiers of a task's output streams into its log.
#[derive(Debug, Default)]
pub(super) struct Output {
    copiers: Vec<JoinHandle<()>>,
}

impl Output {
    /// Starts copying `from` into `log` until it closes.
    pub(super) fn copy(&mut self, from: impl AsyncRead + Send + Unpin + 'static, log: LogWriter) {
        self.copiers.push(tokio::spawn(copy_output(from, log)));
    }

    /// Waits until every stream has closed, at most [`OUTPUT_GRACE`], and
    /// gives up on the rest. Cancel-safe: it may be dropped and called again.
    pub(super) async fn drain(&mut self, task: &str) {
        let drained = tokio::time::timeout(OUTPUT_GRACE, async {
            // One at a time, removing each once done: a finished JoinHandle
            // must not be polled again if this future is dropped and rerun.
            while let Some(copier) = self.copiers.first_mut() {
                // A copier only ends by returning; a join error means it panicked.
                let _ = copier.await;
                self.copiers.remove(0);
            }
        })
        .await;
        if drained.is_err() {
            tracing::warn!(
                task_id = task,
                "task output still open after the task ended; the rest is dropped"
            );
        }
        for copier in self.copiers.drain(..) {
            copier.abort();
        }
    }
}

/// Copies one output stream into the log until it closes.
async fn copy_output(mut from: impl AsyncRead + Unpin, log: LogWriter) {
    let mut buf = vec![0u8; 16 << 10];
    let mut log_failed = false;
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        // Keep reading even when the log cannot be written (disk full): a task
        // blocked on a full pipe would hang.
        if log_failed {
            continue;
        }
        if let Err(e) = log.write(&buf[..n]).await {
            tracing::warn!(error = %e, "task output is being dropped");
            log_failed = true;
        }
    }
}
