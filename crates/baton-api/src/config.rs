//! The client configuration file (`client.toml`): where the API is, the CA
//! that signed its certificate, and the bearer token. It holds a credential,
//! so it is written with mode 0600 and its token never appears in `Debug`.

use std::fmt;
use std::path::Path;

use serde::{Deserialize, Serialize};

/// Client configuration.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientConfig {
    /// Base URL of the API, `https://host:port`.
    pub api: String,
    /// Bearer token.
    pub token: String,
    /// PEM of the CA that signed the API's certificate.
    pub ca_cert: String,
}

impl fmt::Debug for ClientConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientConfig")
            .field("api", &self.api)
            .field("token", &"<redacted>")
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

    /// The file's text.
    pub fn to_toml(&self) -> String {
        let body = toml::to_string(self).expect("a struct of strings always serializes");
        format!(
            "# Baton client configuration. It holds a credential: keep it private (mode 0600).\n{body}"
        )
    }
}
