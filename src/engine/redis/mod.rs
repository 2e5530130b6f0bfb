//! The Redis engine: several chanhub nodes sharing one Redis act as one hub.
//!
//! # Fan-out
//!
//! A publish on any node goes to the Redis pub/sub channel
//! `<prefix>ev:<channel>` (see [`keys`]); every node subscribes to what its
//! own connections want and fans out what arrives with its own subscription
//! index, as for a local publish. The publishing node gets its events back
//! the same way, so every node delivers a channel's events in the one order
//! Redis saw them. Events reach only the nodes with a matching subscription;
//! at 10 nodes an event costs one `PUBLISH` plus one message per node that
//! wants it, and nothing for the others.
//!
//! Exactly once: a node whose subscriptions overlap (`session:*` and
//! `session:42`) gets one copy per matching Redis subscription. Every node
//! publishes through one connection, in order, stamping each event with its
//! node id and a sequence number that only grows; Redis hands a subscriber
//! all copies of one `PUBLISH` before anything published later, so a
//! receiver drops any copy whose sequence is not above the last it took
//! from that node.
//!
//! # History
//!
//! Channels of a namespace with history are numbered in Redis by a Lua
//! script that, atomically, takes the next offset from a hash holding the
//! channel's epoch, appends the event to a stream (entry id `<offset>-0`,
//! trimmed to `history_size`) and publishes it. The epoch is created once
//! (`HSETNX`) and only changes when Redis lost the hash, so a client
//! recovers by offset on any node.
//!
//! # Redis down
//!
//! The node keeps its connections. `/readyz` says not ready, and publishes
//! are refused with `engine_unavailable`, until the health check and the
//! pub/sub connection (with every subscription restored) are back. Other
//! nodes may publish meanwhile: before it reads its pub/sub connection
//! again, the node delivers what its history channels missed from their
//! streams (see [`catchup`]).

mod calls;
mod catchup;
mod fanout;
mod history;
pub(crate) mod keys;
mod presence;
pub(crate) mod recovery;
mod tasks;
mod upstream;
mod workers;

pub(crate) use self::tasks::{NewTask, TaskRecord};

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::AsyncConnectionConfig;
use redis::aio::MultiplexedConnection;
use tokio::sync::{Notify, mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use self::fanout::{Interest, Outgoing};
use self::keys::Keys;
use crate::engine::config::RedisConfig;
use crate::error::{ConfigError, ErrorCode, RequestError};
use crate::protocol::cluster::NodeMessage;
use crate::router::manager::ChannelManager;

/// Events waiting for the publisher connection; beyond this, publishes are
/// refused rather than queued without bound.
const PUBLISH_QUEUE: usize = 16 * 1024;

/// The Redis engine of one node.
pub(crate) struct RedisEngine {
    /// `[redis]`.
    config: RedisConfig,
    /// Opens connections.
    client: redis::Client,
    /// Key and channel names.
    keys: Keys,
    /// This node's id, in every event it publishes (random per start).
    node: u64,
    /// Into the publisher task.
    queue: mpsc::Sender<Outgoing>,
    /// The publisher task's end, taken when it starts.
    queue_rx: Mutex<Option<mpsc::Receiver<Outgoing>>>,
    /// The pub/sub connection is up with every wanted subscription placed.
    pubsub_up: AtomicBool,
    /// The last health check (or command) got an answer.
    commands_up: AtomicBool,
    /// What the node's connections want, and what Redis confirmed.
    interest: Mutex<Interest>,
    /// Wakes the pub/sub task when `interest` changed.
    interest_changed: Notify,
    /// Bumped whenever subscriptions were confirmed (or the connection
    /// dropped), for subscribes waiting on their Redis subscription.
    confirmed: watch::Sender<u64>,
    /// Connections for reads, each made on first use and dropped on error.
    /// A std mutex: held to clone or replace a handle, never across an await.
    pool: Vec<Mutex<Option<MultiplexedConnection>>>,
    /// Round-robin over `pool`.
    next: AtomicUsize,
    /// Bumped each time Redis is found unreachable: the publisher drops a
    /// connection made in an older generation instead of finding out with
    /// a failed publish after Redis came back.
    generation: AtomicU64,
    /// The heartbeat found its key gone: the presence sweep writes this
    /// node's members again.
    heartbeat_lost: AtomicBool,
    /// Wakes this node's task dispatcher: a task was queued somewhere.
    task_wake: Notify,
    /// Submits and publish batches Redis did not answer in time (each
    /// try); each was sent again once Redis answered, or given up.
    unanswered: [AtomicU64; 2],
    /// The task and call sides of this node, for messages other nodes
    /// send it.
    inboxes: Mutex<Vec<std::sync::Weak<dyn NodeInbox>>>,
}

impl RedisEngine {
    /// An engine for `config` (no connection is made until [`start`]).
    ///
    /// [`start`]: RedisEngine::start
    pub(crate) fn new(config: &RedisConfig) -> Result<Arc<RedisEngine>, ConfigError> {
        let client =
            redis::Client::open(config.url.as_str()).map_err(|e| ConfigError::Invalid {
                key: "redis.url".into(),
                problem: e.to_string(),
            })?;
        let (queue, queue_rx) = mpsc::channel(PUBLISH_QUEUE);
        let keys = Keys::new(&config.key_prefix);
        let node: u64 = rand::random();
        // Always wanted: task wake-ups, and this node's own messages.
        let mut interest = Interest::default();
        for sub in [
            keys::RedisSub::Channel(keys.wake()),
            keys::RedisSub::Channel(keys.node(node)),
        ] {
            interest.desired.insert(sub, 1);
        }
        Ok(Arc::new(RedisEngine {
            config: config.clone(),
            client,
            keys,
            node,
            queue,
            queue_rx: Mutex::new(Some(queue_rx)),
            pubsub_up: AtomicBool::new(false),
            commands_up: AtomicBool::new(false),
            interest: Mutex::new(interest),
            interest_changed: Notify::new(),
            confirmed: watch::Sender::new(0),
            pool: (0..config.pool_size).map(|_| Mutex::new(None)).collect(),
            next: AtomicUsize::new(0),
            generation: AtomicU64::new(0),
            heartbeat_lost: AtomicBool::new(false),
            task_wake: Notify::new(),
            unanswered: [AtomicU64::new(0), AtomicU64::new(0)],
            inboxes: Mutex::new(Vec::new()),
        }))
    }

    /// Starts the publisher, the pub/sub reader and the health check; they
    /// stop with `shutdown`.
    pub(crate) fn start(
        self: &Arc<Self>,
        channels: Arc<ChannelManager>,
        tracker: &TaskTracker,
        shutdown: CancellationToken,
    ) {
        let queue = self
            .queue_rx
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(queue) = queue {
            tracker.spawn(Arc::clone(self).run_publisher(queue, shutdown.clone()));
        }
        tracker.spawn(Arc::clone(self).run_pubsub(Arc::clone(&channels), shutdown.clone()));
        tracker.spawn(Arc::clone(self).run_presence_sweep(channels, shutdown.clone()));
        tracker.spawn(Arc::clone(self).run_health(shutdown));
    }

    /// Whether Redis answers and every subscription is in place: `/readyz`.
    pub(crate) fn is_ready(&self) -> bool {
        self.pubsub_up.load(Ordering::Acquire) && self.commands_up.load(Ordering::Acquire)
    }

    /// `Ok` when ready, else the error a refused publish or submit gets.
    pub(crate) fn check_ready(&self) -> Result<(), RequestError> {
        if self.is_ready() {
            Ok(())
        } else {
            Err(unavailable("Redis is unreachable"))
        }
    }

    /// This node's id in the cluster (random per start).
    pub(crate) fn node_id(&self) -> String {
        format!("{:016x}", self.node)
    }

    /// Connects a side of this node (tasks, calls) to the messages other
    /// nodes send it (once each, when the hub is built).
    pub(crate) fn add_inbox(&self, inbox: std::sync::Weak<dyn NodeInbox>) {
        self.inboxes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(inbox);
    }

    /// Hands a message from another node to every side of this one.
    fn to_inboxes(&self, payload: &[u8]) {
        let msg = match NodeMessage::from_bytes(payload) {
            Ok(msg) => msg,
            Err(err) => {
                tracing::warn!(error = %err, "ignoring a malformed node message");
                return;
            }
        };
        let inboxes: Vec<_> = self
            .inboxes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter_map(std::sync::Weak::upgrade)
            .collect();
        for inbox in inboxes {
            inbox.on_node_message(&msg);
        }
    }

    /// Resolves when some node announced a queued task.
    pub(crate) async fn task_woken(&self) {
        self.task_wake.notified().await;
    }

    /// Tells every node (this one too) that tasks are queued.
    pub(crate) fn announce_tasks(&self) {
        self.publish_raw(self.keys.wake(), Vec::new());
    }

    /// This node's id as a number.
    pub(crate) fn node(&self) -> u64 {
        self.node
    }

    /// Opens a command connection.
    async fn connect(&self) -> Result<MultiplexedConnection, RequestError> {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.config.timeout))
            .set_response_timeout(Some(self.config.timeout));
        let connect = self
            .client
            .get_multiplexed_async_connection_with_config(&config);
        match tokio::time::timeout(self.config.timeout, connect).await {
            Ok(Ok(conn)) => Ok(conn),
            Ok(Err(err)) => Err(self.lost(&err.to_string())),
            Err(_) => Err(self.lost("connection timed out")),
        }
    }

    /// A read connection from the pool.
    async fn reader(&self) -> Result<MultiplexedConnection, RequestError> {
        let slot = self.next.fetch_add(1, Ordering::Relaxed) % self.pool.len();
        let held = self.pool[slot]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if let Some(conn) = held {
            return Ok(conn);
        }
        let conn = self.connect().await?;
        *self.pool[slot].lock().unwrap_or_else(|p| p.into_inner()) = Some(conn.clone());
        Ok(conn)
    }

    /// Runs a read on a pool connection, bounded by `redis.timeout`; an
    /// error drops the connection and marks Redis down.
    async fn read<T: redis::FromRedisValue>(
        &self,
        pipe: &redis::Pipeline,
    ) -> Result<T, RequestError> {
        let mut conn = self.reader().await?;
        match tokio::time::timeout(self.config.timeout, pipe.query_async::<T>(&mut conn)).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(err)) => Err(self.lost(&err.to_string())),
            Err(_) => Err(self.lost("command timed out")),
        }
    }

    /// Every key under the prefix whose rest matches `glob` (a Redis glob,
    /// e.g. `task:*`): a SCAN to the end, 1,000 keys a step. Linear in the
    /// keys of the database; for operators' views, never a hot path.
    async fn scan_keys(&self, glob: &str) -> Result<Vec<String>, RequestError> {
        let pattern = format!("{}{glob}", tasks::glob_escape(&self.config.key_prefix));
        let mut keys = Vec::new();
        let mut cursor: u64 = 0;
        loop {
            let mut pipe = redis::pipe();
            pipe.cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(1000);
            let ((next, batch),): ((u64, Vec<String>),) = self.read(&pipe).await?;
            keys.extend(batch);
            cursor = next;
            if cursor == 0 {
                return Ok(keys);
            }
        }
    }

    /// Marks Redis down after a failed command; the health check brings
    /// it back.
    fn lost(&self, why: &str) -> RequestError {
        self.generation.fetch_add(1, Ordering::AcqRel);
        for slot in &self.pool {
            *slot.lock().unwrap_or_else(|p| p.into_inner()) = None;
        }
        if self.commands_up.swap(false, Ordering::AcqRel) {
            tracing::warn!(error = why, "Redis unreachable: refusing publishes");
        }
        unavailable(&format!("Redis is unreachable: {why}"))
    }

    /// Pings Redis every `health_interval` until `shutdown`.
    async fn run_health(self: Arc<Self>, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(self.config.health_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Logged once per outage, not once per check.
        let mut warned = false;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            // The check doubles as this node's presence heartbeat.
            let mut ping = redis::pipe();
            ping.cmd("PING");
            ping.cmd("SET")
                .arg(self.alive_key(self.node))
                .arg(1)
                .arg("PX")
                .arg(self.config.presence_ttl.as_millis() as u64)
                .arg("GET");
            ping.cmd("SADD")
                .arg(self.nodes_key())
                .arg(self.node_id())
                .ignore();
            match self.read::<(String, Option<String>)>(&ping).await {
                Ok((_, previous)) => {
                    if previous.is_none() {
                        // First beat, or the key expired (Redis lost it, or
                        // this node was too slow): other nodes may have
                        // swept this node's members.
                        self.heartbeat_lost.store(true, Ordering::Release);
                    }
                    if !self.commands_up.swap(true, Ordering::AcqRel) {
                        tracing::info!(url = %self.config.url, node = %self.node_id(), "Redis answers");
                    }
                    warned = false;
                }
                Err(err) if !warned => {
                    tracing::warn!(url = %self.config.url, error = %err, "Redis unreachable: not ready");
                    warned = true;
                }
                Err(_) => {}
            }
        }
    }

    /// How long a write Redis may have run without answering (a submit, a
    /// batch of publishes) is sent again, the same, once Redis answers:
    /// four `redis.timeout`s from the first try.
    pub(crate) fn retry_for(&self) -> Duration {
        self.config.timeout * 4
    }

    /// Counts a write Redis did not answer in time.
    fn write_unanswered(&self, write: Write) {
        self.unanswered[write as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Writes of a kind Redis did not answer in time so far (tests).
    #[cfg(feature = "test-hooks")]
    pub(crate) fn unanswered_writes(&self, write: Write) -> u64 {
        self.unanswered[write as usize].load(Ordering::Relaxed)
    }

    /// Waits until the engine is ready or `timeout` passed; returns
    /// whether it is ready (tests and diagnostics).
    pub(crate) async fn wait_ready(&self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut confirmed = self.confirmed.subscribe();
        while !self.is_ready() {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return false;
            }
            let _ = tokio::time::timeout(left.min(Duration::from_millis(50)), confirmed.changed())
                .await;
        }
        true
    }
}

/// Where the engine hands the messages other nodes sent this node (its
/// `<prefix>node:<id>` channel): implemented by the cluster task service
/// and the cluster calls, which sit above the engine. Each gets every
/// message and takes its own kinds.
pub(crate) trait NodeInbox: Send + Sync {
    /// One message, as the sending node published it.
    fn on_node_message(&self, msg: &NodeMessage);
}

/// The writes a node sends again when Redis did not answer them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Write {
    /// A task submit.
    Submit = 0,
    /// A batch of publishes (and the other writes of the publisher).
    Batch = 1,
}

/// How a command to Redis went wrong.
pub(super) enum Failed {
    /// No answer (a timeout, a dropped connection, no connection): Redis
    /// may or may not have run it.
    Unanswered(RequestError),
    /// Redis answered with an error: it did not run it (or ran a script
    /// to its error).
    Answered(RequestError),
}

impl Failed {
    pub(super) fn into_error(self) -> RequestError {
        match self {
            Failed::Unanswered(err) | Failed::Answered(err) => err,
        }
    }
}

/// Whether a command error means Redis gave no answer (the connection
/// failed or timed out) rather than an error reply.
pub(super) fn is_unanswered(err: &redis::RedisError) -> bool {
    err.is_io_error()
        || err.is_connection_dropped()
        || err.is_connection_refusal()
        || err.is_timeout()
}

/// The error of a request the engine cannot serve now.
pub(crate) fn unavailable(message: &str) -> RequestError {
    RequestError::new(ErrorCode::EngineUnavailable, message)
}
