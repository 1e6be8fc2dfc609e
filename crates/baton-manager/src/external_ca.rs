//! The client of an external CA: a manager that holds no root key relays
//! certificate signing to a cfssl-compatible signer (cfssl's authenticated
//! sign endpoint, `/api/v1/cfssl/authsign`), as SwarmKit does with
//! `--external-ca protocol=cfssl,url=...`.
//!
//! The manager decides the identity, the signer only signs it. Each request
//! names the subject (CN = node id or user name, OU = role, O = cluster id),
//! the SANs (the node id for nodes, none for admins) and the profile
//! ([`NODE_PROFILE`] or [`ADMIN_PROFILE`]); the signer's profiles must not copy
//! anything but the public key from the CSR (see `docs/design/external_ca.md`).
//! Whatever comes back is then checked by [`baton_pki::check_issued`]: a
//! misconfigured signer yields an error, never a certificate.
//!
//! The wire format, confirmed against `cfssl serve` 1.2.0:
//!
//! ```text
//! POST <url>  {"token": base64(HMAC-SHA256(key, request)), "request": base64(request)}
//! request = {"certificate_request": <csr pem>, "profile": ..., "hosts": [...],
//!            "subject": {"CN": ..., "names": [{"OU": ..., "O": ...}]}}
//! reply   = {"success": bool, "result": {"certificate": <pem>},
//!            "errors": [{"code": int, "message": str}], "messages": [...]}
//! ```
//!
//! The HMAC covers the exact request bytes that are base64-encoded, and the
//! key is the raw bytes of the hex string in cfssl's `auth_keys` ("standard"
//! type). The HMAC authenticates the manager; it does not protect the reply,
//! so the connection is HTTPS verified against the cluster root only.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use baton_pki::{ExpectedIdentity, PkiError, Role};
use serde::{Deserialize, Serialize};

/// The cfssl profile for node certificates (manager and worker): digital
/// signature, key encipherment, server auth, client auth.
pub const NODE_PROFILE: &str = "baton-node";
/// The cfssl profile for admin user certificates: digital signature, client
/// auth only.
pub const ADMIN_PROFILE: &str = "baton-admin";

/// Bounds on one signing round trip. A signer that does not answer within
/// these is reported unreachable, and the caller may retry.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// A certificate chain is a few kilobytes; a larger reply is not a signer's.
const MAX_RESPONSE_BYTES: usize = 1 << 20;

/// Errors of the external CA client.
#[derive(Debug, thiserror::Error)]
pub enum ExternalCaError {
    /// The url, auth key or trust bundle is unusable. Fix the configuration.
    #[error("external ca configuration: {0}")]
    Config(String),
    /// The signer could not be reached, or the TLS handshake failed (which
    /// includes a server certificate that does not chain to the trust root).
    #[error("external ca {url} unreachable: {message}")]
    Unreachable {
        /// The signer's url.
        url: String,
        /// What failed, down to the root cause.
        message: String,
    },
    /// The signer answered and refused: wrong auth key, unknown profile,
    /// policy violation.
    #[error("external ca {url} refused to sign (http {status}): {}", messages.join("; "))]
    Refused {
        /// The signer's url.
        url: String,
        /// The HTTP status of the reply.
        status: u16,
        /// The signer's error messages, `"<message> (code <code>)"`.
        messages: Vec<String>,
    },
    /// The signer's reply is not a cfssl reply.
    #[error("external ca {url} sent an unreadable reply (http {status}): {message}")]
    BadResponse {
        /// The signer's url.
        url: String,
        /// The HTTP status of the reply.
        status: u16,
        /// What was wrong with it.
        message: String,
    },
    /// The signer returned a certificate that is not the one asked for.
    #[error("external ca {url} returned a bad certificate: {source}")]
    BadCertificate {
        /// The signer's url.
        url: String,
        /// What was wrong with the certificate.
        source: PkiError,
    },
}

impl ExternalCaError {
    /// Whether trying again later may succeed: the signer was unreachable or
    /// failed on its side (HTTP 5xx without a policy refusal). Configuration
    /// errors, refusals and bad certificates need an operator.
    pub fn is_transient(&self) -> bool {
        match self {
            ExternalCaError::Unreachable { .. } => true,
            ExternalCaError::BadResponse { status, .. } => *status >= 500,
            ExternalCaError::Config(_)
            | ExternalCaError::Refused { .. }
            | ExternalCaError::BadCertificate { .. } => false,
        }
    }
}

/// Where and how to reach the external signer.
pub struct ExternalCa {
    url: String,
    /// The HMAC key made from the cfssl auth key; the raw bytes are not kept.
    auth_key: aws_lc_rs::hmac::Key,
    http: reqwest::Client,
}

impl fmt::Debug for ExternalCa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ExternalCa")
            .field("url", &self.url)
            .field("auth_key", &"<redacted>")
            .finish_non_exhaustive()
    }
}

/// One certificate to sign: the CSR the node sent and the identity the
/// cluster chose for it.
#[derive(Clone, Copy, Debug)]
pub struct SignRequest<'a> {
    /// The node's CSR, PEM. Only its public key ends up in the certificate.
    pub csr_pem: &'a str,
    /// The CN: the node id, or the user name for [`Role::Admin`].
    pub common_name: &'a str,
    /// The OU; [`Role::Admin`] selects [`ADMIN_PROFILE`], the node roles
    /// [`NODE_PROFILE`].
    pub role: Role,
    /// The O.
    pub cluster_id: &'a str,
    /// PEM bundle of the roots the returned certificate must chain to.
    pub expected_roots_pem: &'a str,
}

/// The sign request cfssl reads (`api/signhandler` `jsonSignRequest`).
#[derive(Serialize)]
struct CfsslSignRequest<'a> {
    certificate_request: &'a str,
    profile: &'a str,
    subject: CfsslSubject<'a>,
    /// Replaces every SAN; an empty list means none (cfssl only leaves the
    /// SANs alone when the field is absent).
    hosts: Vec<&'a str>,
}

/// `signer.Subject`: CN has no json tag in cfssl, so its key is `CN`.
#[derive(Serialize)]
struct CfsslSubject<'a> {
    #[serde(rename = "CN")]
    common_name: &'a str,
    names: [CfsslName<'a>; 1],
}

/// `csr.Name`.
#[derive(Serialize)]
struct CfsslName<'a> {
    #[serde(rename = "OU")]
    organizational_unit: &'a str,
    #[serde(rename = "O")]
    organization: &'a str,
}

/// `auth.AuthenticatedRequest`: Go encodes `[]byte` as base64.
#[derive(Serialize)]
struct CfsslAuthenticatedRequest {
    token: String,
    request: String,
}

/// `api.Response`.
#[derive(Deserialize)]
struct CfsslResponse {
    success: bool,
    #[serde(default)]
    result: Option<CfsslSignResult>,
    #[serde(default)]
    errors: Vec<CfsslMessage>,
}

#[derive(Deserialize)]
struct CfsslSignResult {
    certificate: Option<String>,
}

#[derive(Deserialize)]
struct CfsslMessage {
    #[serde(default)]
    code: i64,
    #[serde(default)]
    message: String,
}

impl ExternalCa {
    /// A client of the signer at `url`, the full https URL of cfssl's
    /// authenticated sign endpoint (e.g.
    /// `https://127.0.0.1:8888/api/v1/cfssl/authsign`), authenticating with
    /// `auth_key_hex` (cfssl "standard" auth key, hex), and trusting only the
    /// CA certificates of `trust_pem` (the cluster root) for the signer's TLS
    /// certificate, whose name must match the url's host.
    pub fn new(
        url: &str,
        auth_key_hex: &str,
        trust_pem: &str,
    ) -> Result<ExternalCa, ExternalCaError> {
        let parsed = reqwest::Url::parse(url)
            .map_err(|e| ExternalCaError::Config(format!("url {url:?}: {e}")))?;
        if parsed.scheme() != "https" {
            return Err(ExternalCaError::Config(format!(
                "url {url:?}: the external ca must be reached over https, not {}",
                parsed.scheme()
            )));
        }
        if parsed.host().is_none() {
            return Err(ExternalCaError::Config(format!("url {url:?}: no host")));
        }
        let key_bytes = decode_hex_key(auth_key_hex)?;
        let auth_key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, &key_bytes);

        let roots = baton_pki::root_cert_store(trust_pem)
            .map_err(|e| ExternalCaError::Config(format!("trust bundle: {e}")))?;
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| ExternalCaError::Config(format!("tls: {e}")))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let http = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .https_only(true)
            // A redirect would send the signed request somewhere not configured.
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(REQUEST_TIMEOUT)
            .build()
            .map_err(|e| ExternalCaError::Config(format!("http client: {e}")))?;
        Ok(ExternalCa {
            url: url.to_owned(),
            auth_key,
            http,
        })
    }

    /// The signer's url.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Sends the CSR with the identity the cluster chose and returns the
    /// issued certificate chain PEM (leaf first), once
    /// [`baton_pki::check_issued`] has accepted it at the current time.
    pub async fn sign(&self, request: &SignRequest<'_>) -> Result<String, ExternalCaError> {
        let (profile, hosts) = match request.role {
            Role::Manager | Role::Worker => (NODE_PROFILE, vec![request.common_name]),
            Role::Admin => (ADMIN_PROFILE, vec![]),
        };
        let sign_request = CfsslSignRequest {
            certificate_request: request.csr_pem,
            profile,
            subject: CfsslSubject {
                common_name: request.common_name,
                names: [CfsslName {
                    organizational_unit: request.role.as_str(),
                    organization: request.cluster_id,
                }],
            },
            hosts,
        };
        let request_bytes = serde_json::to_vec(&sign_request)
            .map_err(|e| ExternalCaError::Config(format!("encoding the sign request: {e}")))?;
        let token = aws_lc_rs::hmac::sign(&self.auth_key, &request_bytes);
        let body = CfsslAuthenticatedRequest {
            token: BASE64.encode(token.as_ref()),
            request: BASE64.encode(&request_bytes),
        };

        let (status, reply) = self.post(&body).await?;
        let certificate = self.certificate_from(status, &reply)?;

        let expected = ExpectedIdentity {
            name: request.common_name,
            role: request.role,
            cluster_id: request.cluster_id,
        };
        baton_pki::check_issued(
            &certificate,
            request.csr_pem,
            &expected,
            request.expected_roots_pem,
            unix_now(),
        )
        .map_err(|source| ExternalCaError::BadCertificate {
            url: self.url.clone(),
            source,
        })?;
        Ok(certificate)
    }

    async fn post(
        &self,
        body: &CfsslAuthenticatedRequest,
    ) -> Result<(u16, Vec<u8>), ExternalCaError> {
        let unreachable = |e: reqwest::Error| ExternalCaError::Unreachable {
            url: self.url.clone(),
            message: error_chain(&e),
        };
        let mut response = self
            .http
            .post(&self.url)
            .json(body)
            .send()
            .await
            .map_err(unreachable)?;
        let status = response.status().as_u16();
        let mut reply = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(unreachable)? {
            if reply.len() + chunk.len() > MAX_RESPONSE_BYTES {
                return Err(ExternalCaError::BadResponse {
                    url: self.url.clone(),
                    status,
                    message: format!("the reply is larger than {MAX_RESPONSE_BYTES} bytes"),
                });
            }
            reply.extend_from_slice(&chunk);
        }
        Ok((status, reply))
    }

    /// The certificate of a cfssl reply, or the signer's reasons for refusing.
    fn certificate_from(&self, status: u16, reply: &[u8]) -> Result<String, ExternalCaError> {
        let bad = |message: String| ExternalCaError::BadResponse {
            url: self.url.clone(),
            status,
            message,
        };
        let parsed: CfsslResponse = serde_json::from_slice(reply).map_err(|e| {
            bad(format!(
                "not a cfssl reply ({e}): {:?}",
                String::from_utf8_lossy(&reply[..reply.len().min(200)])
            ))
        })?;
        if !parsed.success || !(200..300).contains(&status) {
            let mut messages: Vec<String> = parsed
                .errors
                .iter()
                .map(|m| format!("{} (code {})", m.message, m.code))
                .collect();
            if messages.is_empty() {
                messages.push("no reason given".to_owned());
            }
            return Err(ExternalCaError::Refused {
                url: self.url.clone(),
                status,
                messages,
            });
        }
        parsed
            .result
            .and_then(|r| r.certificate)
            .filter(|c| !c.is_empty())
            .ok_or_else(|| bad("success without a certificate".to_owned()))
    }
}

/// The bytes of a hex auth key. Errors say what is wrong with the text, never
/// what the text is.
fn decode_hex_key(text: &str) -> Result<Vec<u8>, ExternalCaError> {
    let text = text.trim();
    if text.is_empty() {
        return Err(ExternalCaError::Config("auth key: empty".to_owned()));
    }
    if !text.len().is_multiple_of(2) {
        return Err(ExternalCaError::Config(format!(
            "auth key: {} hex digits, expected an even number",
            text.len()
        )));
    }
    let digit = |idx: usize, b: u8| -> Result<u8, ExternalCaError> {
        char::from(b)
            .to_digit(16)
            .and_then(|d| u8::try_from(d).ok())
            .ok_or_else(|| {
                ExternalCaError::Config(format!(
                    "auth key: not hex (invalid character at position {idx})"
                ))
            })
    };
    text.as_bytes()
        .chunks_exact(2)
        .enumerate()
        .map(|(pair_idx, pair)| {
            Ok(digit(2 * pair_idx, pair[0])? << 4 | digit(2 * pair_idx + 1, pair[1])?)
        })
        .collect()
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// The error and its causes, outermost first: reqwest's own message ("error
/// sending request") says nothing, the TLS cause at the bottom does.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut parts = vec![e.to_string()];
    let mut cause = e.source();
    while let Some(inner) = cause {
        let text = inner.to_string();
        if parts.last() != Some(&text) {
            parts.push(text);
        }
        cause = inner.source();
    }
    parts.join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROOT_NOW: i64 = 1_800_000_000;

    fn root_pem() -> String {
        baton_pki::ClusterCa::generate("c1", ROOT_NOW, Duration::from_secs(86_400))
            .expect("ca")
            .cert_pem()
            .to_owned()
    }

    #[test]
    fn hex_keys_are_decoded_and_errors_do_not_show_them() {
        assert_eq!(
            decode_hex_key("00ff10Ab").expect("hex"),
            vec![0, 255, 16, 171]
        );
        for bad in ["", "  ", "abc", "zz11secretsecret", "0g"] {
            let err = decode_hex_key(bad).expect_err("refused");
            let text = err.to_string();
            assert!(
                text.starts_with("external ca configuration: auth key"),
                "{text}"
            );
            if bad.len() > 3 {
                assert!(!text.contains(bad), "{text}");
            }
        }
    }

    #[test]
    fn only_https_urls_are_accepted() {
        let root = root_pem();
        let key = "0123456789abcdef";
        let err = ExternalCa::new("http://127.0.0.1:8888/api/v1/cfssl/authsign", key, &root)
            .expect_err("http refused");
        assert!(err.to_string().contains("over https, not http"), "{err}");
        ExternalCa::new("not a url", key, &root).expect_err("garbage refused");
        ExternalCa::new("https://127.0.0.1:8888/api/v1/cfssl/authsign", key, "")
            .expect_err("empty trust refused");
        let ca = ExternalCa::new("https://127.0.0.1:8888/api/v1/cfssl/authsign", key, &root)
            .expect("https accepted");
        let debug = format!("{ca:?}");
        assert!(
            debug.contains("<redacted>") && !debug.contains(key),
            "{debug}"
        );
    }

    #[test]
    fn the_sign_request_has_cfssl_field_names() {
        let request = CfsslSignRequest {
            certificate_request: "CSR",
            profile: NODE_PROFILE,
            subject: CfsslSubject {
                common_name: "w1",
                names: [CfsslName {
                    organizational_unit: "worker",
                    organization: "c1",
                }],
            },
            hosts: vec!["w1"],
        };
        assert_eq!(
            serde_json::to_string(&request).expect("json"),
            r#"{"certificate_request":"CSR","profile":"baton-node","subject":{"CN":"w1","names":[{"OU":"worker","O":"c1"}]},"hosts":["w1"]}"#
        );
    }
}
