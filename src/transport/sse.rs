//! `GET /api/stream` (and `/api/stream/events`): events as Server-Sent
//! Events, so `curl -N` and `EventSource` UIs work.
//!
//! The body is written by hand rather than with `axum::response::Sse`
//! because `Sse` formats every event into a new buffer per subscriber; here
//! each event's SSE frame is built once ([`Event::sse_frame`]) and every
//! stream sends the same refcounted bytes.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use tokio::sync::mpsc;
use tokio::time::{Instant, Interval, Sleep};
use tokio_util::sync::CancellationToken;
use tokio_util::task::task_tracker::TaskTrackerToken;

use super::{query_pairs, request_token};
use crate::auth::Identity;
use crate::channels::Pattern;
use crate::channels::list::split_list;
use crate::channels::manager::{Outbound, Subscriber, SubscriptionSet};
use crate::error::{ApiError, AuthError, ErrorCode, RequestError};
use crate::hub::{ConnectionSlot, Hub};
use crate::protocol::now_ms;

const KEEPALIVE_FRAME: &[u8] = b":keepalive\n\n";

pub(crate) async fn stream(
    State(hub): State<Hub>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    if hub.is_shutting_down() {
        return Err(RequestError::new(ErrorCode::Unavailable, "the hub is shutting down").into());
    }
    let query = query_pairs(query.as_deref());
    let token = request_token(&headers, &query, hub.config().auth.allow_query_token)
        .ok_or(AuthError::MissingToken)?;
    let identity = hub.verify(&token)?;
    let patterns = requested_patterns(&hub, &query, &identity)?;
    let slot = hub.try_connect().ok_or_else(|| {
        RequestError::new(ErrorCode::Unavailable, "the hub is at its connection limit")
    })?;

    let client_id = hub.next_client_id();
    let (subscriber, events) = Subscriber::new(client_id, hub.config().limits.outbound_queue);
    let mut subs = SubscriptionSet::new(Arc::clone(hub.channels()), Arc::clone(&subscriber));
    for pattern in patterns {
        subs.add(pattern);
    }
    tracing::debug!(client_id, sub = %identity.sub, "sse stream opened");

    let keepalive = hub.config().sse.keepalive;
    let expires_in = std::time::Duration::from_millis(
        identity
            .expires_at
            .saturating_mul(1000)
            .saturating_sub(now_ms()),
    ) + hub.config().auth.leeway;
    let state = StreamState {
        first: Some(connected_frame(client_id)),
        events,
        shutdown: hub.shutdown_token().clone(),
        keepalive: tokio::time::interval_at(Instant::now() + keepalive, keepalive),
        expiry: Box::pin(tokio::time::sleep(expires_in)),
        subscriber,
        _subs: subs,
        _slot: slot,
        _tracked: hub.tracker().token(),
    };
    let body = Body::from_stream(futures::stream::unfold(state, next_frame));
    let mut response = (StatusCode::OK, body).into_response();
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(response)
}

/// The first frame: `data: {"type":"connected","data":{"clientId":...},"timestamp":...}`.
/// A struct rather than `json!`, whose map would sort the keys and put
/// `type` last.
fn connected_frame(client_id: u64) -> Bytes {
    #[derive(serde::Serialize)]
    struct Connected {
        #[serde(rename = "type")]
        kind: &'static str,
        data: ConnectedData,
        timestamp: u64,
    }
    #[derive(serde::Serialize)]
    #[serde(rename_all = "camelCase")]
    struct ConnectedData {
        client_id: String,
    }
    let connected = Connected {
        kind: "connected",
        data: ConnectedData {
            client_id: client_id.to_string(),
        },
        timestamp: now_ms(),
    };
    let json = serde_json::to_string(&connected).unwrap_or_default();
    Bytes::from(format!("data: {json}\n\n"))
}

/// Parses and checks the `channels` parameters (repeatable, comma-separated).
fn requested_patterns(
    hub: &Hub,
    query: &[(String, String)],
    identity: &Identity,
) -> Result<Vec<Pattern>, ApiError> {
    let limits = hub.name_limits();
    let max = hub.config().limits.max_sse_patterns;
    let mut patterns: Vec<Pattern> = Vec::new();
    for (_, value) in query.iter().filter(|(k, _)| k == "channels") {
        for raw in split_list(value) {
            if patterns.len() >= max {
                return Err(ApiError::bad_request(format!(
                    "at most {max} patterns per stream"
                )));
            }
            let pattern = Pattern::parse(raw, &limits).map_err(RequestError::from)?;
            identity.permissions.check_subscribe(&pattern)?;
            if !patterns.contains(&pattern) {
                patterns.push(pattern);
            }
        }
    }
    if patterns.is_empty() {
        return Err(ApiError::bad_request(
            "name at least one pattern: ?channels=session:*,task:**",
        ));
    }
    Ok(patterns)
}

/// Everything one SSE stream owns; dropping it (client gone, shutdown)
/// unsubscribes and releases the connection slot.
struct StreamState {
    /// The `connected` frame, sent first.
    first: Option<Bytes>,
    /// This stream's event queue.
    events: mpsc::Receiver<Outbound>,
    /// Ends the stream on shutdown.
    shutdown: CancellationToken,
    /// Paces `:keepalive` comments.
    keepalive: Interval,
    /// Ends the stream when the token expires.
    expiry: Pin<Box<Sleep>>,
    /// Kicked when the stream is a slow consumer.
    subscriber: Arc<Subscriber>,
    /// Unsubscribes on drop.
    _subs: SubscriptionSet,
    /// Counts towards `limits.max_connections` until dropped.
    _slot: ConnectionSlot,
    /// Lets shutdown wait until the stream is gone.
    _tracked: TaskTrackerToken,
}

async fn next_frame(mut state: StreamState) -> Option<(Result<Bytes, Infallible>, StreamState)> {
    if let Some(first) = state.first.take() {
        return Some((Ok(first), state));
    }
    let frame = tokio::select! {
        biased;
        _ = state.shutdown.cancelled() => None,
        _ = state.subscriber.kicked() => None,
        _ = &mut state.expiry => None,
        event = state.events.recv() => event.map(|out| match out {
            Outbound::Event(event) => event.sse_frame(),
            // Direct messages go to WebSocket sessions only.
            Outbound::Direct(_) => Bytes::new(),
        }),
        _ = state.keepalive.tick() => Some(Bytes::from_static(KEEPALIVE_FRAME)),
    }?;
    Some((Ok(frame), state))
}
