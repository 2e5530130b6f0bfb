//! A group of subscriber connections, each driven by its own task, counting
//! what they receive into shared counters. Every `sample_every`-th
//! subscriber also records the latency of each payload it gets, so the
//! histogram covers a spread of connections without timing every message.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use chanhub::auth::ClientType;
use futures::StreamExt;
use hdrhistogram::Histogram;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::client::{CONNECT_TIMEOUT, Sub, Target, Transport};
use crate::payload;
use crate::stats;

/// Connections opened at once while a group connects.
const CONNECT_CONCURRENCY: usize = 128;

/// What a group's subscribers have received.
#[derive(Debug)]
pub(crate) struct Counters {
    /// Payloads delivered, over all subscribers.
    pub(crate) delivered: AtomicU64,
    /// Subscribers whose connection ended (e.g. closed as slow consumers).
    pub(crate) closed: AtomicUsize,
    /// Latencies seen by the sampled subscribers.
    pub(crate) latency: Mutex<Histogram<u64>>,
}

impl Counters {
    fn new() -> Counters {
        Counters {
            delivered: AtomicU64::new(0),
            closed: AtomicUsize::new(0),
            latency: Mutex::new(stats::histogram()),
        }
    }

    /// Starts a new measurement: zero counts, empty histogram.
    pub(crate) fn reset(&self) {
        self.delivered.store(0, Ordering::Relaxed);
        if let Ok(mut hist) = self.latency.lock() {
            hist.reset();
        }
    }

    pub(crate) fn delivered(&self) -> u64 {
        self.delivered.load(Ordering::Relaxed)
    }

    pub(crate) fn closed(&self) -> usize {
        self.closed.load(Ordering::Relaxed)
    }

    pub(crate) fn percentiles(&self) -> stats::Percentiles {
        self.latency
            .lock()
            .map(|h| stats::Percentiles::of(&h))
            .unwrap_or_default()
    }
}

/// Connected subscribers and the tasks reading them.
pub(crate) struct Group {
    pub(crate) counters: Arc<Counters>,
    stop: CancellationToken,
    tasks: JoinSet<()>,
}

/// How to build a group.
pub(crate) struct GroupSpec<'a> {
    pub(crate) target: &'a Target,
    pub(crate) transport: Transport,
    pub(crate) size: usize,
    /// The pattern subscriber `i` subscribes to.
    pub(crate) pattern: &'a (dyn Fn(usize) -> String + Sync),
    /// Every this many subscribers, one records latency.
    pub(crate) sample_every: usize,
}

/// Mints one browser token per subscriber (before anything is timed).
pub(crate) fn tokens(target: &Target, n: usize, prefix: &str) -> Result<Vec<String>> {
    (0..n)
        .map(|i| target.token(ClientType::Browser, &format!("{prefix}-{i}")))
        .collect()
}

/// Connects `spec.size` subscribers (128 at a time) and starts reading
/// them. Returns once every subscription is in place.
pub(crate) async fn connect(spec: &GroupSpec<'_>) -> Result<Group> {
    let tokens = tokens(spec.target, spec.size, "sub")?;
    let counters = Arc::new(Counters::new());
    let stop = CancellationToken::new();
    let mut tasks = JoinSet::new();
    let mut connecting = futures::stream::iter(0..spec.size)
        .map(|i| {
            let pattern = (spec.pattern)(i);
            let token = &tokens[i];
            async move {
                let sub = tokio::time::timeout(
                    CONNECT_TIMEOUT,
                    Sub::connect(spec.target, spec.transport, &pattern, token, i + 1),
                )
                .await
                .context("timed out connecting a subscriber")??;
                anyhow::Ok((i, sub))
            }
        })
        .buffer_unordered(CONNECT_CONCURRENCY);
    let mut connected = 0;
    while let Some(result) = connecting.next().await {
        let (i, sub) =
            result.with_context(|| format!("after {connected} subscribers connected"))?;
        let sampled = spec.sample_every > 0 && i % spec.sample_every == 0;
        tasks.spawn(drive(sub, Arc::clone(&counters), sampled, stop.clone()));
        connected += 1;
    }
    Ok(Group {
        counters,
        stop,
        tasks,
    })
}

impl Group {
    /// Stops every reader and drops the connections.
    pub(crate) async fn close(mut self) {
        self.stop.cancel();
        while self.tasks.join_next().await.is_some() {}
    }
}

/// Reads one subscriber until it closes or the group stops.
async fn drive(mut sub: Sub, counters: Arc<Counters>, sampled: bool, stop: CancellationToken) {
    // Latencies of one wake-up, recorded into the shared histogram under
    // one lock.
    let mut latencies = Vec::new();
    loop {
        let mut got = 0u64;
        let mut now_ns = None;
        let mut on_msg = |frame: &[u8]| {
            got += 1;
            if sampled {
                let now = *now_ns.get_or_insert_with(payload::now_nanos);
                latencies.extend(payload::latency(frame, now));
            }
        };
        let open = tokio::select! {
            biased;
            _ = stop.cancelled() => break,
            open = sub.recv(&mut on_msg) => open.unwrap_or(false),
        };
        if got > 0 {
            counters.delivered.fetch_add(got, Ordering::Relaxed);
            if !latencies.is_empty() {
                if let Ok(mut hist) = counters.latency.lock() {
                    for latency in latencies.drain(..) {
                        stats::record(&mut hist, latency);
                    }
                }
            }
        }
        if !open {
            counters.closed.fetch_add(1, Ordering::Relaxed);
            break;
        }
    }
}
