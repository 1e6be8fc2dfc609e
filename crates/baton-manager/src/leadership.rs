//! Leader-only work. The control loop (reconciler and scheduler) and the
//! dispatcher's sessions and liveness checks run on the leading manager
//! only, for as long as it leads: they start when this manager becomes the
//! leader, from the replicated state, and stop the moment it is not. Every
//! manager keeps the agents' list of managers up to date, so whoever leads
//! pushes the current one.
//!
//! Certificate signing is not leader-only: any manager signs with the root
//! key in the replicated state, and the admission or renewal it records is
//! a proposal, committed by the leader in log order like any other.

use std::sync::Arc;

use baton_store::Store;
use baton_store::raft::{RaftStore, node_id};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::dispatcher::DispatcherService;

/// One term of leadership: its token and the control loop it runs.
struct Term {
    token: CancellationToken,
    control: JoinHandle<()>,
}

impl Term {
    async fn end(self) {
        self.token.cancel();
        let _ = self.control.await;
    }
}

/// Follows this manager's leadership until `stop`.
pub async fn run(
    raft: Arc<RaftStore>,
    dispatcher: Arc<DispatcherService>,
    stop: CancellationToken,
) {
    let mut watch = raft.watch();
    let mut term: Option<Term> = None;
    let store: Arc<dyn Store> = raft.clone();
    // Raft's metrics change with every heartbeat: act only when who leads
    // or who the managers are changes.
    let mut seen = None;
    loop {
        let now = (raft.is_leader(), raft.leader(), raft.member_addrs());
        if seen.as_ref() != Some(&now) {
            let (leading, leader, members) = now.clone();
            dispatcher.set_managers(members);
            if leading && term.is_none() {
                let token = stop.child_token();
                tracing::info!(
                    member = %node_id(raft.id()),
                    term = raft.status().term,
                    "leading: control loop started, taking agent sessions"
                );
                dispatcher.lead(token.clone());
                let control = tokio::spawn(crate::control::run(store.clone(), token.clone()));
                term = Some(Term { token, control });
            } else if !leading {
                if let Some(ended) = term.take() {
                    tracing::info!("no longer leading: control loop stopped, sessions handed over");
                    ended.end().await;
                }
                dispatcher.follow(leader.map(|(_, addr)| addr));
            }
            seen = Some(now);
        }
        tokio::select! {
            () = stop.cancelled() => break,
            () = watch.changed() => {}
        }
    }
    if let Some(ended) = term.take() {
        ended.end().await;
    }
}
