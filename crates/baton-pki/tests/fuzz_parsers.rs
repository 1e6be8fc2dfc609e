//! Fuzz-like property tests of every parser of untrusted input in baton-pki:
//! join tokens, certificates presented by peers, and CSRs sent by joining
//! nodes. Arbitrary and mutated inputs must give an answer, never a panic, and
//! whatever is accepted must still carry only what the cluster chose.

use std::sync::OnceLock;
use std::time::Duration;

use baton_pki::{
    ClusterCa, JoinToken, Role, cert_validity, certificate_der, generate_csr,
    generate_key_and_cert, peer_identity,
};
use proptest::prelude::*;

const NOW: i64 = 1_800_000_000;
const DAY: Duration = Duration::from_secs(86_400);

/// One CA for all cases: key generation per case would only slow the search.
fn ca() -> &'static ClusterCa {
    static CA: OnceLock<ClusterCa> = OnceLock::new();
    CA.get_or_init(|| ClusterCa::generate("c1", NOW, 3650 * DAY).expect("ca"))
}

/// A valid CSR and a valid node certificate, DER, to mutate.
fn seeds() -> &'static (Vec<u8>, Vec<u8>) {
    static SEEDS: OnceLock<(Vec<u8>, Vec<u8>)> = OnceLock::new();
    SEEDS.get_or_init(|| {
        let (_key, csr_pem) = generate_csr().expect("csr");
        let (_, csr) = x509_parser::pem::parse_x509_pem(csr_pem.as_bytes()).expect("pem");
        let (_key, cert_pem) =
            generate_key_and_cert(ca(), "node-a", Role::Worker, NOW, DAY).expect("cert");
        (csr.contents, certificate_der(&cert_pem).expect("der"))
    })
}

fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn csr_pem(der: &[u8]) -> String {
    format!(
        "-----BEGIN CERTIFICATE REQUEST-----\n{}\n-----END CERTIFICATE REQUEST-----\n",
        base64(der)
    )
}

/// `seed` with some bytes overwritten and maybe cut short.
fn mutate(seed: &[u8], edits: &[(usize, u8)], cut: usize) -> Vec<u8> {
    let mut bytes = seed.to_vec();
    for &(idx, value) in edits {
        let len = bytes.len();
        bytes[idx % len] = value;
    }
    bytes.truncate(bytes.len().saturating_sub(cut % 8));
    bytes
}

fn tokenish() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "BATON-[0-9a-zA-Z -]{0,160}",
        "BATON-1-[0-9a-f]{60,68}-[0-9a-fA-Z\\- ]{0,140}",
        "[ \n]*BATON-[0-9]{1,6}-[0-9a-f]{64}-[0-9a-f]{64}.{0,4}[ \n]*",
    ]
}

#[test]
fn base64_matches_rfc_4648_vectors() {
    assert_eq!(base64(b""), "");
    assert_eq!(base64(b"f"), "Zg==");
    assert_eq!(base64(b"fo"), "Zm8=");
    assert_eq!(base64(b"foo"), "Zm9v");
    assert_eq!(base64(b"foobar"), "Zm9vYmFy");
}

#[test]
fn unmutated_seeds_are_accepted() {
    let (csr, cert) = seeds();
    assert!(peer_identity(cert).is_ok());
    assert!(
        ca().issue(&csr_pem(csr), "n1", Role::Worker, NOW, DAY)
            .is_ok()
    );
}

proptest! {
    #[test]
    fn join_token_parse_never_panics_and_round_trips_what_it_accepts(text in tokenish()) {
        if let Ok(token) = JoinToken::parse(&text) {
            prop_assert_eq!(token.format(), text.trim_ascii());
        }
    }

    #[test]
    fn join_token_errors_never_contain_the_secret(
        secret in "[0-9a-f]{64}",
        garbage in ".{0,8}",
        version in "[0-9]{1,3}",
    ) {
        let digest = "ab".repeat(32);
        for text in [
            format!("BATON-{version}-{digest}-{secret}{garbage}"),
            format!("BATON-1-{digest}-{garbage}{secret}"),
            format!("BATON-1-{secret}{garbage}"),
            format!("BATON-{secret}-{digest}"),
            format!("{garbage}{secret}"),
        ] {
            if let Err(err) = JoinToken::parse(&text) {
                let shown = format!("{err} {err:?}");
                prop_assert!(!shown.contains(&secret[..12]), "{}", shown);
            }
        }
    }

    #[test]
    fn peer_identity_never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        let _ = peer_identity(&bytes);
        let _ = cert_validity(&bytes);
    }

    #[test]
    fn peer_identity_never_panics_on_mutated_certificates(
        edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..6),
        cut in any::<usize>(),
    ) {
        let bytes = mutate(&seeds().1, &edits, cut);
        let _ = peer_identity(&bytes);
        let _ = cert_validity(&bytes);
    }

    #[test]
    fn issue_never_panics_on_arbitrary_text(
        csr in any::<String>(),
        node_id in any::<String>(),
        now in any::<i64>(),
        validity_secs in any::<u64>(),
    ) {
        let validity = Duration::from_secs(validity_secs);
        let _ = ca().issue(&csr, &node_id, Role::Worker, now, validity);
        let _ = ca().issue_client(&csr, &node_id, now, validity);
    }

    #[test]
    fn issue_never_panics_and_keeps_the_chosen_identity_on_mutated_csrs(
        edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..6),
        cut in any::<usize>(),
    ) {
        let pem = csr_pem(&mutate(&seeds().0, &edits, cut));
        if let Ok(cert) = ca().issue(&pem, "node-b", Role::Worker, NOW, DAY) {
            let id = peer_identity(&certificate_der(&cert).expect("der")).expect("identity");
            prop_assert_eq!((id.node_id.as_str(), id.role, id.cluster_id.as_str()), ("node-b", Role::Worker, "c1"));
        }
    }
}
