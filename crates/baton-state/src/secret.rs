//! [`Secret`]: a string the state holds but never shows.
//!
//! Key material kept in the replicated state (the root CA's key, an external
//! CA's authentication key) is wrapped in it: `Debug` prints a placeholder,
//! there is no `Display`, and the bytes are wiped when the last copy is
//! dropped. Reading the value takes an explicit [`Secret::expose`].

use std::fmt;

use serde::{Deserialize, Serialize};
use zeroize::Zeroize;

/// A secret string: redacted in `Debug`, wiped on drop.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps `value`.
    pub fn new(value: String) -> Secret {
        Secret(value)
    }

    /// The value. Keep what you do with it out of logs and errors.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl Drop for Secret {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

/// Secret bytes (a user's secret value): redacted in `Debug`, wiped on
/// drop, base64 text in JSON.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SecretBytes(#[serde(with = "base64_bytes")] Vec<u8>);

impl SecretBytes {
    /// Wraps `value`.
    pub fn new(value: Vec<u8>) -> SecretBytes {
        SecretBytes(value)
    }

    /// The value. Keep what you do with it out of logs and errors.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }

    /// Its size in bytes (not secret).
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether it is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for SecretBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretBytes(<redacted {} bytes>)", self.0.len())
    }
}

impl Drop for SecretBytes {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

/// Serde of bytes as standard base64 text: `#[serde(with = "base64_bytes")]`.
pub mod base64_bytes {
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD;
    use serde::{Deserialize, Deserializer, Serializer};

    /// Writes `bytes` as base64 text.
    pub fn serialize<S: Serializer>(bytes: &[u8], serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&STANDARD.encode(bytes))
    }

    /// Reads base64 text.
    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<u8>, D::Error> {
        let text = zeroize::Zeroizing::new(String::deserialize(deserializer)?);
        STANDARD
            .decode(text.as_bytes())
            .map_err(|_| serde::de::Error::custom("invalid base64"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_bytes_never_show_and_travel_as_base64() {
        let secret = SecretBytes::new(b"hunter2\x00\xff".to_vec());
        assert_eq!(format!("{secret:?}"), "SecretBytes(<redacted 9 bytes>)");
        let json = serde_json::to_string(&secret).expect("encode");
        assert_eq!(json, "\"aHVudGVyMgD/\"");
        let back: SecretBytes = serde_json::from_str(&json).expect("decode");
        assert_eq!(back.expose(), secret.expose());
        let bad = serde_json::from_str::<SecretBytes>("\"not base64!\"").expect_err("bad");
        assert!(!bad.to_string().contains("not base64!"), "{bad}");
    }

    #[test]
    fn debug_never_shows_the_value_and_serde_is_transparent() {
        let secret = Secret::new("-----BEGIN PRIVATE KEY----- abc".to_owned());
        assert_eq!(format!("{secret:?}"), "Secret(<redacted>)");
        assert_eq!(format!("{:?}", Some(&secret)), "Some(Secret(<redacted>))");
        let json = serde_json::to_string(&secret).expect("encode");
        assert_eq!(json, "\"-----BEGIN PRIVATE KEY----- abc\"");
        let back: Secret = serde_json::from_str(&json).expect("decode");
        assert_eq!(back.expose(), secret.expose());
    }
}
