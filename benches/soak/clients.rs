//! The simulated clients. Each is one tokio task that runs sessions — one
//! WebSocket connection each — back to back until told to stop: connect and
//! authenticate, do its job for a random lifetime, leave (gracefully with a
//! close frame, or by dropping the socket), pause, reconnect.
//!
//! - [`browser`]: subscribes to a random set of `soak:c:*` channels and
//!   checks every event against the sequence numbers of its stream.
//! - [`publisher`] (hub token): publishes numbered events with an `id`, so
//!   the hub acknowledges each one.
//! - [`submitter`] (hub token): submits tasks and reads `task:accepted` and
//!   `task:result`.
//! - [`worker`]: registers, runs tasks for a random time; some sessions end
//!   by dropping the socket while holding a task.
//! - [`slow_reader`]: a browser that stops reading while its own flooder
//!   publishes to it, then expects the hub's close `4008`.
//! - [`watcher`]: one hub connection for the whole phase on the task
//!   lifecycle channels, counting completions per task.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use chanhub::auth::ClientType;
use futures::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use rand::rngs::StdRng;
use rand::{Rng, RngCore};
use serde_json::{Value, json};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::{Instant, sleep, sleep_until, timeout};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_util::sync::CancellationToken;

use crate::ledger::{CHANNELS, Counters, Ledger, Received, SubscriberView, histogram};

pub(crate) type Ws = WebSocketStream<TcpStream>;

/// Bound on connecting + authenticating + the first reply.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a leaving subscriber keeps reading after it decided to leave:
/// events acknowledged before the decision must arrive within it.
const LINGER: Duration = Duration::from_secs(2);
/// Bound on waiting for outstanding acknowledgements before a graceful close.
const LEAVE_WAIT: Duration = Duration::from_secs(5);

/// Rates and proportions; see `--help`.
#[derive(Debug, Clone)]
pub(crate) struct Rates {
    /// Events per second per publisher.
    pub(crate) publish_rate: f64,
    /// Tasks per second per submitter.
    pub(crate) task_rate: f64,
    /// Mean connection lifetime.
    pub(crate) mean_life: Duration,
    /// Fraction of worker sessions that end killed.
    pub(crate) kill_ratio: f64,
    /// Fraction of sessions that leave by dropping the socket.
    pub(crate) abrupt_ratio: f64,
    /// Work time per task, ms (uniform in this range).
    pub(crate) work_ms: (u64, u64),
}

/// Makes a token for (client type, subject).
pub(crate) type Minter = dyn Fn(ClientType, &str) -> String + Send + Sync;

/// What every client of a phase shares.
pub(crate) struct Ctx {
    pub(crate) ledger: Arc<Ledger>,
    pub(crate) addr: SocketAddr,
    /// Mints tokens (the hub's secret).
    pub(crate) mint: Box<Minter>,
    pub(crate) rates: Rates,
    /// Publishers, submitters, browsers and slow readers leave.
    pub(crate) stop: CancellationToken,
    /// Workers leave (after the tasks are done).
    pub(crate) stop_workers: CancellationToken,
    /// The watcher leaves.
    pub(crate) stop_watcher: CancellationToken,
    /// Numbers publisher connections across the run.
    pub(crate) next_publisher: Arc<AtomicU32>,
}

impl Ctx {
    fn count(&self, f: impl FnOnce(&Counters) -> &std::sync::atomic::AtomicU64) {
        Counters::add(f(&self.ledger.counters), 1);
    }

    /// A random session lifetime: exponential around the mean, 1 s to 3× the mean.
    fn life(&self, rng: &mut StdRng) -> Duration {
        let mean = self.rates.mean_life.as_secs_f64();
        Duration::from_secs_f64(exp_secs(rng, mean).clamp(1.0, 3.0 * mean.max(1.0)))
    }

    /// Sleeps `d` unless stopping; false if stopping.
    async fn pause(&self, stop: &CancellationToken, d: Duration) -> bool {
        tokio::select! {
            _ = stop.cancelled() => false,
            _ = sleep(d) => true,
        }
    }
}

/// Exponentially distributed seconds with the given mean.
fn exp_secs(rng: &mut StdRng, mean: f64) -> f64 {
    let u: f64 = rng.random();
    -(1.0 - u).ln() * mean
}

/// A frame from the hub, reduced to what the clients care about.
enum In {
    Msg(Value),
    /// The connection ended: the close code, or None without a close frame.
    Closed(Option<u16>),
}

async fn next(ws: &mut Ws) -> In {
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(text))) => match serde_json::from_str(&text) {
                Ok(v) => return In::Msg(v),
                Err(_) => return In::Msg(json!({"type": "unparsable", "text": text.as_str()})),
            },
            Some(Ok(Message::Close(frame))) => {
                return In::Closed(Some(frame.map(|f| u16::from(f.code)).unwrap_or(1005)));
            }
            Some(Ok(_)) => {}
            Some(Err(_)) | None => return In::Closed(None),
        }
    }
}

async fn send(ws: &mut Ws, v: Value) -> Result<()> {
    ws.send(Message::Text(v.to_string().into()))
        .await
        .context("sending")
}

/// Connects, authenticates with the first message and waits for `auth:success`.
async fn connect(ctx: &Ctx, ty: ClientType, sub: &str, rcvbuf: Option<u32>) -> Result<Ws> {
    let attempt = async {
        let socket = TcpSocket::new_v4()?;
        if let Some(size) = rcvbuf {
            socket.set_recv_buffer_size(size)?;
        }
        let tcp = socket.connect(ctx.addr).await?;
        tcp.set_nodelay(true)?;
        let config = WebSocketConfig::default().read_buffer_size(if rcvbuf.is_some() {
            4096
        } else {
            16 * 1024
        });
        let (mut ws, _) = tokio_tungstenite::client_async_with_config(
            format!("ws://{}/ws", ctx.addr),
            tcp,
            Some(config),
        )
        .await?;
        send(
            &mut ws,
            json!({"type": "auth", "id": 0, "token": (ctx.mint)(ty, sub)}),
        )
        .await?;
        match next(&mut ws).await {
            In::Msg(v) if v["type"] == "auth:success" => Ok(ws),
            In::Msg(v) => bail!("auth refused: {v}"),
            In::Closed(code) => bail!("closed during auth: {code:?}"),
        }
    };
    let result = match timeout(CONNECT_TIMEOUT, attempt).await {
        Ok(result) => result,
        Err(_) => Err(anyhow::anyhow!(
            "connect + auth took over {CONNECT_TIMEOUT:?}"
        )),
    };
    match result {
        Ok(ws) => {
            ctx.count(|c| &c.sessions);
            Ok(ws)
        }
        Err(e) => {
            ctx.count(|c| &c.connect_failures);
            ctx.ledger.note(format!("{sub}: connect failed: {e:#}"));
            Err(e)
        }
    }
}

/// Sends `subscribe` and waits for `subscribed` (nothing else can come first:
/// the connection has no other subscription).
async fn subscribe(ws: &mut Ws, patterns: &[String]) -> Result<()> {
    send(
        ws,
        json!({"type": "subscribe", "id": "sub", "channels": patterns}),
    )
    .await?;
    let wait = async {
        loop {
            match next(ws).await {
                In::Msg(v) if v["type"] == "subscribed" => {
                    if v["channels"].as_array().map(Vec::len) != Some(patterns.len()) {
                        bail!("subscribe partly refused: {v}");
                    }
                    return Ok(());
                }
                In::Msg(v) if v["type"] == "error" => bail!("subscribe refused: {v}"),
                In::Msg(_) => {}
                In::Closed(code) => bail!("closed while subscribing: {code:?}"),
            }
        }
    };
    timeout(CONNECT_TIMEOUT, wait)
        .await
        .context("no `subscribed` in time")?
}

/// Ends a session: a close frame and its echo (bounded), or a dropped socket.
async fn leave(ctx: &Ctx, mut ws: Ws, graceful: bool) {
    if graceful {
        ctx.count(|c| &c.graceful_leaves);
        let _ = timeout(Duration::from_secs(2), async {
            if ws.close(None).await.is_ok() {
                while let Some(Ok(_)) = ws.next().await {}
            }
        })
        .await;
    } else {
        ctx.count(|c| &c.abrupt_leaves);
        drop(ws);
    }
}

/// A random set of subscription patterns and the channels they cover.
fn pick_patterns(rng: &mut StdRng) -> (Vec<String>, u64) {
    let r: f64 = rng.random();
    let mut patterns = Vec::new();
    let mut mask = 0u64;
    if r < 0.02 {
        patterns.push(
            if rng.random_bool(0.5) {
                "soak:c:*"
            } else {
                "soak:**"
            }
            .to_string(),
        );
        mask = u64::MAX;
    } else if r < 0.10 {
        let d = rng.random_range(1..=5u64);
        patterns.push(format!("soak:c:{d}?"));
        for ch in d * 10..d * 10 + 10 {
            mask |= 1 << ch;
        }
    } else {
        for _ in 0..rng.random_range(1..=3) {
            let ch = rng.random_range(0..CHANNELS as u64);
            patterns.push(format!("soak:c:{ch}"));
            mask |= 1 << ch;
        }
        patterns.dedup();
    }
    // Overlapping patterns: an event matching both must still come once.
    if rng.random_bool(0.1) {
        patterns.push("soak:c:[0-9]".to_string());
        mask |= (1 << 10) - 1;
    }
    (patterns, mask)
}

/// One subscriber connection's receive-side bookkeeping.
struct Track {
    mask: u64,
    received: HashMap<(u32, u16), Received>,
    hist: Histogram<u64>,
    /// Channels outside `soak:c:*` that are expected (a slow reader's flood).
    ignore_prefix: Option<&'static str>,
}

impl Track {
    fn new(mask: u64) -> Track {
        Track {
            mask,
            received: HashMap::new(),
            hist: histogram(),
            ignore_prefix: None,
        }
    }

    fn on_event(&mut self, ledger: &Ledger, v: &Value) {
        let channel = v["channel"].as_str().unwrap_or("");
        if let Some(prefix) = self.ignore_prefix {
            if channel.starts_with(prefix) {
                return;
            }
        }
        let c = &ledger.counters;
        Counters::add(&c.events_received, 1);
        let ch = channel
            .strip_prefix("soak:c:")
            .and_then(|n| n.parse::<u16>().ok());
        let (Some(ch), Some(p), Some(s), Some(t)) = (
            ch,
            v["data"]["p"].as_u64(),
            v["data"]["s"].as_u64(),
            v["data"]["t"].as_u64(),
        ) else {
            Counters::add(&c.unexpected_events, 1);
            ledger.note(format!("unexpected event: {v}"));
            return;
        };
        if ch >= CHANNELS || self.mask & (1 << ch) == 0 {
            Counters::add(&c.unexpected_events, 1);
            ledger.note(format!("event on a channel not subscribed: {channel}"));
            return;
        }
        let (p, s) = (p as u32, s as u32);
        let now = ledger.stamp();
        crate::ledger::record_latency(&mut self.hist, Duration::from_micros(now.saturating_sub(t)));
        match self.received.get_mut(&(p, ch)) {
            None => {
                self.received
                    .insert((p, ch), Received { first: s, last: s });
            }
            Some(r) if s == r.last + 1 => r.last = s,
            Some(r) if s <= r.last => {
                Counters::add(&c.duplicates, 1);
                ledger.note(format!(
                    "duplicate or out of order: publisher {p} channel {ch} seq {s} after {}",
                    r.last
                ));
            }
            Some(r) => {
                Counters::add(&c.gaps, u64::from(s - r.last - 1));
                ledger.note(format!(
                    "gap: publisher {p} channel {ch} seq {s} after {}",
                    r.last
                ));
                r.last = s;
            }
        }
    }

    fn finish(self, ledger: &Ledger, subscribed: Instant, until: Instant, check_complete: bool) {
        ledger.merge_latency(&self.hist);
        let channels = (0..CHANNELS)
            .filter(|ch| self.mask & (1 << ch) != 0)
            .collect();
        ledger.check_subscriber(&SubscriberView {
            subscribed: subscribed.into_std(),
            until: until.into_std(),
            channels,
            received: self.received,
            check_complete,
        });
    }
}

/// A browser: sessions of subscribe-and-read.
pub(crate) async fn browser(ctx: Arc<Ctx>, idx: usize, mut rng: StdRng) {
    while !ctx.stop.is_cancelled() {
        let _ = browser_session(&ctx, idx, &mut rng).await;
        let pause = Duration::from_millis(rng.random_range(100..2000));
        if !ctx.pause(&ctx.stop, pause).await {
            break;
        }
    }
}

async fn browser_session(ctx: &Ctx, idx: usize, rng: &mut StdRng) -> Result<()> {
    let mut ws = connect(ctx, ClientType::Browser, &format!("browser-{idx}"), None).await?;
    let (patterns, mask) = pick_patterns(rng);
    subscribe(&mut ws, &patterns).await?;
    let subscribed = Instant::now();
    let mut track = Track::new(mask);
    let end = subscribed + ctx.life(rng);
    let closed = loop {
        tokio::select! {
            _ = ctx.stop.cancelled() => break None,
            _ = sleep_until(end) => break None,
            m = next(&mut ws) => match m {
                In::Msg(v) => on_browser_msg(ctx, &mut track, &v),
                In::Closed(code) => break Some(code),
            },
        }
    };
    let until = Instant::now();
    if let Some(code) = closed {
        ctx.ledger
            .unexpected_close(code.unwrap_or(0), &format!("browser-{idx}"));
        track.finish(&ctx.ledger, subscribed, until, true);
        return Ok(());
    }
    // Keep reading for a while: what was acknowledged before `until` is on its way.
    let linger_end = until + LINGER;
    let mut closed = None;
    loop {
        tokio::select! {
            _ = sleep_until(linger_end) => break,
            m = next(&mut ws) => match m {
                In::Msg(v) => on_browser_msg(ctx, &mut track, &v),
                In::Closed(code) => { closed = Some(code); break; }
            },
        }
    }
    track.finish(&ctx.ledger, subscribed, until, true);
    match closed {
        Some(code) => ctx
            .ledger
            .unexpected_close(code.unwrap_or(0), &format!("browser-{idx}")),
        None => leave(ctx, ws, !rng.random_bool(ctx.rates.abrupt_ratio)).await,
    }
    Ok(())
}

fn on_browser_msg(ctx: &Ctx, track: &mut Track, v: &Value) {
    if v["type"] == "event" {
        track.on_event(&ctx.ledger, v);
    } else {
        ctx.count(|c| &c.other_errors);
        ctx.ledger.note(format!("browser got: {v}"));
    }
}

/// A publisher: numbered events to random channels, each acknowledged.
pub(crate) async fn publisher(ctx: Arc<Ctx>, idx: usize, mut rng: StdRng) {
    while !ctx.stop.is_cancelled() {
        let _ = publisher_session(&ctx, idx, &mut rng).await;
        let pause = Duration::from_millis(rng.random_range(100..2000));
        if !ctx.pause(&ctx.stop, pause).await {
            break;
        }
    }
}

async fn publisher_session(ctx: &Ctx, idx: usize, rng: &mut StdRng) -> Result<()> {
    let mut ws = connect(ctx, ClientType::Hub, &format!("publisher-{idx}"), None).await?;
    let pid = ctx.next_publisher.fetch_add(1, Ordering::Relaxed);
    let ledger = &ctx.ledger;
    let mut seqs = [0u32; CHANNELS as usize];
    let mut outstanding = 0usize;
    let mean = 1.0 / ctx.rates.publish_rate.max(0.001);
    let mut next_at = Instant::now() + Duration::from_secs_f64(exp_secs(rng, mean));
    let end = Instant::now() + ctx.life(rng);
    let mut leaving: Option<Instant> = None;
    let graceful = !rng.random_bool(ctx.rates.abrupt_ratio);
    loop {
        if let Some(deadline) = leaving {
            if !graceful || outstanding == 0 || Instant::now() >= deadline {
                break;
            }
        }
        tokio::select! {
            _ = ctx.stop.cancelled(), if leaving.is_none() => leaving = Some(Instant::now() + LEAVE_WAIT),
            _ = sleep_until(end), if leaving.is_none() => leaving = Some(Instant::now() + LEAVE_WAIT),
            _ = sleep_until(leaving.unwrap_or(end)), if leaving.is_some() => {}
            _ = sleep_until(next_at), if leaving.is_none() => {
                let ch = rng.random_range(0..CHANNELS);
                seqs[ch as usize] += 1;
                let seq = seqs[ch as usize];
                ledger.pub_sent(pid, ch, seq);
                let msg = json!({
                    "type": "publish",
                    "id": format!("{ch}.{seq}"),
                    "channel": format!("soak:c:{ch}"),
                    "data": {"p": pid, "s": seq, "t": ledger.stamp(), "x": "soak-payload-0123456789abcdef"},
                });
                if send(&mut ws, msg).await.is_err() {
                    ledger.unexpected_close(0, &format!("publisher-{idx} (send)"));
                    return Ok(());
                }
                ctx.count(|c| &c.published);
                outstanding += 1;
                next_at += Duration::from_secs_f64(exp_secs(rng, mean));
            }
            m = next(&mut ws) => match m {
                In::Msg(v) if v["type"] == "published" => {
                    let id = v["id"].as_str().unwrap_or("");
                    if let Some((ch, seq)) = id.split_once('.') {
                        if let (Ok(ch), Ok(seq)) = (ch.parse(), seq.parse()) {
                            ledger.pub_acked(pid, ch, seq);
                        }
                    }
                    outstanding = outstanding.saturating_sub(1);
                    ctx.count(|c| &c.publish_acked);
                }
                In::Msg(v) => {
                    ctx.count(|c| &c.publish_errors);
                    ledger.note(format!("publisher got: {v}"));
                    outstanding = outstanding.saturating_sub(1);
                }
                In::Closed(code) => {
                    ledger.unexpected_close(code.unwrap_or(0), &format!("publisher-{idx}"));
                    return Ok(());
                }
            },
        }
    }
    leave(ctx, ws, graceful).await;
    Ok(())
}

/// A submitter: tasks with unique dedup keys; reads `task:accepted` and `task:result`.
pub(crate) async fn submitter(ctx: Arc<Ctx>, idx: usize, mut rng: StdRng) {
    let mut n = 0u64;
    while !ctx.stop.is_cancelled() {
        let _ = submitter_session(&ctx, idx, &mut rng, &mut n).await;
        let pause = Duration::from_millis(rng.random_range(100..2000));
        if !ctx.pause(&ctx.stop, pause).await {
            break;
        }
    }
}

async fn submitter_session(ctx: &Ctx, idx: usize, rng: &mut StdRng, n: &mut u64) -> Result<()> {
    let mut ws = connect(ctx, ClientType::Hub, &format!("submitter-{idx}"), None).await?;
    let ledger = &ctx.ledger;
    let mut pending: HashMap<String, ()> = HashMap::new();
    let mean = 1.0 / ctx.rates.task_rate.max(0.001);
    let mut next_at = Instant::now() + Duration::from_secs_f64(exp_secs(rng, mean));
    let end = Instant::now() + ctx.life(rng);
    let mut leaving: Option<Instant> = None;
    let graceful = !rng.random_bool(ctx.rates.abrupt_ratio);
    loop {
        if let Some(deadline) = leaving {
            if !graceful || pending.is_empty() || Instant::now() >= deadline {
                break;
            }
        }
        tokio::select! {
            _ = ctx.stop.cancelled(), if leaving.is_none() => leaving = Some(Instant::now() + LEAVE_WAIT),
            _ = sleep_until(end), if leaving.is_none() => leaving = Some(Instant::now() + LEAVE_WAIT),
            _ = sleep_until(leaving.unwrap_or(end)), if leaving.is_some() => {}
            _ = sleep_until(next_at), if leaving.is_none() => {
                *n += 1;
                let key = format!("k{idx}-{n}");
                let kind = ["a", "b", "c"][rng.random_range(0..3)];
                let msg = json!({
                    "type": "task:submit",
                    "id": key,
                    "task": {
                        "type": format!("soak:work:{kind}"),
                        "payload": {"k": key},
                        "priority": rng.random_range(0..=9),
                        "timeoutMs": 15000,
                        "maxAttempts": 20,
                        "dedupKey": key,
                    },
                });
                if send(&mut ws, msg).await.is_err() {
                    ledger.unexpected_close(0, &format!("submitter-{idx} (send)"));
                    break;
                }
                ctx.count(|c| &c.submits);
                pending.insert(key, ());
                next_at += Duration::from_secs_f64(exp_secs(rng, mean));
            }
            m = next(&mut ws) => match m {
                In::Msg(v) => match v["type"].as_str().unwrap_or("") {
                    "task:accepted" => {
                        let key = v["id"].as_str().unwrap_or("").to_string();
                        pending.remove(&key);
                        let dedup = v["deduplicated"].as_bool() == Some(true);
                        if let Some(id) = v["taskId"].as_str() {
                            ledger.task(id, |t| if dedup { t.deduplicated += 1 } else { t.accepted += 1 });
                        }
                    }
                    "task:result" => {
                        let task = &v["task"];
                        let completed = task["state"] == "completed";
                        if let Some(id) = task["id"].as_str() {
                            ledger.task(id, |t| if completed { t.result_completed += 1 } else { t.result_other += 1 });
                        }
                    }
                    "error" => {
                        if let Some(key) = v["id"].as_str() {
                            pending.remove(key);
                        }
                        ctx.count(|c| &c.submit_refused);
                        ledger.note(format!("submitter got: {v}"));
                    }
                    _ => {
                        ctx.count(|c| &c.other_errors);
                        ledger.note(format!("submitter got: {v}"));
                    }
                },
                In::Closed(code) => {
                    ledger.unexpected_close(code.unwrap_or(0), &format!("submitter-{idx}"));
                    break;
                }
            },
        }
    }
    Counters::add(&ledger.counters.submits_unanswered, pending.len() as u64);
    leave(ctx, ws, graceful).await;
    Ok(())
}

/// A worker: runs tasks; some sessions end by dropping the socket mid-task.
pub(crate) async fn worker(ctx: Arc<Ctx>, idx: usize, mut rng: StdRng) {
    while !ctx.stop_workers.is_cancelled() {
        let _ = worker_session(&ctx, idx, &mut rng).await;
        let pause = Duration::from_millis(rng.random_range(100..1500));
        if !ctx.pause(&ctx.stop_workers, pause).await {
            break;
        }
    }
}

async fn worker_session(ctx: &Ctx, idx: usize, rng: &mut StdRng) -> Result<()> {
    let mut ws = connect(ctx, ClientType::Worker, &format!("worker-{idx}"), None).await?;
    let ledger = &ctx.ledger;
    let slots = rng.random_range(1..=4u32);
    send(
        &mut ws,
        json!({"type": "register", "id": "reg", "capabilities": ["soak:work:*"], "slots": slots}),
    )
    .await?;
    // `registered` comes before any `task:assign`.
    match timeout(CONNECT_TIMEOUT, next(&mut ws)).await {
        Ok(In::Msg(v)) if v["type"] == "registered" => {}
        other => {
            let what = match other {
                Ok(In::Msg(v)) => v.to_string(),
                Ok(In::Closed(code)) => format!("closed {code:?}"),
                Err(_) => "timeout".into(),
            };
            ctx.count(|c| &c.other_errors);
            ledger.note(format!("worker-{idx}: register failed: {what}"));
            return Ok(());
        }
    }
    // Tasks held: (when the work is done, task id).
    let mut running: Vec<(Instant, String)> = Vec::new();
    let mut acks_pending = 0usize;
    let end = Instant::now() + ctx.life(rng);
    let kill = rng.random_bool(ctx.rates.kill_ratio);
    let (lo, hi) = ctx.rates.work_ms;
    // Leaving gracefully: drained, waiting for running tasks until this.
    let mut leaving: Option<Instant> = None;
    // Dying: drop the socket as soon as a task is held, at the latest then.
    let mut killing: Option<Instant> = None;
    loop {
        if let Some(deadline) = killing {
            if !running.is_empty() || Instant::now() >= deadline {
                Counters::add(&ledger.counters.worker_kills, 1);
                if !running.is_empty() {
                    Counters::add(&ledger.counters.worker_kills_holding, 1);
                }
                for (_, id) in &running {
                    ledger.task(id, |t| t.killed_holding += 1);
                }
                Counters::add(&ledger.counters.abrupt_leaves, 1);
                drop(ws);
                return Ok(());
            }
        }
        if let Some(deadline) = leaving {
            if (running.is_empty() && acks_pending == 0) || Instant::now() >= deadline {
                if !running.is_empty() {
                    ledger.note(format!(
                        "worker-{idx}: left with {} task(s) still running",
                        running.len()
                    ));
                }
                leave(ctx, ws, true).await;
                return Ok(());
            }
        }
        let due = running.iter().map(|(at, _)| *at).min();
        let wake = [due, leaving, killing].into_iter().flatten().min();
        tokio::select! {
            _ = ctx.stop_workers.cancelled(), if leaving.is_none() => {
                killing = None;
                leaving = Some(Instant::now() + Duration::from_secs(10));
                send(&mut ws, json!({"type": "drain", "id": "drain"})).await?;
            }
            _ = sleep_until(end), if leaving.is_none() && killing.is_none() => {
                if kill {
                    killing = Some(Instant::now() + Duration::from_secs(3));
                } else {
                    leaving = Some(Instant::now() + Duration::from_secs(10));
                    send(&mut ws, json!({"type": "drain", "id": "drain"})).await?;
                }
            }
            _ = sleep_until(wake.unwrap_or(end)), if wake.is_some() => {
                let now = Instant::now();
                let (done, still): (Vec<_>, Vec<_>) = running.drain(..).partition(|(at, _)| *at <= now);
                running = still;
                for (_, id) in done {
                    send(&mut ws, json!({"type": "task:complete", "id": format!("c:{id}"), "taskId": id, "result": {"by": idx}})).await?;
                    acks_pending += 1;
                }
            }
            m = next(&mut ws) => match m {
                In::Msg(v) => match v["type"].as_str().unwrap_or("") {
                    "task:assign" => {
                        let id = v["task"]["id"].as_str().unwrap_or("").to_string();
                        ledger.task(&id, |t| t.assigns += 1);
                        if rng.random_bool(0.3) {
                            send(&mut ws, json!({"type": "task:progress", "taskId": id, "progress": 50})).await?;
                        }
                        let work = Duration::from_millis(rng.random_range(lo..=hi));
                        running.push((Instant::now() + work, id));
                    }
                    "task:ack" => {
                        acks_pending = acks_pending.saturating_sub(1);
                        if v["state"] == "completed" {
                            if let Some(id) = v["taskId"].as_str() {
                                ledger.task(id, |t| t.worker_acks += 1);
                            }
                        }
                    }
                    "task:cancel" => {
                        let id = v["taskId"].as_str().unwrap_or("");
                        running.retain(|(_, t)| t != id);
                        ctx.count(|c| &c.task_cancels_to_worker);
                        ledger.note(format!("worker-{idx} got: {v}"));
                    }
                    "draining" => {}
                    "error" if v["code"] == "not_assigned" => {
                        acks_pending = acks_pending.saturating_sub(1);
                        ctx.count(|c| &c.not_assigned);
                        ledger.note(format!("worker-{idx} got: {v}"));
                    }
                    _ => {
                        ctx.count(|c| &c.other_errors);
                        ledger.note(format!("worker-{idx} got: {v}"));
                    }
                },
                In::Closed(code) => {
                    ledger.unexpected_close(code.unwrap_or(0), &format!("worker-{idx}"));
                    return Ok(());
                }
            },
        }
    }
}

/// A slow reader: reads for a while, stops reading while its own flooder
/// (a hub connection) publishes to a channel only it subscribes to, then
/// reads again and expects the hub's close `4008`.
pub(crate) async fn slow_reader(ctx: Arc<Ctx>, idx: usize, mut rng: StdRng) {
    while !ctx.stop.is_cancelled() {
        if let Err(e) = slow_session(&ctx, idx, &mut rng).await {
            ctx.ledger.note(format!("slow-{idx}: {e:#}"));
        }
        let pause = Duration::from_millis(rng.random_range(500..3000));
        if !ctx.pause(&ctx.stop, pause).await {
            break;
        }
    }
}

async fn slow_session(ctx: &Ctx, idx: usize, rng: &mut StdRng) -> Result<()> {
    let ledger = &ctx.ledger;
    // A small receive buffer, so the hub's queue fills after a few hundred KB.
    let mut ws = connect(ctx, ClientType::Browser, &format!("slow-{idx}"), Some(4096)).await?;
    let mut flooder = match connect(ctx, ClientType::Hub, &format!("flooder-{idx}"), None).await {
        Ok(f) => f,
        Err(e) => {
            leave(ctx, ws, true).await;
            return Err(e);
        }
    };
    let ch = rng.random_range(0..CHANNELS);
    let flood = format!("flood:{idx}");
    subscribe(&mut ws, &[flood.clone(), format!("soak:c:{ch}")]).await?;
    let subscribed = Instant::now();
    let mut track = Track::new(1 << ch);
    track.ignore_prefix = Some("flood:");
    // Read normally for a while.
    let read_until = subscribed + Duration::from_secs_f64(rng.random_range(3.0..10.0));
    let mut stopping = false;
    loop {
        tokio::select! {
            _ = ctx.stop.cancelled() => { stopping = true; break; }
            _ = sleep_until(read_until) => break,
            m = next(&mut ws) => match m {
                In::Msg(v) => on_browser_msg(ctx, &mut track, &v),
                In::Closed(code) => {
                    ledger.unexpected_close(code.unwrap_or(0), &format!("slow-{idx} (before stalling)"));
                    track.finish(ledger, subscribed, Instant::now(), false);
                    return Ok(());
                }
            },
        }
    }
    if stopping {
        track.finish(ledger, subscribed, Instant::now(), false);
        leave(ctx, ws, true).await;
        leave(ctx, flooder, true).await;
        return Ok(());
    }
    // Stall: stop reading `ws` while the flooder fills its queue.
    ctx.count(|c| &c.stalls);
    let flood_result = flood_until_dropped(ctx, &mut flooder, &flood).await;
    leave(ctx, flooder, true).await;
    let kicked = match flood_result {
        Ok(k) => k,
        Err(e) => {
            ledger.note(format!("slow-{idx}: flood failed: {e:#}"));
            false
        }
    };
    if !kicked {
        ledger.note(format!(
            "slow-{idx}: the hub kept delivering to a reader that stopped"
        ));
    }
    sleep(Duration::from_millis(300)).await;
    // Read again: what the kernel holds, then the close frame.
    let outcome = timeout(Duration::from_secs(15), async {
        loop {
            match next(&mut ws).await {
                In::Msg(v) => on_browser_msg(ctx, &mut track, &v),
                In::Closed(code) => return code,
            }
        }
    })
    .await;
    track.finish(ledger, subscribed, Instant::now(), false);
    match outcome {
        Ok(Some(4008)) => ctx.count(|c| &c.stall_closed_4008),
        Ok(Some(code)) => {
            ctx.count(|c| &c.stall_closed_other);
            ledger.note(format!("slow-{idx}: closed with {code}, not 4008"));
        }
        Ok(None) => {
            ctx.count(|c| &c.stall_dropped_no_frame);
            ledger.note(format!("slow-{idx}: dropped without a close frame"));
        }
        Err(_) => {
            ctx.count(|c| &c.stall_not_closed);
            ledger.note(format!("slow-{idx}: still open 15 s after the flood"));
        }
    }
    Ok(())
}

/// Publishes 2 KB events to `channel` (32 in flight) until the hub reports
/// `delivered: 0` — the only subscriber was dropped as a slow consumer.
/// Returns whether that happened within the bounds.
async fn flood_until_dropped(ctx: &Ctx, ws: &mut Ws, channel: &str) -> Result<bool> {
    const WINDOW: u64 = 32;
    const MAX: u64 = 50_000;
    let pad = "x".repeat(2048);
    let mut sent = 0u64;
    let mut acked = 0u64;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        while sent < MAX && sent - acked < WINDOW {
            sent += 1;
            let msg = json!({"type": "publish", "id": sent, "channel": channel, "data": pad});
            ws.feed(Message::Text(msg.to_string().into())).await?;
        }
        ws.flush().await?;
        let m = match timeout(deadline.saturating_duration_since(Instant::now()), next(ws)).await {
            Ok(m) => m,
            Err(_) => return Ok(false),
        };
        match m {
            In::Msg(v) if v["type"] == "published" => {
                acked += 1;
                Counters::add(&ctx.ledger.counters.flood_events, 1);
                if v["delivered"] == 0 {
                    return Ok(true);
                }
                if acked >= MAX {
                    return Ok(false);
                }
            }
            In::Msg(v) => bail!("flooder got: {v}"),
            In::Closed(code) => bail!("flooder closed: {code:?}"),
        }
    }
}

/// The watcher: task lifecycle events for the whole phase.
pub(crate) async fn watcher(ctx: Arc<Ctx>, ready: tokio::sync::oneshot::Sender<()>) {
    let ledger = &ctx.ledger;
    let mut ws = match connect(&ctx, ClientType::Hub, "soak-watcher", None).await {
        Ok(ws) => ws,
        Err(_) => return,
    };
    let channels = ["task:completed", "task:dead", "task:cancelled"].map(String::from);
    if let Err(e) = subscribe(&mut ws, &channels).await {
        ledger.note(format!("watcher: {e:#}"));
        return;
    }
    let _ = ready.send(());
    loop {
        tokio::select! {
            _ = ctx.stop_watcher.cancelled() => break,
            m = next(&mut ws) => match m {
                In::Msg(v) if v["type"] == "event" => {
                    let id = v["data"]["id"].as_str().unwrap_or("");
                    match v["channel"].as_str().unwrap_or("") {
                        "task:completed" => ledger.task(id, |t| t.ev_completed += 1),
                        "task:dead" => ledger.task(id, |t| t.ev_dead += 1),
                        _ => ledger.task(id, |t| t.ev_cancelled += 1),
                    }
                }
                In::Msg(v) => ledger.note(format!("watcher got: {v}")),
                In::Closed(code) => {
                    ledger.unexpected_close(code.unwrap_or(0), "watcher");
                    return;
                }
            },
        }
    }
    leave(&ctx, ws, true).await;
}

/// A per-client random generator derived from the run's seed.
pub(crate) fn client_rng(seed: u64, phase: u64, idx: usize) -> StdRng {
    use rand::SeedableRng;
    let mut base = StdRng::seed_from_u64(
        seed ^ (phase << 48) ^ (idx as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15),
    );
    StdRng::seed_from_u64(base.next_u64())
}
