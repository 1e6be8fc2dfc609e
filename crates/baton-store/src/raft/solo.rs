//! The transport of a member that is alone in its Raft cluster and has no
//! way to reach anyone: every call says so. Tools and tests use it; managers
//! use the cluster port's transport even when alone, so that others can join.

use super::transport::{RaftRequest, RaftResponse, RaftTransport, Unreached};

/// A transport with no peers.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoPeers;

#[async_trait::async_trait]
impl RaftTransport for NoPeers {
    async fn call(
        &self,
        target: u64,
        _addr: &str,
        _request: RaftRequest,
    ) -> Result<RaftResponse, Unreached> {
        Err(Unreached {
            target: super::node_id(target),
            reason: "this member has no transport to other managers".to_owned(),
        })
    }
}
