//! A typed HTTPS client for the API.

use std::sync::Arc;

use baton_pki::ManagerVerifier;
use bytes::Bytes;
use futures::{Stream, StreamExt};
use reqwest::{Method, RequestBuilder, Response};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde::de::DeserializeOwned;

use crate::config::ClientConfig;
use crate::types::{
    AvailabilityRequest, ClusterInfo, ClusterSettingsRequest, ErrorBody, Health, JobInfo,
    JoinTokenInfo, NodeInfo, RemovedNode, SubmitResponse, TaskInfo,
};

/// A failed API call.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The client configuration is unusable.
    #[error("client config: {0}")]
    Config(String),
    /// The API could not be reached or the connection broke.
    #[error("cannot reach the API at {url}: {message}")]
    Transport {
        /// Base URL.
        url: String,
        /// Cause.
        message: String,
    },
    /// The API answered with an error.
    #[error("{}", .body.message)]
    Status {
        /// HTTP status.
        status: u16,
        /// The error body.
        body: ErrorBody,
    },
    /// The answer could not be decoded.
    #[error("unexpected answer from the API: {0}")]
    Decode(String),
}

/// An API client. Cheap to clone.
#[derive(Clone, Debug)]
pub struct ApiClient {
    http: reqwest::Client,
    base: String,
}

impl ApiClient {
    /// A client that presents the configuration's client certificate and
    /// accepts only a manager of the configuration's cluster (see the crate
    /// doc): the host name in `api` is not checked, certificates name node ids.
    pub fn new(config: &ClientConfig) -> Result<ApiClient, ApiError> {
        let certs: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(config.cert.as_bytes())
                .collect::<Result<_, _>>()
                .map_err(|e| ApiError::Config(format!("cert: {e}")))?;
        if certs.is_empty() {
            return Err(ApiError::Config("cert: no certificate in it".to_owned()));
        }
        // The parser's message never includes key material.
        let key = PrivateKeyDer::from_pem_slice(config.key.as_bytes())
            .map_err(|e| ApiError::Config(format!("key: {e}")))?;
        Self::build(config, Some((certs, key)))
    }

    /// A client that verifies the server like [`ApiClient::new`] but presents
    /// no client certificate: every call is refused with 401. For tests of
    /// authentication.
    pub fn anonymous(config: &ClientConfig) -> Result<ApiClient, ApiError> {
        Self::build(config, None)
    }

    fn build(
        config: &ClientConfig,
        identity: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
    ) -> Result<ApiClient, ApiError> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let verifier = ManagerVerifier::new(&config.ca_cert, provider.clone())
            .map_err(|e| ApiError::Config(format!("ca_cert: {e}")))?;
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| ApiError::Config(e.to_string()))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier));
        let mut tls = match identity {
            Some((certs, key)) => builder
                .with_client_auth_cert(certs, key)
                .map_err(|e| ApiError::Config(format!("cert and key: {e}")))?,
            None => builder.with_no_client_auth(),
        };
        tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        // Every connection is a full handshake: the server verifies the
        // certificate each time (it disables resumption on its side too).
        tls.resumption = rustls::client::Resumption::disabled();
        let http = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .connect_timeout(std::time::Duration::from_secs(5))
            .build()
            .map_err(|e| ApiError::Config(e.to_string()))?;
        Ok(ApiClient {
            http,
            base: config.api.trim_end_matches('/').to_owned(),
        })
    }

    fn request(&self, method: Method, path: &str) -> RequestBuilder {
        self.http.request(method, format!("{}{path}", self.base))
    }

    async fn send(&self, req: RequestBuilder) -> Result<Response, ApiError> {
        let resp = req.send().await.map_err(|e| ApiError::Transport {
            url: self.base.clone(),
            message: error_chain(&e),
        })?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status();
        let body = resp.bytes().await.unwrap_or_default();
        let body = serde_json::from_slice::<ErrorBody>(&body).unwrap_or_else(|_| ErrorBody {
            code: "http".to_owned(),
            message: format!(
                "HTTP {}: {}",
                status.as_u16(),
                String::from_utf8_lossy(&body).trim()
            ),
            details: Vec::new(),
        });
        Err(ApiError::Status {
            status: status.as_u16(),
            body,
        })
    }

    async fn json<T: DeserializeOwned>(&self, req: RequestBuilder) -> Result<T, ApiError> {
        let resp = self.send(req).await?;
        let bytes = resp.bytes().await.map_err(|e| ApiError::Transport {
            url: self.base.clone(),
            message: error_chain(&e),
        })?;
        serde_json::from_slice(&bytes).map_err(|e| ApiError::Decode(e.to_string()))
    }

    /// `GET /v1/health`.
    pub async fn health(&self) -> Result<Health, ApiError> {
        self.json(self.request(Method::GET, "/v1/health")).await
    }

    /// `POST /v1/jobs`: creates or updates a job from spec bytes, sent unchanged.
    /// `yaml` selects the content type; `source_name` prefixes error lines.
    pub async fn submit_job(
        &self,
        source_name: &str,
        bytes: Vec<u8>,
        yaml: bool,
    ) -> Result<SubmitResponse, ApiError> {
        let content_type = if yaml {
            "application/yaml"
        } else {
            "application/json"
        };
        let req = self
            .request(Method::POST, "/v1/jobs")
            .query(&[("source", source_name)])
            .header(reqwest::header::CONTENT_TYPE, content_type)
            .body(bytes);
        self.json(req).await
    }

    /// `GET /v1/jobs`.
    pub async fn list_jobs(&self) -> Result<Vec<JobInfo>, ApiError> {
        self.json(self.request(Method::GET, "/v1/jobs")).await
    }

    /// `GET /v1/jobs/{name}`.
    pub async fn get_job(&self, name: &str) -> Result<JobInfo, ApiError> {
        self.json(self.request(Method::GET, &format!("/v1/jobs/{name}")))
            .await
    }

    /// `POST /v1/jobs/{name}/stop`.
    pub async fn stop_job(&self, name: &str) -> Result<JobInfo, ApiError> {
        self.json(self.request(Method::POST, &format!("/v1/jobs/{name}/stop")))
            .await
    }

    /// `GET /v1/tasks[?job=NAME]`.
    pub async fn list_tasks(&self, job: Option<&str>) -> Result<Vec<TaskInfo>, ApiError> {
        let mut req = self.request(Method::GET, "/v1/tasks");
        if let Some(job) = job {
            req = req.query(&[("job", job)]);
        }
        self.json(req).await
    }

    /// `GET /v1/tasks/{id}`.
    pub async fn get_task(&self, id: &str) -> Result<TaskInfo, ApiError> {
        self.json(self.request(Method::GET, &format!("/v1/tasks/{id}")))
            .await
    }

    /// `GET /v1/tasks/{id}/logs[?follow=true]`: the log as a byte stream.
    pub async fn logs(
        &self,
        id: &str,
        follow: bool,
    ) -> Result<impl Stream<Item = Result<Bytes, ApiError>> + use<>, ApiError> {
        let req = self
            .request(Method::GET, &format!("/v1/tasks/{id}/logs"))
            .query(&[("follow", follow)]);
        let resp = self.send(req).await?;
        let base = self.base.clone();
        Ok(resp.bytes_stream().map(move |chunk| {
            chunk.map_err(|e| ApiError::Transport {
                url: base.clone(),
                message: error_chain(&e),
            })
        }))
    }

    /// `GET /v1/nodes`.
    pub async fn list_nodes(&self) -> Result<Vec<NodeInfo>, ApiError> {
        self.json(self.request(Method::GET, "/v1/nodes")).await
    }

    /// `POST /v1/nodes/{id}/availability`.
    pub async fn set_node_availability(
        &self,
        id: &str,
        availability: &str,
    ) -> Result<NodeInfo, ApiError> {
        let req = self
            .request(Method::POST, &format!("/v1/nodes/{id}/availability"))
            .json(&AvailabilityRequest {
                availability: availability.to_owned(),
            });
        self.json(req).await
    }

    /// `GET` of any path, as JSON (e.g. `/v1/openapi.json`).
    pub async fn get_value(&self, path: &str) -> Result<serde_json::Value, ApiError> {
        self.json(self.request(Method::GET, path)).await
    }

    /// `GET /v1/cluster/join-tokens/{role}` (`worker` or `manager`).
    pub async fn join_token(&self, role: &str) -> Result<JoinTokenInfo, ApiError> {
        self.json(self.request(Method::GET, &format!("/v1/cluster/join-tokens/{role}")))
            .await
    }

    /// `POST /v1/cluster/join-tokens/{role}/rotate`: a new token; the old one
    /// no longer admits anyone.
    pub async fn rotate_join_token(&self, role: &str) -> Result<JoinTokenInfo, ApiError> {
        self.json(self.request(
            Method::POST,
            &format!("/v1/cluster/join-tokens/{role}/rotate"),
        ))
        .await
    }

    /// `GET /v1/cluster`: the cluster's identity and settings.
    pub async fn cluster_info(&self) -> Result<ClusterInfo, ApiError> {
        self.json(self.request(Method::GET, "/v1/cluster")).await
    }

    /// `POST /v1/cluster/ca/rotate`: starts moving the cluster to a new
    /// root CA; answers the cluster with the rotation's progress.
    pub async fn rotate_root_ca(&self) -> Result<ClusterInfo, ApiError> {
        self.json(self.request(Method::POST, "/v1/cluster/ca/rotate"))
            .await
    }

    /// `POST /v1/cluster/settings`: changes cluster-wide settings; answers
    /// the cluster as it is afterwards.
    pub async fn update_cluster(
        &self,
        settings: &ClusterSettingsRequest,
    ) -> Result<ClusterInfo, ApiError> {
        self.json(
            self.request(Method::POST, "/v1/cluster/settings")
                .json(settings),
        )
        .await
    }

    /// `POST /v1/nodes/{id}/remove[?force=true]`: removes a node and revokes
    /// its certificate.
    pub async fn remove_node(&self, id: &str, force: bool) -> Result<RemovedNode, ApiError> {
        let req = self
            .request(Method::POST, &format!("/v1/nodes/{id}/remove"))
            .query(&[("force", force)]);
        self.json(req).await
    }
}

/// The root cause of an error (e.g. "Connection refused"), which is what a user
/// can act on; reqwest's outer layers only repeat the URL.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut root = e;
    while let Some(cause) = root.source() {
        root = cause;
    }
    root.to_string()
}
