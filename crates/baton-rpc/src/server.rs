//! The gRPC services of the cluster port, each a thin adapter: check who is
//! calling ([`crate::auth`]), convert the wire message, call the in-process
//! implementation, convert back.
//!
//! - [`DispatcherServer`] puts a [`Dispatcher`] on the wire. The node id every
//!   call acts for comes from the caller's certificate; identity comes from the
//!   certificate, never the request. Workers and managers only.
//! - [`CaServer`] puts a [`CaService`] on the wire. `GetRootCa` and `Join` are
//!   the only calls of the port that an anonymous caller may make; `Renew`
//!   needs the caller's own valid certificate and the new certificate must keep
//!   its identity.

use std::fmt;
use std::pin::Pin;
use std::sync::Arc;

use baton_pki::PeerIdentity;
use baton_state::NodeId;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt as _};
use tonic::metadata::MetadataValue;
use tonic::transport::server::Router;
use tonic::{Request, Response, Status};
use tracing::{error, info, warn};

use crate::transport::PeerConnection;
use crate::{Dispatcher, auth, convert, pb};

/// The response metadata key that carries the node id of a session.
pub const NODE_ID_METADATA: &str = "baton-node-id";

/// Errors of the CA service, on both sides of the wire.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CaError {
    /// The token is wrong, rotated or for another cluster, or the caller may
    /// not renew.
    #[error("permission denied: {0}")]
    PermissionDenied(String),
    /// The CSR (or another field) is malformed.
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// The CA cannot serve now (not the leader, external CA down): retry.
    #[error("ca unavailable: {0}")]
    Unavailable(String),
    /// The root CA the server sent does not match the join token's digest:
    /// this is not the cluster the token is for (or someone is in between).
    #[error("the server's root CA has digest {actual}, the join token expects {expected}")]
    RootMismatch {
        /// Digest from the token.
        expected: String,
        /// Digest of what the server sent.
        actual: String,
    },
    /// The server answered something that makes no sense.
    #[error("invalid response from the ca: {0}")]
    InvalidResponse(String),
}

/// The cluster CA as the cluster port needs it. The manager implements it.
#[async_trait::async_trait]
pub trait CaService: Send + Sync + 'static {
    /// The root CA certificate, PEM.
    async fn root_ca(&self) -> Result<String, CaError>;

    /// Checks `token` and signs a certificate for the CSR's public key. The
    /// node id is chosen by the cluster and the role comes from the token;
    /// nothing the CSR asks for is used. Returns the node id and the
    /// certificate (PEM).
    async fn join(&self, csr_pem: &str, token: &str) -> Result<(NodeId, String), CaError>;

    /// Signs a certificate for the CSR's public key with `identity`'s node id
    /// and role (the caller's verified certificate). Returns the certificate
    /// (PEM).
    async fn renew(&self, identity: &PeerIdentity, csr_pem: &str) -> Result<String, CaError>;
}

/// The largest Raft message (a whole state snapshot) either side accepts.
pub const MAX_RAFT_MESSAGE: usize = 512 << 20;

/// What a manager does with another manager's Raft message.
#[async_trait::async_trait]
pub trait RaftService: Send + Sync + 'static {
    /// Answers `message` from manager `from` (verified by the transport).
    async fn call(&self, from: &PeerIdentity, message: Vec<u8>) -> Result<Vec<u8>, Status>;
}

/// The Raft service on the wire: manager certificates only.
#[derive(Clone)]
pub struct RaftServer {
    inner: Arc<dyn RaftService>,
}

impl fmt::Debug for RaftServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RaftServer").finish_non_exhaustive()
    }
}

impl RaftServer {
    /// Wraps the manager's Raft endpoint.
    pub fn new(inner: Arc<dyn RaftService>) -> RaftServer {
        RaftServer { inner }
    }

    /// The tonic service, accepting messages up to [`MAX_RAFT_MESSAGE`].
    pub fn into_service(self) -> pb::raft_server::RaftServer<RaftServer> {
        pb::raft_server::RaftServer::new(self)
            .max_decoding_message_size(MAX_RAFT_MESSAGE)
            .max_encoding_message_size(MAX_RAFT_MESSAGE)
    }
}

#[async_trait::async_trait]
impl pb::raft_server::Raft for RaftServer {
    async fn call(
        &self,
        req: Request<pb::RaftMessage>,
    ) -> Result<Response<pb::RaftMessage>, Status> {
        let from = crate::auth::require_manager(&req, "Raft/Call")?;
        let json = self.inner.call(&from, req.into_inner().json).await?;
        Ok(Response::new(pb::RaftMessage { json }))
    }
}

/// A router serving the dispatcher, the CA and Raft: what the manager puts
/// on its cluster port with [`crate::transport::serve`].
pub fn router(
    dispatcher: Arc<dyn Dispatcher>,
    ca: Arc<dyn CaService>,
    raft: Arc<dyn RaftService>,
) -> Router {
    tonic::transport::Server::builder()
        .add_service(DispatcherServer::new(dispatcher).into_service())
        .add_service(CaServer::new(ca).into_service())
        .add_service(RaftServer::new(raft).into_service())
}

/// The dispatcher on the wire.
#[derive(Clone)]
pub struct DispatcherServer {
    inner: Arc<dyn Dispatcher>,
}

impl fmt::Debug for DispatcherServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DispatcherServer").finish_non_exhaustive()
    }
}

impl DispatcherServer {
    /// Wraps an in-process dispatcher.
    pub fn new(inner: Arc<dyn Dispatcher>) -> DispatcherServer {
        DispatcherServer { inner }
    }

    /// The tonic service, for `Server::builder().add_service(..)`.
    pub fn into_service(self) -> pb::dispatcher_server::DispatcherServer<DispatcherServer> {
        pb::dispatcher_server::DispatcherServer::new(self)
    }
}

/// The stream a session answers with.
pub type SessionStream = Pin<Box<dyn Stream<Item = Result<pb::SessionMessage, Status>> + Send>>;

/// The stream an exec session answers with: the command's input.
pub type ExecStream = Pin<Box<dyn Stream<Item = Result<pb::ExecDown, Status>> + Send>>;

/// Events of one exec session buffered between the node and its reader.
const EXEC_BUFFER: usize = 16;

fn node_of(identity: &PeerIdentity) -> NodeId {
    NodeId(identity.node_id.clone())
}

#[async_trait::async_trait]
impl pb::dispatcher_server::Dispatcher for DispatcherServer {
    type SessionStream = SessionStream;
    type ExecStream = ExecStream;

    async fn exec(
        &self,
        req: Request<tonic::Streaming<pb::ExecUp>>,
    ) -> Result<Response<ExecStream>, Status> {
        let identity = auth::require_node(&req, "Dispatcher/Exec")?;
        let node = node_of(&identity);
        let mut up = req.into_inner();
        let request = match up.message().await? {
            Some(pb::ExecUp {
                event: Some(pb::exec_up::Event::Open(id)),
            }) => id,
            _ => {
                return Err(Status::invalid_argument(
                    "an exec stream must open with the request it carries",
                ));
            }
        };
        let (events_tx, events_rx) = tokio::sync::mpsc::channel(EXEC_BUFFER);
        let mut input = self
            .inner
            .exec(&node, request, events_rx)
            .await
            .map_err(|e| convert::rpc_error_to_status(&e))?;
        let (down_tx, down_rx) = tokio::sync::mpsc::channel(EXEC_BUFFER);
        // One task carries both ways; the session ends (and with it the
        // answer stream) when the node sends its last event or stops, or
        // the reader goes away. Ending it here, rather than by the node
        // dropping the call, lets the node's last event through.
        tokio::spawn(async move {
            let mut input_open = true;
            loop {
                tokio::select! {
                    message = up.message() => {
                        let Ok(Some(wire)) = message else { break };
                        let Some(event) = convert::exec_event_from_wire(wire) else {
                            continue;
                        };
                        let last = matches!(
                            event,
                            crate::ExecEvent::Exit(_) | crate::ExecEvent::Error(_)
                        );
                        if events_tx.send(event).await.is_err() || last {
                            break;
                        }
                    }
                    next = input.recv(), if input_open => match next {
                        Some(input) => {
                            if down_tx.send(Ok(convert::exec_input_to_wire(input))).await.is_err() {
                                break;
                            }
                        }
                        None => input_open = false,
                    },
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(down_rx))))
    }

    async fn session(
        &self,
        req: Request<pb::SessionRequest>,
    ) -> Result<Response<SessionStream>, Status> {
        let identity = auth::require_node(&req, "Dispatcher/Session")?;
        let address = req
            .extensions()
            .get::<crate::transport::PeerConnection>()
            .and_then(|c| c.remote_addr)
            .map(|a| a.to_string());
        let node = req
            .into_inner()
            .node
            .ok_or(convert::ConvertError::Missing("SessionRequest.node"))?;
        // Identity comes from the certificate, never the request.
        let description = convert::node_description_from_wire(node_of(&identity), address, node);
        let session = self
            .inner
            .open_session(description)
            .await
            .map_err(|e| convert::rpc_error_to_status(&e))?;
        let node_id = session.node_id.clone();
        info!(node_id = %node_id, "session opened");
        let stream = ReceiverStream::new(session.messages).map(move |msg| {
            convert::session_message_to_wire(&msg).map_err(|e| {
                error!(node_id = %node_id, error = %e, "session message does not encode");
                Status::internal("session message does not encode")
            })
        });
        let mut res = Response::new(Box::pin(stream) as SessionStream);
        let value = MetadataValue::try_from(session.node_id.0.as_str())
            .map_err(|_| Status::internal("node id is not valid metadata"))?;
        res.metadata_mut().insert(NODE_ID_METADATA, value);
        Ok(res)
    }

    async fn report(
        &self,
        req: Request<pb::ReportRequest>,
    ) -> Result<Response<pb::ReportResponse>, Status> {
        let identity = auth::require_node(&req, "Dispatcher/Report")?;
        let reports = req
            .into_inner()
            .reports
            .into_iter()
            .map(convert::report_from_wire)
            .collect::<Result<Vec<_>, _>>()?;
        self.inner
            .report(&node_of(&identity), reports)
            .await
            .map_err(|e| convert::rpc_error_to_status(&e))?;
        Ok(Response::new(pb::ReportResponse {}))
    }

    async fn send_logs(
        &self,
        req: Request<pb::SendLogsRequest>,
    ) -> Result<Response<pb::SendLogsResponse>, Status> {
        let identity = auth::require_node(&req, "Dispatcher/SendLogs")?;
        let wire = req.into_inner();
        let event = convert::log_event_from_wire(wire.event)?;
        self.inner
            .send_logs(&node_of(&identity), wire.request, event)
            .await
            .map_err(|e| convert::rpc_error_to_status(&e))?;
        Ok(Response::new(pb::SendLogsResponse {}))
    }

    async fn report_usage(
        &self,
        req: Request<pb::UsageReport>,
    ) -> Result<Response<pb::Empty>, Status> {
        let identity = auth::require_node(&req, "Dispatcher/ReportUsage")?;
        let usage = req
            .into_inner()
            .tasks
            .into_iter()
            .map(convert::usage_from_wire)
            .collect();
        self.inner
            .report_usage(&node_of(&identity), usage)
            .await
            .map_err(|e| convert::rpc_error_to_status(&e))?;
        Ok(Response::new(pb::Empty {}))
    }

    async fn heartbeat(
        &self,
        req: Request<pb::HeartbeatRequest>,
    ) -> Result<Response<pb::HeartbeatResponse>, Status> {
        let identity = auth::require_node(&req, "Dispatcher/Heartbeat")?;
        let period = self
            .inner
            .heartbeat(&node_of(&identity))
            .await
            .map_err(|e| convert::rpc_error_to_status(&e))?;
        Ok(Response::new(pb::HeartbeatResponse {
            period_ms: u64::try_from(period.as_millis()).unwrap_or(u64::MAX),
        }))
    }
}

/// The CA on the wire.
#[derive(Clone)]
pub struct CaServer {
    inner: Arc<dyn CaService>,
}

impl fmt::Debug for CaServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CaServer").finish_non_exhaustive()
    }
}

impl CaServer {
    /// Wraps the manager's CA.
    pub fn new(inner: Arc<dyn CaService>) -> CaServer {
        CaServer { inner }
    }

    /// The tonic service, for `Server::builder().add_service(..)`.
    pub fn into_service(self) -> pb::ca_server::CaServer<CaServer> {
        pb::ca_server::CaServer::new(self)
    }
}

fn remote_addr<T>(req: &Request<T>) -> String {
    req.extensions()
        .get::<PeerConnection>()
        .and_then(|c| c.remote_addr)
        .map(|a| a.to_string())
        .unwrap_or_default()
}

#[async_trait::async_trait]
impl pb::ca_server::Ca for CaServer {
    async fn get_root_ca(&self, _req: Request<pb::Empty>) -> Result<Response<pb::RootCa>, Status> {
        // Public by design: the joining node checks it against its token.
        let ca_pem = self
            .inner
            .root_ca()
            .await
            .map_err(|e| convert::ca_error_to_status(&e))?;
        Ok(Response::new(pb::RootCa { ca_pem }))
    }

    async fn join(
        &self,
        req: Request<pb::JoinRequest>,
    ) -> Result<Response<pb::JoinResponse>, Status> {
        let remote_addr = remote_addr(&req);
        let wire = req.into_inner();
        let (node_id, cert_pem) = match self.inner.join(&wire.csr_pem, &wire.token).await {
            Ok(issued) => issued,
            Err(e) => {
                warn!(%remote_addr, error = %e, "join refused");
                return Err(convert::ca_error_to_status(&e));
            }
        };
        let ca_pem = self
            .inner
            .root_ca()
            .await
            .map_err(|e| convert::ca_error_to_status(&e))?;
        info!(node_id = %node_id, %remote_addr, "node joined");
        Ok(Response::new(pb::JoinResponse {
            node_id: node_id.0,
            cert_pem,
            ca_pem,
        }))
    }

    async fn renew(
        &self,
        req: Request<pb::RenewRequest>,
    ) -> Result<Response<pb::RenewResponse>, Status> {
        let identity = auth::require_identity(&req, "Ca/Renew")?;
        let wire = req.into_inner();
        let cert_pem = self
            .inner
            .renew(&identity, &wire.csr_pem)
            .await
            .map_err(|e| {
                warn!(node_id = %identity.node_id, error = %e, "renew refused");
                convert::ca_error_to_status(&e)
            })?;
        // Defence in depth: a renewed certificate never changes who it names.
        let renewed = crate::tls::certs_from_pem(&cert_pem, "renewed certificate")
            .ok()
            .and_then(|certs| certs.first().cloned())
            .and_then(|leaf| baton_pki::peer_identity(&leaf).ok());
        match renewed {
            Some(r)
                if r.node_id == identity.node_id
                    && r.role == identity.role
                    && r.cluster_id == identity.cluster_id => {}
            _ => {
                error!(node_id = %identity.node_id, "ca renewed a certificate with another identity");
                return Err(Status::internal("renewal failed"));
            }
        }
        info!(node_id = %identity.node_id, role = %identity.role, "certificate renewed");
        Ok(Response::new(pb::RenewResponse { cert_pem }))
    }
}

impl fmt::Debug for pb::FileData {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FileData")
            .field("name", &self.name)
            .field(
                "data",
                &format_args!("<redacted {} bytes>", self.data.len()),
            )
            .finish()
    }
}

impl fmt::Debug for pb::JoinRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JoinRequest")
            .field("csr_pem", &self.csr_pem)
            .field("token", &"<redacted>")
            .finish()
    }
}
