//! Secrets and configs: create (the body is the value), list, inspect,
//! remove. A secret's value is never in an answer, a log line or an error;
//! a config's contents are shown by `GET /v1/configs/{name}`.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use base64::Engine;
use baton_api::{ErrorBody, FileInfo};
use baton_spec::{FileKind, file_name_problem, file_size_problem};
use baton_state::{Command, SecretBytes, State as ClusterState};

use super::{ApiFailure, AppState};
use crate::now;

fn info(state: &ClusterState, kind: FileKind, name: &str, with_data: bool) -> Option<FileInfo> {
    let (size, created_at, data) = match kind {
        FileKind::Secret => {
            let secret = state.secret(name)?;
            (secret.value.len(), secret.created_at, None)
        }
        FileKind::Config => {
            let config = state.config(name)?;
            let data =
                with_data.then(|| base64::engine::general_purpose::STANDARD.encode(&config.data));
            (config.data.len(), config.created_at, data)
        }
    };
    Some(FileInfo {
        kind: kind.as_str().to_owned(),
        name: name.to_owned(),
        size: size as u64,
        created_at: created_at.0,
        used_by: state
            .jobs_using(kind, name)
            .into_iter()
            .map(str::to_owned)
            .collect(),
        data,
    })
}

fn list(app: &AppState, kind: FileKind) -> Json<Vec<FileInfo>> {
    let snapshot = app.store.snapshot();
    let state = &snapshot.state;
    let names: Vec<&str> = match kind {
        FileKind::Secret => state.secrets().map(|s| s.name.as_str()).collect(),
        FileKind::Config => state.configs().map(|c| c.name.as_str()).collect(),
    };
    Json(
        names
            .into_iter()
            .filter_map(|name| info(state, kind, name, false))
            .collect(),
    )
}

fn get(app: &AppState, kind: FileKind, name: &str) -> Result<Json<FileInfo>, ApiFailure> {
    let snapshot = app.store.snapshot();
    info(&snapshot.state, kind, name, kind == FileKind::Config)
        .map(Json)
        .ok_or_else(|| ApiFailure::not_found(format!("{kind} {name:?} not found")))
}

async fn create(
    app: &AppState,
    kind: FileKind,
    name: String,
    body: Bytes,
) -> Result<(StatusCode, Json<FileInfo>), ApiFailure> {
    if let Some(problem) = file_name_problem(&name) {
        return Err(ApiFailure::invalid(format!(
            "{kind} name {name:?} {problem}"
        )));
    }
    if let Some(problem) = file_size_problem(body.len()) {
        return Err(ApiFailure::invalid(format!("{kind} {name:?} {problem}")));
    }
    let command = match kind {
        FileKind::Secret => Command::CreateSecret {
            name: name.clone(),
            value: SecretBytes::new(body.to_vec()),
            now: now(),
        },
        FileKind::Config => Command::CreateConfig {
            name: name.clone(),
            data: body.to_vec(),
            now: now(),
        },
    };
    app.store.propose(command).await?;
    tracing::info!(%kind, %name, size = body.len(), "created");
    let snapshot = app.store.snapshot();
    let created = info(&snapshot.state, kind, &name, false)
        .ok_or_else(|| ApiFailure::not_found(format!("{kind} {name:?} not found")))?;
    Ok((StatusCode::CREATED, Json(created)))
}

async fn remove(
    app: &AppState,
    kind: FileKind,
    name: String,
) -> Result<Json<FileInfo>, ApiFailure> {
    let removed = get(app, kind, &name)?;
    let command = match kind {
        FileKind::Secret => Command::RemoveSecret { name: name.clone() },
        FileKind::Config => Command::RemoveConfig { name: name.clone() },
    };
    app.store.propose(command).await?;
    tracing::info!(%kind, %name, "removed");
    Ok(removed)
}

/// List secrets (never their values).
#[utoipa::path(get, path = "/v1/secrets", tag = "secrets",
    responses((status = 200, body = Vec<FileInfo>)))]
pub async fn list_secrets(State(app): State<Arc<AppState>>) -> Json<Vec<FileInfo>> {
    list(&app, FileKind::Secret)
}

/// Create a secret; the body is its value (at most 500 KiB). Secrets never
/// change: to rotate one, create another and update the jobs that use it.
#[utoipa::path(post, path = "/v1/secrets/{name}", tag = "secrets", params(("name" = String, Path)),
    request_body(content = Vec<u8>, description = "the value", content_type = "application/octet-stream"),
    responses((status = 201, body = FileInfo), (status = 400, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "the name is taken")))]
pub async fn create_secret(
    State(app): State<Arc<AppState>>,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<(StatusCode, Json<FileInfo>), ApiFailure> {
    create(&app, FileKind::Secret, name, body).await
}

/// A secret's metadata (never its value).
#[utoipa::path(get, path = "/v1/secrets/{name}", tag = "secrets", params(("name" = String, Path)),
    responses((status = 200, body = FileInfo), (status = 404, body = ErrorBody)))]
pub async fn get_secret(
    State(app): State<Arc<AppState>>,
    Path(name): Path<String>,
) -> Result<Json<FileInfo>, ApiFailure> {
    get(&app, FileKind::Secret, &name)
}

/// Remove a secret. Refused (409, naming them) while jobs use it.
#[utoipa::path(delete, path = "/v1/secrets/{name}", tag = "secrets", params(("name" = String, Path)),
    responses((status = 200, body = FileInfo), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "jobs use it")))]
pub async fn remove_secret(
    State(app): State<Arc<AppState>>,
    Path(name): Path<String>,
) -> Result<Json<FileInfo>, ApiFailure> {
    remove(&app, FileKind::Secret, name).await
}

/// List configs.
#[utoipa::path(get, path = "/v1/configs", tag = "configs",
    responses((status = 200, body = Vec<FileInfo>)))]
pub async fn list_configs(State(app): State<Arc<AppState>>) -> Json<Vec<FileInfo>> {
    list(&app, FileKind::Config)
}

/// Create a config; the body is its contents (at most 500 KiB). Configs
/// never change: create another and update the jobs that use it.
#[utoipa::path(post, path = "/v1/configs/{name}", tag = "configs", params(("name" = String, Path)),
    request_body(content = Vec<u8>, description = "the contents", content_type = "application/octet-stream"),
    responses((status = 201, body = FileInfo), (status = 400, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "the name is taken")))]
pub async fn create_config(
    State(app): State<Arc<AppState>>,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<(StatusCode, Json<FileInfo>), ApiFailure> {
    create(&app, FileKind::Config, name, body).await
}

/// A config, with its contents (base64).
#[utoipa::path(get, path = "/v1/configs/{name}", tag = "configs", params(("name" = String, Path)),
    responses((status = 200, body = FileInfo), (status = 404, body = ErrorBody)))]
pub async fn get_config(
    State(app): State<Arc<AppState>>,
    Path(name): Path<String>,
) -> Result<Json<FileInfo>, ApiFailure> {
    get(&app, FileKind::Config, &name)
}

/// Remove a config. Refused (409, naming them) while jobs use it.
#[utoipa::path(delete, path = "/v1/configs/{name}", tag = "configs", params(("name" = String, Path)),
    responses((status = 200, body = FileInfo), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "jobs use it")))]
pub async fn remove_config(
    State(app): State<Arc<AppState>>,
    Path(name): Path<String>,
) -> Result<Json<FileInfo>, ApiFailure> {
    remove(&app, FileKind::Config, name).await
}
