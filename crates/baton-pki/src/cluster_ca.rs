//! The cluster CA: node identities are assigned by the cluster, not requested.
//!
//! [`ClusterCa::issue`] signs a CSR's *public key only*: the subject, SANs,
//! key usages and basic constraints of the certificate are built fresh from
//! the node id and role the cluster chose. rcgen's
//! `CertificateSigningRequestParams::signed_by` would copy what the CSR asks
//! for (including `CA:true`), so it is never used.
//!
//! Identity in a certificate: CN = node id, OU = role, O = cluster id.

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

/// Certificates start this long before `now`, so a peer whose clock is a little
/// behind still accepts them.
const BACKDATE: Duration = Duration::from_secs(3600);

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
        dn.push(DnType::CommonName, format!("baton root CA {cluster_id}"));
        dn.push(DnType::OrganizationName, cluster_id);
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.not_before = datetime(now - secs(BACKDATE))?;
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

    /// Signs a certificate for `node_id` with `role`, valid from `now` (Unix
    /// seconds) for `validity`, for the public key of `csr_pem`. Nothing else of
    /// the CSR is used: its self-signature is checked, its subject, SANs,
    /// extensions and requested CA status are ignored.
    pub fn issue(
        &self,
        csr_pem: &str,
        node_id: &str,
        role: Role,
        now: i64,
        validity: Duration,
    ) -> Result<String, PkiError> {
        // from_pem verifies the CSR's signature with its own key.
        let csr = CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|e| PkiError::InvalidCsr(e.to_string()))?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, node_id);
        dn.push(DnType::OrganizationalUnitName, role.as_str());
        dn.push(DnType::OrganizationName, self.cluster_id.as_str());
        params.distinguished_name = dn;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.subject_alt_names = vec![rcgen::SanType::DnsName(
            node_id
                .to_owned()
                .try_into()
                .map_err(|_| PkiError::InvalidSan(node_id.to_owned()))?,
        )];
        params.not_before = datetime(now - secs(BACKDATE))?;
        params.not_after = datetime(now.saturating_add(secs(validity)))?;
        let issuer = Issuer::from_ca_cert_der(&self.cert_der.clone().into(), &self.key)?;
        let cert = params.signed_by(&csr.public_key, &issuer)?;
        Ok(cert.pem())
    }
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
mod tests {
    use super::*;

    const DAY: Duration = Duration::from_secs(86_400);
    const NOW: i64 = 1_800_000_000;

    #[test]
    fn issued_certificate_carries_the_cluster_chosen_identity() {
        let ca = ClusterCa::generate("c1", NOW, 3650 * DAY).expect("ca");
        let (_key, csr) = generate_csr().expect("csr");
        let cert = ca
            .issue(&csr, "node-a", Role::Worker, NOW, 90 * DAY)
            .expect("issue");
        let der = rustls_pki_der(&cert).expect("der");
        let id = peer_identity(&der).expect("identity");
        assert_eq!(id.node_id, "node-a");
        assert_eq!(id.role, Role::Worker);
        assert_eq!(id.cluster_id, "c1");
        assert_eq!(id.not_after, NOW + 90 * 86_400);
    }

    #[test]
    fn csr_asking_for_ca_manager_role_and_another_id_gets_none_of_it() {
        let ca = ClusterCa::generate("c1", NOW, 3650 * DAY).expect("ca");
        let key = KeyPair::generate().expect("key");
        let mut greedy = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "other-node");
        dn.push(DnType::OrganizationalUnitName, "manager");
        dn.push(DnType::OrganizationName, "evil");
        greedy.distinguished_name = dn;
        greedy.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        greedy.subject_alt_names = vec![rcgen::SanType::DnsName(
            "other-node".try_into().expect("san"),
        )];
        let csr = greedy
            .serialize_request(&key)
            .expect("csr")
            .pem()
            .expect("pem");
        let cert = ca
            .issue(&csr, "node-a", Role::Worker, NOW, DAY)
            .expect("issue");
        let der = rustls_pki_der(&cert).expect("der");
        let id = peer_identity(&der).expect("identity");
        assert_eq!(
            (id.node_id.as_str(), id.role, id.cluster_id.as_str()),
            ("node-a", Role::Worker, "c1")
        );
        let (_, parsed) = x509_parser::parse_x509_certificate(&der).expect("parse");
        let constraints = parsed.basic_constraints().expect("ext").map(|b| b.value.ca);
        assert_eq!(constraints, Some(false), "never a CA");
        let sans: Vec<String> = parsed
            .subject_alternative_name()
            .expect("ext")
            .map(|s| {
                s.value
                    .general_names
                    .iter()
                    .map(|g| g.to_string())
                    .collect()
            })
            .unwrap_or_default();
        assert_eq!(sans, vec!["DNSName(node-a)".to_owned()]);
    }

    #[test]
    fn tampered_csr_is_refused() {
        let ca = ClusterCa::generate("c1", NOW, DAY).expect("ca");
        assert!(matches!(
            ca.issue(
                "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n",
                "n",
                Role::Worker,
                NOW,
                DAY
            ),
            Err(PkiError::InvalidCsr(_))
        ));
    }

    #[test]
    fn ca_round_trips_through_pem_and_keeps_its_digest() {
        let ca = ClusterCa::generate("c1", NOW, DAY).expect("ca");
        let again = ClusterCa::from_pem("c1", ca.cert_pem(), &ca.key_pem()).expect("load");
        assert_eq!(ca.root_digest(), again.root_digest());
        assert_eq!(ca.root_digest().len(), 64);
        let (_k, csr) = generate_csr().expect("csr");
        again
            .issue(&csr, "n1", Role::Manager, NOW, DAY)
            .expect("issue from loaded CA");
        assert!(!format!("{again:?}").contains("PRIVATE"));
    }
}
