//! What the hub counts about itself, for `GET /metrics` (Prometheus /
//! OpenMetrics text) and `GET /api/stats` (JSON for the dashboard).
//!
//! Two kinds of numbers:
//! - **counters kept as they happen** (`Metrics`): traffic per transport,
//!   authenticated connections, authentication failures, disconnects,
//!   publish-to-write latency. The hot ones (traffic, latency) are relaxed
//!   atomic adds, done once per write batch, never per subscriber on the
//!   fan-out path; the rare ones (failures, disconnects) sit behind a short
//!   std mutex.
//! - **state read on request** (`Stats::gather`): subscriptions, patterns,
//!   tasks by type and state, queue depth, workers. A scrape takes the same
//!   short locks an API call does; nothing is maintained for it in between.
//!
//! Both endpoints render one [`Stats`], so they always agree. [`Stats`]
//! (with the types of its fields) is the public part of this module: the
//! body of `GET /api/stats`, and what `Hub::stats` returns.

mod calls;
mod histogram;
mod rates;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};
use serde::{Deserialize, Serialize};

use crate::auth::ClientType;
use crate::error::{AuthError, CloseReason};
use crate::protocol::federation::{FederationView, LinkState};
use crate::protocol::tasks::{TaskView, WorkerView};

pub use calls::{CallsView, MethodView};
pub use histogram::HistogramSnapshot;
pub(crate) use histogram::{CALL_BUCKETS, Histogram, LATENCY_BUCKETS, WAIT_BUCKETS};
pub use rates::RateSample;
pub(crate) use rates::sample_rates;

/// How a client reached the hub.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Transport {
    /// `/ws`.
    Ws,
    /// `/api/stream`.
    Sse,
    /// The HTTP API (`/api/publish`, `/api/tasks`).
    Http,
}

impl Transport {
    const ALL: [Transport; 3] = [Transport::Ws, Transport::Sse, Transport::Http];

    /// The label value.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Transport::Ws => "ws",
            Transport::Sse => "sse",
            Transport::Http => "http",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

fn type_index(ty: ClientType) -> usize {
    match ty {
        ClientType::Browser => 0,
        ClientType::Worker => 1,
        ClientType::Hub => 2,
    }
}

/// Messages and bytes through one transport.
#[derive(Debug, Default)]
struct Traffic {
    /// Messages received: WebSocket text/binary frames, HTTP-published events.
    messages_in: AtomicU64,
    /// Their bytes (frame payloads, request bodies).
    bytes_in: AtomicU64,
    /// Messages sent: WebSocket frames (events, replies, direct messages),
    /// SSE event frames.
    messages_out: AtomicU64,
    /// Their bytes.
    bytes_out: AtomicU64,
}

/// The counters a hub keeps as things happen.
#[derive(Debug)]
pub(crate) struct Metrics {
    /// When the hub was built, for uptime.
    started: Instant,
    /// Authenticated connections, by transport (ws, sse) and client type.
    connections: [[AtomicI64; 3]; 2],
    /// By [`Transport`].
    traffic: [Traffic; 3],
    /// Refused tokens by `auth:failed` reason.
    auth_failures: Mutex<BTreeMap<&'static str, u64>>,
    /// Connections the hub ended, by (transport, close code, reason text).
    disconnects: Mutex<BTreeMap<(&'static str, u16, &'static str), u64>>,
    /// Connections refused before they opened, by reason.
    rejected: Mutex<BTreeMap<&'static str, u64>>,
    /// Inbound frames refused with `rate_limited`.
    rate_limited: AtomicU64,
    /// From publish to the end of the write of the first event of each
    /// WebSocket write batch (one sample per batch, not per event).
    pub publish_to_write: Histogram,
    /// Recent traffic rates for the dashboard's chart.
    rates: Mutex<rates::RateLog>,
    /// Wakes the rate sampler when it sleeps on an idle hub and someone
    /// reads the rates.
    rates_wanted: tokio::sync::Notify,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            started: Instant::now(),
            connections: Default::default(),
            traffic: Default::default(),
            auth_failures: Mutex::default(),
            disconnects: Mutex::default(),
            rejected: Mutex::default(),
            rate_limited: AtomicU64::new(0),
            publish_to_write: Histogram::new(LATENCY_BUCKETS),
            rates: Mutex::default(),
            rates_wanted: tokio::sync::Notify::new(),
        }
    }
}

fn locked<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

impl Metrics {
    /// Counts an authenticated connection until the guard is dropped.
    pub(crate) fn connected(
        self: &Arc<Self>,
        transport: Transport,
        ty: ClientType,
    ) -> ConnectionGauge {
        let slot = usize::from(transport != Transport::Ws);
        self.connections[slot][type_index(ty)].fetch_add(1, Ordering::Relaxed);
        ConnectionGauge {
            metrics: Arc::clone(self),
            slot,
            ty: type_index(ty),
        }
    }

    /// `count` messages of `bytes` in total received over `transport`.
    pub(crate) fn received(&self, transport: Transport, count: u64, bytes: u64) {
        let t = &self.traffic[transport.index()];
        t.messages_in.fetch_add(count, Ordering::Relaxed);
        t.bytes_in.fetch_add(bytes, Ordering::Relaxed);
    }

    /// `count` messages of `bytes` in total sent over `transport`.
    pub(crate) fn sent(&self, transport: Transport, count: u64, bytes: u64) {
        let t = &self.traffic[transport.index()];
        t.messages_out.fetch_add(count, Ordering::Relaxed);
        t.bytes_out.fetch_add(bytes, Ordering::Relaxed);
    }

    /// A token was refused.
    pub(crate) fn auth_failed(&self, reason: AuthError) {
        *locked(&self.auth_failures)
            .entry(reason.code())
            .or_default() += 1;
    }

    /// The hub closed a WebSocket with `reason`.
    pub(crate) fn closed(&self, reason: CloseReason) {
        self.disconnected(Transport::Ws, reason);
    }

    /// The hub ended a connection of `transport` for `reason` (SSE streams
    /// end without a close code; the label uses the WebSocket code of the
    /// same reason).
    pub(crate) fn disconnected(&self, transport: Transport, reason: CloseReason) {
        let key = (transport.as_str(), reason.code(), reason.text());
        *locked(&self.disconnects).entry(key).or_default() += 1;
    }

    /// An inbound frame was refused by the connection's `limits.messages` rate.
    pub(crate) fn rate_limited(&self) {
        self.rate_limited.fetch_add(1, Ordering::Relaxed);
    }

    /// A connection was refused before it opened (`limit`, `shutdown`).
    pub(crate) fn rejected(&self, reason: &'static str) {
        *locked(&self.rejected).entry(reason).or_default() += 1;
    }

    /// Cumulative (messages in, messages out) over all transports.
    fn totals(&self) -> (u64, u64) {
        self.traffic.iter().fold((0, 0), |(i, o), t| {
            (
                i + t.messages_in.load(Ordering::Relaxed),
                o + t.messages_out.load(Ordering::Relaxed),
            )
        })
    }
}

/// One authenticated connection, counted until dropped.
#[derive(Debug)]
pub(crate) struct ConnectionGauge {
    metrics: Arc<Metrics>,
    slot: usize,
    ty: usize,
}

impl Drop for ConnectionGauge {
    fn drop(&mut self) {
        self.metrics.connections[self.slot][self.ty].fetch_sub(1, Ordering::Relaxed);
    }
}

/// Most subscription patterns listed in [`Stats::channels`].
pub(crate) const MAX_LISTED_PATTERNS: usize = 200;
/// Most dead tasks listed in [`TaskStats::dead`], newest first.
pub(crate) const MAX_LISTED_DEAD: usize = 50;

/// Everything `/api/stats` shows, and `/metrics` renders.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Stats {
    /// Seconds since the hub started.
    pub uptime_seconds: f64,
    /// The hub's version.
    pub version: String,
    /// Open connections.
    pub connections: ConnectionStats,
    /// (pattern, connection) subscriptions.
    pub subscriptions: usize,
    /// Distinct subscribed patterns.
    pub patterns: usize,
    /// The most-subscribed patterns (at most 200, `MAX_LISTED_PATTERNS`).
    pub channels: Vec<PatternCount>,
    /// Fan-out counters.
    pub events: EventStats,
    /// Messages and bytes by transport (`ws`, `sse`, `http`).
    pub traffic: BTreeMap<String, TrafficStats>,
    /// Refused tokens by reason.
    pub auth_failures: BTreeMap<String, u64>,
    /// Fetches of the identity provider's JWKS (`auth.jwks_url`) by
    /// result, `ok` or `error`; empty without a JWKS.
    #[serde(default)]
    pub jwks_refreshes: BTreeMap<String, u64>,
    /// Connections the hub ended, by transport, code and reason.
    pub disconnects: Vec<DisconnectCount>,
    /// Connections refused before opening, by reason.
    pub rejected: BTreeMap<String, u64>,
    /// Inbound frames refused with `rate_limited`.
    pub rate_limited: u64,
    /// Publish-to-write latency.
    pub publish_to_write: HistogramSnapshot,
    /// Task routing.
    pub tasks: TaskStats,
    /// Live workers.
    pub workers: Vec<WorkerView>,
    /// Traffic per second over the last minutes, oldest first.
    pub rates: Vec<RateSample>,
    /// Links to peer hubs (as `GET /api/federation`).
    pub federation: FederationView,
    /// Request/reply calls.
    pub calls: CallsView,
}

/// Open connections.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConnectionStats {
    /// WebSocket + SSE connections holding a `limits.max_connections` slot.
    pub total: usize,
    /// WebSocket connections that have not authenticated (yet).
    pub unauthenticated: i64,
    /// Authenticated connections: transport → client type → count.
    pub by_type: BTreeMap<String, BTreeMap<String, i64>>,
}

/// A subscribed pattern and how many connections hold it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PatternCount {
    /// The pattern as subscribed.
    pub pattern: String,
    /// Connections subscribed to it.
    pub subscribers: usize,
}

/// The fan-out path's counters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EventStats {
    /// Events published (every transport, task events included).
    pub published: u64,
    /// Deliveries queued (one per subscriber per event).
    pub delivered: u64,
    /// Subscribers disconnected because their queue was full.
    pub slow_consumers: u64,
    /// The hub is falling behind and connections coalesce their writes
    /// (`websocket.coalesce_interval`, `pacing.rs`).
    pub coalescing: bool,
    /// Connection wake-ups put off to the pacer's next tick.
    pub coalesced_wakeups: u64,
    /// While the hub is busy but keeping up, how long an event waits for
    /// its connection's next batched write, in seconds; 0 when it does not
    /// batch (`pacing.rs`).
    pub batch_seconds: f64,
}

/// One transport's traffic.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TrafficStats {
    /// Messages received.
    pub messages_in: u64,
    /// Bytes received.
    pub bytes_in: u64,
    /// Messages sent.
    pub messages_out: u64,
    /// Bytes sent.
    pub bytes_out: u64,
}

/// Connections ended by the hub for one reason.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DisconnectCount {
    /// `ws` or `sse`.
    pub transport: String,
    /// The close code (for SSE, the WebSocket code of the same reason).
    pub code: u16,
    /// The close reason text.
    pub reason: String,
    /// How many.
    pub count: u64,
}

/// Task routing, as read now.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskStats {
    /// Task type → state → tasks the hub knows (finished ones until
    /// `tasks.retention` passes).
    pub by_type: BTreeMap<String, BTreeMap<String, u64>>,
    /// Tasks waiting for a worker or a retry (`tasks.max_queued` applies).
    pub waiting: usize,
    /// Time from queued to assigned.
    pub dispatch_wait: HistogramSnapshot,
    /// Dead tasks, newest first (at most 50, `MAX_LISTED_DEAD`).
    pub dead: Vec<TaskView>,
}

/// What [`Stats`] reads from the rest of the hub, handed in by the hub:
/// `metrics` sits below the hub and imports none of it.
#[derive(Debug)]
pub(crate) struct HubState {
    /// Live WebSocket and SSE connections, authenticated or not.
    pub(crate) connections: usize,
    /// Every subscribed pattern with its number of subscribers.
    pub(crate) pattern_counts: Vec<(String, usize)>,
    /// Subscriptions across all connections.
    pub(crate) subscriptions: usize,
    /// The fan-out counters.
    pub(crate) events: EventStats,
    /// The task figures as this node sees them.
    pub(crate) tasks: TaskStats,
    /// This node's workers.
    pub(crate) workers: Vec<WorkerView>,
    /// The federation's links.
    pub(crate) federation: FederationView,
    /// The calls.
    pub(crate) calls: CallsView,
    /// JWKS fetches by result.
    pub(crate) jwks_refreshes: BTreeMap<String, u64>,
}

impl Stats {
    /// Reads everything now: this module's counters and `hub`'s state.
    pub(crate) fn gather(metrics: &Metrics, hub: HubState) -> Stats {
        let mut by_type: BTreeMap<String, BTreeMap<String, i64>> = BTreeMap::new();
        let mut authenticated = 0;
        for (slot, transport) in [Transport::Ws, Transport::Sse].into_iter().enumerate() {
            let row = by_type.entry(transport.as_str().to_string()).or_default();
            for ty in ClientType::ALL {
                let n = metrics.connections[slot][type_index(ty)].load(Ordering::Relaxed);
                row.insert(ty.as_str().to_string(), n);
                authenticated += n;
            }
        }
        let total = hub.connections;
        // Every SSE stream is authenticated before it takes a slot, so the
        // rest are WebSockets still in their handshake.
        let unauthenticated = (total as i64 - authenticated).max(0);

        let mut counts = hub.pattern_counts;
        let patterns = counts.len();
        counts.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        counts.truncate(MAX_LISTED_PATTERNS);
        let channels = counts
            .into_iter()
            .map(|(pattern, subscribers)| PatternCount {
                pattern,
                subscribers,
            })
            .collect();

        let traffic = Transport::ALL
            .into_iter()
            .map(|t| {
                let c = &metrics.traffic[t.index()];
                let stats = TrafficStats {
                    messages_in: c.messages_in.load(Ordering::Relaxed),
                    bytes_in: c.bytes_in.load(Ordering::Relaxed),
                    messages_out: c.messages_out.load(Ordering::Relaxed),
                    bytes_out: c.bytes_out.load(Ordering::Relaxed),
                };
                (t.as_str().to_string(), stats)
            })
            .collect();
        let disconnects = locked(&metrics.disconnects)
            .iter()
            .map(|(&(transport, code, reason), &count)| DisconnectCount {
                transport: transport.to_string(),
                code,
                reason: reason.to_string(),
                count,
            })
            .collect();

        Stats {
            uptime_seconds: metrics.started.elapsed().as_secs_f64(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            connections: ConnectionStats {
                total,
                unauthenticated,
                by_type,
            },
            subscriptions: hub.subscriptions,
            patterns,
            channels,
            events: hub.events,
            traffic,
            auth_failures: owned(&locked(&metrics.auth_failures)),
            jwks_refreshes: hub.jwks_refreshes,
            disconnects,
            rejected: owned(&locked(&metrics.rejected)),
            rate_limited: metrics.rate_limited.load(Ordering::Relaxed),
            publish_to_write: metrics.publish_to_write.snapshot(),
            tasks: hub.tasks,
            workers: hub.workers,
            rates: {
                let rates = locked(&metrics.rates).read();
                metrics.rates_wanted.notify_waiters();
                rates
            },
            federation: hub.federation,
            calls: hub.calls,
        }
    }

    /// The OpenMetrics text exposition (Prometheus scrapes it as is).
    pub(crate) fn to_openmetrics(&self) -> String {
        let mut r = Registry::with_prefix("chanhub");
        let gauge = |points: Vec<(Labels, i64)>| Series::new(MetricType::Gauge, points);
        let counter = |points: Vec<(Labels, i64)>| Series::new(MetricType::Counter, points);
        let one = |v: i64| vec![(Labels::new(), v)];
        let n = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);

        r.register(
            "build_info",
            "The hub's version",
            Series::new(
                MetricType::Gauge,
                vec![(vec![("version", self.version.to_string())], 1)],
            ),
        );
        r.register_with_unit(
            "uptime",
            "Time since the hub started",
            Unit::Seconds,
            SecondsGauge(self.uptime_seconds),
        );
        let mut conns = Vec::new();
        for (transport, row) in &self.connections.by_type {
            for (ty, count) in row {
                conns.push((
                    vec![
                        ("transport", transport.clone()),
                        ("client_type", ty.clone()),
                    ],
                    *count,
                ));
            }
        }
        r.register(
            "connections",
            "Authenticated connections by transport and client type",
            gauge(conns),
        );
        r.register(
            "connections_unauthenticated",
            "WebSocket connections that have not authenticated yet",
            gauge(one(self.connections.unauthenticated)),
        );
        r.register(
            "connections_rejected",
            "Connections refused before opening, by reason (limit = limits.max_connections, \
             rate_limited = limits.connect.per_ip, unauthenticated = limits.max_unauthenticated, \
             shutdown)",
            counter(labelled("reason", &self.rejected)),
        );
        r.register(
            "messages_rate_limited",
            "Inbound frames refused by the connection's limits.messages rate",
            counter(one(n(self.rate_limited))),
        );
        r.register(
            "auth_failures",
            "Refused tokens by auth:failed reason",
            counter(labelled("reason", &self.auth_failures)),
        );
        r.register(
            "jwks_refresh",
            "Fetches of the identity provider's JWKS (auth.jwks_url) by result",
            counter(labelled("result", &self.jwks_refreshes)),
        );
        r.register(
            "disconnects",
            "Connections closed by the hub, by transport, close code and reason",
            counter(
                self.disconnects
                    .iter()
                    .map(|d| {
                        (
                            vec![
                                ("transport", d.transport.clone()),
                                ("code", d.code.to_string()),
                                ("reason", d.reason.clone()),
                            ],
                            n(d.count),
                        )
                    })
                    .collect(),
            ),
        );
        r.register(
            "subscriptions",
            "Subscriptions (pattern, connection) held",
            gauge(one(self.subscriptions as i64)),
        );
        r.register(
            "subscription_patterns",
            "Distinct subscribed patterns",
            gauge(one(self.patterns as i64)),
        );
        r.register(
            "events_published",
            "Events published, task events included",
            counter(one(n(self.events.published))),
        );
        r.register(
            "event_deliveries",
            "Events queued to subscribers (one per subscriber per event)",
            counter(one(n(self.events.delivered))),
        );
        r.register(
            "slow_consumers",
            "Connections dropped because their outbound queue was full",
            counter(one(n(self.events.slow_consumers))),
        );
        r.register(
            "coalescing",
            "1 while the hub is falling behind and connections coalesce their writes \
             (websocket.coalesce_interval)",
            gauge(one(i64::from(self.events.coalescing))),
        );
        r.register(
            "coalesced_wakeups",
            "Connection wake-ups put off to the next coalescing tick",
            counter(one(n(self.events.coalesced_wakeups))),
        );
        r.register_with_unit(
            "batch",
            "While the hub is busy but keeping up, the longest an event waits to be \
             written with its connection's next ones (0: events are written at once)",
            Unit::Seconds,
            SecondsGauge(self.events.batch_seconds),
        );
        // Inbound is counted for WebSocket and HTTP (SSE has none), outbound
        // for WebSocket and SSE (HTTP responses are not counted).
        let traffic = |transports: [Transport; 2], pick: fn(&TrafficStats) -> u64| {
            transports
                .iter()
                .filter_map(|t| {
                    let s = self.traffic.get(t.as_str())?;
                    Some((vec![("transport", t.as_str().to_string())], n(pick(s))))
                })
                .collect::<Vec<_>>()
        };
        const IN: [Transport; 2] = [Transport::Ws, Transport::Http];
        const OUT: [Transport; 2] = [Transport::Ws, Transport::Sse];
        r.register(
            "messages_in",
            "Messages received: WebSocket frames after authentication, events published over HTTP",
            counter(traffic(IN, |s| s.messages_in)),
        );
        r.register(
            "messages_out",
            "Messages sent: WebSocket frames (events, replies, direct messages), SSE events",
            counter(traffic(OUT, |s| s.messages_out)),
        );
        r.register_with_unit(
            "received",
            "Bytes received: WebSocket frame payloads, HTTP publish bodies",
            Unit::Bytes,
            counter(traffic(IN, |s| s.bytes_in)),
        );
        r.register_with_unit(
            "sent",
            "Bytes sent: WebSocket frame payloads, SSE stream bytes",
            Unit::Bytes,
            counter(traffic(OUT, |s| s.bytes_out)),
        );
        r.register_with_unit(
            "publish_to_write",
            "From publish to the written WebSocket frame (first event of each write batch)",
            Unit::Seconds,
            self.publish_to_write.clone(),
        );
        let mut tasks = Vec::new();
        for (kind, states) in &self.tasks.by_type {
            for (state, count) in states {
                tasks.push((
                    vec![("type", kind.clone()), ("state", state.clone())],
                    n(*count),
                ));
            }
        }
        r.register(
            "tasks",
            "Tasks the hub knows, by type and state",
            gauge(tasks),
        );
        r.register(
            "task_queue_depth",
            "Tasks waiting for a worker or a retry",
            gauge(one(self.tasks.waiting as i64)),
        );
        r.register_with_unit(
            "task_dispatch_wait",
            "Time a task waited from queued to assigned",
            Unit::Seconds,
            self.tasks.dispatch_wait.clone(),
        );
        r.register(
            "workers",
            "Registered workers",
            gauge(one(self.workers.len() as i64)),
        );
        let (slots, busy) = self.workers.iter().fold((0, 0), |(s, b), w| {
            (s + i64::from(w.slots), b + w.running.len() as i64)
        });
        r.register(
            "worker_slots",
            "Worker slots by use",
            gauge(vec![
                (vec![("state", "busy".to_string())], busy),
                (vec![("state", "free".to_string())], (slots - busy).max(0)),
            ]),
        );
        self.register_federation(&mut r);
        self.calls.register(&mut r);
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &r);
        text
    }
}

fn owned(map: &BTreeMap<&'static str, u64>) -> BTreeMap<String, u64> {
    map.iter().map(|(k, v)| (k.to_string(), *v)).collect()
}

impl Stats {
    /// Link state and traffic of every federation link, by peer name.
    fn register_federation(&self, r: &mut Registry) {
        let links = &self.federation.links;
        let n = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        let per_link =
            |f: &dyn Fn(&crate::protocol::federation::LinkView) -> Vec<(Labels, i64)>| {
                links.iter().flat_map(f).collect::<Vec<_>>()
            };
        let peer = |name: &str| ("peer", name.to_string());
        r.register(
            "federation_link_up",
            "1 when the link to the peer is up (hellos exchanged), else 0",
            Series::new(
                MetricType::Gauge,
                per_link(&|l| vec![(vec![peer(&l.peer)], i64::from(l.state == LinkState::Up))]),
            ),
        );
        r.register(
            "federation_link_attempts",
            "Failed dial attempts since the link was last up",
            Series::new(
                MetricType::Gauge,
                per_link(&|l| vec![(vec![peer(&l.peer)], i64::from(l.attempts))]),
            ),
        );
        let rtts: Vec<(Labels, f64)> = links
            .iter()
            .filter_map(|l| Some((vec![peer(&l.peer)], l.rtt_ms? / 1000.0)))
            .collect();
        r.register_with_unit(
            "federation_link_rtt",
            "Last measured round trip to the peer",
            Unit::Seconds,
            FloatGauges(rtts),
        );
        r.register(
            "federation_interest",
            "Patterns exchanged with the peer (in: it wants from us; out: we ask of it)",
            Series::new(
                MetricType::Gauge,
                per_link(&|l| {
                    vec![
                        (
                            vec![peer(&l.peer), ("direction", "in".into())],
                            l.interest_in as i64,
                        ),
                        (
                            vec![peer(&l.peer), ("direction", "out".into())],
                            l.interest_out as i64,
                        ),
                    ]
                }),
            ),
        );
        r.register(
            "federation_events",
            "Events sent to (out) and received from (in) the peer",
            Series::new(
                MetricType::Counter,
                per_link(&|l| {
                    vec![
                        (
                            vec![peer(&l.peer), ("direction", "in".into())],
                            n(l.counters.events_in),
                        ),
                        (
                            vec![peer(&l.peer), ("direction", "out".into())],
                            n(l.counters.events_out),
                        ),
                    ]
                }),
            ),
        );
        r.register(
            "federation_events_dropped",
            "Events from the peer dropped: not imported, duplicate or past the hop limit, too large",
            Series::new(
                MetricType::Counter,
                per_link(&|l| {
                    let c = &l.counters;
                    [
                        ("import", c.dropped_import),
                        ("duplicate", c.dropped_duplicate),
                        ("oversize", c.dropped_oversize),
                    ]
                    .into_iter()
                    .map(|(why, v)| (vec![peer(&l.peer), ("reason", why.into())], n(v)))
                    .collect()
                }),
            ),
        );
        r.register(
            "federation_tasks",
            "Tasks handed to (out) and taken from (in) the peer",
            Series::new(
                MetricType::Counter,
                per_link(&|l| {
                    vec![
                        (
                            vec![peer(&l.peer), ("direction", "in".into())],
                            n(l.counters.tasks_in),
                        ),
                        (
                            vec![peer(&l.peer), ("direction", "out".into())],
                            n(l.counters.tasks_out),
                        ),
                    ]
                }),
            ),
        );
    }
}

/// Float gauges with labels (round trips).
#[derive(Debug)]
struct FloatGauges(Vec<(Labels, f64)>);

impl EncodeMetric for FloatGauges {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        for (labels, value) in &self.0 {
            encoder.encode_family(labels)?.encode_gauge(value)?;
        }
        Ok(())
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Gauge
    }
}

/// Label pairs of one series.
type Labels = Vec<(&'static str, String)>;

fn labelled(name: &'static str, map: &BTreeMap<String, u64>) -> Vec<(Labels, i64)> {
    map.iter()
        .map(|(k, v)| {
            (
                vec![(name, k.to_string())],
                i64::try_from(*v).unwrap_or(i64::MAX),
            )
        })
        .collect()
}

/// A counter or gauge family whose values were read at scrape time.
#[derive(Debug)]
struct Series {
    kind: MetricType,
    points: Vec<(Labels, i64)>,
}

impl Series {
    fn new(kind: MetricType, points: Vec<(Labels, i64)>) -> Series {
        Series { kind, points }
    }
}

impl EncodeMetric for Series {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        for (labels, value) in &self.points {
            if labels.is_empty() {
                self.encode_value(&mut encoder, *value)?;
            } else {
                let mut family = encoder.encode_family(labels)?;
                self.encode_value(&mut family, *value)?;
            }
        }
        Ok(())
    }

    fn metric_type(&self) -> MetricType {
        self.kind
    }
}

impl Series {
    fn encode_value(&self, encoder: &mut MetricEncoder, value: i64) -> std::fmt::Result {
        match self.kind {
            MetricType::Counter => {
                let value = u64::try_from(value).unwrap_or(0);
                encoder.encode_counter::<NoLabelSet, _, u64>(&value, None)
            }
            _ => encoder.encode_gauge(&value),
        }
    }
}

/// A gauge in seconds (a float).
#[derive(Debug)]
struct SecondsGauge(f64);

impl EncodeMetric for SecondsGauge {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        encoder.encode_gauge(&self.0)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Gauge
    }
}
