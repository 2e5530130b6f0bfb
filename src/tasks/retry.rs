//! Retry rules: the backoff before a retryable failure is tried again,
//! chosen by task type (`tasks.retry_by_type`, first match wins, else
//! `tasks.retry`). Parsed once when a task service is built, and shared by
//! both task services so a rule means the same on either engine.

use std::time::Duration;

use crate::channels::{ChannelName, NameLimits, Pattern};
use crate::tasks::config::{RetryConfig, TasksConfig};

/// The retry rules of one hub, patterns parsed.
#[derive(Debug, Clone)]
pub(crate) struct RetryRules {
    /// `tasks.retry_by_type`, in order.
    by_type: Vec<(Pattern, RetryConfig)>,
    /// `tasks.retry`: for types no rule matches.
    default: RetryConfig,
}

impl RetryRules {
    /// The rules of `config` (patterns were validated with the config).
    pub(crate) fn new(config: &TasksConfig, limits: &NameLimits) -> RetryRules {
        let by_type = config
            .retry_by_type
            .iter()
            .filter_map(|r| Some((Pattern::parse(&r.pattern, limits).ok()?, r.retry.clone())))
            .collect();
        RetryRules {
            by_type,
            default: config.retry.clone(),
        }
    }

    /// The rule for tasks of type `kind`.
    pub(crate) fn rule(&self, kind: &ChannelName) -> &RetryConfig {
        self.by_type
            .iter()
            .find(|(p, _)| p.matches(kind))
            .map_or(&self.default, |(_, r)| r)
    }

    /// The delay before a task of type `kind` is retried after `attempt`.
    pub(crate) fn backoff(&self, kind: &ChannelName, attempt: u32) -> Duration {
        backoff_delay(self.rule(kind), attempt)
    }
}

/// The retry delay after `attempt` (1-based): exponential, capped, jittered.
pub(crate) fn backoff_delay(rule: &RetryConfig, attempt: u32) -> Duration {
    let exp = attempt.saturating_sub(1).min(30);
    let base = rule.initial.saturating_mul(1u32 << exp).min(rule.max);
    if rule.jitter <= 0.0 {
        return base;
    }
    let factor = 1.0 + rule.jitter * (rand::random::<f64>() * 2.0 - 1.0);
    base.mul_f64(factor.max(0.0)).min(rule.max)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tasks::config::RetryRule;

    fn rule(jitter: f64) -> RetryConfig {
        RetryConfig {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(1),
            jitter,
        }
    }

    #[test]
    fn backoff_doubles_and_is_capped() {
        let r = rule(0.0);
        assert_eq!(backoff_delay(&r, 1), Duration::from_millis(100));
        assert_eq!(backoff_delay(&r, 2), Duration::from_millis(200));
        assert_eq!(backoff_delay(&r, 4), Duration::from_millis(800));
        assert_eq!(backoff_delay(&r, 5), Duration::from_secs(1));
        assert_eq!(backoff_delay(&r, u32::MAX), Duration::from_secs(1));
    }

    #[test]
    fn jitter_stays_within_its_band_and_the_cap() {
        let r = rule(0.5);
        for attempt in 1..12 {
            let base = backoff_delay(&rule(0.0), attempt);
            for _ in 0..50 {
                let d = backoff_delay(&r, attempt);
                assert!(d >= base.mul_f64(0.5) && d <= base.mul_f64(1.5), "{d:?}");
                assert!(d <= r.max);
            }
        }
    }

    #[test]
    fn the_first_matching_type_rule_wins_and_others_get_the_default() {
        let limits = NameLimits::default();
        let slow = RetryConfig {
            initial: Duration::from_secs(5),
            max: Duration::from_secs(60),
            jitter: 0.0,
        };
        let config = TasksConfig {
            retry: rule(0.0),
            retry_by_type: vec![
                RetryRule {
                    pattern: "video:*".into(),
                    retry: slow.clone(),
                },
                RetryRule {
                    pattern: "**".into(),
                    retry: RetryConfig {
                        initial: Duration::from_secs(9),
                        max: Duration::from_secs(60),
                        jitter: 0.0,
                    },
                },
            ],
            ..TasksConfig::default()
        };
        let rules = RetryRules::new(&config, &limits);
        let video = ChannelName::parse("video:encode", &limits).unwrap();
        assert_eq!(rules.backoff(&video, 1), Duration::from_secs(5));
        let other = ChannelName::parse("mail", &limits).unwrap();
        assert_eq!(rules.backoff(&other, 1), Duration::from_secs(9));
        let plain = RetryRules::new(&TasksConfig::default(), &limits);
        assert_eq!(
            plain.rule(&other).initial,
            TasksConfig::default().retry.initial
        );
    }
}
