//! Monitoring endpoints: `GET /metrics` for Prometheus, `GET /api/stats`
//! for the dashboard, and `POST /api/token`, which turns an admin key into
//! a short-lived hub token so the dashboard can use the WebSocket.

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::api::Caller;
use super::bearer_token;
use crate::auth::{ClientType, SigningError, SigningKey, mint_for};
use crate::error::{ApiError, ErrorCode, RequestError};
use crate::hub::Hub;
use crate::metrics::Stats;
use crate::protocol::{TokenResponse, now_ms};

/// Lifetime of a token minted by `POST /api/token`. Short: chanhub.js asks
/// for a new one and sends `auth:refresh` well before it ends.
pub(crate) const DASHBOARD_TOKEN_TTL: Duration = Duration::from_secs(15 * 60);

/// The OpenMetrics text content type; Prometheus asks for it and reads it.
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// `GET /metrics`: every counter and gauge, as OpenMetrics text. Open,
/// unless `metrics.key` is set.
pub(crate) async fn metrics(State(hub): State<Hub>, headers: HeaderMap) -> Response {
    if let Some(key) = &hub.config().metrics.key {
        let presented = bearer_token(&headers);
        let ok = presented.is_some_and(|p| constant_time_eq(p.as_bytes(), key.as_bytes()));
        if !ok {
            return ApiError {
                status: StatusCode::UNAUTHORIZED,
                code: "unauthorized",
                message: "GET /metrics needs Authorization: Bearer <metrics.key>".into(),
                detail: None,
            }
            .into_response();
        }
    }
    let text = hub.stats().await.to_openmetrics();
    let mut response = (StatusCode::OK, text).into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(OPENMETRICS));
    response
}

/// A hub token or an admin key, as the dashboard's endpoints require.
async fn operator(hub: &Hub, headers: &HeaderMap) -> Result<Caller, ApiError> {
    let caller = Caller::from_headers(hub, headers).await?;
    if let Caller::Token(identity) = &caller {
        if identity.client_type != ClientType::Hub {
            return Err(
                RequestError::forbidden("the dashboard needs a hub token or an admin key").into(),
            );
        }
    }
    Ok(caller)
}

/// `GET /api/stats`: the same numbers as `/metrics`, as JSON, plus the
/// lists the dashboard shows (patterns, workers, dead tasks, rates).
pub(crate) async fn stats(
    State(hub): State<Hub>,
    headers: HeaderMap,
) -> Result<Json<Stats>, ApiError> {
    operator(&hub, &headers).await?;
    Ok(Json(hub.stats().await))
}

/// `POST /api/token`: an admin key buys a short-lived hub token (HS256
/// hubs only: the hub can sign only with a secret it holds).
pub(crate) async fn token(
    State(hub): State<Hub>,
    headers: HeaderMap,
) -> Result<Json<TokenResponse>, ApiError> {
    let caller = Caller::from_headers(&hub, &headers).await?;
    if !matches!(caller, Caller::Admin) {
        return Err(RequestError::forbidden("only an admin key can get a token here").into());
    }
    let config = hub.config();
    let key = match SigningKey::for_config(&config.auth, &config.data_dir(), None, None) {
        Ok(key) => key,
        Err(SigningError::Config(e)) => {
            tracing::error!(error = %e, "cannot read the token secret");
            return Err(RequestError::new(
                ErrorCode::Unavailable,
                "the token secret is unreadable",
            )
            .into());
        }
        _ => {
            return Err(RequestError::new(
                ErrorCode::Unsupported,
                "this hub verifies tokens it cannot sign (a public key or an identity provider's keys); sign in with a hub token",
            )
            .into());
        }
    };
    let now = now_ms() / 1000;
    let exp = now + DASHBOARD_TOKEN_TTL.as_secs();
    let claims = json!({
        "sub": "admin",
        "iat": now,
        "exp": exp,
        "client_type": ClientType::Hub,
        "permissions": ["subscribe", "publish", "task:submit"],
    });
    let token = mint_for(&config.auth, &key, &claims).map_err(|e| {
        tracing::error!(error = %e, "cannot sign a token");
        RequestError::new(ErrorCode::Unavailable, "the hub could not sign a token")
    })?;
    Ok(Json(TokenResponse {
        token,
        expires_at: exp * 1000,
    }))
}

/// Compares secrets without an early exit.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
