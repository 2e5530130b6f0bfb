//! Traffic rates over the last minutes, for the dashboard's chart: one
//! task samples the cumulative counters every [`RATE_INTERVAL`] and keeps
//! the last [`RATE_SAMPLES`] samples, so a freshly opened dashboard shows
//! history at once.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use super::Metrics;
use crate::protocol::now_ms;
use crate::router::manager::{ChannelManager, FanoutStats};

/// Time between samples.
pub(crate) const RATE_INTERVAL: Duration = Duration::from_secs(2);
/// Samples kept: five minutes.
pub(crate) const RATE_SAMPLES: usize = 150;

/// Cumulative counters at one moment.
#[derive(Debug, Clone, Copy)]
struct Sample {
    at_ms: u64,
    published: u64,
    delivered: u64,
    messages_in: u64,
    messages_out: u64,
}

/// Per-second rates between two samples.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RateSample {
    /// End of the interval, ms since the Unix epoch.
    pub t: u64,
    /// Events published per second.
    pub published: f64,
    /// Deliveries queued per second.
    pub delivered: f64,
    /// Messages received per second (all transports).
    pub messages_in: f64,
    /// Messages sent per second (all transports).
    pub messages_out: f64,
}

/// The kept samples, oldest first.
#[derive(Debug, Default)]
pub(super) struct RateLog {
    samples: VecDeque<Sample>,
}

impl RateLog {
    fn push(&mut self, sample: Sample) {
        if self.samples.len() > RATE_SAMPLES {
            self.samples.pop_front();
        }
        self.samples.push_back(sample);
    }

    /// Rates between consecutive samples.
    pub(super) fn samples(&self) -> Vec<RateSample> {
        self.samples
            .iter()
            .zip(self.samples.iter().skip(1))
            .map(|(a, b)| {
                let secs = (b.at_ms.saturating_sub(a.at_ms) as f64 / 1000.0).max(0.001);
                let rate = |x: u64, y: u64| y.saturating_sub(x) as f64 / secs;
                RateSample {
                    t: b.at_ms,
                    published: rate(a.published, b.published),
                    delivered: rate(a.delivered, b.delivered),
                    messages_in: rate(a.messages_in, b.messages_in),
                    messages_out: rate(a.messages_out, b.messages_out),
                }
            })
            .collect()
    }
}

fn take(metrics: &Metrics, fanout: &FanoutStats) -> Sample {
    let (messages_in, messages_out) = metrics.totals();
    Sample {
        at_ms: now_ms(),
        published: fanout.published.load(Ordering::Relaxed),
        delivered: fanout.delivered.load(Ordering::Relaxed),
        messages_in,
        messages_out,
    }
}

/// Samples the counters of `metrics` and the router's fan-out every
/// [`RATE_INTERVAL`] until `shutdown`.
pub(crate) async fn sample_rates(
    metrics: Arc<Metrics>,
    channels: Arc<ChannelManager>,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(RATE_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tick.tick() => {
                let sample = take(&metrics, &channels.stats);
                super::locked(&metrics.rates).push(sample);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(at_ms: u64, published: u64) -> Sample {
        Sample {
            at_ms,
            published,
            delivered: published * 2,
            messages_in: 0,
            messages_out: 0,
        }
    }

    #[test]
    fn rates_are_per_second_between_samples() {
        let mut log = RateLog::default();
        log.push(sample(1000, 0));
        log.push(sample(3000, 10));
        let rates = log.samples();
        assert_eq!(rates.len(), 1);
        assert_eq!(rates[0].t, 3000);
        assert!((rates[0].published - 5.0).abs() < 1e-9);
        assert!((rates[0].delivered - 10.0).abs() < 1e-9);
    }

    #[test]
    fn keeps_a_bounded_window() {
        let mut log = RateLog::default();
        for i in 0..(RATE_SAMPLES as u64 * 3) {
            log.push(sample(i * 2000, i));
        }
        assert_eq!(log.samples().len(), RATE_SAMPLES);
    }
}
