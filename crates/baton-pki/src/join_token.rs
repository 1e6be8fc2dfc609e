//! Join tokens: `BATON-1-<root CA digest>-<secret>`.
//!
//! A token does two jobs. The joining node uses its CA digest (SHA-256 of the
//! root certificate's DER, 64 lowercase hex) to check the CA it fetched over
//! one-way TLS before it trusts anything the manager says
//! ([`JoinToken::verify_ca`]). The manager uses its secret to decide whether the
//! node may join, and as which role: it keeps one secret per role and stores
//! only the SHA-256 of each ([`JoinToken::secret_digest`]), so its state never
//! holds a token anyone could use.
//!
//! The secret is 32 random bytes written as 64 lowercase hex characters. Hex
//! over base32 (52 characters): the digest beside it is already hex, so the
//! whole token has one alphabet and one regular expression
//! (`BATON-1-[0-9a-f]{64}-[0-9a-f]{64}`) that secret scanners can grep for;
//! every hex string of the right length decodes to exactly one secret (base32
//! has spare bits in its last character); and it needs no dependency. Only
//! lowercase is accepted, so a token has one spelling.
//!
//! Nothing in this module prints a secret: [`Secret`] redacts itself in `Debug`
//! and `Display`, [`JoinToken`] has no `Display` (the full text comes only from
//! the explicit [`JoinToken::format`]), and a [`TokenError`] describes a defect
//! by position and length, never by the characters it found.

use std::fmt;

use subtle::ConstantTimeEq;
use zeroize::Zeroize;

use crate::{hex, root_digest};

/// What every join token starts with.
pub const TOKEN_PREFIX: &str = "BATON-";
/// The token format this code writes and reads.
pub const TOKEN_VERSION: &str = "1";
/// Bytes of randomness in a secret: 256 bits, beyond guessing.
pub const SECRET_LEN: usize = 32;
/// Characters of a SHA-256 digest in hex.
const DIGEST_HEX_LEN: usize = 64;
/// Characters of a secret in hex.
const SECRET_HEX_LEN: usize = 2 * SECRET_LEN;
/// Longest version field echoed back in an error: a real version is short,
/// anything longer may be a pasted secret.
const MAX_ECHOED_VERSION_LEN: usize = 4;

/// Why a join token was refused. No variant carries any character of a secret.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// The text does not start with `BATON-`.
    #[error("not a baton join token: it must start with \"BATON-\"")]
    WrongPrefix,
    /// The version field is missing or not a short number.
    #[error("the join token's version is missing or not a number: expected \"BATON-1-...\"")]
    MalformedVersion,
    /// The version is a number this code does not know.
    #[error("unknown join token version {version}: this baton reads version 1")]
    UnknownVersion {
        /// The version found (at most four digits).
        version: String,
    },
    /// The CA digest is not 64 lowercase hex characters.
    #[error("the CA digest in the join token must be 64 lowercase hex characters: {defect}")]
    MalformedDigest {
        /// What is wrong with it.
        defect: HexDefect,
    },
    /// The token ends after the CA digest.
    #[error("the join token ends after the CA digest: the secret is missing")]
    MissingSecret,
    /// The secret is not 64 lowercase hex characters.
    #[error("the secret in the join token must be 64 lowercase hex characters: {defect}")]
    MalformedSecret {
        /// What is wrong with it.
        defect: HexDefect,
    },
    /// A well-formed token is followed by more characters.
    #[error("the join token has {extra} unexpected characters after the secret")]
    TrailingGarbage {
        /// How many characters follow the secret.
        extra: usize,
    },
    /// The CA the node reached is not the one the token pins.
    #[error(
        "the cluster's CA (digest {cluster_digest}) is not the one the token names \
         (digest {token_digest}): refusing to join"
    )]
    CaMismatch {
        /// SHA-256 of the root certificate the node was served, hex.
        cluster_digest: String,
        /// The digest the token names.
        token_digest: String,
    },
    /// The system random source failed.
    #[error("random source failed")]
    Random,
}

/// What is wrong with a field that should be lowercase hex of a fixed length.
/// It says where, never what was there.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HexDefect {
    /// The field has this many characters instead of the expected number.
    Length {
        /// Characters found.
        found: usize,
    },
    /// The character at this position (0-based) is not `0-9` or `a-f`.
    NotLowercaseHex {
        /// Position of the first offending character.
        position: usize,
    },
}

impl fmt::Display for HexDefect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HexDefect::Length { found } => write!(f, "found {found} characters"),
            HexDefect::NotLowercaseHex { position } => {
                write!(f, "character {position} is not 0-9 or a-f")
            }
        }
    }
}

/// The secret half of a join token: 32 random bytes.
///
/// `Debug` and `Display` print `<redacted>`; equality is constant-time; the
/// bytes are zeroed when it is dropped. (A move may leave a copy on the stack
/// that is not zeroed: this is hygiene, not a guarantee.)
#[derive(Clone)]
pub struct Secret([u8; SECRET_LEN]);

impl Secret {
    /// A new secret from the system CSPRNG.
    pub fn generate() -> Result<Secret, TokenError> {
        let mut bytes = [0u8; SECRET_LEN];
        aws_lc_rs::rand::fill(&mut bytes).map_err(|_| TokenError::Random)?;
        Ok(Secret(bytes))
    }

    /// A secret with the given bytes: for fixtures and deterministic tests.
    pub fn from_bytes(bytes: [u8; SECRET_LEN]) -> Secret {
        Secret(bytes)
    }

    /// SHA-256 of the secret's bytes: what a manager stores. The secret has 256
    /// bits of entropy, so a fast hash is enough; a slow password hash would
    /// add nothing.
    pub fn digest(&self) -> [u8; 32] {
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &self.0);
        let mut out = [0u8; 32];
        out.copy_from_slice(digest.as_ref());
        out
    }

    fn parse(text: &str) -> Result<Secret, HexDefect> {
        check_hex(text, SECRET_HEX_LEN)?;
        let mut bytes = [0u8; SECRET_LEN];
        for (byte, pair) in bytes.iter_mut().zip(text.as_bytes().chunks_exact(2)) {
            *byte = (nibble(pair[0]) << 4) | nibble(pair[1]);
        }
        Ok(Secret(bytes))
    }
}

impl ConstantTimeEq for Secret {
    fn ct_eq(&self, other: &Secret) -> subtle::Choice {
        self.0.ct_eq(&other.0)
    }
}

impl PartialEq for Secret {
    fn eq(&self, other: &Secret) -> bool {
        self.ct_eq(other).into()
    }
}

impl Eq for Secret {}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl Drop for Secret {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

/// A parsed join token. Build one with [`JoinToken::generate`],
/// [`JoinToken::new`] or [`JoinToken::parse`]; each checks the CA digest, so a
/// `JoinToken` always formats to a token that parses back.
///
/// It has no `Display`, so it cannot end up in a log by accident; its `Debug`
/// shows the CA digest and a redacted secret. It has no `FromStr` either: a
/// CLI parser built on `FromStr` (clap's `value_parser`) prints the rejected
/// value in its error, which here would be the secret. Parse the string
/// after argument parsing with [`JoinToken::parse`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JoinToken {
    ca_digest: String,
    secret: Secret,
}

impl JoinToken {
    /// A token with a new random secret for the CA whose digest (64 lowercase
    /// hex, as [`crate::ClusterCa::root_digest`] gives) is `ca_digest`.
    pub fn generate(ca_digest: &str) -> Result<JoinToken, TokenError> {
        JoinToken::new(ca_digest, Secret::generate()?)
    }

    /// A token from its parts.
    pub fn new(ca_digest: &str, secret: Secret) -> Result<JoinToken, TokenError> {
        check_hex(ca_digest, DIGEST_HEX_LEN)
            .map_err(|defect| TokenError::MalformedDigest { defect })?;
        Ok(JoinToken {
            ca_digest: ca_digest.to_owned(),
            secret,
        })
    }

    /// Reads a token. Surrounding whitespace (a trailing newline from a file or
    /// a paste) is ignored; anything else that is not exactly
    /// `BATON-1-<64 hex>-<64 hex>` is refused with the first defect found.
    pub fn parse(text: &str) -> Result<JoinToken, TokenError> {
        let text = text.trim_ascii();
        let rest = text
            .strip_prefix(TOKEN_PREFIX)
            .ok_or(TokenError::WrongPrefix)?;
        let (version, rest) = rest.split_once('-').unwrap_or((rest, ""));
        if version.is_empty()
            || version.len() > MAX_ECHOED_VERSION_LEN
            || !version.bytes().all(|b| b.is_ascii_digit())
        {
            return Err(TokenError::MalformedVersion);
        }
        if version != TOKEN_VERSION {
            return Err(TokenError::UnknownVersion {
                version: version.to_owned(),
            });
        }
        let (ca_digest, secret_text) = match rest.split_once('-') {
            Some((digest, secret)) => (digest, Some(secret)),
            None => (rest, None),
        };
        check_hex(ca_digest, DIGEST_HEX_LEN)
            .map_err(|defect| TokenError::MalformedDigest { defect })?;
        let secret_text = secret_text.ok_or(TokenError::MissingSecret)?;
        let secret = match Secret::parse(secret_text) {
            Ok(secret) => secret,
            // Well-formed up to here, then more: say so rather than "too long".
            Err(HexDefect::Length { found }) if found > SECRET_HEX_LEN => {
                match secret_text.get(..SECRET_HEX_LEN).map(Secret::parse) {
                    Some(Ok(_)) => {
                        return Err(TokenError::TrailingGarbage {
                            extra: found - SECRET_HEX_LEN,
                        });
                    }
                    _ => {
                        return Err(TokenError::MalformedSecret {
                            defect: first_non_hex(secret_text),
                        });
                    }
                }
            }
            Err(defect) => return Err(TokenError::MalformedSecret { defect }),
        };
        Ok(JoinToken {
            ca_digest: ca_digest.to_owned(),
            secret,
        })
    }

    /// The token's text, `BATON-1-<ca digest>-<secret>`. This is the secret
    /// itself: show it to the operator or send it to a manager, never log it.
    pub fn format(&self) -> String {
        format!(
            "{TOKEN_PREFIX}{TOKEN_VERSION}-{}-{}",
            self.ca_digest,
            hex(&self.secret.0)
        )
    }

    /// The CA digest the token pins, 64 lowercase hex.
    pub fn ca_digest(&self) -> &str {
        &self.ca_digest
    }

    /// The secret.
    pub fn secret(&self) -> &Secret {
        &self.secret
    }

    /// SHA-256 of the secret: what a manager stores for each role.
    pub fn secret_digest(&self) -> [u8; 32] {
        self.secret.digest()
    }

    /// Whether this token's secret is the one whose digest is `expected`, in
    /// constant time.
    pub fn matches_digest(&self, expected: &[u8; 32]) -> bool {
        self.secret_digest().ct_eq(expected).into()
    }

    /// Checks that `root_der`, the root certificate a joining node was served,
    /// is the one the token names. A mismatch means the node reached the wrong
    /// cluster or a man in the middle: it must not send its CSR.
    pub fn verify_ca(&self, root_der: &[u8]) -> Result<(), TokenError> {
        let cluster_digest = root_digest(root_der);
        if cluster_digest == self.ca_digest {
            Ok(())
        } else {
            Err(TokenError::CaMismatch {
                cluster_digest,
                token_digest: self.ca_digest.clone(),
            })
        }
    }
}

/// Checks that `text` is exactly `len` characters of lowercase hex.
fn check_hex(text: &str, len: usize) -> Result<(), HexDefect> {
    let found = text.chars().count();
    if found != len {
        return Err(HexDefect::Length { found });
    }
    match first_non_hex(text) {
        HexDefect::NotLowercaseHex { position } => Err(HexDefect::NotLowercaseHex { position }),
        HexDefect::Length { .. } => Ok(()),
    }
}

/// The first character of `text` that is not lowercase hex, or its length if
/// all are.
fn first_non_hex(text: &str) -> HexDefect {
    match text
        .chars()
        .position(|c| !matches!(c, '0'..='9' | 'a'..='f'))
    {
        Some(position) => HexDefect::NotLowercaseHex { position },
        None => HexDefect::Length {
            found: text.chars().count(),
        },
    }
}

/// The value of a lowercase hex digit; the caller has checked it is one.
fn nibble(digit: u8) -> u8 {
    match digit {
        b'0'..=b'9' => digit - b'0',
        _ => digit - b'a' + 10,
    }
}

#[cfg(test)]
mod tests;
