//! Request/reply calls: which endpoint serves which method patterns, and
//! the calls in flight between callers and servers.
//!
//! A call is routed to one server of its method (fewest calls in flight,
//! then round-robin), waits in a bounded per-method queue when every server
//! is at its concurrency, and ends exactly once: with the server's reply,
//! at its deadline (`timeout`), when its server leaves (`server_gone`), or
//! when its caller cancels or leaves. The hub never retries a call
//! (at-most-once). Nothing is stored.
//!
//! Callers and servers are endpoints: a local connection ([`ports`]), an
//! HTTP request waiting for its answer, or another hub. In a cluster each
//! node runs this same registry over its own connections and sees the other
//! nodes as servers of the methods they advertise in Redis ([`cluster`]);
//! a call a node takes from another node is *relayed* and only ever runs on
//! the node's own servers. One place chooses how far the registry reaches:
//! [`Calls::new`], from the engine.
//!
//! The state is one `std` mutex ([`registry`]): every operation is a short
//! synchronous step that records what it wants sent, sent after the lock is
//! released. The deadlines of all calls are in one ordered set, with one
//! task that ends the calls whose deadline passed.

mod cluster;
pub(crate) mod config;
mod ports;
mod registry;
mod stats;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub(crate) use config::CallsConfig;

use self::cluster::ClusterCalls;
use self::ports::{ConnPort, Waiter};
use self::registry::{Call, CallId, Outbox, Place, Server, State, parse_call_id, send};
use crate::channels::{ChannelName, NameLimits, Pattern};
use crate::engine::Engine;
use crate::error::{ErrorCode, RequestError};
use crate::metrics::{CallsView, MethodView};
use crate::protocol::calls::{CallError, CallOutcome, CallerInfo, Payload};
use crate::protocol::{RequestId, now_ms};
use crate::router::manager::Subscriber;

/// Ids of endpoints that are not connections (HTTP requests, cluster
/// nodes, peers) start here, far above any connection id.
const FIRST_ENDPOINT: u64 = 1 << 62;

/// A call as its server is told it.
#[derive(Debug, Clone)]
pub(crate) struct CallRequest {
    pub(crate) method: String,
    pub(crate) params: Payload,
    pub(crate) caller: CallerInfo,
    /// ms since the Unix epoch.
    pub(crate) deadline: u64,
}

/// A call about to start: who makes it, and what it asks.
pub(crate) struct NewCall {
    /// The caller's endpoint id (a connection id for a connection).
    pub(crate) caller_id: u64,
    /// Where the answer goes.
    pub(crate) caller: Arc<dyn CallerPort>,
    /// The caller's id for it, echoed in the answer.
    pub(crate) request_id: RequestId,
    pub(crate) method: ChannelName,
    pub(crate) params: Payload,
    pub(crate) info: CallerInfo,
}

/// Where a server's calls go.
pub(crate) trait ServerPort: Send + Sync {
    /// Run `request` as `call_id` and answer it.
    fn request(&self, call_id: &str, request: CallRequest);
    /// Call `call_id` ended before its answer came: stop working on it.
    fn cancelled(&self, call_id: &str);
}

/// Hears that what this hub's own connections serve changed (the
/// federation, which tells its peers).
pub(crate) trait ServingListener: Send + Sync {
    fn serving_changed(&self);
}

/// Where a caller's answer goes.
pub(crate) trait CallerPort: Send + Sync {
    /// The call made with `request_id` ended with `outcome`.
    fn answer(&self, request_id: RequestId, outcome: CallOutcome);
}

/// The calls of one hub: the serving registry and the calls in flight.
pub(crate) struct Calls {
    /// Timeouts and the wait queue bound.
    config: CallsConfig,
    /// Servers, calls, wait queues. A std mutex: nothing awaits while it is
    /// held.
    state: Mutex<State>,
    /// Tracks background work (advertising), so shutdown waits for it.
    tracker: TaskTracker,
    /// Replies that came after their call ended (deadline, cancel): dropped.
    late_replies: AtomicU64,
    /// Source of ids for endpoints that are not connections.
    next_endpoint: AtomicU64,
    /// How far calls reach beyond this hub's connections.
    reach: Reach,
    /// Told when this hub's own servers change.
    listener: std::sync::OnceLock<std::sync::Weak<dyn ServingListener>>,
    /// Wakes the deadline timer for a call due before it would wake.
    deadline_added: Notify,
}

/// The other hubs a call can reach, chosen once from the engine.
enum Reach {
    /// This hub alone.
    Alone,
    /// The nodes of a Redis cluster.
    Cluster(Arc<ClusterCalls>),
}

impl Calls {
    /// An empty registry; nothing expires until [`start`](Self::start).
    /// On the Redis engine it reaches the servers of every node.
    pub(crate) fn new(
        config: CallsConfig,
        engine: &Engine,
        limits: NameLimits,
        tracker: TaskTracker,
    ) -> Arc<Calls> {
        Arc::new_cyclic(|me| Calls {
            config,
            state: Mutex::new(State::default()),
            tracker,
            late_replies: AtomicU64::new(0),
            next_endpoint: AtomicU64::new(FIRST_ENDPOINT),
            reach: match engine.redis() {
                None => Reach::Alone,
                Some(redis) => Reach::Cluster(ClusterCalls::new(redis, me.clone(), limits)),
            },
            listener: std::sync::OnceLock::new(),
            deadline_added: Notify::new(),
        })
    }

    /// Starts the deadline timer and what keeps this hub's servers known
    /// to the others; they stop with `shutdown`.
    pub(crate) fn start(self: &Arc<Self>, tracker: &TaskTracker, shutdown: CancellationToken) {
        tracker.spawn(Arc::clone(self).run_deadlines(shutdown.clone()));
        match &self.reach {
            Reach::Alone => {}
            Reach::Cluster(cluster) => cluster.start(tracker, shutdown),
        }
    }

    /// Replies that arrived after their call ended and were dropped.
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

    /// A fresh id for an endpoint that is not a connection.
    pub(crate) fn endpoint_id(&self) -> u64 {
        self.next_endpoint.fetch_add(1, Ordering::Relaxed)
    }

    /// `subscriber` serves `patterns` too, running `concurrency` calls at
    /// once (the latest `serve` sets it). Returns every pattern it serves,
    /// once every hub that can route to it knows. Calls waiting for it
    /// start with [`serving_sent`](Self::serving_sent).
    pub(crate) async fn serve(
        &self,
        subscriber: &Arc<Subscriber>,
        patterns: Vec<Pattern>,
        concurrency: u32,
    ) -> Vec<String> {
        let served = {
            let mut state = self.lock();
            let server = state
                .servers
                .entry(subscriber.id)
                .or_insert_with(|| Server {
                    port: Arc::new(ConnPort::new(subscriber)),
                    patterns: Vec::new(),
                    allow: None,
                    concurrency,
                    in_flight: 0,
                    place: Place::Local,
                });
            server.concurrency = concurrency;
            for pattern in patterns {
                if !server.patterns.contains(&pattern) {
                    server.patterns.push(pattern);
                }
            }
            server.patterns.iter().map(|p| p.as_str().into()).collect()
        };
        self.advertise().await;
        served
    }

    /// Hands `conn` the waiting calls it can take: after its `serving`
    /// went out, so that a server sees `serving` before any call.
    pub(crate) fn serving_sent(&self, conn: u64) {
        let mut out = Outbox::new();
        self.lock().dispatch_to(conn, &mut out);
        send(out);
    }

    /// `conn` stops serving `patterns` (as written in `serve`); calls it
    /// runs finish. Returns the patterns dropped.
    pub(crate) async fn unserve(&self, conn: u64, patterns: &[String]) -> Vec<String> {
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
        self.advertise().await;
        dropped
    }

    /// A connection's call (permissions already checked). `Err` answers it
    /// at once (`no_server`, `busy`, a duplicate id); otherwise the answer
    /// comes later on the caller's queue.
    pub(crate) async fn call(
        self: &Arc<Self>,
        caller: &Arc<Subscriber>,
        info: CallerInfo,
        request_id: RequestId,
        method: ChannelName,
        params: Payload,
        timeout_ms: Option<u64>,
    ) -> Result<(), RequestError> {
        if self.must_look_up(&method) {
            self.refresh_other_hubs().await;
        }
        self.call_now(caller, info, request_id, method, params, timeout_ms)
    }

    /// [`call`](Self::call) for a method [`must_look_up`](Self::must_look_up)
    /// says needs no look-up: starts it without waiting.
    pub(crate) fn call_now(
        self: &Arc<Self>,
        caller: &Arc<Subscriber>,
        info: CallerInfo,
        request_id: RequestId,
        method: ChannelName,
        params: Payload,
        timeout_ms: Option<u64>,
    ) -> Result<(), RequestError> {
        let call = NewCall {
            caller_id: caller.id,
            caller: Arc::new(ConnPort::new(caller)),
            request_id,
            method,
            params,
            info,
        };
        self.start_call(call, self.timeout(timeout_ms), false)
    }

    /// A call made outside any connection (`POST /api/call`): resolves with
    /// its outcome. Dropping the future cancels the call.
    pub(crate) async fn call_and_wait(
        self: &Arc<Self>,
        info: CallerInfo,
        method: ChannelName,
        params: Payload,
        timeout_ms: Option<u64>,
    ) -> Result<CallOutcome, RequestError> {
        let (tx, rx) = oneshot::channel();
        let id = self.endpoint_id();
        let timeout = self.timeout(timeout_ms);
        let request_id = RequestId::Int(0);
        if self.must_look_up(&method) {
            self.refresh_other_hubs().await;
        }
        let call = NewCall {
            caller_id: id,
            caller: Arc::new(Waiter::new(tx)),
            request_id: request_id.clone(),
            method,
            params,
            info,
        };
        self.start_call(call, timeout, false)?;
        // Cancels the call if this future is dropped before the answer.
        let _guard = CancelOnDrop {
            calls: self,
            caller: id,
            request_id,
        };
        rx.await
            .map_err(|_| RequestError::new(ErrorCode::Unavailable, "the hub is shutting down"))
    }

    /// A call another hub relayed here: it runs on this hub's own servers
    /// only. `Err` answers it at once.
    pub(crate) fn call_relayed(
        self: &Arc<Self>,
        call: NewCall,
        deadline: u64,
    ) -> Result<(), RequestError> {
        let timeout = Duration::from_millis(deadline.saturating_sub(now_ms()));
        self.start_call(call, timeout, true)
    }

    fn timeout(&self, timeout_ms: Option<u64>) -> Duration {
        timeout_ms
            .map(Duration::from_millis)
            .unwrap_or(self.config.default_timeout)
            .min(self.config.max_timeout)
    }

    fn start_call(
        self: &Arc<Self>,
        call: NewCall,
        timeout: Duration,
        relayed: bool,
    ) -> Result<(), RequestError> {
        let NewCall {
            caller_id,
            caller,
            request_id,
            method,
            params,
            info,
        } = call;
        let key = (caller_id, request_id.clone());
        let mut out = Outbox::new();
        {
            let mut state = self.lock();
            if state.by_caller.contains_key(&key) {
                return Err(RequestError::new(
                    ErrorCode::BadRequest,
                    "a call with this id is already in flight on this connection",
                ));
            }
            let server = state.pick(&method, relayed);
            if server.is_none() {
                if !state.served(&method, relayed) {
                    return Err(RequestError::new(
                        ErrorCode::NoServer,
                        format!("nobody serves {:?}", method.as_str()),
                    ));
                }
                let queued = state.waiting.get(method.as_str()).map_or(0, |q| q.len());
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
            let call_id: CallId = state.next_call;
            let started = Instant::now();
            let due = started + timeout;
            state.deadlines.insert((due, call_id));
            if state.armed.is_none_or(|armed| due < armed) {
                state.armed = Some(due);
                self.deadline_added.notify_one();
            }
            state.by_caller.insert(key, call_id);
            state.calls.insert(
                call_id,
                Call {
                    caller_id,
                    caller,
                    request_id,
                    method: method.clone(),
                    params,
                    info,
                    deadline: now_ms() + u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
                    server: None,
                    due,
                    relayed,
                    started,
                },
            );
            match server {
                Some(server) => state.start(call_id, server, &mut out),
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

    /// A connection's `call:reply`.
    pub(crate) fn reply(&self, conn: u64, call_id: &str, reply: Result<Payload, CallError>) {
        let outcome = match reply {
            Ok(result) => CallOutcome::Result { result },
            Err(error) => CallOutcome::Failed { error },
        };
        self.answer_from(conn, call_id, outcome);
    }

    /// Server `server` answered call `call_id`. An answer to a call that
    /// ended (or that this server does not run) is dropped and counted.
    pub(crate) fn answer_from(&self, server: u64, call_id: &str, outcome: CallOutcome) {
        let mut out = Outbox::new();
        {
            let mut state = self.lock();
            let id = parse_call_id(call_id).filter(|id| {
                state
                    .calls
                    .get(id)
                    .is_some_and(|call| call.server == Some(server))
            });
            let Some(id) = id else {
                drop(state);
                self.late_replies.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(call_id, "dropped a reply to a call that has ended");
                return;
            };
            state.end(id, outcome, false, &mut out);
        }
        send(out);
    }

    /// The caller cancels its call `request_id`; the server is told.
    /// Unknown ids (already answered) are ignored.
    pub(crate) fn cancel(&self, caller: u64, request_id: &RequestId) {
        let mut out = Outbox::new();
        {
            let mut state = self.lock();
            if let Some(call_id) = state.by_caller.get(&(caller, request_id.clone())).copied() {
                state.end_silently(call_id, &mut out);
            }
        }
        send(out);
    }

    /// A connection (or another hub) is gone: its calls as a caller are
    /// cancelled, its calls as a server fail with `server_gone`, and it
    /// serves nothing more.
    pub(crate) fn endpoint_gone(&self, id: u64) {
        let mut out = Outbox::new();
        let served = {
            let mut state = self.lock();
            let mut as_caller: Vec<(CallId, bool)> = state
                .calls
                .iter()
                .filter(|(_, call)| call.caller_id == id)
                .map(|(call_id, call)| (*call_id, call.server.is_some()))
                .collect();
            // Its waiting calls go first, so none takes a slot its running
            // calls free.
            as_caller.sort_by_key(|(_, running)| *running);
            for (call_id, _) in as_caller {
                state.end_silently(call_id, &mut out);
            }
            let served = state
                .servers
                .get(&id)
                .is_some_and(|s| s.place == Place::Local);
            state.server_gone(id, &mut out);
            served
        };
        send(out);
        if served {
            self.advertise_later();
        }
    }

    /// Another cluster node's servers of `patterns`, `concurrency` calls
    /// at once in all, reached through `port` as endpoint `id`. Calls it
    /// runs now finish; waiting calls it can take go to it.
    pub(crate) fn set_node(
        &self,
        id: u64,
        port: &Arc<dyn ServerPort>,
        patterns: Vec<Pattern>,
        concurrency: u32,
    ) {
        self.set_remote(id, port, Place::Node, patterns, None, concurrency);
    }

    /// A federated peer's servers, as [`set_node`](Self::set_node); only
    /// methods matching `allow` (this hub's `call_import` for the peer) go
    /// to it, and only when no server of this hub or its cluster serves
    /// them.
    pub(crate) fn set_peer(
        &self,
        id: u64,
        port: &Arc<dyn ServerPort>,
        patterns: Vec<Pattern>,
        allow: Vec<Pattern>,
        concurrency: u32,
    ) {
        self.set_remote(id, port, Place::Peer, patterns, Some(allow), concurrency);
    }

    fn set_remote(
        &self,
        id: u64,
        port: &Arc<dyn ServerPort>,
        place: Place,
        patterns: Vec<Pattern>,
        allow: Option<Vec<Pattern>>,
        concurrency: u32,
    ) {
        let mut out = Outbox::new();
        {
            let mut state = self.lock();
            let server = state.servers.entry(id).or_insert_with(|| Server {
                port: Arc::clone(port),
                patterns: Vec::new(),
                allow: None,
                concurrency,
                in_flight: 0,
                place,
            });
            server.patterns = patterns;
            server.allow = allow;
            server.concurrency = concurrency;
            if server.patterns.is_empty() && server.in_flight == 0 {
                state.servers.remove(&id);
            } else {
                state.dispatch_to(id, &mut out);
            }
            state.fail_unserved(&mut out);
        }
        send(out);
    }

    /// Method patterns this hub's own connections serve, and how many
    /// calls they run at once in all: what other hubs are told.
    pub(crate) fn local_serving(&self) -> (Vec<String>, u32) {
        let state = self.lock();
        let mut patterns: Vec<String> = Vec::new();
        let mut concurrency: u32 = 0;
        for server in state.servers.values().filter(|s| s.place == Place::Local) {
            concurrency = concurrency.saturating_add(server.concurrency);
            for p in &server.patterns {
                if !patterns.iter().any(|q| q == p.as_str()) {
                    patterns.push(p.as_str().to_string());
                }
            }
        }
        patterns.sort_unstable();
        (patterns, concurrency)
    }

    /// Whether a call of `method` must first read the other hubs' servers
    /// again ([`refresh_other_hubs`](Self::refresh_other_hubs)): in a
    /// cluster, when no server is known for it — one that was just
    /// acknowledged `serving` may not have reached this hub's view yet.
    pub(crate) fn must_look_up(&self, method: &ChannelName) -> bool {
        match &self.reach {
            Reach::Alone => false,
            Reach::Cluster(_) => !self.lock().served(method, false),
        }
    }

    async fn refresh_other_hubs(&self) {
        if let Reach::Cluster(cluster) = &self.reach {
            cluster.refresh().await;
        }
    }

    /// Connects the one listener (once, when the hub is built).
    pub(crate) fn set_listener(&self, listener: std::sync::Weak<dyn ServingListener>) {
        let _ = self.listener.set(listener);
    }

    fn tell_listener(&self) {
        if let Some(listener) = self.listener.get().and_then(std::sync::Weak::upgrade) {
            listener.serving_changed();
        }
    }

    /// Tells the other hubs what this one serves now, and returns once
    /// they can know it (in a cluster: once Redis has it).
    async fn advertise(&self) {
        self.tell_listener();
        match &self.reach {
            Reach::Alone => {}
            Reach::Cluster(cluster) => cluster.advertise().await,
        }
    }

    /// [`advertise`](Self::advertise) from a place that cannot wait.
    fn advertise_later(&self) {
        self.tell_listener();
        match &self.reach {
            Reach::Alone => {}
            Reach::Cluster(cluster) => {
                let cluster = Arc::clone(cluster);
                self.tracker.spawn(async move { cluster.advertise().await });
            }
        }
    }

    /// The figures for `/api/stats` and `/metrics`.
    pub(crate) fn view(&self) -> CallsView {
        let state = self.lock();
        let mut rows = state.stats.read();
        // Methods with calls in flight get a row before a call of theirs ended.
        for call in state.calls.values().filter(|c| !c.relayed) {
            if !rows.contains_key(call.method.as_str()) && rows.len() < stats::MAX_METHODS {
                rows.insert(call.method.as_str().to_string(), stats::RowView::empty());
            }
        }
        let methods = rows
            .into_iter()
            .map(|(method, row)| {
                let matches = |m: &ChannelName| m.as_str() == method;
                let in_flight = state
                    .calls
                    .values()
                    .filter(|c| !c.relayed && matches(&c.method))
                    .count();
                let servers = ChannelName::parse(&method, &NameLimits::UNBOUNDED)
                    .map(|name| state.servers.values().filter(|s| s.serves(&name)).count())
                    .unwrap_or(0);
                MethodView {
                    method,
                    servers,
                    in_flight,
                    calls: row.calls,
                    errors: row.errors,
                    latency: row.latency,
                }
            })
            .collect();
        CallsView {
            servers: state
                .servers
                .values()
                .filter(|s| s.place == Place::Local)
                .count(),
            in_flight: state.calls.len(),
            late_replies: self.late_replies(),
            methods,
        }
    }

    /// Ends the calls whose deadline passed (`timeout`; their servers are
    /// told), until `shutdown`. Wakes when the soonest deadline comes, or
    /// when a call due before it starts; a call that ends first leaves it
    /// asleep (it finds nothing due, and sleeps until the next deadline).
    async fn run_deadlines(self: Arc<Self>, shutdown: CancellationToken) {
        loop {
            let next = self.expire_due();
            let wake = async {
                match next {
                    Some(at) => tokio::time::sleep_until(at.into()).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = wake => {}
                () = self.deadline_added.notified() => {}
                () = shutdown.cancelled() => return,
            }
        }
    }

    /// Ends the calls whose deadline passed; returns when the next one is
    /// due, which the timer is then armed for.
    fn expire_due(&self) -> Option<Instant> {
        let mut out = Outbox::new();
        let next = {
            let mut state = self.lock();
            let now = Instant::now();
            while let Some(&(due, call_id)) = state.deadlines.first() {
                if due > now {
                    break;
                }
                if state.calls.contains_key(&call_id) {
                    let outcome = CallOutcome::Error {
                        code: ErrorCode::Timeout,
                        message: "the call's deadline passed before its server answered".into(),
                    };
                    // Takes its deadline out too.
                    state.end(call_id, outcome, true, &mut out);
                } else {
                    state.deadlines.pop_first();
                }
            }
            let next = state.deadlines.first().map(|(due, _)| *due);
            state.armed = next;
            next
        };
        send(out);
        next
    }
}

/// Cancels an HTTP caller's call when its request goes away first.
struct CancelOnDrop<'a> {
    calls: &'a Calls,
    caller: u64,
    request_id: RequestId,
}

impl Drop for CancelOnDrop<'_> {
    fn drop(&mut self) {
        self.calls.cancel(self.caller, &self.request_id);
    }
}
