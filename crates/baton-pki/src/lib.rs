//! Certificates and credentials, with no network, no disk access and no
//! clock: the callers decide where the bytes live, and `now` is an argument.
//!
//! - [`ClusterCa`]: the cluster's root CA; it signs the public key of a CSR
//!   with the identity the cluster chose ([`ClusterCa::issue`] for nodes,
//!   [`ClusterCa::issue_client`] for admin users), and [`peer_identity`] reads
//!   that identity back from a certificate.
//! - [`JoinToken`]: `BATON-1-<root CA digest>-<secret>`, with a redacted,
//!   zeroized, constant-time [`Secret`].
//! - [`renew_at`]: when a node renews its certificate.
//! - [`RevocationList`]: the node ids whose certificates are refused.
//! - API bearer tokens checked in constant time against a stored digest, and
//!   the self-contained server credentials of `baton dev`.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

use std::fmt;

mod cluster_ca;
pub mod join_token;
pub mod renewal;
mod revocation;

pub use cluster_ca::{
    ClusterCa, PeerIdentity, Role, certificate_der, generate_csr, generate_key_and_cert,
    peer_identity, root_digest,
};
pub use join_token::{HexDefect, JoinToken, Secret, TokenError};
pub use renewal::{CertValidity, cert_validity, renew_at, renew_in};
pub use revocation::RevocationList;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use subtle::ConstantTimeEq;

/// Errors of certificate generation.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// rcgen refused the parameters or failed to sign.
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    /// A subject alternative name is neither an IP address nor a DNS name.
    #[error("invalid subject alternative name {0:?}")]
    InvalidSan(String),
    /// The system random source failed.
    #[error("random source failed")]
    Random,
    /// A certificate signing request is malformed or its signature is wrong.
    #[error("invalid certificate signing request: {0}")]
    InvalidCsr(String),
    /// A certificate could not be read, or lacks the cluster's identity fields.
    #[error("invalid certificate: {0}")]
    InvalidCertificate(String),
    /// The identity asked for cannot go into this kind of certificate.
    #[error("invalid identity: {0}")]
    InvalidIdentity(String),
}

/// A CA and a server certificate it signed, all PEM.
pub struct ServerCredentials {
    /// The CA certificate (what clients trust).
    pub ca_cert_pem: String,
    /// The server certificate.
    pub cert_pem: String,
    /// The server's private key.
    pub key_pem: String,
}

impl fmt::Debug for ServerCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerCredentials")
            .field("key_pem", &"<redacted>")
            .finish_non_exhaustive()
    }
}

/// Makes a new CA (named `cluster_name`) and a server certificate for `sans`
/// (IP addresses or DNS names), valid for clients and servers. The CA key is
/// not returned: nothing can sign with it afterwards.
pub fn generate_server_credentials(
    cluster_name: &str,
    sans: &[String],
) -> Result<ServerCredentials, PkiError> {
    let ca_key = KeyPair::generate()?;
    let mut ca_params = CertificateParams::default();
    let mut ca_dn = DistinguishedName::new();
    ca_dn.push(DnType::CommonName, format!("{cluster_name} CA"));
    ca_dn.push(DnType::OrganizationName, cluster_name);
    ca_params.distinguished_name = ca_dn;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca_params.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca_params, &ca_key);

    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "baton-api");
    dn.push(DnType::OrganizationName, cluster_name);
    params.distinguished_name = dn;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    for san in sans {
        let san_type = match san.parse::<std::net::IpAddr>() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) => SanType::DnsName(
                san.clone()
                    .try_into()
                    .map_err(|_| PkiError::InvalidSan(san.clone()))?,
            ),
        };
        params.subject_alt_names.push(san_type);
    }
    let cert = params.signed_by(&key, &issuer)?;
    Ok(ServerCredentials {
        ca_cert_pem: ca_cert.pem(),
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// A new random bearer token: 32 bytes from the system CSPRNG, hex.
pub fn generate_token() -> Result<String, PkiError> {
    let mut bytes = [0u8; 32];
    aws_lc_rs::rand::fill(&mut bytes).map_err(|_| PkiError::Random)?;
    Ok(hex(&bytes))
}

/// The SHA-256 of a token: what a server stores instead of the token.
pub fn token_digest(token: &str) -> [u8; 32] {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, token.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

/// Whether `presented` is the token whose digest is `expected`, in constant time.
pub fn token_matches(presented: &str, expected: &[u8; 32]) -> bool {
    token_digest(presented).ct_eq(expected).into()
}

/// Lowercase hex of bytes.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_random_and_checked_by_digest() {
        let a = generate_token().expect("token");
        let b = generate_token().expect("token");
        assert_ne!(a, b);
        assert_eq!(a.len(), 64);
        let digest = token_digest(&a);
        assert!(token_matches(&a, &digest));
        assert!(!token_matches(&b, &digest));
        assert!(!token_matches("", &digest));
    }

    #[test]
    fn server_credentials_are_pem_and_key_is_redacted() {
        let creds =
            generate_server_credentials("baton-dev", &["127.0.0.1".into(), "localhost".into()])
                .expect("generate");
        assert!(creds.ca_cert_pem.starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(creds.cert_pem.starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(creds.key_pem.contains("PRIVATE KEY"));
        assert!(!format!("{creds:?}").contains("PRIVATE"));
    }
}
