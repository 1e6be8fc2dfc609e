//! The control loop: reconcile + schedule over a snapshot, propose the plan.
//!
//! It runs after every applied change and when the earliest restart backoff
//! expires. The pure work ([`baton_sched::plan`]) runs on a blocking thread so a
//! large pass never stalls the runtime. Passes are sequential, and each waits
//! for its plan to be applied, so a pass always sees the previous one's result
//! (no slot is ever filled twice). A large plan is committed in parts of at
//! most [`MAX_PLAN_ITEMS`] items.

use std::sync::Arc;
use std::time::Duration;

use baton_state::{ChangeMark, Command, Event};
use baton_store::{Store, StoreError};
use tokio_util::sync::CancellationToken;

use crate::now;

/// Most items (tasks created, placed, stopped…) in one proposed command: a
/// pass over a large cluster commits its plan in parts of this size, so no
/// log entry grows past a few megabytes and followers apply it in steps.
/// Every item is re-checked when applied, so the parts are safe on their own.
pub const MAX_PLAN_ITEMS: usize = 5_000;

/// Runs the control loop until `shutdown` is cancelled.
pub async fn run(store: Arc<dyn Store>, shutdown: CancellationToken) {
    let mut changes = store.subscribe();
    // The state's mark at the last pass whose plan was wholly applied: the
    // next pass reconciles only the jobs changed since (its cost follows the
    // changes, not the cluster's size). None: a full pass.
    let mut mark: Option<ChangeMark> = None;
    loop {
        changes.borrow_and_update();
        let snapshot = store.snapshot();
        let now = now();
        let seed: u64 = rand::random();
        let planned_at = snapshot.state.change_mark();
        let since = mark;
        let pass = tokio::task::spawn_blocking(move || {
            baton_sched::plan_since(&snapshot.state, since, now, seed)
        });
        let output = match pass.await {
            Ok(output) => output,
            Err(e) => {
                tracing::error!(error = %e, "scheduler pass panicked");
                return;
            }
        };
        let mut progressed = false;
        mark = Some(planned_at);
        for plan in output.plan.into_batches(MAX_PLAN_ITEMS) {
            if plan.is_empty() {
                continue;
            }
            let n_items = plan.len();
            match store.propose(Command::ApplyPlan { plan, now }).await {
                Ok(applied) => {
                    progressed |= applied
                        .events
                        .iter()
                        .any(|e| !matches!(e, Event::Ignored { .. }));
                    for event in &applied.events {
                        if let Event::TaskPreempted { id, by } = event {
                            tracing::info!(task = %id, by = %by, "task preempted");
                        }
                    }
                    tracing::debug!(index = applied.index, n_items, "plan applied");
                }
                Err(StoreError::Unavailable(reason)) => {
                    tracing::info!(%reason, "control loop stopping: store unavailable");
                    return;
                }
                Err(e) => {
                    tracing::error!(error = %e, "plan not applied");
                    mark = None;
                    break;
                }
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
