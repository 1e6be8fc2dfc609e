//! The network of a member that is alone in its Raft cluster: there is no
//! peer to reach, so every call says so. Managers that join others use the
//! cluster port's mutual-TLS transport instead.

use std::future::Future;

use openraft::OptionalSend;
use openraft::error::{RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::v2::RaftNetworkV2;
use openraft::network::{RPCOption, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse,
};

use super::types::{TypeConfig, Vote};

/// A network with no peers.
#[derive(Clone, Copy, Debug, Default)]
pub struct SoloNetwork;

fn alone() -> Unreachable<TypeConfig> {
    Unreachable::from_string("this manager is alone in its raft cluster")
}

impl RaftNetworkFactory<TypeConfig> for SoloNetwork {
    type Network = SoloNetwork;

    async fn new_client(
        &mut self,
        _target: u64,
        _node: &openraft::impls::BasicNode,
    ) -> SoloNetwork {
        SoloNetwork
    }
}

impl RaftNetworkV2<TypeConfig> for SoloNetwork {
    type SnapshotData = std::io::Cursor<Vec<u8>>;

    async fn append_entries(
        &mut self,
        _rpc: AppendEntriesRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        Err(RPCError::Unreachable(alone()))
    }

    async fn vote(
        &mut self,
        _rpc: VoteRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        Err(RPCError::Unreachable(alone()))
    }

    async fn full_snapshot(
        &mut self,
        _vote: Vote,
        _snapshot: openraft::alias::SnapshotOf<TypeConfig, Self::SnapshotData>,
        _cancel: impl Future<Output = ReplicationClosed> + OptionalSend + 'static,
        _option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        Err(StreamingError::Unreachable(alone()))
    }
}
