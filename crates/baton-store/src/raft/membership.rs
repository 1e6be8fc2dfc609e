//! Changing who the managers are, from any member: a change asked of a
//! follower is forwarded to the leader (only a leader changes the
//! membership), like a proposal. Changes that would leave the voters unable
//! to form a majority are refused before anything is changed.

use std::collections::BTreeSet;

use openraft::ChangeMembers;

use super::transport::{MembershipChange, ProposeError, RaftRequest, RaftResponse};
use super::{RaftStatus, RaftStore, membership_error, node_id};
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

fn unavailable(e: StoreError) -> ProposeError {
    match e {
        StoreError::Rejected(refused) => ProposeError::Rejected(refused),
        StoreError::Unavailable(reason) | StoreError::Fatal(reason) => {
            ProposeError::Unavailable(reason)
        }
    }
}

impl RaftStore {
    /// Makes `change` on the leader, wherever it is asked: forwarded when
    /// this member does not lead. Returns once the new membership is
    /// committed (for an addition: once the new member has caught up and
    /// votes).
    pub async fn change_membership(&self, change: MembershipChange) -> Result<(), StoreError> {
        let status = self.status();
        let leader = status.leader;
        if leader == Some(self.id) {
            return self
                .change_membership_here(change)
                .await
                .map_err(|e| StoreError::Unavailable(e.to_string()));
        }
        let Some((leader, addr)) = leader.and_then(|id| {
            status
                .members
                .iter()
                .find(|m| m.id == id)
                .map(|m| (id, m.addr.clone()))
        }) else {
            return Err(StoreError::Unavailable(
                "no leader at the moment".to_owned(),
            ));
        };
        match self
            .transport
            .call(leader, &addr, RaftRequest::Membership(change))
            .await
            .map_err(|e| StoreError::Unavailable(e.to_string()))?
        {
            RaftResponse::Membership(Ok(())) => Ok(()),
            RaftResponse::Membership(Err(ProposeError::NotLeader(_))) => Err(
                StoreError::Unavailable("the leader changed; retry".to_owned()),
            ),
            RaftResponse::Membership(Err(e)) => Err(StoreError::Unavailable(e.to_string())),
            RaftResponse::Stopped(reason) => Err(StoreError::Unavailable(reason)),
            other => Err(StoreError::Unavailable(format!(
                "unexpected answer from the leader: {other:?}"
            ))),
        }
    }

    /// Makes `change` if this member leads.
    pub(crate) async fn change_membership_here(
        &self,
        change: MembershipChange,
    ) -> Result<(), ProposeError> {
        let status = self.status();
        if status.leader != Some(self.id) {
            return Err(ProposeError::NotLeader(status.leader));
        }
        let member = |id: u64| status.members.iter().find(|m| m.id == id);
        match change {
            MembershipChange::Add { id, addr } => {
                if member(id).is_some_and(|m| m.voter && m.addr == addr) {
                    return Ok(());
                }
                self.add_member(id, &addr).await.map_err(unavailable)
            }
            MembershipChange::Remove { id } => {
                if member(id).is_none() {
                    return Ok(());
                }
                self.remove_member(id).await.map_err(unavailable)
            }
            MembershipChange::Demote { id } => {
                let Some(m) = member(id) else {
                    return Err(ProposeError::Unavailable(format!(
                        "{} is not a manager",
                        node_id(id)
                    )));
                };
                if !m.voter {
                    return Ok(());
                }
                if let Some(why) = quorum_loss(&status, id, "demoting") {
                    return Err(ProposeError::Unavailable(why));
                }
                self.raft
                    .change_membership(ChangeMembers::RemoveVoters(BTreeSet::from([id])), true)
                    .await
                    .map_err(|e| unavailable(membership_error(e)))?;
                tracing::info!(member = %node_id(id), "manager demoted to standby");
                Ok(())
            }
            MembershipChange::Promote { id } => {
                let Some(m) = member(id) else {
                    return Err(ProposeError::Unavailable(format!(
                        "{} is not a manager",
                        node_id(id)
                    )));
                };
                if m.voter {
                    return Ok(());
                }
                self.raft
                    .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), false)
                    .await
                    .map_err(|e| unavailable(membership_error(e)))?;
                tracing::info!(member = %node_id(id), "standby manager promoted to voter");
                Ok(())
            }
        }
    }
}
