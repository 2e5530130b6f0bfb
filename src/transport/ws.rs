//! `GET /ws`: the WebSocket upgrade. Checks the connection limit, applies
//! frame limits, and hands the socket to a tracked [`session`](crate::session).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, RawQuery, Request, State};
use axum::response::{IntoResponse, Response};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use super::upgrade::Handshake;
use super::{query_pairs, request_token};
use crate::error::{ApiError, ErrorCode, RequestError};
use crate::hub::Hub;
use crate::session;

/// Size of tungstenite's read buffer, allocated up front for every
/// connection: small, because idle connections dominate memory (a larger
/// frame is read in several chunks; the buffer grows only while it is in
/// flight). 1 KiB instead of 4 KiB took idle RSS per connection from 13.7 to
/// 10.7 KiB (`bash benches/compare.sh --runs 1 --only idle`). The socket is
/// read in larger gulps beneath it ([`ReadAhead`](super::read_ahead)).
const READ_BUFFER: usize = 512;

/// Bytes tungstenite gathers before writing to the socket; the write buffer
/// starts empty and only grows to this while a batch is written.
const WRITE_BUFFER: usize = 16 * 1024;

pub(crate) async fn upgrade(
    State(hub): State<Hub>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    RawQuery(query): RawQuery,
    mut request: Request,
) -> Response {
    let handshake = match Handshake::check(&mut request) {
        Ok(handshake) => handshake,
        Err(err) => return ApiError::from(err).into_response(),
    };
    if hub.is_shutting_down() {
        hub.metrics().rejected("shutdown");
        return ApiError::from(RequestError::new(
            ErrorCode::Unavailable,
            "the hub is shutting down",
        ))
        .into_response();
    }
    if !hub.admit(peer.ip()) {
        return ApiError::from(RequestError::new(
            ErrorCode::RateLimited,
            "too many connection attempts from this address; retry later",
        ))
        .into_response();
    }
    let Some(pending) = hub.unauthenticated() else {
        tracing::warn!(
            max = hub.config().limits.max_unauthenticated,
            "unauthenticated connection limit reached"
        );
        return ApiError::from(RequestError::new(
            ErrorCode::Unavailable,
            "too many connections are still authenticating; retry later",
        ))
        .into_response();
    };
    let Some(slot) = hub.try_connect() else {
        return ApiError::from(RequestError::new(
            ErrorCode::Unavailable,
            "the hub is at its connection limit",
        ))
        .into_response();
    };
    let query = query_pairs(query.as_deref());
    let token = request_token(
        request.headers(),
        &query,
        hub.config().auth.allow_query_token,
    );
    let max_frame = hub.config().limits.max_frame_bytes;
    // Held by the connection task so shutdown can wait for it.
    let tracked = hub.tracker().token();
    let config = WebSocketConfig::default()
        .max_message_size(Some(max_frame))
        .max_frame_size(Some(max_frame))
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(WRITE_BUFFER);
    let pacer = Arc::clone(hub.pacer());
    handshake.accept(config, pacer, move |socket| async move {
        let _tracked = tracked;
        let _slot = slot;
        session::run(hub, socket, token, pending).await;
    })
}
