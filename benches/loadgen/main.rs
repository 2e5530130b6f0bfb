//! The end-to-end load generator of issue 4: drives chanhub (WebSocket and
//! SSE) and NATS (over WebSocket) with the same scenarios and reports
//! delivered messages/s, loss, latency percentiles, the broker's RSS and
//! CPU, and its own CPU. `benches/compare.sh` runs it against both brokers
//! and prints the table; `benches/README.md` explains the method.
//!
//! ```text
//! loadgen fanout   --broker chanhub --addr 127.0.0.1:7070 --secret S --pid P --subs 1000
//! loadgen latency  --broker nats --addr 127.0.0.1:8080 --secret T --subs 1000 --rate 100
//! loadgen calls    --broker chanhub --addr 127.0.0.1:7070 --secret S --servers 4 --window 64
//! loadgen worker   --broker chanhub --addr 127.0.0.1:7070 --secret S --slots 64
//! loadgen report   results.jsonl
//! loadgen floor echo --listen 127.0.0.1:17999   # and, on the other core:
//! loadgen floor ping --addr 127.0.0.1:17999 --round-trips 2
//! ```
//!
//! Layout: `client` (broker adapters: chanhub WS, `sse`, `nats`), `group`
//! (subscriber connections and counters), `step` (open-loop publishing and
//! the rate search), `scenarios`, `tasks` and `calls` (what is measured),
//! `worker` (a Rust-client worker for `benches/js_worker.sh`), `stats`
//! (/proc and histograms), `payload` (the stamped 64-byte body), `report`
//! (JSON lines and the markdown tables).

mod calls;
mod client;
mod floor;
mod group;
mod nats;
mod payload;
mod rawws;
mod report;
mod scenarios;
mod sse;
mod stats;
mod step;
mod tasks;
mod worker;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

use client::{Broker, Target, Transport};
use report::RunReport;
use stats::Proc;
use step::SearchArgs;

/// Every run stops by itself after this long, whatever happens.
const HARD_LIMIT: Duration = Duration::from_secs(90);

#[derive(Parser)]
#[command(
    name = "loadgen",
    about = "chanhub vs NATS load generator (see benches/README.md)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// The broker under test and where results go.
#[derive(clap::Args, Clone)]
struct TargetArgs {
    #[arg(long, value_enum)]
    broker: Broker,
    /// chanhub's HTTP address, or NATS's WebSocket listener.
    #[arg(long)]
    addr: SocketAddr,
    /// chanhub: the HS256 secret (CHANHUB_AUTH__SECRET). NATS: the auth token.
    #[arg(long, env = "LOADGEN_SECRET")]
    secret: String,
    /// The broker's pid, for RSS and CPU from /proc.
    #[arg(long)]
    pid: Option<u32>,
    /// chanhub cluster: a node subscribers and workers connect to (repeat
    /// for each node; round robin). The publisher and submitter stay on
    /// `--addr`. Results are reported as `cluster-<scenario>`.
    #[arg(long)]
    spread: Vec<SocketAddr>,
    /// Append the result as a JSON line to this file.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Spread the connections over this many loopback source addresses
    /// (127.0.0.1 to 127.0.0.N): one address has ~28k ephemeral ports, so
    /// more than ~25k connections to one broker need several.
    #[arg(long, default_value_t = 1)]
    sources: usize,
}

/// The two sides of the loopback floor (`floor`).
#[derive(Subcommand)]
enum FloorSide {
    /// A TCP echo server, until killed.
    Echo {
        #[arg(long)]
        listen: SocketAddr,
    },
    /// One-byte round trips against `floor echo`, one operation at a time.
    Ping {
        #[arg(long)]
        addr: SocketAddr,
        /// Round trips per measured operation (a call is 2).
        #[arg(long, default_value_t = 2)]
        round_trips: u32,
        #[arg(long, default_value_t = 20_000)]
        ops: usize,
    },
}

#[derive(Subcommand)]
enum Command {
    /// The loopback floor: raw TCP round trips, no broker (see `floor.rs`).
    Floor {
        #[command(subcommand)]
        side: FloorSide,
    },
    /// 1 publisher → N subscribers of `bench:*`; highest rate with no loss.
    Fanout {
        #[command(flatten)]
        target: TargetArgs,
        #[arg(long, default_value_t = 1000)]
        subs: usize,
        /// Subscribe over SSE (`/api/stream`) instead of WebSocket (chanhub only).
        #[arg(long)]
        sse: bool,
        #[command(flatten)]
        search: SearchArgs,
    },
    /// p50…p99.9 at a fixed publish rate to N subscribers.
    Latency {
        #[command(flatten)]
        target: TargetArgs,
        #[arg(long, default_value_t = 1000)]
        subs: usize,
        /// Publishes per second.
        #[arg(long, default_value_t = 100.0)]
        rate: f64,
        #[arg(long, default_value_t = 10.0)]
        secs: f64,
    },
    /// Fan-out under load: `rate` publishes/s to N subscribers of `bench:*`
    /// (rate × N deliveries/s offered); delivered/s, p50…p99.9, CPU.
    Load {
        #[command(flatten)]
        target: TargetArgs,
        #[arg(long, default_value_t = 1000)]
        subs: usize,
        /// Publishes per second.
        #[arg(long, default_value_t = 2000.0)]
        rate: f64,
        #[arg(long, default_value_t = 5.0)]
        secs: f64,
    },
    /// N connections, each on its own `session:<i>:*`; highest rate with no loss.
    Patterns {
        #[command(flatten)]
        target: TargetArgs,
        #[arg(long, default_value_t = 10_000)]
        conns: usize,
        #[command(flatten)]
        search: SearchArgs,
    },
    /// RSS per idle authenticated connection with one subscription.
    Idle {
        #[command(flatten)]
        target: TargetArgs,
        #[arg(long, default_value_t = 10_000)]
        conns: usize,
    },
    /// New connections/s (connect + auth + subscribe).
    Connect {
        #[command(flatten)]
        target: TargetArgs,
        #[arg(long, default_value_t = 10_000)]
        conns: usize,
        /// Connections being set up at once (64 gave both brokers their
        /// best rate here; 512 overflows the accept queue).
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
    },
    /// Task round trips (chanhub) / queue-group request-reply (NATS).
    Tasks {
        #[command(flatten)]
        target: TargetArgs,
        /// Worker connections the generator opens; 0: none, the tasks go to
        /// workers already connected (`loadgen worker`, a Node worker).
        #[arg(long, default_value_t = 8)]
        workers: usize,
        /// Round trips kept in flight.
        #[arg(long, default_value_t = 64)]
        window: usize,
        #[arg(long, default_value_t = 5.0)]
        secs: f64,
    },
    /// Request/reply round trips: chanhub `serve`/`call`, NATS queue-group
    /// request-reply with reply inboxes.
    Calls {
        #[command(flatten)]
        target: TargetArgs,
        #[command(flatten)]
        calls: calls::CallArgs,
    },
    /// A `bench:task` worker on the Rust client library (chanhub only);
    /// runs until killed. For `tasks --workers 0`.
    Worker {
        #[command(flatten)]
        target: TargetArgs,
        #[arg(long, default_value_t = 64)]
        slots: u32,
    },
    /// Prints the markdown tables for a file of results.
    Report { input: PathBuf },
}

fn main() -> Result<()> {
    // `cargo bench` and `cargo test --benches` run every bench target,
    // passing `--bench` or nothing: this one needs a broker, so it only
    // says how to use it.
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.is_empty() || args.iter().all(|a| a == "--bench") {
        eprintln!(
            "loadgen: end-to-end load generator; run `bash benches/compare.sh` (see benches/README.md)"
        );
        return Ok(());
    }
    let cli = Cli::parse();
    if let Command::Report { input } = &cli.command {
        return report::print(input);
    }
    // One thread: the generator is pinned to one core, and a
    // current-thread runtime spends nothing on cross-thread wake-ups.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    payload::epoch();
    if let Command::Floor { side } = &cli.command {
        return runtime.block_on(async {
            match *side {
                FloorSide::Echo { listen } => floor::echo(listen).await,
                FloorSide::Ping {
                    addr,
                    round_trips,
                    ops,
                } => floor::ping(addr, round_trips, ops).await,
            }
        });
    }
    if let Command::Worker { target, slots } = &cli.command {
        // Runs until killed: no hard limit, no report.
        let (t, _) = target_of(target);
        return runtime.block_on(worker::run(&t, *slots));
    }
    let report = runtime.block_on(async {
        tokio::time::timeout(HARD_LIMIT, run(cli.command))
            .await
            .context("the run hit its hard time limit")?
    })?;
    let (report, out) = report;
    println!("{}", report.summary());
    if let Some(out) = out {
        report.append_to(&out)?;
    }
    // Dropping the runtime would wait for nothing useful; connections close
    // with the process.
    runtime.shutdown_timeout(Duration::from_millis(100));
    Ok(())
}

fn target_of(args: &TargetArgs) -> (Target, Proc) {
    client::spread_sources(args.sources);
    let target = Target {
        broker: args.broker,
        addr: args.addr,
        secret: args.secret.clone(),
        spread: args.spread.clone(),
    };
    let proc = args.pid.map_or(Proc::Unknown, Proc::Pid);
    (target, proc)
}

async fn run(command: Command) -> Result<(RunReport, Option<PathBuf>)> {
    let (args, report) = match command {
        Command::Fanout {
            target,
            subs,
            sse,
            search,
        } => {
            let (t, p) = target_of(&target);
            let transport = if sse { Transport::Sse } else { Transport::Ws };
            let r = scenarios::fanout(&t, p, transport, subs, search).await?;
            (target, r)
        }
        Command::Latency {
            target,
            subs,
            rate,
            secs,
        } => {
            let (t, p) = target_of(&target);
            let r = scenarios::latency(&t, p, subs, rate, secs).await?;
            (target, r)
        }
        Command::Load {
            target,
            subs,
            rate,
            secs,
        } => {
            let (t, p) = target_of(&target);
            let r = scenarios::load(&t, p, subs, rate, secs).await?;
            (target, r)
        }
        Command::Patterns {
            target,
            conns,
            search,
        } => {
            let (t, p) = target_of(&target);
            let r = scenarios::patterns(&t, p, conns, search).await?;
            (target, r)
        }
        Command::Idle { target, conns } => {
            let (t, p) = target_of(&target);
            let r = scenarios::idle(&t, p, conns).await?;
            (target, r)
        }
        Command::Connect {
            target,
            conns,
            concurrency,
        } => {
            let (t, p) = target_of(&target);
            let r = scenarios::connect_rate(&t, p, conns, concurrency).await?;
            (target, r)
        }
        Command::Tasks {
            target,
            workers,
            window,
            secs,
        } => {
            let (t, p) = target_of(&target);
            let r = tasks::round_trips(&t, p, workers, window, secs).await?;
            (target, r)
        }
        Command::Calls { target, calls } => {
            let (t, p) = target_of(&target);
            let r = calls::calls(&t, p, calls).await?;
            (target, r)
        }
        Command::Report { .. } => anyhow::bail!("`report` runs without a broker"),
        Command::Floor { .. } => anyhow::bail!("`floor` runs without a report"),
        Command::Worker { .. } => anyhow::bail!("`worker` runs until killed, without a report"),
    };
    Ok((report, args.out))
}
