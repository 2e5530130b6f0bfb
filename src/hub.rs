//! The hub: shared state behind a cheap-`Clone` handle. Every connection's
//! session and every HTTP handler holds one.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use serde_json::Value;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::{Identity, Verifier};
use crate::calls::Calls;
use crate::channels::{ChannelName, NameLimits};
use crate::config::Config;
use crate::engine::Engine;
use crate::error::{ConfigError, RequestError};
use crate::federation::{Federation, Host, HubRef};
use crate::limits::{Gate, Unauthenticated};
use crate::metrics::{EventStats, HubState, MAX_LISTED_DEAD, Metrics, Stats, TaskStats};
use crate::pacing::Pacer;
use crate::protocol::federation::FederationView;
use crate::protocol::{Event, now_ms};
use crate::router::manager::{ChannelManager, Subscriber};
use crate::router::namespace::Namespaces;
use crate::tasks::{Connections, TaskService, Tasks};

/// Connections refused at the connection limit are warned about at most
/// this often (with how many there were).
const REFUSAL_WARNING_PERIOD_MS: u64 = 10_000;

/// A handle to the hub's shared state.
#[derive(Clone)]
pub struct Hub {
    inner: Arc<Inner>,
}

struct Inner {
    /// The validated configuration.
    config: Config,
    /// Checks tokens; holds each client type's policy.
    verifier: Verifier,
    /// Subscriptions and fan-out.
    channels: Arc<ChannelManager>,
    /// Authenticated WebSocket connections, for direct messages (task
    /// assignments, results).
    live: Arc<Connections>,
    /// Task queues, workers, leases: in this process or, on the Redis
    /// engine, in Redis with this node's workers.
    tasks: Tasks,
    /// Request/reply calls: who serves which method, calls in flight.
    calls: Arc<Calls>,
    /// Links to peer hubs.
    federation: Arc<Federation>,
    /// Where cross-connection state lives: memory or Redis.
    engine: Engine,
    /// Counters for `/metrics` and `/api/stats`.
    metrics: Arc<Metrics>,
    /// Next connection id.
    next_client: AtomicU64,
    /// Live WebSocket + SSE connections, for `limits.max_connections`.
    connections: AtomicUsize,
    /// `limits.max_connections`, or the default derived from the
    /// open-file limit.
    max_connections: usize,
    /// Where it came from, for the log line at start.
    open_files: Option<u64>,
    /// Connections refused at the limit since the last warning, and when
    /// that was (ms since the Unix epoch): at most one warning a period.
    refused: AtomicU64,
    refused_warned_ms: AtomicU64,
    /// Cancelled when the hub starts shutting down; every session selects on it.
    shutdown: CancellationToken,
    /// Every connection's task, so shutdown can wait for them.
    tracker: TaskTracker,
    /// Per-IP connection attempts and the unauthenticated-socket cap.
    gate: Arc<Gate>,
}

impl Hub {
    /// Builds a hub from validated config (loads or creates the token secret).
    pub fn new(config: Config) -> Result<Hub, ConfigError> {
        let verifier = Verifier::from_config(&config)?;
        let namespaces = Namespaces::new(
            &config.namespaces,
            &config.name_limits(),
            config.limits.match_cache,
        )?;
        let pacer = Arc::new(Pacer::new(config.websocket.coalesce_interval));
        let channels = Arc::new(
            ChannelManager::new(config.limits.match_cache)
                .with_namespaces(namespaces)
                .with_pacer(pacer),
        );
        let engine = Engine::new(config.engine, &config.redis, Arc::clone(&channels))?;
        let connections = Arc::new(Connections::new());
        let store_path = config
            .tasks
            .durable
            .then(|| config.data_dir().join("tasks.redb"));
        let tasks = TaskService::new(
            config.tasks.clone(),
            config.name_limits(),
            store_path.as_deref(),
            Arc::clone(&channels),
            Arc::clone(&connections),
        )
        .map_err(|e| ConfigError::Invalid {
            key: "data_dir".into(),
            problem: e.to_string(),
        })?;
        let local_tasks = Arc::new(tasks);
        let tasks = Tasks::new(
            &engine,
            &local_tasks,
            &channels,
            &connections,
            &config.tasks,
            config.name_limits(),
        );
        let federation = Federation::new(
            &config.federation,
            &config.data_dir(),
            config.name_limits(),
            (config.limits.max_frame_bytes, config.limits.match_cache),
            Arc::clone(&channels),
            local_tasks,
        )?;
        channels.set_forwarder(federation.hook());
        federation.observe_tasks();
        let gate = Gate::new(&config.limits.connect, config.limits.max_unauthenticated);
        let shutdown = CancellationToken::new();
        let tracker = TaskTracker::new();
        let calls = Calls::new(
            config.calls.clone(),
            &engine,
            config.name_limits(),
            tracker.clone(),
        );
        federation.observe_calls(&calls);
        let open_files = crate::fd_limit::raise_open_files();
        let max_connections =
            crate::fd_limit::connection_limit(config.limits.max_connections, open_files);
        Ok(Hub {
            inner: Arc::new(Inner {
                gate,
                calls,
                config,
                verifier,
                channels,
                live: connections,
                tasks,
                federation,
                engine,
                metrics: Arc::new(Metrics::default()),
                next_client: AtomicU64::new(1),
                connections: AtomicUsize::new(0),
                max_connections,
                open_files,
                refused: AtomicU64::new(0),
                refused_warned_ms: AtomicU64::new(0),
                shutdown,
                tracker,
            }),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// Channel name limits.
    pub fn name_limits(&self) -> NameLimits {
        self.inner.config.name_limits()
    }

    /// Verifies a token; a refusal is counted by reason. Waits for the
    /// network only for a token whose `kid` the cached JWKS lacks (one
    /// fetch, rate-limited by `auth.jwks_min_refetch`).
    pub async fn verify(&self, token: &str) -> Result<Identity, crate::error::AuthError> {
        self.inner
            .verifier
            .verify_fetching(token)
            .await
            .inspect_err(|reason| {
                self.inner.metrics.auth_failed(*reason);
            })
    }

    /// Checks tokens; keeps the JWKS fresh once started.
    pub(crate) fn verifier(&self) -> &Verifier {
        &self.inner.verifier
    }

    /// Counters for `/metrics` and `/api/stats`.
    pub(crate) fn metrics(&self) -> &Arc<Metrics> {
        &self.inner.metrics
    }

    /// Write coalescing under overload (`websocket.coalesce_interval`).
    pub(crate) fn pacer(&self) -> &Arc<Pacer> {
        self.inner.channels.pacer()
    }

    /// Whether `key` is one of the configured admin API keys.
    pub(crate) fn is_admin_key(&self, key: &str) -> bool {
        self.inner
            .config
            .auth
            .admin_keys
            .iter()
            .any(|k| !k.is_empty() && constant_time_eq(k.as_bytes(), key.as_bytes()))
    }

    /// Subscriptions and fan-out.
    pub(crate) fn channels(&self) -> &Arc<ChannelManager> {
        &self.inner.channels
    }

    /// Task routing.
    pub fn tasks(&self) -> &Tasks {
        &self.inner.tasks
    }

    /// Request/reply calls.
    pub(crate) fn calls(&self) -> &Arc<Calls> {
        &self.inner.calls
    }

    /// Links to peer hubs.
    pub(crate) fn federation(&self) -> &Arc<Federation> {
        &self.inner.federation
    }

    /// Where cross-connection state lives (memory or Redis): publishing
    /// with confirmation, subscribing with recovery, history, presence.
    pub fn engine(&self) -> &Engine {
        &self.inner.engine
    }

    /// Whether the hub can serve requests: not shutting down, its engine
    /// reachable, and a configured JWKS fetched at least once.
    pub fn is_ready(&self) -> bool {
        !self.is_shutting_down() && self.inner.engine.is_ready() && self.inner.verifier.keys_ready()
    }

    /// Makes an authenticated connection reachable for direct messages
    /// until the returned guard is dropped; dropping it also hands back
    /// any task the connection held.
    pub(crate) fn register_connection(&self, subscriber: &Arc<Subscriber>) -> ConnectionEntry {
        self.inner
            .live
            .insert(subscriber.id, Arc::clone(subscriber));
        ConnectionEntry {
            hub: self.clone(),
            id: subscriber.id,
        }
    }

    /// A fresh connection id.
    pub(crate) fn next_client_id(&self) -> u64 {
        self.inner.next_client.fetch_add(1, Ordering::Relaxed)
    }

    /// Publishes `data` on `channel` (permissions already checked) without
    /// waiting; returns the event and how many of this node's connections
    /// it was queued for (0 on the Redis engine, which delivers it when it
    /// comes back). Clients' publishes use the engine's
    /// [`publish`](Engine::publish), which waits and can refuse.
    pub fn publish(&self, channel: ChannelName, data: Value) -> (Arc<Event>, usize) {
        self.inner.channels.publish_data(channel, data)
    }

    /// May `identity` publish to `channel`? Its permissions, widened for
    /// channels whose namespace lists its client type in
    /// `allow_publish_by` (the token's claims still narrow).
    pub(crate) fn check_publish(
        &self,
        identity: &Identity,
        channel: &ChannelName,
    ) -> Result<(), RequestError> {
        crate::router::reserved::check_not_reserved(channel)?;
        let granted = self
            .inner
            .channels
            .namespaces()
            .resolve(channel)
            .is_some_and(|ns| ns.allows_publish_by(identity.client_type));
        identity.permissions.check_publish_granted(channel, granted)
    }

    /// Parses a channel name with this hub's limits.
    pub fn channel(&self, name: &str) -> Result<ChannelName, RequestError> {
        Ok(ChannelName::parse(name, &self.name_limits())?)
    }

    /// The shutdown signal.
    pub fn shutdown_token(&self) -> &CancellationToken {
        &self.inner.shutdown
    }

    /// Whether shutdown has begun.
    pub fn is_shutting_down(&self) -> bool {
        self.inner.shutdown.is_cancelled()
    }

    /// Tracks connection tasks for shutdown.
    pub fn tracker(&self) -> &TaskTracker {
        &self.inner.tracker
    }

    /// The connection limit in force: `limits.max_connections`, or the
    /// default derived from the open-file limit.
    pub fn max_connections(&self) -> usize {
        self.inner.max_connections
    }

    /// Logs the connection limit in force and where it came from.
    pub(crate) fn log_connection_limit(&self) {
        let max = self.inner.max_connections;
        match (
            self.inner.config.limits.max_connections,
            self.inner.open_files,
        ) {
            (Some(_), _) => tracing::info!(max, "connection limit (limits.max_connections)"),
            (None, Some(open_files)) => tracing::info!(
                max,
                open_files,
                "connection limit (from the open-file limit; set limits.max_connections to choose)"
            ),
            (None, None) => tracing::info!(max, "connection limit (no open-file limit)"),
        }
    }

    /// Reserves a connection slot, or `None` at `limits.max_connections`
    /// (counted, and warned about at most once every
    /// [`REFUSAL_WARNING_PERIOD_MS`]).
    pub(crate) fn try_connect(&self) -> Option<ConnectionSlot> {
        let max = self.inner.max_connections;
        let prev = self.inner.connections.fetch_add(1, Ordering::AcqRel);
        if prev >= max {
            self.inner.connections.fetch_sub(1, Ordering::AcqRel);
            self.inner.metrics.rejected("limit");
            self.warn_refused(max);
            return None;
        }
        Some(ConnectionSlot { hub: self.clone() })
    }

    fn warn_refused(&self, max: usize) {
        self.inner.refused.fetch_add(1, Ordering::Relaxed);
        let now = now_ms();
        let last = self.inner.refused_warned_ms.load(Ordering::Relaxed);
        if now.saturating_sub(last) < REFUSAL_WARNING_PERIOD_MS
            || self
                .inner
                .refused_warned_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        let refused = self.inner.refused.swap(0, Ordering::Relaxed);
        tracing::warn!(
            max,
            refused,
            "refused connections at the connection limit: raise limits.max_connections \
             (and the open-file limit, ulimit -n) to allow more"
        );
    }

    /// May a connection from `ip` open now (`limits.connect`)? A refusal is
    /// counted, and logged by [`Hub::run_gate_sweeper`].
    pub(crate) fn admit(&self, ip: std::net::IpAddr) -> bool {
        let ok = self.inner.gate.admit(ip);
        if !ok {
            self.inner.metrics.rejected("rate_limited");
        }
        ok
    }

    /// Reserves a place among sockets still authenticating, or `None` at
    /// `limits.max_unauthenticated`.
    pub(crate) fn unauthenticated(&self) -> Option<Unauthenticated> {
        let place = self.inner.gate.unauthenticated();
        if place.is_none() {
            self.inner.metrics.rejected("unauthenticated");
        }
        place
    }

    /// Every 10 s: forgets idle per-IP buckets and logs how many connection
    /// attempts the per-IP limit refused meanwhile. Sleeps while no address
    /// has a bucket (an idle hub; loopback is exempt by default).
    pub(crate) async fn run_gate_sweeper(self, stop: CancellationToken) {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(10));
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            let refused = self.inner.gate.sweep();
            if refused > 0 {
                tracing::warn!(
                    refused,
                    "connection attempts refused by limits.connect.per_ip"
                );
            }
            if self.inner.gate.is_empty() {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = self.inner.gate.until_tracked() => tick.reset(),
                }
            }
        }
    }

    /// Everything `/api/stats` and `/metrics` show, read now: the metrics'
    /// counters, this node's router, workers and federation, and the hub's
    /// tasks (on the Redis engine, every node's; none while Redis cannot be
    /// reached — `/readyz` says so — so a scrape still
    /// answers).
    pub async fn stats(&self) -> Stats {
        let channels = &self.inner.channels;
        let tasks = &self.inner.tasks;
        let report = tasks
            .report(MAX_LISTED_DEAD)
            .await
            .inspect_err(|err| tracing::debug!(error = %err.message, "stats without tasks"))
            .unwrap_or_default();
        let summary = report.summary;
        let fanout = &channels.stats;
        let pacer = channels.pacer();
        let mut by_type: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
        for ((kind, state), n) in summary.counts {
            *by_type
                .entry(kind)
                .or_default()
                .entry(state.to_string())
                .or_default() += n;
        }
        let state = HubState {
            connections: self.connection_count(),
            pattern_counts: channels.pattern_counts(),
            subscriptions: channels.subscription_count(),
            events: EventStats {
                published: fanout.published.load(Ordering::Relaxed),
                delivered: fanout.delivered.load(Ordering::Relaxed),
                slow_consumers: fanout.slow_consumers.load(Ordering::Relaxed),
                coalescing: pacer.overloaded(),
                coalesced_wakeups: pacer.held_wakeups(),
                batch_seconds: pacer.batch().unwrap_or_default().as_secs_f64(),
            },
            tasks: TaskStats {
                by_type,
                waiting: summary.waiting,
                dispatch_wait: tasks.dispatch_wait().snapshot(),
                dead: report.dead,
            },
            workers: tasks.local_workers(),
            federation: self.inner.federation.view(),
            calls: self.inner.calls.view(),
            jwks_refreshes: self.inner.verifier.jwks_refreshes(),
        };
        Stats::gather(&self.inner.metrics, state)
    }

    /// Live connections.
    pub fn connection_count(&self) -> usize {
        self.inner.connections.load(Ordering::Acquire)
    }

    /// This hub's id, as its federation peers know it (kept in
    /// `<data_dir>/hub_id`).
    pub fn hub_id(&self) -> &str {
        self.inner.federation.hub_id()
    }

    /// The links to peer hubs and their counters (`GET /api/federation`).
    pub fn federation_view(&self) -> FederationView {
        self.inner.federation.view()
    }

    /// Closes the link to peer `name` (it is redialed with backoff, or the
    /// peer redials); false when no link is up.
    pub fn disconnect_peer(&self, name: &str) -> bool {
        self.inner.federation.disconnect(name)
    }
}

/// Hooks for tests (`test-hooks` feature only; not a supported API).
#[cfg(feature = "test-hooks")]
#[doc(hidden)]
impl Hub {
    /// Call replies dropped because their call had ended (deadline,
    /// cancel, caller gone).
    pub fn late_call_replies(&self) -> u64 {
        self.calls().late_replies()
    }

    /// Overloads the hub for the next `ticks` pacer ticks, whatever the
    /// runtime says, so writes coalesce.
    pub fn pacer_overload_for(&self, ticks: u32) {
        self.pacer().overload_for(ticks);
    }

    /// Makes the hub batch events for `batch`, whatever the runtime says,
    /// until the pacer's next tick.
    pub fn pacer_batch_for(&self, batch: std::time::Duration) {
        self.pacer().batch_for(batch);
    }

    /// Wakes every connection parked for the next pacer tick now, as a
    /// tick does.
    pub fn pacer_release(&self) {
        self.pacer().release();
    }

    /// Connection wake-ups so far put off to a pacer tick.
    pub fn pacer_held_wakeups(&self) -> u64 {
        self.pacer().held_wakeups()
    }

    /// Whether the pacer's ticker sleeps (nothing delivered lately).
    pub fn pacer_asleep(&self) -> bool {
        self.pacer().asleep()
    }

    /// Task submits that got no answer from Redis in time so far (each is
    /// sent again once Redis answers); 0 on the memory engine.
    pub fn engine_unanswered_submits(&self) -> u64 {
        self.engine()
            .unanswered_writes(crate::engine::UnansweredWrite::Submit)
    }

    /// Publish batches that got no answer from Redis in time so far (each
    /// is sent again once Redis answers); 0 on the memory engine.
    pub fn engine_unanswered_batches(&self) -> u64 {
        self.engine()
            .unanswered_writes(crate::engine::UnansweredWrite::Batch)
    }

    /// Holds every commit of the local task store (`true`) until released
    /// (`false`), as a stalled disk would: what waits for a commit waits.
    pub fn hold_task_commits(&self, hold: bool) {
        self.tasks().hold_commits(hold);
    }

    /// The newest offset and epoch of a history channel as this process's
    /// router keeps it (the memory engine's history).
    pub fn history_position(
        &self,
        channel: &ChannelName,
    ) -> Result<crate::protocol::history::StreamPosition, RequestError> {
        Ok(self
            .inner
            .channels
            .history(channel, None, Some(0))?
            .position)
    }
}

/// The federation runs inside the hub through this interface.
impl Host for Hub {
    fn shutdown_token(&self) -> &CancellationToken {
        Hub::shutdown_token(self)
    }

    fn tracker(&self) -> &TaskTracker {
        Hub::tracker(self)
    }

    fn is_shutting_down(&self) -> bool {
        Hub::is_shutting_down(self)
    }

    fn next_client_id(&self) -> u64 {
        Hub::next_client_id(self)
    }

    fn register_connection(&self, subscriber: &Arc<Subscriber>) -> Box<dyn Send + Sync> {
        Box::new(Hub::register_connection(self, subscriber))
    }

    fn federation(&self) -> &Arc<Federation> {
        Hub::federation(self)
    }
}

impl Hub {
    /// This hub as the federation holds it.
    pub(crate) fn host(&self) -> HubRef {
        Arc::new(self.clone())
    }
}

/// One of `limits.max_connections`; released on drop.
pub(crate) struct ConnectionSlot {
    hub: Hub,
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.hub.inner.connections.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A live, authenticated connection's entry; removed on drop.
pub(crate) struct ConnectionEntry {
    hub: Hub,
    id: u64,
}

impl Drop for ConnectionEntry {
    fn drop(&mut self) {
        self.hub.inner.live.remove(&self.id);
        self.hub.inner.calls.endpoint_gone(self.id);
        self.hub
            .inner
            .tasks
            .connection_closed(self.id, &self.hub.inner.tracker);
    }
}

/// Compares secrets without an early exit, so timing does not reveal a prefix.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
