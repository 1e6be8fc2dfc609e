//! The HTTPS API (`/v1`).
//!
//! Every route, `/v1/health` and `/v1/openapi.json` included, sits behind the
//! bearer-token check: no token is `401`, a wrong one `403`. Errors map to HTTP
//! status in one place ([`ApiFailure`]). The listener only speaks TLS
//! ([`serve`]).

mod convert;
mod handlers;
mod tls;

use std::sync::Arc;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use baton_api::ErrorBody;
use baton_store::Store;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::dispatcher::DispatcherService;

pub use tls::{ServeError, serve, server_tls_config};

/// What the handlers share.
pub struct AppState {
    /// The store (writes and snapshots).
    pub store: Arc<dyn Store>,
    /// The dispatcher (log streams).
    pub dispatcher: Arc<DispatcherService>,
    /// SHA-256 of the accepted bearer token.
    pub token_digest: [u8; 32],
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState").finish_non_exhaustive()
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
            StoreError::Rejected(e) => {
                ApiFailure::new(StatusCode::CONFLICT, "rejected", e.to_string())
            }
            StoreError::Unavailable(m) => {
                ApiFailure::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", m)
            }
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
        let mut resp = (self.status, axum::Json(self.body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        resp
    }
}

/// Refuses any request without the right bearer token.
async fn authenticate(
    State(app): State<Arc<AppState>>,
    req: Request,
    next: Next,
) -> Result<Response, ApiFailure> {
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match presented {
        None => {
            tracing::warn!(path = %req.uri().path(), "request refused: no credentials");
            Err(ApiFailure::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "credentials required: send Authorization: Bearer <token> (see client.toml)",
            ))
        }
        Some(token) if !baton_pki::token_matches(token.trim(), &app.token_digest) => {
            tracing::warn!(path = %req.uri().path(), "request refused: invalid credentials");
            Err(ApiFailure::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                "invalid credentials",
            ))
        }
        Some(_) => Ok(next.run(req).await),
    }
}

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

#[derive(OpenApi)]
#[openapi(
    info(title = "Baton API", description = "The Baton orchestrator's HTTP API. Every call needs a bearer token."),
    modifiers(&BearerAuth),
    security(("bearer" = []))
)]
struct ApiDoc;

/// The API router, with authentication on every route.
pub fn router(app: Arc<AppState>) -> Router {
    let (routes, openapi) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(handlers::health))
        .routes(routes!(handlers::list_jobs, handlers::submit_job))
        .routes(routes!(handlers::get_job))
        .routes(routes!(handlers::stop_job))
        .routes(routes!(handlers::list_tasks))
        .routes(routes!(handlers::get_task))
        .routes(routes!(handlers::task_logs))
        .routes(routes!(handlers::list_nodes))
        .routes(routes!(handlers::set_node_availability))
        .split_for_parts();
    let openapi = Arc::new(openapi);
    routes
        .route(
            "/v1/openapi.json",
            axum::routing::get(move || {
                let openapi = openapi.clone();
                async move { axum::Json(openapi.as_ref().clone()) }
            }),
        )
        .fallback(|| async { ApiFailure::not_found("no such endpoint") })
        .layer(axum::extract::DefaultBodyLimit::max(1024 * 1024))
        .layer(axum::middleware::from_fn_with_state(
            app.clone(),
            authenticate,
        ))
        .with_state(app)
}
