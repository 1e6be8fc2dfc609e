//! Tests of the cluster CA: identities the cluster chose, client certificates, validity windows.

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

fn extended_key_usage(der: &[u8]) -> (bool, bool) {
    let (_, parsed) = x509_parser::parse_x509_certificate(der).expect("parse");
    let eku = parsed
        .extended_key_usage()
        .expect("extension")
        .expect("present")
        .value;
    (eku.server_auth, eku.client_auth)
}

fn has_san(der: &[u8]) -> bool {
    let (_, parsed) = x509_parser::parse_x509_certificate(der).expect("parse");
    parsed.subject_alternative_name().expect("ext").is_some()
}

#[test]
fn node_certificate_serves_and_connects() {
    let ca = ClusterCa::generate("c1", NOW, DAY).expect("ca");
    let (_key, cert) = generate_key_and_cert(&ca, "node-a", Role::Manager, NOW, DAY).expect("cert");
    let der = certificate_der(&cert).expect("der");
    assert_eq!(extended_key_usage(&der), (true, true));
    assert!(has_san(&der));
}

#[test]
fn admin_client_certificate_is_client_only_and_says_admin() {
    let ca = ClusterCa::generate("c1", NOW, 3650 * DAY).expect("ca");
    let (_key, csr) = generate_csr().expect("csr");
    let cert = ca
        .issue_client(&csr, "alice", NOW, 30 * DAY)
        .expect("issue");
    let der = certificate_der(&cert).expect("der");
    assert_eq!(
        peer_identity(&der).expect("identity"),
        PeerIdentity {
            node_id: "alice".to_owned(),
            role: Role::Admin,
            cluster_id: "c1".to_owned(),
            not_after: NOW + 30 * 86_400,
        }
    );
    assert_eq!(extended_key_usage(&der), (false, true), "client auth only");
    assert!(!has_san(&der), "no name to serve TLS under");
    let (_, parsed) = x509_parser::parse_x509_certificate(&der).expect("parse");
    let constraints = parsed.basic_constraints().expect("ext").map(|b| b.value.ca);
    assert_eq!(constraints, Some(false), "never a CA");
}

#[test]
fn user_names_that_are_not_dns_names_are_fine_for_admins() {
    let ca = ClusterCa::generate("c1", NOW, DAY).expect("ca");
    let (_key, cert) = generate_key_and_cert(
        &ca,
        "Alice Smith <alice@example.org>",
        Role::Admin,
        NOW,
        DAY,
    )
    .expect("cert");
    let id = peer_identity(&certificate_der(&cert).expect("der")).expect("identity");
    assert_eq!(
        (id.node_id.as_str(), id.role),
        ("Alice Smith <alice@example.org>", Role::Admin)
    );
}

#[test]
fn node_certificate_with_admin_role_is_refused() {
    let ca = ClusterCa::generate("c1", NOW, DAY).expect("ca");
    let (_key, csr) = generate_csr().expect("csr");
    let err = ca
        .issue(&csr, "node-a", Role::Admin, NOW, DAY)
        .expect_err("refused");
    assert_eq!(
        err.to_string(),
        "invalid identity: the admin role is for user certificates, not node certificates"
    );
}

#[test]
fn empty_names_are_refused() {
    let ca = ClusterCa::generate("c1", NOW, DAY).expect("ca");
    let (_key, csr) = generate_csr().expect("csr");
    for res in [
        ca.issue(&csr, "", Role::Worker, NOW, DAY),
        ca.issue_client(&csr, "", NOW, DAY),
    ] {
        assert_eq!(
            res.expect_err("refused").to_string(),
            "invalid identity: the name is empty"
        );
    }
}

#[test]
fn generated_key_is_the_one_in_the_certificate() {
    let ca = ClusterCa::generate("c1", NOW, DAY).expect("ca");
    let (key_pem, cert) =
        generate_key_and_cert(&ca, "node-a", Role::Worker, NOW, DAY).expect("cert");
    let key = KeyPair::from_pem(&key_pem).expect("key");
    let der = certificate_der(&cert).expect("der");
    let (_, parsed) = x509_parser::parse_x509_certificate(&der).expect("parse");
    assert_eq!(
        parsed.public_key().raw,
        rcgen::PublicKeyData::subject_public_key_info(&key).as_slice()
    );
    let id = peer_identity(&der).expect("identity");
    assert_eq!((id.node_id.as_str(), id.role), ("node-a", Role::Worker));
}

#[test]
fn certificates_are_backdated_an_hour_or_a_quarter_of_short_validities() {
    let ca = ClusterCa::generate("c1", NOW, 3650 * DAY).expect("ca");
    let validity_of = |validity: Duration| {
        let (_key, cert) =
            generate_key_and_cert(&ca, "node-a", Role::Worker, NOW, validity).expect("cert");
        crate::cert_validity(&certificate_der(&cert).expect("der")).expect("validity")
    };
    let long = validity_of(90 * DAY);
    assert_eq!(
        (long.not_before, long.not_after),
        (NOW - 3600, NOW + 90 * 86_400)
    );
    let short = validity_of(Duration::from_secs(10));
    assert_eq!((short.not_before, short.not_after), (NOW - 2, NOW + 10));
    // So a seconds-long test certificate renews after it was issued, inside
    // the 50-80 % band of its 12-second window.
    assert_eq!(short.renew_at(0.0), NOW + 4);
    assert_eq!(short.renew_at(1.0), NOW + 7);
    assert_eq!(short.renew_in(NOW, 0.0), Duration::from_secs(4));
}

#[test]
fn times_out_of_range_are_errors() {
    let ca = ClusterCa::generate("c1", NOW, DAY).expect("ca");
    let (_key, csr) = generate_csr().expect("csr");
    for (now, validity) in [(i64::MIN, DAY), (NOW, Duration::MAX), (i64::MAX, DAY)] {
        assert!(matches!(
            ca.issue(&csr, "node-a", Role::Worker, now, validity),
            Err(PkiError::InvalidCertificate(_))
        ));
    }
}
