//! The `[tasks]` section of the configuration: queueing, leases and
//! retries. Defined beside the code that applies it; [`crate::config`]
//! gathers it into the whole configuration.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Task queueing, leases and retries.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TasksConfig {
    /// Tasks waiting (queued or backing off) before submits are refused with
    /// `queue_full`: backpressure instead of unbounded memory.
    pub max_queued: usize,
    /// Lease per attempt when a task gives no `timeoutMs`.
    #[serde(with = "humantime_serde")]
    pub default_timeout: Duration,
    /// Deliveries per task when it gives no `maxAttempts`.
    pub default_max_attempts: u32,
    /// Most slots one worker may register.
    pub max_slots: u32,
    /// How long completed, dead and cancelled tasks stay listed.
    #[serde(with = "humantime_serde")]
    pub retention: Duration,
    /// Backoff before a retryable error is retried.
    pub retry: RetryConfig,
    /// Backoff for task types matching a pattern; the first match wins.
    pub retry_by_type: Vec<RetryRule>,
    /// Keep tasks in `<data_dir>/tasks.redb` so accepted tasks survive a
    /// crash. Off only for throwaway hubs.
    pub durable: bool,
}

/// Exponential backoff: `initial * 2^(attempt-1)`, capped at `max`, scaled
/// by a random factor in `[1 - jitter, 1 + jitter]`, and capped at `max` again.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryConfig {
    /// Delay before the first retry.
    #[serde(with = "humantime_serde")]
    pub initial: Duration,
    /// Longest delay.
    #[serde(with = "humantime_serde")]
    pub max: Duration,
    /// Random spread, 0.0–1.0, so retries of many tasks do not align.
    pub jitter: f64,
}

/// A backoff for the task types that match `pattern`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryRule {
    /// Task-type pattern, e.g. `embedding:*`.
    pub pattern: String,
    /// The backoff for matching types.
    #[serde(flatten)]
    pub retry: RetryConfig,
}

impl Default for TasksConfig {
    fn default() -> Self {
        TasksConfig {
            max_queued: 100_000,
            default_timeout: Duration::from_secs(30),
            default_max_attempts: 3,
            max_slots: 256,
            retention: Duration::from_secs(24 * 3600),
            retry: RetryConfig::default(),
            retry_by_type: Vec::new(),
            durable: true,
        }
    }
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(60),
            jitter: 0.2,
        }
    }
}
