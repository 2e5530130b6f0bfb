//! What the client hands back: events, request results, connection state
//! and errors. Wire types come from [`crate::protocol`]; these are the
//! caller-facing shapes built from them.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::auth::{ClientType, Permission};
use crate::error::{AuthError, ErrorCode};
use crate::protocol::ServerMessage;
use crate::protocol::calls::CallError;
use crate::protocol::tasks::Assignment;

/// An event on a channel the client subscribed to.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// The concrete channel it was published to (not the pattern).
    pub channel: String,
    /// The published value.
    pub data: Value,
    /// The hub's id for the event; the same as [`Published::event_id`].
    pub id: String,
    /// Publish time, ms since the Unix epoch.
    pub ts: u64,
    /// Position in its channel, for channels with history (see
    /// `proto-docs/history.md`); `None` elsewhere.
    pub offset: Option<u64>,
    /// The channel's history epoch, with `offset`.
    pub epoch: Option<String>,
}

/// The outcome of [`Client::subscribe`](super::Client::subscribe): a
/// subscribe request is answered per pattern, so some may be refused while
/// others are accepted.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Subscribed {
    /// Patterns now held; they are resubscribed after a reconnect.
    pub accepted: Vec<String>,
    /// Patterns the hub refused, and why.
    pub rejected: Vec<Rejected>,
}

/// One pattern of a request that the hub refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    /// The pattern as sent.
    pub channel: String,
    /// Why, e.g. [`ErrorCode::InvalidChannel`] or [`ErrorCode::Forbidden`].
    pub code: ErrorCode,
    /// The hub's explanation.
    pub message: String,
}

/// The hub's acknowledgement of [`Client::publish`](super::Client::publish).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    /// The channel published to.
    pub channel: String,
    /// The event's id, as subscribers see it in [`Event::id`].
    pub event_id: String,
    /// How many connections it was queued for (0 means nobody listened).
    pub delivered: usize,
}

/// What a worker offers the hub: [`Client::register_with`](super::Client::register_with).
/// Kept by the client and sent again after every reconnect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registration {
    /// Task-type patterns this worker runs, in channel grammar
    /// (`embedding:local`, `summarize:*`, `demo:**`).
    pub capabilities: Vec<String>,
    /// How many tasks it runs at once (at least 1; the hub caps it at
    /// `tasks.max_slots` and the token's `max_slots`).
    pub slots: u32,
    /// Free-form labels, shown in `GET /api/workers`.
    pub labels: BTreeMap<String, String>,
}

impl Registration {
    /// A registration with no labels.
    pub fn new(capabilities: &[&str], slots: u32) -> Self {
        Registration {
            capabilities: capabilities.iter().map(|c| c.to_string()).collect(),
            slots,
            labels: BTreeMap::new(),
        }
    }

    /// Adds a label.
    pub fn label(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.labels.insert(key.into(), value.into());
        self
    }
}

/// What a registered worker is told, in order, on
/// [`Assignments`](super::Assignments).
#[derive(Debug, Clone, PartialEq)]
pub enum Work {
    /// Run this task, then report [`complete`](super::Client::complete) or
    /// [`fail`](super::Client::fail); [`progress`](super::Client::progress)
    /// extends the lease. Delivery is at least once: the same task id may
    /// come again (a later attempt) if an earlier delivery was lost.
    Assigned(Assignment),
    /// Stop this task: its submitter or an admin cancelled it
    /// (`reason` `cancelled`) or its lease ran out (`lease_expired`).
    /// Reports about it are refused with `not_assigned`.
    Cancelled {
        /// The task.
        task_id: String,
        /// `cancelled` or `lease_expired`.
        reason: String,
    },
    /// The connection dropped. The hub requeues every task a worker held
    /// when its connection ends (the delivery counted as an attempt), so
    /// stop them all and forget them: reports about them are refused with
    /// `not_assigned`, and another worker may already run them. The client
    /// registers again when it reconnects, unless it was draining.
    Lost,
    /// After a reconnect the client registered again with the same
    /// [`Registration`]. The worker id is new (it is the connection's id).
    Reregistered {
        /// The new worker id.
        worker_id: String,
    },
    /// After a reconnect the hub refused the registration (for example a
    /// fresh token caps capabilities or slots lower). No more assignments
    /// arrive until [`register`](super::Client::register) succeeds again.
    RegistrationRefused {
        /// The hub's refusal.
        error: ClientError,
    },
}

/// What the hub said about this client when it last accepted its token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthInfo {
    /// This connection's id; changes on every reconnect.
    pub client_id: String,
    /// The token's client type.
    pub client_type: ClientType,
    /// The token's subject.
    pub sub: String,
    /// What this connection may do.
    pub permissions: Vec<Permission>,
    /// Patterns it may subscribe to.
    pub subscribe_channels: Vec<String>,
    /// Channels it may publish to (patterns).
    pub publish_channels: Vec<String>,
    /// When the token expires, ms since the Unix epoch.
    pub expires_at: u64,
}

impl AuthInfo {
    /// Reads an `auth:success` message; `None` for any other message.
    pub(crate) fn from_message(msg: ServerMessage) -> Option<AuthInfo> {
        match msg {
            ServerMessage::AuthSuccess {
                client_id,
                client_type,
                sub,
                permissions,
                subscribe_channels,
                publish_channels,
                expires_at,
                ..
            } => Some(AuthInfo {
                client_id,
                client_type,
                sub,
                permissions,
                subscribe_channels,
                publish_channels,
                expires_at,
            }),
            _ => None,
        }
    }
}

/// Where the connection is in its life; watch it with
/// [`Client::state`](super::Client::state).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnectionState {
    /// Dialling, authenticating and resubscribing.
    Connecting,
    /// Authenticated and resubscribed; requests go straight out.
    Connected {
        /// The hub's id for this connection.
        client_id: String,
    },
    /// The connection dropped; waiting out the backoff before attempt
    /// `attempt` (1 for the first attempt after a drop).
    Reconnecting {
        /// Which attempt comes next, counting from 1.
        attempt: u32,
    },
    /// The client has stopped for good; [`Events`](super::Events) has ended.
    Closed {
        /// Why it stopped.
        reason: ClosedReason,
    },
}

/// Why a client stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClosedReason {
    /// [`Client::close`](super::Client::close) was called, or every
    /// [`Client`](super::Client) handle and the [`Events`](super::Events)
    /// were dropped.
    Requested,
    /// On a reconnect the hub refused a token that cannot change
    /// ([`TokenSource::Static`](super::TokenSource::Static)).
    AuthFailed {
        /// The hub's reason.
        reason: AuthError,
        /// The hub's explanation.
        message: String,
    },
    /// The connection dropped and [`ClientOptions::reconnect`](super::ClientOptions::reconnect)
    /// is off.
    ConnectionLost {
        /// The close code the hub sent, if it sent one (1012 restart,
        /// 4008 slow consumer, 4011 ping timeout, …).
        code: Option<u16>,
        /// The close frame's text, or the I/O error.
        reason: String,
    },
}

/// Why a client operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    /// The hub could not be reached, or the WebSocket handshake failed.
    #[error("could not connect to the hub: {0}")]
    Connect(String),
    /// The token provider returned an error.
    #[error("the token provider failed: {0}")]
    Token(String),
    /// The hub refused the token.
    #[error("authentication failed ({}): {message}", reason.code())]
    AuthFailed {
        /// Machine-readable reason.
        reason: AuthError,
        /// The hub's explanation.
        message: String,
    },
    /// The hub refused the request; the connection stays open.
    #[error("the hub refused the request ({code:?}): {message}")]
    Refused {
        /// Machine-readable code.
        code: ErrorCode,
        /// The hub's explanation.
        message: String,
    },
    /// The server of a [`call`](super::Client::call) answered with an
    /// error (the hub's `call_failed`): the server's own code, message
    /// and data. The hub's other refusals of a call (`no_server`,
    /// `timeout`, `server_gone`, `busy`, `forbidden`) are
    /// [`Refused`](Self::Refused) with that code.
    #[error("the server answered with an error ({}): {}", .0.code, .0.message)]
    CallFailed(CallError),
    /// No answer within [`ClientOptions::request_timeout`](super::ClientOptions::request_timeout)
    /// (for a call: no answer, not even the hub's `timeout`, shortly after
    /// its deadline).
    #[error("timed out waiting for the hub")]
    Timeout,
    /// The connection dropped while the request was in flight, or the
    /// client has been closed.
    #[error("the connection is closed")]
    Closed,
    /// The hub sent something this client does not understand.
    #[error("protocol error: {0}")]
    Protocol(String),
}
