//! Making one connection usable: dial, authenticate with a first `auth`
//! message, and resubscribe the patterns held before a reconnect, all before
//! the connection is reported as `Connected`. That way a caller who sees
//! `Connected` knows that events published from then on will reach it.

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, connect_async_with_config};

use super::ClientOptions;
use super::types::{AuthInfo, ClientError, Event, Rejected};
use crate::protocol::{ClientMessage, RequestId, ServerMessage};

/// The client's socket.
pub(crate) type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// How long to wait for the hub's side of a close handshake.
pub(crate) const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// The id of the resubscribe request; a string, so it can never collide
/// with the integer ids of user requests.
const RESUBSCRIBE_ID: &str = "chanhub-client-resubscribe";

/// A connection ready for use.
pub(crate) struct Ready {
    /// The authenticated socket.
    pub(crate) ws: Ws,
    /// The hub's `auth:success`.
    pub(crate) auth: AuthInfo,
    /// Patterns the hub refused on resubscribe.
    pub(crate) rejected: Vec<Rejected>,
    /// Events that arrived before the resubscribe was answered.
    pub(crate) early_events: Vec<Event>,
}

/// Dials, authenticates and resubscribes `patterns`, all within
/// `options.connect_timeout`.
pub(crate) async fn establish(
    options: &ClientOptions,
    patterns: Vec<String>,
) -> Result<Ready, ClientError> {
    let token = options.token.fetch().map_err(ClientError::Token)?;
    let attempt = async {
        // Nagle off: requests are small and each one waits for its answer;
        // with Nagle and delayed ACKs every round trip could stall ~40 ms.
        let (mut ws, _response) = connect_async_with_config(options.url.as_str(), None, true)
            .await
            .map_err(|e| ClientError::Connect(e.to_string()))?;
        let auth = authenticate(&mut ws, token).await?;
        let (rejected, early_events) = if patterns.is_empty() {
            (Vec::new(), Vec::new())
        } else {
            resubscribe(&mut ws, patterns).await?
        };
        Ok(Ready {
            ws,
            auth,
            rejected,
            early_events,
        })
    };
    tokio::time::timeout(options.connect_timeout, attempt)
        .await
        .map_err(|_| ClientError::Timeout)?
}

/// Sends the `auth` message and waits for the verdict.
async fn authenticate(ws: &mut Ws, token: String) -> Result<AuthInfo, ClientError> {
    send(ws, &ClientMessage::Auth { id: None, token }).await?;
    match next_message(ws).await? {
        msg @ ServerMessage::AuthSuccess { .. } => AuthInfo::from_message(msg)
            .ok_or_else(|| ClientError::Protocol("unreadable auth:success".into())),
        ServerMessage::AuthFailed {
            reason, message, ..
        } => {
            // The hub closes with 4001 next; answer it so it is not left
            // waiting, but do not let that delay the error for long.
            let _ = tokio::time::timeout(CLOSE_TIMEOUT, drain(ws)).await;
            Err(ClientError::AuthFailed { reason, message })
        }
        other => Err(ClientError::Protocol(format!(
            "expected auth:success or auth:failed, got {}",
            other.to_json()
        ))),
    }
}

/// Subscribes to `patterns` again and waits for the answer. Returns the
/// refused patterns and any events that arrived meanwhile.
async fn resubscribe(
    ws: &mut Ws,
    patterns: Vec<String>,
) -> Result<(Vec<Rejected>, Vec<Event>), ClientError> {
    let id = RequestId::Str(RESUBSCRIBE_ID.into());
    let all = patterns.clone();
    send(
        ws,
        &ClientMessage::Subscribe {
            id: Some(id.clone()),
            channels: patterns,
        },
    )
    .await?;
    let mut rejected = Vec::new();
    let mut early = Vec::new();
    loop {
        match next_message(ws).await? {
            ServerMessage::Event {
                channel,
                data,
                id,
                ts,
            } => early.push(Event {
                channel,
                data,
                id,
                ts,
            }),
            ServerMessage::Subscribed { id: Some(got), .. } if got == id => {
                return Ok((rejected, early));
            }
            ServerMessage::Error {
                id: Some(got),
                code,
                message,
                channel,
            } if got == id => match channel {
                Some(channel) => rejected.push(Rejected {
                    channel,
                    code,
                    message,
                }),
                // The whole request was refused (e.g. the new token may not
                // subscribe at all): every pattern is lost.
                None => {
                    let all = all.into_iter().map(|channel| Rejected {
                        channel,
                        code,
                        message: message.clone(),
                    });
                    return Ok((all.collect(), early));
                }
            },
            other => tracing::debug!(msg = %other.to_json(), "ignored while resubscribing"),
        }
    }
}

/// Serializes and sends one message.
async fn send(ws: &mut Ws, msg: &ClientMessage) -> Result<(), ClientError> {
    let text = serde_json::to_string(msg).map_err(|e| ClientError::Protocol(e.to_string()))?;
    ws.send(Message::text(text))
        .await
        .map_err(|e| ClientError::Connect(e.to_string()))
}

/// The next JSON message, skipping control frames.
async fn next_message(ws: &mut Ws) -> Result<ServerMessage, ClientError> {
    loop {
        let frame = match ws.next().await {
            Some(Ok(frame)) => frame,
            Some(Err(err)) => return Err(ClientError::Connect(err.to_string())),
            None => return Err(ClientError::Connect("the hub closed the connection".into())),
        };
        match frame {
            Message::Text(text) => {
                return serde_json::from_str(text.as_str())
                    .map_err(|e| ClientError::Protocol(format!("unreadable message: {e}")));
            }
            Message::Close(frame) => {
                return Err(ClientError::Connect(format!(
                    "the hub closed the connection during the handshake: {}",
                    describe_close(frame.as_ref())
                )));
            }
            _ => {}
        }
    }
}

/// Reads until the socket ends, which completes a close handshake the hub
/// started (tungstenite answers the close frame while reading).
pub(crate) async fn drain(ws: &mut Ws) {
    while let Some(Ok(_)) = ws.next().await {}
}

/// `1012 (service restart)` or `no close frame`.
pub(crate) fn describe_close(frame: Option<&CloseFrame>) -> String {
    match frame {
        Some(frame) => format!("{} ({})", u16::from(frame.code), frame.reason),
        None => "no close frame".into(),
    }
}
