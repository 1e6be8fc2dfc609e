//! Tests of the join token format: exact text, every parse defect, redaction.

use std::time::Duration;

use super::*;
use crate::ClusterCa;

const DIGEST: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
const SECRET_HEX: &str = "0707070707070707070707070707070707070707070707070707070707070707";
/// SHA-256 of 32 bytes of 0x07 (`printf '\x07%.0s' $(seq 32) | sha256sum`).
const SECRET_DIGEST_HEX: &str = "4bb06f8e4e3a7715d201d573d0aa423762e55dabd61a2c02278fa56cc6d294e0";

fn fixture() -> JoinToken {
    JoinToken::new(DIGEST, Secret::from_bytes([7; SECRET_LEN])).expect("valid parts")
}

fn token_text() -> String {
    format!("BATON-1-{DIGEST}-{SECRET_HEX}")
}

#[test]
fn format_writes_prefix_version_digest_and_hex_secret() {
    assert_eq!(fixture().format(), token_text());
}

#[test]
fn parse_reads_back_what_format_wrote() {
    let parsed = JoinToken::parse(&token_text()).expect("parse");
    assert_eq!(parsed, fixture());
    assert_eq!(parsed.ca_digest(), DIGEST);
    assert_eq!(parsed.secret(), &Secret::from_bytes([7; SECRET_LEN]));
}

#[test]
fn parse_ignores_surrounding_whitespace() {
    let padded = format!("  {}\n", token_text());
    assert_eq!(JoinToken::parse(&padded), Ok(fixture()));
}

#[test]
fn generated_tokens_round_trip_and_differ() {
    let a = JoinToken::generate(DIGEST).expect("generate");
    let b = JoinToken::generate(DIGEST).expect("generate");
    assert_ne!(a.secret(), b.secret());
    assert_eq!(JoinToken::parse(&a.format()), Ok(a.clone()));
    assert_eq!(a.format().len(), "BATON-1-".len() + 64 + 1 + 64);
}

#[test]
fn generate_refuses_a_malformed_digest() {
    assert_eq!(
        JoinToken::generate("abc"),
        Err(TokenError::MalformedDigest {
            defect: HexDefect::Length { found: 3 }
        })
    );
}

/// Every defect, with the exact error and message. Messages must name the
/// problem and never contain the secret.
#[test]
fn each_defect_has_its_own_error_and_message() {
    let upper_secret = SECRET_HEX.replacen('0', "A", 1);
    let cases: Vec<(String, TokenError, &str)> = vec![
        (
            format!("SWMTKN-1-{DIGEST}-{SECRET_HEX}"),
            TokenError::WrongPrefix,
            "not a baton join token: it must start with \"BATON-\"",
        ),
        (
            String::new(),
            TokenError::WrongPrefix,
            "not a baton join token: it must start with \"BATON-\"",
        ),
        (
            format!("BATON-{DIGEST}-{SECRET_HEX}"),
            TokenError::MalformedVersion,
            "the join token's version is missing or not a number: expected \"BATON-1-...\"",
        ),
        (
            format!("BATON--{DIGEST}-{SECRET_HEX}"),
            TokenError::MalformedVersion,
            "the join token's version is missing or not a number: expected \"BATON-1-...\"",
        ),
        (
            format!("BATON-2-{DIGEST}-{SECRET_HEX}"),
            TokenError::UnknownVersion {
                version: "2".into(),
            },
            "unknown join token version 2: this baton reads version 1",
        ),
        (
            format!("BATON-1-{}-{SECRET_HEX}", &DIGEST[..63]),
            TokenError::MalformedDigest {
                defect: HexDefect::Length { found: 63 },
            },
            "the CA digest in the join token must be 64 lowercase hex characters: found 63 characters",
        ),
        (
            format!("BATON-1-{}-{SECRET_HEX}", DIGEST.to_uppercase()),
            TokenError::MalformedDigest {
                defect: HexDefect::NotLowercaseHex { position: 10 },
            },
            "the CA digest in the join token must be 64 lowercase hex characters: character 10 is not 0-9 or a-f",
        ),
        (
            "BATON-1".into(),
            TokenError::MalformedDigest {
                defect: HexDefect::Length { found: 0 },
            },
            "the CA digest in the join token must be 64 lowercase hex characters: found 0 characters",
        ),
        (
            format!("BATON-1-{DIGEST}"),
            TokenError::MissingSecret,
            "the join token ends after the CA digest: the secret is missing",
        ),
        (
            format!("BATON-1-{DIGEST}-{}", &SECRET_HEX[..60]),
            TokenError::MalformedSecret {
                defect: HexDefect::Length { found: 60 },
            },
            "the secret in the join token must be 64 lowercase hex characters: found 60 characters",
        ),
        (
            format!("BATON-1-{DIGEST}-{upper_secret}"),
            TokenError::MalformedSecret {
                defect: HexDefect::NotLowercaseHex { position: 0 },
            },
            "the secret in the join token must be 64 lowercase hex characters: character 0 is not 0-9 or a-f",
        ),
        (
            format!(
                "BATON-1-{DIGEST}-{}zz{}",
                &SECRET_HEX[..10],
                &SECRET_HEX[..60]
            ),
            TokenError::MalformedSecret {
                defect: HexDefect::NotLowercaseHex { position: 10 },
            },
            "the secret in the join token must be 64 lowercase hex characters: character 10 is not 0-9 or a-f",
        ),
        (
            format!("BATON-1-{DIGEST}-{SECRET_HEX} and more"),
            TokenError::TrailingGarbage { extra: 9 },
            "the join token has 9 unexpected characters after the secret",
        ),
        (
            format!("BATON-1-{DIGEST}-{SECRET_HEX}-{SECRET_HEX}"),
            TokenError::TrailingGarbage { extra: 65 },
            "the join token has 65 unexpected characters after the secret",
        ),
    ];
    for (input, error, message) in cases {
        let got = JoinToken::parse(&input);
        assert_eq!(got, Err(error), "input {input:?}");
        let shown = got.expect_err("checked above").to_string();
        assert_eq!(shown, message, "input {input:?}");
        assert!(
            !shown.contains(&SECRET_HEX[..16]),
            "message leaks the secret: {shown}"
        );
    }
}

#[test]
fn a_long_version_field_is_not_echoed() {
    // A paste that lost "1-" would put the digest where the version goes.
    let err = JoinToken::parse(&format!("BATON-{SECRET_HEX}-{DIGEST}")).expect_err("refused");
    assert_eq!(err, TokenError::MalformedVersion);
    let err = JoinToken::parse("BATON-12345-x").expect_err("refused");
    assert_eq!(err, TokenError::MalformedVersion);
}

#[test]
fn secret_never_shows_in_debug_display_or_errors() {
    let token = fixture();
    let secret_text = SECRET_HEX;
    assert_eq!(format!("{:?}", token.secret()), "Secret(<redacted>)");
    assert_eq!(format!("{}", token.secret()), "<redacted>");
    assert_eq!(
        format!("{token:?}"),
        format!("JoinToken {{ ca_digest: \"{DIGEST}\", secret: Secret(<redacted>) }}")
    );
    assert!(!format!("{token:#?}").contains(secret_text));
    let mismatch = token.verify_ca(b"another root").expect_err("mismatch");
    assert!(!format!("{mismatch} {mismatch:?}").contains(secret_text));
}

#[test]
fn secret_digest_is_sha256_of_the_secret_bytes() {
    let token = fixture();
    assert_eq!(hex(&token.secret_digest()), SECRET_DIGEST_HEX);
    assert!(token.matches_digest(&token.secret_digest()));
    let other = JoinToken::new(DIGEST, Secret::from_bytes([8; SECRET_LEN])).expect("token");
    assert!(!other.matches_digest(&token.secret_digest()));
    // The digest binds the secret only: the same secret under a rotated root
    // still matches what the manager stored.
    let rerooted =
        JoinToken::new(&"f".repeat(64), Secret::from_bytes([7; SECRET_LEN])).expect("token");
    assert!(rerooted.matches_digest(&token.secret_digest()));
}

#[test]
fn secrets_compare_by_value() {
    assert_eq!(Secret::from_bytes([1; 32]), Secret::from_bytes([1; 32]));
    assert_ne!(Secret::from_bytes([1; 32]), Secret::from_bytes([2; 32]));
}

#[test]
fn verify_ca_accepts_the_named_root_and_refuses_another() {
    let day = Duration::from_secs(86_400);
    let ca = ClusterCa::generate("c1", 1_800_000_000, day).expect("ca");
    let impostor = ClusterCa::generate("c1", 1_800_000_000, day).expect("ca");
    let token = JoinToken::generate(&ca.root_digest()).expect("token");
    assert_eq!(token.verify_ca(ca.cert_der()), Ok(()));
    let err = token.verify_ca(impostor.cert_der()).expect_err("mismatch");
    assert_eq!(
        err,
        TokenError::CaMismatch {
            cluster_digest: impostor.root_digest(),
            token_digest: ca.root_digest(),
        }
    );
    assert_eq!(
        err.to_string(),
        format!(
            "the cluster's CA (digest {}) is not the one the token names (digest {}): refusing to join",
            impostor.root_digest(),
            ca.root_digest()
        )
    );
}
