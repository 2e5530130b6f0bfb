//! Making one connection usable: dial, authenticate with a first `auth`
//! message, resubscribe the patterns held before a reconnect, register the
//! worker and serve the service again, all before the connection is
//! reported as `Connected`. That way a caller who sees `Connected` knows
//! that events published from then on will reach it, and that a worker can
//! be handed tasks and a service calls again.

use std::collections::BTreeMap;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, connect_async_with_config};

use super::ClientOptions;
use super::call_ops::ServiceSpec;
use super::pushes::{Incoming, Push};
use super::task_ops::register_message;
use super::types::{AuthInfo, ClientError, Registration, Rejected};
use crate::protocol::history::StreamPosition;
use crate::protocol::{ClientMessage, RequestId, ServerMessage};

/// The client's socket.
pub(crate) type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// How long to wait for the hub's side of a close handshake.
pub(crate) const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// The id of the resubscribe request; a string, so it can never collide
/// with the integer ids of user requests.
const RESUBSCRIBE_ID: &str = "chanhub-client-resubscribe";

/// The id of the re-register request, for the same reason.
const REREGISTER_ID: &str = "chanhub-client-reregister";

/// The id of the serve-again request, for the same reason.
const RESERVE_ID: &str = "chanhub-client-reserve";

/// What a fresh connection takes over from the one before it.
#[derive(Default)]
pub(crate) struct Restore {
    /// Patterns to subscribe to again.
    pub(crate) patterns: Vec<String>,
    /// Where each history channel of `patterns` continues from.
    pub(crate) since: BTreeMap<String, StreamPosition>,
    /// The worker registration to send again.
    pub(crate) registration: Option<Registration>,
    /// The service to serve again.
    pub(crate) service: Option<ServiceSpec>,
}

/// A connection ready for use.
pub(crate) struct Ready {
    /// The authenticated socket.
    pub(crate) ws: Ws,
    /// The hub's `auth:success`.
    pub(crate) auth: AuthInfo,
    /// Patterns the hub refused on resubscribe.
    pub(crate) rejected: Vec<Rejected>,
    /// The resubscribe's `recovered`: for each `since` channel, whether its
    /// missed events follow.
    pub(crate) recovered: BTreeMap<String, bool>,
    /// The resubscribe's `positions`.
    pub(crate) positions: BTreeMap<String, StreamPosition>,
    /// The worker id, or the hub's refusal, when a registration was sent.
    pub(crate) registered: Option<Result<String, ClientError>>,
    /// The patterns served, or the hub's refusal, when a service was sent.
    pub(crate) served: Option<Result<Vec<String>, ClientError>>,
    /// Events and task messages that arrived before the handshake ended.
    pub(crate) early: Vec<Push>,
}

/// The answer to a resubscribe.
#[derive(Default)]
struct Resubscribed {
    rejected: Vec<Rejected>,
    recovered: BTreeMap<String, bool>,
    positions: BTreeMap<String, StreamPosition>,
}

/// Dials, authenticates, resubscribes the patterns of `restore`
/// (continuing each history channel from its position), sends its
/// registration and its service again, all within
/// `options.connect_timeout`.
pub(crate) async fn establish(
    options: &ClientOptions,
    restore: Restore,
) -> Result<Ready, ClientError> {
    let Restore {
        patterns,
        since,
        registration,
        service,
    } = restore;
    let token = options.token.fetch().map_err(ClientError::Token)?;
    let attempt = async {
        // Nagle off: requests are small and each one waits for its answer;
        // with Nagle and delayed ACKs every round trip could stall ~40 ms.
        let (mut ws, _response) = connect_async_with_config(options.url.as_str(), None, true)
            .await
            .map_err(|e| ClientError::Connect(e.to_string()))?;
        let auth = authenticate(&mut ws, token).await?;
        let mut early = Vec::new();
        let resubscribed = if patterns.is_empty() {
            Resubscribed::default()
        } else {
            resubscribe(&mut ws, patterns, since, &mut early).await?
        };
        let registered = match registration {
            Some(registration) => Some(reregister(&mut ws, &registration, &mut early).await?),
            None => None,
        };
        let served = match service {
            Some(service) => Some(reserve(&mut ws, &service, &mut early).await?),
            None => None,
        };
        Ok(Ready {
            ws,
            auth,
            rejected: resubscribed.rejected,
            recovered: resubscribed.recovered,
            positions: resubscribed.positions,
            registered,
            served,
            early,
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

/// Subscribes to `patterns` again, with `since`, and waits for the answer.
/// Returns the refused patterns and what was recovered; events that arrive
/// meanwhile go to `early`.
async fn resubscribe(
    ws: &mut Ws,
    patterns: Vec<String>,
    since: BTreeMap<String, StreamPosition>,
    early: &mut Vec<Push>,
) -> Result<Resubscribed, ClientError> {
    let id = RequestId::Str(RESUBSCRIBE_ID.into());
    let all = patterns.clone();
    send(
        ws,
        &ClientMessage::Subscribe {
            id: Some(id.clone()),
            channels: patterns,
            since,
        },
    )
    .await?;
    let mut rejected = Vec::new();
    loop {
        match next_message(ws).await? {
            ServerMessage::Subscribed {
                id: Some(got),
                recovered,
                positions,
                ..
            } if got == id => {
                return Ok(Resubscribed {
                    rejected,
                    recovered,
                    positions,
                });
            }
            ServerMessage::Error {
                id: Some(got),
                code,
                message,
                channel,
                ..
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
                    return Ok(Resubscribed {
                        rejected: all.collect(),
                        ..Resubscribed::default()
                    });
                }
            },
            other => keep_push(other, early),
        }
    }
}

/// Registers the worker again and waits for the answer: the worker id, or
/// the hub's refusal (which does not fail the connection). Tasks assigned
/// before the answer go to `early`.
async fn reregister(
    ws: &mut Ws,
    registration: &Registration,
    early: &mut Vec<Push>,
) -> Result<Result<String, ClientError>, ClientError> {
    let id = RequestId::Str(REREGISTER_ID.into());
    send(ws, &register_message(Some(id.clone()), registration)).await?;
    loop {
        match next_message(ws).await? {
            ServerMessage::Registered {
                id: Some(got),
                worker_id,
                ..
            } if got == id => return Ok(Ok(worker_id)),
            ServerMessage::Error {
                id: Some(got),
                code,
                message,
                ..
            } if got == id => return Ok(Err(ClientError::Refused { code, message })),
            other => keep_push(other, early),
        }
    }
}

/// Serves the service again and waits for the answer: the patterns served,
/// or the hub's refusal (which does not fail the connection). Calls routed
/// before the answer go to `early`.
async fn reserve(
    ws: &mut Ws,
    service: &ServiceSpec,
    early: &mut Vec<Push>,
) -> Result<Result<Vec<String>, ClientError>, ClientError> {
    let id = RequestId::Str(RESERVE_ID.into());
    send(ws, &service.message(Some(id.clone()))).await?;
    loop {
        match next_message(ws).await? {
            ServerMessage::Serving {
                id: Some(got),
                methods,
            } if got == id => return Ok(Ok(methods)),
            ServerMessage::Error {
                id: Some(got),
                code,
                message,
                ..
            } if got == id => return Ok(Err(ClientError::Refused { code, message })),
            other => keep_push(other, early),
        }
    }
}

/// Keeps a push that arrived during the handshake; ignores anything else.
fn keep_push(msg: ServerMessage, early: &mut Vec<Push>) {
    match Push::sort(msg) {
        Incoming::Push(push) => early.push(push),
        Incoming::Other(other) => {
            tracing::debug!(msg = %other.to_json(), "ignored during the handshake")
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
