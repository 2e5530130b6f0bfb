//! The HTTP API: `POST /api/publish` for backends and operators with curl,
//! and the health endpoints for orchestrators.

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use serde_json::Value;

use super::bearer_token;
use crate::auth::{Identity, Permission};
use crate::channels::ChannelName;
use crate::error::{ApiError, AuthError, RequestError};
use crate::hub::Hub;
use crate::metrics::Transport;
use crate::protocol::{PublishItem, PublishRequest, PublishResponse, PublishedItem};

/// Who is calling the HTTP API.
pub(crate) enum Caller {
    /// A configured admin API key: may publish anywhere.
    Admin,
    /// A token holder, limited by its permissions.
    Token(Box<Identity>),
}

impl Caller {
    pub(crate) async fn from_headers(hub: &Hub, headers: &HeaderMap) -> Result<Caller, ApiError> {
        let Some(token) = bearer_token(headers) else {
            hub.metrics().auth_failed(AuthError::MissingToken);
            return Err(AuthError::MissingToken.into());
        };
        if hub.is_admin_key(&token) {
            return Ok(Caller::Admin);
        }
        Ok(Caller::Token(Box::new(hub.verify(&token).await?)))
    }

    /// `Ok` for an admin, or a token with `permission`.
    pub(crate) fn require(&self, permission: Permission) -> Result<(), RequestError> {
        match self {
            Caller::Admin => Ok(()),
            Caller::Token(identity) => identity.permissions.require(permission),
        }
    }

    /// The caller's `sub`, or `None` for an admin.
    pub(crate) fn sub(&self) -> Option<&str> {
        match self {
            Caller::Admin => None,
            Caller::Token(identity) => Some(&identity.sub),
        }
    }

    fn check_publish(&self, hub: &Hub, channel: &ChannelName) -> Result<(), RequestError> {
        match self {
            Caller::Admin => crate::router::reserved::check_not_reserved(channel),
            Caller::Token(identity) => hub.check_publish(identity, channel),
        }
    }
}

/// `POST /api/publish`: one event or a batch. Every event is checked before
/// any is published, so a batch is published whole or not at all.
pub(crate) async fn publish(
    State(hub): State<Hub>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<PublishResponse>, ApiError> {
    let caller = Caller::from_headers(&hub, &headers).await?;
    let request: Value = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("body is not JSON: {e}")))?;
    let request: PublishRequest = serde_json::from_value(request).map_err(|_| {
        ApiError::bad_request(
            "expected {\"channel\":...,\"data\":...} or {\"events\":[{\"channel\":...,\"data\":...}]}",
        )
    })?;
    let items = match request {
        PublishRequest::One(item) => vec![item],
        PublishRequest::Batch { events } if events.is_empty() => {
            return Err(ApiError::bad_request("events is empty"));
        }
        PublishRequest::Batch { events } => events,
    };
    let mut checked = Vec::with_capacity(items.len());
    for PublishItem { channel, data } in items {
        let name = hub.channel(&channel)?;
        caller.check_publish(&hub, &name)?;
        checked.push((name, data));
    }
    hub.metrics()
        .received(Transport::Http, checked.len() as u64, body.len() as u64);
    // In a cluster, refuse the whole batch up front while Redis is away.
    hub.engine().check_ready()?;
    let mut events = Vec::with_capacity(checked.len());
    for (channel, data) in checked {
        let (event, delivered) = hub.engine().publish(channel, data).await?;
        events.push(PublishedItem {
            channel: event.channel.to_string(),
            id: event.id.clone(),
            delivered,
        });
    }
    Ok(Json(PublishResponse { events }))
}

/// `GET /healthz`: the process is up.
pub(crate) async fn healthz() -> impl IntoResponse {
    (StatusCode::OK, Json(serde_json::json!({ "status": "ok" })))
}

/// `GET /readyz`: the hub accepts connections (not shutting down) and, in
/// a cluster, reaches Redis.
pub(crate) async fn readyz(State(hub): State<Hub>) -> impl IntoResponse {
    if hub.is_shutting_down() {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({ "status": "shutting_down" })),
        )
    } else if !hub.engine().is_ready() {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({ "status": "engine_unavailable" })),
        )
    } else if !hub.verifier().keys_ready() {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({ "status": "keys_unavailable" })),
        )
    } else {
        (
            StatusCode::OK,
            Json(serde_json::json!({ "status": "ready" })),
        )
    }
}
