//! The HTTPS API (`/v1`).
//!
//! Users authenticate with a client certificate from the cluster CA. Every
//! route, `/v1/health`, `/v1/openapi.json` and unknown paths included, sits
//! behind the authentication middleware: no certificate is `401`; a certificate that is not
//! an admin's, is of another cluster, is revoked or has expired is `403`. Each
//! refusal is logged with the caller's identity and the path. Errors map to
//! HTTP status in one place ([`ApiFailure`]). The listener only speaks TLS
//! ([`serve`]), and the handshake verifies the chain ([`api_tls_config`]).

mod convert;
mod files;
mod handlers;
mod placement;
mod plan;
mod tls;

#[cfg(test)]
mod tests;

use std::path::PathBuf;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use baton_api::ErrorBody;
use baton_pki::Role;
use baton_state::NodeId;
use baton_store::Store;
use utoipa::openapi::security::SecurityScheme;
use utoipa::{Modify, OpenApi};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::dispatcher::DispatcherService;

pub use tls::{Caller, ServeError, api_tls_config, serve};

/// What the handlers share.
pub struct AppState {
    /// The store (writes and snapshots).
    pub store: Arc<dyn Store>,
    /// The same store as a Raft member (membership, status).
    pub raft: Arc<baton_store::raft::RaftStore>,
    /// The dispatcher (log streams).
    pub dispatcher: Arc<DispatcherService>,
    /// This cluster's id: a client certificate's organisation must say it.
    pub cluster_id: String,
    /// The manager's data dir, which holds the sealed join tokens
    /// ([`crate::identity::stored_tokens_with_key`]).
    pub identity_dir: PathBuf,
    /// The data key they are sealed with (held in memory: an autolocked
    /// manager has no other copy).
    pub data_key: baton_store::seal::SealKey,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("cluster_id", &self.cluster_id)
            .field("identity_dir", &self.identity_dir)
            .finish_non_exhaustive()
    }
}

/// An API failure, mapped to a status and an [`ErrorBody`].
#[derive(Debug)]
pub struct ApiFailure {
    status: StatusCode,
    body: ErrorBody,
}

impl ApiFailure {
    fn new(status: StatusCode, code: &str, message: impl Into<String>) -> ApiFailure {
        ApiFailure {
            status,
            body: ErrorBody {
                code: code.to_owned(),
                message: message.into(),
                details: Vec::new(),
            },
        }
    }

    fn not_found(message: impl Into<String>) -> ApiFailure {
        ApiFailure::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    fn invalid(message: impl Into<String>) -> ApiFailure {
        ApiFailure::new(StatusCode::BAD_REQUEST, "invalid_request", message)
    }

    fn conflict(message: impl Into<String>) -> ApiFailure {
        ApiFailure::new(StatusCode::CONFLICT, "conflict", message)
    }

    fn forbidden(message: impl Into<String>) -> ApiFailure {
        ApiFailure::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    fn internal(message: impl Into<String>) -> ApiFailure {
        ApiFailure::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
    }
}

impl From<crate::identity::IdentityError> for ApiFailure {
    fn from(e: crate::identity::IdentityError) -> ApiFailure {
        // Identity errors name files and causes, never key or token material.
        tracing::error!(error = %e, "manager identity failure");
        ApiFailure::internal(format!("manager identity: {e}"))
    }
}

impl From<baton_store::StoreError> for ApiFailure {
    fn from(e: baton_store::StoreError) -> ApiFailure {
        use baton_state::ApplyError;
        use baton_store::StoreError;
        match e {
            StoreError::Rejected(ApplyError::JobNotFound { name }) => {
                ApiFailure::not_found(format!("job {name:?} not found"))
            }
            StoreError::Rejected(ApplyError::NodeNotFound { id }) => {
                ApiFailure::not_found(format!("node {id} not found"))
            }
            StoreError::Rejected(e @ ApplyError::FileNotFound { .. }) => {
                ApiFailure::not_found(e.to_string())
            }
            StoreError::Rejected(
                e @ (ApplyError::MissingFiles { .. } | ApplyError::InvalidFile { .. }),
            ) => ApiFailure::invalid(e.to_string()),
            StoreError::Rejected(e) => {
                ApiFailure::new(StatusCode::CONFLICT, "rejected", e.to_string())
            }
            StoreError::Unavailable(m) => {
                ApiFailure::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", m)
            }
            StoreError::Refused(m) => ApiFailure::conflict(m),
            StoreError::Fatal(m) => {
                tracing::error!(error = %m, "store failure");
                ApiFailure::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "store failure",
                )
            }
        }
    }
}

impl IntoResponse for ApiFailure {
    fn into_response(self) -> Response {
        // No WWW-Authenticate on 401: HTTP has no scheme for client
        // certificates (they are asked for in the TLS handshake), and the body
        // says what to do.
        (self.status, axum::Json(self.body)).into_response()
    }
}

/// What a `401` tells the user to do.
const CERT_REQUIRED: &str =
    "client certificate required: use the admin.toml/client.toml the manager wrote";

/// Refuses any request whose connection did not present an admin certificate
/// of this cluster that is still valid and not revoked.
async fn authenticate(
    State(app): State<Arc<AppState>>,
    req: Request,
    next: Next,
) -> Result<Response, ApiFailure> {
    let path = req.uri().path().to_owned();
    // A request without a Caller was not accepted by `serve`: treat it as
    // anonymous rather than trusting it.
    let caller = req
        .extensions()
        .get::<Caller>()
        .cloned()
        .unwrap_or(Caller::Anonymous);
    let identity = match caller {
        Caller::Anonymous => {
            tracing::warn!(%path, "request refused: no client certificate");
            return Err(ApiFailure::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                CERT_REQUIRED,
            ));
        }
        Caller::Unidentified => {
            tracing::warn!(%path, "request refused: client certificate without a cluster identity");
            return Err(ApiFailure::forbidden(
                "client certificate carries no cluster identity",
            ));
        }
        Caller::Peer(identity) => identity,
    };
    let refusal = if identity.cluster_id != app.cluster_id {
        Some("client certificate is for another cluster")
    } else if identity.role != Role::Admin {
        Some("this API needs an admin certificate")
    } else if app
        .store
        .snapshot()
        .state
        .is_revoked(&NodeId(identity.node_id.clone()))
    {
        Some("client certificate revoked")
    } else if identity.not_after <= unix_now() {
        // The handshake checked validity once; a long-lived connection can
        // outlive the certificate, so every request checks again.
        Some("client certificate expired")
    } else {
        None
    };
    if let Some(reason) = refusal {
        tracing::warn!(
            peer_id = %identity.node_id,
            peer_role = %identity.role,
            peer_cluster = %identity.cluster_id,
            %path,
            reason,
            "request refused"
        );
        return Err(ApiFailure::forbidden(reason));
    }
    Ok(next.run(req).await)
}

fn unix_now() -> i64 {
    i64::try_from(crate::now().0 / 1000).unwrap_or(i64::MAX)
}

struct ClientCertAuth;

impl Modify for ClientCertAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "mtls",
            SecurityScheme::MutualTls {
                description: Some(
                    "A client certificate with role admin from the cluster CA \
                     (admin.toml / client.toml)."
                        .to_owned(),
                ),
                deprecated: None,
                extensions: None,
            },
        );
    }
}

#[derive(OpenApi)]
#[openapi(
    info(title = "Baton API", description = "The Baton orchestrator's HTTP API. Every call needs an admin client certificate from the cluster CA."),
    modifiers(&ClientCertAuth),
    security(("mtls" = []))
)]
struct ApiDoc;

/// Request header asking for a linearizable read: `baton-read: linearizable`.
pub const READ_HEADER: &str = baton_api::READ_HEADER;

/// A read carrying [`READ_HEADER`] waits until this manager has applied
/// everything committed before it arrived (the leader confirms its
/// leadership with a majority); other reads are served from the applied
/// state as it is. Writes are linearizable anyway (committed by a majority).
async fn read_consistency(
    axum::extract::State(app): axum::extract::State<Arc<AppState>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let wanted = request
        .headers()
        .get(READ_HEADER)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"linearizable"));
    if wanted
        && request.method() == axum::http::Method::GET
        && let Err(e) = app.raft.linearizable_read().await
    {
        return ApiFailure::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            e.to_string(),
        )
        .into_response();
    }
    next.run(request).await
}

/// The API router, with authentication on every route.
pub fn router(app: Arc<AppState>) -> Router {
    let (routes, openapi) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(handlers::health))
        .routes(routes!(handlers::list_jobs, handlers::submit_job))
        .routes(routes!(placement::plan_job))
        .routes(routes!(handlers::get_job))
        .routes(routes!(handlers::stop_job))
        .routes(routes!(placement::scale_job))
        .routes(routes!(handlers::list_tasks))
        .routes(routes!(handlers::get_task))
        .routes(routes!(handlers::task_logs))
        .routes(routes!(handlers::task_exec))
        .routes(routes!(handlers::list_nodes))
        .routes(routes!(handlers::set_node_availability))
        .routes(routes!(placement::update_node_labels))
        .routes(routes!(handlers::remove_node))
        .routes(routes!(handlers::promote_node))
        .routes(routes!(handlers::demote_node))
        .routes(routes!(handlers::get_join_token))
        .routes(routes!(handlers::rotate_join_token))
        .routes(routes!(handlers::get_cluster))
        .routes(routes!(handlers::update_cluster_settings))
        .routes(routes!(handlers::rotate_root_ca))
        .routes(routes!(handlers::get_unlock_key))
        .routes(routes!(handlers::rotate_unlock_key))
        .routes(routes!(files::list_secrets))
        .routes(routes!(
            files::create_secret,
            files::get_secret,
            files::remove_secret
        ))
        .routes(routes!(files::list_configs))
        .routes(routes!(
            files::create_config,
            files::get_config,
            files::remove_config
        ))
        .split_for_parts();
    let openapi = Arc::new(openapi);
    routes
        .route(
            "/v1/jobs/plan",
            axum::routing::get(placement::get_job_named_plan),
        )
        .route(
            "/v1/openapi.json",
            axum::routing::get(move || {
                let openapi = openapi.clone();
                async move { axum::Json(openapi.as_ref().clone()) }
            }),
        )
        .fallback(|| async { ApiFailure::not_found("no such endpoint") })
        .layer(axum::middleware::from_fn_with_state(
            app.clone(),
            read_consistency,
        ))
        .layer(axum::extract::DefaultBodyLimit::max(1024 * 1024))
        .layer(axum::middleware::from_fn_with_state(
            app.clone(),
            authenticate,
        ))
        .with_state(app)
}
