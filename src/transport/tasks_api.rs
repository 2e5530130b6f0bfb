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
use crate::channels::Pattern;
use crate::error::{ApiError, ErrorCode, RequestError};
use crate::hub::Hub;
use crate::protocol::tasks::{Accepted, TaskSpec, TaskState, TaskView, WorkerView};

async fn caller(hub: &Hub, headers: &HeaderMap) -> Result<Caller, ApiError> {
    let caller = Caller::from_headers(hub, headers).await?;
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
    let caller = caller(&hub, &headers).await?;
    let spec: TaskSpec = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("invalid task: {e}")))?;
    hub.engine().check_ready()?;
    let submitted_by = caller.sub().unwrap_or("admin");
    let accepted = hub.tasks().submit(spec, submitted_by).await?;
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
    caller(&hub, &headers).await?;
    hub.tasks()
        .get(&id)
        .await?
        .map(Json)
        .ok_or_else(|| RequestError::new(ErrorCode::NotFound, format!("no task {id:?}")).into())
}

/// `GET /api/tasks?state=queued&type=embedding:*`: oldest first.
pub(crate) async fn list(
    State(hub): State<Hub>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Result<Json<Vec<TaskView>>, ApiError> {
    caller(&hub, &headers).await?;
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
    // On the Redis engine: every node's tasks, in submission order.
    Ok(Json(hub.tasks().list(state, kind.as_ref()).await?))
}

/// `DELETE /api/tasks/{id}`: cancels; only the submitter's `sub` or an admin key.
pub(crate) async fn cancel(
    State(hub): State<Hub>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<TaskView>, ApiError> {
    let caller = caller(&hub, &headers).await?;
    Ok(Json(hub.tasks().cancel(&id, caller.sub()).await?))
}

/// `GET /api/workers`.
pub(crate) async fn workers(
    State(hub): State<Hub>,
    headers: HeaderMap,
) -> Result<Json<Vec<WorkerView>>, ApiError> {
    caller(&hub, &headers).await?;
    // On the Redis engine: every live node's workers.
    Ok(Json(hub.tasks().workers().await?))
}
