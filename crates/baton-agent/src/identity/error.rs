//! The one error type of [`crate::identity`].

use std::io;
use std::path::PathBuf;

/// Why a node identity could not be loaded, joined or renewed.
///
/// Two tiers: [`IdentityError::is_retryable`] is true only when the manager
/// could not be reached or could not serve (try again later); everything else
/// needs an operator (a wrong token, a refused join, a broken identity
/// directory). No variant carries any character of a join token's secret or
/// of a private key.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// There is no identity on disk and no join token was given.
    #[error(
        "this node has not joined a cluster yet: pass --join ADDR --token TOKEN \
         ({dir} holds no identity)"
    )]
    NotJoined {
        /// The identity directory that was looked at.
        dir: PathBuf,
    },
    /// The join token does not parse. The cause says where, never what.
    #[error("invalid join token: {0}")]
    InvalidToken(#[source] baton_pki::TokenError),
    /// The manager serves a root CA other than the one the token pins.
    #[error(
        "refusing to join: the manager at {addr} serves a root CA with digest {actual}, \
         but the join token expects {expected} (another cluster, or someone in between)"
    )]
    RootMismatch {
        /// Address dialled.
        addr: String,
        /// Digest the token names.
        expected: String,
        /// Digest of the root CA the manager sent.
        actual: String,
    },
    /// The manager refused the join or the renewal (wrong, rotated or unknown
    /// token; revoked node; malformed request).
    #[error("{action} refused by the manager at {addr}: {reason}")]
    Refused {
        /// `join` or `renewal`.
        action: &'static str,
        /// Address dialled.
        addr: String,
        /// What the manager said.
        reason: String,
    },
    /// The manager could not be reached or could not serve now: retry.
    #[error("cannot reach the manager at {addr}: {reason}")]
    Unavailable {
        /// Address dialled.
        addr: String,
        /// What failed.
        reason: String,
    },
    /// The manager answered something that makes no sense.
    #[error("invalid answer from the manager at {addr}: {reason}")]
    InvalidResponse {
        /// Address dialled.
        addr: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The certificate the manager issued is not usable by this node (wrong
    /// key, wrong root, wrong role or identity). Nothing was written.
    #[error("the manager issued an unusable certificate: {reason}")]
    InvalidIssued {
        /// What is wrong with it.
        reason: String,
    },
    /// A file of the identity directory is missing while others exist.
    #[error("incomplete identity: {path} is missing")]
    Missing {
        /// The missing file.
        path: PathBuf,
    },
    /// A file of the identity directory is unusable.
    #[error("invalid {path}: {reason}")]
    InvalidFile {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The stored certificate has expired: it can no longer be renewed, the
    /// node must join again.
    #[error(
        "the certificate in {path} expired: this node must join again \
         (remove {dir} and pass --join ADDR --token TOKEN)"
    )]
    Expired {
        /// The certificate file.
        path: PathBuf,
        /// The identity directory to remove.
        dir: PathBuf,
    },
    /// A file system operation failed.
    #[error("cannot {action} {path}: {source}")]
    Io {
        /// What was being done (`read`, `write`, `create`, `remove`).
        action: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// Generating the key pair or the CSR failed.
    #[error("cannot generate a key pair: {0}")]
    KeyGeneration(#[source] baton_pki::PkiError),
    /// A TLS configuration could not be built from the identity.
    #[error("tls: {0}")]
    Tls(#[from] baton_rpc::tls::TlsError),
}

impl IdentityError {
    /// Whether trying again later may succeed without anyone acting.
    pub fn is_retryable(&self) -> bool {
        matches!(self, IdentityError::Unavailable { .. })
    }

    pub(crate) fn io(action: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        IdentityError::Io {
            action,
            path: path.into(),
            source,
        }
    }

    /// Maps a CA client error for `action` against `addr`.
    pub(crate) fn from_ca(
        action: &'static str,
        addr: &str,
        error: baton_rpc::server::CaError,
    ) -> Self {
        use baton_rpc::server::CaError;
        let addr = addr.to_owned();
        match error {
            CaError::RootMismatch { expected, actual } => IdentityError::RootMismatch {
                addr,
                expected,
                actual,
            },
            CaError::PermissionDenied(reason) | CaError::InvalidRequest(reason) => {
                IdentityError::Refused {
                    action,
                    addr,
                    reason,
                }
            }
            CaError::Unavailable(reason) => IdentityError::Unavailable { addr, reason },
            CaError::InvalidResponse(reason) => IdentityError::InvalidResponse { addr, reason },
        }
    }
}
