//! Routes about where tasks go: node labels, scaling a service, and planning
//! a submission without making it.

use std::collections::BTreeSet;
use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use baton_api::{ErrorBody, JobPlan, NodeInfo, NodeLabelsRequest, ScaleRequest, ScaleResponse};
use baton_spec::JobKind;
use baton_state::{Command, NodeId};

use super::convert::job_info;
use super::handlers::{SubmitParams, SubmittedSpec, change_node, submitted_spec};
use super::plan::plan_submission;
use super::{ApiFailure, AppState};
use crate::now;

/// Set and remove a node's operator labels. They win over the labels its
/// agent registers (`baton agent --label`) and survive the agent's restarts.
/// A label only the agent sets cannot be removed here: restart the agent
/// without it (or override it). At most 64 operator labels per node.
#[utoipa::path(post, path = "/v1/nodes/{id}/labels", tag = "nodes", params(("id" = String, Path)),
    request_body = NodeLabelsRequest,
    responses((status = 200, body = NodeInfo), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody, description = "no such node, or it has no such label"),
        (status = 409, body = ErrorBody, description = "the label to remove is its agent's")))]
pub async fn update_node_labels(
    State(app): State<Arc<AppState>>,
    Path(id): Path<String>,
    Json(req): Json<NodeLabelsRequest>,
) -> Result<Json<NodeInfo>, ApiFailure> {
    if req.set.is_empty() && req.remove.is_empty() {
        return Err(ApiFailure::invalid(
            "nothing to change: give labels to set or keys to remove",
        ));
    }
    for (key, value) in &req.set {
        baton_spec::check_label(key, value).map_err(ApiFailure::invalid)?;
    }
    let remove: BTreeSet<String> = req.remove.iter().cloned().collect();
    for key in &remove {
        baton_spec::check_label_key(key).map_err(ApiFailure::invalid)?;
        if req.set.contains_key(key) {
            return Err(ApiFailure::invalid(format!(
                "label {key} is both set and removed"
            )));
        }
    }
    let node_id = NodeId(id.clone());
    {
        let snapshot = app.store.snapshot();
        let node = snapshot
            .state
            .node(&node_id)
            .ok_or_else(|| ApiFailure::not_found(format!("node {id} not found")))?;
        for key in &remove {
            if node.operator_labels.contains_key(key) {
                continue;
            }
            return Err(match node.labels.get(key) {
                Some(value) => ApiFailure::conflict(format!(
                    "label {key}={value} of node {id} is set by its agent (--label): restart \
                     the agent without that --label to remove it, or override its value with \
                     baton node label {id} add {key}=VALUE"
                )),
                None => ApiFailure::not_found(format!("node {id} has no label {key}")),
            });
        }
        let mut after = node.operator_labels.clone();
        after.retain(|key, _| !remove.contains(key));
        after.extend(req.set.clone());
        if after.len() > baton_spec::MAX_LABELS {
            return Err(ApiFailure::invalid(format!(
                "node {id} would have {} operator labels, more than the limit of {}",
                after.len(),
                baton_spec::MAX_LABELS
            )));
        }
    }
    let command = Command::UpdateNodeLabels {
        id: node_id,
        set: req.set.clone(),
        remove,
    };
    let node = change_node(&app, &id, command).await?;
    tracing::info!(
        node_id = %id,
        set = ?req.set.keys().collect::<Vec<_>>(),
        remove = ?req.remove,
        "node labels changed"
    );
    Ok(Json(node))
}

/// Set a service's number of replicas. The running tasks are kept; slots
/// are added, or the highest ones stopped. Refused (409) for batch and
/// global jobs and for a stopped job.
#[utoipa::path(post, path = "/v1/jobs/{name}/scale", tag = "jobs", params(("name" = String, Path)),
    request_body = ScaleRequest,
    responses((status = 200, body = ScaleResponse), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "not a service, or stopped")))]
pub async fn scale_job(
    State(app): State<Arc<AppState>>,
    Path(name): Path<String>,
    Json(req): Json<ScaleRequest>,
) -> Result<Json<ScaleResponse>, ApiFailure> {
    // The limit a spec's `replicas` has, which a scale must not get around.
    if req.replicas > baton_spec::MAX_REPLICAS {
        return Err(ApiFailure::invalid(format!(
            "replicas: {} is more than the limit of {}",
            req.replicas,
            baton_spec::MAX_REPLICAS
        )));
    }
    let previous = {
        let snapshot = app.store.snapshot();
        let job = snapshot
            .state
            .job(&name)
            .ok_or_else(|| ApiFailure::not_found(format!("job {name:?} not found")))?;
        match job.spec.kind {
            JobKind::Service { replicas } => replicas,
            // The state refuses the scale, with the reason.
            JobKind::Batch { .. } | JobKind::Global => 0,
        }
    };
    app.store
        .propose(Command::ScaleJob {
            name: name.clone(),
            replicas: req.replicas,
            now: now(),
        })
        .await?;
    let snapshot = app.store.snapshot();
    let job = snapshot
        .state
        .job(&name)
        .ok_or_else(|| ApiFailure::not_found(format!("job {name:?} not found")))?;
    tracing::info!(job = %name, previous, replicas = req.replicas, version = job.version, "job scaled");
    Ok(Json(ScaleResponse {
        previous,
        replicas: req.replicas,
        job: job_info(&snapshot.state, job, false),
    }))
}

/// What submitting this spec would do to its job, without doing it: new or
/// updated, the tasks that would be created and the node each would go to
/// (or why it fits nowhere), the tasks stopped and kept. The body and the
/// validation errors are those of `POST /v1/jobs`. Computed on a copy of
/// this manager's state: nothing is changed.
#[utoipa::path(post, path = "/v1/jobs/plan", tag = "jobs", params(SubmitParams),
    request_body(content = String, description = "job spec (YAML or JSON)", content_type = "application/yaml"),
    responses((status = 200, body = JobPlan),
        (status = 400, body = ErrorBody, description = "invalid spec: one line per problem in `details`")))]
pub async fn plan_job(
    State(app): State<Arc<AppState>>,
    Query(params): Query<SubmitParams>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<JobPlan>, ApiFailure> {
    let SubmittedSpec {
        spec,
        format,
        source,
    } = submitted_spec(params, &headers, &body)?;
    let name = spec.name.clone();
    let snapshot = app.store.snapshot();
    let now = now();
    let seed: u64 = rand::random();
    let put = Command::PutJob {
        spec,
        format,
        source,
        now,
    };
    // A pass over a large cluster takes a while: off the runtime's workers,
    // as the control loop does.
    let planned = tokio::task::spawn_blocking(move || {
        plan_submission(&snapshot.state, put, &name, now, seed)
    })
    .await
    .map_err(|e| ApiFailure::internal(format!("plan: {e}")))?;
    let plan = planned.map_err(|e| ApiFailure::from(baton_store::StoreError::Rejected(e)))?;
    Ok(Json(plan))
}

/// `GET /v1/jobs/plan` reads the job named `plan`: the route `POST
/// /v1/jobs/plan` would otherwise hide it behind a 405.
pub async fn get_job_named_plan(
    state: State<Arc<AppState>>,
) -> Result<Json<baton_api::JobInfo>, ApiFailure> {
    super::handlers::get_job(state, Path("plan".to_owned())).await
}
