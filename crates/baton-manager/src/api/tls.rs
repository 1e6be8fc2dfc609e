//! The TLS listener: TCP accept, TLS handshake (with a deadline, off the accept
//! loop), then HTTP/1.1 or HTTP/2 by ALPN. There is no plaintext listener.
//!
//! Client certificates are verified against the cluster root during the
//! handshake but are optional there, so that a client without one gets a
//! clear `401` from the API rather than a TLS alert it cannot read. The
//! verified certificate's identity ([`Caller`]) rides in every request's
//! extensions; the authentication middleware decides from it.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use baton_pki::PeerIdentity;
use baton_rpc::tls::HotTrust;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use rustls::pki_types::CertificateDer;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use crate::serving_cert::ServingCert;

/// A slow or silent client gets this long to finish its handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Errors setting up the listener.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The root, the certificate or the key is unusable.
    #[error("TLS configuration: {0}")]
    Tls(String),
}

/// Who is calling, from the client certificate verified in the handshake.
/// [`serve`] puts one into every request's extensions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Caller {
    /// No client certificate.
    Anonymous,
    /// A certificate that chains to the cluster root but carries no cluster
    /// identity (the CA never issues one; refused).
    Unidentified,
    /// The identity the certificate states.
    Peer(PeerIdentity),
}

impl Caller {
    /// The caller of a connection, from its verified peer chain (leaf first).
    pub fn from_chain(chain: Option<&[CertificateDer<'_>]>) -> Caller {
        match chain.and_then(|certs| certs.first()) {
            None => Caller::Anonymous,
            Some(leaf) => match baton_pki::peer_identity(leaf) {
                Ok(identity) => Caller::Peer(identity),
                Err(e) => {
                    tracing::debug!(error = %e, "client certificate has no cluster identity");
                    Caller::Unidentified
                }
            },
        }
    }
}

/// The API's rustls configuration: aws-lc-rs, TLS 1.3 only, ALPN `h2` and
/// `http/1.1`; it presents the manager's node certificate as `cert` holds it
/// at each handshake (a renewal swaps it without a restart, see
/// [`ServingCert`]) and verifies client certificates against the roots
/// `trust` holds at each handshake (a root rotation changes them) when they
/// are presented. No session resumption: a resumed session would
/// skip the verifier and carry the identity (or the server certificate) of an
/// older handshake.
pub fn api_tls_config(
    trust: &HotTrust,
    cert: ServingCert,
) -> Result<Arc<rustls::ServerConfig>, ServeError> {
    let mut config = rustls::ServerConfig::builder_with_provider(baton_rpc::tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| ServeError::Tls(e.to_string()))?
        .with_client_cert_verifier(trust.client_verifier())
        .with_cert_resolver(Arc::new(cert));
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    Ok(Arc::new(config))
}

/// Serves `app` over TLS on `listener` until `shutdown` is cancelled; then drops
/// every open connection (log streams included). Each request carries the
/// connection's [`Caller`] in its extensions.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    app: Router,
    shutdown: CancellationToken,
) {
    let acceptor = TlsAcceptor::from(tls);
    let mut connections = JoinSet::new();
    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
        };
        let (tcp, peer) = match accepted {
            Ok(conn) => conn,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let acceptor = acceptor.clone();
        let app = app.clone();
        connections.spawn(async move {
            let tls_stream =
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => stream,
                    Ok(Err(e)) => {
                        tracing::debug!(%peer, error = %e, "TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!(%peer, "TLS handshake timed out");
                        return;
                    }
                };
            let caller = Caller::from_chain(tls_stream.get_ref().1.peer_certificates());
            let app = app.map_request(move |mut req: axum::http::Request<_>| {
                req.extensions_mut().insert(caller.clone());
                req
            });
            let service = TowerToHyperService::new(app);
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            if let Err(e) = builder
                .serve_connection_with_upgrades(TokioIo::new(tls_stream), service)
                .await
            {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
    connections.abort_all();
}
