//! One WebSocket connection's life: authenticate, then a single task that
//! `select!`s over inbound frames, its bounded event queue, keepalive, token
//! expiry and shutdown, and finally closes with a code that says why.
//!
//! The session is generic over the socket (any `Stream + Sink` of axum
//! WebSocket messages) so its logic does not depend on how the socket was
//! made.
//!
//! Queued events and direct messages are written by the writer shared with
//! SSE ([`writer`](crate::writer): batched `take`,
//! skip filter, counting); this file supplies only their WebSocket framing
//! (`WsFrames`) and the bounded write to the socket.

mod calls;
mod channels;

mod tasks;

use std::sync::Arc;
use std::time::Duration;

use futures::{Sink, SinkExt, Stream, StreamExt};
use tokio::time::{Instant, MissedTickBehavior, sleep, sleep_until};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use crate::auth::{Identity, Permission};
use crate::channels::Pattern;
use crate::engine::Skip;
use crate::error::{AuthError, CloseReason, ErrorCode, RequestError};
use crate::hub::Hub;
use crate::limits::{MessageRate, Unauthenticated, Verdict};
use crate::metrics::Transport;
use crate::protocol::history::PresenceInfo;
use crate::protocol::{
    ClientMessage, RequestId, ServerMessage, now_ms, parse_client_message, salvage, salvage_id,
};
use crate::router::manager::{Inbox, Outbound, Subscriber, SubscriptionSet};
use crate::writer::{Framer, WriteBatch};

/// How long the hub waits for its close frame to be written and answered.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// What [`Session::take_now`] left to do.
enum Taken {
    Done,
    Later(Frame),
}

/// A frame that needs an await to handle.
enum Frame {
    Message(ClientMessage),
    /// Text that is not a client message, and why.
    Malformed(String, serde_json::Error),
    Binary,
}

/// Call frames a session handles in a row before it lets the other tasks
/// run: the requests and answers those frames queued for other connections
/// then go out while this one reads on, instead of all after the burst
/// (64 calls in flight over 4 servers: 225–239k → 283–291k calls/s, the
/// hub's core 75 % → 94 % busy; benches/README.md "Calls").
const CALL_FRAMES_BEFORE_YIELD: u32 = 64;

/// Most queued events written before one flush.
const WRITE_BATCH: usize = 256;

/// How a session ends.
enum End {
    /// The hub closes the connection with this reason.
    Close(CloseReason),
    /// The client went away (closed, reset); nothing more can be sent.
    Gone,
    /// A peer hub sent `hub:hello`: the socket becomes a federation link.
    Federate(Box<crate::protocol::federation::HubHello>),
}

/// Runs one connection to its end. `header_token` is a token from the
/// upgrade request (`Authorization` or `?token=`), if any.
/// `pending` holds the socket's place among the unauthenticated ones until
/// the token is checked.
pub(crate) async fn run<S>(
    hub: Hub,
    mut socket: S,
    header_token: Option<String>,
    pending: Unauthenticated,
) where
    S: Stream<Item = Result<Message, WsError>> + Sink<Message, Error = WsError> + Unpin,
{
    let authenticated = Box::pin(authenticate(&hub, &mut socket, header_token)).await;
    drop(pending);
    let (identity, auth_id) = match authenticated {
        Ok(found) => found,
        Err(end) => {
            if let End::Close(reason) = end {
                hub.metrics().closed(reason);
            }
            return finish(&mut socket, end).await;
        }
    };
    let client_id = hub.next_client_id();
    let (subscriber, events) = Subscriber::stopped_by(
        client_id,
        hub.config().limits.outbound_queue,
        hub.shutdown_token(),
    );
    let subs = SubscriptionSet::new(Arc::clone(hub.channels()), Arc::clone(&subscriber))
        .with_member(PresenceInfo {
            client_id: client_id.to_string(),
            sub: identity.sub.clone(),
            client_type: identity.client_type,
            connected_at: now_ms(),
        });
    // Dropped when the session ends, however it ends: hands back held tasks.
    let _entry = hub.register_connection(&subscriber);
    let _counted = hub.metrics().connected(Transport::Ws, identity.client_type);
    tracing::debug!(client_id, sub = %identity.sub, client_type = %identity.client_type, "authenticated");
    let rate = MessageRate::new(&hub.config().limits.messages, identity.client_type);
    let mut session = Session {
        rate,
        hub,
        socket,
        client_id,
        identity,
        subscriber,
        subs,
        bad_frames: 0,
        last_seen: Instant::now(),
        skip: Skip::new(),
        is_worker: false,
    };
    // Boxed (as are the handshake and a federation link's life): the
    // session's future stays as small as its idle loop needs.
    let end = match Box::pin(session.welcome(auth_id)).await {
        Ok(()) => session.serve(events).await,
        Err(end) => end,
    };
    if let End::Federate(hello) = end {
        // The link has its own queues and registration; this session's
        // subscriptions and entry go now.
        let Session {
            hub,
            socket,
            identity,
            subs,
            ..
        } = session;
        drop(subs);
        drop(_entry);
        return Box::pin(crate::federation::accept(
            hub.host(),
            socket,
            identity,
            *hello,
        ))
        .await;
    }
    if let End::Close(reason) = end {
        session.hub.metrics().closed(reason);
        if reason != CloseReason::Normal {
            tracing::info!(
                client_id,
                code = reason.code(),
                reason = reason.text(),
                "closing connection"
            );
        }
    }
    finish(&mut session.socket, end).await;
}

/// Waits for the token (unless the upgrade request carried one) and checks it.
async fn authenticate<S>(
    hub: &Hub,
    socket: &mut S,
    header_token: Option<String>,
) -> Result<(Identity, Option<RequestId>), End>
where
    S: Stream<Item = Result<Message, WsError>> + Sink<Message, Error = WsError> + Unpin,
{
    let (token, id) = match header_token {
        Some(token) => (token, None),
        None => {
            let deadline = Instant::now() + hub.config().auth.timeout;
            loop {
                let frame = tokio::select! {
                    _ = hub.shutdown_token().cancelled() => {
                        return Err(End::Close(CloseReason::ServiceRestart));
                    }
                    _ = sleep_until(deadline) => return Err(End::Close(CloseReason::AuthTimeout)),
                    frame = socket.next() => frame,
                };
                match frame {
                    None | Some(Ok(Message::Close(_))) => return Err(End::Gone),
                    Some(Err(err)) => return Err(read_error(&err)),
                    Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => continue,
                    Some(Ok(Message::Text(text))) => {
                        if let Ok(ClientMessage::Auth { id, token }) =
                            serde_json::from_str::<ClientMessage>(&text)
                        {
                            break (token, id);
                        }
                        hub.metrics().auth_failed(AuthError::AuthRequired);
                        return Err(
                            refuse(socket, salvage_id(&text), AuthError::AuthRequired).await
                        );
                    }
                    Some(Ok(Message::Binary(_))) => {
                        hub.metrics().auth_failed(AuthError::AuthRequired);
                        return Err(refuse(socket, None, AuthError::AuthRequired).await);
                    }
                }
            }
        }
    };
    match hub.verify(&token).await {
        Ok(identity) => Ok((identity, id)),
        Err(reason) => Err(refuse(socket, id, reason).await),
    }
}

/// Sends `auth:failed` and decides to close with 4001.
async fn refuse<S>(socket: &mut S, id: Option<RequestId>, reason: AuthError) -> End
where
    S: Sink<Message, Error = WsError> + Unpin,
{
    tracing::info!(reason = reason.code(), "authentication failed");
    let msg = ServerMessage::AuthFailed {
        id,
        reason,
        message: reason.to_string(),
    };
    let sent = tokio::time::timeout(
        CLOSE_TIMEOUT,
        socket.send(Message::Text(msg.to_json().into())),
    );
    match sent.await {
        Ok(Ok(())) => End::Close(CloseReason::AuthFailed),
        _ => End::Gone,
    }
}

/// Maps a read error: an oversized message closes with 1009, invalid UTF-8
/// with 1007, broken framing with 1002; anything else (a reset, an I/O
/// error) means the socket is unusable.
fn read_error(err: &WsError) -> End {
    match err {
        WsError::Capacity(_) => End::Close(CloseReason::TooBig),
        WsError::Utf8(_) => End::Close(CloseReason::InvalidPayload),
        WsError::Protocol(_) => End::Close(CloseReason::ProtocolError),
        _ => End::Gone,
    }
}

/// Sends the close frame (bounded in time) and waits briefly for the
/// client's answer, so the frame is not lost to a TCP reset.
async fn finish<S>(socket: &mut S, end: End)
where
    S: Stream<Item = Result<Message, WsError>> + Sink<Message, Error = WsError> + Unpin,
{
    let End::Close(reason) = end else {
        return;
    };
    let frame = CloseFrame {
        code: reason.code().into(),
        reason: reason.text().into(),
    };
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
        if socket.send(Message::Close(Some(frame))).await.is_ok() {
            while let Some(Ok(_)) = socket.next().await {}
        }
    })
    .await;
}

/// An authenticated connection.
struct Session<S> {
    /// Shared hub state.
    hub: Hub,
    /// The WebSocket.
    socket: S,
    /// This connection's id (`clientId` on the wire).
    client_id: u64,
    /// Who the token says the client is, and what it may do.
    identity: Identity,
    /// The fan-out side of this connection's event queue.
    subscriber: Arc<Subscriber>,
    /// Patterns held; dropping it unsubscribes them all.
    subs: SubscriptionSet,
    /// Consecutive frames that could not be understood.
    bad_frames: u32,
    /// When the client last sent anything; drives keepalive.
    last_seen: Instant,
    /// Registered as a worker (its messages refresh `last_seen` in the registry).
    is_worker: bool,
    /// Cluster mode: per history channel, the offset live delivery starts
    /// after. Events up to it that were queued while the subscribe read
    /// Redis were replayed already or precede the subscription; the writer
    /// drops them ([`wanted`](crate::writer::wanted)). Empty
    /// with the memory engine.
    skip: Skip,
    /// Inbound frame budget (`limits.messages`).
    rate: MessageRate,
}

impl<S> Session<S>
where
    S: Stream<Item = Result<Message, WsError>> + Sink<Message, Error = WsError> + Unpin,
{
    async fn welcome(&mut self, id: Option<RequestId>) -> Result<(), End> {
        let perms = &self.identity.permissions;
        let msg = ServerMessage::AuthSuccess {
            id,
            client_id: self.client_id.to_string(),
            client_type: self.identity.client_type,
            sub: self.identity.sub.clone(),
            permissions: perms.list(),
            subscribe_channels: perms.subscribe_patterns(),
            publish_channels: perms.publish_patterns(),
            expires_at: self.identity.expires_at.saturating_mul(1000),
        };
        self.reply(msg).await
    }

    /// The main loop; returns how the connection ends.
    async fn serve(&mut self, mut events: Inbox) -> End {
        let ws = &self.hub.config().websocket;
        let (ping_interval, ping_timeout) = (ws.ping_interval, ws.ping_timeout);
        let mut keepalive = tokio::time::interval_at(Instant::now() + ping_interval, ping_interval);
        keepalive.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let expiry = sleep_until(self.expiry_instant());
        tokio::pin!(expiry);
        let subscriber = Arc::clone(&self.subscriber);
        // Shutdown or a kick (the subscriber's token is a child of the
        // hub's shutdown token): one future, made once rather than per turn
        // of the loop, so it registers its waiter once instead of on every
        // wake-up, which every delivered event paid for.
        let kicked = subscriber.kicked();
        tokio::pin!(kicked);
        // Call frames handled without an await since the last yield.
        let mut handled_now = 0;
        loop {
            let step = tokio::select! {
                biased;
                reason = &mut kicked => Err(End::Close(reason)),
                _ = &mut expiry => Err(End::Close(CloseReason::TokenExpired)),
                _ = keepalive.tick() => self.keepalive(ping_interval, ping_timeout).await,
                event = events.recv() => self.write_events(event, &mut events).await,
                frame = self.socket.next() => match frame {
                    None | Some(Ok(Message::Close(_))) => Err(End::Gone),
                    Some(Err(err)) => Err(read_error(&err)),
                    Some(Ok(msg)) => {
                        self.last_seen = Instant::now();
                        match self.rate.check() {
                            Verdict::Allow => {
                                let before = self.identity.expires_at;
                                // Boxed, like every path that handles one
                                // message: those futures are large, and an
                                // idle connection must not carry their space.
                                // The frames of a call in flight need no
                                // await, and skip that.
                                let result = match self.take_now(msg) {
                                    Taken::Done => {
                                        handled_now += 1;
                                        if handled_now == CALL_FRAMES_BEFORE_YIELD {
                                            handled_now = 0;
                                            tokio::task::yield_now().await;
                                        }
                                        Ok(())
                                    }
                                    Taken::Later(frame) => Box::pin(self.on_frame(frame)).await,
                                };
                                if self.identity.expires_at != before {
                                    expiry.as_mut().reset(self.expiry_instant());
                                }
                                result
                            }
                            Verdict::Limited => Box::pin(self.rate_limited(&msg)).await,
                            Verdict::Close => match Box::pin(self.rate_limited(&msg)).await {
                                Ok(()) => Err(End::Close(CloseReason::RateLimited)),
                                Err(end) => Err(end),
                            },
                        }
                    }
                },
            };
            if let Err(end) = step {
                return end;
            }
        }
    }

    /// When the current token stops being valid.
    fn expiry_instant(&self) -> Instant {
        let leeway = self.hub.config().auth.leeway;
        let expires_ms = self.identity.expires_at.saturating_mul(1000);
        let left = Duration::from_millis(expires_ms.saturating_sub(now_ms())) + leeway;
        Instant::now() + left
    }

    async fn keepalive(&mut self, interval: Duration, timeout: Duration) -> Result<(), End> {
        let idle = self.last_seen.elapsed();
        if idle >= timeout {
            return Err(End::Close(CloseReason::PingTimeout));
        }
        if idle >= interval {
            self.send(Message::Ping(Default::default())).await?;
        }
        Ok(())
    }

    /// Writes `first` and whatever else is already queued (one
    /// [`WriteBatch`]), then flushes once.
    async fn write_events(&mut self, first: Outbound, events: &mut Inbox) -> Result<(), End> {
        let socket = &mut self.socket;
        let mut framer = WsFrames;
        let mut batch = WriteBatch::new(first, events, WRITE_BATCH, &mut self.skip, &mut framer);
        let write = async {
            for frame in batch.by_ref() {
                socket.feed(frame).await?;
            }
            socket.flush().await
        };
        let result = bounded_write(
            write,
            &self.subscriber,
            self.hub.config().websocket.ping_timeout,
        )
        .await;
        batch.finish(self.hub.metrics(), self.hub.pacer(), result.is_ok());
        result
    }

    async fn send(&mut self, msg: Message) -> Result<(), End> {
        let timeout = self.hub.config().websocket.ping_timeout;
        bounded_write(self.socket.send(msg), &self.subscriber, timeout).await
    }

    async fn reply(&mut self, msg: ServerMessage) -> Result<(), End> {
        let json = msg.to_json();
        self.hub.metrics().sent(Transport::Ws, 1, json.len() as u64);
        self.send(Message::Text(json.into())).await
    }

    async fn error(
        &mut self,
        id: Option<RequestId>,
        err: RequestError,
        channel: Option<String>,
    ) -> Result<(), End> {
        self.reply(ServerMessage::Error {
            id,
            code: err.code,
            message: err.message,
            channel,
            detail: None,
        })
        .await
    }

    /// Counts and parses a frame, and handles it at once when that needs
    /// no await (a call or a call's reply, [`call_now`](Self::call_now));
    /// anything else is left for [`on_frame`](Self::on_frame).
    fn take_now(&mut self, msg: Message) -> Taken {
        match msg {
            Message::Text(text) => {
                self.hub
                    .metrics()
                    .received(Transport::Ws, 1, text.len() as u64);
                match parse_client_message(&text) {
                    Ok(msg) => {
                        self.bad_frames = 0;
                        match self.call_now(msg) {
                            None => Taken::Done,
                            Some(msg) => Taken::Later(Frame::Message(msg)),
                        }
                    }
                    Err(err) => Taken::Later(Frame::Malformed(text.to_string(), err)),
                }
            }
            Message::Binary(bytes) => {
                self.hub
                    .metrics()
                    .received(Transport::Ws, 1, bytes.len() as u64);
                Taken::Later(Frame::Binary)
            }
            // tungstenite answers pings itself; both only refresh `last_seen`
            // (a raw `Frame` is never read, only written).
            Message::Ping(_) | Message::Pong(_) | Message::Close(_) | Message::Frame(_) => {
                Taken::Done
            }
        }
    }

    async fn on_frame(&mut self, frame: Frame) -> Result<(), End> {
        match frame {
            Frame::Message(msg) => self.on_request(msg).await,
            Frame::Malformed(text, err) => self.malformed(&text, &err).await,
            Frame::Binary => {
                self.bad_frame(
                    None,
                    "binary frames are not supported; send JSON text frames".into(),
                )
                .await
            }
        }
    }

    /// Refuses a frame over the connection's rate with `rate_limited` (and
    /// the request's id, when it has one).
    async fn rate_limited(&mut self, msg: &Message) -> Result<(), End> {
        self.hub.metrics().rate_limited();
        let id = match msg {
            Message::Text(text) => salvage_id(text),
            _ => None,
        };
        let err = RequestError::new(
            ErrorCode::RateLimited,
            "over this connection's message rate (limits.messages); slow down",
        );
        self.error(id, err, None).await
    }

    /// A frame that did not parse: `forbidden` when its type is one this
    /// connection may not send anyway (permission before shape), else
    /// `bad_request`.
    async fn malformed(&mut self, text: &str, err: &serde_json::Error) -> Result<(), End> {
        let (kind, id) = salvage(text);
        if let Some(permission) = kind.as_deref().and_then(Permission::for_message)
            && let Err(refused) = self.identity.permissions.require(permission)
        {
            return self.error(id, refused, None).await;
        }
        self.bad_frame(id, format!("invalid message: {err}")).await
    }

    async fn bad_frame(&mut self, id: Option<RequestId>, message: String) -> Result<(), End> {
        self.bad_frames += 1;
        self.error(id, RequestError::new(ErrorCode::BadRequest, message), None)
            .await?;
        if self.bad_frames >= self.hub.config().limits.max_bad_frames {
            return Err(End::Close(CloseReason::TooManyBadFrames));
        }
        Ok(())
    }

    async fn on_request(&mut self, msg: ClientMessage) -> Result<(), End> {
        match msg {
            ClientMessage::Auth { id, .. } => {
                let err = RequestError::new(
                    ErrorCode::AlreadyAuthenticated,
                    "this connection is already authenticated; use auth:refresh",
                );
                self.error(id, err, None).await
            }
            ClientMessage::AuthRefresh { id, token } => self.refresh(id, &token).await,
            ClientMessage::Subscribe {
                id,
                channels,
                since,
            } => self.subscribe(id, channels, since).await,
            ClientMessage::Unsubscribe { id, channels } => self.unsubscribe(id, channels).await,
            ClientMessage::Publish { id, channel, data } => self.publish(id, channel, data).await,
            ClientMessage::Ping { id } => self.reply(ServerMessage::Pong { id }).await,
            ClientMessage::HubHello(hello) => Err(End::Federate(Box::new(hello))),
            msg @ (ClientMessage::History { .. }
            | ClientMessage::Presence { .. }
            | ClientMessage::PresenceStats { .. }) => self.on_channel_query(msg).await,
            msg @ (ClientMessage::Serve { .. }
            | ClientMessage::Unserve { .. }
            | ClientMessage::Call { .. }
            | ClientMessage::CallReply { .. }
            | ClientMessage::CallCancel { .. }) => self.on_call_message(msg).await,
            task_message => self.on_task_message(task_message).await,
        }
    }

    async fn refresh(&mut self, id: Option<RequestId>, token: &str) -> Result<(), End> {
        let reason = match self.hub.verify(token).await {
            Ok(fresh)
                if fresh.sub == self.identity.sub
                    && fresh.client_type == self.identity.client_type =>
            {
                let expires_at = fresh.expires_at.saturating_mul(1000);
                self.identity = fresh;
                return self
                    .reply(ServerMessage::AuthRefreshed { id, expires_at })
                    .await;
            }
            Ok(_) => AuthError::SubjectMismatch,
            Err(reason) => reason,
        };
        // The current token stays in force until it expires.
        self.reply(ServerMessage::AuthFailed {
            id,
            reason,
            message: reason.to_string(),
        })
        .await
    }

    async fn unsubscribe(
        &mut self,
        id: Option<RequestId>,
        channels: Vec<String>,
    ) -> Result<(), End> {
        let limits = self.hub.name_limits();
        let mut removed = Vec::with_capacity(channels.len());
        for raw in channels {
            match Pattern::parse(&raw, &limits) {
                Ok(pattern) => {
                    if self.subs.remove(&pattern) {
                        removed.push(raw);
                    }
                }
                Err(err) => self.error(id.clone(), err.into(), Some(raw)).await?,
            }
        }
        self.reply(ServerMessage::Unsubscribed {
            id,
            channels: removed,
        })
        .await
    }

    async fn publish(
        &mut self,
        id: Option<RequestId>,
        raw: String,
        data: serde_json::Value,
    ) -> Result<(), End> {
        let channel = match self.hub.channel(&raw) {
            Ok(channel) => channel,
            Err(err) => return self.error(id, err, Some(raw)).await,
        };
        if let Err(err) = self.hub.check_publish(&self.identity, &channel) {
            return self.error(id, err, Some(raw)).await;
        }
        let (event, delivered) = match self.hub.engine().publish(channel, data).await {
            Ok(published) => published,
            Err(err) => return self.error(id, err, Some(raw)).await,
        };
        // A publisher whose frames wait in its socket is read 16 KiB at a
        // time, and the runtime never asks it to yield meanwhile: it could
        // queue its whole backlog before any subscriber writes, fill every
        // queue and have each subscriber dropped as a slow consumer though
        // it reads all it is sent. Once a delivery found a queue half full,
        // the writers run first, and the backlog waits in the socket (TCP
        // back-pressure on the publisher).
        if self.hub.channels().take_pressure() {
            tokio::task::yield_now().await;
        }
        match id {
            Some(id) => {
                self.reply(ServerMessage::Published {
                    id: Some(id),
                    channel: raw,
                    event_id: event.id.clone(),
                    delivered,
                })
                .await
            }
            None => Ok(()),
        }
    }
}

/// WebSocket framing for the [writer](crate::writer): a queued
/// message is one text frame of shared bytes, no copy.
struct WsFrames;

impl Framer for WsFrames {
    type Frame = Message;
    const TRANSPORT: Transport = Transport::Ws;
    /// `publish_to_write` measures WebSocket writes.
    const SAMPLES_LATENCY: bool = true;

    fn frame(&mut self, out: Outbound) -> Option<Message> {
        Some(Message::Text(match out {
            Outbound::Event(event) => event.ws_frame(),
            Outbound::Direct(text) => *text,
        }))
    }

    fn len(frame: &Message) -> usize {
        match frame {
            Message::Text(text) => text.len(),
            _ => 0,
        }
    }
}

/// Runs a write, but gives up when the connection is kicked or the write
/// takes longer than `timeout` (a client that stops reading must not pin
/// its session forever).
///
/// Most writes finish at once (the socket buffer has room): those arm no
/// timer and register no waiter, and the timer lives on the heap only for
/// the writes that have to wait.
async fn bounded_write<F>(write: F, subscriber: &Subscriber, timeout: Duration) -> Result<(), End>
where
    F: std::future::Future<Output = Result<(), WsError>>,
{
    let mut write = std::pin::pin!(write);
    if let std::task::Poll::Ready(result) = futures::poll!(write.as_mut()) {
        return result.map_err(|_| End::Gone);
    }
    let deadline = Box::pin(sleep(timeout));
    tokio::select! {
        result = write => result.map_err(|_| End::Gone),
        reason = subscriber.kicked() => Err(End::Close(reason)),
        _ = deadline => Err(End::Close(CloseReason::SlowConsumer)),
    }
}
