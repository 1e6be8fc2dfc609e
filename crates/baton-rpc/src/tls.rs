//! TLS for the cluster port: who trusts whom, with which certificate.
//!
//! - [`ServerTls`]: TLS 1.3 only, aws-lc-rs, ALPN `h2`. Client certificates are
//!   verified against the cluster root *if presented*; a client without one is
//!   let through the handshake because a joining node has no certificate yet.
//!   Authorisation is then per RPC ([`crate::auth`]): only `GetRootCa` and
//!   `Join` accept an anonymous caller.
//! - [`ClientTls`]: trusts only the cluster root, and only a peer whose
//!   certificate says it is a manager; presents the node's certificate if it
//!   has one. [`ClientTls::bootstrap`] trusts nothing and records the server's
//!   certificate: it exists only to fetch the root CA, which the caller checks
//!   against the digest in its join token before it sends anything secret.
//! - [`HotTrust`]: the roots a node trusts, behind an `ArcSwap` and read on
//!   every handshake, so a root CA rotation (new root added, later the old
//!   one dropped) takes effect without a restart.
//! - [`HotCert`]: a node's own certificate and key behind an `ArcSwap`, read on
//!   every handshake, so a renewed certificate is used from the next connection
//!   on without a restart. Existing connections keep the old one until they
//!   are recycled.
//!
//! Every configuration is built with an explicit aws-lc-rs provider; nothing
//! relies on a process-wide default provider.

use std::fmt;
use std::sync::{Arc, Mutex};

use arc_swap::{ArcSwap, ArcSwapOption};
use baton_pki::ManagerVerifier;

use crate::auth::Revocations;
use rustls::client::ResolvesClientCert;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{
    ClientConfig, DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig,
    SignatureScheme,
};

/// The name a client puts in SNI. Servers are not verified by name but by the
/// identity in their certificate (chain to the cluster root, role manager), so
/// this is only a constant label.
pub(crate) const SNI_NAME: &str = "baton-manager";

/// Errors building TLS configurations or loading credentials.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM certificate or key could not be read.
    #[error("invalid pem {what}: {error}")]
    Pem {
        /// What was being read.
        what: &'static str,
        /// What the parser said.
        error: String,
    },
    /// The PEM held no certificate.
    #[error("no certificate in {0}")]
    NoCertificate(&'static str),
    /// rustls refused the configuration or the key.
    #[error("tls configuration: {0}")]
    Config(#[from] rustls::Error),
    /// A certificate verifier could not be built (for example an empty root).
    #[error("certificate verifier: {0}")]
    Verifier(String),
}

/// The crypto provider every Baton TLS configuration uses.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Parses every certificate of a PEM bundle.
pub fn certs_from_pem(
    pem: &str,
    what: &'static str,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem {
            what,
            error: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate(what));
    }
    Ok(certs)
}

fn root_store(root_ca_pem: &str) -> Result<Arc<RootCertStore>, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in certs_from_pem(root_ca_pem, "root ca")? {
        roots.add(cert)?;
    }
    Ok(Arc::new(roots))
}

/// The roots a node trusts (PEM bundle), swappable while connections are
/// served: both the client-certificate check of a server and the
/// manager check of a client read the current set on every handshake.
///
/// Clones share the same slot.
#[derive(Clone)]
pub struct HotTrust {
    current: Arc<ArcSwap<Trust>>,
}

struct Trust {
    pem: String,
    clients: Arc<dyn ClientCertVerifier>,
    managers: Arc<ManagerVerifier>,
}

impl fmt::Debug for HotTrust {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HotTrust")
            .field(
                "roots",
                &certs_from_pem(&self.pem(), "roots").map_or(0, |c| c.len()),
            )
            .finish()
    }
}

impl Trust {
    fn build(pem: &str) -> Result<Trust, TlsError> {
        let clients = WebPkiClientVerifier::builder_with_provider(root_store(pem)?, provider())
            .allow_unauthenticated()
            .build()
            .map_err(|e| TlsError::Verifier(e.to_string()))?;
        Ok(Trust {
            pem: pem.to_owned(),
            clients,
            managers: Arc::new(manager_verifier(pem)?),
        })
    }
}

impl HotTrust {
    /// Trusts every certificate of `root_ca_pem`.
    pub fn new(root_ca_pem: &str) -> Result<HotTrust, TlsError> {
        Ok(HotTrust {
            current: Arc::new(ArcSwap::from_pointee(Trust::build(root_ca_pem)?)),
        })
    }

    /// Trusts exactly the certificates of `root_ca_pem` from the next
    /// handshake on. On an error the current roots stay.
    pub fn set(&self, root_ca_pem: &str) -> Result<(), TlsError> {
        if self.current.load().pem == root_ca_pem {
            return Ok(());
        }
        self.current.store(Arc::new(Trust::build(root_ca_pem)?));
        Ok(())
    }

    /// The current roots, PEM.
    pub fn pem(&self) -> String {
        self.current.load().pem.clone()
    }

    /// A client-certificate verifier reading the current roots (optional
    /// client certificates; see [`ServerTls`]).
    pub fn client_verifier(&self) -> Arc<dyn ClientCertVerifier> {
        Arc::new(HotClientVerifier(self.clone()))
    }

    fn server_verifier(&self) -> Arc<dyn ServerCertVerifier> {
        Arc::new(HotManagerVerifier(self.clone()))
    }
}

#[derive(Debug)]
struct HotClientVerifier(HotTrust);

impl ClientCertVerifier for HotClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // Hints are optional; a node holds one certificate and sends it.
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.0
            .current
            .load()
            .clients
            .verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0
            .current
            .load()
            .clients
            .verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0
            .current
            .load()
            .clients
            .verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.current.load().clients.supported_verify_schemes()
    }
}

#[derive(Debug)]
struct HotManagerVerifier(HotTrust);

impl ServerCertVerifier for HotManagerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.0.current.load().managers.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0
            .current
            .load()
            .managers
            .verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0
            .current
            .load()
            .managers
            .verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.current.load().managers.supported_verify_schemes()
    }
}

/// A node's own certificate and key, swappable while connections are served.
///
/// Clones share the same slot: swapping through one is seen by every
/// configuration built from any of them, on its next handshake.
#[derive(Clone, Default)]
pub struct HotCert {
    current: Arc<ArcSwapOption<CertifiedKey>>,
}

impl fmt::Debug for HotCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HotCert")
            .field("present", &self.current.load().is_some())
            .field("key", &"<redacted>")
            .finish()
    }
}

impl HotCert {
    /// A slot holding `cert_pem` (leaf first, then any intermediates) and its
    /// private key.
    pub fn new(cert_pem: &str, key_pem: &str) -> Result<HotCert, TlsError> {
        let hot = HotCert::empty();
        hot.swap(cert_pem, key_pem)?;
        Ok(hot)
    }

    /// An empty slot: a client presents no certificate (a joining node), a
    /// server fails every handshake until one is stored.
    pub fn empty() -> HotCert {
        HotCert::default()
    }

    /// Replaces the certificate and key. The key must match the certificate.
    /// Connections made from now on use the new pair.
    pub fn swap(&self, cert_pem: &str, key_pem: &str) -> Result<(), TlsError> {
        let chain = certs_from_pem(cert_pem, "certificate")?;
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| TlsError::Pem {
            what: "private key",
            error: e.to_string(),
        })?;
        let certified = CertifiedKey::from_der(chain, key, &provider())?;
        self.current.store(Some(Arc::new(certified)));
        Ok(())
    }

    /// Forgets the certificate.
    pub fn clear(&self) {
        self.current.store(None);
    }

    /// The current leaf certificate, DER.
    pub fn leaf(&self) -> Option<CertificateDer<'static>> {
        let current = self.current.load_full()?;
        current
            .end_entity_cert()
            .ok()
            .map(|c| c.clone().into_owned())
    }

    fn load(&self) -> Option<Arc<CertifiedKey>> {
        self.current.load_full()
    }
}

#[derive(Debug)]
struct HotResolver(HotCert);

impl ResolvesServerCert for HotResolver {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.0.load()
    }
}

impl ResolvesClientCert for HotResolver {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        self.0.load()
    }

    fn has_certs(&self) -> bool {
        self.0.current.load().is_some()
    }
}

/// The server side of the cluster port.
#[derive(Clone, Debug)]
pub struct ServerTls {
    pub(crate) config: Arc<ServerConfig>,
    pub(crate) cluster_id: Arc<str>,
    pub(crate) revocations: Revocations,
}

impl ServerTls {
    /// A server presenting `cert` that verifies client certificates against
    /// `root_ca_pem` when they are presented (anonymous clients pass the
    /// handshake; see the module doc). `cluster_id` is what a client
    /// certificate's organisation must say for [`crate::auth`] to accept it.
    pub fn new(root_ca_pem: &str, cluster_id: &str, cert: HotCert) -> Result<ServerTls, TlsError> {
        Self::with_trust(HotTrust::new(root_ca_pem)?, cluster_id, cert)
    }

    /// As [`ServerTls::new`], with roots that can change while it serves.
    pub fn with_trust(
        trust: HotTrust,
        cluster_id: &str,
        cert: HotCert,
    ) -> Result<ServerTls, TlsError> {
        let mut config = ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(trust.client_verifier())
            .with_cert_resolver(Arc::new(HotResolver(cert)));
        // tonic only speaks HTTP/2; rustls does not set ALPN by itself.
        config.alpn_protocols = vec![b"h2".to_vec()];
        // No session resumption: a resumed session carries the identity of the
        // handshake that made it, so a renewed (or revoked) certificate would
        // not be seen, and the verifier would not run. Connections are
        // long-lived; a full handshake each time costs nothing that matters.
        config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        config.send_tls13_tickets = 0;
        Ok(ServerTls {
            config: Arc::new(config),
            cluster_id: Arc::from(cluster_id),
            revocations: Revocations::default(),
        })
    }

    /// The cluster id client certificates must carry.
    pub fn cluster_id(&self) -> &str {
        &self.cluster_id
    }

    /// The revoked node ids this server refuses on every call; update it
    /// through the returned handle (clones share the set).
    pub fn revocations(&self) -> Revocations {
        self.revocations.clone()
    }
}

/// The client side of the cluster port.
#[derive(Clone, Debug)]
pub struct ClientTls {
    pub(crate) config: Arc<ClientConfig>,
    recorder: Option<Arc<RecordingVerifier>>,
}

impl ClientTls {
    /// Trusts only a server whose certificate chains to `root_ca_pem` and
    /// names the manager role; presents `cert` if it holds one.
    pub fn new(root_ca_pem: &str, cert: HotCert) -> Result<ClientTls, TlsError> {
        Self::with_trust(&HotTrust::new(root_ca_pem)?, cert)
    }

    /// As [`ClientTls::new`], with roots that can change while it connects.
    pub fn with_trust(trust: &HotTrust, cert: HotCert) -> Result<ClientTls, TlsError> {
        Self::build(trust.server_verifier(), cert, None)
    }

    /// The one-way configuration of the join step: accepts any server
    /// certificate (it still checks the server holds its key) and records it.
    /// Use it only to fetch the root CA; check the root against the token's
    /// digest, then connect again with [`ClientTls::new`] before sending the
    /// token. [`crate::client::fetch_root_ca`] does all of that.
    pub fn bootstrap() -> ClientTls {
        let recorder = Arc::new(RecordingVerifier {
            algorithms: provider().signature_verification_algorithms,
            seen: Mutex::new(None),
        });
        Self::build(recorder.clone(), HotCert::empty(), Some(recorder))
            .expect("TLS 1.3 with the aws-lc-rs provider is always a valid configuration")
    }

    fn build(
        verifier: Arc<dyn ServerCertVerifier>,
        cert: HotCert,
        recorder: Option<Arc<RecordingVerifier>>,
    ) -> Result<ClientTls, TlsError> {
        let mut config = ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_client_cert_resolver(Arc::new(HotResolver(cert)));
        config.alpn_protocols = vec![b"h2".to_vec()];
        // See `ServerTls::new`: every connection is a full handshake, so the
        // current certificate is presented and verified each time.
        config.resumption = rustls::client::Resumption::disabled();
        Ok(ClientTls {
            config: Arc::new(config),
            recorder,
        })
    }

    /// For a [`ClientTls::bootstrap`] configuration: the last server
    /// certificate chain seen (leaf first). Untrusted until checked.
    pub fn seen_server_chain(&self) -> Option<Vec<CertificateDer<'static>>> {
        let recorder = self.recorder.as_ref()?;
        recorder
            .seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

/// The one server-certificate check of the cluster (chain to the root, role
/// manager, no host name): shared with the user API's client.
pub(crate) fn manager_verifier(root_ca_pem: &str) -> Result<ManagerVerifier, TlsError> {
    ManagerVerifier::new(root_ca_pem, provider()).map_err(|e| TlsError::Verifier(e.to_string()))
}

/// Accepts any server certificate and records it; the handshake signature is
/// still checked, so the server holds the key of the certificate it showed.
#[derive(Debug)]
struct RecordingVerifier {
    algorithms: WebPkiSupportedAlgorithms,
    seen: Mutex<Option<Vec<CertificateDer<'static>>>>,
}

impl ServerCertVerifier for RecordingVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let mut chain = vec![end_entity.clone().into_owned()];
        chain.extend(intermediates.iter().map(|c| c.clone().into_owned()));
        *self
            .seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(chain);
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}
