//! Checks a certificate that someone else signed for us: an external CA
//! (cfssl) is asked to sign a CSR with an identity the cluster chose, and
//! [`check_issued`] verifies that what came back is exactly that, before the
//! certificate is handed to a node.
//!
//! The signer is trusted to hold the root key, not to follow instructions: a
//! misconfigured profile could copy the CSR's subject, SANs or `CA:true`, add
//! the wrong usages, or sign with another CA. Every one of those is refused
//! here, each with an error naming what was wrong.
//!
//! Pure code: no I/O, and `now` is an argument.

use std::sync::Arc;
use std::time::Duration;

use rustls::RootCertStore;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::ServerCertVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use x509_parser::certificate::X509Certificate;
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::FromDer;

use crate::{PkiError, Role, peer_identity, root_cert_store};

/// The identity the cluster asked the signer to put in a certificate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExpectedIdentity<'a> {
    /// The CN: the node id, or the user name for [`Role::Admin`].
    pub name: &'a str,
    /// The OU.
    pub role: Role,
    /// The O.
    pub cluster_id: &'a str,
}

fn refused(what: impl Into<String>) -> PkiError {
    PkiError::InvalidCertificate(format!("issued certificate refused: {}", what.into()))
}

/// Checks that `cert_chain_pem` (leaf first, then any intermediates) is a
/// certificate for `expected` over the public key of `csr_pem`, issued by one
/// of the roots in `roots_pem` and valid at `now_unix`:
///
/// - the subject is exactly CN = name, OU = role, O = cluster id;
/// - the public key is the CSR's (the whole SubjectPublicKeyInfo);
/// - it is not a CA (basicConstraints absent or `CA:false`, no certificate or
///   CRL signing key usage);
/// - node roles: exactly one SAN, the DNS name `name`, and the server and
///   client auth extended key usages; admin: no SAN, client auth only;
/// - no other extended key usage (not even `anyExtendedKeyUsage`);
/// - valid at `now_unix`, and its signatures chain to a root (webpki).
pub fn check_issued(
    cert_chain_pem: &str,
    csr_pem: &str,
    expected: &ExpectedIdentity<'_>,
    roots_pem: &str,
    now_unix: i64,
) -> Result<(), PkiError> {
    let chain = pem_certificates(cert_chain_pem)?;
    let (leaf_der, intermediates) = chain
        .split_first()
        .ok_or_else(|| refused("no certificate in the pem"))?;
    let (rest, leaf) = X509Certificate::from_der(leaf_der)
        .map_err(|e| refused(format!("unreadable certificate: {e}")))?;
    if !rest.is_empty() {
        return Err(refused("trailing bytes after the certificate"));
    }

    check_subject(leaf_der, &leaf, expected)?;
    check_public_key(&leaf, csr_pem)?;
    check_not_ca(&leaf)?;
    check_names_and_usages(&leaf, expected)?;
    check_validity(&leaf, now_unix)?;
    check_chain(leaf_der, intermediates, expected, roots_pem, now_unix)
}

fn pem_certificates(pem: &str) -> Result<Vec<CertificateDer<'static>>, PkiError> {
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| refused(format!("unreadable pem: {e}")))
}

fn check_subject(
    leaf_der: &[u8],
    leaf: &X509Certificate<'_>,
    expected: &ExpectedIdentity<'_>,
) -> Result<(), PkiError> {
    let identity = peer_identity(leaf_der).map_err(|e| refused(e.to_string()))?;
    if identity.node_id != expected.name {
        return Err(refused(format!(
            "common name is {:?}, expected {:?}",
            identity.node_id, expected.name
        )));
    }
    if identity.role != expected.role {
        return Err(refused(format!(
            "role (organizational unit) is {}, expected {}",
            identity.role, expected.role
        )));
    }
    if identity.cluster_id != expected.cluster_id {
        return Err(refused(format!(
            "cluster (organization) is {:?}, expected {:?}",
            identity.cluster_id, expected.cluster_id
        )));
    }
    // peer_identity found exactly one of each; anything beyond those three
    // (a locality, a second name copied from the CSR) was not asked for.
    let n_attributes = leaf.subject().iter_attributes().count();
    if n_attributes != 3 {
        return Err(refused(format!(
            "the subject has {n_attributes} attributes ({}), expected only CN, OU and O",
            leaf.subject()
        )));
    }
    Ok(())
}

fn check_public_key(leaf: &X509Certificate<'_>, csr_pem: &str) -> Result<(), PkiError> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(csr_pem.as_bytes())
        .map_err(|e| PkiError::InvalidCsr(e.to_string()))?;
    let (_, csr) = X509CertificationRequest::from_der(&pem.contents)
        .map_err(|e| PkiError::InvalidCsr(e.to_string()))?;
    if leaf.public_key().raw != csr.certification_request_info.subject_pki.raw {
        return Err(refused("its public key is not the one of the csr"));
    }
    Ok(())
}

fn check_not_ca(leaf: &X509Certificate<'_>) -> Result<(), PkiError> {
    let constraints = leaf
        .basic_constraints()
        .map_err(|e| refused(format!("basic constraints: {e}")))?;
    if constraints.is_some_and(|c| c.value.ca) {
        return Err(refused(
            "it is a CA certificate (basic constraints CA:true)",
        ));
    }
    let key_usage = leaf
        .key_usage()
        .map_err(|e| refused(format!("key usage: {e}")))?;
    if let Some(key_usage) = key_usage
        && (key_usage.value.key_cert_sign() || key_usage.value.crl_sign())
    {
        return Err(refused(format!(
            "its key usage allows signing certificates or CRLs ({})",
            key_usage.value
        )));
    }
    Ok(())
}

fn check_names_and_usages(
    leaf: &X509Certificate<'_>,
    expected: &ExpectedIdentity<'_>,
) -> Result<(), PkiError> {
    let san = leaf
        .subject_alternative_name()
        .map_err(|e| refused(format!("subject alternative name: {e}")))?;
    let names: Vec<String> = san
        .map(|san| {
            san.value
                .general_names
                .iter()
                .map(|name| match name {
                    GeneralName::DNSName(dns) => format!("DNS:{dns}"),
                    other => other.to_string(),
                })
                .collect()
        })
        .unwrap_or_default();
    let eku = leaf
        .extended_key_usage()
        .map_err(|e| refused(format!("extended key usage: {e}")))?
        .map(|eku| eku.value.clone());
    let eku = eku.ok_or_else(|| refused("it has no extended key usage"))?;
    if eku.any
        || eku.code_signing
        || eku.email_protection
        || eku.time_stamping
        || eku.ocsp_signing
        || !eku.other.is_empty()
    {
        return Err(refused(format!(
            "extended key usages beyond server and client auth: {eku:?}"
        )));
    }
    match expected.role {
        Role::Manager | Role::Worker => {
            let wanted = format!("DNS:{}", expected.name);
            if names != [wanted.as_str()] {
                return Err(refused(format!(
                    "subject alternative names are {names:?}, expected exactly [{wanted:?}]"
                )));
            }
            if !(eku.server_auth && eku.client_auth) {
                return Err(refused(
                    "a node certificate needs both the server and the client auth usages",
                ));
            }
        }
        Role::Admin => {
            if !names.is_empty() {
                return Err(refused(format!(
                    "an admin certificate has no subject alternative name, this one has {names:?}"
                )));
            }
            if eku.server_auth || !eku.client_auth {
                return Err(refused(
                    "an admin certificate has the client auth usage only",
                ));
            }
        }
    }
    Ok(())
}

fn check_validity(leaf: &X509Certificate<'_>, now_unix: i64) -> Result<(), PkiError> {
    let not_before = leaf.validity().not_before.timestamp();
    let not_after = leaf.validity().not_after.timestamp();
    if now_unix < not_before {
        return Err(refused(format!(
            "not valid yet (not before {not_before}, now {now_unix})"
        )));
    }
    if now_unix > not_after {
        return Err(refused(format!(
            "expired (not after {not_after}, now {now_unix})"
        )));
    }
    Ok(())
}

/// Signatures, validity and usages of the whole chain, by webpki: as a client
/// certificate for every role, and as a server certificate for `name` for the
/// node roles (which also checks the DNS SAN the way TLS peers will).
fn check_chain(
    leaf_der: &CertificateDer<'static>,
    intermediates: &[CertificateDer<'static>],
    expected: &ExpectedIdentity<'_>,
    roots_pem: &str,
    now_unix: i64,
) -> Result<(), PkiError> {
    let roots: Arc<RootCertStore> = Arc::new(root_cert_store(roots_pem)?);
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let now = UnixTime::since_unix_epoch(Duration::from_secs(
        u64::try_from(now_unix).map_err(|_| refused(format!("time {now_unix} out of range")))?,
    ));
    let chain_error = |e: rustls::Error| refused(format!("it does not chain to the root: {e}"));
    let client = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
        .build()
        .map_err(|e| PkiError::InvalidCertificate(format!("root ca: {e}")))?;
    client
        .verify_client_cert(leaf_der, intermediates, now)
        .map_err(chain_error)?;
    if expected.role != Role::Admin {
        let server = WebPkiServerVerifier::builder_with_provider(roots, provider)
            .build()
            .map_err(|e| PkiError::InvalidCertificate(format!("root ca: {e}")))?;
        let name = ServerName::try_from(expected.name.to_owned())
            .map_err(|_| refused(format!("{:?} is not a valid dns name", expected.name)))?;
        server
            .verify_server_cert(leaf_der, intermediates, &name, &[], now)
            .map_err(chain_error)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use rcgen::{
        BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose,
        IsCa, Issuer, KeyPair,
    };
    use time::OffsetDateTime;

    use super::*;
    use crate::{ClusterCa, generate_csr};

    const NOW: i64 = 1_800_000_000;
    const DAY: Duration = Duration::from_secs(86_400);

    fn worker(name: &'static str) -> ExpectedIdentity<'static> {
        ExpectedIdentity {
            name,
            role: Role::Worker,
            cluster_id: "c1",
        }
    }

    struct Fixture {
        ca: ClusterCa,
        key: KeyPair,
        csr: String,
    }

    fn fixture() -> Fixture {
        let ca = ClusterCa::generate("c1", NOW - 60, 3650 * DAY).expect("ca");
        let (key_pem, csr) = generate_csr().expect("csr");
        let key = KeyPair::from_pem(&key_pem).expect("key");
        Fixture { ca, key, csr }
    }

    fn check(f: &Fixture, cert: &str, expected: &ExpectedIdentity<'_>) -> Result<(), PkiError> {
        check_issued(cert, &f.csr, expected, f.ca.cert_pem(), NOW)
    }

    fn assert_refused(result: Result<(), PkiError>, needle: &str) {
        let err = result.expect_err("refused");
        assert!(err.to_string().contains(needle), "{err}");
    }

    /// The parameters of a correct worker certificate for "w1", to edit into
    /// what a misconfigured signer could return.
    fn leaf_params() -> CertificateParams {
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "w1");
        dn.push(DnType::OrganizationalUnitName, "worker");
        dn.push(DnType::OrganizationName, "c1");
        params.distinguished_name = dn;
        params.is_ca = IsCa::ExplicitNoCa;
        params.subject_alt_names = vec![rcgen::SanType::DnsName("w1".try_into().expect("dns"))];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.not_before = OffsetDateTime::from_unix_timestamp(NOW - 60).expect("time");
        params.not_after = OffsetDateTime::from_unix_timestamp(NOW + 3600).expect("time");
        params
    }

    /// A leaf for the fixture's key, signed by its CA, from edited [`leaf_params`].
    fn rcgen_leaf(f: &Fixture, edit: impl FnOnce(&mut CertificateParams)) -> String {
        let mut params = leaf_params();
        edit(&mut params);
        let ca_key = KeyPair::from_pem(&f.ca.key_pem()).expect("ca key");
        let issuer =
            Issuer::from_ca_cert_der(&f.ca.cert_der().to_vec().into(), &ca_key).expect("issuer");
        params.signed_by(&f.key, &issuer).expect("sign").pem()
    }

    #[test]
    fn a_node_certificate_with_the_asked_identity_is_accepted() {
        let f = fixture();
        let cert =
            f.ca.issue(&f.csr, "w1", Role::Worker, NOW, DAY)
                .expect("cert");
        check(&f, &cert, &worker("w1")).expect("accepted");
        let manager =
            f.ca.issue(&f.csr, "m1", Role::Manager, NOW, DAY)
                .expect("cert");
        let expected = ExpectedIdentity {
            name: "m1",
            role: Role::Manager,
            cluster_id: "c1",
        };
        check(&f, &manager, &expected).expect("manager accepted");
    }

    #[test]
    fn an_admin_certificate_is_accepted_as_admin_only() {
        let f = fixture();
        let cert = f.ca.issue_client(&f.csr, "alice", NOW, DAY).expect("cert");
        let admin = ExpectedIdentity {
            name: "alice",
            role: Role::Admin,
            cluster_id: "c1",
        };
        check(&f, &cert, &admin).expect("accepted");
        // A node certificate for the same name is not an admin certificate.
        let node = rcgen_leaf(&f, |p| {
            p.distinguished_name.push(DnType::CommonName, "alice");
            p.distinguished_name
                .push(DnType::OrganizationalUnitName, "admin");
            p.subject_alt_names = vec![];
        });
        assert_refused(check(&f, &node, &admin), "client auth usage only");
    }

    #[test]
    fn wrong_name_role_or_cluster_is_refused() {
        let f = fixture();
        let cert =
            f.ca.issue(&f.csr, "w1", Role::Worker, NOW, DAY)
                .expect("cert");
        assert_refused(check(&f, &cert, &worker("w2")), "common name is \"w1\"");
        let manager = ExpectedIdentity {
            role: Role::Manager,
            ..worker("w1")
        };
        assert_refused(
            check(&f, &cert, &manager),
            "role (organizational unit) is worker",
        );
        let other_cluster = ExpectedIdentity {
            cluster_id: "c2",
            ..worker("w1")
        };
        assert_refused(check(&f, &cert, &other_cluster), "cluster (organization)");
    }

    #[test]
    fn extra_subject_attributes_are_refused() {
        let f = fixture();
        let cert = rcgen_leaf(&f, |p| {
            p.distinguished_name.push(DnType::LocalityName, "anywhere");
        });
        assert_refused(check(&f, &cert, &worker("w1")), "4 attributes");
    }

    #[test]
    fn another_key_is_refused() {
        let f = fixture();
        let (_, other_csr) = generate_csr().expect("csr");
        let cert =
            f.ca.issue(&other_csr, "w1", Role::Worker, NOW, DAY)
                .expect("cert");
        assert_refused(check(&f, &cert, &worker("w1")), "public key");
    }

    #[test]
    fn a_certificate_from_another_ca_is_refused() {
        let f = fixture();
        let other = ClusterCa::generate("c1", NOW - 60, 3650 * DAY).expect("ca");
        let cert = other
            .issue(&f.csr, "w1", Role::Worker, NOW, DAY)
            .expect("cert");
        assert_refused(
            check(&f, &cert, &worker("w1")),
            "does not chain to the root",
        );
    }

    #[test]
    fn an_intermediate_in_the_chain_is_followed() {
        let f = fixture();
        let ca_key = KeyPair::from_pem(&f.ca.key_pem()).expect("ca key");
        let root = Issuer::from_ca_cert_der(&f.ca.cert_der().to_vec().into(), &ca_key)
            .expect("root issuer");
        let inter_key = KeyPair::generate().expect("key");
        let mut inter_params = CertificateParams::default();
        inter_params
            .distinguished_name
            .push(DnType::CommonName, "intermediate");
        inter_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        inter_params.not_before = OffsetDateTime::from_unix_timestamp(NOW - 60).expect("time");
        inter_params.not_after =
            OffsetDateTime::from_unix_timestamp(NOW + DAY.as_secs() as i64).expect("time");
        let inter = inter_params
            .signed_by(&inter_key, &root)
            .expect("intermediate");
        let inter_issuer = Issuer::new(inter_params, &inter_key);
        let leaf = leaf_params()
            .signed_by(&f.key, &inter_issuer)
            .expect("leaf");
        let chain = format!("{}{}", leaf.pem(), inter.pem());
        check(&f, &chain, &worker("w1")).expect("accepted through the intermediate");
        assert_refused(
            check(&f, &leaf.pem(), &worker("w1")),
            "does not chain to the root",
        );
    }

    #[test]
    fn expired_or_not_yet_valid_is_refused() {
        let f = fixture();
        let cert =
            f.ca.issue(&f.csr, "w1", Role::Worker, NOW, DAY)
                .expect("cert");
        let later = NOW + 2 * DAY.as_secs() as i64;
        assert_refused(
            check_issued(&cert, &f.csr, &worker("w1"), f.ca.cert_pem(), later),
            "expired",
        );
        let earlier = NOW - DAY.as_secs() as i64;
        assert_refused(
            check_issued(&cert, &f.csr, &worker("w1"), f.ca.cert_pem(), earlier),
            "not valid yet",
        );
    }

    #[test]
    fn a_ca_certificate_is_refused() {
        let f = fixture();
        let cert = rcgen_leaf(&f, |p| {
            p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        });
        assert_refused(check(&f, &cert, &worker("w1")), "CA:true");
        let signer = rcgen_leaf(&f, |p| {
            p.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign];
        });
        assert_refused(check(&f, &signer, &worker("w1")), "signing certificates");
    }

    #[test]
    fn wrong_sans_or_usages_are_refused() {
        let f = fixture();
        let no_san = rcgen_leaf(&f, |p| p.subject_alt_names = vec![]);
        assert_refused(check(&f, &no_san, &worker("w1")), "expected exactly");
        let two_sans = rcgen_leaf(&f, |p| {
            p.subject_alt_names
                .push(rcgen::SanType::DnsName("w2".try_into().expect("dns")));
        });
        assert_refused(check(&f, &two_sans, &worker("w1")), "expected exactly");
        let client_only = rcgen_leaf(&f, |p| {
            p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        });
        assert_refused(check(&f, &client_only, &worker("w1")), "both the server");
        let any = rcgen_leaf(&f, |p| {
            p.extended_key_usages.push(ExtendedKeyUsagePurpose::Any);
        });
        assert_refused(check(&f, &any, &worker("w1")), "beyond server and client");
        let none = rcgen_leaf(&f, |p| p.extended_key_usages = vec![]);
        assert_refused(check(&f, &none, &worker("w1")), "no extended key usage");
    }

    #[test]
    fn garbage_is_refused() {
        let f = fixture();
        assert_refused(check(&f, "", &worker("w1")), "no certificate");
        let cert =
            f.ca.issue(&f.csr, "w1", Role::Worker, NOW, DAY)
                .expect("cert");
        let err = check_issued(&cert, "not a csr", &worker("w1"), f.ca.cert_pem(), NOW)
            .expect_err("bad csr");
        assert!(matches!(err, PkiError::InvalidCsr(_)), "{err}");
    }
}
