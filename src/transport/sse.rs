//! `GET /api/stream` (and `/api/stream/events`): events as Server-Sent
//! Events, so `curl -N` and `EventSource` UIs work.
//!
//! The body is written by hand rather than with `axum::response::Sse`
//! because `Sse` formats every event into a new buffer per subscriber; here
//! each event's SSE frame is built once ([`Event::sse_frame`]) and every
//! stream sends the same refcounted bytes.
//!
//! Resuming: on a stream with history channels the `id:` of a frame is the
//! stream's resume cursor ([`SseCursor`]: channel → epoch and offset), not
//! the event id, so a reconnect with `Last-Event-ID` (or `?lastEventId=`)
//! gets the missed events before live ones, or a `recovery:failed` frame
//! naming the channels it cannot recover. Only the `id:` line is written
//! per stream; the `data:` line is still the shared bytes.
//!
//! Queued events leave the stream's inbox through the writer shared with
//! WebSocket sessions ([`writer`](crate::writer): batched `take`, skip
//! filter, counting), one body chunk per batch; this file supplies only
//! their SSE framing (`SseFrames`: the shared frame, or the cursor's `id:`
//! line and the shared `data:` bytes; direct messages are not sent).
//!
//! [`Event::sse_frame`]: crate::protocol::Event::sse_frame

use std::collections::{BTreeMap, VecDeque};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{ConnectInfo, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use tokio::time::{Instant, Interval, Sleep};
use tokio_util::sync::CancellationToken;
use tokio_util::task::task_tracker::TaskTrackerToken;

use super::{query_pairs, request_token};
use crate::auth::Identity;
use crate::channels::list::split_list;
use crate::channels::{ChannelName, Pattern};
use crate::engine::Skip;
use crate::error::{ApiError, AuthError, CloseReason, ErrorCode, RequestError};
use crate::hub::{ConnectionSlot, Hub};
use crate::metrics::{ConnectionGauge, Metrics, Transport};
use crate::pacing::Pacer;
use crate::protocol::history::{PresenceInfo, SseCursor, StreamPosition};
use crate::protocol::{Event, now_ms};
use crate::router::SubscribeOutcome;
use crate::router::manager::{Inbox, Outbound, Subscriber, SubscriptionSet};
use crate::writer::{Framer, WriteBatch};

const KEEPALIVE_FRAME: &[u8] = b":keepalive\n\n";

/// A `Last-Event-ID` read as a cursor, and its channels parsed.
type Resume = (SseCursor, BTreeMap<ChannelName, StreamPosition>);

pub(crate) async fn stream(
    State(hub): State<Hub>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    if hub.is_shutting_down() {
        hub.metrics().rejected("shutdown");
        return Err(RequestError::new(ErrorCode::Unavailable, "the hub is shutting down").into());
    }
    if !hub.admit(peer.ip()) {
        return Err(RequestError::new(
            ErrorCode::RateLimited,
            "too many connection attempts from this address; retry later",
        )
        .into());
    }
    let query = query_pairs(query.as_deref());
    let token =
        request_token(&headers, &query, hub.config().auth.allow_query_token).ok_or_else(|| {
            hub.metrics().auth_failed(AuthError::MissingToken);
            AuthError::MissingToken
        })?;
    let identity = hub.verify(&token).await?;
    let patterns = requested_patterns(&hub, &query, &identity)?;
    let resume = resume_cursor(&hub, &headers, &query)?;
    let slot = hub.try_connect().ok_or_else(|| {
        RequestError::new(ErrorCode::Unavailable, "the hub is at its connection limit")
    })?;

    let client_id = hub.next_client_id();
    let (subscriber, events) = Subscriber::new(client_id, hub.config().limits.outbound_queue);
    let mut subs = SubscriptionSet::new(Arc::clone(hub.channels()), Arc::clone(&subscriber))
        .with_member(PresenceInfo {
            client_id: client_id.to_string(),
            sub: identity.sub.clone(),
            client_type: identity.client_type,
            connected_at: now_ms(),
        });
    let since: BTreeMap<ChannelName, StreamPosition> = resume
        .as_ref()
        .map(|(_, since)| since.clone())
        .unwrap_or_default();
    // History events at or before where live delivery starts are dropped
    // from the queue (on the Redis engine they come from its history first).
    let mut skip = Skip::new();
    let outcome = hub
        .engine()
        .subscribe(&mut subs, &mut skip, &patterns, &since)
        .await;
    if let Some(Err(err)) = outcome.results.iter().find(|r| r.is_err()) {
        // A full channel refuses the stream, like any refused pattern.
        return Err(err.clone().into());
    }
    let incomplete = resume.as_ref().is_some_and(|(c, _)| c.is_incomplete());
    let (cursor, pending) = opening_frames(client_id, &since, incomplete, outcome);
    tracing::debug!(client_id, sub = %identity.sub, "sse stream opened");

    let keepalive = hub.config().sse.keepalive;
    let expires_in = std::time::Duration::from_millis(
        identity
            .expires_at
            .saturating_mul(1000)
            .saturating_sub(now_ms()),
    ) + hub.config().auth.leeway;
    let state = StreamState {
        skip,
        pending,
        frames: SseFrames {
            cursor,
            cursor_line: None,
        },
        events,
        shutdown: hub.shutdown_token().clone(),
        keepalive: tokio::time::interval_at(Instant::now() + keepalive, keepalive),
        expiry: Box::pin(tokio::time::sleep(expires_in)),
        subscriber,
        _subs: subs,
        _slot: slot,
        _tracked: hub.tracker().token(),
        _counted: hub
            .metrics()
            .connected(Transport::Sse, identity.client_type),
        metrics: Arc::clone(hub.metrics()),
        pacer: Arc::clone(hub.pacer()),
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

/// The `Last-Event-ID` header, else `?lastEventId=`, read as a resume
/// cursor: `None` when absent or a plain event id; 400 when it is a cursor
/// that cannot be read.
pub(crate) fn resume_cursor(
    hub: &Hub,
    headers: &HeaderMap,
    query: &[(String, String)],
) -> Result<Option<Resume>, ApiError> {
    let header = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(str::trim);
    let param = query
        .iter()
        .find(|(k, _)| k == "lastEventId")
        .map(|(_, v)| v.as_str());
    let Some(text) = header.or(param).filter(|t| !t.is_empty()) else {
        return Ok(None);
    };
    let cursor = SseCursor::decode(text).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let Some(cursor) = cursor else {
        return Ok(None);
    };
    let limits = hub.name_limits();
    let mut since = BTreeMap::new();
    for (channel, position) in cursor.entries() {
        let channel = ChannelName::parse(channel, &limits).map_err(|e| {
            ApiError::bad_request(format!(
                "Last-Event-ID is not a valid resume cursor: {channel:?}: {e}"
            ))
        })?;
        since.insert(channel, position.clone());
    }
    Ok(Some((cursor, since)))
}

/// The frames a stream starts with, and its cursor after them: `connected`
/// (with the cursor as `id:` when there is one: the positions to resume
/// from, taken before any replayed event), then `recovery:failed` when
/// channels could not be recovered (its `id:` moves them to their current
/// position), then the replayed events in order.
fn opening_frames(
    client_id: u64,
    since: &BTreeMap<ChannelName, StreamPosition>,
    incomplete: bool,
    outcome: SubscribeOutcome,
) -> (SseCursor, VecDeque<Bytes>) {
    let mut cursor = SseCursor::new();
    let mut failed = Vec::new();
    for (channel, position) in &outcome.positions {
        if !outcome.recovered.contains_key(channel) {
            cursor.set(channel, position.clone());
        }
    }
    for (channel, &recovered) in &outcome.recovered {
        if !recovered {
            failed.push(channel.clone());
        }
        if let Some((_, old)) = since.iter().find(|(c, _)| c.as_str() == channel) {
            cursor.set(channel, old.clone());
        }
    }
    if incomplete {
        cursor.set_incomplete();
    }
    let mut frames = VecDeque::with_capacity(outcome.replay.len() + 2);
    frames.push_back(connected_frame(client_id, &cursor));
    if !failed.is_empty() || incomplete {
        for channel in &failed {
            match outcome.positions.get(channel) {
                Some(now) => cursor.set(channel, now.clone()),
                None => cursor.remove(channel),
            }
        }
        cursor.clear_incomplete();
        frames.push_back(failed_frame(&cursor, &failed, incomplete));
    }
    for event in &outcome.replay {
        advance(&mut cursor, event);
        let mut frame = id_line(&cursor).to_vec();
        frame.extend_from_slice(&event.sse_data());
        frames.push_back(Bytes::from(frame));
    }
    (cursor, frames)
}

/// Moves the cursor past `event` (a no-op for events without history).
fn advance(cursor: &mut SseCursor, event: &Event) {
    if let Some(position) = &event.position {
        cursor.set(
            event.channel.as_str(),
            StreamPosition {
                offset: position.offset,
                epoch: position.epoch.to_string(),
            },
        );
    }
}

/// `id: <cursor>\n`.
fn id_line(cursor: &SseCursor) -> Bytes {
    Bytes::from(format!("id: {}\n", cursor.encode()))
}

/// `event: recovery:failed` with `data: {"type":"recovery:failed","data":{"channels":[...]},"timestamp":...}`.
fn failed_frame(cursor: &SseCursor, channels: &[String], incomplete: bool) -> Bytes {
    #[derive(serde::Serialize)]
    struct Failed<'a> {
        #[serde(rename = "type")]
        kind: &'static str,
        data: FailedData<'a>,
        timestamp: u64,
    }
    #[derive(serde::Serialize)]
    struct FailedData<'a> {
        channels: &'a [String],
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        incomplete: bool,
    }
    let json = serde_json::to_string(&Failed {
        kind: "recovery:failed",
        data: FailedData {
            channels,
            incomplete,
        },
        timestamp: now_ms(),
    })
    .unwrap_or_default();
    let mut frame = if cursor.is_empty() {
        Vec::new()
    } else {
        id_line(cursor).to_vec()
    };
    frame.extend_from_slice(format!("event: recovery:failed\ndata: {json}\n\n").as_bytes());
    Bytes::from(frame)
}

/// The first frame: `data: {"type":"connected","data":{"clientId":...},"timestamp":...}`,
/// after an `id:` line when the stream has a cursor. A struct rather than
/// `json!`, whose map would sort the keys and put `type` last.
fn connected_frame(client_id: u64, cursor: &SseCursor) -> Bytes {
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
    let mut frame = if cursor.is_empty() {
        Vec::new()
    } else {
        id_line(cursor).to_vec()
    };
    frame.extend_from_slice(format!("data: {json}\n\n").as_bytes());
    Bytes::from(frame)
}

/// Parses and checks the `channels` parameters (repeatable, comma-separated).
pub(crate) fn requested_patterns(
    hub: &Hub,
    query: &[(String, String)],
    identity: &Identity,
) -> Result<Vec<Pattern>, ApiError> {
    let limits = hub.name_limits();
    let max = hub.config().limits.max_sse_patterns;
    let mut patterns: Vec<Pattern> = Vec::new();
    // Every listed entry counts, repeats included: the limit bounds the work.
    let mut listed = 0;
    for (_, value) in query.iter().filter(|(k, _)| k == "channels") {
        for raw in split_list(value) {
            listed += 1;
            if listed > max {
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
    /// Frames to send before reading the queue: the opening frames
    /// (`connected`, `recovery:failed`, replayed events).
    pending: VecDeque<Bytes>,
    /// How queued events are framed: the resume cursor.
    frames: SseFrames,
    /// This stream's event queue.
    events: Inbox,
    /// Cluster mode: per channel, the last offset replayed from Redis;
    /// the writer drops queued events up to it.
    skip: Skip,
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
    /// Counts the stream among authenticated connections until dropped.
    _counted: ConnectionGauge,
    /// Traffic and disconnect counters.
    metrics: Arc<Metrics>,
    /// Told how late each batch's oldest event goes out.
    pacer: Arc<Pacer>,
}

/// Most queued events joined into one body chunk: a stream that fell
/// behind catches up with one chunk (and one write) per batch instead of
/// one per event.
const SSE_BATCH: usize = 256;

/// What woke a stream.
enum Wake {
    Event(Outbound),
    Keepalive,
}

async fn next_frame(mut state: StreamState) -> Option<(Result<Bytes, Infallible>, StreamState)> {
    if let Some(frame) = state.pending.pop_front() {
        state.metrics.sent(Transport::Sse, 0, frame.len() as u64);
        return Some((Ok(frame), state));
    }
    let wake = tokio::select! {
        biased;
        _ = state.shutdown.cancelled() => {
            state.metrics.disconnected(Transport::Sse, CloseReason::ServiceRestart);
            None
        }
        reason = state.subscriber.kicked() => {
            state.metrics.disconnected(Transport::Sse, reason);
            None
        }
        _ = &mut state.expiry => {
            state.metrics.disconnected(Transport::Sse, CloseReason::TokenExpired);
            None
        }
        event = state.events.recv() => Some(Wake::Event(event)),
        _ = state.keepalive.tick() => Some(Wake::Keepalive),
    }?;
    let frame = match wake {
        Wake::Keepalive => {
            let frame = Bytes::from_static(KEEPALIVE_FRAME);
            state.metrics.sent(Transport::Sse, 0, frame.len() as u64);
            frame
        }
        Wake::Event(first) => state.batch(first),
    };
    Some((Ok(frame), state))
}

impl StreamState {
    /// One body chunk: the frames of one [`WriteBatch`] (`first` and
    /// whatever else is queued already, up to [`SSE_BATCH`]), counted by
    /// the writer. A lone event without a cursor is its shared frame, not
    /// a copy.
    fn batch(&mut self, first: Outbound) -> Bytes {
        let mut batch = WriteBatch::new(
            first,
            &mut self.events,
            SSE_BATCH,
            &mut self.skip,
            &mut self.frames,
        );
        let mut parts: Vec<Bytes> = Vec::new();
        for frame in batch.by_ref() {
            parts.extend(frame.id);
            parts.push(frame.data);
        }
        batch.finish(&self.metrics, &self.pacer, true);
        match parts.len() {
            0 => Bytes::new(),
            1 => parts.swap_remove(0),
            _ => {
                let mut chunk = bytes::BytesMut::with_capacity(parts.iter().map(Bytes::len).sum());
                for part in &parts {
                    chunk.extend_from_slice(part);
                }
                chunk.freeze()
            }
        }
    }
}

/// SSE framing for the [writer](crate::writer), and the stream's resume
/// cursor, which every event of a history channel moves.
struct SseFrames {
    /// Resume positions of this stream's history channels.
    cursor: SseCursor,
    /// `id: <cursor>\n`, built once per cursor change.
    cursor_line: Option<Bytes>,
}

/// One event's SSE frame: shared bytes, plus the stream's `id:` line when
/// it has a cursor.
struct SseFrame {
    /// `id: <cursor>\n`, when the stream has a cursor (then `data` has no
    /// `id:` line of its own).
    id: Option<Bytes>,
    /// The event's shared frame, or its shared `data:` bytes.
    data: Bytes,
}

impl Framer for SseFrames {
    type Frame = SseFrame;
    const TRANSPORT: Transport = Transport::Sse;
    /// `publish_to_write` measures WebSocket writes; an SSE chunk is handed
    /// to the response body, whose write the stream does not see.
    const SAMPLES_LATENCY: bool = false;

    /// The shared frame (with the event id) while the stream has no
    /// cursor; else the cursor as `id:` and the shared `data:` bytes.
    /// Direct messages go to WebSocket sessions only.
    fn frame(&mut self, out: Outbound) -> Option<SseFrame> {
        let Outbound::Event(event) = out else {
            return None;
        };
        if event.position.is_some() {
            advance(&mut self.cursor, &event);
            self.cursor_line = None;
        }
        if self.cursor.is_empty() {
            return Some(SseFrame {
                id: None,
                data: event.sse_frame(),
            });
        }
        let id = self
            .cursor_line
            .get_or_insert_with(|| id_line(&self.cursor))
            .clone();
        Some(SseFrame {
            id: Some(id),
            data: event.sse_data(),
        })
    }

    fn len(frame: &SseFrame) -> usize {
        frame.id.as_ref().map_or(0, Bytes::len) + frame.data.len()
    }
}
