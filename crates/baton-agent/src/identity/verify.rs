//! Checks of a node certificate against the cluster root and the node's key,
//! with `now` as an argument: the callers read the clock.
//!
//! The chain is checked the way a manager checks it when the node connects
//! (rustls' webpki client verifier: signatures up to the root, validity at
//! `now`, client-auth usage), so a certificate that passes here is one the
//! cluster port accepts.

use std::sync::Arc;

use baton_pki::{PeerIdentity, Role};
use baton_rpc::tls::{certs_from_pem, provider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::{ParsedCertificate, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{CertificateError, RootCertStore};

/// Why a certificate is not usable; the caller says which file or answer.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum CertDefect {
    /// Past its `not_after`: it cannot be renewed, only a new join helps.
    Expired,
    /// Anything else, in words.
    Other(String),
}

impl CertDefect {
    fn other(what: impl Into<String>) -> CertDefect {
        CertDefect::Other(what.into())
    }

    /// The defect as words.
    pub(crate) fn describe(&self) -> String {
        match self {
            CertDefect::Expired => "the certificate has expired".to_owned(),
            CertDefect::Other(reason) => reason.clone(),
        }
    }
}

/// Checks that `cert_pem` chains to `root_pem` and is valid at `now`, that it
/// names a worker or a manager, that its node id is usable, and that
/// `key_pem` is its private key. Returns the identity it states.
pub(crate) fn check_certificate(
    root_pem: &str,
    cert_pem: &str,
    key_pem: &str,
    now: UnixTime,
) -> Result<PeerIdentity, CertDefect> {
    let chain =
        certs_from_pem(cert_pem, "certificate").map_err(|e| CertDefect::other(e.to_string()))?;
    let (leaf, intermediates) = chain
        .split_first()
        .ok_or_else(|| CertDefect::other("no certificate"))?;
    let mut roots = RootCertStore::empty();
    for root in certs_from_pem(root_pem, "root ca").map_err(|e| CertDefect::other(e.to_string()))? {
        roots
            .add(root)
            .map_err(|e| CertDefect::other(format!("root ca: {e}")))?;
    }
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
        .build()
        .map_err(|e| CertDefect::other(format!("root ca: {e}")))?;
    verifier
        .verify_client_cert(leaf, intermediates, now)
        .map_err(|e| match e {
            rustls::Error::InvalidCertificate(
                CertificateError::Expired | CertificateError::ExpiredContext { .. },
            ) => CertDefect::Expired,
            rustls::Error::InvalidCertificate(
                CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. },
            ) => CertDefect::other(
                "the certificate is not valid yet: is this node's clock behind the manager's?",
            ),
            other => CertDefect::other(format!("not issued by the cluster root: {other}")),
        })?;
    let identity = baton_pki::peer_identity(leaf).map_err(|e| CertDefect::other(e.to_string()))?;
    if !matches!(identity.role, Role::Worker | Role::Manager) {
        return Err(CertDefect::other(format!(
            "it names role {}, not worker or manager",
            identity.role
        )));
    }
    if !valid_node_id(&identity.node_id) {
        return Err(CertDefect::other(
            "its node id is not 1 to 64 lowercase letters, digits or dashes",
        ));
    }
    if !key_matches(&chain, key_pem)? {
        return Err(CertDefect::other("it is not for this node's private key"));
    }
    Ok(identity)
}

/// Whether `key_pem` is the private key of the leaf of `chain`.
fn key_matches(chain: &[CertificateDer<'static>], key_pem: &str) -> Result<bool, CertDefect> {
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
        .map_err(|_| CertDefect::other("the private key is not valid pem"))?;
    let signing_key = provider()
        .key_provider
        .load_private_key(key)
        .map_err(|_| CertDefect::other("the private key is not usable"))?;
    match CertifiedKey::new(chain.to_vec(), signing_key).keys_match() {
        Ok(()) => Ok(true),
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => Ok(false),
        Err(e) => Err(CertDefect::other(format!(
            "cannot compare the certificate with the private key: {e}"
        ))),
    }
}

/// Whether `key_pem` is the private key of the first certificate of
/// `cert_pem`; `false` for anything unreadable.
pub(crate) fn pem_key_matches(cert_pem: &str, key_pem: &str) -> bool {
    certs_from_pem(cert_pem, "certificate")
        .ok()
        .and_then(|chain| key_matches(&chain, key_pem).ok())
        .unwrap_or(false)
}

/// The DER SubjectPublicKeyInfo of a certificate, to tell keys apart.
pub(crate) fn public_key_of(cert: &CertificateDer<'_>) -> Result<Vec<u8>, CertDefect> {
    let parsed = ParsedCertificate::try_from(cert).map_err(|e| CertDefect::other(e.to_string()))?;
    Ok(parsed.subject_public_key_info().as_ref().to_vec())
}

/// Node ids are written to files and used as DNS names in certificates:
/// 1 to 64 lowercase ASCII letters, digits or dashes.
pub(crate) fn valid_node_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}
