//! The manager's own node certificate as both of its listeners serve it.
//!
//! The cluster port reads it through a [`HotCert`] (what `baton_rpc`'s server
//! configuration takes), the user API through this type's
//! [`ResolvesServerCert`]. [`ServingCert::swap`] replaces the pair in both at
//! once; each listener reads the slot on every handshake, so a renewed
//! certificate is presented from the next connection on while open
//! connections (agent sessions, log streams) carry on with the one they
//! were made with. Both listeners refuse session resumption, so no new
//! connection can ride on an old certificate.
//!
//! Two slots rather than one because `baton_rpc::tls::HotCert` keeps its
//! resolver private; if it implemented `ResolvesServerCert` itself, the API
//! slot here would go.

use std::fmt;
use std::sync::{Arc, RwLock};

use baton_rpc::tls::{HotCert, TlsError};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

/// The manager's certificate and key, shared by the cluster port and the API.
///
/// Clones share the same slots.
#[derive(Clone)]
pub struct ServingCert {
    cluster: HotCert,
    api: Arc<RwLock<Arc<CertifiedKey>>>,
}

impl fmt::Debug for ServingCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServingCert")
            .field("key", &"<redacted>")
            .finish_non_exhaustive()
    }
}

fn certified(cert_pem: &str, key_pem: &str) -> Result<CertifiedKey, TlsError> {
    let chain = baton_rpc::tls::certs_from_pem(cert_pem, "certificate")?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| TlsError::Pem {
        what: "private key",
        error: e.to_string(),
    })?;
    // `from_der` also checks that the key belongs to the certificate.
    Ok(CertifiedKey::from_der(
        chain,
        key,
        &baton_rpc::tls::provider(),
    )?)
}

impl ServingCert {
    /// Slots holding `cert_pem` (leaf first) and its private key.
    pub fn new(cert_pem: &str, key_pem: &str) -> Result<ServingCert, TlsError> {
        let api = certified(cert_pem, key_pem)?;
        let cluster = HotCert::new(cert_pem, key_pem)?;
        Ok(ServingCert {
            cluster,
            api: Arc::new(RwLock::new(Arc::new(api))),
        })
    }

    /// Replaces the certificate and key in both listeners. On an error
    /// (unreadable PEM, a key that does not match) neither changes.
    pub fn swap(&self, cert_pem: &str, key_pem: &str) -> Result<(), TlsError> {
        // Parse and check first: the cluster slot's swap below cannot then
        // fail on the same input, so the two never disagree.
        let api = Arc::new(certified(cert_pem, key_pem)?);
        self.cluster.swap(cert_pem, key_pem)?;
        *self
            .api
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = api;
        Ok(())
    }

    /// The slot the cluster port's `ServerTls` reads.
    pub fn cluster(&self) -> HotCert {
        self.cluster.clone()
    }

    /// The current leaf certificate, DER.
    pub fn leaf(&self) -> Option<CertificateDer<'static>> {
        self.current()
            .end_entity_cert()
            .ok()
            .map(|c| c.clone().into_owned())
    }

    fn current(&self) -> Arc<CertifiedKey> {
        self.api
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

impl ResolvesServerCert for ServingCert {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}
