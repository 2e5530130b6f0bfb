//! Run results: one JSON line per run (appended to `--out`), and the
//! markdown tables `loadgen report` prints from them: medians per scenario
//! and broker, the chanhub/NATS ratio, and the target for each row.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::client::{Broker, Target, Transport};
use crate::stats::{Percentiles, fmt_rate, fmt_us};
use crate::step::StepResult;

/// The outcome of one run of one scenario against one broker.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct RunReport {
    /// `fanout`, `sse`, `latency`, `patterns`, `idle`, `connect`, `tasks`,
    /// `calls`.
    pub(crate) scenario: String,
    /// Subscribers, connections or workers; calls in flight for `calls`.
    pub(crate) size: usize,
    /// `chanhub`, `chanhub-sse` or `nats`.
    pub(crate) broker: String,
    /// The scenario's headline figure.
    pub(crate) value: f64,
    pub(crate) unit: String,
    pub(crate) higher_is_better: bool,
    pub(crate) latency: Percentiles,
    /// Share undelivered after the drain, at the reported step.
    pub(crate) undelivered: f64,
    pub(crate) broker_cpu: Option<f64>,
    /// % of the measured time the broker waited for its core.
    #[serde(default)]
    pub(crate) broker_wait: Option<f64>,
    pub(crate) gen_cpu: Option<f64>,
    pub(crate) broker_rss_kib: Option<u64>,
    pub(crate) note: String,
    /// Every step of a rate search.
    pub(crate) steps: Vec<StepResult>,
    /// When the run ended, seconds since the Unix epoch.
    pub(crate) unix_time: u64,
}

impl RunReport {
    pub(crate) fn new(
        scenario: &str,
        size: usize,
        target: &Target,
        transport: Transport,
    ) -> RunReport {
        let broker = match (target.broker, transport) {
            (Broker::Chanhub, Transport::Ws) => "chanhub",
            (Broker::Chanhub, Transport::Sse) => "chanhub-sse",
            (Broker::Nats, _) => "nats",
        };
        // Runs spread over cluster nodes are their own scenario, reported
        // beside the single-node one.
        let scenario = if target.spread.is_empty() {
            scenario.to_string()
        } else {
            format!("cluster-{scenario}")
        };
        RunReport {
            scenario,
            size,
            broker: broker.into(),
            value: 0.0,
            unit: String::new(),
            higher_is_better: true,
            latency: Percentiles::default(),
            undelivered: 0.0,
            broker_cpu: None,
            broker_wait: None,
            gen_cpu: None,
            broker_rss_kib: None,
            note: String::new(),
            steps: Vec::new(),
            unix_time: chanhub::protocol::now_ms() / 1000,
        }
    }

    /// Takes latency, loss, CPU and RSS from the step being reported.
    pub(crate) fn fill_from(&mut self, step: &StepResult) {
        self.latency = step.latency.clone();
        self.undelivered = step.undelivered;
        self.broker_cpu = step.broker_cpu;
        self.broker_wait = step.broker_wait;
        self.gen_cpu = step.gen_cpu;
        self.broker_rss_kib = step.broker_rss_kib;
    }

    /// One human line for the terminal.
    pub(crate) fn summary(&self) -> String {
        format!(
            "{} {} {}: {} {} (p50 {}, p99 {}, broker CPU {} waited {}, generator CPU {}) — {}",
            self.scenario,
            self.size,
            self.broker,
            fmt_value(self.value, &self.unit),
            self.unit,
            fmt_us(self.latency.p50_us),
            fmt_us(self.latency.p99_us),
            fmt_pct(self.broker_cpu),
            fmt_pct(self.broker_wait),
            fmt_pct(self.gen_cpu),
            self.note
        )
    }

    /// Appends this report as one JSON line to `path`.
    pub(crate) fn append_to(&self, path: &Path) -> Result<()> {
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("opening {}", path.display()))?;
        writeln!(file, "{}", serde_json::to_string(self)?)?;
        Ok(())
    }
}

fn fmt_value(value: f64, unit: &str) -> String {
    match unit {
        "p99" => fmt_us(value as u64),
        "KiB/conn" => format!("{value:.1}"),
        _ => fmt_rate(value),
    }
}

fn fmt_pct(p: Option<f64>) -> String {
    p.map_or("-".into(), |p| format!("{p:.0}%"))
}

/// A latency cell; runs without latency samples show a dash.
fn fmt_latency(us: f64) -> String {
    if us > 0.0 {
        fmt_us(us as u64)
    } else {
        "—".into()
    }
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    match values.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => values[n / 2],
        n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

/// Medians of the runs of one scenario, size and broker.
struct Cell {
    runs: usize,
    value: f64,
    undelivered: f64,
    p50: f64,
    p99: f64,
    p999: f64,
    broker_cpu: f64,
    broker_wait: f64,
    gen_cpu: f64,
    unit: String,
    note: String,
}

impl Cell {
    fn of(runs: &[&RunReport]) -> Cell {
        let m = |f: &dyn Fn(&RunReport) -> f64| median(runs.iter().map(|r| f(r)).collect());
        Cell {
            runs: runs.len(),
            value: m(&|r| r.value),
            undelivered: m(&|r| r.undelivered),
            p50: m(&|r| r.latency.p50_us as f64),
            p99: m(&|r| r.latency.p99_us as f64),
            p999: m(&|r| r.latency.p999_us as f64),
            broker_cpu: m(&|r| r.broker_cpu.unwrap_or(f64::NAN)),
            broker_wait: m(&|r| r.broker_wait.unwrap_or(f64::NAN)),
            gen_cpu: m(&|r| r.gen_cpu.unwrap_or(f64::NAN)),
            unit: runs.first().map(|r| r.unit.clone()).unwrap_or_default(),
            note: runs.last().map(|r| r.note.clone()).unwrap_or_default(),
        }
    }

    fn shown(&self) -> String {
        fmt_value(self.value, &self.unit)
    }
}

type Key = (usize, String, usize); // (first appearance, scenario, size)

/// Prints the summary and detail tables for every run in `input`.
pub(crate) fn print(input: &Path) -> Result<()> {
    let text =
        std::fs::read_to_string(input).with_context(|| format!("reading {}", input.display()))?;
    let reports: Vec<RunReport> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()
        .context("parsing results")?;
    let mut order: BTreeMap<(String, usize), usize> = BTreeMap::new();
    for r in &reports {
        let next = order.len();
        order.entry((r.scenario.clone(), r.size)).or_insert(next);
    }
    let mut groups: BTreeMap<Key, BTreeMap<String, Vec<&RunReport>>> = BTreeMap::new();
    for r in &reports {
        let first = order[&(r.scenario.clone(), r.size)];
        groups
            .entry((first, r.scenario.clone(), r.size))
            .or_default()
            .entry(r.broker.clone())
            .or_default()
            .push(r);
    }
    let cells: BTreeMap<(String, usize, String), Cell> = groups
        .iter()
        .flat_map(|((_, s, n), by_broker)| {
            by_broker
                .iter()
                .map(move |(b, runs)| ((s.clone(), *n, b.clone()), Cell::of(runs)))
        })
        .collect();
    // The larger of two fan-out sizes carries the stricter target.
    let fanout_sizes: Vec<usize> = groups
        .keys()
        .filter(|(_, s, _)| s == "fanout")
        .map(|(_, _, n)| *n)
        .collect();
    let large_fanout = (fanout_sizes.len() > 1)
        .then(|| fanout_sizes.iter().copied().max())
        .flatten();

    println!("| scenario | measure | chanhub | NATS | chanhub/NATS | target | met |");
    println!("|---|---|---|---|---|---|---|");
    for (_, scenario, size) in groups.keys() {
        let get = |s: &str, b: &str| cells.get(&(s.to_string(), *size, b.to_string()));
        let rows = if scenario == "calls" {
            Row::calls(*size, &get)
        } else if let Some(offered) = scenario.strip_prefix("load ") {
            Row::load(scenario, offered, *size, &get)
        } else {
            vec![Row::of(scenario, *size, large_fanout == Some(*size), &get)]
        };
        for row in rows {
            println!(
                "| {} | {} | {} | {} | {} | {} | {} |",
                row.name, row.measure, row.chanhub, row.nats, row.ratio, row.target, row.met
            );
        }
    }
    println!();
    println!(
        "| scenario | broker | runs | value | undelivered | p50 | p99 | p99.9 | broker CPU | broker waited for CPU | generator CPU | last run |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    for ((scenario, size, broker), c) in &cells {
        println!(
            "| {scenario} {size} | {broker} | {} | {} {} | {:.2}% | {} | {} | {} | {} | {} | {} | {} |",
            c.runs,
            c.shown(),
            c.unit,
            c.undelivered * 100.0,
            fmt_latency(c.p50),
            fmt_latency(c.p99),
            fmt_latency(c.p999),
            fmt_pct(Some(c.broker_cpu).filter(|v| v.is_finite())),
            fmt_pct(Some(c.broker_wait).filter(|v| v.is_finite())),
            fmt_pct(Some(c.gen_cpu).filter(|v| v.is_finite())),
            c.note.replace('|', "/"),
        );
    }
    Ok(())
}

/// One line of the summary table.
struct Row {
    name: String,
    measure: String,
    chanhub: String,
    nats: String,
    ratio: String,
    target: String,
    met: String,
}

impl Row {
    fn of<'a>(
        scenario: &str,
        size: usize,
        large_fanout: bool,
        get: &dyn Fn(&str, &str) -> Option<&'a Cell>,
    ) -> Row {
        let chanhub = get(scenario, "chanhub");
        let nats = get(scenario, "nats");
        let show = |c: Option<&Cell>| c.map_or("—".to_string(), Cell::shown);
        let ratio = match (chanhub, nats) {
            (Some(c), Some(n)) if n.value > 0.0 => Some(c.value / n.value),
            _ => None,
        };
        let mut row = Row {
            name: format!("{scenario} {size}"),
            measure: String::new(),
            chanhub: show(chanhub),
            nats: show(nats),
            ratio: ratio.map_or("—".into(), |r| format!("{r:.2}")),
            target: String::new(),
            met: "—".into(),
        };
        match scenario {
            "fanout" => {
                row.name = format!("fan-out 1 → {size}");
                row.measure = "delivered msgs/s with no loss".into();
                if large_fanout {
                    row.target = "≥ 1.5 × NATS, nothing undelivered".into();
                    let clean = chanhub.is_some_and(|c| c.undelivered == 0.0);
                    row.met = at_least(1.5, ratio);
                    if !clean && row.met == "yes" {
                        row.met = "no (loss after drain)".into();
                    }
                } else {
                    row.target = "≥ 1.2 × NATS".into();
                    row.met = at_least(1.2, ratio);
                }
            }
            "latency" => {
                row.name = format!("latency, {size} subscribers");
                row.measure = "p99 latency".into();
                row.target = "≤ 0.5 × NATS p99".into();
                row.met = at_most(0.5, ratio);
            }
            "patterns" => {
                row.name = format!("patterns, {size} connections");
                row.measure = "publishes/s delivered with no loss".into();
                row.target = "≥ 2 × NATS".into();
                row.met = at_least(2.0, ratio);
            }
            "idle" => {
                row.name = format!("idle, {size} connections");
                row.measure = "RSS KiB per connection".into();
                row.target = "≤ 6 KiB".into();
                row.met = at_most(6.0, chanhub.map(|c| c.value));
            }
            "sse" => {
                row.name = format!("SSE fan-out 1 → {size}");
                row.measure =
                    "delivered msgs/s (chanhub column: SSE; ratio: SSE / chanhub WS)".into();
                let sse = get("sse", "chanhub-sse");
                row.chanhub = show(sse);
                let ws = get("fanout", "chanhub");
                let ratio = match (sse, ws) {
                    (Some(s), Some(w)) if w.value > 0.0 => Some(s.value / w.value),
                    _ => None,
                };
                row.ratio = ratio.map_or("—".into(), |r| format!("{r:.2}"));
                row.target = "≥ 0.8 × chanhub WS fan-out".into();
                row.met = at_least(0.8, ratio);
            }
            "connect" => {
                row.name = format!("connect + auth + subscribe, {size}");
                row.measure = "new connections/s".into();
                row.target = "≥ 10,000/s".into();
                row.met = at_least(10_000.0, chanhub.map(|c| c.value));
            }
            "tasks" => {
                row.name = format!("task round trips, {size} workers");
                row.measure = "tasks/s (NATS: request/reply)".into();
                row.target = "report".into();
            }
            "cluster-fanout" | "cluster-tasks" => {
                let single = get(&scenario["cluster-".len()..], "chanhub");
                let ratio = match (chanhub, single) {
                    (Some(c), Some(s)) if s.value > 0.0 => Some(c.value / s.value),
                    _ => None,
                };
                row.ratio = ratio.map_or("—".into(), |r| format!("{r:.2} of 1 node"));
                row.target = "report".into();
                if scenario == "cluster-fanout" {
                    row.name = format!("cluster fan-out 1 → {size}, 3 nodes");
                    row.measure =
                        "delivered msgs/s with no loss; publisher on node 1, subscribers on all"
                            .into();
                } else {
                    row.name = format!("cluster task round trips, {size} workers");
                    row.measure = "tasks/s; submitter on node 1, workers on nodes 2 and 3".into();
                }
            }
            _ => {}
        }
        row
    }

    /// The rows of the `calls` scenario with `size` calls in flight: one
    /// call at a time (issue 16: p50 ≤ 100 µs, p99 ≤ 1 ms, hub on one core)
    /// or many (≥ 1.0 × NATS's calls/s, p99 ≤ NATS's).
    fn calls<'a>(size: usize, get: &dyn Fn(&str, &str) -> Option<&'a Cell>) -> Vec<Row> {
        let chanhub = get("calls", "chanhub");
        let nats = get("calls", "nats");
        let name = if size == 1 {
            "calls, one at a time".to_string()
        } else {
            format!("calls, {size} in flight")
        };
        type Figure = fn(&Cell) -> f64;
        let ratio_of = |of: Figure| match (chanhub.map(of), nats.map(of)) {
            (Some(c), Some(n)) if n > 0.0 => Some(c / n),
            _ => None,
        };
        let row = |measure: &str, of: Figure, show: fn(f64) -> String| Row {
            name: name.clone(),
            measure: measure.into(),
            chanhub: chanhub.map_or("—".into(), |c| show(of(c))),
            nats: nats.map_or("—".into(), |c| show(of(c))),
            ratio: ratio_of(of).map_or("—".into(), |r| format!("{r:.2}")),
            target: "report".into(),
            met: "—".into(),
        };
        let rate: Figure = |c| c.value;
        let p50: Figure = |c| c.p50;
        let p99: Figure = |c| c.p99;
        let p999: Figure = |c| c.p999;
        if size == 1 {
            let mut p50_row = row("round trip p50", p50, fmt_latency);
            p50_row.target = "≤ 100 µs".into();
            p50_row.met = at_most(100.0, chanhub.map(p50));
            let mut p99_row = row("round trip p99", p99, fmt_latency);
            p99_row.target = "≤ 1 ms".into();
            p99_row.met = at_most(1_000.0, chanhub.map(p99));
            vec![
                p50_row,
                p99_row,
                row("round trip p99.9", p999, fmt_latency),
                row("calls/s", rate, fmt_rate),
            ]
        } else {
            let mut rate_row = row("calls/s", rate, fmt_rate);
            rate_row.target = "≥ 1.0 × NATS".into();
            rate_row.met = at_least(1.0, ratio_of(rate));
            let mut p99_row = row("round trip p99", p99, fmt_latency);
            p99_row.target = "≤ NATS p99".into();
            p99_row.met = at_most(1.0, ratio_of(p99));
            vec![rate_row, row("round trip p50", p50, fmt_latency), p99_row]
        }
    }
}

impl Row {
    /// The rows of a fan-out under load (issue 19) at `offered`
    /// deliveries/s to `size` subscribers: delivered/s, latency and CPU of
    /// both brokers in the same run. Targets: all delivered; p50 and p99
    /// ≤ NATS's; at 1 → 1,000 broker CPU ≤ 0.7 × NATS's; at 1 → 5,000
    /// delivered ≥ NATS's.
    fn load<'a>(
        scenario: &str,
        offered: &str,
        size: usize,
        get: &dyn Fn(&str, &str) -> Option<&'a Cell>,
    ) -> Vec<Row> {
        let chanhub = get(scenario, "chanhub");
        let nats = get(scenario, "nats");
        let name = format!("fan-out 1 → {size}, {offered} offered");
        type Figure = fn(&Cell) -> f64;
        let ratio_of = |of: Figure| match (chanhub.map(of), nats.map(of)) {
            (Some(c), Some(n)) if n > 0.0 => Some(c / n),
            _ => None,
        };
        let row = |measure: &str, of: Figure, show: fn(f64) -> String| Row {
            name: name.clone(),
            measure: measure.into(),
            chanhub: chanhub.map_or("—".into(), |c| show(of(c))),
            nats: nats.map_or("—".into(), |c| show(of(c))),
            ratio: ratio_of(of).map_or("—".into(), |r| format!("{r:.2}")),
            target: "report".into(),
            met: "—".into(),
        };
        let delivered: Figure = |c| c.value;
        let undelivered: Figure = |c| c.undelivered;
        let p50: Figure = |c| c.p50;
        let p99: Figure = |c| c.p99;
        let cpu: Figure = |c| c.broker_cpu;
        let mut delivered_row = row("delivered msgs/s", delivered, fmt_rate);
        if size >= 5000 {
            delivered_row.target = "≥ NATS".into();
            delivered_row.met = at_least(1.0, ratio_of(delivered));
        }
        let mut lost_row = row("undelivered after drain", undelivered, |u| {
            format!("{u:.3}%")
        });
        lost_row.ratio = "—".into();
        lost_row.target = "0".into();
        lost_row.met = at_most(0.0, chanhub.map(undelivered));
        let mut p50_row = row("latency p50", p50, fmt_latency);
        p50_row.target = "≤ NATS".into();
        p50_row.met = at_most(1.0, ratio_of(p50));
        let mut p99_row = row("latency p99", p99, fmt_latency);
        if size < 5000 {
            p99_row.target = "≤ NATS".into();
            p99_row.met = at_most(1.0, ratio_of(p99));
        }
        let mut cpu_row = row("broker CPU (% of its core)", cpu, |c| format!("{c:.0}%"));
        if size < 5000 {
            cpu_row.target = "≤ 0.7 × NATS".into();
            cpu_row.met = at_most(0.7, ratio_of(cpu));
        }
        vec![
            delivered_row,
            lost_row,
            p50_row,
            p99_row,
            row("latency p99.9", |c| c.p999, fmt_latency),
            cpu_row,
        ]
    }
}

/// The verdict on an "at least" target: how far off when missed.
fn at_least(need: f64, got: Option<f64>) -> String {
    match got {
        Some(got) if got >= need => "yes".to_string(),
        Some(got) => format!("no ({:.2} of target)", got / need),
        None => "—".into(),
    }
}

/// The verdict on an "at most" target: how far past when missed.
fn at_most(limit: f64, got: Option<f64>) -> String {
    match got {
        Some(got) if got <= limit => "yes".to_string(),
        Some(got) => format!("no ({:.2}× the limit)", got / limit),
        None => "—".into(),
    }
}
