//! How clients reach the hub: WebSocket (`/ws`), SSE (`/api/stream`) and
//! the HTTP API (`/api/publish`, health), plus what operators and browsers
//! load: `/metrics`, `/api/stats`, the dashboard and `chanhub.js` (`web`). Each transport turns requests into
//! calls on the [`Hub`](crate::hub::Hub); none holds state of its own.
//!
//! The WebSocket handshake is the hub's own (`upgrade`), so that
//! tungstenite reads through `read_ahead`: large reads beneath its small
//! per-connection buffer.
//!
//! WebSocket sessions and SSE streams write their queued events through
//! one writer ([`crate::writer`], beside `session`, which it serves too): batches taken from the inbox, the skip filter and the
//! traffic counting live there; each transport supplies only its framing.

pub(crate) mod api;
pub(crate) mod calls_api;
pub(crate) mod federation_api;
pub(crate) mod presence_api;
mod read_ahead;
pub(crate) mod sse;
pub(crate) mod stats_api;
pub(crate) mod tasks_api;
mod upgrade;
pub(crate) mod web;
pub(crate) mod ws;

use axum::http::HeaderMap;
use axum::http::header::AUTHORIZATION;

/// The token from `Authorization: Bearer …`, if present.
pub(crate) fn bearer_token(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim().to_string())
}

/// Query parameters as (name, value) pairs, percent-decoded.
pub(crate) fn query_pairs(query: Option<&str>) -> Vec<(String, String)> {
    query
        .map(|q| {
            url::form_urlencoded::parse(q.as_bytes())
                .into_owned()
                .collect()
        })
        .unwrap_or_default()
}

/// The token of a request: the `Authorization` header, else `?token=` when
/// the config allows it.
pub(crate) fn request_token(
    headers: &HeaderMap,
    query: &[(String, String)],
    allow_query: bool,
) -> Option<String> {
    bearer_token(headers).or_else(|| {
        allow_query
            .then(|| {
                query
                    .iter()
                    .find(|(k, _)| k == "token")
                    .map(|(_, v)| v.clone())
            })
            .flatten()
    })
}
