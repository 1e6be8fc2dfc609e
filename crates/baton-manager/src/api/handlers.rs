//! Route handlers. Each reads a store snapshot or proposes one command.

use std::sync::Arc;

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use baton_api::{
    AvailabilityRequest, ClusterInfo, ClusterSettingsRequest, ClusterSettingsResponse, ErrorBody,
    Health, JobInfo, JoinTokenInfo, ManagerInfo, NodeInfo, RemovedNode, RootRotationInfo,
    SubmitOutcome, SubmitResponse, TaskInfo, UnlockKeyInfo,
};
use baton_pki::JoinToken;
use baton_rpc::LogEvent;
use baton_spec::SpecFormat;
use baton_state::{Command, Event, NodeAvailability, NodeId, NodeRole, NodeState, TaskId};
use baton_store::raft::MembershipChange;
use serde::Deserialize;
use utoipa::IntoParams;

use super::convert::{job_info, node_info, task_info};
use super::{ApiFailure, AppState};
use crate::dispatcher::LogStreamError;
use crate::identity::{self, StoredTokens};
use crate::now;

/// Health of this manager.
#[utoipa::path(get, path = "/v1/health", tag = "system",
    responses((status = 200, body = Health), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn health(State(app): State<Arc<AppState>>) -> Json<Health> {
    Json(Health {
        status: "ok".to_owned(),
        index: app.store.snapshot().index,
    })
}

/// Where a submitted spec came from, for error messages.
#[derive(Debug, Deserialize, IntoParams)]
pub struct SubmitParams {
    /// Name shown in front of validation errors (e.g. the file name).
    source: Option<String>,
}

/// A spec as submitted, validated.
pub(super) struct SubmittedSpec {
    /// The validated spec.
    pub spec: baton_spec::JobSpec,
    /// Its format.
    pub format: SpecFormat,
    /// The bytes as sent (UTF-8: the parser accepted them).
    pub source: String,
}

/// Reads a submitted spec (`POST /v1/jobs` and `/v1/jobs/plan`): its format
/// from the content type, then every validation error at once (400).
pub(super) fn submitted_spec(
    params: SubmitParams,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<SubmittedSpec, ApiFailure> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let format = match content_type.as_str() {
        "application/json" => SpecFormat::Json,
        "application/yaml" | "application/x-yaml" | "text/yaml" | "text/x-yaml" => SpecFormat::Yaml,
        other => {
            return Err(ApiFailure::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                format!("content type {other:?}: use application/yaml or application/json"),
            ));
        }
    };
    let source_name = params.source.unwrap_or_else(|| "spec".to_owned());
    let spec = baton_spec::parse_job(&source_name, body, format).map_err(|errors| {
        let details: Vec<String> = errors.to_string().lines().map(str::to_owned).collect();
        ApiFailure {
            status: StatusCode::BAD_REQUEST,
            body: ErrorBody {
                code: "invalid_spec".to_owned(),
                message: format!(
                    "{source_name}: invalid job spec ({} problems)",
                    details.len()
                ),
                details,
            },
        }
    })?;
    // parse_job accepted the bytes, so they are UTF-8.
    let source = String::from_utf8_lossy(body).into_owned();
    Ok(SubmittedSpec {
        spec,
        format,
        source,
    })
}

/// Create or update a job. The body is the spec, YAML (`application/yaml`) or
/// JSON (`application/json`); it is stored exactly as sent.
#[utoipa::path(post, path = "/v1/jobs", tag = "jobs", params(SubmitParams),
    request_body(content = String, description = "job spec (YAML or JSON)", content_type = "application/yaml"),
    responses((status = 201, body = SubmitResponse), (status = 200, body = SubmitResponse),
        (status = 400, body = ErrorBody, description = "invalid spec: one line per problem in `details`")))]
pub async fn submit_job(
    State(app): State<Arc<AppState>>,
    Query(params): Query<SubmitParams>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<(StatusCode, Json<SubmitResponse>), ApiFailure> {
    let SubmittedSpec {
        spec,
        format,
        source,
    } = submitted_spec(params, &headers, &body)?;
    let name = spec.name.clone();
    let applied = app
        .store
        .propose(Command::PutJob {
            spec,
            format,
            source,
            now: now(),
        })
        .await?;
    let outcome = submit_outcome(&applied.events);
    let snapshot = app.store.snapshot();
    let job = snapshot
        .state
        .job(&name)
        .ok_or_else(|| ApiFailure::not_found(format!("job {name:?} not found")))?;
    let status = if outcome == SubmitOutcome::Created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    tracing::info!(job = %name, version = job.version, ?outcome, "job submitted");
    Ok((
        status,
        Json(SubmitResponse {
            outcome,
            job: job_info(&snapshot.state, job, false),
        }),
    ))
}

/// What a `PutJob` did, from its events.
pub(super) fn submit_outcome(events: &[Event]) -> SubmitOutcome {
    events
        .iter()
        .find_map(|e| match e {
            Event::JobCreated { .. } => Some(SubmitOutcome::Created),
            Event::JobUpdated { .. } => Some(SubmitOutcome::Updated),
            Event::JobUnchanged { .. } => Some(SubmitOutcome::Unchanged),
            _ => None,
        })
        .unwrap_or(SubmitOutcome::Unchanged)
}

/// List jobs.
#[utoipa::path(get, path = "/v1/jobs", tag = "jobs", responses((status = 200, body = Vec<JobInfo>)))]
pub async fn list_jobs(State(app): State<Arc<AppState>>) -> Json<Vec<JobInfo>> {
    let snapshot = app.store.snapshot();
    Json(
        snapshot
            .state
            .jobs()
            .map(|job| job_info(&snapshot.state, job, false))
            .collect(),
    )
}

/// Get a job, its status and its spec as submitted.
#[utoipa::path(get, path = "/v1/jobs/{name}", tag = "jobs", params(("name" = String, Path)),
    responses((status = 200, body = JobInfo), (status = 404, body = ErrorBody)))]
pub async fn get_job(
    State(app): State<Arc<AppState>>,
    Path(name): Path<String>,
) -> Result<Json<JobInfo>, ApiFailure> {
    let snapshot = app.store.snapshot();
    let job = snapshot
        .state
        .job(&name)
        .ok_or_else(|| ApiFailure::not_found(format!("job {name:?} not found")))?;
    Ok(Json(job_info(&snapshot.state, job, true)))
}

/// Stop a job: every task is stopped; the job stays, with desired state `stop`.
#[utoipa::path(post, path = "/v1/jobs/{name}/stop", tag = "jobs", params(("name" = String, Path)),
    responses((status = 200, body = JobInfo), (status = 404, body = ErrorBody)))]
pub async fn stop_job(
    State(app): State<Arc<AppState>>,
    Path(name): Path<String>,
) -> Result<Json<JobInfo>, ApiFailure> {
    app.store
        .propose(Command::StopJob {
            name: name.clone(),
            now: now(),
        })
        .await?;
    let snapshot = app.store.snapshot();
    let job = snapshot
        .state
        .job(&name)
        .ok_or_else(|| ApiFailure::not_found(format!("job {name:?} not found")))?;
    tracing::info!(job = %name, "job stopped");
    Ok(Json(job_info(&snapshot.state, job, false)))
}

/// Filter of the task list.
#[derive(Debug, Deserialize, IntoParams)]
pub struct TaskFilter {
    /// Only this job's tasks.
    job: Option<String>,
}

/// List tasks (all, or one job's).
#[utoipa::path(get, path = "/v1/tasks", tag = "tasks", params(TaskFilter),
    responses((status = 200, body = Vec<TaskInfo>), (status = 404, body = ErrorBody)))]
pub async fn list_tasks(
    State(app): State<Arc<AppState>>,
    Query(filter): Query<TaskFilter>,
) -> Result<Json<Vec<TaskInfo>>, ApiFailure> {
    let snapshot = app.store.snapshot();
    let state = &snapshot.state;
    let mut tasks: Vec<TaskInfo> = match &filter.job {
        Some(job) => {
            if state.job(job).is_none() {
                return Err(ApiFailure::not_found(format!("job {job:?} not found")));
            }
            state
                .tasks_of_job(job)
                .map(|t| task_info(t, app.dispatcher.usage(t)))
                .collect()
        }
        None => state
            .tasks()
            .map(|t| task_info(t, app.dispatcher.usage(t)))
            .collect(),
    };
    tasks.sort_by(|a, b| (&a.job, a.created_at, &a.id).cmp(&(&b.job, b.created_at, &b.id)));
    Ok(Json(tasks))
}

/// Get a task.
#[utoipa::path(get, path = "/v1/tasks/{id}", tag = "tasks", params(("id" = String, Path)),
    responses((status = 200, body = TaskInfo), (status = 404, body = ErrorBody)))]
pub async fn get_task(
    State(app): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Json<TaskInfo>, ApiFailure> {
    let snapshot = app.store.snapshot();
    let task = snapshot
        .state
        .task(&TaskId(id.clone()))
        .ok_or_else(|| ApiFailure::not_found(format!("task {id} not found")))?;
    Ok(Json(task_info(task, app.dispatcher.usage(task))))
}

/// Options of a log request.
#[derive(Debug, Deserialize, IntoParams)]
pub struct LogParams {
    /// Keep streaming until the task ends.
    #[serde(default)]
    follow: bool,
}

/// A task's output (stdout and stderr), streamed from its node.
#[utoipa::path(get, path = "/v1/tasks/{id}/logs", tag = "tasks", params(("id" = String, Path), LogParams),
    responses((status = 200, content_type = "text/plain", body = String), (status = 404, body = ErrorBody),
        (status = 503, body = ErrorBody)))]
pub async fn task_logs(
    State(app): State<Arc<AppState>>,
    Path(id): Path<String>,
    Query(params): Query<LogParams>,
) -> Result<Response, ApiFailure> {
    leader_only(&app, "logs are streamed")?;
    let mut events = app
        .dispatcher
        .request_logs(&TaskId(id), params.follow)
        .await
        .map_err(node_unreachable)?;
    // The first event decides the status: an agent that has no log answers 404.
    let first = events.recv().await;
    let first = match first {
        Some(LogEvent::Error(message)) => return Err(ApiFailure::not_found(message)),
        None => {
            return Err(ApiFailure::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "log stream ended before it started",
            ));
        }
        Some(event) => event,
    };
    let stream =
        futures::stream::unfold((Some(first), events), |(pending, mut events)| async move {
            let event = match pending {
                Some(event) => Some(event),
                None => events.recv().await,
            };
            match event? {
                LogEvent::Data(bytes) => {
                    Some((Ok::<_, std::io::Error>(Bytes::from(bytes)), (None, events)))
                }
                LogEvent::End => None,
                LogEvent::Error(message) => {
                    Some((Err(std::io::Error::other(message)), (None, events)))
                }
            }
        });
    Ok((
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        Body::from_stream(stream),
    )
        .into_response())
}

/// Agents hold their sessions with the leader: what goes through a node's
/// session (logs, exec) is served by the leader only. Elsewhere the answer
/// names it.
fn leader_only(app: &AppState, what: &str) -> Result<(), ApiFailure> {
    if app.raft.is_leader() {
        return Ok(());
    }
    let leader_api = app.raft.leader().and_then(|(leader, _)| {
        let snapshot = app.store.snapshot();
        snapshot
            .state
            .member(&NodeId(baton_store::raft::node_id(leader)))
            .and_then(|m| m.api_url.clone())
    });
    Err(ApiFailure::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "not_leader",
        match leader_api {
            Some(url) => format!("{what} by the leading manager: ask it with baton --addr {url}"),
            None => format!("{what} by the leading manager, and none leads now"),
        },
    ))
}

fn node_unreachable(e: LogStreamError) -> ApiFailure {
    match e {
        LogStreamError::TaskNotFound(_) | LogStreamError::NotPlaced(_) => {
            ApiFailure::not_found(e.to_string())
        }
        LogStreamError::NodeNotConnected(_) => ApiFailure::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            e.to_string(),
        ),
    }
}

/// Run a command inside a running task (its namespaces or its container),
/// full duplex over HTTP/2: the request body is a stream of exec frames
/// (`start`, then stdin), the response body the command's output and its
/// exit (see `baton_api::exec`). Tasks of the `raw` driver are refused by
/// their node: they isolate nothing to enter.
#[utoipa::path(post, path = "/v1/tasks/{id}/exec", tag = "tasks", params(("id" = String, Path)),
    responses((status = 200, description = "exec frames"), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn task_exec(
    State(app): State<Arc<AppState>>,
    Path(id): Path<String>,
    body: Body,
) -> Result<Response, ApiFailure> {
    use baton_api::exec::{ClientFrame, ExecExit, FrameBuffer, MAX_EXEC_ARGS, ServerFrame};
    use baton_rpc::{ExecEvent, ExecInput};
    use futures::StreamExt;

    leader_only(&app, "exec sessions are brokered")?;
    let bad = |message: String| ApiFailure::new(StatusCode::BAD_REQUEST, "invalid", message);
    let mut body = body.into_data_stream();
    let mut frames = FrameBuffer::default();
    let start = loop {
        match frames.next_client().map_err(|e| bad(e.to_string()))? {
            Some(ClientFrame::Start(start)) => break start,
            Some(_) => return Err(bad("an exec session starts with its command".to_owned())),
            None => match body.next().await {
                Some(Ok(chunk)) => frames.extend(&chunk),
                _ => return Err(bad("the request ended before its command".to_owned())),
            },
        }
    };
    if start.command.is_empty()
        || start.command[0].is_empty()
        || start.command.len() > MAX_EXEC_ARGS
        || start.command.iter().any(|a| a.contains('\0'))
    {
        return Err(bad(format!(
            "command: expected 1 to {MAX_EXEC_ARGS} arguments, the first not empty, none with a NUL"
        )));
    }
    let task = TaskId(id);
    tracing::info!(task_id = %task, program = %start.command[0], "exec");
    let tty = start.tty.map(|size| baton_rpc::Winsize {
        rows: size.rows,
        cols: size.cols,
    });
    let session = app
        .dispatcher
        .request_exec(&task, start.command, tty)
        .await
        .map_err(node_unreachable)?;
    // The client's stdin, until it ends or the command does.
    let input = session.input;
    tokio::spawn(async move {
        loop {
            loop {
                let frame = match frames.next_client() {
                    Ok(Some(frame)) => frame,
                    Ok(None) => break,
                    Err(_) => return,
                };
                let forwarded = match frame {
                    ClientFrame::Stdin(bytes) => ExecInput::Stdin(bytes.to_vec()),
                    ClientFrame::StdinEof => ExecInput::StdinEof,
                    ClientFrame::Resize(size) => ExecInput::Resize(baton_rpc::Winsize {
                        rows: size.rows,
                        cols: size.cols,
                    }),
                    ClientFrame::Start(_) => return,
                };
                if input.send(forwarded).await.is_err() {
                    return;
                }
            }
            match body.next().await {
                Some(Ok(chunk)) => frames.extend(&chunk),
                _ => return,
            }
        }
    });
    let stream = futures::stream::unfold(Some(session.events), |events| async move {
        let mut events = events?;
        let frame = match events.recv().await {
            Some(ExecEvent::Stdout(bytes)) => ServerFrame::Stdout(bytes.into()),
            Some(ExecEvent::Stderr(bytes)) => ServerFrame::Stderr(bytes.into()),
            Some(ExecEvent::Exit(exit)) => {
                let frame = ServerFrame::Exit(ExecExit {
                    code: exit.code,
                    signal: exit.signal,
                });
                return Some((Ok::<_, std::io::Error>(frame.encode()), None));
            }
            Some(ExecEvent::Error(message)) => {
                return Some((Ok(ServerFrame::Error(message).encode()), None));
            }
            None => {
                let frame = ServerFrame::Error("the node ended the session".to_owned());
                return Some((Ok(frame.encode()), None));
            }
        };
        Some((Ok(frame.encode()), Some(events)))
    });
    Ok((
        [(header::CONTENT_TYPE, "application/octet-stream")],
        Body::from_stream(stream),
    )
        .into_response())
}

/// List nodes.
#[utoipa::path(get, path = "/v1/nodes", tag = "nodes", responses((status = 200, body = Vec<NodeInfo>)))]
pub async fn list_nodes(State(app): State<Arc<AppState>>) -> Json<Vec<NodeInfo>> {
    let snapshot = app.store.snapshot();
    Json(
        snapshot
            .state
            .nodes()
            .map(|node| node_info(&snapshot.state, node))
            .collect(),
    )
}

/// Set a node's availability: `active`, `pause` (no new tasks) or `drain`
/// (its service tasks are replaced elsewhere, then stopped). A drain may have
/// a `deadline` (a duration from now, e.g. `10m`): tasks it lets finish
/// (batch) are stopped once it passes. Another availability clears it.
#[utoipa::path(post, path = "/v1/nodes/{id}/availability", tag = "nodes", params(("id" = String, Path)),
    request_body = AvailabilityRequest,
    responses((status = 200, body = NodeInfo), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn set_node_availability(
    State(app): State<Arc<AppState>>,
    Path(id): Path<String>,
    Json(req): Json<AvailabilityRequest>,
) -> Result<Json<NodeInfo>, ApiFailure> {
    let availability = match req.availability.as_str() {
        "active" => NodeAvailability::Active,
        "pause" => NodeAvailability::Pause,
        "drain" => NodeAvailability::Drain,
        other => {
            return Err(ApiFailure::new(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                format!("availability: {other:?} is not one of active, pause, drain"),
            ));
        }
    };
    let now = now();
    let deadline = match req.deadline.as_deref() {
        None => None,
        Some(_) if availability != NodeAvailability::Drain => {
            return Err(ApiFailure::new(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                format!(
                    "deadline: only a drain has a deadline, not {:?} (drop --deadline, or use drain)",
                    req.availability
                ),
            ));
        }
        Some(text) => {
            let after = baton_spec::parse_duration(text).map_err(|e| {
                ApiFailure::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_request",
                    format!("deadline: {e}"),
                )
            })?;
            Some(now.plus(after))
        }
    };
    let command = Command::SetNodeAvailability {
        id: NodeId(id.clone()),
        availability,
        deadline,
    };
    let node = change_node(&app, &id, command).await?;
    tracing::info!(node_id = %id, availability = %req.availability, deadline = ?req.deadline, "node availability set");
    Ok(Json(node))
}

/// Proposes a command about node `id`; the node as the state shows it after.
pub(super) async fn change_node(
    app: &AppState,
    id: &str,
    command: Command,
) -> Result<baton_api::NodeInfo, ApiFailure> {
    app.store.propose(command).await?;
    let snapshot = app.store.snapshot();
    let node = snapshot
        .state
        .node(&NodeId(id.to_owned()))
        .ok_or_else(|| ApiFailure::not_found(format!("node {id} not found")))?;
    Ok(node_info(&snapshot.state, node))
}

/// Options of a node removal.
#[derive(Debug, Deserialize, IntoParams)]
pub struct RemoveParams {
    /// Remove the node even though it is `ready` (its agent is connected).
    #[serde(default)]
    force: bool,
}

/// Remove a node from the cluster: its tasks are replaced elsewhere and its
/// certificate is refused from then on (the id is revoked). A `ready` node,
/// or a manager that answers, needs `force=true`. A manager also leaves the
/// managers' Raft membership first; that is refused when the managers left
/// could not form a majority.
#[utoipa::path(post, path = "/v1/nodes/{id}/remove", tag = "nodes", params(("id" = String, Path), RemoveParams),
    responses((status = 200, body = RemovedNode), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "the node is ready or a running manager (use force), or removing it would lose quorum")))]
pub async fn remove_node(
    State(app): State<Arc<AppState>>,
    Path(id): Path<String>,
    Query(params): Query<RemoveParams>,
) -> Result<Json<RemovedNode>, ApiFailure> {
    let node_id = NodeId(id.clone());
    let manager = {
        let snapshot = app.store.snapshot();
        let state = &snapshot.state;
        let member = state.member(&node_id);
        let node = state.node(&node_id);
        if member.is_none() && node.is_none() {
            return Err(ApiFailure::not_found(format!("node {id} not found")));
        }
        if !params.force && node.is_some_and(|n| n.state == NodeState::Ready) {
            return Err(ApiFailure::conflict(format!(
                "node {id} is ready: stop its agent first, or remove it with --force"
            )));
        }
        member.is_some_and(|m| m.role == NodeRole::Manager)
    };
    if manager {
        let raft_id = manager_raft_id(&id)?;
        let status = app.raft.leader_status().await;
        if !params.force
            && status
                .members
                .iter()
                .any(|m| m.id == raft_id && m.reachable)
        {
            return Err(ApiFailure::conflict(format!(
                "manager {id} is running: stop it first, or remove it with --force"
            )));
        }
        app.raft
            .change_membership(MembershipChange::Remove { id: raft_id })
            .await?;
    }
    app.store
        .propose(Command::RemoveNode {
            id: node_id,
            now: now(),
        })
        .await?;
    tracing::info!(node_id = %id, force = params.force, manager, "node removed");
    Ok(Json(RemovedNode { id }))
}

fn manager_raft_id(id: &str) -> Result<u64, ApiFailure> {
    baton_store::raft::raft_id(id)
        .ok_or_else(|| ApiFailure::not_found(format!("node {id} not found")))
}

/// A manager's membership and who it is, or why the request does not apply.
fn manager_member(app: &AppState, id: &str) -> Result<u64, ApiFailure> {
    let snapshot = app.store.snapshot();
    let member = snapshot
        .state
        .member(&NodeId(id.to_owned()))
        .ok_or_else(|| ApiFailure::not_found(format!("node {id} not found")))?;
    if member.role != NodeRole::Manager {
        return Err(ApiFailure::conflict(format!(
            "node {id} is a worker: a machine becomes a manager by joining as one (on it: baton manager --join ADDR with the manager token, from baton cluster join-token manager)"
        )));
    }
    let raft_id = manager_raft_id(id)?;
    if !app.raft.status().members.iter().any(|m| m.id == raft_id) {
        return Err(ApiFailure::conflict(format!(
            "manager {id} is not in the managers' membership (it has not finished joining, or was removed)"
        )));
    }
    Ok(raft_id)
}

/// Make a standby manager vote again (a no-op for a voter).
#[utoipa::path(post, path = "/v1/nodes/{id}/promote", tag = "nodes", params(("id" = String, Path)),
    responses((status = 200, body = ManagerInfo), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "the node is a worker or not in the membership")))]
pub async fn promote_node(
    State(app): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Json<ManagerInfo>, ApiFailure> {
    let raft_id = manager_member(&app, &id)?;
    app.raft
        .change_membership(MembershipChange::Promote { id: raft_id })
        .await?;
    tracing::info!(node_id = %id, "manager promoted to voter");
    manager_info_of(&app, raft_id).await
}

/// Make a manager a standby: it keeps a copy of the state and serves the
/// API, but no longer votes. Refused when the voters left could not form a
/// majority, or for the last voter.
#[utoipa::path(post, path = "/v1/nodes/{id}/demote", tag = "nodes", params(("id" = String, Path)),
    responses((status = 200, body = ManagerInfo), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "a worker, not in the membership, or it would lose quorum")))]
pub async fn demote_node(
    State(app): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Json<ManagerInfo>, ApiFailure> {
    let raft_id = manager_member(&app, &id)?;
    app.raft
        .change_membership(MembershipChange::Demote { id: raft_id })
        .await?;
    tracing::info!(node_id = %id, "manager demoted to standby");
    manager_info_of(&app, raft_id).await
}

async fn manager_info_of(app: &AppState, raft_id: u64) -> Result<Json<ManagerInfo>, ApiFailure> {
    managers(app, &app.raft.leader_status().await)
        .into_iter()
        .find(|m| m.id == baton_store::raft::node_id(raft_id))
        .map(Json)
        .ok_or_else(|| ApiFailure::internal("the manager left the membership meanwhile"))
}

/// Every manager as this one knows it.
fn managers(app: &AppState, raft: &baton_store::raft::RaftStatus) -> Vec<ManagerInfo> {
    let snapshot = app.store.snapshot();
    raft.members
        .iter()
        .map(|m| {
            let id = baton_store::raft::node_id(m.id);
            ManagerInfo {
                api: snapshot
                    .state
                    .member(&NodeId(id.clone()))
                    .and_then(|member| member.api_url.clone()),
                id,
                addr: m.addr.clone(),
                raft_role: if raft.leader == Some(m.id) {
                    "leader"
                } else if m.voter {
                    "follower"
                } else {
                    "standby"
                }
                .to_owned(),
                reachable: m.reachable,
            }
        })
        .collect()
}

/// Serialises token rotations in this process, so that two concurrent ones
/// cannot leave the state and `join-tokens.toml` naming different tokens.
static ROTATION: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn join_role(role: &str) -> Result<NodeRole, ApiFailure> {
    match role {
        "worker" => Ok(NodeRole::Worker),
        "manager" => Ok(NodeRole::Manager),
        other => Err(ApiFailure::new(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            format!("role: {other:?} is not one of worker, manager"),
        )),
    }
}

fn held_token(tokens: Option<&StoredTokens>, role: NodeRole) -> Option<String> {
    let token = match role {
        NodeRole::Worker => &tokens?.worker,
        NodeRole::Manager => &tokens?.manager,
    };
    (!token.is_empty()).then(|| token.clone())
}

/// The current join token of a role (`worker` or `manager`), as held by this
/// manager.
#[utoipa::path(get, path = "/v1/cluster/join-tokens/{role}", tag = "cluster",
    params(("role" = String, Path, description = "worker or manager")),
    responses((status = 200, body = JoinTokenInfo), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody, description = "this manager does not hold the current token")))]
pub async fn get_join_token(
    State(app): State<Arc<AppState>>,
    Path(role): Path<String>,
) -> Result<Json<JoinTokenInfo>, ApiFailure> {
    let node_role = join_role(&role)?;
    let tokens = identity::stored_tokens_with_key(&app.identity_dir, &app.data_key)?;
    let token = held_token(tokens.as_ref(), node_role).ok_or_else(|| {
        ApiFailure::not_found(
            "this manager does not hold the current token; rotate it to get a new one",
        )
    })?;
    // The secret is the token; the digest names the root new nodes should
    // pin, which a root rotation changes.
    let snapshot = app.store.snapshot();
    let cluster = initialised(&snapshot.state)?;
    let token = JoinToken::parse(&token)
        .and_then(|t| JoinToken::new(cluster.issuing_root_digest(), t.secret().clone()))
        .map_err(|e| ApiFailure::internal(format!("stored join token: {e}")))?
        .format();
    Ok(Json(JoinTokenInfo { role, token }))
}

/// Replace a role's join token: the old one admits nobody from now on;
/// nodes that joined with it are not disturbed.
#[utoipa::path(post, path = "/v1/cluster/join-tokens/{role}/rotate", tag = "cluster",
    params(("role" = String, Path, description = "worker or manager")),
    responses((status = 200, body = JoinTokenInfo), (status = 400, body = ErrorBody)))]
pub async fn rotate_join_token(
    State(app): State<Arc<AppState>>,
    Path(role): Path<String>,
) -> Result<Json<JoinTokenInfo>, ApiFailure> {
    let node_role = join_role(&role)?;
    let _rotation = ROTATION.lock().await;
    let snapshot = app.store.snapshot();
    let cluster = initialised(&snapshot.state)?;
    let token = JoinToken::generate(cluster.issuing_root_digest())
        .map_err(|e| ApiFailure::internal(format!("join token: {e}")))?;
    app.store
        .propose(Command::RotateJoinToken {
            role: node_role,
            digest: baton_pki::hex(&token.secret_digest()),
        })
        .await?;
    // The state now admits only the new token. Keep it for `GET`; a manager
    // that never held the other role's token keeps not holding it ("").
    let text = token.format();
    let mut tokens = identity::stored_tokens_with_key(&app.identity_dir, &app.data_key)?.unwrap_or(
        StoredTokens {
            worker: String::new(),
            manager: String::new(),
        },
    );
    match node_role {
        NodeRole::Worker => tokens.worker = text.clone(),
        NodeRole::Manager => tokens.manager = text.clone(),
    }
    identity::store_tokens_with_key(&app.identity_dir, &app.data_key, &tokens)?;
    tracing::info!(role = %role, "join token rotated");
    Ok(Json(JoinTokenInfo { role, token: text }))
}

fn initialised(state: &baton_state::State) -> Result<&baton_state::Cluster, ApiFailure> {
    state.cluster().ok_or_else(|| {
        ApiFailure::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "the cluster is not initialised yet",
        )
    })
}

async fn cluster_info(app: &AppState) -> Result<ClusterInfo, ApiFailure> {
    let raft = app.raft.leader_status().await;
    let snapshot = app.store.snapshot();
    let state = &snapshot.state;
    let cluster = initialised(state)?;
    Ok(ClusterInfo {
        id: cluster.id.clone(),
        root_ca_digest: cluster.root_digest.clone(),
        cert_expiry_secs: cluster.cert_validity.as_secs(),
        created_at: cluster.created_at.0,
        signer: cluster
            .external_ca
            .as_ref()
            .map_or_else(|| "cluster".to_owned(), |e| e.url.clone()),
        root_rotation: cluster.root_rotation.as_ref().map(|r| RootRotationInfo {
            new_root_digest: r.new_root_digest.clone(),
            started_at: r.started_at.0,
            pending_nodes: state.rotation_pending().into_iter().map(|n| n.0).collect(),
        }),
        managers: managers(app, &raft),
        autolock: cluster.unlock_key.is_some(),
        raft_term: raft.term,
        raft_applied: raft.last_applied,
    })
}

/// Start moving the cluster to a new root CA, with no downtime: from now on
/// certificates come from the new root (chained through a copy of it signed
/// by the old one, so peers that trust only the old root accept them),
/// every node is told to trust both roots and to renew at once; once every
/// member holds a certificate from the new root, the old root is dropped.
/// Join tokens name the new root from now on (their secrets do not change).
/// Refused while a rotation runs and when an external CA signs.
#[utoipa::path(post, path = "/v1/cluster/ca/rotate", tag = "cluster",
    responses((status = 200, body = ClusterInfo), (status = 409, body = ErrorBody)))]
pub async fn rotate_root_ca(
    State(app): State<Arc<AppState>>,
) -> Result<Json<ClusterInfo>, ApiFailure> {
    let snapshot = app.store.snapshot();
    let cluster = initialised(&snapshot.state)?;
    let conflict = |message: String| ApiFailure::new(StatusCode::CONFLICT, "conflict", message);
    if let Some(running) = &cluster.root_rotation {
        return Err(conflict(
            baton_state::ApplyError::RotationInProgress {
                new_root_digest: running.new_root_digest.clone(),
            }
            .to_string(),
        ));
    }
    let Some(key) = &cluster.root_ca_key else {
        return Err(conflict(
            baton_state::ApplyError::ExternalCaRotation.to_string(),
        ));
    };
    let unix = i64::try_from(now().0 / 1000).unwrap_or(i64::MAX);
    let internal = |e: baton_pki::PkiError| ApiFailure::internal(format!("root rotation: {e}"));
    let old = baton_pki::ClusterCa::from_pem(&cluster.id, &cluster.root_ca_pem, key.expose())
        .map_err(internal)?;
    let new = baton_pki::ClusterCa::generate(&cluster.id, unix, identity::ROOT_VALIDITY)
        .map_err(internal)?;
    let cross_signed_pem = old.cross_sign(&new, unix).map_err(internal)?;
    let new_root_digest = new.root_digest();
    app.store
        .propose(Command::StartRootRotation {
            rotation: baton_state::RootRotation {
                new_root_pem: new.cert_pem().to_owned(),
                new_root_digest: new_root_digest.clone(),
                new_root_key: baton_state::Secret::new(new.key_pem()),
                cross_signed_pem,
                started_at: now(),
            },
        })
        .await?;
    tracing::info!(new_root = %new_root_digest, "root CA rotation started");
    Ok(Json(cluster_info(&app).await?))
}

/// The cluster's identity (id, root CA digest) and settings.
#[utoipa::path(get, path = "/v1/cluster", tag = "cluster",
    responses((status = 200, body = ClusterInfo), (status = 503, body = ErrorBody)))]
pub async fn get_cluster(
    State(app): State<Arc<AppState>>,
) -> Result<Json<ClusterInfo>, ApiFailure> {
    Ok(Json(cluster_info(&app).await?))
}

/// Change cluster-wide settings. `cert_expiry_secs` sets the lifetime of
/// node certificates issued from now on (joins and renewals, the managers'
/// own included): between 1 s and the root CA's 10 years. Certificates
/// already issued keep their expiry until their holder renews.
#[utoipa::path(post, path = "/v1/cluster/settings", tag = "cluster",
    request_body = ClusterSettingsRequest,
    responses((status = 200, body = ClusterSettingsResponse), (status = 400, body = ErrorBody)))]
pub async fn update_cluster_settings(
    State(app): State<Arc<AppState>>,
    Json(req): Json<ClusterSettingsRequest>,
) -> Result<Json<ClusterSettingsResponse>, ApiFailure> {
    if let Some(secs) = req.cert_expiry_secs {
        let validity = std::time::Duration::from_secs(secs);
        if validity < baton_state::MIN_CERT_VALIDITY || validity > identity::ROOT_VALIDITY {
            return Err(ApiFailure::new(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                format!(
                    "cert expiry: {} is out of range: it must be at least 1s and at most {} (the root CA's lifetime)",
                    baton_spec::format_duration(validity),
                    baton_spec::format_duration(identity::ROOT_VALIDITY)
                ),
            ));
        }
        app.store
            .propose(Command::SetCertValidity { validity })
            .await?;
        tracing::info!(cert_expiry_secs = secs, "certificate expiry set");
    }
    let mut unlock_key = None;
    match req.autolock {
        Some(true) if !autolocked(&app)? => {
            unlock_key = Some(set_new_unlock_key(&app).await?);
            tracing::info!("autolock turned on");
        }
        Some(false) if autolocked(&app)? => {
            app.store
                .propose(Command::SetUnlockKey { key: None })
                .await?;
            tracing::info!("autolock turned off");
        }
        _ => {}
    }
    Ok(Json(ClusterSettingsResponse {
        cluster: cluster_info(&app).await?,
        unlock_key,
    }))
}

fn autolocked(app: &AppState) -> Result<bool, ApiFailure> {
    let snapshot = app.store.snapshot();
    Ok(initialised(&snapshot.state)?.unlock_key.is_some())
}

/// Proposes a new random unlock key; returns its text.
async fn set_new_unlock_key(app: &AppState) -> Result<String, ApiFailure> {
    let key = crate::keystore::UnlockKey::generate().format();
    app.store
        .propose(Command::SetUnlockKey {
            key: Some(baton_state::Secret::new(key.to_string())),
        })
        .await?;
    Ok(key.to_string())
}

/// The unlock key of an autolocked cluster. Managers restarted after a
/// rotation need the new key; one that was down during a rotation still
/// needs the key it was locked with.
#[utoipa::path(get, path = "/v1/cluster/unlock-key", tag = "cluster",
    responses((status = 200, body = UnlockKeyInfo),
        (status = 409, body = ErrorBody, description = "autolock is off")))]
pub async fn get_unlock_key(
    State(app): State<Arc<AppState>>,
) -> Result<Json<UnlockKeyInfo>, ApiFailure> {
    let snapshot = app.store.snapshot();
    let cluster = initialised(&snapshot.state)?;
    let key = cluster.unlock_key.as_ref().ok_or_else(autolock_off)?;
    Ok(Json(UnlockKeyInfo {
        unlock_key: key.expose().to_owned(),
    }))
}

fn autolock_off() -> ApiFailure {
    ApiFailure::conflict(
        "autolock is off: no unlock key (turn it on with baton cluster update --autolock=true)",
    )
}

/// Replace the unlock key. Every running manager rewraps its data key with
/// the new one; the old key no longer opens them.
#[utoipa::path(post, path = "/v1/cluster/unlock-key/rotate", tag = "cluster",
    responses((status = 200, body = UnlockKeyInfo),
        (status = 409, body = ErrorBody, description = "autolock is off")))]
pub async fn rotate_unlock_key(
    State(app): State<Arc<AppState>>,
) -> Result<Json<UnlockKeyInfo>, ApiFailure> {
    if !autolocked(&app)? {
        return Err(autolock_off());
    }
    let unlock_key = set_new_unlock_key(&app).await?;
    tracing::info!("unlock key rotated");
    Ok(Json(UnlockKeyInfo { unlock_key }))
}
