//! Request/reply calls (issue 16). chanhub: `servers` connections `serve`
//! `bench.echo` and answer each `call:request` with its params as the
//! result; `callers` connections each keep `window` `call`s in flight and
//! wait for their `result`s. Both use `hub` tokens, as the publisher does:
//! the default per-connection frame rates of the other types (`browser`
//! 1,000 and `worker` 100,000 per 10 s, `limits.messages`) would refuse
//! the load, and `hub` is unlimited by default. NATS: `servers` responders in
//! the queue group `echo` on `bench.echo`; each caller subscribes to
//! `_INBOX.<caller>.*` and publishes requests with the reply subject
//! `_INBOX.<caller>.<n>`.
//!
//! Closed loop: a caller sends its next call as soon as a result comes, so
//! with one caller and a window of one the latency is the bare round trip.
//! Every call carries the 64-byte stamped payload (chanhub: as the JSON
//! string `params`; NATS: the raw body), which comes back as the result,
//! so the round trip is measured from the send to the receipt of the reply.
//! Callers and servers of both brokers read through the lean reader
//! ([`crate::rawws`]).

use std::fmt::Write;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use chanhub::auth::ClientType;
use hdrhistogram::Histogram;
use serde::Deserialize;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::client::{Broker, Target, Transport, chanhub_raw_connect};
use crate::nats::NatsConn;
use crate::payload;
use crate::rawws::{RawWs, opcode};
use crate::report::RunReport;
use crate::stats::{self, Percentiles, Proc};
use crate::tasks::run_nats_responder;

/// The method called, the same name for both brokers (`.` stays inside one
/// segment of a chanhub name).
const METHOD: &str = "bench.echo";

/// Read buffer of callers and servers: a few dozen replies per read.
const READ_BUFFER: usize = 64 * 1024;

/// Longest wait for the calls still in flight once a phase's time is up.
const FINISH_TIMEOUT: Duration = Duration::from_secs(5);

/// Longest the unmeasured warm-up calls may take.
const WARMUP_LIMIT: Duration = Duration::from_secs(5);

/// Most concurrency a chanhub server may ask for (`calls.max_concurrency`).
const MAX_CONCURRENCY: usize = 1024;

/// Shape and bounds of a calls run.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct CallArgs {
    /// Serving connections (NATS: responders in one queue group).
    #[arg(long, default_value_t = 1)]
    pub(crate) servers: usize,
    /// Calling connections.
    #[arg(long, default_value_t = 1)]
    pub(crate) callers: usize,
    /// Calls each caller keeps in flight.
    #[arg(long, default_value_t = 1)]
    pub(crate) window: usize,
    /// Calls measured, over all callers (each makes an equal share).
    #[arg(long, default_value_t = 20_000)]
    pub(crate) calls: u64,
    /// Calls made first and not measured, over all callers.
    #[arg(long, default_value_t = 1_000)]
    pub(crate) warmup: u64,
    /// Time bound of the measured phase, seconds: no call starts after it.
    #[arg(long, default_value_t = 10.0)]
    pub(crate) secs: f64,
}

/// Connects the servers and callers, runs the warm-up, then the measured
/// calls, and reports calls/s and the round-trip percentiles.
pub(crate) async fn calls(target: &Target, broker: Proc, args: CallArgs) -> Result<RunReport> {
    if !target.spread.is_empty() {
        bail!("calls are routed within one hub: --spread does not apply");
    }
    if args.servers == 0 || args.callers == 0 || args.window == 0 {
        bail!("--servers, --callers and --window must be at least 1");
    }
    let in_flight = args.callers * args.window;
    let stop = CancellationToken::new();
    let mut servers = JoinSet::new();
    for i in 0..args.servers {
        match target.broker {
            Broker::Chanhub => {
                let ws = chanhub_server(target, i, in_flight.min(MAX_CONCURRENCY)).await?;
                servers.spawn(run_chanhub_server(ws, stop.clone()));
            }
            Broker::Nats => {
                let sub = format!("SUB {METHOD} echo {}\r\n", i + 1);
                let conn =
                    NatsConn::connect(target.addr, &target.secret, &sub, READ_BUFFER).await?;
                let stop = stop.clone();
                servers.spawn(async move {
                    run_nats_responder(conn, stop).await;
                    Ok(())
                });
            }
        }
    }
    let mut callers = Vec::with_capacity(args.callers);
    for i in 0..args.callers {
        callers.push(Caller::connect(target, i).await?);
    }
    let measured = tokio::select! {
        result = measure(&mut callers, broker.clone(), &args) => result,
        Some(ended) = servers.join_next() => match ended {
            Ok(Err(e)) => Err(e.context("a server failed")),
            _ => Err(anyhow::anyhow!("a server's connection ended during the run")),
        },
    };
    stop.cancel();
    while servers.join_next().await.is_some() {}
    let m = measured?;

    let secs = m.elapsed.as_secs_f64();
    let per_call = |cpu: Option<f64>| cpu.map(|s| s * 1e6 / m.done as f64);
    let mut report = RunReport::new("calls", in_flight, target, Transport::Ws);
    report.value = m.done as f64 / secs;
    report.unit = "calls/s".into();
    report.latency = Percentiles::of(&m.hist);
    report.broker_cpu = m.broker_cpu;
    report.broker_wait = m.broker_wait;
    report.gen_cpu = m.gen_cpu;
    report.broker_rss_kib = broker.rss_kib();
    report.note = format!(
        "{} server(s), {} caller(s) × {} in flight; {} calls in {secs:.2}s; round trip p50 {} p99 {} p99.9 {}; CPU per call: broker {}, generator {} ({} CPU-s, waited {}){}",
        args.servers,
        args.callers,
        args.window,
        m.done,
        stats::fmt_us(report.latency.p50_us),
        stats::fmt_us(report.latency.p99_us),
        stats::fmt_us(report.latency.p999_us),
        fmt_cpu_us(per_call(m.broker_cpu_secs)),
        fmt_cpu_us(per_call(m.gen_cpu_secs)),
        m.gen_cpu_secs.map_or("?".into(), |s| format!("{s:.2}")),
        m.gen_wait.map_or("?".into(), |w| format!("{w:.0}%")),
        match target.broker {
            Broker::Chanhub => ", serve/call",
            Broker::Nats => ", queue-group request/reply",
        }
    );
    Ok(report)
}

fn fmt_cpu_us(us: Option<f64>) -> String {
    us.map_or("?".into(), |us| format!("{us:.1}µs"))
}

/// What the measured phase produced.
struct Measured {
    done: u64,
    hist: Histogram<u64>,
    /// From the start of the measured phase to the last reply.
    elapsed: Duration,
    broker_cpu: Option<f64>,
    broker_wait: Option<f64>,
    broker_cpu_secs: Option<f64>,
    gen_cpu: Option<f64>,
    gen_cpu_secs: Option<f64>,
    /// % of the time the generator waited for its core.
    gen_wait: Option<f64>,
}

/// The warm-up (not measured), then the measured calls with the CPU meters
/// running.
async fn measure(callers: &mut [Caller], broker: Proc, args: &CallArgs) -> Result<Measured> {
    let count = callers.len() as u64;
    if args.warmup > 0 {
        let share = args.warmup.div_ceil(count);
        let deadline = Instant::now() + WARMUP_LIMIT;
        let runs = callers
            .iter_mut()
            .map(|c| c.run(share, args.window, deadline));
        for run in futures::future::join_all(runs).await {
            run.context("warm-up")?;
        }
    }
    let share = args.calls.div_ceil(count);
    let broker_meter = broker.cpu_meter();
    let gen_meter = Proc::Myself.cpu_meter();
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(args.secs);
    let runs = callers
        .iter_mut()
        .map(|c| c.run(share, args.window, deadline));
    let outcomes = futures::future::join_all(runs).await;
    let mut m = Measured {
        done: 0,
        hist: stats::histogram(),
        elapsed: Duration::ZERO,
        broker_cpu: broker_meter.percent(),
        broker_wait: broker_meter.wait_percent(),
        broker_cpu_secs: broker_meter.seconds(),
        gen_cpu: gen_meter.percent(),
        gen_cpu_secs: gen_meter.seconds(),
        gen_wait: gen_meter.wait_percent(),
    };
    for outcome in outcomes {
        let outcome = outcome?;
        m.done += outcome.done;
        m.hist.add(&outcome.hist).context("merging histograms")?;
        if let Some(last) = outcome.last {
            m.elapsed = m.elapsed.max(last.duration_since(start));
        }
    }
    if m.done == 0 || m.elapsed.is_zero() {
        bail!("no call completed");
    }
    Ok(m)
}

/// Connects server `i` and serves `bench.echo` with `concurrency` slots.
async fn chanhub_server(target: &Target, i: usize, concurrency: usize) -> Result<RawWs> {
    let token = target.token(ClientType::Hub, &format!("server-{i}"))?;
    let serve = serde_json::json!({
        "type": "serve", "id": 2, "methods": [METHOD], "concurrency": concurrency,
    });
    chanhub_raw_connect(target.addr, &token, Some((&serve, "serving")), READ_BUFFER)
        .await
        .with_context(|| format!("server {i}"))
}

/// The fields of a `call:request` a server needs (the rest is skipped).
#[derive(Deserialize)]
struct CallRequest<'a> {
    #[serde(rename = "callId")]
    call_id: &'a str,
    /// The caller's 64-byte payload: a JSON string without escapes.
    params: &'a str,
}

/// Answers every `call:request` with its params as the result, all the
/// replies of one read in one write.
async fn run_chanhub_server(mut ws: RawWs, stop: CancellationToken) -> Result<()> {
    let mut out = String::new();
    let mut ends: Vec<usize> = Vec::new();
    loop {
        let mut failure: Option<anyhow::Error> = None;
        let mut on_frame = |op: u8, frame: &[u8]| {
            if op != opcode::TEXT || !frame.starts_with(br#"{"type":"call:request""#) {
                return;
            }
            match serde_json::from_slice::<CallRequest<'_>>(frame) {
                Ok(req) => {
                    let _ = write!(
                        out,
                        r#"{{"type":"call:reply","callId":"{}","result":"{}"}}"#,
                        req.call_id, req.params
                    );
                    ends.push(out.len());
                }
                Err(e) => {
                    let text = String::from_utf8_lossy(frame);
                    failure.get_or_insert(anyhow::anyhow!("unexpected call:request {text}: {e}"));
                }
            }
        };
        let open = tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            open = ws.read(&mut on_frame) => open?,
        };
        if let Some(failure) = failure {
            return Err(failure);
        }
        let mut start = 0;
        for end in ends.drain(..) {
            ws.queue(opcode::TEXT, &out.as_bytes()[start..end]);
            start = end;
        }
        out.clear();
        ws.flush().await?;
        if !open {
            bail!("chanhub closed the server's connection");
        }
    }
}

/// A caller's connection.
enum CallerConn {
    Chanhub(RawWs),
    Nats {
        conn: NatsConn,
        /// `_INBOX.<caller>`; replies come to `<inbox>.<n>`.
        inbox: String,
    },
}

/// One calling connection and its buffers.
struct Caller {
    conn: CallerConn,
    /// Ids of the calls (chanhub) and suffixes of the reply subjects (NATS).
    next_id: u64,
    payload: String,
    frame: String,
    /// Stamps of the replies of one read.
    stamps: Vec<u64>,
}

/// What one caller's phase produced.
struct Outcome {
    done: u64,
    hist: Histogram<u64>,
    /// When its last reply came.
    last: Option<Instant>,
}

impl Caller {
    /// Connects caller `i`.
    async fn connect(target: &Target, i: usize) -> Result<Caller> {
        let conn = match target.broker {
            Broker::Chanhub => {
                let token = target.token(ClientType::Hub, &format!("caller-{i}"))?;
                CallerConn::Chanhub(
                    chanhub_raw_connect(target.addr, &token, None, READ_BUFFER)
                        .await
                        .with_context(|| format!("caller {i}"))?,
                )
            }
            Broker::Nats => {
                let inbox = format!("_INBOX.lg{}c{i}", std::process::id());
                let sub = format!("SUB {inbox}.* 1\r\n");
                let conn = NatsConn::connect(target.addr, &target.secret, &sub, READ_BUFFER)
                    .await
                    .with_context(|| format!("caller {i}"))?;
                CallerConn::Nats { conn, inbox }
            }
        };
        Ok(Caller {
            conn,
            next_id: 1,
            payload: String::with_capacity(payload::SIZE),
            frame: String::with_capacity(256),
            stamps: Vec::new(),
        })
    }

    /// Makes up to `calls` calls, `window` at a time, starting none after
    /// `deadline`, and waits for the replies of those in flight (at most
    /// [`FINISH_TIMEOUT`] past the deadline).
    async fn run(&mut self, calls: u64, window: usize, deadline: Instant) -> Result<Outcome> {
        let mut hist = stats::histogram();
        let mut sent = 0;
        let mut in_flight = 0;
        let mut done = 0;
        let mut last = None;
        while in_flight < window && sent < calls {
            self.send().await?;
            sent += 1;
            in_flight += 1;
        }
        self.flush().await?;
        let give_up = deadline + FINISH_TIMEOUT;
        while in_flight > 0 {
            let now = Instant::now();
            if now >= give_up {
                bail!("{in_flight} calls unanswered {FINISH_TIMEOUT:?} after the time bound");
            }
            let open = tokio::time::timeout(give_up - now, self.recv())
                .await
                .unwrap_or(Ok(true))?;
            let now_ns = payload::now_nanos();
            let at = Instant::now();
            let replies = self.stamps.len();
            for stamp in std::mem::take(&mut self.stamps) {
                stats::record(
                    &mut hist,
                    Duration::from_nanos(now_ns.saturating_sub(stamp)),
                );
            }
            if replies > 0 {
                in_flight -= replies;
                done += replies as u64;
                last = Some(at);
            }
            for _ in 0..replies {
                if sent < calls && at < deadline {
                    self.send().await?;
                    sent += 1;
                    in_flight += 1;
                }
            }
            self.flush().await?;
            if !open {
                bail!("the caller's connection closed");
            }
        }
        Ok(Outcome { done, hist, last })
    }

    /// Queues one call carrying a payload stamped now.
    async fn send(&mut self) -> Result<()> {
        payload::encode(payload::now_nanos(), &mut self.payload);
        let id = self.next_id;
        self.next_id += 1;
        self.frame.clear();
        match &mut self.conn {
            CallerConn::Chanhub(ws) => {
                let _ = write!(
                    self.frame,
                    r#"{{"type":"call","id":{id},"method":"{METHOD}","params":"{}"}}"#,
                    self.payload
                );
                ws.queue(opcode::TEXT, self.frame.as_bytes());
            }
            CallerConn::Nats { conn, inbox } => {
                let _ = write!(self.frame, "{inbox}.{id}");
                conn.publish(METHOD, Some(&self.frame), self.payload.as_bytes())
                    .await?;
            }
        }
        Ok(())
    }

    async fn flush(&mut self) -> Result<()> {
        match &mut self.conn {
            CallerConn::Chanhub(ws) => ws.flush().await,
            CallerConn::Nats { conn, .. } => conn.flush().await,
        }
    }

    /// Waits for replies and puts their stamps in `stamps`; fails on a
    /// chanhub `error` or a reply without the payload. False once the
    /// connection is closed.
    async fn recv(&mut self) -> Result<bool> {
        let stamps = &mut self.stamps;
        let mut failure: Option<String> = None;
        let mut on_reply = |reply: &[u8]| match payload::decode(reply) {
            Some(stamp) => stamps.push(stamp),
            None => {
                failure.get_or_insert_with(|| String::from_utf8_lossy(reply).into_owned());
            }
        };
        let open = match &mut self.conn {
            CallerConn::Chanhub(ws) => {
                let open = ws
                    .read(&mut |op, frame| {
                        if op != opcode::TEXT {
                            return;
                        }
                        if frame.starts_with(br#"{"type":"result""#)
                            || frame.starts_with(br#"{"type":"error""#)
                        {
                            on_reply(frame);
                        }
                    })
                    .await?;
                if ws.has_queued() {
                    ws.flush().await?;
                }
                open
            }
            CallerConn::Nats { conn, .. } => conn.recv(&mut |d| on_reply(d.payload)).await?,
        };
        if let Some(failure) = failure {
            bail!("a call failed: {failure}");
        }
        Ok(open)
    }
}
