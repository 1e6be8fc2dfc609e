//! The type configuration Baton's Raft runs with.

use std::fmt;

use baton_state::{ApplyError, Command, Event};
use serde::{Deserialize, Serialize};

openraft::declare_raft_types!(
    /// Baton's Raft types: commands in, apply outcomes out, managers as
    /// members (their node id read as a 64-bit number).
    pub TypeConfig:
        D = Proposal,
        R = Outcome,
        NodeId = u64,
        Node = openraft::impls::BasicNode,
);

/// A command as it travels through the Raft log.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Proposal(pub Command);

impl fmt::Display for Proposal {
    /// The command's kind only: contents (env values, keys) stay out of logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0.kind())
    }
}

/// What applying a proposal did: its events, or why it changed nothing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outcome(pub Result<Vec<Event>, ApplyError>);

/// A log id of this configuration.
pub type LogId = openraft::alias::LogIdOf<TypeConfig>;
/// An entry of this configuration.
pub type Entry = openraft::alias::EntryOf<TypeConfig>;
/// The vote of this configuration.
pub type Vote = openraft::alias::VoteOf<TypeConfig>;
/// The stored membership of this configuration.
pub type StoredMembership = openraft::alias::StoredMembershipOf<TypeConfig>;
/// Snapshot metadata of this configuration.
pub type SnapshotMeta = openraft::alias::SnapshotMetaOf<TypeConfig>;

/// The Raft id of a manager: its node id (16 hex digits) as a number.
pub fn raft_id(node_id: &str) -> Option<u64> {
    (node_id.len() == 16)
        .then(|| u64::from_str_radix(node_id, 16).ok())
        .flatten()
}

/// The node id of a Raft id (16 lowercase hex digits).
pub fn node_id(raft_id: u64) -> String {
    format!("{raft_id:016x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_ids_and_raft_ids_map_both_ways() {
        assert_eq!(raft_id("00000000000000ff"), Some(255));
        assert_eq!(node_id(255), "00000000000000ff");
        assert_eq!(raft_id(&node_id(u64::MAX)), Some(u64::MAX));
        assert_eq!(raft_id("ff"), None, "not 16 digits");
        assert_eq!(raft_id("zzzzzzzzzzzzzzzz"), None);
    }

    #[test]
    fn a_proposal_displays_its_kind_only() {
        let cmd = Command::RotateJoinToken {
            role: baton_state::NodeRole::Worker,
            digest: "secret-digest".to_owned(),
        };
        assert_eq!(Proposal(cmd).to_string(), "rotate_join_token");
    }
}
