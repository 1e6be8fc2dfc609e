//! Cluster identity and membership: the cluster record, join-token digests,
//! admitted nodes, revocations, node availability.
//!
//! A node's id is assigned by the cluster at admission and never reused: a
//! removed node's id goes to the revocation set, and its certificate is
//! refused from then on (the transport checks [`State::is_revoked`]).

use std::collections::BTreeSet;

use super::State;
use crate::command::Event;
use crate::ids::{NodeId, Timestamp};
use crate::objects::{Cluster, Member, NodeAvailability, NodeRole, RootRotation};
use crate::state::ApplyError;

/// The shortest node certificate lifetime [`crate::Command::SetCertValidity`]
/// accepts: certificates count whole seconds. Short lifetimes are allowed on
/// purpose, so tests can watch certificates rotate.
pub const MIN_CERT_VALIDITY: std::time::Duration = std::time::Duration::from_secs(1);

impl State {
    /// The cluster identity, once created.
    pub fn cluster(&self) -> Option<&Cluster> {
        self.cluster.as_ref()
    }

    /// A member.
    pub fn member(&self, id: &NodeId) -> Option<&Member> {
        self.members.get(id)
    }

    /// All members, by id.
    pub fn members(&self) -> impl Iterator<Item = &Member> {
        self.members.values()
    }

    /// Whether a node id was revoked by removal.
    pub fn is_revoked(&self, id: &NodeId) -> bool {
        self.revoked.contains(id)
    }

    /// Every revoked node id.
    pub fn revoked(&self) -> BTreeSet<NodeId> {
        self.revoked.iter().cloned().collect()
    }

    pub(super) fn init_cluster(&mut self, cluster: Cluster) -> Result<Vec<Event>, ApplyError> {
        if self.cluster.is_some() {
            return Err(ApplyError::ClusterExists);
        }
        let id = cluster.id.clone();
        self.cluster = Some(cluster);
        Ok(vec![Event::ClusterCreated { id }])
    }

    pub(super) fn rotate_join_token(
        &mut self,
        role: NodeRole,
        digest: String,
    ) -> Result<Vec<Event>, ApplyError> {
        let cluster = self.cluster.as_mut().ok_or(ApplyError::NoCluster)?;
        match role {
            NodeRole::Worker => cluster.worker_token_digest = digest,
            NodeRole::Manager => cluster.manager_token_digest = digest,
        }
        Ok(vec![Event::JoinTokenRotated { role }])
    }

    pub(super) fn set_cert_validity(
        &mut self,
        validity: std::time::Duration,
    ) -> Result<Vec<Event>, ApplyError> {
        if validity < MIN_CERT_VALIDITY {
            return Err(ApplyError::CertValidityTooShort {
                millis: validity.as_millis(),
            });
        }
        let cluster = self.cluster.as_mut().ok_or(ApplyError::NoCluster)?;
        if cluster.cert_validity == validity {
            return Ok(Vec::new());
        }
        cluster.cert_validity = validity;
        Ok(vec![Event::CertValidityChanged { validity }])
    }

    pub(super) fn set_unlock_key(
        &mut self,
        key: Option<crate::secret::Secret>,
    ) -> Result<Vec<Event>, ApplyError> {
        let cluster = self.cluster.as_mut().ok_or(ApplyError::NoCluster)?;
        if cluster.unlock_key == key {
            return Ok(Vec::new());
        }
        let autolock = key.is_some();
        cluster.unlock_key = key;
        Ok(vec![Event::UnlockKeyChanged { autolock }])
    }

    /// The members that still hold a certificate from the old root during a
    /// root rotation (empty when none runs).
    pub fn rotation_pending(&self) -> Vec<NodeId> {
        let Some(rotation) = self.cluster.as_ref().and_then(|c| c.root_rotation.as_ref()) else {
            return Vec::new();
        };
        self.members
            .values()
            .filter(|m| !m.cert_root.eq_ignore_ascii_case(&rotation.new_root_digest))
            .map(|m| m.id.clone())
            .collect()
    }

    pub(super) fn start_root_rotation(
        &mut self,
        rotation: RootRotation,
    ) -> Result<Vec<Event>, ApplyError> {
        let cluster = self.cluster.as_mut().ok_or(ApplyError::NoCluster)?;
        if cluster.root_ca_key.is_none() {
            return Err(ApplyError::ExternalCaRotation);
        }
        if let Some(running) = &cluster.root_rotation {
            return Err(ApplyError::RotationInProgress {
                new_root_digest: running.new_root_digest.clone(),
            });
        }
        let new_root_digest = rotation.new_root_digest.clone();
        cluster.root_rotation = Some(rotation);
        Ok(vec![Event::RootRotationStarted { new_root_digest }])
    }

    pub(super) fn finish_root_rotation(
        &mut self,
        new_root_digest: &str,
    ) -> Result<Vec<Event>, ApplyError> {
        let no_such = || ApplyError::NoSuchRotation {
            new_root_digest: new_root_digest.to_owned(),
        };
        let cluster = self.cluster.as_ref().ok_or(ApplyError::NoCluster)?;
        let rotation = cluster.root_rotation.as_ref().ok_or_else(no_such)?;
        if !rotation
            .new_root_digest
            .eq_ignore_ascii_case(new_root_digest)
        {
            return Err(no_such());
        }
        let pending = self.rotation_pending();
        if !pending.is_empty() {
            return Err(ApplyError::RotationPending { pending });
        }
        let cluster = self.cluster.as_mut().ok_or(ApplyError::NoCluster)?;
        let rotation = cluster.root_rotation.take().ok_or_else(no_such)?;
        cluster.root_ca_pem = rotation.new_root_pem.clone();
        cluster.root_digest = rotation.new_root_digest.clone();
        cluster.root_ca_key = Some(rotation.new_root_key.clone());
        Ok(vec![Event::RootRotationFinished {
            root_digest: rotation.new_root_digest,
        }])
    }

    pub(super) fn admit_node(
        &mut self,
        id: NodeId,
        role: NodeRole,
        cert_not_after: Timestamp,
        cert_root: String,
        now: Timestamp,
    ) -> Result<Vec<Event>, ApplyError> {
        if self.cluster.is_none() {
            return Err(ApplyError::NoCluster);
        }
        if self.members.contains_key(&id) || self.revoked.contains(&id) {
            return Err(ApplyError::NodeIdTaken { id });
        }
        self.members.insert(
            id.clone(),
            Member {
                id: id.clone(),
                role,
                admitted_at: now,
                cert_not_after,
                cert_root,
                cluster_addr: None,
                api_url: None,
            },
        );
        Ok(vec![Event::NodeAdmitted { id, role }])
    }

    pub(super) fn renew_node_cert(
        &mut self,
        id: &NodeId,
        cert_not_after: Timestamp,
        cert_root: String,
    ) -> Result<Vec<Event>, ApplyError> {
        let member = self
            .members
            .get_mut(id)
            .ok_or_else(|| ApplyError::NotAMember { id: id.clone() })?;
        member.cert_not_after = cert_not_after;
        member.cert_root = cert_root;
        Ok(vec![Event::NodeCertRenewed { id: id.clone() }])
    }

    pub(super) fn set_manager_addresses(
        &mut self,
        id: &NodeId,
        cluster: String,
        api: String,
    ) -> Result<Vec<Event>, ApplyError> {
        let member = self
            .members
            .get_mut(id)
            .filter(|m| m.role == NodeRole::Manager)
            .ok_or_else(|| ApplyError::NotAMember { id: id.clone() })?;
        if member.cluster_addr.as_deref() == Some(cluster.as_str())
            && member.api_url.as_deref() == Some(api.as_str())
        {
            return Ok(Vec::new());
        }
        member.cluster_addr = Some(cluster);
        member.api_url = Some(api);
        Ok(vec![Event::ManagerAddressesChanged { id: id.clone() }])
    }

    pub(super) fn remove_node(
        &mut self,
        id: &NodeId,
        now: Timestamp,
    ) -> Result<Vec<Event>, ApplyError> {
        if !self.members.contains_key(id) && !self.nodes.contains_key(id) {
            return Err(ApplyError::NodeNotFound { id: id.clone() });
        }
        let mut events = if self.nodes.contains_key(id) {
            // Its unfinished tasks are lost and get replaced elsewhere.
            self.node_down(id, now)?
        } else {
            Vec::new()
        };
        self.nodes.remove(id);
        self.members.remove(id);
        self.revoked.insert(id.clone());
        events.push(Event::NodeRemoved { id: id.clone() });
        Ok(events)
    }

    pub(super) fn set_node_availability(
        &mut self,
        id: &NodeId,
        availability: NodeAvailability,
        deadline: Option<Timestamp>,
    ) -> Result<Vec<Event>, ApplyError> {
        let node = self
            .nodes
            .get_mut(id)
            .ok_or_else(|| ApplyError::NodeNotFound { id: id.clone() })?;
        let deadline = deadline.filter(|_| availability == NodeAvailability::Drain);
        if node.availability == availability && node.drain_deadline == deadline {
            return Ok(Vec::new());
        }
        node.availability = availability;
        node.drain_deadline = deadline;
        Ok(vec![Event::NodeAvailabilityChanged {
            id: id.clone(),
            availability,
        }])
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::command::Command;
    use crate::secret::Secret;

    fn cluster() -> Cluster {
        Cluster {
            id: "c1".to_owned(),
            root_ca_pem: "-----BEGIN CERTIFICATE-----".to_owned(),
            root_digest: "01".repeat(32),
            root_ca_key: Some(Secret::new("old key".to_owned())),
            external_ca: None,
            root_rotation: None,
            worker_token_digest: "aa".repeat(32),
            manager_token_digest: "bb".repeat(32),
            cert_validity: Duration::from_secs(90 * 86_400),
            created_at: Timestamp(1),
            unlock_key: None,
        }
    }

    fn admit(state: &mut State, id: &str) -> Result<Vec<Event>, ApplyError> {
        state.apply(Command::AdmitNode {
            id: NodeId(id.to_owned()),
            role: NodeRole::Worker,
            cert_not_after: Timestamp(100),
            cert_root: "01".repeat(32),
            now: Timestamp(2),
        })
    }

    fn rotation() -> RootRotation {
        RootRotation {
            new_root_pem: "-----BEGIN CERTIFICATE----- new".to_owned(),
            new_root_digest: "02".repeat(32),
            new_root_key: Secret::new("new key".to_owned()),
            cross_signed_pem: "-----BEGIN CERTIFICATE----- cross".to_owned(),
            started_at: Timestamp(5),
        }
    }

    fn renew(state: &mut State, id: &str, root: &str) -> Result<Vec<Event>, ApplyError> {
        state.apply(Command::RenewNodeCert {
            id: NodeId(id.to_owned()),
            cert_not_after: Timestamp(200),
            cert_root: root.to_owned(),
        })
    }

    #[test]
    fn a_root_rotation_finishes_only_once_every_member_moved() {
        let mut state = State::default();
        state
            .apply(Command::InitCluster { cluster: cluster() })
            .expect("init");
        admit(&mut state, "n1").expect("admit");
        admit(&mut state, "n2").expect("admit");
        let old = "01".repeat(32);
        let new = "02".repeat(32);
        assert_eq!(state.rotation_pending(), Vec::<NodeId>::new());
        state
            .apply(Command::StartRootRotation {
                rotation: rotation(),
            })
            .expect("start");
        let c = state.cluster().expect("cluster");
        assert_eq!(c.issuing_root_digest(), new);
        assert!(c.trusts_root(&old) && c.trusts_root(&new));
        assert!(c.trust_pem().contains("new") && c.trust_pem().starts_with("-----BEGIN"));
        assert_eq!(
            state.apply(Command::StartRootRotation {
                rotation: rotation()
            }),
            Err(ApplyError::RotationInProgress {
                new_root_digest: new.clone()
            })
        );
        renew(&mut state, "n1", &new).expect("renew");
        let refused = state.apply(Command::FinishRootRotation {
            new_root_digest: new.clone(),
        });
        assert_eq!(
            refused,
            Err(ApplyError::RotationPending {
                pending: vec![NodeId("n2".to_owned())]
            })
        );
        assert!(refused.expect_err("pending").to_string().contains("n2"));
        assert_eq!(
            state.apply(Command::FinishRootRotation {
                new_root_digest: "03".repeat(32)
            }),
            Err(ApplyError::NoSuchRotation {
                new_root_digest: "03".repeat(32)
            })
        );
        // A node that never moves can be removed; then the rotation finishes.
        state
            .apply(Command::RemoveNode {
                id: NodeId("n2".to_owned()),
                now: Timestamp(6),
            })
            .expect("remove");
        assert_eq!(
            state.apply(Command::FinishRootRotation {
                new_root_digest: new.clone()
            }),
            Ok(vec![Event::RootRotationFinished {
                root_digest: new.clone()
            }])
        );
        let c = state.cluster().expect("cluster");
        assert_eq!(
            (c.root_digest.as_str(), c.issuing_root_digest()),
            (new.as_str(), new.as_str())
        );
        assert!(!c.trusts_root(&old));
        assert_eq!(c.root_ca_key.as_ref().map(Secret::expose), Some("new key"));
        assert_eq!(c.trust_pem(), "-----BEGIN CERTIFICATE----- new");
        assert!(!format!("{c:?}").contains("new key"));
    }

    #[test]
    fn an_external_ca_cluster_cannot_rotate_its_root() {
        let mut state = State::default();
        let mut external = cluster();
        external.root_ca_key = None;
        external.external_ca = Some(crate::objects::ExternalCa {
            url: "https://ca.example:8888/api/v1/cfssl/authsign".to_owned(),
            auth_key: Secret::new("00ff".to_owned()),
        });
        state
            .apply(Command::InitCluster { cluster: external })
            .expect("init");
        assert_eq!(
            state.apply(Command::StartRootRotation {
                rotation: rotation()
            }),
            Err(ApplyError::ExternalCaRotation)
        );
    }

    #[test]
    fn cluster_is_created_once_and_tokens_rotate() {
        let mut state = State::default();
        assert_eq!(
            state.apply(Command::RotateJoinToken {
                role: NodeRole::Worker,
                digest: "cc".repeat(32)
            }),
            Err(ApplyError::NoCluster)
        );
        assert_eq!(
            state.apply(Command::InitCluster { cluster: cluster() }),
            Ok(vec![Event::ClusterCreated {
                id: "c1".to_owned()
            }])
        );
        assert_eq!(
            state.apply(Command::InitCluster { cluster: cluster() }),
            Err(ApplyError::ClusterExists)
        );
        state
            .apply(Command::RotateJoinToken {
                role: NodeRole::Worker,
                digest: "cc".repeat(32),
            })
            .expect("rotate");
        let c = state.cluster().expect("cluster");
        assert_eq!(c.worker_token_digest, "cc".repeat(32));
        assert_eq!(c.manager_token_digest, "bb".repeat(32));
    }

    #[test]
    fn admitted_ids_are_unique_and_removed_ids_stay_revoked() {
        let mut state = State::default();
        assert_eq!(admit(&mut state, "n1"), Err(ApplyError::NoCluster));
        state
            .apply(Command::InitCluster { cluster: cluster() })
            .expect("init");
        assert_eq!(
            admit(&mut state, "n1"),
            Ok(vec![Event::NodeAdmitted {
                id: NodeId("n1".to_owned()),
                role: NodeRole::Worker
            }])
        );
        assert_eq!(
            admit(&mut state, "n1"),
            Err(ApplyError::NodeIdTaken {
                id: NodeId("n1".to_owned())
            })
        );
        state
            .apply(Command::RenewNodeCert {
                id: NodeId("n1".to_owned()),
                cert_not_after: Timestamp(200),
                cert_root: "01".repeat(32),
            })
            .expect("renew");
        assert_eq!(
            state
                .member(&NodeId("n1".to_owned()))
                .map(|m| m.cert_not_after),
            Some(Timestamp(200))
        );
        let events = state
            .apply(Command::RemoveNode {
                id: NodeId("n1".to_owned()),
                now: Timestamp(3),
            })
            .expect("remove");
        assert_eq!(
            events,
            vec![Event::NodeRemoved {
                id: NodeId("n1".to_owned())
            }]
        );
        assert!(state.is_revoked(&NodeId("n1".to_owned())));
        assert!(state.member(&NodeId("n1".to_owned())).is_none());
        assert_eq!(
            admit(&mut state, "n1"),
            Err(ApplyError::NodeIdTaken {
                id: NodeId("n1".to_owned())
            })
        );
        assert_eq!(
            state.apply(Command::RenewNodeCert {
                id: NodeId("n1".to_owned()),
                cert_not_after: Timestamp(300),
                cert_root: "01".repeat(32),
            }),
            Err(ApplyError::NotAMember {
                id: NodeId("n1".to_owned())
            })
        );
    }

    #[test]
    fn cert_validity_changes_only_with_a_cluster_and_never_to_zero() {
        let mut state = State::default();
        let hour = Duration::from_secs(3600);
        assert_eq!(
            state.apply(Command::SetCertValidity { validity: hour }),
            Err(ApplyError::NoCluster)
        );
        state
            .apply(Command::InitCluster { cluster: cluster() })
            .expect("init");
        assert_eq!(
            state.apply(Command::SetCertValidity {
                validity: Duration::ZERO
            }),
            Err(ApplyError::CertValidityTooShort { millis: 0 })
        );
        assert_eq!(
            state.apply(Command::SetCertValidity {
                validity: Duration::from_millis(999)
            }),
            Err(ApplyError::CertValidityTooShort { millis: 999 })
        );
        assert_eq!(
            state.apply(Command::SetCertValidity { validity: hour }),
            Ok(vec![Event::CertValidityChanged { validity: hour }])
        );
        assert_eq!(
            state.apply(Command::SetCertValidity { validity: hour }),
            Ok(vec![]),
            "the same value again changes nothing"
        );
        assert_eq!(state.cluster().map(|c| c.cert_validity), Some(hour));
        // Seconds-long lifetimes are allowed: tests rotate certificates with them.
        state
            .apply(Command::SetCertValidity {
                validity: Duration::from_secs(1),
            })
            .expect("one second");
    }

    #[test]
    fn the_unlock_key_is_set_replaced_and_cleared_and_never_shown() {
        let mut state = State::default();
        let key = |k: &str| Command::SetUnlockKey {
            key: Some(Secret::new(k.to_owned())),
        };
        assert_eq!(state.apply(key("k1")), Err(ApplyError::NoCluster));
        state
            .apply(Command::InitCluster { cluster: cluster() })
            .expect("init");
        assert_eq!(
            state.apply(key("BATON-UNLOCK-1-abc")),
            Ok(vec![Event::UnlockKeyChanged { autolock: true }])
        );
        assert_eq!(state.apply(key("BATON-UNLOCK-1-abc")), Ok(Vec::new()));
        let shown = format!("{:?} {:?}", key("BATON-UNLOCK-1-abc"), state.cluster());
        assert!(!shown.contains("BATON-UNLOCK-1-abc"), "{shown}");
        assert_eq!(
            state.apply(Command::SetUnlockKey { key: None }),
            Ok(vec![Event::UnlockKeyChanged { autolock: false }])
        );
        assert_eq!(state.cluster().and_then(|c| c.unlock_key.clone()), None);
    }

    #[test]
    fn set_cert_validity_is_persisted_by_name() {
        let cmd = Command::SetCertValidity {
            validity: Duration::from_secs(12),
        };
        let json = serde_json::to_string(&cmd).expect("encode");
        assert_eq!(
            json,
            r#"{"cmd":"set_cert_validity","validity":{"secs":12,"nanos":0}}"#
        );
        let back: Command = serde_json::from_str(&json).expect("decode");
        assert_eq!(back, cmd);
    }

    #[test]
    fn only_members_register_once_a_cluster_exists_and_revoked_ids_never() {
        let node = |id: &str| crate::objects::Node {
            drain_deadline: None,
            labels: Default::default(),
            operator_labels: Default::default(),
            id: NodeId(id.to_owned()),
            hostname: "h".to_owned(),
            capacity: baton_spec::Resources::default(),
            drivers: std::collections::BTreeSet::new(),
            state: crate::objects::NodeState::Down,
            availability: NodeAvailability::Active,
            registered_at: Timestamp(0),
            state_since: Timestamp(0),
            address: None,
            version: String::new(),
        };
        let mut state = State::default();
        state
            .apply(Command::RegisterNode {
                node: node("dev"),
                now: Timestamp(1),
            })
            .expect("no cluster yet: any node registers");
        state
            .apply(Command::InitCluster { cluster: cluster() })
            .expect("init");
        assert_eq!(
            state.apply(Command::RegisterNode {
                node: node("stranger"),
                now: Timestamp(2),
            }),
            Err(ApplyError::NotAMember {
                id: NodeId("stranger".to_owned())
            })
        );
        admit(&mut state, "n1").expect("admit");
        state
            .apply(Command::RegisterNode {
                node: node("n1"),
                now: Timestamp(3),
            })
            .expect("member registers");
        state
            .apply(Command::RemoveNode {
                id: NodeId("n1".to_owned()),
                now: Timestamp(4),
            })
            .expect("remove");
        assert_eq!(
            state.apply(Command::RegisterNode {
                node: node("n1"),
                now: Timestamp(5),
            }),
            Err(ApplyError::NotAMember {
                id: NodeId("n1".to_owned())
            })
        );
        assert!(state.node(&NodeId("n1".to_owned())).is_none());
    }

    #[test]
    fn only_managers_announce_addresses_and_an_unchanged_announce_changes_nothing() {
        let mut state = State::default();
        state
            .apply(Command::InitCluster { cluster: cluster() })
            .expect("init");
        admit(&mut state, "w1").expect("admit worker");
        state
            .apply(Command::AdmitNode {
                id: NodeId("m1".to_owned()),
                role: NodeRole::Manager,
                cert_not_after: Timestamp(10),
                cert_root: String::new(),
                now: Timestamp(1),
            })
            .expect("admit manager");
        let announce = |id: &str, api: &str| Command::SetManagerAddresses {
            id: NodeId(id.to_owned()),
            cluster: "10.0.0.1:7451".to_owned(),
            api: api.to_owned(),
        };
        assert_eq!(
            state.apply(announce("w1", "https://10.0.0.1:7450")),
            Err(ApplyError::NotAMember {
                id: NodeId("w1".to_owned())
            })
        );
        assert_eq!(
            state.apply(announce("m1", "https://10.0.0.1:7450")),
            Ok(vec![Event::ManagerAddressesChanged {
                id: NodeId("m1".to_owned())
            }])
        );
        assert_eq!(
            state.apply(announce("m1", "https://10.0.0.1:7450")),
            Ok(vec![])
        );
        let m1 = state.member(&NodeId("m1".to_owned())).expect("member");
        assert_eq!(m1.api_url.as_deref(), Some("https://10.0.0.1:7450"));
        assert_eq!(m1.cluster_addr.as_deref(), Some("10.0.0.1:7451"));
    }

    #[test]
    fn membership_survives_serialization() {
        let mut state = State::default();
        state
            .apply(Command::InitCluster { cluster: cluster() })
            .expect("init");
        admit(&mut state, "n1").expect("admit");
        admit(&mut state, "n2").expect("admit");
        state
            .apply(Command::RemoveNode {
                id: NodeId("n2".to_owned()),
                now: Timestamp(3),
            })
            .expect("remove");
        let json = serde_json::to_string(&state).expect("encode");
        let back: State = serde_json::from_str(&json).expect("decode");
        assert_eq!(back.cluster(), state.cluster());
        assert_eq!(back.members().count(), 1);
        assert!(back.is_revoked(&NodeId("n2".to_owned())));
    }
}
