//! The client configuration file (`client.toml`, `admin.toml`): where the API
//! is, the cluster's root CA, and the user's client certificate and private
//! key. It holds a credential, so its creator writes it with mode 0600, and
//! the key never appears in `Debug`.

use std::fmt;
use std::path::Path;

use serde::{Deserialize, Serialize};

/// Client configuration.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientConfig {
    /// Base URL of the API, `https://host:port`.
    pub api: String,
    /// PEM of the cluster's root CA: the server must chain to it.
    pub ca_cert: String,
    /// PEM of the user's client certificate (role admin), signed by the root.
    pub cert: String,
    /// PEM of the client certificate's private key.
    pub key: String,
}

impl fmt::Debug for ClientConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientConfig")
            .field("api", &self.api)
            .field("key", &"<redacted>")
            .finish_non_exhaustive()
    }
}

/// Reading the configuration failed.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read client config {path}: {source}")]
    Read {
        /// File.
        path: String,
        /// Cause.
        source: std::io::Error,
    },
    /// The file is not valid.
    #[error("invalid client config {path}: {message}")]
    Invalid {
        /// File.
        path: String,
        /// What is wrong.
        message: String,
    },
}

impl ClientConfig {
    /// Reads a configuration file.
    pub fn load(path: &Path) -> Result<ClientConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        toml::from_str(&text).map_err(|e| ConfigError::Invalid {
            path: path.display().to_string(),
            message: e.message().to_owned(),
        })
    }

    /// The file's text. It holds the private key: write it with mode 0600.
    pub fn to_toml(&self) -> String {
        let body = toml::to_string(self).expect("a struct of strings always serializes");
        format!(
            "# Baton client configuration. It holds a credential: keep it private (mode 0600).\n{body}"
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_the_key_and_unknown_fields_are_refused() {
        let config = ClientConfig {
            api: "https://127.0.0.1:1".to_owned(),
            ca_cert: "CA".to_owned(),
            cert: "CERT".to_owned(),
            key: "-----BEGIN PRIVATE KEY-----secret".to_owned(),
        };
        assert!(!format!("{config:?}").contains("secret"));
        let text = config.to_toml();
        let back: ClientConfig = toml::from_str(&text).expect("round trip");
        assert_eq!(back.key, config.key);
        let with_token = format!("{text}\ntoken = \"abc\"\n");
        assert!(toml::from_str::<ClientConfig>(&with_token).is_err());
    }
}
