//! The `[calls]` section of the configuration: call deadlines and the
//! per-method wait queue. Defined beside the code that applies it;
//! [`crate::config`] gathers it into the whole configuration.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::ConfigError;

/// Request/reply call settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CallsConfig {
    /// Deadline of a call that gives no `timeoutMs`.
    #[serde(with = "humantime_serde")]
    pub default_timeout: Duration,
    /// Longest deadline a call may ask for; longer `timeoutMs` are capped.
    #[serde(with = "humantime_serde")]
    pub max_timeout: Duration,
    /// Calls of one method waiting while every server of it is at its
    /// concurrency; beyond this, calls get `busy`. 0: none wait.
    pub max_waiting: usize,
    /// Most concurrency one serving connection may ask for.
    pub max_concurrency: u32,
}

impl Default for CallsConfig {
    fn default() -> Self {
        CallsConfig {
            default_timeout: Duration::from_secs(30),
            max_timeout: Duration::from_secs(300),
            max_waiting: 1000,
            max_concurrency: 1024,
        }
    }
}

impl CallsConfig {
    /// Checks that the timeouts make sense.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key: &str, problem: &str| ConfigError::Invalid {
            key: format!("calls.{key}"),
            problem: problem.into(),
        };
        if self.default_timeout.is_zero() {
            return Err(invalid("default_timeout", "must be more than 0"));
        }
        if self.max_timeout < self.default_timeout {
            return Err(invalid("max_timeout", "must be at least default_timeout"));
        }
        if self.max_concurrency == 0 {
            return Err(invalid("max_concurrency", "must be at least 1"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate_and_bad_values_are_refused() {
        assert!(CallsConfig::default().validate().is_ok());
        let short_max = CallsConfig {
            max_timeout: Duration::from_secs(1),
            ..CallsConfig::default()
        };
        assert!(short_max.validate().is_err());
        let zero = CallsConfig {
            default_timeout: Duration::ZERO,
            ..CallsConfig::default()
        };
        assert!(zero.validate().is_err());
    }
}
