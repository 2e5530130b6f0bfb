//! The task HTTP API: submit, inspect, list and cancel tasks, list workers.
//! Callers authenticate like `/api/publish`: a token with `task:submit`
//! (hubs by default) or an admin key.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};

use super::api::Caller;
use super::query_pairs;
use crate::auth::Permission;
use crate::channels::{ChannelName, Pattern};
use crate::error::{ApiError, ErrorCode, RequestError};
use crate::hub::Hub;
use crate::protocol::tasks::{Accepted, TaskSpec, TaskState, TaskView, WorkerView};

fn caller(hub: &Hub, headers: &HeaderMap) -> Result<Caller, ApiError> {
    let caller = Caller::from_headers(hub, headers)?;
    caller.require(Permission::TaskSubmit)?;
    Ok(caller)
}

/// `POST /api/tasks`: the body is a task (`{"type":...,"payload":...}`);
/// answers once the task is durable.
pub(crate) async fn submit(
    State(hub): State<Hub>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<(StatusCode, Json<Accepted>), ApiError> {
    let caller = caller(&hub, &headers)?;
    let spec: TaskSpec = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("invalid task: {e}")))?;
    hub.check_engine()?;
    let submitted_by = caller.sub().unwrap_or("admin");
    let accepted = match hub.cluster_tasks() {
        Some(tasks) => tasks.submit(spec, submitted_by, None).await?,
        None => hub.tasks().submit(spec, submitted_by, None).await?,
    };
    let status = if accepted.deduplicated {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((status, Json(accepted)))
}

/// `GET /api/tasks/{id}`.
pub(crate) async fn show(
    State(hub): State<Hub>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<TaskView>, ApiError> {
    caller(&hub, &headers)?;
    let found = match hub.cluster() {
        Some(cluster) => cluster.task_get(&id).await?.map(|r| r.view),
        None => hub.tasks().get(&id),
    };
    found
        .map(Json)
        .ok_or_else(|| RequestError::new(ErrorCode::NotFound, format!("no task {id:?}")).into())
}

/// `GET /api/tasks?state=queued&type=embedding:*`: oldest first.
pub(crate) async fn list(
    State(hub): State<Hub>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Result<Json<Vec<TaskView>>, ApiError> {
    caller(&hub, &headers)?;
    let mut state = None;
    let mut kind = None;
    for (key, value) in query_pairs(query.as_deref()) {
        match key.as_str() {
            "state" => {
                state = Some(value.parse::<TaskState>().map_err(ApiError::bad_request)?);
            }
            "type" => {
                kind =
                    Some(Pattern::parse(&value, &hub.name_limits()).map_err(RequestError::from)?);
            }
            other => {
                return Err(ApiError::bad_request(format!(
                    "unknown parameter {other:?} (state, type)"
                )));
            }
        }
    }
    let Some(cluster) = hub.cluster() else {
        return Ok(Json(hub.tasks().list(state, kind.as_ref())));
    };
    // Cluster mode: every node's tasks, from Redis, in submission order.
    let limits = hub.name_limits();
    let mut records: Vec<_> = cluster
        .task_list()
        .await?
        .into_iter()
        .filter(|r| state.is_none_or(|s| r.view.state == s))
        .filter(|r| {
            kind.as_ref().is_none_or(|p| {
                ChannelName::parse(&r.view.kind, &limits).is_ok_and(|name| p.matches(&name))
            })
        })
        .collect();
    records.sort_by_key(|r| r.seq);
    Ok(Json(records.into_iter().map(|r| r.view).collect()))
}

/// `DELETE /api/tasks/{id}`: cancels; only the submitter's `sub` or an admin key.
pub(crate) async fn cancel(
    State(hub): State<Hub>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<TaskView>, ApiError> {
    let caller = caller(&hub, &headers)?;
    match hub.cluster_tasks() {
        Some(tasks) => Ok(Json(tasks.cancel(&id, caller.sub()).await?)),
        None => Ok(Json(hub.tasks().cancel(&id, caller.sub())?)),
    }
}

/// `GET /api/workers`.
pub(crate) async fn workers(
    State(hub): State<Hub>,
    headers: HeaderMap,
) -> Result<Json<Vec<WorkerView>>, ApiError> {
    caller(&hub, &headers)?;
    // In a cluster: every live node's workers.
    match hub.cluster_tasks() {
        Some(tasks) => Ok(Json(tasks.all_workers().await?)),
        None => Ok(Json(hub.tasks().workers())),
    }
}
