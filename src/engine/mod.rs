//! Engines: where the hub's cross-connection state lives, behind one seam.
//!
//! - **memory** (the default): everything in this process. Publishing,
//!   history and presence are the router's own per-channel state
//!   ([`crate::channels`]); its correctness argument — recovery under the
//!   per-channel locks — is in `channels/state.rs`.
//! - **redis** ([`RedisEngine`]): several nodes sharing one Redis act as one
//!   hub. Publishes go to Redis pub/sub and come back to every node whose
//!   connections want them (the publishing node included), so each node
//!   fans out in the order Redis saw the events; history channels are
//!   numbered and kept in Redis, so a client recovers by offset on any node.
//!   Its correctness argument — subscribe, wait until Redis confirmed, then
//!   read and filter — is in `redis/recovery.rs`.
//!
//! The engine is chosen once, when the hub is built ([`Engine::new`]).
//! Everything outside `engine/` and `tasks/` talks to one [`Engine`] value
//! and never asks which one runs; the choice is matched here, in one file
//! (tokio's `scheduler::Handle` is the model: an enum, static dispatch, no
//! trait object on the fan-out path). The Redis engine plugs into the
//! router through [`Upstream`](crate::router::upstream::Upstream), so the
//! fan-out path pays one `OnceLock` load per publish and nothing per
//! subscriber to learn that there is none.

pub(crate) mod config;
pub(crate) mod redis;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub(crate) use self::config::{EngineKind, RedisConfig};
pub(crate) use self::redis::RedisEngine;
#[cfg(feature = "test-hooks")]
pub(crate) use self::redis::Write as UnansweredWrite;
use crate::channels::{ChannelName, Pattern};
use crate::error::{ConfigError, ErrorCode, RequestError};
use crate::protocol::history::{PresenceInfo, StreamPosition};
use crate::protocol::{Event, now_ms};
use crate::router::manager::{ChannelManager, SubscriptionSet};
use crate::router::{HistoryPage, SubscribeOutcome};

/// The engine a hub runs on, with the router it serves.
pub struct Engine {
    /// This node's subscriptions and fan-out.
    channels: Arc<ChannelManager>,
    /// Which engine.
    kind: Kind,
}

/// The engines.
enum Kind {
    /// Everything in this process.
    Memory,
    /// A cluster on Redis.
    Redis(Arc<RedisEngine>),
}

/// Live events a subscriber's writer must drop: channel → the offset up to
/// which the events came from the engine's history first (see
/// `redis/recovery.rs`). Always empty on the memory engine.
pub(crate) type Skip = HashMap<ChannelName, u64>;

impl Engine {
    /// The engine `kind` names (`redis`: how to reach it), plugged into
    /// `channels`.
    pub(crate) fn new(
        kind: EngineKind,
        redis: &RedisConfig,
        channels: Arc<ChannelManager>,
    ) -> Result<Engine, ConfigError> {
        let kind = match kind {
            EngineKind::Memory => Kind::Memory,
            EngineKind::Redis => {
                let engine = RedisEngine::new(redis)?;
                channels.set_upstream(Arc::clone(&engine) as _);
                Kind::Redis(engine)
            }
        };
        Ok(Engine { channels, kind })
    }

    /// Starts the engine's background tasks; they stop with `shutdown`.
    pub(crate) fn start(&self, tracker: &TaskTracker, shutdown: CancellationToken) {
        match &self.kind {
            Kind::Memory => {}
            Kind::Redis(redis) => redis.start(Arc::clone(&self.channels), tracker, shutdown),
        }
    }

    /// The Redis engine, for the cluster task service (`tasks/`) only.
    pub(crate) fn redis(&self) -> Option<&Arc<RedisEngine>> {
        match &self.kind {
            Kind::Memory => None,
            Kind::Redis(redis) => Some(redis),
        }
    }

    /// Whether the engine can serve requests (`/readyz`).
    pub fn is_ready(&self) -> bool {
        match &self.kind {
            Kind::Memory => true,
            Kind::Redis(redis) => redis.is_ready(),
        }
    }

    /// `Ok` when ready, else the error a refused publish or submit gets
    /// (`engine_unavailable`).
    pub(crate) fn check_ready(&self) -> Result<(), RequestError> {
        match &self.kind {
            Kind::Memory => Ok(()),
            Kind::Redis(redis) => redis.check_ready(),
        }
    }

    /// Waits until the engine is ready or `timeout` passed; returns whether
    /// it is ready (tests and diagnostics).
    pub async fn wait_ready(&self, timeout: Duration) -> bool {
        match &self.kind {
            Kind::Memory => true,
            Kind::Redis(redis) => redis.wait_ready(timeout).await,
        }
    }

    /// Writes of a kind to a shared engine that got no answer in time so
    /// far; 0 on the memory engine (tests).
    #[cfg(feature = "test-hooks")]
    pub(crate) fn unanswered_writes(&self, write: UnansweredWrite) -> u64 {
        match &self.kind {
            Kind::Memory => 0,
            Kind::Redis(redis) => redis.unanswered_writes(write),
        }
    }

    /// This node's id in a cluster; `None` when the process is the hub.
    pub fn node_id(&self) -> Option<String> {
        self.redis().map(|redis| redis.node_id())
    }

    /// A client's publish (permissions already checked): returns the event
    /// and how many receivers took it — this node's connections, or in a
    /// cluster, after the engine took it, the nodes that received it.
    /// Refused with `engine_unavailable` while the engine cannot be reached.
    pub async fn publish(
        &self,
        channel: ChannelName,
        data: Value,
    ) -> Result<(Arc<Event>, usize), RequestError> {
        match &self.kind {
            Kind::Memory => Ok(self.channels.publish_data(channel, data)),
            Kind::Redis(redis) => {
                redis.check_ready()?;
                let event = self.channels.new_event(channel, data, now_ms());
                let history = self.channels.history_limits(&event.channel);
                let nodes = redis.publish(&event, history).await?;
                self.channels.published(&event, None);
                Ok((event, nodes))
            }
        }
    }

    /// Subscribes `subs` to `patterns` (validated and permitted) and
    /// recovers, for each `since` channel a new pattern matches, the events
    /// published after that position. Live events the writer must drop
    /// because they came in the replay are added to `skip`.
    pub(crate) async fn subscribe(
        &self,
        subs: &mut SubscriptionSet,
        skip: &mut Skip,
        patterns: &[Pattern],
        since: &BTreeMap<ChannelName, StreamPosition>,
    ) -> SubscribeOutcome {
        match &self.kind {
            Kind::Memory => subs.subscribe(patterns, since),
            Kind::Redis(redis) => {
                redis::recovery::subscribe(redis, &self.channels, subs, skip, patterns, since).await
            }
        }
    }

    /// The history of `channel` (a history namespace): with `since`, up to
    /// `limit` events after it; without, the newest `limit`.
    pub(crate) async fn history(
        &self,
        channel: &ChannelName,
        since: Option<&StreamPosition>,
        limit: Option<usize>,
    ) -> Result<HistoryPage, RequestError> {
        match &self.kind {
            Kind::Memory => self.channels.history(channel, since, limit),
            Kind::Redis(redis) => {
                let limits = self
                    .channels
                    .history_limits(channel)
                    .ok_or_else(|| not_enabled("history", channel))?;
                redis.history(channel, limits, since, limit).await
            }
        }
    }

    /// The members of a presence channel: this node's, or in a cluster,
    /// every live node's.
    pub async fn presence(&self, channel: &ChannelName) -> Result<Vec<PresenceInfo>, RequestError> {
        match &self.kind {
            Kind::Memory => self.channels.presence(channel),
            Kind::Redis(redis) => {
                self.check_presence(channel)?;
                redis.presence(channel).await
            }
        }
    }

    /// (connections, distinct subs) of a presence channel; in a cluster,
    /// over every live node.
    pub async fn presence_stats(
        &self,
        channel: &ChannelName,
    ) -> Result<(usize, usize), RequestError> {
        match &self.kind {
            Kind::Memory => self.channels.presence_stats(channel),
            Kind::Redis(redis) => {
                self.check_presence(channel)?;
                redis.presence_stats(channel).await
            }
        }
    }

    /// `Ok` when `channel`'s namespace has presence.
    fn check_presence(&self, channel: &ChannelName) -> Result<(), RequestError> {
        self.channels
            .namespaces()
            .resolve(channel)
            .filter(|ns| ns.presence)
            .map(|_| ())
            .ok_or_else(|| not_enabled("presence", channel))
    }
}

/// The error for a history or presence request on a channel whose
/// namespace does not keep it.
fn not_enabled(feature: &str, channel: &ChannelName) -> RequestError {
    RequestError::new(
        ErrorCode::BadRequest,
        format!("{channel} has no {feature}: no namespace with {feature} matches it"),
    )
}
