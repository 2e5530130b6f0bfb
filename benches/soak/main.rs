//! Soak and chaos run (issue 7): a release hub as a child process, and for
//! a bounded time thousands of clients of all three types that connect,
//! subscribe, publish, submit, run tasks, die and come back at random. At
//! the end it checks that nothing was lost or duplicated, that slow readers
//! were closed with 4008, that the hub's memory came back down and that it
//! logged no errors, prints a summary table, and exits non-zero if any
//! check failed. `benches/soak/README.md` explains the method and holds the
//! latest full run.
//!
//! ```text
//! cargo bench --bench soak                                  # 5 min, 2,000 clients
//! cargo bench --bench soak -- --duration 30s --clients 200  # a quick one
//! ```
//!
//! Layout: `hub` (the child process: start, RSS, logs, stop), `clients`
//! (the simulated clients), `ledger` (what they saw, and the delivery
//! check), `report` (the checks and the table).

mod clients;
mod hub;
mod ledger;
mod report;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicU32;
use std::time::{Duration, Instant};

use anyhow::Result;
use clap::Parser;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use clients::{Ctx, Rates};
use hub::HubProcess;
use ledger::{Ledger, lock};

#[derive(Parser, Debug, Clone)]
#[command(
    name = "soak",
    about = "chanhub soak and chaos run (see benches/soak/README.md)"
)]
pub(crate) struct Args {
    /// Length of the measured phase.
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Length of the warm-up phase (same load) before the RSS baseline.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    warmup: Duration,
    /// Simulated clients: 70% browsers (0.5% of all are slow readers), 15%
    /// workers, 7.5% publishers, 7.5% task submitters.
    #[arg(long, default_value_t = 2000)]
    clients: usize,
    /// Seed of every random choice (printed; random when absent).
    #[arg(long)]
    seed: Option<u64>,
    /// Events per second per publisher connection.
    #[arg(long, default_value_t = 2.0)]
    publish_rate: f64,
    /// Tasks per second per submitter connection.
    #[arg(long, default_value_t = 0.5)]
    task_rate: f64,
    /// Mean connection lifetime (exponential, 1 s to 3× the mean).
    #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
    mean_life: Duration,
    /// Slow readers (default: 0.5% of the clients, at least 1).
    #[arg(long)]
    slow_readers: Option<usize>,
    /// Fraction of worker sessions that end by dropping the socket mid-task.
    #[arg(long, default_value_t = 0.3)]
    kill_ratio: f64,
    /// Fraction of other sessions that leave without a close frame.
    #[arg(long, default_value_t = 0.25)]
    abrupt_ratio: f64,
    /// Task work time range in ms, `LO-HI`.
    #[arg(long, default_value = "50-500")]
    work_ms: String,
    /// How long finished tasks stay in the hub (`tasks.retention`); the RSS
    /// is read after it has passed.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    retention: Duration,
    /// Wait after clients leave before reading the RSS (default: retention + 10 s).
    #[arg(long, value_parser = humantime::parse_duration)]
    settle: Option<Duration>,
    /// The hub binary (default: `cargo build --release --bin chanhub` first).
    #[arg(long)]
    hub: Option<PathBuf>,
    /// Allowed RSS growth, percent of the post-warm-up level.
    #[arg(long, default_value_t = 10.0)]
    rss_tolerance: f64,
    /// Run the measured phase this many times, reading the RSS after each
    /// (tells a leak, which grows every round, from a high-water mark).
    #[arg(long, default_value_t = 1)]
    repeat: usize,
    /// Extra environment for the hub, `KEY=VALUE` (repeatable), e.g.
    /// `CHANHUB_LIMITS__OUTBOUND_QUEUE=256` or `MALLOC_ARENA_MAX=2`.
    #[arg(long = "hub-env")]
    hub_env: Vec<String>,
    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // `cargo test --benches` runs every bench target without arguments:
    // a five-minute soak is not a test, so only `cargo bench` (which passes
    // `--bench`) or explicit arguments start it.
    if args.is_empty() {
        println!("soak: run with `cargo bench --bench soak` (see benches/soak/README.md)");
        return;
    }
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    match runtime.block_on(run(args)) {
        Ok(true) => {}
        Ok(false) => std::process::exit(1),
        Err(e) => {
            eprintln!("soak: {e:#}");
            std::process::exit(2);
        }
    }
}

/// RSS readings of the hub.
#[derive(Debug, Default, Clone)]
pub(crate) struct Memory {
    pub(crate) idle_start_kib: u64,
    pub(crate) warm_kib: u64,
    pub(crate) peak_kib: u64,
    pub(crate) end_kib: u64,
    /// CPU use during the measured phase, percent of one core.
    pub(crate) hub_cpu: f64,
    pub(crate) soak_cpu: f64,
    /// After each measured round but the last (`--repeat`).
    pub(crate) rounds_kib: Vec<u64>,
    /// Size of `tasks.redb` at the end.
    pub(crate) store_bytes: u64,
}

/// Client counts by kind.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Mix {
    pub(crate) browsers: usize,
    pub(crate) slow: usize,
    pub(crate) workers: usize,
    pub(crate) publishers: usize,
    pub(crate) submitters: usize,
}

impl Mix {
    fn of(args: &Args) -> Mix {
        let n = args.clients.max(8);
        let workers = (n * 15 / 100).max(2);
        let publishers = (n * 75 / 1000).max(1);
        let submitters = (n * 75 / 1000).max(1);
        let slow = args.slow_readers.unwrap_or((n / 200).max(1));
        let browsers = n.saturating_sub(workers + publishers + submitters + slow);
        Mix {
            browsers,
            slow,
            workers,
            publishers,
            submitters,
        }
    }
}

async fn run(args: Args) -> Result<bool> {
    let seed = args.seed.unwrap_or_else(rand::random);
    let mix = Mix::of(&args);
    let (lo, hi) = args
        .work_ms
        .split_once('-')
        .and_then(|(a, b)| Some((a.parse().ok()?, b.parse().ok()?)))
        .unwrap_or((50, 500));
    let rates = Rates {
        publish_rate: args.publish_rate,
        task_rate: args.task_rate,
        mean_life: args.mean_life,
        kill_ratio: args.kill_ratio,
        abrupt_ratio: args.abrupt_ratio,
        work_ms: (lo, hi.max(lo)),
    };
    let settle = args
        .settle
        .unwrap_or(args.retention + Duration::from_secs(10));
    eprintln!(
        "soak: seed {seed}; {} clients ({} browsers, {} slow readers, {} workers, {} publishers, {} submitters); warm-up {:?}, run {:?}",
        args.clients,
        mix.browsers,
        mix.slow,
        mix.workers,
        mix.publishers,
        mix.submitters,
        args.warmup,
        args.duration
    );
    let binary = hub::hub_binary(args.hub.clone())?;
    let retention = humantime::format_duration(args.retention).to_string();
    let mut env = vec![("CHANHUB_TASKS__RETENTION".to_string(), retention)];
    for kv in &args.hub_env {
        let (k, v) = kv
            .split_once('=')
            .ok_or_else(|| anyhow::anyhow!("--hub-env wants KEY=VALUE, not {kv}"))?;
        env.push((k.to_string(), v.to_string()));
    }
    let hub = HubProcess::start(&binary, &env).await?;
    eprintln!("soak: hub pid {} on {}", hub.pid, hub.addr);
    let hub = Arc::new(hub);
    let ledger = Arc::new(Ledger::new());
    let next_publisher = Arc::new(AtomicU32::new(1));
    let mut memory = Memory {
        idle_start_kib: hub.rss_kib().unwrap_or(0),
        ..Memory::default()
    };

    // Peak RSS, sampled every 500 ms for the whole run.
    let peak = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let sampler = {
        let (hub, peak) = (Arc::clone(&hub), Arc::clone(&peak));
        tokio::spawn(async move {
            loop {
                if let Some(kib) = hub.rss_kib() {
                    peak.fetch_max(kib, std::sync::atomic::Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        })
    };

    let started = Instant::now();
    let mut stuck = 0usize;
    eprintln!("soak: warm-up for {:?}", args.warmup);
    stuck += phase(
        &hub,
        &ledger,
        &next_publisher,
        &rates,
        mix,
        seed,
        1,
        args.warmup,
    )
    .await;
    memory.warm_kib = settle_rss(&hub, settle).await;
    eprintln!(
        "soak: post-warm-up RSS {} MiB; running for {:?}",
        memory.warm_kib / 1024,
        args.duration
    );
    peak.store(0, std::sync::atomic::Ordering::Relaxed);
    let cpu_at = (
        Instant::now(),
        hub::cpu_secs(Some(hub.pid)),
        hub::cpu_secs(None),
    );
    for round in 0..args.repeat.max(1) {
        if round > 0 {
            let kib = settle_rss(&hub, settle).await;
            eprintln!("soak: RSS after round {round}: {} MiB", kib / 1024);
            memory.rounds_kib.push(kib);
        }
        stuck += phase(
            &hub,
            &ledger,
            &next_publisher,
            &rates,
            mix,
            seed,
            2 + round as u64,
            args.duration,
        )
        .await;
    }
    let wall = cpu_at.0.elapsed().as_secs_f64();
    memory.hub_cpu = 100.0 * (hub::cpu_secs(Some(hub.pid)) - cpu_at.1) / wall;
    memory.soak_cpu = 100.0 * (hub::cpu_secs(None) - cpu_at.2) / wall;
    memory.peak_kib = peak.load(std::sync::atomic::Ordering::Relaxed);
    let leftovers = report::leftover_tasks(&hub).await;
    let metrics = hub.get("/metrics").await.unwrap_or_default();
    memory.end_kib = settle_rss(&hub, settle).await;
    let settled_metrics = hub.get("/metrics").await.unwrap_or_default();
    memory.store_bytes = std::fs::metadata(hub.data_dir().join("tasks.redb"))
        .map(|m| m.len())
        .unwrap_or(0);
    sampler.abort();
    let _ = sampler.await;

    let hub = Arc::try_unwrap(hub).map_err(|_| anyhow::anyhow!("hub handle still shared"))?;
    let logs = Arc::clone(&hub.logs);
    let exit = hub.stop(Duration::from_secs(20)).await;
    // Let the log readers see the last lines.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let logs = std::mem::take(&mut *lock(&logs));
    let outcome = report::Outcome {
        seed,
        mix,
        memory,
        rss_tolerance: args.rss_tolerance,
        leftovers,
        metrics,
        settled_metrics,
        logs,
        exit,
        stuck_clients: stuck,
        elapsed: started.elapsed(),
    };
    Ok(report::print(&args_line(), &ledger, &outcome))
}

fn args_line() -> String {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    format!("cargo bench --bench soak -- {}", args.join(" "))
        .trim_end_matches(" -- ")
        .to_string()
}

/// Runs one phase: every client for `duration`, then the orderly end —
/// load stops, tasks drain, workers and the watcher leave. Returns how many
/// client tasks had to be aborted (0 when everything stopped by itself).
#[allow(clippy::too_many_arguments)]
async fn phase(
    hub: &Arc<HubProcess>,
    ledger: &Arc<Ledger>,
    next_publisher: &Arc<AtomicU32>,
    rates: &Rates,
    mix: Mix,
    seed: u64,
    number: u64,
    duration: Duration,
) -> usize {
    let ctx = Arc::new(Ctx {
        ledger: Arc::clone(ledger),
        addr: hub.addr,
        mint: Box::new(hub.minter()),
        rates: rates.clone(),
        stop: CancellationToken::new(),
        stop_workers: CancellationToken::new(),
        stop_watcher: CancellationToken::new(),
        next_publisher: Arc::clone(next_publisher),
    });
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let watcher = tokio::spawn(clients::watcher(Arc::clone(&ctx), ready_tx));
    if ready_rx.await.is_err() {
        ledger.note("the watcher could not subscribe".into());
    }
    // Start spread over the first seconds, not all at once.
    let spread = (duration / 4).min(Duration::from_secs(5)).as_millis() as u64;
    let mut load = JoinSet::new();
    let mut workers = JoinSet::new();
    let mut idx = 0usize;
    let mut spawn = |set: &mut JoinSet<()>, kind: usize, count: usize| {
        for _ in 0..count {
            idx += 1;
            let mut rng = clients::client_rng(seed, number, idx);
            let delay = Duration::from_millis(rand::Rng::random_range(&mut rng, 0..=spread));
            let ctx = Arc::clone(&ctx);
            let i = idx;
            set.spawn(async move {
                tokio::time::sleep(delay).await;
                match kind {
                    0 => clients::browser(ctx, i, rng).await,
                    1 => clients::slow_reader(ctx, i, rng).await,
                    2 => clients::publisher(ctx, i, rng).await,
                    3 => clients::submitter(ctx, i, rng).await,
                    _ => clients::worker(ctx, i, rng).await,
                }
            });
        }
    };
    spawn(&mut workers, 4, mix.workers);
    spawn(&mut load, 0, mix.browsers);
    spawn(&mut load, 1, mix.slow);
    spawn(&mut load, 2, mix.publishers);
    spawn(&mut load, 3, mix.submitters);

    tokio::time::sleep(duration).await;
    eprintln!("soak: phase {number}: stopping the load");
    ctx.stop.cancel();
    let mut stuck = join_within(&mut load, Duration::from_secs(30)).await;
    // Tasks drain: every accepted task reaches an end (bounded).
    let drain_until = Instant::now() + Duration::from_secs(30);
    while Instant::now() < drain_until && report::unfinished(ledger) > 0 {
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    ctx.stop_workers.cancel();
    stuck += join_within(&mut workers, Duration::from_secs(20)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    ctx.stop_watcher.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(5), watcher).await;
    eprintln!("soak: phase {number}: done ({stuck} client task(s) aborted)");
    stuck
}

/// Waits for every task of `set`, at most `limit`; aborts the rest and
/// returns how many there were.
async fn join_within(set: &mut JoinSet<()>, limit: Duration) -> usize {
    let _ = tokio::time::timeout(limit, async { while set.join_next().await.is_some() {} }).await;
    let left = set.len();
    set.abort_all();
    left
}

/// Waits `settle` with no clients, then returns the mean of the last three
/// one-second RSS readings.
async fn settle_rss(hub: &HubProcess, settle: Duration) -> u64 {
    let until = Instant::now() + settle;
    let mut readings = Vec::new();
    while Instant::now() < until {
        tokio::time::sleep(Duration::from_secs(1)).await;
        if let Some(kib) = hub.rss_kib() {
            readings.push(kib);
        }
    }
    let last: Vec<u64> = readings.iter().rev().take(3).copied().collect();
    if last.is_empty() {
        return hub.rss_kib().unwrap_or(0);
    }
    last.iter().sum::<u64>() / last.len() as u64
}
