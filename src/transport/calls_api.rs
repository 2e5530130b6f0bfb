//! `POST /api/call/{method}`: an operator or a backend calls a method that
//! a connected worker serves, with the params as the JSON body, and gets
//! the result as the response. Authenticated like `/api/publish`: an admin
//! key, or a token whose permissions allow calling the method.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::HeaderMap;
use serde_json::value::RawValue;

use super::api::Caller;
use super::query_pairs;
use crate::auth::ClientType;
use crate::error::{ApiError, ErrorCode, RequestError};
use crate::hub::Hub;
use crate::protocol::calls::{CallOutcome, CallerInfo, Payload};

/// `POST /api/call/{method}?timeoutMs=5000`: 200 with the server's result;
/// else the usual error body with 404 `no_server`, 504 `timeout`, 502
/// `server_gone`, 503 `busy`, 422 `call_failed` (the server's error object
/// under `error.detail`), 403 `forbidden`.
pub(crate) async fn call(
    State(hub): State<Hub>,
    headers: HeaderMap,
    Path(method): Path<String>,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> Result<Json<Payload>, ApiError> {
    let caller = Caller::from_headers(&hub, &headers).await?;
    let method = hub.channel(&method)?;
    let info = match &caller {
        Caller::Admin => CallerInfo {
            client_id: "http".into(),
            sub: "admin".into(),
            client_type: ClientType::Hub,
        },
        Caller::Token(identity) => {
            identity.permissions.check_call(&method)?;
            CallerInfo {
                client_id: "http".into(),
                sub: identity.sub.clone(),
                client_type: identity.client_type,
            }
        }
    };
    let mut timeout_ms = None;
    for (key, value) in query_pairs(query.as_deref()) {
        match key.as_str() {
            "timeoutMs" => {
                let ms = value.parse::<u64>().map_err(|_| {
                    ApiError::bad_request("timeoutMs must be a whole number of milliseconds")
                })?;
                timeout_ms = Some(ms);
            }
            other => {
                return Err(ApiError::bad_request(format!(
                    "unknown parameter {other:?}"
                )));
            }
        }
    }
    let params = if body.is_empty() {
        Payload::null()
    } else {
        serde_json::from_slice::<Box<RawValue>>(&body)
            .map(Payload::from)
            .map_err(|e| ApiError::bad_request(format!("body is not JSON: {e}")))?
    };
    let outcome = hub
        .calls()
        .call_and_wait(info, method, params, timeout_ms)
        .await?;
    match outcome {
        CallOutcome::Result { result } => Ok(Json(result)),
        CallOutcome::Failed { error } => {
            let message = format!("the server answered with an error: {}", error.message);
            let mut err = ApiError::from(RequestError::new(ErrorCode::CallFailed, message));
            err.detail = serde_json::to_value(error).ok();
            Err(err)
        }
        CallOutcome::Error { code, message } => Err(RequestError::new(code, message).into()),
    }
}
