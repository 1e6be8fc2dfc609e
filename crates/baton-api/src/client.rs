//! A typed HTTPS client for the API, with failover between managers.
//!
//! Any manager serves the API (writes reach the leader through the store), so
//! the client tries the configuration's addresses in order until one answers,
//! and keeps using that one. "Answers" means an HTTP response of any status: a
//! 503 from a manager that cannot reach the leader is shown as is, not retried
//! elsewhere. Only a request that never reached a manager (connection refused,
//! TLS handshake failed, connect timeout) is sent to the next one, except
//! reads (`GET`), which are safe to repeat whatever happened. A write cut off
//! after it was sent may have taken effect, so it is never resent.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use baton_pki::ManagerVerifier;
use bytes::Bytes;
use futures::{Stream, StreamExt};
use reqwest::{Method, RequestBuilder, Response, Url};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde::de::DeserializeOwned;

use crate::config::ClientConfig;
use crate::exec::{ClientFrame, ExecStart, FrameBuffer, ServerFrame};
use crate::types::{
    AvailabilityRequest, ClusterInfo, ClusterSettingsRequest, ErrorBody, Health, JobInfo, JobPlan,
    JoinTokenInfo, NodeInfo, NodeLabelsRequest, RemovedNode, ScaleRequest, ScaleResponse,
    SubmitResponse, TaskInfo,
};

/// A failed API call.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The client configuration is unusable.
    #[error("client config: {0}")]
    Config(String),
    /// The connection broke after the request reached a manager: a write
    /// may or may not have taken effect.
    #[error("the connection to the API at {url} broke: {message}")]
    Transport {
        /// Base URL.
        url: String,
        /// Cause.
        message: String,
    },
    /// No manager answered: every address, each with why.
    #[error("no manager answered: {}", list_unanswered(.attempts))]
    Unreachable {
        /// One per address, in the order tried.
        attempts: Vec<Unanswered>,
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

/// An address that did not answer, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unanswered {
    /// Base URL.
    pub url: String,
    /// The root cause (e.g. "Connection refused (os error 111)").
    pub error: String,
}

fn list_unanswered(attempts: &[Unanswered]) -> String {
    attempts
        .iter()
        .map(|a| format!("{}: {}", a.url, a.error))
        .collect::<Vec<_>>()
        .join("; ")
}

/// Requests are built against this stand-in origin, then aimed at each
/// manager in turn ([`aim`]): reqwest binds a request to one URL.
const ANY_MANAGER: &str = "https://any-manager.invalid";

/// An API client. Cheap to clone; clones share which manager answered last.
#[derive(Clone, Debug)]
pub struct ApiClient {
    http: reqwest::Client,
    /// The managers' base URLs, without a trailing `/`, in the configuration's order.
    bases: Arc<[String]>,
    /// Index in `bases` of the manager that answered last, tried first, so a
    /// command of many calls waits for a dead manager once, not per call.
    preferred: Arc<AtomicUsize>,
    /// Ask for linearizable reads ([`crate::READ_HEADER`]).
    linearizable: bool,
}

impl ApiClient {
    /// A client that presents the configuration's client certificate and
    /// accepts only a manager of the configuration's cluster (see the crate
    /// doc): the host names in `apis` are not checked, certificates name node
    /// ids.
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
        if config.apis.is_empty() {
            return Err(ApiError::Config("apis: no manager API URL".to_owned()));
        }
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
            bases: config
                .apis
                .iter()
                .map(|api| api.trim_end_matches('/').to_owned())
                .collect(),
            preferred: Arc::new(AtomicUsize::new(0)),
            linearizable: false,
        })
    }

    fn request(&self, method: Method, path: &str) -> RequestBuilder {
        let req = self.http.request(method, format!("{ANY_MANAGER}{path}"));
        if self.linearizable {
            req.header(crate::READ_HEADER, "linearizable")
        } else {
            req
        }
    }

    /// Reads from now on are linearizable: they see every write
    /// acknowledged before them, whichever manager answers (at the cost of
    /// a round trip to a majority).
    pub fn linearizable(mut self) -> ApiClient {
        self.linearizable = true;
        self
    }

    /// Sends `req` to the first manager that answers (see the module doc);
    /// an error status is an answer, returned as [`ApiError::Status`].
    async fn send(&self, req: RequestBuilder) -> Result<Response, ApiError> {
        let template = req
            .build()
            .map_err(|e| ApiError::Config(format!("request: {e}")))?;
        let first = self.preferred.load(Ordering::Relaxed);
        let mut attempts = Vec::new();
        for base_idx in try_order(self.bases.len(), first) {
            let base = &self.bases[base_idx];
            let mut attempt = template
                .try_clone()
                .expect("request bodies are bytes, never streams");
            *attempt.url_mut() = aim(base, template.url())?;
            match self.http.execute(attempt).await {
                Ok(resp) => {
                    self.preferred.store(base_idx, Ordering::Relaxed);
                    return answer(resp).await;
                }
                Err(e) if may_try_next(template.method(), e.is_connect()) => {
                    attempts.push(Unanswered {
                        url: base.clone(),
                        error: error_chain(&e),
                    });
                }
                Err(e) => {
                    return Err(ApiError::Transport {
                        url: base.clone(),
                        message: format!(
                            "{} (the request was sent: check whether it took effect before repeating it)",
                            error_chain(&e)
                        ),
                    });
                }
            }
        }
        Err(ApiError::Unreachable { attempts })
    }

    async fn json<T: DeserializeOwned>(&self, req: RequestBuilder) -> Result<T, ApiError> {
        let resp = self.send(req).await?;
        let url = origin(&resp);
        let bytes = resp.bytes().await.map_err(|e| ApiError::Transport {
            url,
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

    /// `POST /v1/jobs/plan`: what submitting the spec bytes would do, without
    /// changing anything. Same body and errors as [`ApiClient::submit_job`].
    pub async fn plan_job(
        &self,
        source_name: &str,
        bytes: Vec<u8>,
        yaml: bool,
    ) -> Result<JobPlan, ApiError> {
        let content_type = if yaml {
            "application/yaml"
        } else {
            "application/json"
        };
        let req = self
            .request(Method::POST, "/v1/jobs/plan")
            .query(&[("source", source_name)])
            .header(reqwest::header::CONTENT_TYPE, content_type)
            .body(bytes);
        self.json(req).await
    }

    /// `POST /v1/jobs/{name}/scale`: sets a service's replica count.
    pub async fn scale_job(&self, name: &str, replicas: u32) -> Result<ScaleResponse, ApiError> {
        let req = self
            .request(Method::POST, &format!("/v1/jobs/{name}/scale"))
            .json(&ScaleRequest { replicas });
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
        let url = origin(&resp);
        Ok(resp.bytes_stream().map(move |chunk| {
            chunk.map_err(|e| ApiError::Transport {
                url: url.clone(),
                message: error_chain(&e),
            })
        }))
    }

    /// `POST /v1/tasks/{id}/exec`: runs `start`'s command in the task, then
    /// sends `input` (stdin, its end, resizes); the answer is the command's
    /// output and how it ended, as [`ServerFrame`]s. Full duplex over HTTP/2,
    /// to the manager that answered last (a streamed body cannot be sent
    /// twice).
    pub async fn exec<S>(
        &self,
        id: &str,
        start: ExecStart,
        input: S,
    ) -> Result<impl Stream<Item = Result<ServerFrame, ApiError>> + use<S>, ApiError>
    where
        S: Stream<Item = ClientFrame> + Send + 'static,
    {
        let start = ClientFrame::Start(start).encode();
        let body = futures::stream::once(async move { start })
            .chain(input.map(|frame| frame.encode()))
            .map(Ok::<_, std::io::Error>);
        let mut req = self
            .request(Method::POST, &format!("/v1/tasks/{id}/exec"))
            .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
            .body(reqwest::Body::wrap_stream(body))
            .build()
            .map_err(|e| ApiError::Config(format!("request: {e}")))?;
        let base = &self.bases[self.preferred.load(Ordering::Relaxed) % self.bases.len()];
        *req.url_mut() = aim(base, req.url())?;
        let resp = self
            .http
            .execute(req)
            .await
            .map_err(|e| ApiError::Transport {
                url: base.clone(),
                message: error_chain(&e),
            })?;
        let resp = answer(resp).await?;
        let url = origin(&resp);
        let state = (resp.bytes_stream(), FrameBuffer::default(), false);
        Ok(futures::stream::unfold(
            state,
            move |(mut chunks, mut frames, done)| {
                let url = url.clone();
                async move {
                    if done {
                        return None;
                    }
                    loop {
                        match frames.next_server() {
                            Ok(Some(frame)) => {
                                let last =
                                    matches!(frame, ServerFrame::Exit(_) | ServerFrame::Error(_));
                                return Some((Ok(frame), (chunks, frames, last)));
                            }
                            Ok(None) => {}
                            Err(e) => {
                                let error = ApiError::Decode(e.to_string());
                                return Some((Err(error), (chunks, frames, true)));
                            }
                        }
                        let error = match chunks.next().await {
                            Some(Ok(chunk)) => {
                                frames.extend(&chunk);
                                continue;
                            }
                            Some(Err(e)) => ApiError::Transport {
                                url,
                                message: error_chain(&e),
                            },
                            None => ApiError::Decode(
                                "the exec stream ended before the command's exit".to_owned(),
                            ),
                        };
                        return Some((Err(error), (chunks, frames, true)));
                    }
                }
            },
        ))
    }

    /// `GET /v1/nodes`.
    pub async fn list_nodes(&self) -> Result<Vec<NodeInfo>, ApiError> {
        self.json(self.request(Method::GET, "/v1/nodes")).await
    }

    /// `POST /v1/nodes/{id}/availability`; `deadline` (a duration, e.g.
    /// `10m`) only with `drain`.
    pub async fn set_node_availability(
        &self,
        id: &str,
        availability: &str,
        deadline: Option<&str>,
    ) -> Result<NodeInfo, ApiError> {
        let req = self
            .request(Method::POST, &format!("/v1/nodes/{id}/availability"))
            .json(&AvailabilityRequest {
                availability: availability.to_owned(),
                deadline: deadline.map(str::to_owned),
            });
        self.json(req).await
    }

    /// `POST /v1/nodes/{id}/labels`: sets and removes operator labels;
    /// answers the node as it is afterwards.
    pub async fn update_node_labels(
        &self,
        id: &str,
        labels: &NodeLabelsRequest,
    ) -> Result<NodeInfo, ApiError> {
        let req = self
            .request(Method::POST, &format!("/v1/nodes/{id}/labels"))
            .json(labels);
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
    ) -> Result<crate::ClusterSettingsResponse, ApiError> {
        self.json(
            self.request(Method::POST, "/v1/cluster/settings")
                .json(settings),
        )
        .await
    }

    /// `GET /v1/cluster/unlock-key`, or with `rotate` `POST
    /// /v1/cluster/unlock-key/rotate`.
    pub async fn unlock_key(&self, rotate: bool) -> Result<crate::UnlockKeyInfo, ApiError> {
        let req = if rotate {
            self.request(Method::POST, "/v1/cluster/unlock-key/rotate")
        } else {
            self.request(Method::GET, "/v1/cluster/unlock-key")
        };
        self.json(req).await
    }

    /// `POST /v1/nodes/{id}/remove[?force=true]`: removes a node and revokes
    /// its certificate.
    pub async fn remove_node(&self, id: &str, force: bool) -> Result<RemovedNode, ApiError> {
        let req = self
            .request(Method::POST, &format!("/v1/nodes/{id}/remove"))
            .query(&[("force", force)]);
        self.json(req).await
    }

    /// `POST /v1/{collection}/{name}` (`secrets` or `configs`): stores a new
    /// secret or config; `value` is sent as the body, unchanged.
    pub async fn create_file(
        &self,
        collection: &str,
        name: &str,
        value: Vec<u8>,
    ) -> Result<crate::FileInfo, ApiError> {
        let req = self
            .request(Method::POST, &format!("/v1/{collection}/{name}"))
            .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
            .body(value);
        self.json(req).await
    }

    /// `GET /v1/{collection}` (`secrets` or `configs`).
    pub async fn list_files(&self, collection: &str) -> Result<Vec<crate::FileInfo>, ApiError> {
        self.json(self.request(Method::GET, &format!("/v1/{collection}")))
            .await
    }

    /// `GET /v1/{collection}/{name}` (`secrets` or `configs`).
    pub async fn get_file(
        &self,
        collection: &str,
        name: &str,
    ) -> Result<crate::FileInfo, ApiError> {
        self.json(self.request(Method::GET, &format!("/v1/{collection}/{name}")))
            .await
    }

    /// `DELETE /v1/{collection}/{name}` (`secrets` or `configs`).
    pub async fn remove_file(
        &self,
        collection: &str,
        name: &str,
    ) -> Result<crate::FileInfo, ApiError> {
        self.json(self.request(Method::DELETE, &format!("/v1/{collection}/{name}")))
            .await
    }

    /// Makes a standby manager vote again.
    pub async fn promote_node(&self, id: &str) -> Result<crate::ManagerInfo, ApiError> {
        self.json(self.request(Method::POST, &format!("/v1/nodes/{id}/promote")))
            .await
    }

    /// Makes a manager a standby (no vote); refused if quorum would be lost.
    pub async fn demote_node(&self, id: &str) -> Result<crate::ManagerInfo, ApiError> {
        self.json(self.request(Method::POST, &format!("/v1/nodes/{id}/demote")))
            .await
    }
}

/// The response if it is a success, else its status and error body.
async fn answer(resp: Response) -> Result<Response, ApiError> {
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

/// The order in which to try `n_bases` addresses: the one that answered last
/// (`preferred`), then the others in the configuration's order.
fn try_order(n_bases: usize, preferred: usize) -> impl Iterator<Item = usize> {
    let preferred = if preferred < n_bases { preferred } else { 0 };
    std::iter::once(preferred)
        .chain((0..n_bases).filter(move |&idx| idx != preferred))
        .take(n_bases)
}

/// Whether a request that failed without an answer may go to the next
/// manager: always if it never reached this one (`connect_failed`), else only
/// if repeating it is harmless (`GET`, `HEAD`, `OPTIONS`).
fn may_try_next(method: &Method, connect_failed: bool) -> bool {
    connect_failed || method.is_safe()
}

/// `url` (built against [`ANY_MANAGER`]) aimed at the manager at `base`.
fn aim(base: &str, url: &Url) -> Result<Url, ApiError> {
    let query = url.query().map(|q| format!("?{q}")).unwrap_or_default();
    let target = format!("{base}{}{query}", url.path());
    Url::parse(&target).map_err(|e| ApiError::Config(format!("apis: {base}: {e}")))
}

/// `https://host:port` of the manager that answered.
fn origin(resp: &Response) -> String {
    resp.url().origin().ascii_serialization()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_manager_that_answered_last_is_tried_first_then_the_rest_in_order() {
        assert_eq!(try_order(3, 0).collect::<Vec<_>>(), [0, 1, 2]);
        assert_eq!(try_order(3, 1).collect::<Vec<_>>(), [1, 0, 2]);
        assert_eq!(try_order(3, 2).collect::<Vec<_>>(), [2, 0, 1]);
        assert_eq!(try_order(1, 0).collect::<Vec<_>>(), [0]);
        // A stale index (fewer addresses than before) starts from the first.
        assert_eq!(try_order(2, 5).collect::<Vec<_>>(), [0, 1]);
        assert_eq!(try_order(0, 0).count(), 0);
    }

    #[test]
    fn only_reads_are_resent_after_the_request_reached_a_manager() {
        for method in [Method::GET, Method::HEAD, Method::OPTIONS] {
            assert!(may_try_next(&method, true), "{method}");
            assert!(may_try_next(&method, false), "{method}");
        }
        for method in [Method::POST, Method::PUT, Method::DELETE, Method::PATCH] {
            assert!(may_try_next(&method, true), "{method}");
            assert!(!may_try_next(&method, false), "{method}");
        }
    }

    #[test]
    fn a_request_is_aimed_at_each_manager_with_its_path_and_query() {
        let url = Url::parse(&format!("{ANY_MANAGER}/v1/tasks?job=web%20x")).expect("url");
        assert_eq!(
            aim("https://10.0.0.2:7443", &url).expect("aim").as_str(),
            "https://10.0.0.2:7443/v1/tasks?job=web%20x"
        );
        let url = Url::parse(&format!("{ANY_MANAGER}/v1/health")).expect("url");
        assert_eq!(
            aim("https://[::1]:7443", &url).expect("aim").as_str(),
            "https://[::1]:7443/v1/health"
        );
    }

    #[test]
    fn when_no_manager_answers_the_error_says_why_for_each() {
        let e = ApiError::Unreachable {
            attempts: vec![
                Unanswered {
                    url: "https://10.0.0.1:7443".to_owned(),
                    error: "Connection refused (os error 111)".to_owned(),
                },
                Unanswered {
                    url: "https://10.0.0.2:7443".to_owned(),
                    error: "operation timed out".to_owned(),
                },
            ],
        };
        assert_eq!(
            e.to_string(),
            "no manager answered: https://10.0.0.1:7443: Connection refused (os error 111); \
             https://10.0.0.2:7443: operation timed out"
        );
    }

    #[test]
    fn a_client_needs_at_least_one_address() {
        let config = ClientConfig {
            apis: Vec::new(),
            ca_cert: String::new(),
            cert: String::new(),
            key: String::new(),
        };
        assert_eq!(
            ApiClient::anonymous(&config)
                .expect_err("no address")
                .to_string(),
            "client config: apis: no manager API URL"
        );
    }
}
