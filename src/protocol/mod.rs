//! The wire protocol: every JSON message a client sends or receives, as serde
//! types. This module is the single source of truth; `proto-docs/` is written
//! from it, and a test parses every JSON example there with these types so
//! the docs cannot drift.
//!
//! Messages are JSON text frames tagged by `"type"`. Field names are
//! camelCase. Every client message may carry an `id` (string or integer),
//! echoed in the reply to it.

pub mod calls;
#[cfg(feature = "server")]
pub(crate) mod cluster;
#[cfg(feature = "server")]
mod event;
pub mod federation;
pub mod history;
mod http;
mod parse;
pub mod tasks;
#[cfg(feature = "server")]
pub(crate) mod written;

#[cfg(feature = "server")]
pub(crate) use event::EventIds;
#[cfg(feature = "server")]
pub use event::{Event, Position};
pub use http::{PublishItem, PublishRequest, PublishResponse, PublishedItem, TokenResponse};

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::auth::{ClientType, Permission};
use crate::error::{AuthError, ErrorCode};
pub use calls::Payload;
use calls::{CallError, CallerInfo};
use history::{HistoryEvent, PresenceInfo, StreamPosition};
pub use parse::parse_client_message;
use tasks::{Assignment, TaskSpec, TaskState, TaskView};

/// A request id chosen by the client, echoed in the reply.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, JsonSchema)]
#[serde(untagged)]
pub enum RequestId {
    /// `"id": 7`
    Int(i64),
    /// `"id": "sub-1"`
    Str(String),
}

/// Read straight from the token (an untagged enum would buffer it first:
/// every request carries one).
impl<'de> Deserialize<'de> for RequestId {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct IdVisitor;

        impl serde::de::Visitor<'_> for IdVisitor {
            type Value = RequestId;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an integer or a string")
            }

            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<RequestId, E> {
                Ok(RequestId::Int(v))
            }

            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<RequestId, E> {
                i64::try_from(v)
                    .map(RequestId::Int)
                    .map_err(|_| E::invalid_value(serde::de::Unexpected::Unsigned(v), &self))
            }

            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<RequestId, E> {
                Ok(RequestId::Str(v.to_owned()))
            }

            fn visit_string<E: serde::de::Error>(self, v: String) -> Result<RequestId, E> {
                Ok(RequestId::Str(v))
            }
        }

        deserializer.deserialize_any(IdVisitor)
    }
}

/// A message from a client to the hub.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", rename_all_fields = "camelCase")]
pub enum ClientMessage {
    /// The first message of a connection that did not present a token on the
    /// upgrade request.
    #[serde(rename = "auth")]
    Auth {
        /// Echoed in the reply.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<RequestId>,
        /// The JWT.
        token: String,
    },
    /// A fresh token for this connection, sent before the current one expires.
    #[serde(rename = "auth:refresh")]
    AuthRefresh {
        /// Echoed in the reply.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<RequestId>,
        /// The new JWT; same `sub` and client type as the current one.
        token: String,
    },
    /// Subscribe to channel patterns.
    #[serde(rename = "subscribe")]
    Subscribe {
        /// Echoed in the reply.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<RequestId>,
        /// Patterns, e.g. `session:*`.
        channels: Vec<String>,
        /// Recovery: for concrete channels seen before (on a history
        /// channel), the last position seen; missed events are replayed.
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        since: BTreeMap<String, StreamPosition>,
    },
    /// Drop subscriptions.
    #[serde(rename = "unsubscribe")]
    Unsubscribe {
        /// Echoed in the reply.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<RequestId>,
        /// Patterns exactly as subscribed.
        channels: Vec<String>,
    },
    /// Publish an event to a channel (hub clients by default).
    #[serde(rename = "publish")]
    Publish {
        /// When present, the hub acknowledges with `published`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<RequestId>,
        /// A channel name (no wildcards).
        channel: String,
        /// Any JSON value.
        data: Value,
    },
    /// Application-level ping; answered with `pong`.
    #[serde(rename = "ping")]
    Ping {
        /// Echoed in the reply.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<RequestId>,
    },
    /// The kept events of a history channel (subscribe permission needed).
    #[serde(rename = "history")]
    History {
        /// Echoed in the reply.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<RequestId>,
        /// A channel name (no wildcards).
        channel: String,
        /// Only events after this position; absent: the newest `limit`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        since: Option<StreamPosition>,
        /// Most events returned; absent: all kept.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        limit: Option<usize>,
    },
    /// Who is subscribed to a presence channel.
    #[serde(rename = "presence")]
    Presence {
        /// Echoed in the reply.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<RequestId>,
        /// A channel name (no wildcards).
        channel: String,
    },
    /// How many are subscribed to a presence channel.
    #[serde(rename = "presence:stats")]
    PresenceStats {
        /// Echoed in the reply.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<RequestId>,
        /// A channel name (no wildcards).
        channel: String,
    },
    /// A worker offers capabilities and slots (permission `task:receive`).
    #[serde(rename = "register")]
    Register {
        /// Echoed in the reply.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<RequestId>,
        /// Task-type patterns this worker runs, e.g. `summarize:*`.
        capabilities: Vec<String>,
        /// Tasks it runs at once; default 1.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        slots: Option<u32>,
        /// Free-form labels, shown in `GET /api/workers`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        labels: Option<std::collections::BTreeMap<String, String>>,
    },
    /// A worker stops taking new tasks; running ones finish.
    #[serde(rename = "drain")]
    Drain {
        /// Echoed in the reply.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<RequestId>,
    },
    /// Submit a task (permission `task:submit`).
    #[serde(rename = "task:submit")]
    TaskSubmit {
        /// Echoed in `task:accepted`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<RequestId>,
        /// The task.
        task: TaskSpec,
    },
    /// A worker reports progress; also extends the lease.
    #[serde(rename = "task:progress")]
    TaskProgress {
        /// When present, acknowledged with `task:ack`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<RequestId>,
        /// The task.
        task_id: String,
        /// 0–100.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        progress: Option<u8>,
        /// Free text.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        message: Option<String>,
    },
    /// A worker finished a task.
    #[serde(rename = "task:complete")]
    TaskComplete {
        /// When present, acknowledged with `task:ack`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<RequestId>,
        /// The task.
        task_id: String,
        /// Any JSON value.
        #[serde(default)]
        result: Value,
    },
    /// A worker failed a task.
    #[serde(rename = "task:error")]
    TaskError {
        /// When present, acknowledged with `task:ack`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<RequestId>,
        /// The task.
        task_id: String,
        /// What went wrong (any JSON value).
        error: Value,
        /// Whether another attempt may succeed.
        #[serde(default)]
        retryable: bool,
    },
    /// The submitter (or an admin) cancels a task.
    #[serde(rename = "task:cancel")]
    TaskCancel {
        /// When present, acknowledged with `task:ack`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<RequestId>,
        /// The task.
        task_id: String,
    },
    /// Offer to answer calls of these method patterns (permission `serve`).
    #[serde(rename = "serve")]
    Serve {
        /// Echoed in `serving`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<RequestId>,
        /// Method patterns in the channel grammar, e.g. `node.*`.
        methods: Vec<String>,
        /// Calls this connection runs at once; default 16.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        concurrency: Option<u32>,
    },
    /// Stop answering calls of these patterns; calls in flight still finish.
    #[serde(rename = "unserve")]
    Unserve {
        /// Echoed in `unserving`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<RequestId>,
        /// Patterns exactly as served.
        methods: Vec<String>,
    },
    /// Call a method (permission `call`); answered with `result` or `error`.
    #[serde(rename = "call")]
    Call {
        /// Echoed in the answer; also names the call in `call:cancel`.
        id: RequestId,
        /// A method name (no wildcards), e.g. `node.execute`.
        method: String,
        /// Any JSON value, handed to the server as is.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        params: Option<Payload>,
        /// How long to wait; default `calls.default_timeout`, capped at
        /// `calls.max_timeout`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        timeout_ms: Option<u64>,
    },
    /// A server answers a `call:request`: `result`, or `error`.
    #[serde(rename = "call:reply")]
    CallReply {
        /// The `callId` of the request.
        call_id: String,
        /// The result (any JSON value); ignored when `error` is present.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        #[schemars(with = "Value")]
        result: Option<Payload>,
        /// The call failed; the caller gets `call_failed` with this under `detail`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<CallError>,
    },
    /// The caller gives up a call; its server gets `call:cancelled`.
    #[serde(rename = "call:cancel")]
    CallCancel {
        /// The `id` of the `call`.
        id: RequestId,
    },
    /// A peer hub opens a federation link (permission `federate`); the
    /// connection then speaks [`federation::HubMessage`].
    #[serde(rename = "hub:hello")]
    HubHello(federation::HubHello),
}

impl ClientMessage {
    /// The request id, if the client set one.
    pub fn id(&self) -> Option<&RequestId> {
        match self {
            ClientMessage::Auth { id, .. }
            | ClientMessage::AuthRefresh { id, .. }
            | ClientMessage::Subscribe { id, .. }
            | ClientMessage::Unsubscribe { id, .. }
            | ClientMessage::Publish { id, .. }
            | ClientMessage::Ping { id }
            | ClientMessage::History { id, .. }
            | ClientMessage::Presence { id, .. }
            | ClientMessage::PresenceStats { id, .. }
            | ClientMessage::Register { id, .. }
            | ClientMessage::Drain { id }
            | ClientMessage::TaskSubmit { id, .. }
            | ClientMessage::TaskProgress { id, .. }
            | ClientMessage::TaskComplete { id, .. }
            | ClientMessage::TaskError { id, .. }
            | ClientMessage::TaskCancel { id, .. }
            | ClientMessage::Serve { id, .. }
            | ClientMessage::Unserve { id, .. } => id.as_ref(),
            ClientMessage::Call { id, .. } | ClientMessage::CallCancel { id } => Some(id),
            ClientMessage::CallReply { .. } => None,
            ClientMessage::HubHello(hello) => hello.id.as_ref(),
        }
    }
}

/// A message from the hub to a client.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", rename_all_fields = "camelCase")]
pub enum ServerMessage {
    /// The token was accepted.
    #[serde(rename = "auth:success")]
    AuthSuccess {
        /// The id of the `auth` request, if any.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<RequestId>,
        /// This connection's id, unique within the hub process.
        client_id: String,
        /// The token's client type.
        client_type: ClientType,
        /// The token's subject.
        sub: String,
        /// What this connection may do (type defaults narrowed by the token).
        permissions: Vec<Permission>,
        /// Patterns this connection may subscribe to.
        subscribe_channels: Vec<String>,
        /// Channels this connection may publish to (patterns).
        publish_channels: Vec<String>,
        /// When the token expires, in ms since the Unix epoch.
        expires_at: u64,
    },
    /// The token was refused. On a new connection, a close (4001) follows.
    #[serde(rename = "auth:failed")]
    AuthFailed {
        /// The id of the `auth` request, if any.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<RequestId>,
        /// Machine-readable reason.
        reason: AuthError,
        /// Human-readable explanation.
        message: String,
    },
    /// `auth:refresh` was accepted.
    #[serde(rename = "auth:refreshed")]
    AuthRefreshed {
        /// The id of the request, if any.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<RequestId>,
        /// The new expiry, in ms since the Unix epoch.
        expires_at: u64,
    },
    /// The patterns of a `subscribe` that were accepted.
    #[serde(rename = "subscribed")]
    Subscribed {
        /// The id of the request, if any.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<RequestId>,
        /// Accepted patterns (including ones already held).
        channels: Vec<String>,
        /// For each `since` channel of the request matched by an accepted
        /// pattern: whether the missed events follow (true) or the client
        /// must re-fetch (false).
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        recovered: BTreeMap<String, bool>,
        /// Where live delivery starts, for each history channel subscribed
        /// by name or named in `since`.
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        positions: BTreeMap<String, StreamPosition>,
    },
    /// The patterns of an `unsubscribe` that were held and are now dropped.
    #[serde(rename = "unsubscribed")]
    Unsubscribed {
        /// The id of the request, if any.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<RequestId>,
        /// Dropped patterns.
        channels: Vec<String>,
    },
    /// Acknowledges a `publish` that carried an `id`.
    #[serde(rename = "published")]
    Published {
        /// The id of the request.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<RequestId>,
        /// The channel published to.
        channel: String,
        /// The event's id, as subscribers see it.
        event_id: String,
        /// How many connections it was queued for.
        delivered: usize,
    },
    /// An event on a channel this connection subscribed to.
    #[serde(rename = "event")]
    Event {
        /// The concrete channel.
        channel: String,
        /// The published JSON value.
        data: Value,
        /// Event id, unique within the hub (opaque string).
        id: String,
        /// Publish time, ms since the Unix epoch.
        ts: u64,
        /// The event's offset in its channel (history channels only).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        offset: Option<u64>,
        /// The channel's epoch (history channels only).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        epoch: Option<String>,
    },
    /// Answer to `ping`.
    #[serde(rename = "pong")]
    Pong {
        /// The id of the `ping`, if any.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<RequestId>,
    },
    /// Answer to `history`.
    #[serde(rename = "history")]
    History {
        /// The id of the request, if any.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<RequestId>,
        /// The channel.
        channel: String,
        /// The channel's current epoch.
        epoch: String,
        /// The offset of the channel's newest event (0: none yet).
        offset: u64,
        /// With `since`: whether `events` continue it without a gap.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        recovered: Option<bool>,
        /// Events, oldest first.
        events: Vec<HistoryEvent>,
    },
    /// Answer to `presence`.
    #[serde(rename = "presence")]
    Presence {
        /// The id of the request, if any.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<RequestId>,
        /// The channel.
        channel: String,
        /// One entry per subscribed connection, oldest connection first.
        clients: Vec<PresenceInfo>,
    },
    /// Answer to `presence:stats`.
    #[serde(rename = "presence:stats")]
    PresenceStats {
        /// The id of the request, if any.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<RequestId>,
        /// The channel.
        channel: String,
        /// Connections subscribed.
        clients: usize,
        /// Distinct `sub`s among them.
        users: usize,
    },
    /// A connection subscribed to a `join_leave` channel.
    #[serde(rename = "join")]
    Join {
        /// The channel.
        channel: String,
        /// Who joined.
        info: PresenceInfo,
    },
    /// A connection left a `join_leave` channel (unsubscribed or gone).
    #[serde(rename = "leave")]
    Leave {
        /// The channel.
        channel: String,
        /// Who left.
        info: PresenceInfo,
    },
    /// A refused or malformed request. The connection stays open.
    #[serde(rename = "error")]
    Error {
        /// The id of the request it answers, when it could be read.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<RequestId>,
        /// Machine-readable code.
        code: ErrorCode,
        /// Human-readable explanation.
        message: String,
        /// The channel or pattern the error is about, for per-channel errors.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        channel: Option<String>,
        /// More about the error: for `call_failed`, the server's error object.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        detail: Option<Value>,
    },
    /// The worker is registered.
    #[serde(rename = "registered")]
    Registered {
        /// The id of the `register` request, if any.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<RequestId>,
        /// This worker's id (its connection's client id).
        worker_id: String,
        /// Accepted capability patterns.
        capabilities: Vec<String>,
        /// Slots granted.
        slots: u32,
    },
    /// The worker takes no new tasks.
    #[serde(rename = "draining")]
    Draining {
        /// The id of the `drain` request, if any.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<RequestId>,
        /// Tasks it still runs.
        running: usize,
    },
    /// The task is accepted and durable.
    #[serde(rename = "task:accepted")]
    TaskAccepted {
        /// The id of the `task:submit` request, if any.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<RequestId>,
        /// The task's id.
        task_id: String,
        /// True when an unfinished task with the same dedup key exists and
        /// its id is returned instead of a new task.
        deduplicated: bool,
    },
    /// A task for this worker.
    #[serde(rename = "task:assign")]
    TaskAssign {
        /// What to run.
        task: Assignment,
    },
    /// This worker must stop a task: it was cancelled or its lease expired.
    /// Anything it sends about the task afterwards is refused (`not_assigned`).
    #[serde(rename = "task:cancel")]
    TaskCancel {
        /// The task.
        task_id: String,
        /// `cancelled` or `lease_expired`.
        reason: String,
    },
    /// The final state of a task this connection submitted.
    #[serde(rename = "task:result")]
    TaskResult {
        /// The task record (state completed, dead or cancelled).
        task: TaskView,
    },
    /// Acknowledges `task:progress`, `task:complete`, `task:error` or
    /// `task:cancel` that carried an `id`.
    #[serde(rename = "task:ack")]
    TaskAck {
        /// The id of the request.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<RequestId>,
        /// The task.
        task_id: String,
        /// Its state after the request.
        state: TaskState,
    },
    /// The patterns of a `serve` now served.
    #[serde(rename = "serving")]
    Serving {
        /// The id of the request, if any.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<RequestId>,
        /// Every pattern this connection now serves.
        methods: Vec<String>,
    },
    /// The patterns of an `unserve` that were served and are now dropped.
    #[serde(rename = "unserving")]
    Unserving {
        /// The id of the request, if any.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<RequestId>,
        /// Dropped patterns.
        methods: Vec<String>,
    },
    /// The answer to a `call`.
    #[serde(rename = "result")]
    Result {
        /// The id of the `call`.
        id: RequestId,
        /// What the server replied (any JSON value).
        result: Payload,
    },
    /// A call for this serving connection to answer with `call:reply`.
    #[serde(rename = "call:request")]
    CallRequest {
        /// Names the call in `call:reply`; unique within the hub.
        call_id: String,
        /// The method called (a name the connection serves).
        method: String,
        /// The caller's params (`null` when it sent none).
        params: Payload,
        /// Who called.
        caller: CallerInfo,
        /// When the caller stops waiting, in ms since the Unix epoch.
        deadline: u64,
    },
    /// Stop working on a call: its caller cancelled, left, or its deadline
    /// passed. A reply sent anyway is dropped.
    #[serde(rename = "call:cancelled")]
    CallCancelled {
        /// The call.
        call_id: String,
    },
}

impl ServerMessage {
    /// Serializes to a JSON text frame.
    pub fn to_json(&self) -> String {
        // Serializing these types cannot fail: every map key is a string.
        serde_json::to_string(self).unwrap_or_else(|e| {
            tracing::error!(error = %e, "failed to serialize a server message");
            String::from(r#"{"type":"error","code":"bad_request","message":"internal"}"#)
        })
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Reads the `id` of a frame that failed to parse as a [`ClientMessage`],
/// so even a bad request's error can be matched to it.
pub fn salvage_id(text: &str) -> Option<RequestId> {
    salvage(text).1
}

/// The `type` and `id` of a frame that did not parse as a whole (either
/// may be missing).
pub fn salvage(text: &str) -> (Option<String>, Option<RequestId>) {
    #[derive(Deserialize)]
    struct Head {
        #[serde(rename = "type")]
        kind: Option<String>,
        id: Option<RequestId>,
    }
    match serde_json::from_str::<Head>(text) {
        Ok(head) => (head.kind, head.id),
        Err(_) => (None, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_messages_round_trip() {
        let text = r#"{"type":"subscribe","id":1,"channels":["session:*"]}"#;
        let msg: ClientMessage = serde_json::from_str(text).expect("parses");
        assert_eq!(
            msg,
            ClientMessage::Subscribe {
                id: Some(RequestId::Int(1)),
                channels: vec!["session:*".into()],
                since: BTreeMap::new(),
            }
        );
        let back: Value = serde_json::to_value(&msg).expect("serializes");
        assert_eq!(back, serde_json::from_str::<Value>(text).expect("json"));
    }

    #[test]
    fn subscribe_since_and_subscribed_recovered_round_trip() {
        let text = r#"{"type":"subscribe","channels":["session:42"],"since":{"session:42":{"offset":10,"epoch":"ab12"}}}"#;
        let msg: ClientMessage = serde_json::from_str(text).expect("parses");
        let ClientMessage::Subscribe { since, .. } = &msg else {
            panic!("{msg:?}")
        };
        assert_eq!(since["session:42"].offset, 10);
        let back: Value = serde_json::to_value(&msg).expect("serializes");
        assert_eq!(back, serde_json::from_str::<Value>(text).expect("json"));
        let reply = ServerMessage::Subscribed {
            id: None,
            channels: vec!["session:42".into()],
            recovered: BTreeMap::from([("session:42".into(), true)]),
            positions: BTreeMap::new(),
        };
        assert_eq!(
            reply.to_json(),
            r#"{"type":"subscribed","channels":["session:42"],"recovered":{"session:42":true}}"#
        );
    }

    #[test]
    fn request_ids_are_integers_or_strings() {
        let id = |json: &str| serde_json::from_str::<RequestId>(json).map_err(|e| e.to_string());
        assert_eq!(id("7"), Ok(RequestId::Int(7)));
        assert_eq!(id("-7"), Ok(RequestId::Int(-7)));
        assert_eq!(id(r#""sub-1""#), Ok(RequestId::Str("sub-1".into())));
        for bad in ["1.5", "true", "null", "[1]", "18446744073709551615"] {
            assert!(id(bad).is_err(), "{bad}");
        }
        // Inside a message (a tagged enum buffers its fields) too.
        let msg: ClientMessage = serde_json::from_str(r#"{"type":"ping","id":"p"}"#).unwrap();
        assert_eq!(msg.id(), Some(&RequestId::Str("p".into())));
        let msg: ClientMessage = serde_json::from_str(r#"{"type":"ping","id":3}"#).unwrap();
        assert_eq!(msg.id(), Some(&RequestId::Int(3)));
        assert!(serde_json::from_str::<ClientMessage>(r#"{"type":"ping","id":2.5}"#).is_err());
    }

    #[test]
    fn unknown_type_is_an_error() {
        assert!(serde_json::from_str::<ClientMessage>(r#"{"type":"nope"}"#).is_err());
        assert!(serde_json::from_str::<ClientMessage>(r#"{"type":"publish"}"#).is_err());
    }

    #[test]
    fn salvage_id_reads_ids_of_bad_requests() {
        assert_eq!(
            salvage_id(r#"{"type":"nope","id":"x"}"#),
            Some(RequestId::Str("x".into()))
        );
        assert_eq!(salvage_id("not json"), None);
    }

    #[test]
    fn server_message_uses_camel_case() {
        let msg = ServerMessage::Published {
            id: None,
            channel: "a".into(),
            event_id: "e".into(),
            delivered: 0,
        };
        let json = msg.to_json();
        assert!(json.contains(r#""eventId":"e""#), "{json}");
        assert!(json.contains(r#""type":"published""#), "{json}");
    }
}
