//! The cluster CA: node identities are assigned by the cluster, not requested.
//!
//! [`ClusterCa::issue`] signs a CSR's *public key only*: the subject, SANs,
//! key usages and basic constraints of the certificate are built fresh from
//! the node id and role the cluster chose. rcgen's
//! `CertificateSigningRequestParams::signed_by` would copy what the CSR asks
//! for (including `CA:true`), so it is never used.
//!
//! Identity in a certificate: CN = node id, OU = role, O = cluster id. Node
//! certificates ([`ClusterCa::issue`]) are for TLS servers and clients and
//! carry the node id as a DNS SAN; admin user certificates
//! ([`ClusterCa::issue_client`]) are for TLS clients only and carry no SAN.
//!
//! Certificates start a little before `now` so that a peer whose clock is
//! behind still accepts them: one hour, or a quarter of the validity if that is
//! shorter. The cap keeps the renewal point of a seconds-long test certificate
//! (see [`crate::renewal`]) after the moment it was issued.

use std::fmt;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};
use time::OffsetDateTime;

use crate::{PkiError, hex};

/// What a certificate lets its holder do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    /// A manager: raft peer, dispatcher, CA relay.
    Manager,
    /// A worker: its own session and its own tasks' reports, nothing else.
    Worker,
    /// A user with full rights on the user API.
    Admin,
}

impl Role {
    /// The OU value.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Manager => "manager",
            Role::Worker => "worker",
            Role::Admin => "admin",
        }
    }

    /// Parses an OU value.
    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "manager" => Some(Role::Manager),
            "worker" => Some(Role::Worker),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Who a certificate says its holder is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerIdentity {
    /// Node id (or user name for admin certificates): the CN.
    pub node_id: String,
    /// Role: the OU.
    pub role: Role,
    /// Cluster id: the O.
    pub cluster_id: String,
    /// Expiry, seconds since the Unix epoch.
    pub not_after: i64,
}

/// Reads the identity fields of a DER certificate. The caller must already have
/// verified the chain (the TLS handshake does); this only parses.
pub fn peer_identity(cert_der: &[u8]) -> Result<PeerIdentity, PkiError> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert_der)
        .map_err(|e| PkiError::InvalidCertificate(e.to_string()))?;
    let subject = cert.subject();
    fn one<'a>(
        values: impl Iterator<Item = &'a x509_parser::x509::AttributeTypeAndValue<'a>>,
        what: &str,
    ) -> Result<String, PkiError> {
        let values: Vec<&str> = values.filter_map(|a| a.as_str().ok()).collect();
        match values.as_slice() {
            [only] => Ok((*only).to_owned()),
            _ => Err(PkiError::InvalidCertificate(format!(
                "expected exactly one {what} in the subject"
            ))),
        }
    }
    let node_id = one(subject.iter_common_name(), "common name")?;
    let role_text = one(subject.iter_organizational_unit(), "organizational unit")?;
    let cluster_id = one(subject.iter_organization(), "organization")?;
    let role = Role::parse(&role_text)
        .ok_or_else(|| PkiError::InvalidCertificate(format!("unknown role {role_text:?}")))?;
    Ok(PeerIdentity {
        node_id,
        role,
        cluster_id,
        not_after: cert.validity().not_after.timestamp(),
    })
}

/// A new key pair (ECDSA P-256) and a CSR for it, both PEM. The key never
/// leaves the node; only the CSR is sent.
pub fn generate_csr() -> Result<(String, String), PkiError> {
    let key = KeyPair::generate()?;
    let params = CertificateParams::default();
    let csr = params.serialize_request(&key)?;
    Ok((key.serialize_pem(), csr.pem()?))
}

/// The cluster's root CA.
pub struct ClusterCa {
    cluster_id: String,
    cert_pem: String,
    cert_der: Vec<u8>,
    key: KeyPair,
}

impl fmt::Debug for ClusterCa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClusterCa")
            .field("cluster_id", &self.cluster_id)
            .field("key", &"<redacted>")
            .finish_non_exhaustive()
    }
}

fn datetime(unix_secs: i64) -> Result<OffsetDateTime, PkiError> {
    OffsetDateTime::from_unix_timestamp(unix_secs)
        .map_err(|e| PkiError::InvalidCertificate(format!("time out of range: {e}")))
}

fn secs(d: Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX / 2)
}

/// Certificates start at most this long before `now`, so a peer whose clock is
/// a little behind still accepts them.
const BACKDATE: Duration = Duration::from_secs(3600);

/// The `not_before` of a certificate issued at `now` for `validity`: backdated
/// by [`BACKDATE`] or a quarter of the validity, whichever is shorter.
fn not_before(now: i64, validity: Duration) -> Result<OffsetDateTime, PkiError> {
    let backdate = secs(BACKDATE).min(secs(validity) / 4);
    datetime(now.saturating_sub(backdate))
}

impl ClusterCa {
    /// A new root CA for `cluster_id`, valid from `now` (Unix seconds) for `validity`.
    pub fn generate(cluster_id: &str, now: i64, validity: Duration) -> Result<ClusterCa, PkiError> {
        let key = KeyPair::generate()?;
        let params = Self::root_params(cluster_id, now, validity)?;
        let cert = params.self_signed(&key)?;
        Ok(ClusterCa {
            cluster_id: cluster_id.to_owned(),
            cert_pem: cert.pem(),
            cert_der: cert.der().to_vec(),
            key,
        })
    }

    fn root_params(
        cluster_id: &str,
        now: i64,
        validity: Duration,
    ) -> Result<CertificateParams, PkiError> {
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        // A random tag tells the roots of one cluster apart (a root rotation
        // makes a second one with the same cluster id).
        let tag = hex(&rand_tag());
        dn.push(
            DnType::CommonName,
            format!("baton root CA {cluster_id} {tag}"),
        );
        dn.push(DnType::OrganizationName, cluster_id);
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.not_before = not_before(now, validity)?;
        params.not_after = datetime(now.saturating_add(secs(validity)))?;
        Ok(params)
    }

    /// Loads a CA from its certificate and key (PEM).
    pub fn from_pem(
        cluster_id: &str,
        cert_pem: &str,
        key_pem: &str,
    ) -> Result<ClusterCa, PkiError> {
        let key = KeyPair::from_pem(key_pem)?;
        let der = rustls_pki_der(cert_pem)?;
        Ok(ClusterCa {
            cluster_id: cluster_id.to_owned(),
            cert_pem: cert_pem.to_owned(),
            cert_der: der,
            key,
        })
    }

    /// The cluster id.
    pub fn cluster_id(&self) -> &str {
        &self.cluster_id
    }

    /// The root certificate, PEM.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The root certificate, DER.
    pub fn cert_der(&self) -> &[u8] {
        &self.cert_der
    }

    /// The CA's private key, PEM. Handle as a secret.
    pub fn key_pem(&self) -> String {
        self.key.serialize_pem()
    }

    /// SHA-256 of the root certificate (DER), hex: what join tokens pin.
    pub fn root_digest(&self) -> String {
        root_digest(&self.cert_der)
    }

    /// Certifies `new`'s subject and key with this root: the intermediate of
    /// a root rotation, which lets a peer that trusts only this root accept
    /// certificates issued by `new`. It is a CA certificate for leaves only
    /// (path length 0), valid from `now` until the earlier of the two roots'
    /// expiries.
    pub fn cross_sign(&self, new: &ClusterCa, now: i64) -> Result<String, PkiError> {
        let parse = |der: &[u8]| -> Result<(String, i64), PkiError> {
            let (_, cert) = x509_parser::parse_x509_certificate(der)
                .map_err(|e| PkiError::InvalidCertificate(e.to_string()))?;
            let cn = cert
                .subject()
                .iter_common_name()
                .next()
                .and_then(|a| a.as_str().ok())
                .ok_or_else(|| PkiError::InvalidCertificate("root without a common name".into()))?
                .to_owned();
            Ok((cn, cert.validity().not_after.timestamp()))
        };
        let (_, old_expiry) = parse(&self.cert_der)?;
        let (new_cn, new_expiry) = parse(&new.cert_der)?;
        // The same subject, built the same way as the new root's own: path
        // building matches issuer and subject names byte for byte.
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, new_cn);
        dn.push(DnType::OrganizationName, new.cluster_id.as_str());
        params.distinguished_name = dn;
        let not_after = old_expiry.min(new_expiry);
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.not_before = datetime(now.saturating_sub(secs(BACKDATE)))?;
        params.not_after = datetime(not_after)?;
        self.sign(&params, &new.key)
    }

    /// Signs a node certificate for `node_id` with `role` (manager or
    /// worker), valid from `now` (Unix seconds) for `validity`, for the public
    /// key of `csr_pem`. Nothing else of the CSR is used: its self-signature is
    /// checked, its subject, SANs, extensions and requested CA status are
    /// ignored. The certificate serves TLS as server and client, and names
    /// `node_id` as its DNS SAN. [`Role::Admin`] is refused: users get
    /// client-only certificates from [`ClusterCa::issue_client`].
    pub fn issue(
        &self,
        csr_pem: &str,
        node_id: &str,
        role: Role,
        now: i64,
        validity: Duration,
    ) -> Result<String, PkiError> {
        if role == Role::Admin {
            return Err(PkiError::InvalidIdentity(
                "the admin role is for user certificates, not node certificates".to_owned(),
            ));
        }
        let public_key = csr_public_key(csr_pem)?;
        let san = rcgen::SanType::DnsName(
            node_id
                .to_owned()
                .try_into()
                .map_err(|_| PkiError::InvalidSan(node_id.to_owned()))?,
        );
        let mut params = self.leaf_params(node_id, role, now, validity)?;
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.subject_alt_names = vec![san];
        self.sign(&params, &public_key)
    }

    /// Signs an admin user's client certificate for `user_name`, valid from
    /// `now` (Unix seconds) for `validity`, for the public key of `csr_pem`
    /// (nothing else of the CSR is used, as in [`ClusterCa::issue`]). The
    /// certificate has OU = admin, the ClientAuth extended key usage only and
    /// no SAN: it cannot serve TLS, so it cannot pose as a node.
    pub fn issue_client(
        &self,
        csr_pem: &str,
        user_name: &str,
        now: i64,
        validity: Duration,
    ) -> Result<String, PkiError> {
        let public_key = csr_public_key(csr_pem)?;
        let mut params = self.leaf_params(user_name, Role::Admin, now, validity)?;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.sign(&params, &public_key)
    }

    /// The parameters every leaf certificate shares: the identity the cluster
    /// chose, never a CA, digital signatures only, and the validity window.
    fn leaf_params(
        &self,
        name: &str,
        role: Role,
        now: i64,
        validity: Duration,
    ) -> Result<CertificateParams, PkiError> {
        if name.is_empty() {
            return Err(PkiError::InvalidIdentity("the name is empty".to_owned()));
        }
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, name);
        dn.push(DnType::OrganizationalUnitName, role.as_str());
        dn.push(DnType::OrganizationName, self.cluster_id.as_str());
        params.distinguished_name = dn;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.not_before = not_before(now, validity)?;
        params.not_after = datetime(now.saturating_add(secs(validity)))?;
        Ok(params)
    }

    fn sign(
        &self,
        params: &CertificateParams,
        public_key: &impl rcgen::PublicKeyData,
    ) -> Result<String, PkiError> {
        let issuer = Issuer::from_ca_cert_der(&self.cert_der.clone().into(), &self.key)?;
        let cert = params.signed_by(public_key, &issuer)?;
        Ok(cert.pem())
    }
}

/// A new node id: 16 random hex digits, never all decimal digits (a name
/// made only of digits is not a valid DNS name, and node certificates carry
/// their node id as their DNS SAN).
pub fn new_node_id() -> String {
    loop {
        let mut bytes = [0u8; 8];
        aws_lc_rs::rand::fill(&mut bytes).unwrap_or_default();
        let id = hex(&bytes);
        if id.bytes().any(|b| b.is_ascii_alphabetic()) {
            return id;
        }
    }
}

fn rand_tag() -> [u8; 4] {
    let mut tag = [0u8; 4];
    aws_lc_rs::rand::fill(&mut tag).unwrap_or_default();
    tag
}

/// Reads a CSR and checks its self-signature; only its public key is kept.
fn csr_public_key(csr_pem: &str) -> Result<rcgen::PublicKey, PkiError> {
    // from_pem verifies the CSR's signature with its own key.
    let csr = CertificateSigningRequestParams::from_pem(csr_pem)
        .map_err(|e| PkiError::InvalidCsr(e.to_string()))?;
    Ok(csr.public_key)
}

/// A new key pair and a certificate for it signed by `ca`, both PEM: `(key,
/// certificate)`. For a manager's own certificate and for `baton dev`, where
/// the key is made where the CA is. It goes through a CSR and the same signing
/// path as a joining node: [`ClusterCa::issue`] for managers and workers,
/// [`ClusterCa::issue_client`] for [`Role::Admin`] (with `node_id` as the user
/// name).
pub fn generate_key_and_cert(
    ca: &ClusterCa,
    node_id: &str,
    role: Role,
    now: i64,
    validity: Duration,
) -> Result<(String, String), PkiError> {
    let (key_pem, csr_pem) = generate_csr()?;
    let cert_pem = match role {
        Role::Admin => ca.issue_client(&csr_pem, node_id, now, validity)?,
        Role::Manager | Role::Worker => ca.issue(&csr_pem, node_id, role, now, validity)?,
    };
    Ok((key_pem, cert_pem))
}

/// The DER of the first certificate in `cert_pem`.
pub fn certificate_der(cert_pem: &str) -> Result<Vec<u8>, PkiError> {
    rustls_pki_der(cert_pem)
}

/// The certificates of a PEM bundle, each as its own PEM text, in order.
/// Text outside the certificate blocks is dropped.
pub fn pem_certificates(bundle: &str) -> Vec<String> {
    const BEGIN: &str = "-----BEGIN CERTIFICATE-----";
    const END: &str = "-----END CERTIFICATE-----";
    let mut out = Vec::new();
    let mut rest = bundle;
    while let Some(start) = rest.find(BEGIN) {
        let Some(len) = rest[start..].find(END) else {
            break;
        };
        let end = start + len + END.len();
        out.push(format!("{}\n", &rest[start..end]));
        rest = &rest[end..];
    }
    out
}

/// SHA-256 of a DER certificate, hex.
pub fn root_digest(cert_der: &[u8]) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, cert_der);
    hex(digest.as_ref())
}

fn rustls_pki_der(cert_pem: &str) -> Result<Vec<u8>, PkiError> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(cert_pem.as_bytes())
        .map_err(|e| PkiError::InvalidCertificate(e.to_string()))?;
    Ok(pem.contents)
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod pem_tests {
    use super::*;

    #[test]
    fn node_ids_are_16_hex_digits_and_valid_dns_names() {
        for _ in 0..200 {
            let id = new_node_id();
            assert_eq!(id.len(), 16);
            assert!(id.bytes().all(|b| b.is_ascii_hexdigit()));
            assert!(
                rustls::pki_types::ServerName::try_from(id.clone()).is_ok(),
                "{id}"
            );
        }
        assert!(rustls::pki_types::ServerName::try_from("0000000000000002").is_err());
    }

    #[test]
    fn a_bundle_splits_into_its_certificates() {
        let a = ClusterCa::generate("c1", 1_800_000_000, Duration::from_secs(86_400)).expect("a");
        let b = ClusterCa::generate("c1", 1_800_000_000, Duration::from_secs(86_400)).expect("b");
        let bundle = format!("junk\n{}\n{}", a.cert_pem(), b.cert_pem());
        let certs = pem_certificates(&bundle);
        assert_eq!(certs.len(), 2);
        assert_eq!(certificate_der(&certs[0]).expect("der"), a.cert_der());
        assert_eq!(certificate_der(&certs[1]).expect("der"), b.cert_der());
        assert!(pem_certificates("no pem here").is_empty());
    }
}
