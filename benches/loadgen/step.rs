//! One measured step: publish open-loop at a fixed rate for a fixed time,
//! let the broker drain, and count what arrived. And the search that runs
//! steps at rising rates to find the highest one with no loss.

use std::time::{Duration, Instant};

use anyhow::Result;
use serde::{Deserialize, Serialize};

use crate::client::Publisher;
use crate::group::Counters;
use crate::payload;
use crate::stats::{self, Percentiles, Proc};

/// Publishes written before a flush and a yield, so a publisher that is
/// behind schedule still lets the subscribers on this thread read.
const MAX_BATCH: u64 = 512;

/// How early a publisher whose publishes are further apart than this
/// leaves its timer before the next is due; it yields (letting the
/// subscribers on this thread read) for the rest. Tokio's timer has a 1 ms
/// granularity and rounds up: a publish sent when a sleep ends went out up
/// to ~2 ms after its stamp, and every latency sample of both brokers
/// carried that. Faster publishers (the throughput searches) sleep as
/// before, so the generator's CPU figure still shows what reading costs.
const TIMER_SLACK: Duration = Duration::from_millis(2);

/// A step passes when at most this share of the expected deliveries is
/// missing after the drain, no subscriber was disconnected…
pub(crate) const MAX_LOSS: f64 = 0.001;

/// ... and, in the second half of the step, deliveries kept up with at least
/// this share of the offered rate (publishes/s × deliveries per publish).
pub(crate) const KEEP_PACE: f64 = 0.9;

/// What one step measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct StepResult {
    /// Publishes per second asked for.
    pub(crate) rate: f64,
    /// Publishes sent.
    pub(crate) published: u64,
    /// Deliveries that should have arrived.
    pub(crate) expected: u64,
    /// Deliveries that did arrive, by the end of the drain.
    pub(crate) delivered: u64,
    /// Share of `expected` missing after the drain.
    pub(crate) undelivered: f64,
    /// Deliveries per second in the second half of the publishing time:
    /// the rate the broker sustains once running. A constant latency does
    /// not lower it; a growing backlog does.
    pub(crate) delivered_per_s: f64,
    /// Subscribers whose connection ended during the step.
    pub(crate) closed: usize,
    /// Latency on the sampled subscribers (scheduled send → receipt).
    pub(crate) latency: Percentiles,
    /// Broker CPU over the step, % of one core.
    pub(crate) broker_cpu: Option<f64>,
    /// % of the step the broker waited for its core (other processes).
    #[serde(default)]
    pub(crate) broker_wait: Option<f64>,
    /// Generator CPU over the step, % of one core (near 100: client-bound).
    pub(crate) gen_cpu: Option<f64>,
    /// Broker RSS at the end of publishing, KiB.
    pub(crate) broker_rss_kib: Option<u64>,
    /// How far behind its schedule the publisher ended, ms.
    pub(crate) publisher_lag_ms: f64,
}

impl StepResult {
    /// No subscriber dropped, at most [`MAX_LOSS`] missing after the drain,
    /// and delivery kept pace with publishing (a broker that only buffers
    /// would pass the first two within a short step).
    pub(crate) fn passed(&self) -> bool {
        let offered = self.rate * self.expected as f64 / self.published.max(1) as f64;
        self.closed == 0
            && self.undelivered <= MAX_LOSS
            && self.delivered_per_s >= KEEP_PACE * offered
    }

    pub(crate) fn line(&self) -> String {
        format!(
            "rate {}/s: delivered {}/s, undelivered {:.3}%, closed {}, p50 {} p99 {}, broker cpu {:.0}% (waited {:.0}%), gen cpu {:.0}%, lag {:.0}ms -> {}",
            stats::fmt_rate(self.rate),
            stats::fmt_rate(self.delivered_per_s),
            self.undelivered * 100.0,
            self.closed,
            stats::fmt_us(self.latency.p50_us),
            stats::fmt_us(self.latency.p99_us),
            self.broker_cpu.unwrap_or(f64::NAN),
            self.broker_wait.unwrap_or(f64::NAN),
            self.gen_cpu.unwrap_or(f64::NAN),
            self.publisher_lag_ms,
            if self.passed() { "ok" } else { "LOSS" },
        )
    }
}

/// Fixed parts of every step of a run.
pub(crate) struct StepPlan<'a> {
    /// How long to publish.
    pub(crate) duration: Duration,
    /// Longest wait for stragglers after the last publish.
    pub(crate) drain: Duration,
    /// Deliveries each publish should cause.
    pub(crate) fanout: u64,
    /// The subject of publish number `n`.
    pub(crate) subject: &'a dyn Fn(u64) -> String,
    pub(crate) broker: Proc,
}

/// Publishes at `rate`/s for `plan.duration`, drains, and measures.
pub(crate) async fn run_step(
    publisher: &mut Publisher,
    counters: &Counters,
    plan: &StepPlan<'_>,
    rate: f64,
) -> Result<StepResult> {
    counters.reset();
    let closed_before = counters.closed();
    let broker_cpu = plan.broker.cpu_meter();
    let gen_cpu = Proc::Myself.cpu_meter();
    let sent = publish(publisher, counters, plan, rate).await?;
    let broker_rss_kib = plan.broker.rss_kib();
    let published = sent.published;
    let expected = published * plan.fanout;
    drain(counters, expected, plan.drain).await;
    let delivered = counters.delivered();
    Ok(StepResult {
        rate,
        published,
        expected,
        delivered,
        undelivered: if expected == 0 {
            0.0
        } else {
            expected.saturating_sub(delivered) as f64 / expected as f64
        },
        delivered_per_s: sent.steady_rate,
        closed: counters.closed() - closed_before,
        latency: counters.percentiles(),
        broker_cpu: broker_cpu.percent(),
        broker_wait: broker_cpu.wait_percent(),
        gen_cpu: gen_cpu.percent(),
        broker_rss_kib,
        publisher_lag_ms: sent.lag.as_secs_f64() * 1e3,
    })
}

/// What publishing saw.
struct Sent {
    published: u64,
    /// Deliveries/s counted between half-time and the last publish.
    steady_rate: f64,
    /// How far behind schedule the last publish went out.
    lag: Duration,
}

/// Open-loop publishing: message `n` is due at `start + n / rate` and
/// stamped with that time, whatever the broker does; a publisher that
/// falls behind catches up in bursts.
async fn publish(
    publisher: &mut Publisher,
    counters: &Counters,
    plan: &StepPlan<'_>,
    rate: f64,
) -> Result<Sent> {
    let total = (rate * plan.duration.as_secs_f64()).round().max(1.0) as u64;
    let start = Instant::now();
    let due_at = |n: u64| start + Duration::from_secs_f64(n as f64 / rate);
    let slack = if rate * TIMER_SLACK.as_secs_f64() < 1.0 {
        TIMER_SLACK
    } else {
        Duration::ZERO
    };
    let mut payload = String::with_capacity(payload::SIZE);
    let mut sent = 0;
    let mut half_time: Option<(Instant, u64)> = None;
    while sent < total {
        if half_time.is_none() && start.elapsed() >= plan.duration / 2 {
            half_time = Some((Instant::now(), counters.delivered()));
        }
        let elapsed = start.elapsed().as_secs_f64();
        let due = ((elapsed * rate) as u64 + 1)
            .min(total)
            .min(sent + MAX_BATCH);
        while sent < due {
            payload::encode(payload::nanos_at(due_at(sent)), &mut payload);
            publisher.feed(&(plan.subject)(sent), &payload).await?;
            sent += 1;
        }
        publisher.flush().await?;
        if sent >= total {
            break;
        }
        let next = due_at(sent);
        let now = Instant::now();
        if next > now + slack {
            publisher.idle_until((next - slack).into()).await?;
        } else {
            tokio::task::yield_now().await;
        }
    }
    let end = Instant::now();
    let steady_rate = match half_time {
        Some((at, count)) if end > at => {
            counters.delivered().saturating_sub(count) as f64 / (end - at).as_secs_f64()
        }
        _ => 0.0,
    };
    Ok(Sent {
        published: sent,
        steady_rate,
        lag: end.saturating_duration_since(due_at(total.saturating_sub(1))),
    })
}

/// Waits until everything expected arrived, the deliveries stop coming
/// while subscribers are gone, or `limit` passes.
async fn drain(counters: &Counters, expected: u64, limit: Duration) {
    let start = Instant::now();
    let mut last = counters.delivered();
    let mut last_change = Instant::now();
    while counters.delivered() < expected && start.elapsed() < limit {
        tokio::time::sleep(Duration::from_millis(10)).await;
        let now = counters.delivered();
        if now != last {
            last = now;
            last_change = Instant::now();
        } else if counters.closed() > 0 && last_change.elapsed() > Duration::from_millis(300) {
            break;
        }
    }
}

/// Bounds of a search for the highest rate with no loss.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct SearchArgs {
    /// First rate tried, publishes/s.
    #[arg(long)]
    pub(crate) start_rate: Option<f64>,
    /// Each passing step multiplies the rate by this until a step fails.
    #[arg(long, default_value_t = 2.0)]
    pub(crate) growth: f64,
    /// Stop once the failing rate is within this factor of the passing one.
    #[arg(long, default_value_t = 1.12)]
    pub(crate) precision: f64,
    /// Seconds of publishing per step.
    #[arg(long, default_value_t = 2.0)]
    pub(crate) step_secs: f64,
    /// Longest drain after a step, seconds.
    #[arg(long, default_value_t = 2.0)]
    pub(crate) drain_secs: f64,
    /// The whole search (connecting included) stays under this, seconds.
    #[arg(long, default_value_t = 50.0)]
    pub(crate) budget_secs: f64,
}

/// Where a search is.
pub(crate) struct Search {
    args: SearchArgs,
    /// Highest rate that passed.
    pub(crate) good: Option<f64>,
    /// Lowest rate that failed.
    pub(crate) bad: Option<f64>,
    /// The next rate to try.
    pub(crate) next: f64,
}

impl Search {
    pub(crate) fn new(args: SearchArgs, default_start: f64) -> Search {
        let next = args.start_rate.unwrap_or(default_start);
        Search {
            args,
            good: None,
            bad: None,
            next,
        }
    }

    /// Records a step's outcome and picks the next rate; false when done.
    pub(crate) fn record(&mut self, rate: f64, passed: bool) -> bool {
        if passed {
            self.good = Some(self.good.map_or(rate, |g| g.max(rate)));
        } else {
            self.bad = Some(self.bad.map_or(rate, |b| b.min(rate)));
        }
        self.next = match (self.good, self.bad) {
            (Some(good), None) => good * self.args.growth,
            (None, Some(bad)) => bad / self.args.growth,
            (Some(good), Some(bad)) => {
                if bad / good <= self.args.precision {
                    return false;
                }
                (good * bad).sqrt()
            }
            (None, None) => self.next,
        };
        self.next >= 1.0
    }

    /// Whether another step (plus `reconnect` time) fits the budget.
    pub(crate) fn fits(&self, started: Instant, reconnect: Duration) -> bool {
        let step = Duration::from_secs_f64(self.args.step_secs + self.args.drain_secs);
        started.elapsed() + step + reconnect < Duration::from_secs_f64(self.args.budget_secs)
    }

    pub(crate) fn plan_times(&self) -> (Duration, Duration) {
        (
            Duration::from_secs_f64(self.args.step_secs),
            Duration::from_secs_f64(self.args.drain_secs),
        )
    }
}
