//! The request/reply call figures of one hub, as `/api/stats` and
//! `/metrics` show them (gathered by [`crate::calls`]).

use std::collections::BTreeMap;

use prometheus_client::encoding::{EncodeMetric, MetricEncoder};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};
use serde::{Deserialize, Serialize};

use super::{HistogramSnapshot, Labels, Series};

/// The calls of one hub, as `/api/stats` shows them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CallsView {
    /// Serving connections of this hub.
    pub servers: usize,
    /// Calls in flight (running or waiting) on this hub.
    pub in_flight: usize,
    /// Replies that came after their call ended and were dropped.
    pub late_replies: u64,
    /// One row per method called (or served) here, by name.
    pub methods: Vec<MethodView>,
}

/// One method's figures since the hub started.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MethodView {
    /// The method name (or `"(other)"` once too many names were seen).
    pub method: String,
    /// Servers of this hub (and cluster nodes or peers) that serve it now.
    pub servers: usize,
    /// Calls of it in flight now (running or waiting).
    pub in_flight: usize,
    /// Calls of it that ended, whatever the outcome.
    pub calls: u64,
    /// Of those, how many ended with each error code.
    pub errors: BTreeMap<String, u64>,
    /// Round trip from `call` to the answer.
    pub latency: HistogramSnapshot,
}

impl CallsView {
    /// The `chanhub_call*` metrics, one series per method.
    pub(super) fn register(&self, r: &mut Registry) {
        let n = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        let method = |m: &MethodView| ("method", m.method.clone());
        r.register(
            "call_servers",
            "Connections of this hub that serve methods",
            Series::new(
                MetricType::Gauge,
                vec![(Labels::new(), self.servers as i64)],
            ),
        );
        r.register(
            "call_late_replies",
            "Replies that came after their call ended (deadline, cancel) and were dropped",
            Series::new(
                MetricType::Counter,
                vec![(Labels::new(), n(self.late_replies))],
            ),
        );
        r.register(
            "calls",
            "Calls made on this hub that ended, by method, whatever the outcome",
            Series::new(
                MetricType::Counter,
                self.methods
                    .iter()
                    .map(|m| (vec![method(m)], n(m.calls)))
                    .collect(),
            ),
        );
        r.register(
            "call_errors",
            "Calls that ended without a result, by method and error code (cancelled: by the caller)",
            Series::new(
                MetricType::Counter,
                self.methods
                    .iter()
                    .flat_map(|m| {
                        m.errors
                            .iter()
                            .map(move |(code, v)| (vec![method(m), ("code", code.clone())], n(*v)))
                    })
                    .collect(),
            ),
        );
        r.register(
            "calls_in_flight",
            "Calls running or waiting for a server, by method",
            Series::new(
                MetricType::Gauge,
                self.methods
                    .iter()
                    .map(|m| (vec![method(m)], m.in_flight as i64))
                    .collect(),
            ),
        );
        r.register_with_unit(
            "call_duration",
            "Round trip of a call, from the call to its answer, by method",
            Unit::Seconds,
            Histograms(
                self.methods
                    .iter()
                    .map(|m| (vec![method(m)], m.latency.clone()))
                    .collect(),
            ),
        );
    }
}

/// Histograms with labels.
#[derive(Debug)]
struct Histograms(Vec<(Labels, HistogramSnapshot)>);

impl EncodeMetric for Histograms {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        for (labels, histogram) in &self.0 {
            histogram.encode_to(&mut encoder.encode_family(labels)?)?;
        }
        Ok(())
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}
