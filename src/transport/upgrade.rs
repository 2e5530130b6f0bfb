//! The WebSocket handshake (RFC 6455 §4.2) over an HTTP/1.1 request.
//!
//! Done here rather than by axum's `WebSocketUpgrade` so that the hub
//! chooses the stream tungstenite reads from: axum hands over a finished
//! WebSocket, and the hub reads through [`ReadAhead`] under it.

use std::future::Future;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::Request;
use axum::http::header::{
    CONNECTION, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_KEY, SEC_WEBSOCKET_VERSION, UPGRADE,
};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::Response;
use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper_util::rt::TokioIo;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};

use super::read_ahead::ReadAhead;
use crate::error::{ErrorCode, RequestError};
use crate::pacing::Pacer;

/// An accepted WebSocket.
pub(crate) type Socket = WebSocketStream<ReadAhead<TokioIo<Upgraded>>>;

/// A request that asks for a WebSocket, before the hub answers it.
pub(crate) struct Handshake {
    accept: HeaderValue,
    on_upgrade: OnUpgrade,
}

impl Handshake {
    /// Checks that `request` asks for a WebSocket and takes its upgrade.
    pub(crate) fn check(request: &mut Request) -> Result<Handshake, RequestError> {
        let headers = request.headers();
        if !has_token(headers, CONNECTION, "upgrade") {
            return Err(not_websocket(
                "the Connection header does not include 'upgrade'",
            ));
        }
        if !has_token(headers, UPGRADE, "websocket") {
            return Err(not_websocket(
                "the Upgrade header does not include 'websocket'",
            ));
        }
        if headers
            .get(SEC_WEBSOCKET_VERSION)
            .map(HeaderValue::as_bytes)
            != Some(b"13")
        {
            return Err(not_websocket("Sec-WebSocket-Version must be 13"));
        }
        let Some(key) = headers.get(SEC_WEBSOCKET_KEY) else {
            return Err(not_websocket("the Sec-WebSocket-Key header is missing"));
        };
        let accept = HeaderValue::from_str(&derive_accept_key(key.as_bytes()))
            .expect("base64 is a valid header value");
        let Some(on_upgrade) = request.extensions_mut().remove::<OnUpgrade>() else {
            return Err(not_websocket("this connection cannot be upgraded"));
        };
        Ok(Handshake { accept, on_upgrade })
    }

    /// Answers `101 Switching Protocols` and, once the connection has
    /// switched, runs `serve` on the WebSocket in a task of its own.
    pub(crate) fn accept<F, Fut>(
        self,
        config: WebSocketConfig,
        pacer: Arc<Pacer>,
        serve: F,
    ) -> Response
    where
        F: FnOnce(Box<Socket>) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let Handshake { accept, on_upgrade } = self;
        tokio::spawn(async move {
            let Ok(upgraded) = on_upgrade.await else {
                return;
            };
            let stream = ReadAhead::new(TokioIo::new(upgraded), pacer);
            let socket = WebSocketStream::from_raw_socket(stream, Role::Server, Some(config)).await;
            // Boxed: a captured value keeps its space in the connection's
            // task for the task's whole life.
            serve(Box::new(socket)).await;
        });
        let mut response = Response::new(Body::empty());
        *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        let headers = response.headers_mut();
        headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(UPGRADE, HeaderValue::from_static("websocket"));
        headers.insert(SEC_WEBSOCKET_ACCEPT, accept);
        response
    }
}

fn not_websocket(why: &str) -> RequestError {
    RequestError::new(
        ErrorCode::BadRequest,
        format!("not a WebSocket upgrade request: {why}"),
    )
}

/// Whether a comma-separated header has `token` (case-insensitive).
fn has_token(headers: &HeaderMap, name: HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|value| {
        value.to_str().is_ok_and(|value| {
            value
                .split(',')
                .any(|part| part.trim().eq_ignore_ascii_case(token))
        })
    })
}
