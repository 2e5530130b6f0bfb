//! What a run measures besides message counts: the broker's RSS and CPU
//! (from `/proc/<pid>`), the generator's own CPU (`/proc/self`), and latency
//! percentiles from an HDR histogram.

use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Clock ticks per second of `/proc/<pid>/stat` times (`USER_HZ`), which is
/// 100 on every Linux configuration this runs on.
const TICKS_PER_SEC: f64 = 100.0;

/// A process to watch: the broker (by pid) or the generator itself.
#[derive(Debug, Clone)]
pub(crate) enum Proc {
    /// `/proc/<pid>`.
    Pid(u32),
    /// `/proc/self`.
    Myself,
    /// No pid was given: nothing is read.
    Unknown,
}

impl Proc {
    fn dir(&self) -> Option<String> {
        match self {
            Proc::Pid(pid) => Some(format!("/proc/{pid}")),
            Proc::Myself => Some("/proc/self".into()),
            Proc::Unknown => None,
        }
    }

    /// Resident set size in KiB (`VmRSS`).
    pub(crate) fn rss_kib(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("{}/status", self.dir()?)).ok()?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
    }

    /// User + system CPU time consumed so far, in ticks.
    fn cpu_ticks(&self) -> Option<u64> {
        let stat = std::fs::read_to_string(format!("{}/stat", self.dir()?)).ok()?;
        // The command name may contain spaces; fields resume after its ')'.
        let rest = &stat[stat.rfind(')')? + 1..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        // utime and stime are fields 14 and 15 of the whole line.
        let utime: u64 = fields.get(11)?.parse().ok()?;
        let stime: u64 = fields.get(12)?.parse().ok()?;
        Some(utime + stime)
    }

    /// Nanoseconds the process's threads have spent runnable but waiting
    /// for a CPU (`/proc/<pid>/task/*/schedstat`, second field): how much
    /// other processes on the same core held it back.
    fn run_delay_ns(&self) -> Option<u64> {
        let tasks = std::fs::read_dir(format!("{}/task", self.dir()?)).ok()?;
        let mut total = 0;
        for task in tasks.flatten() {
            let stat = std::fs::read_to_string(task.path().join("schedstat")).unwrap_or_default();
            total += stat
                .split_whitespace()
                .nth(1)
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
        }
        Some(total)
    }

    /// Starts measuring CPU use from now.
    pub(crate) fn cpu_meter(&self) -> CpuMeter {
        CpuMeter {
            proc: self.clone(),
            ticks: self.cpu_ticks(),
            delay_ns: self.run_delay_ns(),
            at: Instant::now(),
        }
    }
}

/// CPU time of a process over an interval.
#[derive(Debug)]
pub(crate) struct CpuMeter {
    proc: Proc,
    ticks: Option<u64>,
    delay_ns: Option<u64>,
    at: Instant,
}

impl CpuMeter {
    /// CPU seconds (user + system) used since the meter started, to the
    /// 10 ms tick of `/proc`.
    pub(crate) fn seconds(&self) -> Option<f64> {
        Some(self.proc.cpu_ticks()?.checked_sub(self.ticks?)? as f64 / TICKS_PER_SEC)
    }

    /// Percent of one core used since the meter started (100 = one core busy).
    pub(crate) fn percent(&self) -> Option<f64> {
        let used = self.seconds()?;
        let wall = self.at.elapsed().as_secs_f64();
        (wall > 0.0).then(|| 100.0 * used / wall)
    }

    /// Percent of the wall time the process waited for a CPU while it had
    /// work (summed over threads). Well above zero: the core was shared
    /// and the figures of the run understate the process.
    pub(crate) fn wait_percent(&self) -> Option<f64> {
        let waited = self.proc.run_delay_ns()?.checked_sub(self.delay_ns?)? as f64 / 1e9;
        let wall = self.at.elapsed().as_secs_f64();
        (wall > 0.0).then(|| 100.0 * waited / wall)
    }
}

/// A latency histogram in microseconds, 1 µs to 60 s, 3 significant digits.
pub(crate) fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("constant bounds are valid")
}

/// Records one latency, clamped into the histogram's range.
pub(crate) fn record(hist: &mut Histogram<u64>, latency: Duration) {
    let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
    hist.saturating_record(micros.clamp(1, 60_000_000));
}

/// Latency percentiles in microseconds.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct Percentiles {
    /// Samples recorded.
    pub(crate) samples: u64,
    pub(crate) p50_us: u64,
    pub(crate) p90_us: u64,
    pub(crate) p99_us: u64,
    pub(crate) p999_us: u64,
    pub(crate) max_us: u64,
}

impl Percentiles {
    pub(crate) fn of(hist: &Histogram<u64>) -> Percentiles {
        Percentiles {
            samples: hist.len(),
            p50_us: hist.value_at_quantile(0.50),
            p90_us: hist.value_at_quantile(0.90),
            p99_us: hist.value_at_quantile(0.99),
            p999_us: hist.value_at_quantile(0.999),
            max_us: hist.max(),
        }
    }
}

/// Microseconds as a short human string: `850µs`, `12.3ms`, `1.20s`.
pub(crate) fn fmt_us(us: u64) -> String {
    match us {
        0..1_000 => format!("{us}µs"),
        1_000..1_000_000 => format!("{:.1}ms", us as f64 / 1e3),
        _ => format!("{:.2}s", us as f64 / 1e6),
    }
}

/// A rate as a short human string: `950`, `12.3k`, `1.85M`.
pub(crate) fn fmt_rate(rate: f64) -> String {
    if rate >= 1e6 {
        format!("{:.2}M", rate / 1e6)
    } else if rate >= 1e3 {
        format!("{:.1}k", rate / 1e3)
    } else {
        format!("{rate:.0}")
    }
}
