//! The hub: shared state behind a cheap-`Clone` handle. Every connection's
//! session and every HTTP handler holds one.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use serde_json::Value;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::{Identity, Verifier};
use crate::channels::manager::{ChannelManager, Subscriber};
use crate::channels::{ChannelName, NameLimits};
use crate::config::Config;
use crate::error::{ConfigError, RequestError};
use crate::protocol::Event;
use crate::tasks::{Connections, TaskService};

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
    /// Task queues, workers, leases.
    tasks: Arc<TaskService>,
    /// Next connection id.
    next_client: AtomicU64,
    /// Live WebSocket + SSE connections, for `limits.max_connections`.
    connections: AtomicUsize,
    /// Cancelled when the hub starts shutting down; every session selects on it.
    shutdown: CancellationToken,
    /// Every connection's task, so shutdown can wait for them.
    tracker: TaskTracker,
}

impl Hub {
    /// Builds a hub from validated config (loads or creates the token secret).
    pub fn new(config: Config) -> Result<Hub, ConfigError> {
        let verifier = Verifier::from_config(&config)?;
        let channels = Arc::new(ChannelManager::new(config.limits.match_cache));
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
        Ok(Hub {
            inner: Arc::new(Inner {
                config,
                verifier,
                channels,
                live: connections,
                tasks: Arc::new(tasks),
                next_client: AtomicU64::new(1),
                connections: AtomicUsize::new(0),
                shutdown: CancellationToken::new(),
                tracker: TaskTracker::new(),
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

    /// Verifies a token.
    pub fn verify(&self, token: &str) -> Result<Identity, crate::error::AuthError> {
        self.inner.verifier.verify(token)
    }

    /// Whether `key` is one of the configured admin API keys.
    pub fn is_admin_key(&self, key: &str) -> bool {
        self.inner
            .config
            .auth
            .admin_keys
            .iter()
            .any(|k| !k.is_empty() && constant_time_eq(k.as_bytes(), key.as_bytes()))
    }

    /// Subscriptions and fan-out.
    pub fn channels(&self) -> &Arc<ChannelManager> {
        &self.inner.channels
    }

    /// Task routing.
    pub fn tasks(&self) -> &Arc<TaskService> {
        &self.inner.tasks
    }

    /// Makes an authenticated connection reachable for direct messages
    /// until the returned guard is dropped; dropping it also hands back
    /// any task the connection held.
    pub fn register_connection(&self, subscriber: &Arc<Subscriber>) -> ConnectionEntry {
        self.inner
            .live
            .insert(subscriber.id, Arc::clone(subscriber));
        ConnectionEntry {
            hub: self.clone(),
            id: subscriber.id,
        }
    }

    /// A fresh connection id.
    pub fn next_client_id(&self) -> u64 {
        self.inner.next_client.fetch_add(1, Ordering::Relaxed)
    }

    /// Publishes `data` on `channel` (permissions already checked); returns
    /// the event and how many connections it was queued for.
    pub fn publish(&self, channel: ChannelName, data: Value) -> (Arc<Event>, usize) {
        self.inner.channels.publish_data(channel, data)
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

    /// Reserves a connection slot, or `None` at `limits.max_connections`.
    pub fn try_connect(&self) -> Option<ConnectionSlot> {
        let max = self.inner.config.limits.max_connections;
        let prev = self.inner.connections.fetch_add(1, Ordering::AcqRel);
        if prev >= max {
            self.inner.connections.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(ConnectionSlot { hub: self.clone() })
    }

    /// Live connections.
    pub fn connection_count(&self) -> usize {
        self.inner.connections.load(Ordering::Acquire)
    }
}

/// One of `limits.max_connections`; released on drop.
pub struct ConnectionSlot {
    hub: Hub,
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.hub.inner.connections.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A live, authenticated connection's entry; removed on drop.
pub struct ConnectionEntry {
    hub: Hub,
    id: u64,
}

impl Drop for ConnectionEntry {
    fn drop(&mut self) {
        self.hub.inner.live.remove(&self.id);
        self.hub.inner.tasks.connection_closed(self.id);
    }
}

/// Compares secrets without an early exit, so timing does not reveal a prefix.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
