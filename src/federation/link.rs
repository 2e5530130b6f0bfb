//! One federation link after the hellos: a single task that `select!`s over
//! frames from the peer, its bounded outbound queue, task messages the
//! dispatcher addresses to the link, advert debouncing, keepalive, token
//! expiry and shutdown. The same loop runs on both ends, whichever dialed.
//!
//! Outbound frames are queued with `try_send`: the publisher never waits
//! for a peer. A peer that cannot keep up (queue full) loses the link,
//! which is then redialed, like a slow subscriber is disconnected.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use futures::{Sink, SinkExt, Stream, StreamExt};
use serde::Serialize;
use serde_json::Value;
use tokio::sync::{Notify, mpsc};
use tokio::time::{Instant, MissedTickBehavior, sleep_until};
use tokio_tungstenite::tungstenite::Utf8Bytes;
use tokio_util::sync::CancellationToken;

use super::HubRef;
use super::{Federation, Peer, lock};
use crate::channels::Pattern;
use crate::protocol::federation::{
    CapabilityLoad, HubHello, HubMessage, LinkCounters, LinkState, LinkView, Table,
};
use crate::protocol::{Event, now_ms};
use crate::router::manager::{Inbox, Outbound, Subscriber};

/// A boxed transport error.
pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Most queued frames written before one flush.
const WRITE_BATCH: usize = 64;

/// Which side opened the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Direction {
    /// This hub dialed the peer.
    Dialed,
    /// The peer dialed this hub.
    Accepted,
}

impl Direction {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Direction::Dialed => "dialed",
            Direction::Accepted => "accepted",
        }
    }
}

/// Counters of one link, as atomics.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) events_out: AtomicU64,
    pub(crate) events_in: AtomicU64,
    pub(crate) dropped_import: AtomicU64,
    pub(crate) dropped_duplicate: AtomicU64,
    pub(crate) dropped_oversize: AtomicU64,
    pub(crate) tasks_out: AtomicU64,
    pub(crate) tasks_in: AtomicU64,
}

/// A link that is up: shared by its task, the event index and the API.
#[derive(Debug)]
pub(crate) struct Link {
    /// Unique among this hub's connections; also the id under which the
    /// dispatcher knows the peer as a worker for forwarded tasks.
    pub(crate) id: u64,
    /// The peer's configuration entry.
    pub(crate) peer: Arc<Peer>,
    /// What the peer said about itself.
    pub(crate) hello: HubHello,
    /// Who dialed.
    pub(crate) direction: Direction,
    /// When the link came up, ms since the Unix epoch.
    pub(crate) since: u64,
    /// Frames for the peer (bounded).
    out: mpsc::Sender<Utf8Bytes>,
    /// Cancelled when the link must close.
    kicked: CancellationToken,
    /// Why it was closed; set once, before `kicked` is cancelled.
    reason: OnceLock<String>,
    /// Adverts may have changed; the link task recomputes them.
    pub(crate) dirty: Notify,
    /// Last round trip in µs (0: not measured yet).
    pub(crate) rtt_us: AtomicU64,
    /// Tasks waiting at the peer, from its last `hub:ping`.
    pub(crate) peer_queued: AtomicU64,
    /// Event and task counters.
    pub(crate) counters: Counters,
    /// Patterns the peer's side wants, as registered in the event index.
    pub(crate) send_patterns: Mutex<Vec<Pattern>>,
    /// Patterns this hub last asked of the peer (for the API).
    pub(crate) asked: AtomicU64,
    /// Token expiry of an accepted link, seconds since the Unix epoch.
    expires_at: Option<u64>,
}

/// A new link and the receiving ends its task needs.
pub(crate) struct Parts {
    pub(crate) link: Arc<Link>,
    out_rx: mpsc::Receiver<Utf8Bytes>,
    subscriber: Arc<Subscriber>,
    direct_rx: Inbox,
    /// Makes the link reachable for the dispatcher's direct messages;
    /// dropping it hands back the tasks forwarded over the link.
    entry: Box<dyn Send + Sync>,
}

impl Link {
    pub(crate) fn open(
        hub: &HubRef,
        peer: Arc<Peer>,
        hello: HubHello,
        direction: Direction,
        queue: usize,
        expires_at: Option<u64>,
    ) -> Parts {
        let id = hub.next_client_id();
        let (out, out_rx) = mpsc::channel(queue.max(1));
        let (subscriber, direct_rx) = Subscriber::new(id, queue);
        let entry = hub.register_connection(&subscriber);
        let link = Arc::new(Link {
            id,
            peer,
            hello,
            direction,
            since: now_ms(),
            out,
            kicked: CancellationToken::new(),
            reason: OnceLock::new(),
            dirty: Notify::new(),
            rtt_us: AtomicU64::new(0),
            peer_queued: AtomicU64::new(0),
            counters: Counters::default(),
            send_patterns: Mutex::new(Vec::new()),
            asked: AtomicU64::new(0),
            expires_at,
        });
        Parts {
            link,
            out_rx,
            subscriber,
            direct_rx,
            entry,
        }
    }

    /// Queues a frame for the peer without waiting. A full queue closes the
    /// link (slow peer); returns whether the frame was queued.
    pub(crate) fn send(&self, frame: Utf8Bytes) -> bool {
        match self.out.try_send(frame) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                if !self.kicked.is_cancelled() {
                    tracing::warn!(
                        peer = %self.peer.config.name,
                        "slow peer: link queue full, closing the link"
                    );
                }
                self.kick("slow peer: the link queue is full".into());
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }

    /// Queues a hub message, unless it is bigger than the peer reads
    /// (logged; false).
    pub(crate) fn send_msg(&self, msg: &HubMessage) -> bool {
        let text = msg.to_json();
        if text.len() > self.hello.max_frame_bytes {
            tracing::warn!(
                peer = %self.peer.config.name,
                bytes = text.len(),
                limit = self.hello.max_frame_bytes,
                "message too large for the peer's frame limit; not sent"
            );
            return false;
        }
        self.send(Utf8Bytes::from(text))
    }

    /// Closes the link for `reason` (the first reason wins).
    pub(crate) fn kick(&self, reason: String) {
        if self.reason.set(reason).is_ok() {
            self.kicked.cancel();
        }
    }

    /// The link as the API shows it.
    pub(crate) fn view(&self) -> LinkView {
        let rtt = self.rtt_us.load(Ordering::Relaxed);
        let c = &self.counters;
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        LinkView {
            peer: self.peer.config.name.clone(),
            peer_id: Some(self.hello.hub_id.clone()),
            state: LinkState::Up,
            direction: Some(self.direction.as_str().to_string()),
            since: self.since,
            rtt_ms: (rtt > 0).then(|| rtt as f64 / 1000.0),
            attempts: 0,
            last_error: None,
            interest_in: lock(&self.send_patterns).len(),
            interest_out: load(&self.asked) as usize,
            capacity: Vec::new(),
            counters: LinkCounters {
                events_out: load(&c.events_out),
                events_in: load(&c.events_in),
                dropped_import: load(&c.dropped_import),
                dropped_duplicate: load(&c.dropped_duplicate),
                dropped_oversize: load(&c.dropped_oversize),
                tasks_out: load(&c.tasks_out),
                tasks_in: load(&c.tasks_in),
            },
        }
    }

    /// Last measured round trip.
    pub(crate) fn rtt(&self) -> Option<Duration> {
        match self.rtt_us.load(Ordering::Relaxed) {
            0 => None,
            us => Some(Duration::from_micros(us)),
        }
    }
}

/// The `hub:event` frame for `event`, as it leaves this hub.
pub(crate) fn event_frame(origin: &str, msg_id: &str, hops: u32, event: &Event) -> String {
    #[derive(Serialize)]
    #[serde(rename_all = "camelCase")]
    struct Frame<'a> {
        #[serde(rename = "type")]
        kind: &'static str,
        origin: &'a str,
        msg_id: &'a str,
        hops: u32,
        channel: &'a str,
        data: &'a Value,
        ts: u64,
    }
    serde_json::to_string(&Frame {
        kind: "hub:event",
        origin,
        msg_id,
        hops,
        channel: event.channel.as_str(),
        data: &event.data,
        ts: event.ts,
    })
    .unwrap_or_default()
}

/// What was last advertised to the peer, to send only changes.
#[derive(Default)]
struct Sent {
    interest: BTreeMap<String, (u64, u32, Vec<String>)>,
    capacity: BTreeMap<String, (u64, u32, Vec<CapabilityLoad>)>,
}

/// Runs a link until it closes, then tears it down.
pub(crate) async fn run<St, Si>(
    fed: Arc<Federation>,
    hub: HubRef,
    parts: Parts,
    inbound: St,
    outbound: Si,
) where
    St: Stream<Item = Result<Bytes, BoxError>> + Unpin,
    Si: Sink<Utf8Bytes, Error = BoxError> + Unpin,
{
    let Parts {
        link,
        out_rx,
        subscriber,
        direct_rx,
        entry,
    } = parts;
    let mut task = LinkTask {
        fed: Arc::clone(&fed),
        hub: hub.clone(),
        link: Arc::clone(&link),
        outbound,
        sent: Sent::default(),
        last_seen: Instant::now(),
        ping: None,
    };
    let reason = task.serve(inbound, out_rx, subscriber, direct_rx).await;
    let _ = tokio::time::timeout(Duration::from_secs(2), task.outbound.close()).await;
    // Hands back forwarded tasks (the dispatcher requeues them) before the
    // link is announced as gone.
    drop(entry);
    fed.unregister(&link, &reason);
}

struct LinkTask<Si> {
    fed: Arc<Federation>,
    hub: HubRef,
    link: Arc<Link>,
    outbound: Si,
    sent: Sent,
    /// When the peer last sent anything.
    last_seen: Instant,
    /// The `ts` of the last ping and when it left, for the round trip.
    ping: Option<(u64, Instant)>,
}

impl<Si> LinkTask<Si>
where
    Si: Sink<Utf8Bytes, Error = BoxError> + Unpin,
{
    /// The main loop; returns why the link ended.
    async fn serve<St>(
        &mut self,
        mut inbound: St,
        mut out_rx: mpsc::Receiver<Utf8Bytes>,
        subscriber: Arc<Subscriber>,
        direct_rx: Inbox,
    ) -> String
    where
        St: Stream<Item = Result<Bytes, BoxError>> + Unpin,
    {
        let config = self.fed.config().clone();
        let shutdown = self.hub.shutdown_token().clone();
        let link = Arc::clone(&self.link);
        // The first ping goes out at once, so latency is known early.
        let mut keepalive = tokio::time::interval(config.ping_interval);
        keepalive.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let expiry = sleep_until(match link.expires_at {
            Some(secs) => {
                let left = secs.saturating_mul(1000).saturating_sub(now_ms());
                Instant::now() + Duration::from_millis(left)
            }
            None => Instant::now() + Duration::from_secs(100 * 365 * 24 * 3600),
        });
        tokio::pin!(expiry);
        // The first adverts go out at once.
        let mut advert_at: Option<Instant> = Some(Instant::now());
        loop {
            let advert = async {
                match advert_at {
                    Some(at) => sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            let step: Result<(), String> = tokio::select! {
                biased;
                _ = shutdown.cancelled() => Err("the hub is shutting down".into()),
                _ = link.kicked.cancelled() => {
                    Err(link.reason.get().cloned().unwrap_or_else(|| "closed".into()))
                }
                reason = subscriber.kicked() => Err(format!("task queue: {}", reason.text())),
                _ = &mut expiry => Err("the peer's token expired".into()),
                _ = keepalive.tick() => self.keepalive(&config).await,
                frame = out_rx.recv() => match frame {
                    Some(frame) => self.write(frame, &mut out_rx).await,
                    None => Err("queue closed".into()),
                },
                direct = direct_rx.recv() => match direct {
                    Outbound::Direct(text) => {
                        self.fed.on_dispatcher_message(&link, &text);
                        Ok(())
                    }
                    Outbound::Event(_) => Ok(()),
                },
                _ = link.dirty.notified() => {
                    if advert_at.is_none() {
                        advert_at = Some(Instant::now() + config.debounce);
                    }
                    Ok(())
                }
                _ = advert => {
                    advert_at = None;
                    self.advertise();
                    Ok(())
                }
                frame = inbound.next() => match frame {
                    None => Err("the peer closed the connection".into()),
                    Some(Err(e)) => Err(e.to_string()),
                    Some(Ok(bytes)) => {
                        self.last_seen = Instant::now();
                        self.on_frame(&bytes).await
                    }
                },
            };
            if let Err(reason) = step {
                return reason;
            }
        }
    }

    async fn keepalive(&mut self, config: &super::FederationConfig) -> Result<(), String> {
        if self.last_seen.elapsed() >= config.ping_timeout {
            return Err("ping timeout: the peer stopped answering".into());
        }
        let ts = now_ms();
        self.ping = Some((ts, Instant::now()));
        let ping = HubMessage::Ping {
            ts,
            queued: self.fed.tasks.waiting() as u64,
        };
        self.send_now(Utf8Bytes::from(ping.to_json())).await
    }

    /// Writes `first` and whatever else is queued, then flushes once.
    async fn write(
        &mut self,
        first: Utf8Bytes,
        out_rx: &mut mpsc::Receiver<Utf8Bytes>,
    ) -> Result<(), String> {
        let timeout = self.fed.config().ping_timeout;
        let outbound = &mut self.outbound;
        let write = async {
            outbound.feed(first).await?;
            for _ in 1..WRITE_BATCH {
                match out_rx.try_recv() {
                    Ok(next) => outbound.feed(next).await?,
                    Err(_) => break,
                }
            }
            outbound.flush().await
        };
        match tokio::time::timeout(timeout, write).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(format!("write failed: {e}")),
            Err(_) => Err("write timed out: the peer stopped reading".into()),
        }
    }

    /// Writes one frame now (pings, pongs), bounded in time.
    async fn send_now(&mut self, frame: Utf8Bytes) -> Result<(), String> {
        let timeout = self.fed.config().ping_timeout;
        match tokio::time::timeout(timeout, self.outbound.send(frame)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(format!("write failed: {e}")),
            Err(_) => Err("write timed out: the peer stopped reading".into()),
        }
    }

    /// Queues the adverts that changed since the last ones.
    fn advertise(&mut self) {
        let adverts = self.fed.adverts_for(&self.link);
        let link = &self.link;
        let asked = adverts
            .interest
            .values()
            .map(|(_, _, p)| p.len() as u64)
            .sum();
        link.asked.store(asked, Ordering::Relaxed);
        for (origin, entry) in &adverts.interest {
            if self.sent.interest.get(origin) != Some(entry) {
                let (version, hops, patterns) = entry.clone();
                let msg = |patterns| HubMessage::Interest {
                    hub: origin.clone(),
                    version,
                    hops,
                    patterns,
                };
                let mut advert = msg(patterns);
                if let HubMessage::Interest { patterns, .. } = &advert {
                    // Too many patterns for one frame: ask for a superset.
                    if advert.to_json().len() > link.hello.max_frame_bytes {
                        advert = msg(super::routes::coarsen(patterns));
                    }
                }
                link.send_msg(&advert);
            }
        }
        for origin in self.sent.interest.keys() {
            if !adverts.interest.contains_key(origin) {
                link.send_msg(&HubMessage::Withdraw {
                    hub: origin.clone(),
                    table: Table::Interest,
                });
            }
        }
        for (origin, entry) in &adverts.capacity {
            if self.sent.capacity.get(origin) != Some(entry) {
                let (version, hops, capabilities) = entry.clone();
                link.send_msg(&HubMessage::Capacity {
                    hub: origin.clone(),
                    version,
                    hops,
                    capabilities,
                });
            }
        }
        for origin in self.sent.capacity.keys() {
            if !adverts.capacity.contains_key(origin) {
                link.send_msg(&HubMessage::Withdraw {
                    hub: origin.clone(),
                    table: Table::Capacity,
                });
            }
        }
        self.sent = Sent {
            interest: adverts.interest,
            capacity: adverts.capacity,
        };
    }

    async fn on_frame(&mut self, bytes: &[u8]) -> Result<(), String> {
        let msg = match serde_json::from_slice::<HubMessage>(bytes) {
            Ok(msg) => msg,
            Err(e) => {
                // A newer peer may send messages this hub does not know.
                tracing::debug!(peer = %self.link.peer.config.name, error = %e, "ignored a frame");
                return Ok(());
            }
        };
        let link = Arc::clone(&self.link);
        match msg {
            HubMessage::Ping { ts, queued } => {
                link.peer_queued.store(queued, Ordering::Relaxed);
                let pong = HubMessage::Pong { ts };
                return self.send_now(Utf8Bytes::from(pong.to_json())).await;
            }
            HubMessage::Pong { ts } => {
                let rtt = match self.ping {
                    Some((sent, at)) if sent == ts => at.elapsed(),
                    _ => Duration::from_millis(now_ms().saturating_sub(ts)),
                };
                let us = u64::try_from(rtt.as_micros()).unwrap_or(u64::MAX);
                link.rtt_us.store(us.max(1), Ordering::Relaxed);
            }
            HubMessage::Interest {
                hub,
                version,
                hops,
                patterns,
            } => self.fed.on_interest(&link, &hub, version, hops, &patterns),
            HubMessage::Capacity {
                hub,
                version,
                hops,
                capabilities,
            } => self
                .fed
                .on_capacity(&link, &hub, version, hops, capabilities),
            HubMessage::Withdraw { hub, table } => self.fed.on_withdraw(&link, &hub, table),
            HubMessage::Event {
                origin,
                msg_id,
                hops,
                channel,
                data,
                ts,
            } => self
                .fed
                .receive_event(&link, origin, msg_id, hops, &channel, data, ts),
            HubMessage::Hello(_) | HubMessage::Refused { .. } => {}
            msg @ (HubMessage::Serving { .. }
            | HubMessage::Call { .. }
            | HubMessage::CallAnswer { .. }
            | HubMessage::CallCancel { .. }) => self.fed.on_call_message(&link, msg),
            task_message => {
                self.fed
                    .on_task_message(&self.hub, &link, task_message)
                    .await
            }
        }
        Ok(())
    }
}
