//! Wire types of federation: the messages two linked hubs exchange over one
//! WebSocket, and the link records `GET /api/federation` shows.
//!
//! A link starts like any hub connection (`auth` with a hub token the peer
//! issued); the dialing hub then sends `hub:hello` (a [`ClientMessage`]
//! variant, so an ordinary session can recognise it) and the accepting hub
//! answers with its own `hub:hello` or `hub:refused`. From then on both
//! sides speak [`HubMessage`] and the link is symmetric.
//!
//! [`ClientMessage`]: super::ClientMessage

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::calls::{CallOutcome, CallerInfo, Payload};

/// What a hub says about itself when a link opens (`hub:hello`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HubHello {
    /// Stable hub id (kept in the data directory); a link between two
    /// hubs with the same id is refused.
    pub hub_id: String,
    /// The hub's name; the peer looks up its `[[federation.peers]]` entry
    /// by it.
    pub name: String,
    /// chanhub version.
    pub version: String,
    /// Region, for operators and task routing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// Free-form labels.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Largest frame this hub reads; the peer does not send bigger ones.
    pub max_frame_bytes: usize,
    /// A request id, which every client message may carry; ignored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<super::RequestId>,
}

/// Why a hub refused a link (`hub:refused`'s `reason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RefusalReason {
    /// The token lacks the `federate` permission.
    NotPermitted,
    /// The peer's hub id equals the refusing hub's own.
    SameHubId,
    /// No `[[federation.peers]]` entry has the peer's name.
    UnknownPeer,
    /// A link to this peer is already up (the duplicate loses).
    AlreadyLinked,
    /// The hub is shutting down.
    ShuttingDown,
}

impl RefusalReason {
    /// The wire name, e.g. `same_hub_id`.
    pub fn as_str(self) -> &'static str {
        match self {
            RefusalReason::NotPermitted => "not_permitted",
            RefusalReason::SameHubId => "same_hub_id",
            RefusalReason::UnknownPeer => "unknown_peer",
            RefusalReason::AlreadyLinked => "already_linked",
            RefusalReason::ShuttingDown => "shutting_down",
        }
    }
}

/// Which advertised table a `hub:withdraw` is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Table {
    /// `hub:interest` entries.
    Interest,
    /// `hub:capacity` entries.
    Capacity,
}

/// One capability pattern's load at one hub (`hub:capacity`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CapabilityLoad {
    /// A capability pattern as workers registered it, e.g. `embedding:*`.
    pub capability: String,
    /// Live workers registered with it.
    pub workers: u32,
    /// Their free slots (draining workers count none).
    pub free_slots: u32,
}

/// A task handed to a peer (`hub:task`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ForwardedTask {
    /// The task's id at the hub that sent it; every report names it.
    pub id: String,
    /// Task type.
    #[serde(rename = "type")]
    pub kind: String,
    /// The submitted payload.
    #[serde(default)]
    pub payload: Value,
    /// 0–9.
    pub priority: u8,
    /// Lease per attempt, ms.
    pub timeout_ms: u64,
    /// The attempt at the sending hub this delivery is.
    pub attempt: u32,
    /// Ids of the hubs the task has been on, the origin first; it is never
    /// forwarded to one of them again, nor once this list is `max_hops` long.
    pub route: Vec<String>,
    /// `sub` of the original submitter.
    pub submitted_by: String,
}

/// A message between two linked hubs, after the hello exchange.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", rename_all_fields = "camelCase")]
pub enum HubMessage {
    /// The accepting hub's answer to the dialer's `hub:hello`.
    #[serde(rename = "hub:hello")]
    Hello(HubHello),
    /// The link is refused; the connection closes.
    #[serde(rename = "hub:refused")]
    Refused {
        /// Machine-readable reason.
        reason: RefusalReason,
        /// Human-readable explanation.
        message: String,
    },
    /// Keepalive and health report; answered with `hub:pong`.
    #[serde(rename = "hub:ping")]
    Ping {
        /// Sender's clock, ms since the Unix epoch; echoed in the pong.
        ts: u64,
        /// Tasks waiting at the sender (queued or backing off).
        queued: u64,
    },
    /// Answer to `hub:ping`; its round trip is the link's latency.
    #[serde(rename = "hub:pong")]
    Pong {
        /// The ping's `ts`.
        ts: u64,
    },
    /// The channel patterns hub `hub` wants, as seen through the sender.
    /// Replaces the sender's previous entry for that hub.
    #[serde(rename = "hub:interest")]
    Interest {
        /// The hub whose subscribers want these (the origin).
        hub: String,
        /// The origin's version of its interest; older ones are ignored.
        version: u64,
        /// Links between the origin and the receiver, minus one.
        hops: u32,
        /// Patterns, narrowed to what the path lets through.
        patterns: Vec<String>,
    },
    /// Capabilities, live workers and free slots of hub `hub`, as seen
    /// through the sender. Replaces the sender's previous entry.
    #[serde(rename = "hub:capacity")]
    Capacity {
        /// The hub whose workers these are.
        hub: String,
        /// The origin's version of its capacity.
        version: u64,
        /// Links between the origin and the receiver, minus one.
        hops: u32,
        /// Per capability pattern.
        capabilities: Vec<CapabilityLoad>,
    },
    /// The sender no longer reaches hub `hub` (or no longer within the hop
    /// limit): drop its entry in `table`.
    #[serde(rename = "hub:withdraw")]
    Withdraw {
        /// The origin hub.
        hub: String,
        /// Which table.
        table: Table,
    },
    /// An event crossing the link.
    #[serde(rename = "hub:event")]
    Event {
        /// Id of the hub it was published on.
        origin: String,
        /// The origin's event id; with `origin`, the key of duplicate
        /// detection.
        msg_id: String,
        /// Links crossed so far, this one included.
        hops: u32,
        /// The channel.
        channel: String,
        /// The published value.
        data: Value,
        /// Publish time at the origin, ms since the Unix epoch.
        ts: u64,
    },
    /// Run this task for the sender.
    #[serde(rename = "hub:task")]
    Task {
        /// The task.
        task: ForwardedTask,
    },
    /// Progress of a task the receiver forwarded (extends its lease there).
    #[serde(rename = "hub:task:progress")]
    TaskProgress {
        /// The task's id at the receiver.
        task_id: String,
        /// 0–100.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        progress: Option<u8>,
        /// Free text.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        message: Option<String>,
        /// Name of the hub whose worker runs it.
        hub: String,
    },
    /// A forwarded task completed.
    #[serde(rename = "hub:task:complete")]
    TaskComplete {
        /// The task's id at the receiver.
        task_id: String,
        /// The worker's result.
        #[serde(default)]
        result: Value,
        /// Name of the hub whose worker ran it.
        hub: String,
    },
    /// A forwarded task failed (or could not run there).
    #[serde(rename = "hub:task:error")]
    TaskError {
        /// The task's id at the receiver.
        task_id: String,
        /// What went wrong.
        error: Value,
        /// Whether the receiver may try again (its retry rules apply).
        retryable: bool,
        /// Name of the hub where it failed.
        hub: String,
    },
    /// Stop a task the receiver was asked to run.
    #[serde(rename = "hub:task:cancel")]
    TaskCancel {
        /// The task's id at the sender.
        task_id: String,
        /// `cancelled` or `lease_expired`.
        reason: String,
    },
    /// The method patterns the sender's own connections serve, as far as
    /// its `call_export` for the receiver lets them be called (replaces the
    /// previous one; empty: none).
    #[serde(rename = "hub:serving")]
    Serving {
        /// Method patterns.
        methods: Vec<String>,
        /// Calls the sender's servers of them run at once, in all.
        concurrency: u32,
    },
    /// Run this call on one of the receiver's own servers and answer with
    /// `hub:call:answer`.
    #[serde(rename = "hub:call")]
    Call {
        /// The call's id at the sender.
        call_id: String,
        /// The method called.
        method: String,
        /// The caller's params.
        #[serde(default)]
        params: Payload,
        /// Who called (at the sender).
        caller: CallerInfo,
        /// When the caller stops waiting, ms since the Unix epoch.
        deadline: u64,
    },
    /// How a call the receiver sent ended.
    #[serde(rename = "hub:call:answer")]
    CallAnswer {
        /// The call's id at the receiver.
        call_id: String,
        /// The outcome.
        outcome: CallOutcome,
    },
    /// The caller of a call the sender sent is gone: stop it.
    #[serde(rename = "hub:call:cancel")]
    CallCancel {
        /// The call's id at the sender.
        call_id: String,
    },
}

impl HubMessage {
    /// Serializes to a JSON text frame.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|e| {
            tracing::error!(error = %e, "failed to serialize a hub message");
            String::from(r#"{"type":"hub:pong","ts":0}"#)
        })
    }
}

/// The state of a configured or accepted link.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum LinkState {
    /// Dialing, authenticating or exchanging hellos.
    Connecting,
    /// Hellos exchanged; events and tasks flow.
    Up,
    /// Waiting before the next dial attempt.
    Backoff,
    /// Not dialed by this hub (no `url`) and not connected.
    Idle,
}

/// Per-direction counters of a link.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LinkCounters {
    /// Events sent to the peer.
    pub events_out: u64,
    /// Events received and delivered here.
    pub events_in: u64,
    /// Events received and dropped: not imported.
    pub dropped_import: u64,
    /// Events received and dropped: seen before, or past the hop limit.
    pub dropped_duplicate: u64,
    /// Events not sent because they exceed the peer's frame limit.
    pub dropped_oversize: u64,
    /// Tasks handed to the peer.
    pub tasks_out: u64,
    /// Tasks the peer handed to this hub.
    pub tasks_in: u64,
}

/// One link as `GET /api/federation` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LinkView {
    /// The peer's name (its `[[federation.peers]]` entry).
    pub peer: String,
    /// The peer's hub id, once a hello was exchanged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_id: Option<String>,
    /// Where the link stands.
    pub state: LinkState,
    /// `dialed` (this hub connected) or `accepted`, while up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub direction: Option<String>,
    /// When the state last changed, ms since the Unix epoch.
    pub since: u64,
    /// Last measured round trip, ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rtt_ms: Option<f64>,
    /// Failed dial attempts since the link was last up.
    pub attempts: u32,
    /// Why the last attempt failed or the link went down.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// Patterns the peer wants from this hub (after our export list).
    pub interest_in: usize,
    /// Patterns this hub asks of the peer (after our import list).
    pub interest_out: usize,
    /// What the hubs reached over the link offer, per capability.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub capacity: Vec<CapabilityLoad>,
    /// Event and task counters since the process started.
    pub counters: LinkCounters,
}

/// `GET /api/federation`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FederationView {
    /// This hub's id.
    pub hub_id: String,
    /// This hub's name.
    pub name: String,
    /// This hub's region.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// Every configured peer, and accepted links, by peer name.
    pub links: Vec<LinkView>,
}
