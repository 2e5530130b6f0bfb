//! Task round trips. chanhub: `workers` worker connections register
//! `bench:task`; one hub connection keeps `window` tasks in flight
//! (`task:submit` → `task:assign` → `task:complete` → `task:result`), with
//! the durable task store on (the default). NATS: `workers` responders in
//! the queue group `workers` on `bench.task`, one requester keeping
//! `window` requests in flight with replies on `_INBOX.lg.<n>`.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use chanhub::auth::ClientType;
use futures::{FutureExt, SinkExt, StreamExt};
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use crate::client::{Broker, Target, Transport, Ws, chanhub_connect, chanhub_expect};
use crate::nats::NatsConn;
use crate::payload;
use crate::report::RunReport;
use crate::stats::{self, Percentiles, Proc};

/// Longest wait for the tasks still in flight when the time is up.
const FINISH_TIMEOUT: Duration = Duration::from_secs(5);

/// Runs the round-trip scenario for `secs` seconds.
pub(crate) async fn round_trips(
    target: &Target,
    broker: Proc,
    workers: usize,
    window: usize,
    secs: f64,
) -> Result<RunReport> {
    let stop = CancellationToken::new();
    let mut running = JoinSet::new();
    let slots = window.div_ceil(workers.max(1)).max(1);
    let mut requester = match target.broker {
        Broker::Chanhub => {
            for i in 0..workers {
                let token = target.token(ClientType::Worker, &format!("worker-{i}"))?;
                let ws = chanhub_worker(target.node_for(i), &token, slots).await?;
                running.spawn(run_chanhub_worker(ws, stop.clone()));
            }
            let token = target.token(ClientType::Hub, "submitter")?;
            Requester::Chanhub(chanhub_connect(target.addr, &token, None, 64 * 1024).await?)
        }
        Broker::Nats => {
            for i in 0..workers {
                let sub = format!("SUB bench.task workers {}\r\n", i + 1);
                let conn = NatsConn::connect(target.addr, &target.secret, &sub, 64 * 1024).await?;
                running.spawn(run_nats_responder(conn, stop.clone()));
            }
            let sub = "SUB _INBOX.lg.* 1\r\n";
            Requester::Nats(NatsConn::connect(target.addr, &target.secret, sub, 64 * 1024).await?)
        }
    };
    let broker_cpu = broker.cpu_meter();
    let gen_cpu = Proc::Myself.cpu_meter();
    let result = requester.run(window, Duration::from_secs_f64(secs)).await;
    let (broker_wait, broker_cpu, gen_cpu) = (
        broker_cpu.wait_percent(),
        broker_cpu.percent(),
        gen_cpu.percent(),
    );
    stop.cancel();
    while running.join_next().await.is_some() {}
    let (done, hist) = result?;
    let mut report = RunReport::new("tasks", workers, target, Transport::Ws);
    report.value = done as f64 / secs;
    report.unit = "tasks/s".into();
    report.latency = Percentiles::of(&hist);
    report.broker_cpu = broker_cpu;
    report.broker_wait = broker_wait;
    report.gen_cpu = gen_cpu;
    report.broker_rss_kib = broker.rss_kib();
    report.note = format!(
        "{}, {window} in flight, {secs}s; round trip p50 {} p99 {}{}",
        match workers {
            0 => "workers already connected".to_string(),
            n => format!("{n} workers"),
        },
        stats::fmt_us(report.latency.p50_us),
        stats::fmt_us(report.latency.p99_us),
        match target.broker {
            // With outside workers the hub's settings are the caller's.
            Broker::Chanhub if workers == 0 => "",
            Broker::Chanhub if !target.spread.is_empty() => ", tasks in Redis (cluster)",
            Broker::Chanhub => ", durable store on",
            Broker::Nats => ", queue-group request/reply (not durable)",
        }
    );
    Ok(report)
}

/// Connects a worker and registers `bench:task` with `slots` slots.
async fn chanhub_worker(addr: std::net::SocketAddr, token: &str, slots: usize) -> Result<Ws> {
    let mut ws = chanhub_connect(addr, token, None, 64 * 1024).await?;
    let register = serde_json::json!({
        "type": "register", "id": 1, "capabilities": ["bench:task"], "slots": slots,
    });
    ws.send(Message::Text(register.to_string().into())).await?;
    chanhub_expect(&mut ws, "registered").await?;
    Ok(ws)
}

/// Completes every assigned task at once, echoing its payload as result.
async fn run_chanhub_worker(mut ws: Ws, stop: CancellationToken) {
    loop {
        let frame = tokio::select! {
            _ = stop.cancelled() => return,
            frame = ws.next() => frame,
        };
        let mut frame = frame;
        loop {
            match frame {
                Some(Ok(Message::Text(text))) => {
                    if let Some(done) = completion(&text) {
                        if ws.feed(Message::Text(done.into())).await.is_err() {
                            return;
                        }
                    }
                }
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return,
                Some(Ok(_)) => {}
            }
            match ws.next().now_or_never() {
                Some(next) => frame = next,
                None => break,
            }
        }
        if ws.flush().await.is_err() {
            return;
        }
    }
}

/// The `task:complete` for a `task:assign` frame.
fn completion(text: &str) -> Option<String> {
    if !text.starts_with(r#"{"type":"task:assign""#) {
        return None;
    }
    let msg: serde_json::Value = serde_json::from_str(text).ok()?;
    let task = msg.get("task")?;
    Some(
        serde_json::json!({
            "type": "task:complete", "taskId": task.get("id")?, "result": task.get("payload")?,
        })
        .to_string(),
    )
}

/// Answers every request with its own payload.
pub(crate) async fn run_nats_responder(mut conn: NatsConn, stop: CancellationToken) {
    let mut replies: Vec<(String, Vec<u8>)> = Vec::new();
    loop {
        let mut on_request = |d: crate::nats::Delivery<'_>| {
            if let Some(reply) = d.reply {
                let reply = String::from_utf8_lossy(reply).into_owned();
                replies.push((reply, d.payload.to_vec()));
            }
        };
        let open = tokio::select! {
            _ = stop.cancelled() => return,
            open = conn.recv(&mut on_request) => open,
        };
        for (reply, payload) in replies.drain(..) {
            if conn.publish(&reply, None, &payload).await.is_err() {
                return;
            }
        }
        if !matches!(open, Ok(true)) || conn.flush().await.is_err() {
            return;
        }
    }
}

/// The submitting side.
enum Requester {
    Chanhub(Ws),
    Nats(NatsConn),
}

impl Requester {
    /// Keeps `window` round trips in flight for `duration`; returns how
    /// many completed within it and their latencies.
    async fn run(
        &mut self,
        window: usize,
        duration: Duration,
    ) -> Result<(u64, hdrhistogram::Histogram<u64>)> {
        let mut hist = stats::histogram();
        let start = Instant::now();
        let deadline = start + duration;
        let mut payload = String::with_capacity(payload::SIZE);
        let mut next_id: u64 = 0;
        let mut in_flight = 0;
        let mut done_in_time = 0;
        while in_flight < window {
            self.submit(next_id, &mut payload).await?;
            next_id += 1;
            in_flight += 1;
        }
        self.flush().await?;
        while in_flight > 0 {
            let now = Instant::now();
            if now > deadline + FINISH_TIMEOUT {
                break;
            }
            let mut finished = Vec::new();
            let mut on_result = |frame: &[u8]| finished.push(payload::decode(frame));
            let recv = self.recv(&mut on_result);
            let open = tokio::time::timeout(deadline + FINISH_TIMEOUT - now, recv)
                .await
                .unwrap_or(Ok(true))?;
            let now_ns = payload::now_nanos();
            for stamp in finished {
                let stamp = stamp.context("a result without the bench payload")?;
                stats::record(
                    &mut hist,
                    Duration::from_nanos(now_ns.saturating_sub(stamp)),
                );
                in_flight -= 1;
                if Instant::now() <= deadline {
                    done_in_time += 1;
                    self.submit(next_id, &mut payload).await?;
                    next_id += 1;
                    in_flight += 1;
                }
            }
            self.flush().await?;
            if !open {
                bail!("the requester's connection closed");
            }
        }
        Ok((done_in_time, hist))
    }

    async fn submit(&mut self, n: u64, payload: &mut String) -> Result<()> {
        payload::encode(payload::now_nanos(), payload);
        match self {
            Requester::Chanhub(ws) => {
                let submit = format!(
                    r#"{{"type":"task:submit","id":{n},"task":{{"type":"bench:task","payload":"{payload}"}}}}"#
                );
                ws.feed(Message::Text(submit.into())).await?;
            }
            Requester::Nats(nats) => {
                let reply = format!("_INBOX.lg.{n}");
                nats.publish("bench.task", Some(&reply), payload.as_bytes())
                    .await?;
            }
        }
        Ok(())
    }

    async fn flush(&mut self) -> Result<()> {
        match self {
            Requester::Chanhub(ws) => ws.flush().await?,
            Requester::Nats(nats) => nats.flush().await?,
        }
        Ok(())
    }

    /// Waits for results; calls `on_result` with the bytes holding each
    /// finished task's payload.
    async fn recv(&mut self, on_result: &mut (dyn FnMut(&[u8]) + Send)) -> Result<bool> {
        match self {
            Requester::Chanhub(ws) => {
                let Some(frame) = ws.next().await else {
                    return Ok(false);
                };
                match frame? {
                    Message::Text(text) => {
                        if text.starts_with(r#"{"type":"task:result""#) {
                            if !text.contains(r#""state":"completed""#) {
                                bail!("a task did not complete: {text}");
                            }
                            on_result(text.as_bytes());
                        } else if text.starts_with(r#"{"type":"error""#) {
                            bail!("submit refused: {text}");
                        }
                        Ok(true)
                    }
                    Message::Close(_) => Ok(false),
                    _ => Ok(true),
                }
            }
            Requester::Nats(nats) => nats.recv(&mut |d| on_result(d.payload)).await,
        }
    }
}
