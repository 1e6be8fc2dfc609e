//! The client configuration file (`client.toml`, `admin.toml`): where the
//! managers' API is, the cluster's root CA, and the user's client certificate
//! and private key. It holds a credential, so its creator writes it with mode
//! 0600, and the key never appears in `Debug`.

use std::fmt;
use std::path::Path;

use serde::{Deserialize, Serialize};

/// Client configuration.
///
/// The file lists every manager (`apis = ["https://…", …]`): any of them
/// serves the API. A file written before managers formed a cluster has one
/// `api = "https://…"` instead; it is read as a list of one.
#[derive(Clone, Serialize, Deserialize)]
#[serde(try_from = "ClientConfigFile")]
pub struct ClientConfig {
    /// Base URLs of the managers' API, `https://host:port`, in the order the
    /// client tries them; never empty when loaded from a file.
    pub apis: Vec<String>,
    /// PEM of the cluster's root CA: the server must chain to it.
    pub ca_cert: String,
    /// PEM of the user's client certificate (role admin), signed by the root.
    pub cert: String,
    /// PEM of the client certificate's private key.
    pub key: String,
}

/// The file as written, old and new forms alike; [`ClientConfig`] is what
/// survives validation.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ClientConfigFile {
    apis: Option<Vec<String>>,
    /// The one address of a file from before `apis`.
    api: Option<String>,
    ca_cert: String,
    cert: String,
    key: String,
}

impl TryFrom<ClientConfigFile> for ClientConfig {
    type Error = String;

    fn try_from(file: ClientConfigFile) -> Result<ClientConfig, String> {
        let apis = match (file.apis, file.api) {
            (Some(_), Some(_)) => {
                return Err("both `api` and `apis` are set: keep only `apis`".to_owned());
            }
            (None, Some(api)) => {
                check_api_url(&api).map_err(|reason| format!("api: {api:?} {reason}"))?;
                vec![api]
            }
            (Some(apis), None) => {
                if apis.is_empty() {
                    return Err("apis: empty: list at least one manager's API URL".to_owned());
                }
                for (idx, url) in apis.iter().enumerate() {
                    check_api_url(url)
                        .map_err(|reason| format!("apis[{idx}]: {url:?} {reason}"))?;
                }
                apis
            }
            (None, None) => return Err("missing field `apis`".to_owned()),
        };
        Ok(ClientConfig {
            apis,
            ca_cert: file.ca_cert,
            cert: file.cert,
            key: file.key,
        })
    }
}

/// Why `url` is not an API address, if it is not one: the API speaks only
/// HTTPS, so anything but an `https://` URL with a host would fail later,
/// less clearly.
fn check_api_url(url: &str) -> Result<(), String> {
    let parsed = reqwest::Url::parse(url).map_err(|e| format!("is not a URL ({e})"))?;
    if parsed.scheme() != "https" {
        return Err("is not an https:// URL (the API speaks TLS only)".to_owned());
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err("has no host".to_owned());
    }
    Ok(())
}

/// The API URL for an address given on the command line: `https://host:port`
/// as is, or `host:port`, which means `https://host:port`.
pub fn parse_api_addr(addr: &str) -> Result<String, ConfigError> {
    let addr = addr.trim();
    let url = if addr.contains("://") {
        addr.to_owned()
    } else {
        format!("https://{addr}")
    };
    check_api_url(&url).map_err(|reason| ConfigError::Addr {
        addr: addr.to_owned(),
        reason,
    })?;
    Ok(url.trim_end_matches('/').to_owned())
}

impl fmt::Debug for ClientConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientConfig")
            .field("apis", &self.apis)
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
        /// What is wrong, starting with the field (`apis[1]: …`).
        message: String,
    },
    /// An API address (given on the command line) is not valid.
    #[error("invalid API address {addr:?}: {reason}")]
    Addr {
        /// The address as given.
        addr: String,
        /// What is wrong.
        reason: String,
    },
}

impl ClientConfig {
    /// Reads a configuration file.
    pub fn load(path: &Path) -> Result<ClientConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(path, &text)
    }

    fn parse(path: &Path, text: &str) -> Result<ClientConfig, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Invalid {
            path: path.display().to_string(),
            message: e.message().to_owned(),
        })
    }

    /// The file's text, always in the `apis` form. It holds the private key:
    /// write it with mode 0600.
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

    const PEMS: &str = "ca_cert = \"CA\"\ncert = \"CERT\"\nkey = \"KEY\"\n";

    fn parse(addrs: &str) -> Result<ClientConfig, String> {
        ClientConfig::parse(
            Path::new("/etc/baton/admin.toml"),
            &format!("{addrs}\n{PEMS}"),
        )
        .map_err(|e| e.to_string())
    }

    #[test]
    fn debug_never_shows_the_key_and_unknown_fields_are_refused() {
        let config = ClientConfig {
            apis: vec!["https://127.0.0.1:1".to_owned()],
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

    #[test]
    fn apis_lists_every_manager_and_is_always_written() {
        let config =
            parse(r#"apis = ["https://10.0.0.1:7443", "https://m2.example:7443/"]"#).expect("apis");
        assert_eq!(
            config.apis,
            ["https://10.0.0.1:7443", "https://m2.example:7443/"]
        );
        let text = config.to_toml();
        assert!(
            text.contains(r#"apis = ["https://10.0.0.1:7443", "https://m2.example:7443/"]"#),
            "{text}"
        );
        assert!(!text.contains("\napi ="), "{text}");
    }

    #[test]
    fn an_old_file_with_one_api_reads_as_a_list_of_one_and_is_rewritten_as_apis() {
        let config = parse(r#"api = "https://127.0.0.1:7443""#).expect("old form");
        assert_eq!(config.apis, ["https://127.0.0.1:7443"]);
        assert!(
            config
                .to_toml()
                .contains(r#"apis = ["https://127.0.0.1:7443"]"#)
        );
    }

    #[test]
    fn invalid_addresses_are_refused_naming_the_file_and_field() {
        let cases = [
            (
                "apis = []",
                "invalid client config /etc/baton/admin.toml: apis: empty: list at least one manager's API URL",
            ),
            (
                r#"apis = ["https://a:1", "http://b:2"]"#,
                r#"invalid client config /etc/baton/admin.toml: apis[1]: "http://b:2" is not an https:// URL (the API speaks TLS only)"#,
            ),
            (
                r#"apis = ["10.0.0.1:7443"]"#,
                r#"invalid client config /etc/baton/admin.toml: apis[0]: "10.0.0.1:7443" is not a URL (relative URL without a base)"#,
            ),
            (
                r#"api = "http://127.0.0.1:7443""#,
                r#"invalid client config /etc/baton/admin.toml: api: "http://127.0.0.1:7443" is not an https:// URL (the API speaks TLS only)"#,
            ),
            (
                r#"api = "https://a:1"
apis = ["https://a:1"]"#,
                "invalid client config /etc/baton/admin.toml: both `api` and `apis` are set: keep only `apis`",
            ),
            (
                "",
                "invalid client config /etc/baton/admin.toml: missing field `apis`",
            ),
            (
                "apis = \"https://a:1\"",
                "invalid client config /etc/baton/admin.toml: invalid type: string \"https://a:1\", expected a sequence",
            ),
        ];
        for (addrs, expected) in cases {
            assert_eq!(
                parse(addrs).map(|c| c.apis),
                Err(expected.to_owned()),
                "{addrs}"
            );
        }
    }

    #[test]
    fn a_command_line_address_may_omit_https() {
        assert_eq!(
            parse_api_addr("10.0.0.1:7443").expect("host:port"),
            "https://10.0.0.1:7443"
        );
        assert_eq!(
            parse_api_addr("https://m1.example:7443/").expect("url"),
            "https://m1.example:7443"
        );
        assert_eq!(
            parse_api_addr("[::1]:7443").expect("ipv6"),
            "https://[::1]:7443"
        );
        assert_eq!(
            parse_api_addr("http://10.0.0.1:7443")
                .expect_err("plain http")
                .to_string(),
            r#"invalid API address "http://10.0.0.1:7443": is not an https:// URL (the API speaks TLS only)"#
        );
        assert!(parse_api_addr("").is_err());
        assert!(parse_api_addr("host:port").is_err());
    }
}
