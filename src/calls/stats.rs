//! Per-method call figures: calls ended, errors by code, round-trip
//! latency. Kept under the calls lock (every update happens where a call
//! ends, which holds it already). Method names are the clients' to choose,
//! so at most [`MAX_METHODS`] names get a row; later names share one.

use std::collections::BTreeMap;

use foldhash::HashMap;
use std::time::Duration;

use crate::error::ErrorCode;
use crate::metrics::{CALL_BUCKETS, Histogram, HistogramSnapshot};

/// Distinct method names with a row of their own.
pub(super) const MAX_METHODS: usize = 1000;

/// The row every method name past [`MAX_METHODS`] shares.
pub(super) const OTHER: &str = "(other)";

/// The figures of one method.
struct Row {
    calls: u64,
    errors: BTreeMap<&'static str, u64>,
    latency: Histogram,
}

/// One method's figures, read.
pub(super) struct RowView {
    pub(super) calls: u64,
    pub(super) errors: BTreeMap<String, u64>,
    pub(super) latency: HistogramSnapshot,
}

impl RowView {
    /// A method no call of which has ended yet.
    pub(super) fn empty() -> RowView {
        RowView {
            calls: 0,
            errors: BTreeMap::new(),
            latency: Histogram::new(CALL_BUCKETS).snapshot(),
        }
    }
}

/// Figures by method name.
#[derive(Default)]
pub(super) struct MethodStats {
    rows: HashMap<String, Row>,
}

impl MethodStats {
    /// A call of `method` ended with `code` (`None`: a result) after
    /// `took`.
    pub(super) fn ended(&mut self, method: &str, code: Option<ErrorCode>, took: Duration) {
        let row = self.row(method);
        row.calls += 1;
        row.latency.record(took);
        if let Some(code) = code {
            *row.errors.entry(code.as_str()).or_default() += 1;
        }
    }

    /// A call of `method` ended because its caller cancelled or left.
    pub(super) fn cancelled(&mut self, method: &str, took: Duration) {
        let row = self.row(method);
        row.calls += 1;
        row.latency.record(took);
        *row.errors.entry("cancelled").or_default() += 1;
    }

    fn row(&mut self, method: &str) -> &mut Row {
        let key = if self.rows.contains_key(method) || self.rows.len() < MAX_METHODS {
            method
        } else {
            OTHER
        };
        // Looked up first: the key is copied only for a new row.
        if !self.rows.contains_key(key) {
            let row = Row {
                calls: 0,
                errors: BTreeMap::new(),
                latency: Histogram::new(CALL_BUCKETS),
            };
            self.rows.insert(key.to_string(), row);
        }
        self.rows.get_mut(key).expect("inserted above")
    }

    /// Every row, by method name.
    pub(super) fn read(&self) -> BTreeMap<String, RowView> {
        self.rows
            .iter()
            .map(|(method, row)| {
                let view = RowView {
                    calls: row.calls,
                    errors: row
                        .errors
                        .iter()
                        .map(|(code, n)| ((*code).to_string(), *n))
                        .collect(),
                    latency: row.latency.snapshot(),
                };
                (method.clone(), view)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_count_calls_and_errors_and_stop_growing_at_the_bound() {
        let mut stats = MethodStats::default();
        stats.ended("a.x", None, Duration::from_micros(80));
        stats.ended("a.x", Some(ErrorCode::Timeout), Duration::from_secs(1));
        stats.cancelled("a.x", Duration::from_millis(3));
        let rows = stats.read();
        let row = &rows["a.x"];
        assert_eq!(row.calls, 3);
        assert_eq!(row.errors["timeout"], 1);
        assert_eq!(row.errors["cancelled"], 1);
        assert_eq!(row.latency.count, 3);

        for i in 0..MAX_METHODS + 10 {
            stats.ended(&format!("m{i}"), None, Duration::ZERO);
        }
        let rows = stats.read();
        assert_eq!(rows.len(), MAX_METHODS + 1, "the bound plus the shared row");
        assert!(rows[OTHER].calls >= 10);
        assert_eq!(rows["a.x"].calls, 3, "a known name keeps its row");
    }
}
