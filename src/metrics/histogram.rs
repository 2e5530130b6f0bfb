//! A fixed-bucket histogram of durations that records with atomic adds
//! only, so that sessions and the dispatcher can time things without a
//! lock (the `prometheus-client` histogram takes a mutex per observation).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use serde::{Deserialize, Serialize};

/// Upper bounds, in seconds, of the publish-to-write latency buckets:
/// 50 µs to 5 s.
pub(crate) const LATENCY_BUCKETS: &[f64] = &[
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0,
];

/// Upper bounds, in seconds, of the call round-trip buckets: 50 µs to
/// 5 min (the longest deadline by default).
pub(crate) const CALL_BUCKETS: &[f64] = &[
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];

/// Upper bounds, in seconds, of the task dispatch-wait buckets: 1 ms to 10 min.
pub(crate) const WAIT_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 600.0,
];

/// Durations counted into buckets; the sum is kept in nanoseconds.
#[derive(Debug)]
pub(crate) struct Histogram {
    /// Upper bounds in seconds, ascending.
    bounds: &'static [f64],
    /// Upper bounds in nanoseconds, for the comparison on the record path.
    bounds_ns: Box<[u64]>,
    /// Observations per bucket (not cumulative); the last one is `+Inf`.
    counts: Box<[AtomicU64]>,
    /// Sum of all observations, ns.
    sum_ns: AtomicU64,
}

/// A histogram read at one moment, as `/api/stats` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HistogramSnapshot {
    /// Observations.
    pub count: u64,
    /// Their sum in seconds.
    pub sum_seconds: f64,
    /// `(upper bound in seconds, cumulative count)`; the last bound is
    /// `null` (+Inf) in JSON.
    pub buckets: Vec<(Option<f64>, u64)>,
}

impl Histogram {
    /// An empty histogram with these upper bounds (seconds, ascending).
    pub(crate) fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            bounds_ns: bounds.iter().map(|b| (b * 1e9) as u64).collect(),
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_ns: AtomicU64::new(0),
        }
    }

    /// Records one observation: two relaxed atomic adds.
    pub(crate) fn record(&self, value: Duration) {
        let ns = u64::try_from(value.as_nanos()).unwrap_or(u64::MAX);
        let index = self.bounds_ns.partition_point(|&b| b < ns);
        self.counts[index].fetch_add(1, Ordering::Relaxed);
        self.sum_ns.fetch_add(ns, Ordering::Relaxed);
    }

    /// The current values.
    pub(crate) fn snapshot(&self) -> HistogramSnapshot {
        let mut cumulative = 0;
        let buckets = self
            .counts
            .iter()
            .enumerate()
            .map(|(i, c)| {
                cumulative += c.load(Ordering::Relaxed);
                (self.bounds.get(i).copied(), cumulative)
            })
            .collect();
        HistogramSnapshot {
            count: cumulative,
            sum_seconds: self.sum_ns.load(Ordering::Relaxed) as f64 / 1e9,
            buckets,
        }
    }
}

impl HistogramSnapshot {
    /// Writes this histogram to `encoder` (a metric, or one labelled
    /// series of a family).
    pub(crate) fn encode_to(&self, encoder: &mut MetricEncoder) -> Result<(), std::fmt::Error> {
        // The encoder wants per-bucket counts and accumulates them itself.
        let mut previous = 0;
        let buckets: Vec<(f64, u64)> = self
            .buckets
            .iter()
            .map(|&(bound, cumulative)| {
                let own = cumulative - previous;
                previous = cumulative;
                (bound.unwrap_or(f64::INFINITY), own)
            })
            .collect();
        encoder.encode_histogram::<NoLabelSet>(self.sum_seconds, self.count, &buckets, None)
    }
}

impl EncodeMetric for HistogramSnapshot {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        self.encode_to(&mut encoder)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observations_land_in_the_first_bucket_that_holds_them() {
        let h = Histogram::new(&[0.001, 0.01]);
        h.record(Duration::from_micros(500));
        h.record(Duration::from_millis(1)); // on the bound: le is inclusive
        h.record(Duration::from_millis(5));
        h.record(Duration::from_secs(1));
        let snap = h.snapshot();
        assert_eq!(snap.count, 4);
        assert_eq!(
            snap.buckets,
            vec![(Some(0.001), 2), (Some(0.01), 3), (None, 4)]
        );
        assert!((snap.sum_seconds - 1.0065).abs() < 1e-9);
    }

    #[test]
    fn encodes_as_an_openmetrics_histogram() {
        let mut registry = prometheus_client::registry::Registry::default();
        let h = Histogram::new(&[0.5]);
        h.record(Duration::from_millis(100));
        h.record(Duration::from_secs(2));
        registry.register("wait_seconds", "Test", h.snapshot());
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).expect("encodes");
        assert!(text.contains("# TYPE wait_seconds histogram"), "{text}");
        assert!(text.contains("wait_seconds_count 2"), "{text}");
        assert!(text.contains("wait_seconds_bucket{le=\"0.5\"} 1"), "{text}");
        assert!(
            text.contains("wait_seconds_bucket{le=\"+Inf\"} 2"),
            "{text}"
        );
    }
}
