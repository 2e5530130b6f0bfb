//! The broker adapters behind one interface: a [`Sub`] (chanhub WebSocket,
//! chanhub SSE or NATS WebSocket) that reports each delivered payload, and
//! a [`Publisher`] that queues publishes and flushes them.
//!
//! Both brokers get the same client behaviour: one round trip to connect,
//! authenticate and subscribe (chanhub: `auth` and `subscribe` frames sent
//! together, answered by `subscribed`; NATS: `CONNECT`, `SUB`, `PING`,
//! answered by `PONG`), TCP_NODELAY, and the same 64-byte payloads.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use chanhub::auth::{ClientType, TokenClaims, mint};
use futures::{SinkExt, StreamExt};
use jsonwebtoken::{Algorithm, EncodingKey};
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::nats::{Delivery, NatsConn};
use crate::rawws::{RawWs, opcode};
use crate::sse::SseConn;

/// A client WebSocket.
pub(crate) type Ws = WebSocketStream<TcpStream>;

/// Read buffer of a subscriber's socket: big enough to take a burst of
/// events in one read, small enough for 10,000 connections.
pub(crate) const SUB_READ_BUFFER: usize = 16 * 1024;

/// Which broker a run talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Broker {
    Chanhub,
    Nats,
}

/// How subscribers connect (SSE exists for chanhub only).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Transport {
    Ws,
    Sse,
}

/// A broker under test.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    pub(crate) broker: Broker,
    pub(crate) addr: SocketAddr,
    /// chanhub: the HS256 secret tokens are minted with. NATS: the
    /// `authorization { token }` of the server.
    pub(crate) secret: String,
    /// chanhub cluster: the nodes subscribers and workers connect to, round
    /// robin (the publisher and the submitter stay on `addr`). Empty: `addr`.
    pub(crate) spread: Vec<SocketAddr>,
}

impl Target {
    /// Where subscriber or worker `i` connects.
    pub(crate) fn node_for(&self, i: usize) -> SocketAddr {
        if self.spread.is_empty() {
            self.addr
        } else {
            self.spread[i % self.spread.len()]
        }
    }

    /// Joins name segments with the broker's separator (`:` / `.`).
    pub(crate) fn name(&self, parts: &[&str]) -> String {
        parts.join(match self.broker {
            Broker::Chanhub => ":",
            Broker::Nats => ".",
        })
    }

    /// A credential for connection `sub`: a fresh JWT for chanhub (minted
    /// ahead of timed work), the shared token for NATS.
    pub(crate) fn token(&self, client_type: ClientType, sub: &str) -> Result<String> {
        if self.broker == Broker::Nats {
            return Ok(self.secret.clone());
        }
        let now = chanhub::protocol::now_ms() / 1000;
        let claims = TokenClaims {
            sub: sub.to_string(),
            exp: now + 3600,
            iat: Some(now),
            client_type,
            channels: None,
            publish: None,
            capabilities: None,
            max_slots: None,
            call: None,
            serve: None,
        };
        let key = EncodingKey::from_secret(self.secret.as_bytes());
        mint(&claims, Algorithm::HS256, &key).context("minting a token")
    }
}

/// Source addresses connections are spread over (`--sources`): one
/// address has ~28k ephemeral ports towards one listener.
static SOURCES: AtomicUsize = AtomicUsize::new(1);
static NEXT_SOURCE: AtomicUsize = AtomicUsize::new(0);

/// Spreads the connections to a loopback broker over `n` source addresses,
/// 127.0.0.1 to 127.0.0.n (at most 254).
pub(crate) fn spread_sources(n: usize) {
    SOURCES.store(n.clamp(1, 254), Ordering::Relaxed);
}

/// A TCP connection to `addr`, from the next source address when they are
/// spread.
pub(crate) async fn tcp_connect(addr: SocketAddr) -> std::io::Result<TcpStream> {
    let sources = SOURCES.load(Ordering::Relaxed);
    if sources <= 1 || !addr.ip().is_loopback() || !addr.is_ipv4() {
        return TcpStream::connect(addr).await;
    }
    let i = NEXT_SOURCE.fetch_add(1, Ordering::Relaxed) % sources;
    let source = std::net::Ipv4Addr::new(127, 0, 0, 1 + i as u8);
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(source.into(), 0))?;
    socket.connect(addr).await
}

/// Opens a WebSocket to `ws://addr{path}`.
pub(crate) async fn ws_connect(addr: SocketAddr, path: &str, read_buffer: usize) -> Result<Ws> {
    let tcp = tcp_connect(addr)
        .await
        .with_context(|| format!("connecting to {addr} (is `ulimit -n` high enough?)"))?;
    tcp.set_nodelay(true)?;
    let config = WebSocketConfig::default().read_buffer_size(read_buffer);
    let (ws, _) = tokio_tungstenite::client_async_with_config(
        format!("ws://{addr}{path}"),
        tcp,
        Some(config),
    )
    .await
    .context("WebSocket handshake")?;
    Ok(ws)
}

/// Reads chanhub frames until one whose `type` is `want`; fails on
/// `auth:failed`, `error` or close.
pub(crate) async fn chanhub_expect(ws: &mut Ws, want: &str) -> Result<String> {
    let tag = format!(r#""type":"{want}""#);
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(text))) => {
                if text.contains(&tag) {
                    return Ok(text.to_string());
                }
                if text.contains(r#""type":"auth:failed""#) || text.contains(r#""type":"error""#) {
                    bail!("chanhub refused: {text}");
                }
            }
            Some(Ok(Message::Close(frame))) => bail!("chanhub closed the connection: {frame:?}"),
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(e).context("reading from chanhub"),
            None => bail!("chanhub closed the connection"),
        }
    }
}

/// Connects to chanhub, authenticates with the first message, and (when
/// `subscribe` is given) subscribes in the same flush.
pub(crate) async fn chanhub_connect(
    addr: SocketAddr,
    token: &str,
    subscribe: Option<&str>,
    read_buffer: usize,
) -> Result<Ws> {
    let mut ws = ws_connect(addr, "/ws", read_buffer).await?;
    let auth = serde_json::json!({"type": "auth", "id": 1, "token": token});
    ws.feed(Message::Text(auth.to_string().into())).await?;
    if let Some(pattern) = subscribe {
        let sub = serde_json::json!({"type": "subscribe", "id": 2, "channels": [pattern]});
        ws.feed(Message::Text(sub.to_string().into())).await?;
    }
    ws.flush().await?;
    chanhub_expect(&mut ws, "auth:success").await?;
    if subscribe.is_some() {
        chanhub_expect(&mut ws, "subscribed").await?;
    }
    Ok(ws)
}

/// A subscribed connection.
pub(crate) enum Sub {
    Chanhub(RawWs),
    Sse(SseConn),
    Nats(NatsConn),
}

impl Sub {
    /// Connects, authenticates with `token` and subscribes to `pattern`;
    /// returns once the subscription is in place.
    pub(crate) async fn connect(
        target: &Target,
        transport: Transport,
        pattern: &str,
        token: &str,
        sid: usize,
    ) -> Result<Sub> {
        Ok(match (target.broker, transport) {
            (Broker::Chanhub, Transport::Ws) => {
                Sub::Chanhub(chanhub_subscribe(target.node_for(sid), token, pattern).await?)
            }
            (Broker::Chanhub, Transport::Sse) => {
                Sub::Sse(SseConn::connect(target.node_for(sid), pattern, token).await?)
            }
            (Broker::Nats, Transport::Ws) => {
                let sub = format!("SUB {pattern} {sid}\r\n");
                Sub::Nats(NatsConn::connect(target.addr, token, &sub, SUB_READ_BUFFER).await?)
            }
            (Broker::Nats, Transport::Sse) => bail!("NATS has no SSE endpoint"),
        })
    }

    /// Waits for deliveries and calls `on_msg` with the bytes holding each
    /// payload (a whole chanhub event frame, an SSE `data:` line, a NATS
    /// message body). Returns false once the connection is closed.
    pub(crate) async fn recv(&mut self, on_msg: &mut (dyn FnMut(&[u8]) + Send)) -> Result<bool> {
        match self {
            Sub::Chanhub(ws) => chanhub_recv(ws, on_msg).await,
            Sub::Sse(sse) => sse.recv(on_msg).await,
            Sub::Nats(nats) => nats.recv(&mut |d: Delivery<'_>| on_msg(d.payload)).await,
        }
    }
}

/// A chanhub event frame starts with this (the hub writes `type` first).
const EVENT_PREFIX: &[u8] = br#"{"type":"event""#;

/// A subscriber's connection to chanhub over the lean reader: `auth` and
/// `subscribe` in one write, done at `subscribed` (as [`chanhub_connect`]).
async fn chanhub_subscribe(addr: SocketAddr, token: &str, pattern: &str) -> Result<RawWs> {
    let sub = serde_json::json!({"type": "subscribe", "id": 2, "channels": [pattern]});
    chanhub_raw_connect(addr, token, Some((&sub, "subscribed")), SUB_READ_BUFFER).await
}

/// Connects to chanhub over the lean reader and authenticates; with
/// `request` = (frame, answer), sends that frame in the same write and
/// returns once the answer's `type` came (else at `auth:success`). Fails on
/// `auth:failed`, `error` or close.
pub(crate) async fn chanhub_raw_connect(
    addr: SocketAddr,
    token: &str,
    request: Option<(&serde_json::Value, &str)>,
    read_buffer: usize,
) -> Result<RawWs> {
    let mut ws = RawWs::connect(addr, "/ws", read_buffer).await?;
    let auth = serde_json::json!({"type": "auth", "id": 1, "token": token});
    ws.queue(opcode::TEXT, auth.to_string().as_bytes());
    let want = match request {
        Some((frame, answer)) => {
            ws.queue(opcode::TEXT, frame.to_string().as_bytes());
            answer
        }
        None => "auth:success",
    };
    ws.flush().await?;
    let tag = format!(r#""type":"{want}""#);
    let mut outcome: Option<Result<()>> = None;
    while outcome.is_none() {
        let open = ws
            .read(&mut |_, frame| {
                if outcome.is_some() {
                    return;
                }
                let text = String::from_utf8_lossy(frame);
                if text.contains(&tag) {
                    outcome = Some(Ok(()));
                } else if text.contains(r#""type":"auth:failed""#)
                    || text.contains(r#""type":"error""#)
                {
                    outcome = Some(Err(anyhow::anyhow!("chanhub refused: {text}")));
                }
            })
            .await?;
        if !open && outcome.is_none() {
            bail!("chanhub closed the connection before `{want}`");
        }
    }
    outcome.unwrap_or(Ok(()))?;
    Ok(ws)
}

async fn chanhub_recv(ws: &mut RawWs, on_msg: &mut (dyn FnMut(&[u8]) + Send)) -> Result<bool> {
    let open = ws
        .read(&mut |op, frame| {
            if op == opcode::TEXT && frame.starts_with(EVENT_PREFIX) {
                on_msg(frame);
            }
        })
        .await?;
    if ws.has_queued() {
        ws.flush().await?;
    }
    Ok(open)
}

/// The publishing side of a connection.
pub(crate) enum Publisher {
    Chanhub(Ws),
    Nats(NatsConn),
}

impl Publisher {
    /// Connects with a publishing credential (a `hub` token for chanhub).
    pub(crate) async fn connect(target: &Target) -> Result<Publisher> {
        let token = target.token(ClientType::Hub, "loadgen-publisher")?;
        Ok(match target.broker {
            Broker::Chanhub => {
                Publisher::Chanhub(chanhub_connect(target.addr, &token, None, 64 * 1024).await?)
            }
            Broker::Nats => {
                Publisher::Nats(NatsConn::connect(target.addr, &token, "", 64 * 1024).await?)
            }
        })
    }

    /// Queues one publish of `payload` to `subject`; chanhub gets
    /// `{"type":"publish","channel":…,"data":"<payload>"}` without an id,
    /// so no reply is sent.
    pub(crate) async fn feed(&mut self, subject: &str, payload: &str) -> Result<()> {
        match self {
            Publisher::Chanhub(ws) => {
                let text =
                    format!(r#"{{"type":"publish","channel":"{subject}","data":"{payload}"}}"#);
                ws.feed(Message::Text(text.into())).await?;
            }
            Publisher::Nats(nats) => nats.publish(subject, None, payload.as_bytes()).await?,
        }
        Ok(())
    }

    /// Writes everything queued.
    pub(crate) async fn flush(&mut self) -> Result<()> {
        match self {
            Publisher::Chanhub(ws) => ws.flush().await?,
            Publisher::Nats(nats) => nats.flush().await?,
        }
        Ok(())
    }

    /// Waits until `until`, meanwhile handling what the broker sends
    /// (NATS `PING`s; a chanhub `error` or close fails the run).
    pub(crate) async fn idle_until(&mut self, until: tokio::time::Instant) -> Result<()> {
        loop {
            let sleep = tokio::time::sleep_until(until);
            let open = match self {
                Publisher::Chanhub(ws) => tokio::select! {
                    _ = sleep => return Ok(()),
                    frame = ws.next() => match frame {
                        Some(Ok(Message::Text(text))) => bail!("publisher got: {text}"),
                        Some(Ok(Message::Close(frame))) => bail!("publisher closed: {frame:?}"),
                        Some(Ok(_)) => true,
                        Some(Err(e)) => return Err(e.into()),
                        None => false,
                    },
                },
                Publisher::Nats(nats) => tokio::select! {
                    _ = sleep => return Ok(()),
                    open = nats.discard_next() => open?,
                },
            };
            if !open {
                bail!("the publisher's connection closed");
            }
        }
    }
}

/// Upper bound on connecting, authenticating and subscribing one client.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(20);
