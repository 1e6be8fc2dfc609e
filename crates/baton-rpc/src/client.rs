//! Clients of the cluster port.
//!
//! - [`GrpcDispatcher`] implements [`Dispatcher`] over a gRPC channel, so the
//!   agent talks to a remote manager through the same trait it uses in
//!   `baton dev`. Failures that are not final (transport errors, timeouts) are
//!   [`RpcError::Unavailable`], which the agent retries.
//! - [`CaClient`] fetches the root, joins and renews; [`join_cluster`] is a
//!   node's whole join, whose first step, [`fetch_root_ca`], fetches the root
//!   over one-way TLS and checks it against the token's digest before
//!   anything secret is sent.

use std::time::Duration;

use baton_state::{NodeId, TaskReport};
use tokio::sync::mpsc;
use tokio_stream::StreamExt as _;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tracing::{debug, error};

use crate::server::{CaError, NODE_ID_METADATA};
use crate::tls::{ClientTls, manager_verifier};
use crate::{
    Dispatcher, ExecEvent, ExecInput, LogEvent, NodeDescription, RpcError, Session, TaskUsage,
    convert, pb, transport,
};

/// Session messages buffered between the network and the agent.
const SESSION_BUFFER: usize = 16;

/// Inputs of one exec session buffered on their way to the command.
const EXEC_BUFFER: usize = 16;

/// A [`Dispatcher`] on the far side of a gRPC channel.
#[derive(Clone, Debug)]
pub struct GrpcDispatcher {
    channel: Channel,
}

impl GrpcDispatcher {
    /// A dispatcher reached through `channel` (see
    /// [`crate::transport::connect`]).
    pub fn new(channel: Channel) -> GrpcDispatcher {
        GrpcDispatcher { channel }
    }

    fn client(&self) -> pb::dispatcher_client::DispatcherClient<Channel> {
        pb::dispatcher_client::DispatcherClient::new(self.channel.clone())
    }
}

#[async_trait::async_trait]
impl Dispatcher for GrpcDispatcher {
    async fn open_session(&self, node: NodeDescription) -> Result<Session, RpcError> {
        let request = pb::SessionRequest {
            node: Some(convert::node_description_to_wire(&node)),
        };
        let res = self
            .client()
            .session(request)
            .await
            .map_err(|s| convert::status_to_rpc_error(&s, &node.node_id, 0))?;
        // The cluster's name for this node, from the node's certificate.
        let node_id = res
            .metadata()
            .get(NODE_ID_METADATA)
            .and_then(|v| v.to_str().ok())
            .map(|s| NodeId(s.to_owned()))
            .ok_or_else(|| RpcError::Unavailable("session response without a node id".into()))?;
        let mut stream = res.into_inner();
        let (tx, rx) = mpsc::channel(SESSION_BUFFER);
        let session_node = node_id.clone();
        tokio::spawn(async move {
            loop {
                let next = tokio::select! {
                    // The agent dropped the session: dropping the stream
                    // cancels the call.
                    () = tx.closed() => break,
                    next = stream.message() => next,
                };
                match next {
                    Ok(Some(wire)) => match convert::session_message_from_wire(wire) {
                        Ok(msg) => {
                            if tx.send(msg).await.is_err() {
                                break;
                            }
                        }
                        Err(e) => {
                            // Skipping a message could drop assignments; end
                            // the session so the agent opens a new one.
                            error!(node_id = %session_node, error = %e, "invalid session message");
                            break;
                        }
                    },
                    Ok(None) => {
                        debug!(node_id = %session_node, "session ended by the dispatcher");
                        break;
                    }
                    Err(status) => {
                        debug!(node_id = %session_node, error = %status, "session stream failed");
                        break;
                    }
                }
            }
        });
        Ok(Session {
            node_id,
            messages: rx,
        })
    }

    async fn report(&self, node: &NodeId, reports: Vec<TaskReport>) -> Result<(), RpcError> {
        let request = pb::ReportRequest {
            reports: reports.iter().map(convert::report_to_wire).collect(),
        };
        self.client()
            .report(request)
            .await
            .map_err(|s| convert::status_to_rpc_error(&s, node, 0))?;
        Ok(())
    }

    async fn send_logs(
        &self,
        node: &NodeId,
        request: u64,
        event: LogEvent,
    ) -> Result<(), RpcError> {
        let wire = pb::SendLogsRequest {
            request,
            event: Some(convert::log_event_to_wire(event)),
        };
        self.client()
            .send_logs(wire)
            .await
            .map_err(|s| convert::status_to_rpc_error(&s, node, request))?;
        Ok(())
    }

    async fn exec(
        &self,
        node: &NodeId,
        request: u64,
        events: mpsc::Receiver<ExecEvent>,
    ) -> Result<mpsc::Receiver<ExecInput>, RpcError> {
        let open = pb::ExecUp {
            event: Some(pb::exec_up::Event::Open(request)),
        };
        let up =
            tokio_stream::once(open).chain(ReceiverStream::new(events).map(|event| pb::ExecUp {
                event: Some(convert::exec_event_to_wire(event)),
            }));
        let mut down = self
            .client()
            .exec(up)
            .await
            .map_err(|s| convert::status_to_rpc_error(&s, node, request))?
            .into_inner();
        let (tx, rx) = mpsc::channel(EXEC_BUFFER);
        tokio::spawn(async move {
            // Until the dispatcher ends the session: dropping the call
            // earlier would cancel it before the node's last events went up.
            while let Ok(Some(wire)) = down.message().await {
                if let Some(input) = convert::exec_input_from_wire(wire) {
                    // A driver that stopped reading input is fine.
                    let _ = tx.send(input).await;
                }
            }
        });
        Ok(rx)
    }

    async fn report_usage(&self, node: &NodeId, usage: Vec<TaskUsage>) -> Result<(), RpcError> {
        let report = pb::UsageReport {
            tasks: usage.iter().map(convert::usage_to_wire).collect(),
        };
        self.client()
            .report_usage(report)
            .await
            .map_err(|s| convert::status_to_rpc_error(&s, node, 0))?;
        Ok(())
    }

    async fn heartbeat(&self, node: &NodeId) -> Result<Duration, RpcError> {
        let res = self
            .client()
            .heartbeat(pb::HeartbeatRequest {})
            .await
            .map_err(|s| convert::status_to_rpc_error(&s, node, 0))?;
        Ok(Duration::from_millis(res.into_inner().period_ms))
    }
}

/// What a successful join returns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Joined {
    /// The id the cluster gave the node.
    pub node_id: NodeId,
    /// The node's certificate, PEM.
    pub cert_pem: String,
    /// The cluster's root CA, PEM.
    pub ca_pem: String,
}

/// A client of another manager's Raft service.
#[derive(Clone, Debug)]
pub struct RaftClient {
    inner: pb::raft_client::RaftClient<Channel>,
}

impl RaftClient {
    /// Another manager's Raft service through `channel` (which must present
    /// this manager's certificate).
    pub fn new(channel: Channel) -> RaftClient {
        RaftClient {
            inner: pb::raft_client::RaftClient::new(channel)
                .max_decoding_message_size(crate::server::MAX_RAFT_MESSAGE)
                .max_encoding_message_size(crate::server::MAX_RAFT_MESSAGE),
        }
    }

    /// Sends one opaque Raft message; its answer.
    pub async fn call(&mut self, json: Vec<u8>) -> Result<Vec<u8>, tonic::Status> {
        Ok(self
            .inner
            .call(pb::RaftMessage { json })
            .await?
            .into_inner()
            .json)
    }
}

/// A client of the CA service.
#[derive(Clone, Debug)]
pub struct CaClient {
    inner: pb::ca_client::CaClient<Channel>,
}

impl CaClient {
    /// A CA reached through `channel`.
    pub fn new(channel: Channel) -> CaClient {
        CaClient {
            inner: pb::ca_client::CaClient::new(channel),
        }
    }

    /// The root CA, PEM, as the server sends it: unverified unless the
    /// channel already trusts the root. See [`fetch_root_ca`].
    pub async fn root_ca(&mut self) -> Result<String, CaError> {
        let res = self
            .inner
            .get_root_ca(pb::Empty {})
            .await
            .map_err(|s| convert::status_to_ca_error(&s))?;
        Ok(res.into_inner().ca_pem)
    }

    /// Joins with `token`, for the key of `csr_pem`. Use a channel that
    /// trusts the verified root (the token is a secret).
    pub async fn join(&mut self, csr_pem: &str, token: &str) -> Result<Joined, CaError> {
        let res = self
            .inner
            .join(pb::JoinRequest {
                csr_pem: csr_pem.to_owned(),
                token: token.to_owned(),
            })
            .await
            .map_err(|s| convert::status_to_ca_error(&s))?
            .into_inner();
        Ok(Joined {
            node_id: NodeId(res.node_id),
            cert_pem: res.cert_pem,
            ca_pem: res.ca_pem,
        })
    }

    /// A new certificate with this node's identity for the key of `csr_pem`.
    /// The channel must present the node's current certificate.
    pub async fn renew(&mut self, csr_pem: &str) -> Result<String, CaError> {
        let res = self
            .inner
            .renew(pb::RenewRequest {
                csr_pem: csr_pem.to_owned(),
            })
            .await
            .map_err(|s| convert::status_to_ca_error(&s))?;
        Ok(res.into_inner().cert_pem)
    }
}

/// A join, seen from the joining node (agent or manager): fetches the root
/// from `addr` and checks it against `token`'s digest ([`fetch_root_ca`])
/// before anything secret is sent, then sends `csr_pem` (for a key the node
/// made and keeps) with the token, over TLS that trusts only managers of
/// that root. Returns the pinned root, PEM, and the answer; the caller
/// checks the certificate against its key and the root before using it.
pub async fn join_cluster(
    addr: &str,
    token: &baton_pki::JoinToken,
    csr_pem: &str,
) -> Result<(String, Joined), CaError> {
    let root_pem = fetch_root_ca(addr, token.ca_digest()).await?;
    let tls = ClientTls::new(&root_pem, crate::tls::HotCert::empty())
        .map_err(|e| CaError::InvalidResponse(format!("root ca: {e}")))?;
    let channel = transport::connect(addr, &tls)
        .await
        .map_err(|e| CaError::Unavailable(e.to_string()))?;
    let secret = zeroize::Zeroizing::new(token.format());
    let joined = CaClient::new(channel).join(csr_pem, &secret).await?;
    Ok((root_pem, joined))
}

/// The first step of a join: fetches the root CA from `addr` over one-way TLS
/// and checks it against `expected_digest` (hex SHA-256 of the root's DER, as
/// in the join token). It also checks that the server's own certificate
/// chains to that root and names a manager. Returns the root, PEM; connect
/// again with [`ClientTls::new`] on it to send the token.
pub async fn fetch_root_ca(addr: &str, expected_digest: &str) -> Result<String, CaError> {
    let tls = ClientTls::bootstrap();
    let channel = transport::connect(addr, &tls)
        .await
        .map_err(|e| CaError::Unavailable(e.to_string()))?;
    let bundle = CaClient::new(channel).root_ca().await?;
    // During a root rotation the manager trusts two roots; the node trusts
    // only the one its token names (the manager's certificate chains to it
    // either directly or through the cross-signed intermediate), and learns
    // the rest later over the authenticated session.
    let roots = baton_pki::pem_certificates(&bundle);
    if roots.is_empty() {
        return Err(CaError::InvalidResponse(
            "the manager sent no root certificate".to_owned(),
        ));
    }
    let mut actual = Vec::new();
    let mut ca_pem = None;
    for root in roots {
        let der = baton_pki::certificate_der(&root)
            .map_err(|e| CaError::InvalidResponse(format!("root ca: {e}")))?;
        let digest = baton_pki::root_digest(&der);
        if digest.eq_ignore_ascii_case(expected_digest) {
            ca_pem = Some(root);
            break;
        }
        actual.push(digest);
    }
    let Some(ca_pem) = ca_pem else {
        return Err(CaError::RootMismatch {
            expected: expected_digest.to_owned(),
            actual: actual.join(", "),
        });
    };
    let chain = tls
        .seen_server_chain()
        .ok_or_else(|| CaError::InvalidResponse("no server certificate seen".into()))?;
    let verifier =
        manager_verifier(&ca_pem).map_err(|e| CaError::InvalidResponse(e.to_string()))?;
    let (leaf, intermediates) = chain
        .split_first()
        .ok_or_else(|| CaError::InvalidResponse("empty server certificate chain".into()))?;
    rustls::client::danger::ServerCertVerifier::verify_server_cert(
        &verifier,
        leaf,
        intermediates,
        &rustls::pki_types::ServerName::try_from(crate::tls::SNI_NAME)
            .map_err(|e| CaError::InvalidResponse(e.to_string()))?,
        &[],
        rustls::pki_types::UnixTime::now(),
    )
    .map_err(|e| {
        CaError::InvalidResponse(format!(
            "the server's certificate is not a manager certificate of that root: {e}"
        ))
    })?;
    Ok(ca_pem)
}
