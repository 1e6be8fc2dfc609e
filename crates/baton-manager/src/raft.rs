//! Raft between managers over the cluster port: the transport the store
//! uses to reach the other managers ([`GrpcRaftTransport`], mutual TLS with
//! this manager's certificate, trusting only manager certificates of the
//! cluster) and the endpoint that answers them ([`RaftEndpoint`], which the
//! cluster port serves to manager certificates only).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use baton_pki::PeerIdentity;
use baton_rpc::client::RaftClient;
use baton_rpc::server::RaftService;
use baton_rpc::tls::ClientTls;
use baton_state::{NodeId, NodeRole};
use baton_store::Store;
use baton_store::raft::{
    MembershipChange, ProposeError, RaftRequest, RaftResponse, RaftStore, RaftTransport, Unreached,
    node_id,
};
use tonic::Status;
use tonic::transport::Channel;

/// This manager's Raft messages to the others.
#[derive(Default)]
pub struct GrpcRaftTransport {
    /// Set once this manager has its certificate.
    tls: OnceLock<ClientTls>,
    channels: Mutex<HashMap<String, Channel>>,
}

impl std::fmt::Debug for GrpcRaftTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GrpcRaftTransport").finish_non_exhaustive()
    }
}

impl GrpcRaftTransport {
    /// A transport that reaches nobody until [`GrpcRaftTransport::set_tls`].
    pub fn new() -> GrpcRaftTransport {
        GrpcRaftTransport::default()
    }

    /// The TLS configuration to call other managers with (this manager's
    /// certificate, trusting the cluster's managers). Set once.
    pub fn set_tls(&self, tls: ClientTls) {
        let _ = self.tls.set(tls);
    }

    fn channel(&self, addr: &str) -> Result<Channel, String> {
        let tls = self
            .tls
            .get()
            .ok_or_else(|| "this manager has no certificate yet".to_owned())?;
        let mut channels = self.channels.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(channel) = channels.get(addr) {
            return Ok(channel.clone());
        }
        let channel = baton_rpc::transport::connect_lazy(addr, tls).map_err(|e| e.to_string())?;
        channels.insert(addr.to_owned(), channel.clone());
        Ok(channel)
    }
}

#[async_trait::async_trait]
impl RaftTransport for GrpcRaftTransport {
    async fn call(
        &self,
        target: u64,
        addr: &str,
        request: RaftRequest,
    ) -> Result<RaftResponse, Unreached> {
        let unreached = |reason: String| Unreached {
            target: node_id(target),
            reason,
        };
        let json = serde_json::to_vec(&request).map_err(|e| unreached(e.to_string()))?;
        let channel = self.channel(addr).map_err(unreached)?;
        let answer = RaftClient::new(channel)
            .call(json)
            .await
            .map_err(|status| unreached(format!("{addr}: {}", status.message())))?;
        serde_json::from_slice(&answer).map_err(|e| unreached(format!("invalid answer: {e}")))
    }
}

/// Answers the other managers' Raft messages with this manager's store.
#[derive(Default)]
pub struct RaftEndpoint {
    store: OnceLock<Arc<RaftStore>>,
}

impl std::fmt::Debug for RaftEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RaftEndpoint").finish_non_exhaustive()
    }
}

impl RaftEndpoint {
    /// An endpoint answering over `store`.
    pub fn new(store: Arc<RaftStore>) -> RaftEndpoint {
        let endpoint = RaftEndpoint::default();
        let _ = endpoint.store.set(store);
        endpoint
    }
}

#[async_trait::async_trait]
impl RaftService for RaftEndpoint {
    async fn call(&self, from: &PeerIdentity, message: Vec<u8>) -> Result<Vec<u8>, Status> {
        let store = self
            .store
            .get()
            .ok_or_else(|| Status::unavailable("this manager's store is not open yet"))?;
        let request: RaftRequest = serde_json::from_slice(&message).map_err(|e| {
            tracing::warn!(peer = %from.node_id, error = %e, "invalid raft message");
            Status::invalid_argument(format!("invalid raft message: {e}"))
        })?;
        if let RaftRequest::Membership(MembershipChange::Add { id, .. }) = &request
            && let Err(refused) = may_join(store, *id)
        {
            tracing::warn!(peer = %from.node_id, member = %node_id(*id), reason = %refused, "manager not added");
            let response = RaftResponse::Membership(Err(ProposeError::Refused(refused)));
            return serde_json::to_vec(&response).map_err(|e| Status::internal(e.to_string()));
        }
        let response = store.handle(request).await;
        serde_json::to_vec(&response).map_err(|e| Status::internal(e.to_string()))
    }
}

/// Whether member `id` may be added to the managers: only a node the
/// cluster admitted as a manager (with the manager token) and has not
/// removed, as the replicated state says, whoever asks.
fn may_join(store: &RaftStore, id: u64) -> Result<(), String> {
    let node = NodeId(node_id(id));
    let snapshot = store.snapshot();
    let state = &snapshot.state;
    match state.member(&node) {
        Some(member) if member.role == NodeRole::Manager && !state.is_revoked(&node) => Ok(()),
        _ => Err(format!(
            "node {node} is not a manager of this cluster: join with the manager token first"
        )),
    }
}

/// Asks the manager at `addr` to add this manager (`id`, reachable at
/// `advertised`) to the managers, and waits until it votes: a learner
/// first, then a voter once it has caught up (the leader decides; a
/// follower forwards). Retried while no leader can answer; a refusal (not
/// an admitted manager) is final.
pub async fn ask_to_be_added(
    transport: &GrpcRaftTransport,
    addr: &str,
    id: u64,
    advertised: &str,
) -> Result<(), baton_store::StoreError> {
    let mut last = String::new();
    for attempt in 0..30u32 {
        if attempt > 0 {
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        }
        let request = RaftRequest::Membership(MembershipChange::Add {
            id,
            addr: advertised.to_owned(),
        });
        match transport.call(0, addr, request).await {
            Ok(RaftResponse::Membership(Ok(()))) => {
                tracing::info!(via = addr, "added to the managers");
                return Ok(());
            }
            Ok(RaftResponse::Membership(Err(ProposeError::Refused(reason)))) => {
                return Err(baton_store::StoreError::Refused(reason));
            }
            Ok(other) => last = format!("{other:?}"),
            Err(e) => last = e.to_string(),
        }
        tracing::info!(via = addr, reason = %last, "not added to the managers yet; retrying");
    }
    Err(baton_store::StoreError::Unavailable(format!(
        "the managers at {addr} did not add this manager: {last}"
    )))
}
