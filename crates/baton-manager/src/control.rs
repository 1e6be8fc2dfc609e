//! The control loop: reconcile + schedule over a snapshot, propose the plan.
//!
//! It runs after every applied change and when the earliest restart backoff
//! expires. The pure work ([`baton_sched::plan`]) runs on a blocking thread so a
//! large pass never stalls the runtime. Passes are sequential, and each waits
//! for its plan to be applied, so a pass always sees the previous one's result
//! (no slot is ever filled twice).

use std::sync::Arc;
use std::time::Duration;

use baton_state::{Command, Event};
use baton_store::{Store, StoreError};
use tokio_util::sync::CancellationToken;

use crate::now;

/// Runs the control loop until `shutdown` is cancelled.
pub async fn run(store: Arc<dyn Store>, shutdown: CancellationToken) {
    let mut changes = store.subscribe();
    loop {
        changes.borrow_and_update();
        let snapshot = store.snapshot();
        let now = now();
        let seed: u64 = rand::random();
        let pass =
            tokio::task::spawn_blocking(move || baton_sched::plan(&snapshot.state, now, seed));
        let output = match pass.await {
            Ok(output) => output,
            Err(e) => {
                tracing::error!(error = %e, "scheduler pass panicked");
                return;
            }
        };
        let mut progressed = false;
        if !output.plan.is_empty() {
            let n_create = output.plan.create.len();
            let n_stop = output.plan.stop.len();
            match store
                .propose(Command::ApplyPlan {
                    plan: output.plan,
                    now,
                })
                .await
            {
                Ok(applied) => {
                    progressed = applied
                        .events
                        .iter()
                        .any(|e| !matches!(e, Event::Ignored { .. }));
                    tracing::debug!(index = applied.index, n_create, n_stop, "plan applied");
                }
                Err(StoreError::Unavailable(reason)) => {
                    tracing::info!(%reason, "control loop stopping: store unavailable");
                    return;
                }
                Err(e) => tracing::error!(error = %e, "plan not applied"),
            }
        }
        if progressed {
            continue;
        }
        let wakeup = output
            .next_wakeup
            .map(|at| Duration::from_millis(at.millis_since(now)))
            // Nothing scheduled: still look again now and then, as a safety net.
            .unwrap_or(Duration::from_secs(30));
        tokio::select! {
            () = shutdown.cancelled() => return,
            changed = changes.changed() => if changed.is_err() { return },
            () = tokio::time::sleep(wakeup) => {}
        }
    }
}
