//! The bookkeeping of calls: who serves which method, the calls in flight,
//! the per-method wait queues. Plain synchronous state behind the
//! [`Calls`](super::Calls) mutex; every step records what it wants sent in
//! an [`Outbox`], delivered once the lock is released.
//!
//! Servers and callers are endpoints ([`ServerPort`], [`CallerPort`])
//! known by a number: a local connection's id, or an id the hub gave a
//! cluster node, a peer hub or an HTTP request. The routing does not care
//! which; only [`Call::relayed`] keeps a call that came from another hub
//! from being sent on to a third.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt::Write;
use std::sync::Arc;
use std::time::Instant;

use foldhash::HashMap;

use super::stats::MethodStats;
use super::{CallRequest, CallerPort, ServerPort};
use crate::channels::{ChannelName, Pattern};
use crate::error::ErrorCode;
use crate::protocol::RequestId;
use crate::protocol::calls::{CallOutcome, CallerInfo, Payload};

/// A call's number in this hub; its `callId` is `c` and the number in hex.
pub(super) type CallId = u64;

/// The `callId` of call `id`.
pub(super) fn call_id_text(id: CallId) -> String {
    let mut text = String::with_capacity(17);
    text.push('c');
    // Writing to a String cannot fail.
    let _ = write!(text, "{id:x}");
    text
}

/// The call a `callId` names, if it is one this hub gave.
pub(super) fn parse_call_id(text: &str) -> Option<CallId> {
    let hex = text.strip_prefix('c')?;
    if hex.is_empty() || hex.len() > 16 || hex.starts_with('+') {
        return None;
    }
    CallId::from_str_radix(hex, 16).ok()
}

/// Where a server is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Place {
    /// A connection of this hub.
    Local,
    /// Another node of this cluster (all of its servers as one).
    Node,
    /// A federated peer hub (all of its servers as one): used only for
    /// methods no local or cluster server serves.
    Peer,
}

/// One endpoint that serves methods.
pub(super) struct Server {
    /// Where its requests and cancels go.
    pub(super) port: Arc<dyn ServerPort>,
    /// Method patterns it serves.
    pub(super) patterns: Vec<Pattern>,
    /// Of those, only methods matching one of these may be sent to it (a
    /// peer's `call_import`); `None`: all.
    pub(super) allow: Option<Vec<Pattern>>,
    /// Calls it runs at once.
    pub(super) concurrency: u32,
    /// Calls it runs now.
    pub(super) in_flight: u32,
    /// Where it is.
    pub(super) place: Place,
}

impl Server {
    pub(super) fn serves(&self, method: &ChannelName) -> bool {
        self.patterns.iter().any(|p| p.matches(method))
            && self
                .allow
                .as_ref()
                .is_none_or(|allow| allow.iter().any(|p| p.matches(method)))
    }

    fn has_room(&self) -> bool {
        self.in_flight < self.concurrency
    }

    /// Whether it may run a call of `method`: a relayed call (from another
    /// hub) runs on local servers only.
    fn eligible(&self, method: &ChannelName, relayed: bool) -> bool {
        (!relayed || self.place == Place::Local) && self.serves(method)
    }
}

/// A call from `call` until it ends.
pub(super) struct Call {
    /// The caller's endpoint id.
    pub(super) caller_id: u64,
    /// Where the answer goes.
    pub(super) caller: Arc<dyn CallerPort>,
    /// The caller's `id`, echoed in the answer.
    pub(super) request_id: RequestId,
    /// The method called.
    pub(super) method: ChannelName,
    /// What the server is told (taken when it starts).
    pub(super) params: Payload,
    /// Who called, as the server is told.
    pub(super) info: CallerInfo,
    /// Deadline, ms since the Unix epoch.
    pub(super) deadline: u64,
    /// The server running it; `None` while it waits in its method's queue.
    pub(super) server: Option<u64>,
    /// When it times out: its entry in [`State::deadlines`].
    pub(super) due: Instant,
    /// Came from another hub: served here only, and counted there.
    pub(super) relayed: bool,
    /// When it was made, for the latency figures.
    pub(super) started: Instant,
}

/// Something to send once the lock is released.
pub(super) enum Send {
    /// A call for a server.
    Request(Arc<dyn ServerPort>, CallId, CallRequest),
    /// A server's call ended before it answered.
    Cancelled(Arc<dyn ServerPort>, CallId),
    /// A caller's answer.
    Answer(Arc<dyn CallerPort>, RequestId, CallOutcome),
}

/// What to send once the lock is released.
pub(super) type Outbox = Vec<Send>;

/// Delivers an outbox.
pub(super) fn send(out: Outbox) {
    for item in out {
        match item {
            Send::Request(port, call_id, request) => port.request(&call_id_text(call_id), request),
            Send::Cancelled(port, call_id) => port.cancelled(&call_id_text(call_id)),
            Send::Answer(port, request_id, outcome) => port.answer(request_id, outcome),
        }
    }
}

/// Servers, calls, wait queues and the per-method figures.
#[derive(Default)]
pub(super) struct State {
    /// Serving endpoints by id (in order: the round-robin walks them so).
    pub(super) servers: BTreeMap<u64, Server>,
    /// Calls by call id.
    pub(super) calls: HashMap<CallId, Call>,
    /// Call ids by (caller endpoint, caller's request id), for
    /// `call:cancel` and duplicate ids.
    pub(super) by_caller: HashMap<(u64, RequestId), CallId>,
    /// Waiting call ids per method name, oldest first.
    pub(super) waiting: HashMap<String, VecDeque<CallId>>,
    /// Source of call ids.
    pub(super) next_call: CallId,
    /// Round-robin among equally loaded servers.
    rr: usize,
    /// Figures per method name.
    pub(super) stats: MethodStats,
    /// Every call's deadline, soonest first: one timer for all of them.
    pub(super) deadlines: BTreeSet<(Instant, CallId)>,
    /// When the deadline timer wakes next; `None` while it waits for a
    /// call. A call due before it must wake it.
    pub(super) armed: Option<Instant>,
    /// The candidates of [`pick`](Self::pick), kept to reuse its space.
    candidates: Vec<(u64, u32, Place)>,
}

impl State {
    /// Whether any server could take a call of `method` (relayed or not).
    pub(super) fn served(&self, method: &ChannelName, relayed: bool) -> bool {
        self.servers.values().any(|s| s.eligible(method, relayed))
    }

    /// Whether `server` is one a call of `method` may go to: eligible, and
    /// not a peer while a server of this hub or its cluster serves it.
    fn takes(&self, server: &Server, method: &ChannelName, relayed: bool) -> bool {
        server.eligible(method, relayed)
            && (server.place != Place::Peer
                || !self
                    .servers
                    .values()
                    .any(|s| s.place != Place::Peer && s.eligible(method, relayed)))
    }

    /// The server for a new call of `method`: one with room, fewest calls
    /// in flight, then round-robin among those (as [`takes`](Self::takes)
    /// would choose, in one pass over the servers).
    pub(super) fn pick(&mut self, method: &ChannelName, relayed: bool) -> Option<u64> {
        let mut candidates = std::mem::take(&mut self.candidates);
        candidates.clear();
        let mut own_server = false;
        for (id, server) in &self.servers {
            if server.eligible(method, relayed) {
                own_server |= server.place != Place::Peer;
                if server.has_room() {
                    candidates.push((*id, server.in_flight, server.place));
                }
            }
        }
        if own_server {
            candidates.retain(|(_, _, place)| *place != Place::Peer);
        }
        let least = candidates.iter().map(|(_, n, _)| *n).min();
        let picked = least.map(|least| {
            candidates.retain(|(_, n, _)| *n == least);
            self.rr = self.rr.wrapping_add(1);
            candidates[self.rr % candidates.len()].0
        });
        self.candidates = candidates;
        picked
    }

    /// Hands call `call_id` to `server_id`.
    pub(super) fn start(&mut self, call_id: CallId, server_id: u64, out: &mut Outbox) {
        let (Some(call), Some(server)) = (
            self.calls.get_mut(&call_id),
            self.servers.get_mut(&server_id),
        ) else {
            return;
        };
        server.in_flight += 1;
        call.server = Some(server_id);
        out.push(Send::Request(
            Arc::clone(&server.port),
            call_id,
            CallRequest {
                method: call.method.as_str().to_string(),
                params: std::mem::take(&mut call.params),
                caller: call.info.clone(),
                deadline: call.deadline,
            },
        ));
    }

    /// Gives `server_id` waiting calls while it has room, the one closest
    /// to its deadline first among the methods it serves.
    pub(super) fn dispatch_to(&mut self, server_id: u64, out: &mut Outbox) {
        loop {
            let Some(server) = self.servers.get(&server_id) else {
                return;
            };
            if !server.has_room() {
                return;
            }
            let next = self
                .waiting
                .values()
                .filter_map(|queue| {
                    queue
                        .iter()
                        .filter_map(|id| self.calls.get(id).map(|call| (*id, call)))
                        .find(|(_, call)| self.takes(server, &call.method, call.relayed))
                })
                .min_by_key(|(_, call)| call.deadline)
                .map(|(id, call)| (id, call.method.as_str().to_string()));
            let Some((call_id, method)) = next else {
                return;
            };
            self.unqueue(&method, call_id);
            self.start(call_id, server_id, out);
        }
    }

    fn unqueue(&mut self, method: &str, call_id: CallId) {
        if let Some(queue) = self.waiting.get_mut(method) {
            queue.retain(|id| *id != call_id);
            if queue.is_empty() {
                self.waiting.remove(method);
            }
        }
    }

    /// Ends a call: answers its caller, frees its server's slot (telling
    /// the server when `tell_server`), and gives the slot to a waiting call.
    pub(super) fn end(
        &mut self,
        call_id: CallId,
        outcome: CallOutcome,
        tell_server: bool,
        out: &mut Outbox,
    ) {
        let Some(call) = self.remove(call_id, tell_server, out) else {
            return;
        };
        if let Some(code) = outcome.code() {
            tracing::debug!(
                method = call.method.as_str(),
                code = code.as_str(),
                call_id,
                caller = call.info.sub,
                "call failed"
            );
        }
        if !call.relayed {
            self.stats
                .ended(call.method.as_str(), outcome.code(), call.started.elapsed());
        }
        out.push(Send::Answer(call.caller, call.request_id, outcome));
    }

    /// Ends a call without answering its caller (it cancelled or left);
    /// its server is told.
    pub(super) fn end_silently(&mut self, call_id: CallId, out: &mut Outbox) {
        if let Some(call) = self.remove(call_id, true, out)
            && !call.relayed
        {
            self.stats
                .cancelled(call.method.as_str(), call.started.elapsed());
        }
    }

    /// Takes a call out of every map, stops its timer, frees its server's
    /// slot and refills it from the wait queues.
    fn remove(&mut self, call_id: CallId, tell_server: bool, out: &mut Outbox) -> Option<Call> {
        let mut call = self.calls.remove(&call_id)?;
        self.deadlines.remove(&(call.due, call_id));
        // The key is built from the call's own id and given back after.
        let key = (
            call.caller_id,
            std::mem::replace(&mut call.request_id, RequestId::Int(0)),
        );
        self.by_caller.remove(&key);
        call.request_id = key.1;
        match call.server {
            None => self.unqueue(call.method.as_str(), call_id),
            Some(server_id) => {
                if let Some(server) = self.servers.get_mut(&server_id) {
                    server.in_flight = server.in_flight.saturating_sub(1);
                    if tell_server {
                        out.push(Send::Cancelled(Arc::clone(&server.port), call_id));
                    }
                    if server.patterns.is_empty() && server.in_flight == 0 {
                        self.servers.remove(&server_id);
                    } else {
                        self.dispatch_to(server_id, out);
                    }
                }
            }
        }
        Some(call)
    }

    /// Server `server_id` is gone (its connection closed, its node died):
    /// its running calls fail with `server_gone`, and it serves nothing.
    pub(super) fn server_gone(&mut self, server_id: u64, out: &mut Outbox) {
        let Some(server) = self.servers.get_mut(&server_id) else {
            return;
        };
        // No more calls go to it; the running ones end below.
        server.patterns.clear();
        let running: Vec<CallId> = self
            .calls
            .iter()
            .filter(|(_, call)| call.server == Some(server_id))
            .map(|(id, _)| *id)
            .collect();
        for call_id in running {
            let outcome = CallOutcome::Error {
                code: ErrorCode::ServerGone,
                message: "the server disconnected before answering".into(),
            };
            self.end(call_id, outcome, false, out);
        }
        self.servers.remove(&server_id);
        self.fail_unserved(out);
    }

    /// Waiting calls whose method nobody serves any more get `no_server`.
    pub(super) fn fail_unserved(&mut self, out: &mut Outbox) {
        let orphans: Vec<CallId> = self
            .waiting
            .values()
            .flatten()
            .filter(|id| {
                self.calls
                    .get(*id)
                    .is_some_and(|call| !self.served(&call.method, call.relayed))
            })
            .copied()
            .collect();
        for call_id in orphans {
            let outcome = CallOutcome::Error {
                code: ErrorCode::NoServer,
                message: "nobody serves this method any more".into(),
            };
            self.end(call_id, outcome, false, out);
        }
    }
}
