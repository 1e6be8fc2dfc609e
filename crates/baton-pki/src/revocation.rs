//! Revoked identities: the node ids whose certificates are refused.
//!
//! Revocation is by node id, not by certificate serial. `baton node rm` knows
//! the node id; a node renews its certificate every 45 to 72 days, so one node
//! has several serials over its life, and a list of serials would need every
//! serial ever issued recorded and would miss a certificate issued after the
//! removal (say by a CSR in flight). Revoking the id refuses all of them at
//! once. This relies on an invariant of the cluster: node ids are assigned by
//! the cluster, random, and never reused.
//!
//! The check matches the id whatever role the certificate carries (a user
//! name on an admin certificate is in the same field): when in doubt, refuse.
//! The TLS handshake has already checked the chain; this list is consulted on
//! every call after it, since a handshake check alone would not cut off a
//! connection that was already open.

use std::collections::BTreeSet;

use crate::PeerIdentity;

/// The set of revoked node ids. Pure data: the manager keeps it in its
/// replicated state and hands a copy to whatever checks peers.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RevocationList {
    node_ids: BTreeSet<String>,
}

impl RevocationList {
    /// An empty list.
    pub fn new() -> RevocationList {
        RevocationList::default()
    }

    /// Revokes `node_id`. Returns whether it was not revoked before.
    pub fn revoke(&mut self, node_id: impl Into<String>) -> bool {
        self.node_ids.insert(node_id.into())
    }

    /// Whether the certificate of `peer` must be refused.
    pub fn is_revoked(&self, peer: &PeerIdentity) -> bool {
        self.contains(&peer.node_id)
    }

    /// Whether `node_id` is revoked.
    pub fn contains(&self, node_id: &str) -> bool {
        self.node_ids.contains(node_id)
    }

    /// How many ids are revoked.
    pub fn len(&self) -> usize {
        self.node_ids.len()
    }

    /// Whether no id is revoked.
    pub fn is_empty(&self) -> bool {
        self.node_ids.is_empty()
    }

    /// The revoked ids, in order.
    pub fn iter(&self) -> impl Iterator<Item = &str> {
        self.node_ids.iter().map(String::as_str)
    }
}

impl<S: Into<String>> FromIterator<S> for RevocationList {
    fn from_iter<I: IntoIterator<Item = S>>(iter: I) -> RevocationList {
        RevocationList {
            node_ids: iter.into_iter().map(Into::into).collect(),
        }
    }
}

impl<S: Into<String>> Extend<S> for RevocationList {
    fn extend<I: IntoIterator<Item = S>>(&mut self, iter: I) {
        self.node_ids.extend(iter.into_iter().map(Into::into));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Role;

    fn peer(node_id: &str, role: Role) -> PeerIdentity {
        PeerIdentity {
            node_id: node_id.to_owned(),
            role,
            cluster_id: "c1".to_owned(),
            not_after: 1_800_000_000,
        }
    }

    #[test]
    fn revoked_node_is_refused_and_others_are_not() {
        let mut list = RevocationList::new();
        assert!(!list.is_revoked(&peer("node-a", Role::Worker)));
        assert!(list.revoke("node-a"));
        assert!(!list.revoke("node-a"), "second revocation changes nothing");
        assert!(list.is_revoked(&peer("node-a", Role::Worker)));
        assert!(list.is_revoked(&peer("node-a", Role::Manager)));
        assert!(list.is_revoked(&peer("node-a", Role::Admin)));
        assert!(!list.is_revoked(&peer("node-b", Role::Worker)));
        assert!(!list.is_revoked(&peer("node-a2", Role::Worker)));
        assert!(!list.is_revoked(&peer("NODE-A", Role::Worker)));
    }

    #[test]
    fn list_collects_extends_and_iterates_in_order() {
        let mut list: RevocationList = ["n3", "n1"].into_iter().collect();
        list.extend(["n2", "n1"]);
        assert_eq!(list.iter().collect::<Vec<_>>(), vec!["n1", "n2", "n3"]);
        assert_eq!(list.len(), 3);
        assert!(!list.is_empty());
        assert!(list.contains("n2"));
        assert!(RevocationList::new().is_empty());
    }
}
