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

#[cfg(test)]
mod tests {
    use super::*;

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
