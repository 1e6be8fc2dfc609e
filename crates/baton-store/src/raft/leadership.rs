//! Who leads, as the manager's leader-only work needs it: whether this
//! member leads, the leader's address, waiting for that to change, and
//! waiting at start until the member has recovered the committed state.

use std::time::Duration;

use openraft::rt::WatchReceiver;

use super::{RaftStatus, RaftStore, fatal, node_id};
use crate::{Store, StoreError};

/// How often a start that waits for a quorum says so.
const WAIT_NOTICE: Duration = Duration::from_secs(10);

impl RaftStore {
    /// Whether this member belongs to a cluster (it was initialised, or
    /// added by a leader); a new member added to none is not.
    pub async fn is_member(&self) -> Result<bool, StoreError> {
        self.raft
            .is_initialized()
            .await
            .map_err(|e| fatal("raft", e))
    }

    /// Waits, as long as it takes, until this member has recovered at least
    /// the state it had applied before a restart: a leader is known and
    /// the cluster's commit, re-established by it, is applied here. A
    /// member of several cannot get there without a majority of them, so
    /// the wait is logged every [`WAIT_NOTICE`].
    pub async fn wait_ready(&self) -> Result<(), StoreError> {
        loop {
            match self.raft.wait_for_recovery(Some(WAIT_NOTICE)).await {
                Ok(_) => break,
                Err(openraft::metrics::WaitError::Timeout(..)) => {
                    let status = self.status();
                    tracing::warn!(
                        managers = status.members.len(),
                        state = %status.state,
                        "waiting for a majority of the managers to elect a leader"
                    );
                }
                Err(e) => return Err(fatal("waiting for a leader", e)),
            }
        }
        tracing::info!(
            member = %node_id(self.id),
            index = self.snapshot().index,
            leader = ?self.status().leader.map(node_id),
            "store ready"
        );
        Ok(())
    }

    /// Whether this member leads now.
    pub fn is_leader(&self) -> bool {
        self.raft.metrics().borrow_watched().current_leader == Some(self.id)
    }

    /// The leader's Raft id and cluster address, when this member knows them.
    pub fn leader(&self) -> Option<(u64, String)> {
        let status = self.status();
        let leader = status.leader?;
        status
            .members
            .into_iter()
            .find(|m| m.id == leader)
            .map(|m| (leader, m.addr))
    }

    /// The leader's view of the cluster (only it knows which members
    /// answer); this member's own view when the leader cannot be asked
    /// within a second.
    pub async fn leader_status(&self) -> RaftStatus {
        if !self.is_leader()
            && let Ok(Ok(super::RaftResponse::Status(status))) = tokio::time::timeout(
                Duration::from_secs(1),
                self.call_leader(super::RaftRequest::Status),
            )
            .await
        {
            return status;
        }
        self.status()
    }

    /// Waits until this member has applied everything committed before
    /// the call (a linearizable read then sees every acknowledged write):
    /// the leader confirms with a majority that it still leads and names its
    /// commit index (a follower asks it), then this member waits to apply
    /// up to it.
    pub async fn linearizable_read(&self) -> Result<(), StoreError> {
        let index = if self.is_leader() {
            self.read_index_here().await?
        } else {
            match self.call_leader(super::RaftRequest::ReadIndex).await? {
                super::RaftResponse::ReadIndex(answer) => answer?,
                other => return Err(super::unexpected(&other)),
            }
        };
        self.raft
            .wait(Some(Duration::from_secs(10)))
            .applied_index_at_least(Some(index), "a linearizable read")
            .await
            .map_err(|e| StoreError::Unavailable(format!("linearizable read: {e}")))?;
        Ok(())
    }

    /// The read index, if this member leads.
    pub(crate) async fn read_index_here(&self) -> Result<u64, super::ProposeError> {
        use openraft::error::{LinearizableReadError, RaftError};
        match tokio::time::timeout(
            Duration::from_secs(10),
            self.raft
                .ensure_linearizable(openraft::raft::ReadPolicy::ReadIndex),
        )
        .await
        {
            Ok(Ok(read)) => Ok(read.log_id().index()),
            Ok(Err(RaftError::APIError(LinearizableReadError::ForwardToLeader(f)))) => {
                Err(super::ProposeError::NotLeader(f.leader_id))
            }
            Ok(Err(e)) => Err(super::ProposeError::Unavailable(e.to_string())),
            Err(_) => Err(super::ProposeError::Unavailable(
                "the leader could not confirm its leadership within 10s (no majority?)".to_owned(),
            )),
        }
    }

    /// If this member leads, hands the leadership to a reachable voter and
    /// waits (up to `wait`) until another member leads: a graceful stop then
    /// costs the others no election timeout. Returns whether it handed over.
    pub async fn hand_over_leadership(&self, wait: Duration) -> bool {
        let status = self.status();
        if status.leader != Some(self.id) {
            return false;
        }
        let Some(to) = status
            .members
            .iter()
            .find(|m| m.id != self.id && m.voter && m.reachable)
            .map(|m| m.id)
        else {
            return false;
        };
        if self.raft.trigger().transfer_leader(to).await.is_err() {
            return false;
        }
        let handed = self
            .raft
            .wait(Some(wait))
            .metrics(
                |m| m.current_leader.is_some_and(|l| l != self.id),
                "another leader",
            )
            .await
            .is_ok();
        if handed {
            tracing::info!(to = %node_id(to), "leadership handed over");
        }
        handed
    }

    /// The cluster addresses of every member (voters and standbys).
    pub fn member_addrs(&self) -> Vec<String> {
        self.status().members.into_iter().map(|m| m.addr).collect()
    }

    /// A watch on what this member knows of the cluster.
    pub fn watch(&self) -> ClusterWatch {
        ClusterWatch {
            metrics: self.raft.metrics(),
        }
    }
}

/// Wakes up when what a member knows of the cluster changes (see
/// [`RaftStore::watch`]).
pub struct ClusterWatch {
    metrics: openraft::alias::WatchReceiverOf<
        super::TypeConfig,
        openraft::RaftMetrics<super::TypeConfig>,
    >,
}

impl std::fmt::Debug for ClusterWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterWatch").finish_non_exhaustive()
    }
}

impl ClusterWatch {
    /// Resolves when something changed (leader, term, membership,
    /// replication), possibly spuriously; never once Raft has stopped.
    pub async fn changed(&mut self) {
        if self.metrics.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}
