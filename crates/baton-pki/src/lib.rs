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
//! - [`ManagerVerifier`]: how a client checks it reached a manager of its
//!   cluster (chain to the root, role manager; no host name).

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod cluster_ca;
mod issued;
pub mod join_token;
pub mod renewal;
mod revocation;
pub mod server_verifier;

pub use cluster_ca::{
    ClusterCa, PeerIdentity, Role, certificate_der, generate_csr, generate_key_and_cert,
    new_node_id, peer_identity, pem_certificates, root_digest,
};
pub use issued::{ExpectedIdentity, check_issued};
pub use join_token::{HexDefect, JoinToken, Secret, TokenError};
pub use renewal::{CertValidity, cert_validity, renew_at, renew_in};
pub use revocation::RevocationList;
pub use server_verifier::{ManagerVerifier, root_cert_store};

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

/// Lowercase hex of bytes.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
