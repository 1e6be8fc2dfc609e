//! Changing who the managers are, from any member: a change asked of a
//! follower is forwarded to the leader (only a leader changes the
//! membership), like a proposal. Changes that would leave the voters unable
//! to form a majority are refused before anything is changed.

use std::collections::BTreeSet;

use openraft::ChangeMembers;

use super::transport::{MembershipChange, RaftRequest, RaftResponse};
use super::{RaftStatus, RaftStore, membership_error, node_id, unexpected};
use crate::StoreError;

/// Why removing `id`'s vote would lose quorum, if it would: the voters left
/// must include a reachable majority of themselves (as this member sees
/// reachability), and at least one must be left.
pub(crate) fn quorum_loss(status: &RaftStatus, id: u64, what: &str) -> Option<String> {
    let voters: BTreeSet<u64> = status
        .members
        .iter()
        .filter(|m| m.voter)
        .map(|m| m.id)
        .collect();
    if !voters.contains(&id) {
        return None;
    }
    let left = voters.len() - 1;
    if left == 0 {
        return Some(format!(
            "{what} manager {} would leave no voting manager",
            node_id(id)
        ));
    }
    let reachable = status
        .members
        .iter()
        .filter(|m| m.voter && m.id != id && m.reachable)
        .count();
    let needed = left / 2 + 1;
    (reachable < needed).then(|| {
        format!(
            "{what} manager {} would lose quorum: {reachable} of the {left} voting managers left are reachable, {needed} needed",
            node_id(id)
        )
    })
}

impl RaftStore {
    /// Makes `change` on the leader, wherever it is asked: forwarded when
    /// this member does not lead. Returns once the new membership is
    /// committed (for an addition: once the new member has caught up and
    /// votes).
    pub async fn change_membership(&self, change: MembershipChange) -> Result<(), StoreError> {
        if self.is_leader() {
            return self.change_membership_here(change).await;
        }
        match self.call_leader(RaftRequest::Membership(change)).await? {
            RaftResponse::Membership(answer) => Ok(answer?),
            other => Err(unexpected(&other)),
        }
    }

    /// Makes `change`; this member must lead.
    async fn change_membership_here(&self, change: MembershipChange) -> Result<(), StoreError> {
        let status = self.status();
        let member = |id: u64| {
            status
                .members
                .iter()
                .find(|m| m.id == id)
                .ok_or_else(|| StoreError::Refused(format!("{} is not a manager", node_id(id))))
        };
        match change {
            MembershipChange::Add { id, addr } => {
                if member(id).is_ok_and(|m| m.voter && m.addr == addr) {
                    return Ok(());
                }
                self.add_member(id, &addr).await
            }
            MembershipChange::Remove { id } => {
                if member(id).is_err() {
                    return Ok(());
                }
                self.remove_member(id).await
            }
            MembershipChange::Demote { id } => {
                if !member(id)?.voter {
                    return Ok(());
                }
                if let Some(why) = quorum_loss(&status, id, "demoting") {
                    return Err(StoreError::Refused(why));
                }
                // No longer a voter, kept as a learner: a standby.
                self.raft
                    .change_membership(ChangeMembers::RemoveVoters(BTreeSet::from([id])), true)
                    .await
                    .map_err(membership_error)?;
                tracing::info!(member = %node_id(id), "manager demoted to standby");
                Ok(())
            }
            MembershipChange::Promote { id } => {
                if member(id)?.voter {
                    return Ok(());
                }
                self.raft
                    .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), false)
                    .await
                    .map_err(membership_error)?;
                tracing::info!(member = %node_id(id), "standby manager promoted to voter");
                Ok(())
            }
        }
    }
}
