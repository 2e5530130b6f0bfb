//! Opening a link. The dialer authenticates like any hub client, checks
//! that the token the peer issued carries `federate`, and sends `hub:hello`;
//! the accepting hub's session hands the socket over here, and the link is
//! refused with `hub:refused` (and close code 1008) when the token lacks
//! `federate`, the peer has this hub's id, no `[[federation.peers]]` entry
//! has its name, or a link to it is already up. Otherwise the acceptor
//! answers with its own `hub:hello` and both sides run the same link loop.

use std::sync::Arc;

use bytes::Bytes;
use futures::{Sink, SinkExt, Stream, StreamExt};
use serde_json::Value;
use tokio::time::{Instant, timeout_at};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message, Utf8Bytes};

use super::HubRef;
use super::link::{self, BoxError, Direction};
use super::{Federation, Peer};
use crate::auth::{Identity, Permission};
use crate::protocol::ClientMessage;
use crate::protocol::federation::{HubHello, HubMessage, RefusalReason};

/// Close code of a refused link: policy violation.
const REFUSED: u16 = 1008;

/// The human-readable side of a refusal.
fn explain(reason: RefusalReason, fed: &Federation, hello: &HubHello) -> String {
    match reason {
        RefusalReason::NotPermitted => {
            "federation refused: the token presented lacks the \"federate\" permission".into()
        }
        RefusalReason::SameHubId => format!(
            "federation refused: the peer's hub id {:?} is this hub's own id",
            hello.hub_id
        ),
        RefusalReason::UnknownPeer => format!(
            "federation refused: {:?} has no [[federation.peers]] entry named {:?}",
            fed.name(),
            hello.name
        ),
        RefusalReason::AlreadyLinked => format!(
            "federation refused: a link between {:?} and {:?} is already up",
            fed.name(),
            hello.name
        ),
        RefusalReason::ShuttingDown => "federation refused: the hub is shutting down".into(),
    }
}

/// Serves a connection whose client sent `hub:hello` (called by the
/// WebSocket session, which has authenticated it).
pub(crate) async fn accept<S>(hub: HubRef, mut socket: S, identity: Identity, hello: HubHello)
where
    S: Stream<Item = Result<Message, WsError>> + Sink<Message, Error = WsError> + Unpin,
{
    let fed = Arc::clone(hub.federation());
    let decided = if !identity.permissions.has(Permission::Federate) {
        Err(RefusalReason::NotPermitted)
    } else if hello.hub_id == fed.hub_id() {
        Err(RefusalReason::SameHubId)
    } else {
        match fed.peer(&hello.name) {
            None => Err(RefusalReason::UnknownPeer),
            Some(peer) => fed.register(
                &hub,
                &peer,
                hello.clone(),
                Direction::Accepted,
                Some(identity.expires_at),
            ),
        }
    };
    let parts = match decided {
        Ok(parts) => parts,
        Err(reason) => {
            let message = explain(reason, &fed, &hello);
            tracing::warn!(peer = %hello.name, peer_id = %hello.hub_id, reason = reason.as_str(), "{message}");
            let refused = HubMessage::Refused { reason, message };
            let close = async {
                socket.send(Message::Text(refused.to_json().into())).await?;
                socket
                    .send(Message::Close(Some(CloseFrame {
                        code: REFUSED.into(),
                        reason: "federation refused".into(),
                    })))
                    .await
            };
            let _ = tokio::time::timeout(fed.config().connect_timeout, close).await;
            return;
        }
    };
    let ours = HubMessage::Hello(fed.hello());
    let sent = tokio::time::timeout(
        fed.config().connect_timeout,
        socket.send(Message::Text(ours.to_json().into())),
    )
    .await;
    if !matches!(sent, Ok(Ok(()))) {
        parts.link.kick("could not send hub:hello".into());
    }
    run_link(fed, hub, parts, socket).await;
}

/// Runs the link over its WebSocket, whichever side opened it: text frames
/// in and out; a binary frame or a close ends it.
async fn run_link<S>(fed: Arc<Federation>, hub: HubRef, parts: link::Parts, socket: S)
where
    S: Stream<Item = Result<Message, WsError>> + Sink<Message, Error = WsError> + Unpin,
{
    let (sink, stream) = socket.split();
    let inbound = Box::pin(stream.filter_map(|m| async move {
        match m {
            Ok(Message::Text(text)) => Some(Ok(Bytes::from(text))),
            Ok(Message::Close(_)) => Some(Err(BoxError::from("the peer closed the link"))),
            Ok(Message::Binary(_)) => Some(Err(BoxError::from("binary frame on a link"))),
            Ok(_) => None,
            Err(e) => Some(Err(BoxError::from(e))),
        }
    }));
    let outbound = sink
        .sink_map_err(BoxError::from)
        .with(|frame: Utf8Bytes| futures::future::ready(Ok::<_, BoxError>(Message::Text(frame))));
    link::run(fed, hub, parts, inbound, Box::pin(outbound)).await;
}

/// The dialer's WebSocket.
type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// The token to present to `peer`: `token`, or the current content of
/// `token_file`.
fn peer_token(peer: &Peer) -> Result<String, String> {
    if let Some(token) = &peer.config.token {
        return Ok(token.clone());
    }
    match &peer.config.token_file {
        Some(path) => std::fs::read_to_string(path)
            .map(|t| t.trim().to_string())
            .map_err(|e| format!("cannot read token_file {}: {e}", path.display())),
        None => Err("no token configured".into()),
    }
}

/// The next JSON text frame, before `deadline`.
async fn read_json(ws: &mut Ws, deadline: Instant) -> Result<Value, String> {
    loop {
        let frame = timeout_at(deadline, ws.next())
            .await
            .map_err(|_| "the peer did not answer in time".to_string())?;
        match frame {
            None => return Err("the peer closed the connection".into()),
            Some(Err(e)) => return Err(format!("connection error: {e}")),
            Some(Ok(Message::Text(text))) => {
                return serde_json::from_str(text.as_str())
                    .map_err(|e| format!("the peer sent invalid JSON: {e}"));
            }
            Some(Ok(Message::Close(frame))) => {
                let why = frame
                    .map(|f| format!("{} {}", u16::from(f.code), f.reason))
                    .unwrap_or_default();
                return Err(format!("the peer closed the connection {why}"));
            }
            Some(Ok(_)) => continue,
        }
    }
}

async fn send_json(ws: &mut Ws, text: String, deadline: Instant) -> Result<(), String> {
    timeout_at(deadline, ws.send(Message::text(text)))
        .await
        .map_err(|_| "the peer did not read in time".to_string())?
        .map_err(|e| format!("connection error: {e}"))
}

/// Dials `peer` once: connect, authenticate, exchange hellos. On success
/// the link runs until it ends and `Ok` is returned; an `Err` says why the
/// link could not be opened.
pub(crate) async fn dial(
    fed: &Arc<Federation>,
    hub: &HubRef,
    peer: &Arc<Peer>,
) -> Result<(), String> {
    let url = peer.config.url.clone().ok_or("no url configured")?;
    let token = peer_token(peer)?;
    let deadline = Instant::now() + fed.config().connect_timeout;
    let (mut ws, _) = timeout_at(deadline, tokio_tungstenite::connect_async(url.as_str()))
        .await
        .map_err(|_| format!("connecting to {url} timed out"))?
        .map_err(|e| format!("cannot connect to {url}: {e}"))?;
    let result = handshake(fed, hub, peer, &mut ws, token, deadline).await;
    let parts = match result {
        Ok(parts) => parts,
        Err(e) => {
            let _ = tokio::time::timeout(std::time::Duration::from_secs(1), ws.close(None)).await;
            return Err(e);
        }
    };
    run_link(Arc::clone(fed), hub.clone(), parts, ws).await;
    Ok(())
}

async fn handshake(
    fed: &Arc<Federation>,
    hub: &HubRef,
    peer: &Arc<Peer>,
    ws: &mut Ws,
    token: String,
    deadline: Instant,
) -> Result<link::Parts, String> {
    let auth = ClientMessage::Auth { id: None, token };
    send_json(
        ws,
        serde_json::to_string(&auth).unwrap_or_default(),
        deadline,
    )
    .await?;
    let reply = read_json(ws, deadline).await?;
    match reply["type"].as_str() {
        Some("auth:success") => {
            let federate = reply["permissions"]
                .as_array()
                .is_some_and(|list| list.iter().any(|p| p == Permission::Federate.as_str()));
            if !federate {
                return Err(
                    "the token the peer issued lacks the \"federate\" permission (it must be a hub token)"
                        .into(),
                );
            }
        }
        Some("auth:failed") => {
            return Err(format!(
                "the peer refused the token: {} ({})",
                reply["reason"].as_str().unwrap_or("unknown"),
                reply["message"].as_str().unwrap_or("")
            ));
        }
        _ => return Err(format!("unexpected answer to auth: {reply}")),
    }
    let hello = ClientMessage::HubHello(fed.hello());
    send_json(
        ws,
        serde_json::to_string(&hello).unwrap_or_default(),
        deadline,
    )
    .await?;
    let reply = read_json(ws, deadline).await?;
    let theirs = match serde_json::from_value::<HubMessage>(reply.clone()) {
        Ok(HubMessage::Hello(theirs)) => theirs,
        Ok(HubMessage::Refused { reason, message }) => {
            return Err(format!(
                "refused by the peer ({}): {message}",
                reason.as_str()
            ));
        }
        _ => {
            let message = reply["message"].as_str().unwrap_or_default();
            return Err(format!(
                "the peer did not accept hub:hello: {message} {reply}"
            ));
        }
    };
    if theirs.name != peer.config.name {
        tracing::warn!(
            peer = %peer.config.name,
            says = %theirs.name,
            "the peer calls itself by another name than its [[federation.peers]] entry"
        );
    }
    fed.register(hub, peer, theirs.clone(), Direction::Dialed, None)
        .map_err(|reason| {
            let message = explain(reason, fed, &theirs);
            format!("{message} ({})", reason.as_str())
        })
}
