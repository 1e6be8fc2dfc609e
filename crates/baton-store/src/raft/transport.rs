//! How members talk: one request/response seam ([`RaftTransport`]) carries
//! every Raft RPC and every proposal forwarded to the leader, so that the
//! production transport (gRPC over the cluster port's mutual TLS, manager
//! certificates only) and the in-process test transport (whose links can be
//! cut) move the same values and nothing else differs.
//!
//! [`TransportNetwork`] adapts a transport to openraft's network traits; the
//! receiving side is [`super::RaftStore::handle`].

use std::future::Future;
use std::io::Cursor;
use std::sync::Arc;

use baton_state::{ApplyError, Command, Event};
use openraft::OptionalSend;
use openraft::error::{RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::impls::BasicNode;
use openraft::network::v2::RaftNetworkV2;
use openraft::network::{RPCOption, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse,
};
use serde::{Deserialize, Serialize};

use super::types::{SnapshotMeta, TypeConfig, Vote};
use crate::StoreError;

/// A message to another member.
#[derive(Debug, Serialize, Deserialize)]
#[allow(clippy::large_enum_variant)]
pub enum RaftRequest {
    /// Replication (and heartbeats).
    AppendEntries(AppendEntriesRequest<TypeConfig>),
    /// An election.
    Vote(VoteRequest<TypeConfig>),
    /// A pre-vote: would the member vote, without disturbing the term.
    PreVote(VoteRequest<TypeConfig>),
    /// A whole snapshot for a member too far behind for the log.
    Snapshot {
        /// The sender's vote.
        vote: Vote,
        /// What the snapshot covers.
        meta: SnapshotMeta,
        /// The state, JSON.
        data: Vec<u8>,
    },
    /// A command proposed on a follower, for the leader to commit.
    Propose(Command),
    /// A change of the managers asked of a follower, for the leader to make.
    Membership(MembershipChange),
    /// What the receiver knows of the cluster (asked of the leader, which
    /// knows who answers it).
    Status,
    /// The leader's read index: the log index a linearizable read must see
    /// applied (the leader confirmed it still leads).
    ReadIndex,
}

/// A change of who the managers are (see [`super::RaftStore::change_membership`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MembershipChange {
    /// Add a member: a learner until it has caught up, then a voter. Adding
    /// a voter again changes nothing.
    Add {
        /// Its Raft id.
        id: u64,
        /// Its cluster address.
        addr: String,
    },
    /// Remove a member (voter or not).
    Remove {
        /// Its Raft id.
        id: u64,
    },
    /// Make a voter a standby: it keeps a copy of the state and serves it,
    /// but does not vote.
    Demote {
        /// Its Raft id.
        id: u64,
    },
    /// Make a standby a voter again.
    Promote {
        /// Its Raft id.
        id: u64,
    },
}

/// Why a forwarded proposal did not commit.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum ProposeError {
    /// The state machine refused it.
    #[error(transparent)]
    Rejected(#[from] ApplyError),
    /// The receiver is not the leader (it names the leader it knows).
    #[error("not the leader")]
    NotLeader(Option<u64>),
    /// The receiver cannot commit now.
    #[error("{0}")]
    Unavailable(String),
    /// Refused for good ([`StoreError::Refused`]).
    #[error("{0}")]
    Refused(String),
}

/// A store error as it crosses to another member.
impl From<StoreError> for ProposeError {
    fn from(e: StoreError) -> ProposeError {
        match e {
            StoreError::Rejected(refused) => ProposeError::Rejected(refused),
            StoreError::Refused(reason) => ProposeError::Refused(reason),
            StoreError::Unavailable(reason) | StoreError::Fatal(reason) => {
                ProposeError::Unavailable(reason)
            }
        }
    }
}

/// Another member's answer as the asking member reports it.
impl From<ProposeError> for StoreError {
    fn from(e: ProposeError) -> StoreError {
        match e {
            ProposeError::Rejected(refused) => StoreError::Rejected(refused),
            ProposeError::Refused(reason) => StoreError::Refused(reason),
            ProposeError::NotLeader(_) => {
                StoreError::Unavailable("the leader changed; retry".to_owned())
            }
            ProposeError::Unavailable(reason) => StoreError::Unavailable(reason),
        }
    }
}

/// The answer to a [`RaftRequest`].
#[derive(Debug, Serialize, Deserialize)]
pub enum RaftResponse {
    /// To `AppendEntries`.
    AppendEntries(AppendEntriesResponse<TypeConfig>),
    /// To `Vote` and `PreVote`.
    Vote(VoteResponse<TypeConfig>),
    /// To `Snapshot`.
    Snapshot(SnapshotResponse<TypeConfig>),
    /// To `Propose`: the log index and events.
    Proposed(Result<(u64, Vec<Event>), ProposeError>),
    /// To `Membership`.
    Membership(Result<(), ProposeError>),
    /// To `Status`.
    Status(super::RaftStatus),
    /// To `ReadIndex`.
    ReadIndex(Result<u64, ProposeError>),
    /// The receiver's Raft has stopped.
    Stopped(String),
}

/// Why a request got no answer.
#[derive(Clone, Debug, thiserror::Error)]
#[error("manager {target} unreachable: {reason}")]
pub struct Unreached {
    /// The member asked.
    pub target: String,
    /// What happened.
    pub reason: String,
}

/// Carries requests to other members.
#[async_trait::async_trait]
pub trait RaftTransport: Send + Sync + 'static {
    /// Sends `request` to member `target` at `addr`; its answer.
    async fn call(
        &self,
        target: u64,
        addr: &str,
        request: RaftRequest,
    ) -> Result<RaftResponse, Unreached>;
}

/// openraft's network over a [`RaftTransport`].
#[derive(Clone)]
pub struct TransportNetwork {
    transport: Arc<dyn RaftTransport>,
}

impl TransportNetwork {
    /// The network over `transport`.
    pub fn new(transport: Arc<dyn RaftTransport>) -> TransportNetwork {
        TransportNetwork { transport }
    }
}

impl std::fmt::Debug for TransportNetwork {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TransportNetwork").finish_non_exhaustive()
    }
}

/// A connection to one member.
pub struct TransportClient {
    target: u64,
    addr: String,
    transport: Arc<dyn RaftTransport>,
}

impl std::fmt::Debug for TransportClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TransportClient")
            .field("target", &super::node_id(self.target))
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl RaftNetworkFactory<TypeConfig> for TransportNetwork {
    type Network = TransportClient;

    async fn new_client(&mut self, target: u64, node: &BasicNode) -> TransportClient {
        TransportClient {
            target,
            addr: node.addr.clone(),
            transport: self.transport.clone(),
        }
    }
}

fn unreachable(reason: impl std::fmt::Display) -> Unreachable<TypeConfig> {
    Unreachable::from_string(reason)
}

impl TransportClient {
    async fn call(
        &self,
        request: RaftRequest,
        option: &RPCOption,
    ) -> Result<RaftResponse, Unreachable<TypeConfig>> {
        match tokio::time::timeout(
            option.hard_ttl(),
            self.transport.call(self.target, &self.addr, request),
        )
        .await
        {
            Ok(Ok(RaftResponse::Stopped(reason))) => Err(unreachable(reason)),
            Ok(Ok(response)) => Ok(response),
            Ok(Err(e)) => Err(unreachable(e)),
            Err(_) => Err(unreachable(format!(
                "no answer within {:?}",
                option.hard_ttl()
            ))),
        }
    }
}

fn unexpected(response: &RaftResponse) -> Unreachable<TypeConfig> {
    unreachable(format!("unexpected answer {response:?}"))
}

impl RaftNetworkV2<TypeConfig> for TransportClient {
    type SnapshotData = Cursor<Vec<u8>>;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        match self.call(RaftRequest::AppendEntries(rpc), &option).await? {
            RaftResponse::AppendEntries(response) => Ok(response),
            other => Err(RPCError::Unreachable(unexpected(&other))),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        match self.call(RaftRequest::Vote(rpc), &option).await? {
            RaftResponse::Vote(response) => Ok(response),
            other => Err(RPCError::Unreachable(unexpected(&other))),
        }
    }

    async fn pre_vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        match self.call(RaftRequest::PreVote(rpc), &option).await? {
            RaftResponse::Vote(response) => Ok(response),
            other => Err(RPCError::Unreachable(unexpected(&other))),
        }
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: openraft::alias::SnapshotOf<TypeConfig, Self::SnapshotData>,
        cancel: impl Future<Output = ReplicationClosed> + OptionalSend + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let request = RaftRequest::Snapshot {
            vote,
            meta: snapshot.meta,
            data: snapshot.snapshot.into_inner(),
        };
        tokio::select! {
            closed = cancel => Err(StreamingError::Closed(closed)),
            answer = self.call(request, &option) => match answer? {
                RaftResponse::Snapshot(response) => Ok(response),
                other => Err(StreamingError::Unreachable(unexpected(&other))),
            },
        }
    }
}
