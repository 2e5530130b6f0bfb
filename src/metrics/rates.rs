//! Traffic rates over the last minutes, for the dashboard's chart: one
//! task samples the cumulative counters every [`RATE_INTERVAL`] and keeps
//! the last [`RATE_SAMPLES`] samples, so a freshly opened dashboard shows
//! history at once.
//!
//! On an idle hub the sampler sleeps rather than wake the machine every
//! interval to record zeros: once [`IDLE_SAMPLES`] samples in a row found
//! the counters unchanged, nobody read the chart meanwhile, and the pacer's
//! ticker sleeps too (nothing delivered for a while), it waits for the
//! next delivery or the next read of the chart, then samples at once. That
//! sample closes the gap: the rates over it are what the counters moved in
//! it (nothing, or what woke the hub, spread over the gap). Inbound frames
//! that deliver nothing (pings, subscribes) do not wake it; they show in
//! the sample that ends the gap, averaged over it.

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

/// Unchanged samples in a row after which an unwatched sampler may sleep
/// (the chart then ends on a zero rate).
const IDLE_SAMPLES: u32 = 2;

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

impl Sample {
    /// Whether no counter moved between `self` and `later`.
    fn same_counts(&self, later: &Sample) -> bool {
        (
            self.published,
            self.delivered,
            self.messages_in,
            self.messages_out,
        ) == (
            later.published,
            later.delivered,
            later.messages_in,
            later.messages_out,
        )
    }
}

/// The kept samples, oldest first.
#[derive(Debug, Default)]
pub(super) struct RateLog {
    samples: VecDeque<Sample>,
    /// The rates were read since the last sample (someone watches the
    /// chart: keep sampling).
    read: bool,
}

impl RateLog {
    /// Keeps `sample`; returns whether it repeats the previous one's
    /// counters.
    fn push(&mut self, sample: Sample) -> bool {
        let unchanged = self
            .samples
            .back()
            .is_some_and(|last| last.same_counts(&sample));
        if self.samples.len() > RATE_SAMPLES {
            self.samples.pop_front();
        }
        self.samples.push_back(sample);
        unchanged
    }

    /// The rates for a reader (`/api/stats`), noting that someone looked.
    pub(super) fn read(&mut self) -> Vec<RateSample> {
        self.read = true;
        self.samples()
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
/// [`RATE_INTERVAL`] until `shutdown`, sleeping while the hub is idle and
/// nobody reads the rates.
pub(crate) async fn sample_rates(
    metrics: Arc<Metrics>,
    channels: Arc<ChannelManager>,
    shutdown: CancellationToken,
) {
    let pacer = channels.pacer();
    let mut tick = tokio::time::interval(RATE_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut unchanged = 0;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tick.tick() => {}
        }
        let sample = take(&metrics, &channels.stats);
        let watched = {
            let mut log = super::locked(&metrics.rates);
            unchanged = if log.push(sample) { unchanged + 1 } else { 0 };
            std::mem::take(&mut log.read)
        };
        if watched || unchanged < IDLE_SAMPLES {
            continue;
        }
        let wanted = metrics.rates_wanted.notified();
        tokio::pin!(wanted);
        // Registered before the check: a read after it is not missed.
        wanted.as_mut().enable();
        if super::locked(&metrics.rates).read {
            continue;
        }
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            woken = pacer.until_woken() => {
                if !woken {
                    // Events are being delivered (or pacing is off): the
                    // pacer gives no idle signal, so keep sampling.
                    continue;
                }
            }
            _ = &mut wanted => {}
        }
        tick.reset_immediately();
        unchanged = 0;
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
    fn a_sample_knows_whether_the_counters_moved() {
        let mut log = RateLog::default();
        assert!(
            !log.push(sample(1000, 5)),
            "the first has nothing to repeat"
        );
        assert!(log.push(sample(3000, 5)));
        assert!(!log.push(sample(5000, 6)));
        let mut moved_in = sample(7000, 6);
        moved_in.messages_in = 1;
        assert!(!log.push(moved_in));
    }

    #[test]
    fn reading_the_rates_marks_them_watched() {
        let mut log = RateLog::default();
        log.push(sample(1000, 0));
        assert!(!log.read);
        assert!(log.read().is_empty());
        assert!(log.read);
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
