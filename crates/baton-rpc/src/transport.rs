//! Moving bytes: the TLS accept loop that feeds a tonic router, and the client
//! connector that dials the cluster port. TLS is done here with tokio-rustls,
//! not by tonic's `tls-*` features, so certificates can rotate and verifiers
//! can be our own.
//!
//! How a handler learns its peer: [`serve`] completes each handshake in its own
//! task, then hands tonic a [`TlsConn`] whose [`Connected`] impl yields a
//! [`PeerConnection`] (remote address, the verified client certificate chain
//! and the cluster id this server expects). tonic inserts that value into the
//! extensions of every request on the connection; [`crate::auth::peer`] reads
//! it back.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::{TlsAcceptor, TlsConnector};
use tokio_stream::StreamExt as _;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::{Connected, Router};
use tonic::transport::{Channel, Endpoint, Uri};
use tracing::{debug, info, warn};

use crate::auth::Revocations;
use crate::tls::{ClientTls, SNI_NAME, ServerTls};

/// A TLS handshake that takes longer than this is dropped, so a slow or idle
/// client cannot hold a connection slot it has not authenticated for.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Dialing (TCP connect plus TLS handshake) gives up after this long.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How often a client pings an idle connection.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);

/// How long a client waits for a ping's answer before dropping the connection.
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(5);

/// Handshaken connections waiting for tonic to take them. Small: tonic takes
/// them as fast as they come; this only smooths bursts.
const ACCEPT_BACKLOG: usize = 64;

/// Errors of serving or dialing.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// The address is not a valid endpoint.
    #[error("invalid address {0:?}")]
    InvalidAddress(String),
    /// Connecting failed.
    #[error("connect to {addr}: {error}")]
    Connect {
        /// The address.
        addr: String,
        /// What failed.
        error: String,
    },
    /// The gRPC server failed.
    #[error("grpc server: {0}")]
    Serve(#[from] tonic::transport::Error),
}

/// What a handler knows about the connection its request came on. tonic puts
/// it into every request's extensions.
#[derive(Clone, Debug)]
pub struct PeerConnection {
    /// The client's address.
    pub remote_addr: Option<SocketAddr>,
    /// The client's certificate chain, leaf first, as verified against the
    /// cluster root during the handshake; `None` for an anonymous client.
    pub peer_certs: Option<Arc<Vec<CertificateDer<'static>>>>,
    /// The cluster id this server serves; a certificate naming another is
    /// refused per call.
    pub cluster_id: Arc<str>,
    /// Node ids refused on every call.
    pub revocations: Revocations,
}

/// A server-side TLS connection, as handed to tonic.
#[derive(Debug)]
pub struct TlsConn {
    stream: tokio_rustls::server::TlsStream<TcpStream>,
    info: PeerConnection,
}

impl Connected for TlsConn {
    type ConnectInfo = PeerConnection;

    fn connect_info(&self) -> PeerConnection {
        self.info.clone()
    }
}

impl AsyncRead for TlsConn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

/// Serves `router` on `listener` over TLS until `shutdown` resolves.
///
/// Each accepted connection is handshaken in its own task (bounded by
/// [`HANDSHAKE_TIMEOUT`]), so a slow client never stalls the accept loop.
/// Failed handshakes (a certificate from another CA, a plaintext client) are
/// logged and dropped. There is no plaintext path.
///
/// Shutdown is tonic's graceful one: open streams (dispatcher sessions) keep
/// it waiting until the dispatcher ends them.
pub async fn serve<F>(
    listener: TcpListener,
    tls: ServerTls,
    router: Router,
    shutdown: F,
) -> Result<(), TransportError>
where
    F: Future<Output = ()> + Send,
{
    let (tx, rx) = mpsc::channel::<TlsConn>(ACCEPT_BACKLOG);
    let accept_loop = tokio::spawn(accept_loop(listener, tls, tx));
    let incoming = ReceiverStream::new(rx).map(Ok::<_, io::Error>);
    let res = router
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await;
    accept_loop.abort();
    Ok(res?)
}

async fn accept_loop(listener: TcpListener, tls: ServerTls, tx: mpsc::Sender<TlsConn>) {
    let acceptor = TlsAcceptor::from(tls.config.clone());
    loop {
        let (tcp, remote_addr) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                // Typically EMFILE: back off briefly instead of spinning.
                warn!(%error, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let acceptor = acceptor.clone();
        let tx = tx.clone();
        let cluster_id = tls.cluster_id.clone();
        let revocations = tls.revocations.clone();
        tokio::spawn(async move {
            let _ = tcp.set_nodelay(true);
            let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(stream)) => stream,
                Ok(Err(error)) => {
                    info!(%remote_addr, %error, "tls handshake refused");
                    return;
                }
                Err(_) => {
                    info!(%remote_addr, "tls handshake timed out");
                    return;
                }
            };
            let peer_certs = stream
                .get_ref()
                .1
                .peer_certificates()
                .map(|certs| Arc::new(certs.iter().map(|c| c.clone().into_owned()).collect()));
            debug!(%remote_addr, client_cert = peer_certs.is_some(), "tls connection");
            let conn = TlsConn {
                stream,
                info: PeerConnection {
                    remote_addr: Some(remote_addr),
                    peer_certs,
                    cluster_id,
                    revocations,
                },
            };
            // Fails only when the server is shutting down.
            let _ = tx.send(conn).await;
        });
    }
}

/// Dials `addr` (`host:port`) with `tls` and returns a gRPC channel. The
/// channel reconnects by itself after a connection drops, with a new
/// handshake, so a swapped [`crate::tls::HotCert`] is presented from then on.
pub async fn connect(addr: &str, tls: &ClientTls) -> Result<Channel, TransportError> {
    endpoint(addr)?
        .connect_with_connector(connector(addr, tls))
        .await
        .map_err(|e| TransportError::Connect {
            addr: addr.to_owned(),
            error: error_chain(&e),
        })
}

/// Like [`connect`], but dials on first use: errors surface on the first call.
pub fn connect_lazy(addr: &str, tls: &ClientTls) -> Result<Channel, TransportError> {
    Ok(endpoint(addr)?.connect_with_connector_lazy(connector(addr, tls)))
}

fn endpoint(addr: &str) -> Result<Endpoint, TransportError> {
    // The scheme only labels requests; TLS is done by the connector.
    let endpoint = Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|_| TransportError::InvalidAddress(addr.to_owned()))?;
    // HTTP/2 pings notice a dead peer (a manager that vanished without a FIN)
    // within interval + timeout, so the agent reconnects instead of waiting on
    // a session stream that will never speak again.
    Ok(endpoint
        .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
        .keep_alive_while_idle(true))
}

type BoxedConnect = Pin<
    Box<
        dyn Future<Output = io::Result<TokioIo<tokio_rustls::client::TlsStream<TcpStream>>>> + Send,
    >,
>;

fn connector(
    addr: &str,
    tls: &ClientTls,
) -> impl tower::Service<
    Uri,
    Response = TokioIo<tokio_rustls::client::TlsStream<TcpStream>>,
    Error = io::Error,
    Future = BoxedConnect,
> + Send
+ Clone
+ 'static {
    let addr = addr.to_owned();
    let connector = TlsConnector::from(tls.config.clone());
    tower::service_fn(move |_uri: Uri| -> BoxedConnect {
        let addr = addr.clone();
        let connector = connector.clone();
        Box::pin(async move {
            let dial = async {
                let tcp = TcpStream::connect(&addr).await?;
                tcp.set_nodelay(true)?;
                let name = ServerName::try_from(SNI_NAME)
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
                connector.connect(name, tcp).await
            };
            let stream = tokio::time::timeout(CONNECT_TIMEOUT, dial)
                .await
                .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "tls connect timed out"))??;
            Ok(TokioIo::new(stream))
        })
    })
}

/// An error and its sources, as one line.
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        out.push_str(": ");
        out.push_str(&inner.to_string());
        source = inner.source();
    }
    out
}
