//! Request/reply calls: which connection serves which method patterns, and
//! the calls in flight between callers and servers.
//!
//! A call is routed to one server of its method (fewest calls in flight,
//! then round-robin), waits in a bounded per-method queue when every server
//! is at its concurrency, and ends exactly once: with the server's reply,
//! at its deadline (`timeout`), when its server leaves (`server_gone`), or
//! when its caller cancels or leaves. The hub never retries a call
//! (at-most-once). Nothing is stored.
//!
//! The state is one `std` mutex: every operation is a short synchronous
//! step that records the frames it wants sent in an outbox, and the frames
//! go out (as direct frames on the connections' queues) after the lock is
//! released. Each call has one timer task for its deadline, aborted when
//! the call ends first.
//!
//! This is the single-hub registry; a call reaching servers on other
//! cluster nodes or peer hubs is to be added behind the same API.

pub(crate) mod config;

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::extract::ws::Utf8Bytes;
use serde_json::Value;
use tokio::task::AbortHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub(crate) use config::CallsConfig;

use crate::channels::{ChannelName, Pattern};
use crate::error::{ErrorCode, RequestError};
use crate::protocol::calls::{CallError, CallerInfo};
use crate::protocol::{RequestId, ServerMessage, now_ms};
use crate::router::manager::Subscriber;

/// The calls of one hub: the serving registry and the calls in flight.
pub(crate) struct Calls {
    /// Timeouts and the wait queue bound.
    config: CallsConfig,
    /// Servers, calls, wait queues. A std mutex: nothing awaits while it is
    /// held.
    state: Mutex<State>,
    /// Ends the deadline timers at shutdown.
    shutdown: CancellationToken,
    /// Tracks the deadline timers, so shutdown waits for none left behind.
    tracker: TaskTracker,
    /// Replies that came after their call ended (deadline, cancel): dropped.
    late_replies: AtomicU64,
}

/// One serving connection.
struct Server {
    /// Its queue, for `call:request` and `call:cancelled`.
    subscriber: Arc<Subscriber>,
    /// Method patterns it serves.
    patterns: Vec<Pattern>,
    /// Calls it runs at once.
    concurrency: u32,
    /// Calls it runs now.
    in_flight: u32,
}

impl Server {
    fn serves(&self, method: &ChannelName) -> bool {
        self.patterns.iter().any(|p| p.matches(method))
    }

    fn has_room(&self) -> bool {
        self.in_flight < self.concurrency
    }
}

/// A call from `call` until it ends.
struct Call {
    /// The caller's queue, for the answer.
    caller: Arc<Subscriber>,
    /// The caller's `id`, echoed in the answer.
    request_id: RequestId,
    /// The method called.
    method: ChannelName,
    /// What the server is told.
    params: Value,
    /// Who called, as the server is told.
    info: CallerInfo,
    /// Deadline, ms since the Unix epoch.
    deadline: u64,
    /// The server running it; `None` while it waits in its method's queue.
    server: Option<u64>,
    /// The deadline timer, aborted when the call ends first.
    timer: Option<AbortHandle>,
}

#[derive(Default)]
struct State {
    /// Serving connections by connection id.
    servers: HashMap<u64, Server>,
    /// Calls by call id.
    calls: HashMap<String, Call>,
    /// Call ids by (caller connection, caller's request id), for
    /// `call:cancel` and duplicate ids.
    by_caller: HashMap<(u64, RequestId), String>,
    /// Waiting call ids per method name, oldest first.
    waiting: HashMap<String, VecDeque<String>>,
    /// Source of call ids.
    next_call: u64,
    /// Round-robin among equally loaded servers.
    rr: usize,
}

/// Frames to send once the lock is released.
type Outbox = Vec<(Arc<Subscriber>, ServerMessage)>;

/// How a call ended, for its caller.
enum Outcome {
    Result(Value),
    Failed(CallError),
    Error(ErrorCode, String),
}

impl Calls {
    /// An empty registry; timers end when `shutdown` is cancelled.
    pub(crate) fn new(
        config: CallsConfig,
        shutdown: CancellationToken,
        tracker: TaskTracker,
    ) -> Calls {
        Calls {
            config,
            state: Mutex::new(State::default()),
            shutdown,
            tracker,
            late_replies: AtomicU64::new(0),
        }
    }

    /// Replies that arrived after their call ended and were dropped.
    #[cfg_attr(not(feature = "test-hooks"), allow(dead_code))]
    pub(crate) fn late_replies(&self) -> u64 {
        self.late_replies.load(Ordering::Relaxed)
    }

    /// The settings.
    pub(crate) fn config(&self) -> &CallsConfig {
        &self.config
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves plain maps; keep going.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `subscriber` serves `patterns` too, running `concurrency` calls at
    /// once (the latest `serve` sets it). Returns every pattern it serves.
    pub(crate) fn serve(
        &self,
        subscriber: &Arc<Subscriber>,
        patterns: Vec<Pattern>,
        concurrency: u32,
    ) -> Vec<String> {
        let mut out = Outbox::new();
        let served = {
            let mut state = self.lock();
            let server = state
                .servers
                .entry(subscriber.id)
                .or_insert_with(|| Server {
                    subscriber: Arc::clone(subscriber),
                    patterns: Vec::new(),
                    concurrency,
                    in_flight: 0,
                });
            server.concurrency = concurrency;
            for pattern in patterns {
                if !server.patterns.contains(&pattern) {
                    server.patterns.push(pattern);
                }
            }
            let served = server.patterns.iter().map(|p| p.as_str().into()).collect();
            state.dispatch_to(subscriber.id, &mut out);
            served
        };
        send(out);
        served
    }

    /// `conn` stops serving `patterns` (as written in `serve`); calls it
    /// runs finish. Returns the patterns dropped.
    pub(crate) fn unserve(&self, conn: u64, patterns: &[String]) -> Vec<String> {
        let mut out = Outbox::new();
        let mut dropped = Vec::new();
        {
            let mut state = self.lock();
            if let Some(server) = state.servers.get_mut(&conn) {
                server.patterns.retain(|p| {
                    let drop = patterns.iter().any(|raw| raw == p.as_str());
                    if drop {
                        dropped.push(p.as_str().to_string());
                    }
                    !drop
                });
                if server.patterns.is_empty() && server.in_flight == 0 {
                    state.servers.remove(&conn);
                }
            }
            state.fail_unserved(&mut out);
        }
        send(out);
        dropped
    }

    /// Starts a call (permissions already checked). `Err` answers it at
    /// once (`no_server`, `busy`, a duplicate id); otherwise the answer
    /// comes later on the caller's queue.
    pub(crate) fn call(
        self: &Arc<Self>,
        caller: &Arc<Subscriber>,
        info: CallerInfo,
        request_id: RequestId,
        method: ChannelName,
        params: Value,
        timeout_ms: Option<u64>,
    ) -> Result<(), RequestError> {
        let timeout = timeout_ms
            .map(Duration::from_millis)
            .unwrap_or(self.config.default_timeout)
            .min(self.config.max_timeout);
        let key = (caller.id, request_id.clone());
        let mut out = Outbox::new();
        {
            let mut state = self.lock();
            if state.by_caller.contains_key(&key) {
                return Err(RequestError::new(
                    ErrorCode::BadRequest,
                    "a call with this id is already in flight on this connection",
                ));
            }
            let server = state.pick(&method);
            if server.is_none() {
                if !state.servers.values().any(|s| s.serves(&method)) {
                    return Err(RequestError::new(
                        ErrorCode::NoServer,
                        format!("nobody serves {:?}", method.as_str()),
                    ));
                }
                let queued = state.waiting.get(method.as_str()).map_or(0, VecDeque::len);
                if queued >= self.config.max_waiting {
                    return Err(RequestError::new(
                        ErrorCode::Busy,
                        format!(
                            "every server of {:?} is busy and its wait queue is full",
                            method.as_str()
                        ),
                    ));
                }
            }
            state.next_call += 1;
            let call_id = format!("c{:x}", state.next_call);
            let timer = self.timer(call_id.clone(), timeout);
            state.by_caller.insert(key, call_id.clone());
            state.calls.insert(
                call_id.clone(),
                Call {
                    caller: Arc::clone(caller),
                    request_id,
                    method: method.clone(),
                    params,
                    info,
                    deadline: now_ms() + u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
                    server: None,
                    timer: Some(timer),
                },
            );
            match server {
                Some(server) => state.start(&call_id, server, &mut out),
                None => state
                    .waiting
                    .entry(method.as_str().to_string())
                    .or_default()
                    .push_back(call_id),
            }
        }
        send(out);
        Ok(())
    }

    /// A server's `call:reply`. A reply to a call that ended (or that this
    /// connection does not run) is dropped and counted.
    pub(crate) fn reply(&self, conn: u64, call_id: &str, reply: Result<Value, CallError>) {
        let mut out = Outbox::new();
        {
            let mut state = self.lock();
            let runs = state
                .calls
                .get(call_id)
                .is_some_and(|call| call.server == Some(conn));
            if !runs {
                drop(state);
                self.late_replies.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(call_id, "dropped a reply to a call that has ended");
                return;
            }
            let outcome = match reply {
                Ok(result) => Outcome::Result(result),
                Err(err) => Outcome::Failed(err),
            };
            state.end(call_id, outcome, false, &mut out);
        }
        send(out);
    }

    /// The caller cancels its call `request_id`; the server is told.
    /// Unknown ids (already answered) are ignored.
    pub(crate) fn cancel(&self, conn: u64, request_id: &RequestId) {
        let mut out = Outbox::new();
        {
            let mut state = self.lock();
            if let Some(call_id) = state.by_caller.get(&(conn, request_id.clone())).cloned() {
                state.end_silently(&call_id, &mut out);
            }
        }
        send(out);
    }

    /// A connection closed: its calls as a caller are cancelled, its calls
    /// as a server fail with `server_gone`, and it serves nothing more.
    pub(crate) fn connection_closed(&self, conn: u64) {
        let mut out = Outbox::new();
        {
            let mut state = self.lock();
            let (mut as_caller, as_server): (Vec<_>, Vec<_>) = {
                let mine = |call: &Call| call.caller.id == conn || call.server == Some(conn);
                state
                    .calls
                    .iter()
                    .filter(|(_, call)| mine(call))
                    .map(|(id, call)| (id.clone(), call.caller.id == conn, call.server.is_some()))
                    .partition(|(_, by_caller, _)| *by_caller)
            };
            // Its waiting calls go first, so none takes a slot its running
            // calls free.
            as_caller.sort_by_key(|(_, _, running)| *running);
            for (call_id, _, _) in as_caller {
                state.end_silently(&call_id, &mut out);
            }
            if let Some(server) = state.servers.get_mut(&conn) {
                // No more calls go to it; the running ones end below.
                server.patterns.clear();
            }
            for (call_id, _, _) in as_server {
                let outcome = Outcome::Error(
                    ErrorCode::ServerGone,
                    "the server disconnected before answering".into(),
                );
                state.end(&call_id, outcome, false, &mut out);
            }
            state.servers.remove(&conn);
            state.fail_unserved(&mut out);
        }
        send(out);
    }

    /// The deadline timer of `call_id` fired.
    fn expire(&self, call_id: &str) {
        let mut out = Outbox::new();
        {
            let mut state = self.lock();
            if state.calls.contains_key(call_id) {
                let outcome = Outcome::Error(
                    ErrorCode::Timeout,
                    "the call's deadline passed before its server answered".into(),
                );
                state.end(call_id, outcome, true, &mut out);
            }
        }
        send(out);
    }

    fn timer(self: &Arc<Self>, call_id: String, timeout: Duration) -> AbortHandle {
        let calls = Arc::clone(self);
        let shutdown = self.shutdown.clone();
        self.tracker
            .spawn(async move {
                tokio::select! {
                    () = tokio::time::sleep(timeout) => calls.expire(&call_id),
                    () = shutdown.cancelled() => {}
                }
            })
            .abort_handle()
    }
}

impl State {
    /// The server for a new call of `method`: one with room, fewest calls
    /// in flight, then round-robin among those.
    fn pick(&mut self, method: &ChannelName) -> Option<u64> {
        let mut best: Vec<(u64, u32)> = self
            .servers
            .iter()
            .filter(|(_, s)| s.has_room() && s.serves(method))
            .map(|(id, s)| (*id, s.in_flight))
            .collect();
        let least = best.iter().map(|(_, n)| *n).min()?;
        best.retain(|(_, n)| *n == least);
        best.sort_unstable();
        self.rr = self.rr.wrapping_add(1);
        Some(best[self.rr % best.len()].0)
    }

    /// Hands waiting call `call_id` to `server`.
    fn start(&mut self, call_id: &str, server_id: u64, out: &mut Outbox) {
        let (Some(call), Some(server)) = (
            self.calls.get_mut(call_id),
            self.servers.get_mut(&server_id),
        ) else {
            return;
        };
        server.in_flight += 1;
        call.server = Some(server_id);
        out.push((
            Arc::clone(&server.subscriber),
            ServerMessage::CallRequest {
                call_id: call_id.to_string(),
                method: call.method.as_str().to_string(),
                params: std::mem::take(&mut call.params),
                caller: call.info.clone(),
                deadline: call.deadline,
            },
        ));
    }

    /// Gives `server_id` waiting calls while it has room, oldest first
    /// among the methods it serves.
    fn dispatch_to(&mut self, server_id: u64, out: &mut Outbox) {
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
                .filter_map(VecDeque::front)
                .filter_map(|id| self.calls.get(id).map(|call| (id, call)))
                .filter(|(_, call)| server.serves(&call.method))
                .min_by_key(|(_, call)| call.deadline)
                .map(|(id, call)| (id.clone(), call.method.as_str().to_string()));
            let Some((call_id, method)) = next else {
                return;
            };
            self.unqueue(&method, &call_id);
            self.start(&call_id, server_id, out);
        }
    }

    fn unqueue(&mut self, method: &str, call_id: &str) {
        if let Some(queue) = self.waiting.get_mut(method) {
            queue.retain(|id| id != call_id);
            if queue.is_empty() {
                self.waiting.remove(method);
            }
        }
    }

    /// Ends a call: answers its caller, frees its server's slot (telling
    /// the server when `tell_server`), and gives the slot to a waiting call.
    fn end(&mut self, call_id: &str, outcome: Outcome, tell_server: bool, out: &mut Outbox) {
        let Some(call) = self.remove(call_id, tell_server, out) else {
            return;
        };
        let id = Some(call.request_id.clone());
        let msg = match outcome {
            Outcome::Result(result) => ServerMessage::Result {
                id: call.request_id,
                result,
            },
            Outcome::Failed(err) => {
                tracing::debug!(method = call.method.as_str(), code = %err.code, "call failed");
                ServerMessage::Error {
                    id,
                    code: ErrorCode::CallFailed,
                    message: format!("the server answered with an error: {}", err.message),
                    channel: None,
                    detail: serde_json::to_value(err).ok(),
                }
            }
            Outcome::Error(code, message) => {
                tracing::debug!(method = call.method.as_str(), ?code, "call failed");
                ServerMessage::Error {
                    id,
                    code,
                    message,
                    channel: None,
                    detail: None,
                }
            }
        };
        out.push((call.caller, msg));
    }

    /// Ends a call without answering its caller (it cancelled or left);
    /// its server is told.
    fn end_silently(&mut self, call_id: &str, out: &mut Outbox) {
        self.remove(call_id, true, out);
    }

    /// Takes a call out of every map, stops its timer, frees its server's
    /// slot and refills it from the wait queues.
    fn remove(&mut self, call_id: &str, tell_server: bool, out: &mut Outbox) -> Option<Call> {
        let mut call = self.calls.remove(call_id)?;
        if let Some(timer) = call.timer.take() {
            timer.abort();
        }
        self.by_caller
            .remove(&(call.caller.id, call.request_id.clone()));
        match call.server {
            None => self.unqueue(call.method.as_str(), call_id),
            Some(server_id) => {
                if let Some(server) = self.servers.get_mut(&server_id) {
                    server.in_flight = server.in_flight.saturating_sub(1);
                    if tell_server {
                        out.push((
                            Arc::clone(&server.subscriber),
                            ServerMessage::CallCancelled {
                                call_id: call_id.to_string(),
                            },
                        ));
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

    /// Waiting calls whose method nobody serves any more get `no_server`.
    fn fail_unserved(&mut self, out: &mut Outbox) {
        let orphans: Vec<String> = self
            .waiting
            .values()
            .flatten()
            .filter(|id| {
                self.calls
                    .get(*id)
                    .is_some_and(|call| !self.servers.values().any(|s| s.serves(&call.method)))
            })
            .cloned()
            .collect();
        for call_id in orphans {
            let outcome = Outcome::Error(
                ErrorCode::NoServer,
                "nobody serves this method any more".into(),
            );
            self.end(&call_id, outcome, false, out);
        }
    }
}

fn send(out: Outbox) {
    for (subscriber, msg) in out {
        subscriber.send_direct(Utf8Bytes::from(msg.to_json()));
    }
}
