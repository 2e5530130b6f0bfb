//! The scenarios of issue 4, each producing one [`RunReport`]: fan-out
//! (WebSocket or SSE), latency at a fixed rate, per-connection patterns,
//! idle memory, connection rate. Task round trips are in [`crate::tasks`].

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use futures::StreamExt;

use crate::client::{CONNECT_TIMEOUT, Publisher, Sub, Target, Transport};
use crate::group::{self, GroupSpec};
use crate::report::RunReport;
use crate::stats::{self, Percentiles, Proc};
use crate::step::{Search, SearchArgs, StepPlan, StepResult, run_step};

/// Latency is sampled on about this many subscribers of a group.
const SAMPLED_SUBSCRIBERS: usize = 100;

fn sample_every(size: usize) -> usize {
    (size / SAMPLED_SUBSCRIBERS).max(1)
}

/// Subscribers, their patterns and the subjects published to, for the
/// searches (fan-out and patterns).
pub(crate) struct Workload<'a> {
    pub(crate) scenario: &'static str,
    pub(crate) transport: Transport,
    pub(crate) size: usize,
    pub(crate) pattern: &'a (dyn Fn(usize) -> String + Sync),
    pub(crate) subject: &'a dyn Fn(u64) -> String,
    /// Deliveries per publish.
    pub(crate) fanout: u64,
    /// Where the rate search starts, publishes/s.
    pub(crate) start_rate: f64,
}

/// Fan-out: every subscriber holds `bench:*` (NATS `bench.*`), every
/// publish goes to `bench:ch`.
pub(crate) async fn fanout(
    target: &Target,
    broker: Proc,
    transport: Transport,
    subs: usize,
    search: SearchArgs,
) -> Result<RunReport> {
    let pattern = target.name(&["bench", "*"]);
    let subject = target.name(&["bench", "ch"]);
    let workload = Workload {
        scenario: if transport == Transport::Sse {
            "sse"
        } else {
            "fanout"
        },
        transport,
        size: subs,
        pattern: &|_| pattern.clone(),
        subject: &|_| subject.clone(),
        fanout: subs as u64,
        // 250k deliveries/s for 1,000 subscribers.
        start_rate: (250_000 / subs.max(1)).max(1) as f64,
    };
    find_max_rate(target, broker, &workload, search).await
}

/// Patterns: subscriber `i` holds `session:<i>:*`; publish `n` goes to
/// `session:<n mod size>:evt`, so each publish matches exactly one of
/// `size` patterns and consecutive publishes never share a channel.
pub(crate) async fn patterns(
    target: &Target,
    broker: Proc,
    conns: usize,
    search: SearchArgs,
) -> Result<RunReport> {
    let pattern = |i: usize| target.name(&["session", &i.to_string(), "*"]);
    let subject = |n: u64| target.name(&["session", &(n % conns as u64).to_string(), "evt"]);
    let workload = Workload {
        scenario: "patterns",
        transport: Transport::Ws,
        size: conns,
        pattern: &pattern,
        subject: &subject,
        fanout: 1,
        start_rate: 5_000.0,
    };
    find_max_rate(target, broker, &workload, search).await
}

/// Runs steps at rising rates (see [`Search`]) and reports the highest
/// delivered rate of a step with no loss. After a step with loss every
/// subscriber is reconnected, so the next step starts clean.
async fn find_max_rate(
    target: &Target,
    broker: Proc,
    w: &Workload<'_>,
    args: SearchArgs,
) -> Result<RunReport> {
    let started = Instant::now();
    let spec = GroupSpec {
        target,
        transport: w.transport,
        size: w.size,
        pattern: w.pattern,
        sample_every: sample_every(w.size),
    };
    let mut group = group::connect(&spec).await?;
    let connect_time = started.elapsed();
    eprintln!(
        "  {} subscribers connected in {:.1}s",
        w.size,
        connect_time.as_secs_f64()
    );
    let mut publisher = Publisher::connect(target).await?;
    let mut search = Search::new(args, w.start_rate);
    let (duration, drain) = search.plan_times();
    let plan = StepPlan {
        duration,
        drain,
        fanout: w.fanout,
        subject: w.subject,
        broker,
    };
    let mut steps: Vec<StepResult> = Vec::new();
    let mut dirty = false;
    let mut retrying = false;
    while search.fits(started, if dirty { connect_time } else { Duration::ZERO }) {
        if dirty {
            group.close().await;
            // Let the broker finish with the old connections first.
            tokio::time::sleep(Duration::from_millis(500)).await;
            group = group::connect(&spec).await?;
        }
        let rate = search.next;
        let step = run_step(&mut publisher, &group.counters, &plan, rate).await?;
        eprintln!("  {}", step.line());
        let passed = step.passed();
        dirty = !passed || group.counters.closed() > 0;
        steps.push(step);
        // The machine is shared: a failure is confirmed by a second try at
        // the same rate before it bounds the search.
        if !passed && !retrying && search.fits(started, connect_time) {
            retrying = true;
            continue;
        }
        retrying = false;
        if !search.record(rate, passed) {
            break;
        }
    }
    group.close().await;
    let best = steps
        .iter()
        .filter(|s| s.passed())
        .max_by(|a, b| a.rate.total_cmp(&b.rate))
        .cloned();
    let passed_at = |rate: f64| steps.iter().any(|s| s.rate == rate && s.passed());
    let first_loss = steps
        .iter()
        .filter(|s| !s.passed() && !passed_at(s.rate))
        .min_by(|a, b| a.rate.total_cmp(&b.rate));
    let mut note = match &best {
        Some(b) => format!("no loss up to {} pub/s", stats::fmt_rate(b.rate)),
        None => "loss at every rate tried".into(),
    };
    if let Some(f) = first_loss {
        note += &format!(
            "; at {} pub/s: {} delivered/s, {:.2}% undelivered, {} subscribers dropped",
            stats::fmt_rate(f.rate),
            stats::fmt_rate(f.delivered_per_s),
            f.undelivered * 100.0,
            f.closed
        );
    }
    let mut report = RunReport::new(w.scenario, w.size, target, w.transport);
    report.unit = "msgs/s".into();
    report.note = note;
    if let Some(best) = &best {
        report.value = best.delivered_per_s;
        report.fill_from(best);
    }
    report.steps = steps;
    Ok(report)
}

/// p50…p99.9 at a fixed publish rate to N subscribers of `bench:*`.
pub(crate) async fn latency(
    target: &Target,
    broker: Proc,
    subs: usize,
    rate: f64,
    secs: f64,
) -> Result<RunReport> {
    let step = fixed_rate(target, broker, subs, rate, secs).await?;
    let mut report = RunReport::new("latency", subs, target, Transport::Ws);
    report.value = step.latency.p99_us as f64;
    report.unit = "p99".into();
    report.note = format!(
        "{} pub/s × {subs} subscribers for {secs}s; p50 {}, p99.9 {}",
        stats::fmt_rate(rate),
        stats::fmt_us(step.latency.p50_us),
        stats::fmt_us(step.latency.p999_us)
    );
    report.fill_from(&step);
    report.steps = vec![step];
    Ok(report)
}

/// Fan-out under load (issue 19): the latency scenario at a rate that
/// offers `rate × subs` deliveries/s; reported as its own scenario per
/// offered rate, with delivered/s as the headline figure.
pub(crate) async fn load(
    target: &Target,
    broker: Proc,
    subs: usize,
    rate: f64,
    secs: f64,
) -> Result<RunReport> {
    let step = fixed_rate(target, broker, subs, rate, secs).await?;
    let offered = stats::fmt_rate(rate * subs as f64);
    let mut report = RunReport::new(&format!("load {offered}"), subs, target, Transport::Ws);
    report.value = step.delivered_per_s;
    report.unit = "msgs/s".into();
    report.note = format!(
        "{} pub/s × {subs} subscribers for {secs}s ({offered} deliveries/s offered); p50 {}, p99 {}, p99.9 {}",
        stats::fmt_rate(rate),
        stats::fmt_us(step.latency.p50_us),
        stats::fmt_us(step.latency.p99_us),
        stats::fmt_us(step.latency.p999_us)
    );
    report.fill_from(&step);
    report.steps = vec![step];
    Ok(report)
}

/// One open-loop step: `rate` publishes/s on `bench:ch` for `secs` to
/// `subs` WebSocket subscribers of `bench:*`, latency sampled at a subset.
async fn fixed_rate(
    target: &Target,
    broker: Proc,
    subs: usize,
    rate: f64,
    secs: f64,
) -> Result<StepResult> {
    let pattern = target.name(&["bench", "*"]);
    let subject = target.name(&["bench", "ch"]);
    let spec = GroupSpec {
        target,
        transport: Transport::Ws,
        size: subs,
        pattern: &|_| pattern.clone(),
        sample_every: sample_every(subs),
    };
    let group = group::connect(&spec).await?;
    let mut publisher = Publisher::connect(target).await?;
    let plan = StepPlan {
        duration: Duration::from_secs_f64(secs),
        drain: Duration::from_secs(3),
        fanout: subs as u64,
        subject: &|_| subject.clone(),
        broker,
    };
    let step = run_step(&mut publisher, &group.counters, &plan, rate).await?;
    eprintln!("  {}", step.line());
    group.close().await;
    Ok(step)
}

/// Idle memory: `conns` authenticated connections, each holding one
/// subscription (`session:<i>:*`); the broker's RSS growth per connection.
pub(crate) async fn idle(target: &Target, broker: Proc, conns: usize) -> Result<RunReport> {
    let before = broker.rss_kib();
    let pattern = |i: usize| target.name(&["session", &i.to_string(), "*"]);
    let spec = GroupSpec {
        target,
        transport: Transport::Ws,
        size: conns,
        pattern: &pattern,
        sample_every: 0,
    };
    let started = Instant::now();
    let group = group::connect(&spec).await?;
    let connect_secs = started.elapsed().as_secs_f64();
    // Let the broker settle (allocator, buffers) before reading RSS.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = broker.rss_kib();
    let closed = group.counters.closed();
    group.close().await;
    let mut report = RunReport::new("idle", conns, target, Transport::Ws);
    report.unit = "KiB/conn".into();
    report.higher_is_better = false;
    if let (Some(before), Some(after)) = (before, after) {
        report.value = after.saturating_sub(before) as f64 / conns as f64;
        report.broker_rss_kib = Some(after);
        report.note = format!(
            "RSS {} → {} KiB for {conns} connections (connected in {connect_secs:.1}s, {closed} closed)",
            before, after
        );
    } else {
        report.note = "no broker pid: RSS not measured".into();
    }
    Ok(report)
}

/// Connection rate: `conns` new connections, `concurrency` at a time, each
/// connecting, authenticating with its own JWT and subscribing before it
/// counts. Connections stay open until the end.
pub(crate) async fn connect_rate(
    target: &Target,
    broker: Proc,
    conns: usize,
    concurrency: usize,
) -> Result<RunReport> {
    let tokens = group::tokens(target, conns, "conn")?;
    let broker_cpu = broker.cpu_meter();
    let gen_cpu = Proc::Myself.cpu_meter();
    let started = Instant::now();
    let mut hist = stats::histogram();
    let mut open = Vec::with_capacity(conns);
    let mut connecting = futures::stream::iter(0..conns)
        .map(|i| {
            let token = &tokens[i];
            let pattern = target.name(&["session", &i.to_string(), "*"]);
            async move {
                let t = Instant::now();
                let sub = tokio::time::timeout(
                    CONNECT_TIMEOUT,
                    Sub::connect(target, Transport::Ws, &pattern, token, 1),
                )
                .await
                .context("timed out connecting")??;
                anyhow::Ok((sub, t.elapsed()))
            }
        })
        .buffer_unordered(concurrency);
    while let Some(result) = connecting.next().await {
        let (sub, took) = result.with_context(|| format!("after {} connections", open.len()))?;
        stats::record(&mut hist, took);
        open.push(sub);
    }
    let elapsed = started.elapsed().as_secs_f64();
    let mut report = RunReport::new("connect", conns, target, Transport::Ws);
    report.value = conns as f64 / elapsed;
    report.unit = "conns/s".into();
    report.latency = Percentiles::of(&hist);
    report.broker_cpu = broker_cpu.percent();
    report.broker_wait = broker_cpu.wait_percent();
    report.gen_cpu = gen_cpu.percent();
    report.broker_rss_kib = broker.rss_kib();
    report.note = format!(
        "{conns} connections, {concurrency} at a time, in {elapsed:.2}s; connect+auth+subscribe p50 {} p99 {}",
        stats::fmt_us(report.latency.p50_us),
        stats::fmt_us(report.latency.p99_us)
    );
    drop(open);
    Ok(report)
}
