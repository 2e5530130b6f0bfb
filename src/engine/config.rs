//! `engine` and `[redis]`: which engine holds the hub's cross-connection
//! state, and how to reach Redis when it is the cluster engine.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::ConfigError;

/// Which engine holds fan-out between nodes and channel history.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EngineKind {
    /// Everything in this process: one node, no outside service.
    #[default]
    Memory,
    /// Redis: several nodes sharing one Redis act as one hub.
    Redis,
}

impl std::str::FromStr for EngineKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "memory" => Ok(EngineKind::Memory),
            "redis" => Ok(EngineKind::Redis),
            other => Err(format!("{other:?} is not one of memory, redis")),
        }
    }
}

/// How to reach Redis (used when `engine = "redis"`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedisConfig {
    /// `redis://[user:password@]host:port[/db]`.
    pub url: String,
    /// Prefix of every key and pub/sub channel this hub uses, so several
    /// clusters (or other applications) can share one Redis.
    pub key_prefix: String,
    /// Connections for reads (history, recovery, health checks). Publishes
    /// always go through one more, dedicated connection: that is what keeps
    /// a node's events in order.
    pub pool_size: usize,
    /// How often the node checks that Redis answers; `/readyz` turns
    /// not-ready within about this long after Redis stops answering.
    #[serde(with = "humantime_serde")]
    pub health_interval: Duration,
    /// Longest wait for one Redis command or connection attempt.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// A node that stops answering (crashed, cut off) drops out of every
    /// channel's presence within this long: its heartbeat key expires.
    #[serde(with = "humantime_serde")]
    pub presence_ttl: Duration,
}

impl Default for RedisConfig {
    fn default() -> Self {
        RedisConfig {
            url: "redis://127.0.0.1:6379".into(),
            key_prefix: "chanhub:".into(),
            pool_size: 2,
            health_interval: Duration::from_secs(1),
            timeout: Duration::from_secs(2),
            presence_ttl: Duration::from_secs(30),
        }
    }
}

impl RedisConfig {
    /// Checks the values serde cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key: &str, problem: String| {
            Err(ConfigError::Invalid {
                key: key.into(),
                problem,
            })
        };
        if let Err(err) = redis::Client::open(self.url.as_str()) {
            return invalid("redis.url", format!("{:?}: {err}", self.url));
        }
        if self.key_prefix.contains(['*', '?', '[', ']', '\\']) {
            return invalid(
                "redis.key_prefix",
                "must not contain Redis glob characters (* ? [ ] \\)".into(),
            );
        }
        if self.pool_size == 0 {
            return invalid("redis.pool_size", "must be greater than zero".into());
        }
        if self.health_interval.is_zero() {
            return invalid("redis.health_interval", "must be greater than zero".into());
        }
        if self.presence_ttl <= self.health_interval {
            return invalid(
                "redis.presence_ttl",
                "must exceed redis.health_interval (the heartbeat period)".into(),
            );
        }
        if self.timeout.is_zero() {
            return invalid("redis.timeout", "must be greater than zero".into());
        }
        Ok(())
    }
}
