//! Fan-out between nodes: the publisher task (one connection, events in
//! order, each stamped with this node's id and sequence) and the pub/sub
//! task (the node's Redis subscriptions, and the events that arrive on
//! them). See the parent module for why this delivers exactly once.
//!
//! A batch Redis may have run without answering (it froze, the connection
//! dropped) is sent again, the same — same stamps — once Redis answers,
//! for up to [`RedisEngine::retry_for`]; its waiters are answered only
//! then. A copy a node already delivered is dropped by the stamp check,
//! and the history script keeps, per channel, the last sequence each node
//! stored, so a repeated event is neither delivered nor kept twice.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures::StreamExt;
use redis::aio::{MultiplexedConnection, PubSubSink};
use serde::Deserialize;
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::Utf8Bytes;
use tokio_util::sync::CancellationToken;

use super::catchup::{Delivered, PRUNE_EVERY};
use super::keys::RedisSub;
use super::{Failed, RedisEngine, unavailable};
use crate::channels::{ChannelName, NameLimits, Pattern};
use crate::error::RequestError;
use crate::protocol::{Event, Position};
use crate::router::manager::ChannelManager;
use crate::router::namespace::HistoryLimits;

/// Events sent in one pipeline at most.
const BATCH: usize = 256;

/// At shutdown, the publisher stops after this long without anything to send.
const DRAIN_IDLE: Duration = Duration::from_millis(200);

/// How long a history channel's epoch and offset outlive its last publish.
const META_TTL: Duration = Duration::from_secs(24 * 3600);

/// Numbers a history channel's event, keeps it and publishes it, atomically.
/// KEYS: stream, meta. ARGV: pub/sub channel, payload prefix, frame (ending
/// in `}`), history size, history TTL ms, a new epoch, meta TTL ms, ts,
/// publishing node, its sequence. The meta hash keeps, per node (process
/// start) that published on the channel, its last sequence here and how
/// many subscriptions that publish reached: an event whose node stored the
/// same or a later sequence is a batch sent again — it was kept and
/// published already, and is answered with that count (0 for an older one).
pub(super) const PUBLISH_WITH_HISTORY: &str = r#"
local from = 'n:' .. ARGV[9]
local stored = redis.call('HGET', KEYS[2], from)
if stored then
  local seq, count = string.match(stored, '^(%d+) (%d+)$')
  if seq == ARGV[10] then return tonumber(count) end
  if seq and tonumber(seq) > tonumber(ARGV[10]) then return 0 end
end
local epoch = redis.call('HGET', KEYS[2], 'epoch')
if not epoch then
  epoch = ARGV[6]
  redis.call('DEL', KEYS[1])
  redis.call('HSET', KEYS[2], 'epoch', epoch, 'top', 0)
end
local top = redis.call('HINCRBY', KEYS[2], 'top', 1)
local frame = string.sub(ARGV[3], 1, -2) .. ',"offset":' .. top .. ',"epoch":"' .. epoch .. '"}'
redis.call('XADD', KEYS[1], 'MAXLEN', ARGV[4], top .. '-0', 't', ARGV[8], 'f', frame)
redis.call('PEXPIRE', KEYS[1], ARGV[5])
redis.call('PEXPIRE', KEYS[2], ARGV[7])
local count = redis.call('PUBLISH', ARGV[1], ARGV[2] .. frame)
redis.call('HSET', KEYS[2], from, ARGV[10] .. ' ' .. count)
return count
"#;

/// Something on its way to Redis through the publisher connection.
pub(super) enum Outgoing {
    /// An event.
    Event(OutgoingEvent),
    /// A task wake-up for every node: `PUBLISH channel payload`, in order
    /// with the events (a repeat is harmless).
    Raw(String, Vec<u8>),
    /// A message for one node (for its connections, its task or call
    /// side): stamped and published like an event, so it stays in order
    /// with this node's events and a batch sent again delivers it once.
    Node(u64, Vec<u8>),
    /// A write that must stay in order with this node's others (presence).
    Command(redis::Cmd),
    /// A `join` / `leave` frame for the subscribers of its channel on every
    /// node: stamped and published like an event, so it stays in order with
    /// this node's events of the channel.
    Membership(ChannelName, Utf8Bytes),
}

/// An event on its way to Redis.
pub(super) struct OutgoingEvent {
    /// Its channel.
    channel: ChannelName,
    /// The WebSocket frame (without offset: Redis numbers history events).
    frame: Utf8Bytes,
    /// Publish time, kept with history events for their TTL.
    ts: u64,
    /// The namespace's history limits, if the channel keeps history.
    history: Option<HistoryLimits>,
    /// Who waits for the number of nodes that received it.
    reply: Option<oneshot::Sender<Result<usize, RequestError>>>,
}

/// The Redis subscriptions a node wants and has.
#[derive(Default)]
pub(super) struct Interest {
    /// Wanted, with the number of chanhub patterns that need each.
    pub(super) desired: HashMap<RedisSub, usize>,
    /// Placed and confirmed by Redis on the current pub/sub connection.
    pub(super) confirmed: HashSet<RedisSub>,
}

/// An event as another node (or this one) published it.
#[derive(Deserialize)]
struct Wire {
    channel: String,
    data: Value,
    id: String,
    ts: u64,
    offset: Option<u64>,
    epoch: Option<String>,
}

/// Rebuilds an event from its WebSocket frame, keeping the frame's bytes.
pub(super) fn parse_frame(frame: &str) -> Option<Event> {
    let wire: Wire = serde_json::from_str(frame).ok()?;
    let channel = ChannelName::parse(&wire.channel, &NameLimits::UNBOUNDED).ok()?;
    let position = match (wire.offset, wire.epoch) {
        (Some(offset), Some(epoch)) => Some(Position {
            offset,
            epoch: Arc::from(epoch),
        }),
        _ => None,
    };
    Some(Event::from_frame(
        channel,
        wire.data,
        wire.id,
        wire.ts,
        position,
        Utf8Bytes::from(frame.to_string()),
    ))
}

impl RedisEngine {
    /// Publishes `event` to every node; resolves to the number of nodes
    /// that received it, or `engine_unavailable`.
    pub(crate) async fn publish(
        &self,
        event: &Event,
        history: Option<HistoryLimits>,
    ) -> Result<usize, RequestError> {
        self.check_ready()?;
        let (tx, rx) = oneshot::channel();
        self.enqueue(event, history, Some(tx))?;
        rx.await
            .unwrap_or_else(|_| Err(unavailable("the hub is shutting down")))
    }

    /// Publishes `event` without waiting (task lifecycle events and other
    /// publishes from synchronous code); false when refused.
    pub(crate) fn publish_detached(&self, event: &Event, history: Option<HistoryLimits>) -> bool {
        let sent = self.check_ready().is_ok() && self.enqueue(event, history, None).is_ok();
        if !sent {
            // Once per event would flood the log during an outage; the
            // outage itself is logged once (see `lost`).
            tracing::debug!(channel = %event.channel, "Redis unreachable: event dropped");
        }
        sent
    }

    fn enqueue(
        &self,
        event: &Event,
        history: Option<HistoryLimits>,
        reply: Option<oneshot::Sender<Result<usize, RequestError>>>,
    ) -> Result<(), RequestError> {
        let outgoing = Outgoing::Event(OutgoingEvent {
            channel: event.channel.clone(),
            frame: event.ws_frame(),
            ts: event.ts,
            history,
            reply,
        });
        self.queue
            .try_send(outgoing)
            .map_err(|_| unavailable("too many events waiting for Redis"))
    }

    /// Publishes a message to every node after everything queued so far;
    /// false when refused (Redis unreachable).
    pub(crate) fn publish_raw(&self, channel: String, payload: Vec<u8>) -> bool {
        self.check_ready().is_ok() && self.queue.try_send(Outgoing::Raw(channel, payload)).is_ok()
    }

    /// Sends `payload` to node `node`'s sides after everything queued so
    /// far; false when refused (Redis unreachable).
    pub(crate) fn send_to_node(&self, node: u64, payload: Vec<u8>) -> bool {
        self.check_ready().is_ok() && self.queue.try_send(Outgoing::Node(node, payload)).is_ok()
    }

    /// Sends a `join` / `leave` frame of `channel` to its subscribers on
    /// every node, this one included (but the member itself, which got its
    /// own `join` when it subscribed), behind this node's earlier events.
    /// False when refused (Redis unreachable): then only this node's
    /// subscribers can be told.
    pub(crate) fn publish_membership(&self, channel: &ChannelName, frame: &Utf8Bytes) -> bool {
        let sent = self.check_ready().is_ok()
            && self
                .queue
                .try_send(Outgoing::Membership(channel.clone(), frame.clone()))
                .is_ok();
        if !sent {
            tracing::debug!(%channel, "Redis unreachable: join/leave not sent to other nodes");
        }
        sent
    }

    /// Queues a write behind everything this node sent so far.
    pub(super) fn send_command(&self, cmd: redis::Cmd) -> bool {
        self.queue.try_send(Outgoing::Command(cmd)).is_ok()
    }

    /// The publisher: sends queued events in order, a pipeline at a time,
    /// through one connection.
    pub(super) async fn run_publisher(
        self: Arc<Self>,
        mut queue: mpsc::Receiver<Outgoing>,
        shutdown: CancellationToken,
    ) {
        // The connection and the generation it was made in.
        let mut conn: Option<(u64, MultiplexedConnection)> = None;
        let mut seq: u64 = 0;
        let mut batch = Vec::with_capacity(BATCH);
        loop {
            let first = if shutdown.is_cancelled() {
                // Shutting down: what closing sessions still send (task
                // hand-backs, leaves, their events) goes out; stop once
                // nothing came for a moment.
                match tokio::time::timeout(DRAIN_IDLE, queue.recv()).await {
                    Ok(Some(first)) => first,
                    Ok(None) | Err(_) => return,
                }
            } else {
                tokio::select! {
                    _ = shutdown.cancelled() => continue,
                    first = queue.recv() => match first {
                        Some(first) => first,
                        None => return,
                    },
                }
            };
            batch.push(first);
            while batch.len() < BATCH {
                match queue.try_recv() {
                    Ok(next) => batch.push(next),
                    Err(_) => break,
                }
            }
            let result = self
                .send_batch(&mut conn, &mut seq, &batch, &shutdown)
                .await;
            // One reply per event and raw publish (commands are ignored).
            let mut i = 0;
            for item in batch.drain(..) {
                let reply = match item {
                    Outgoing::Event(event) => event.reply,
                    Outgoing::Raw(..) | Outgoing::Node(..) | Outgoing::Membership(..) => None,
                    Outgoing::Command(_) => continue,
                };
                i += 1;
                if let Some(reply) = reply {
                    let i = i - 1;
                    let _ = reply.send(match &result {
                        Ok(counts) => Ok(counts.get(i).copied().unwrap_or(0).max(0) as usize),
                        Err(err) => Err(err.clone()),
                    });
                }
            }
        }
    }

    /// Sends a batch, and sends it again while Redis may have run it
    /// without answering (see the module doc).
    async fn send_batch(
        &self,
        conn: &mut Option<(u64, MultiplexedConnection)>,
        seq: &mut u64,
        batch: &[Outgoing],
        shutdown: &CancellationToken,
    ) -> Result<Vec<i64>, RequestError> {
        let pipe = self.batch_pipeline(seq, batch);
        let deadline = tokio::time::Instant::now() + self.retry_for();
        loop {
            let err = match self.send_pipeline(conn, &pipe).await {
                Ok(counts) => return Ok(counts),
                Err(Failed::Answered(err)) => return Err(err),
                Err(Failed::Unanswered(err)) => err,
            };
            self.write_unanswered(super::Write::Batch);
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let ready = !left.is_zero()
                && tokio::select! {
                    ready = self.wait_ready(left) => ready,
                    _ = shutdown.cancelled() => false,
                };
            if !ready {
                return Err(err);
            }
            tracing::info!(
                items = batch.len(),
                "a publish batch went unanswered; sending it again"
            );
        }
    }

    /// The batch as one pipeline, each event and node message stamped with
    /// the next sequence numbers.
    fn batch_pipeline(&self, seq: &mut u64, batch: &[Outgoing]) -> redis::Pipeline {
        let mut pipe = redis::pipe();
        for item in batch {
            let item = match item {
                Outgoing::Raw(channel, payload) => {
                    pipe.cmd("PUBLISH").arg(channel).arg(payload);
                    continue;
                }
                Outgoing::Node(node, message) => {
                    *seq += 1;
                    let mut payload = format!("{:016x}|{}|", self.node, seq).into_bytes();
                    payload.extend_from_slice(message);
                    pipe.cmd("PUBLISH").arg(self.keys.node(*node)).arg(payload);
                    continue;
                }
                Outgoing::Command(cmd) => {
                    pipe.add_command(cmd.clone()).ignore();
                    continue;
                }
                Outgoing::Membership(channel, frame) => {
                    *seq += 1;
                    let mut payload = format!("{:016x}|{}|", self.node, seq).into_bytes();
                    payload.extend_from_slice(frame.as_bytes());
                    pipe.cmd("PUBLISH")
                        .arg(self.keys.events(channel.as_str()))
                        .arg(payload);
                    continue;
                }
                Outgoing::Event(event) => event,
            };
            *seq += 1;
            let prefix = format!("{:016x}|{}|", self.node, seq);
            let channel = item.channel.as_str();
            match item.history {
                None => {
                    let mut payload = prefix.into_bytes();
                    payload.extend_from_slice(item.frame.as_bytes());
                    pipe.cmd("PUBLISH")
                        .arg(self.keys.events(channel))
                        .arg(payload);
                }
                Some(limits) => {
                    pipe.cmd("EVAL")
                        .arg(PUBLISH_WITH_HISTORY)
                        .arg(2)
                        .arg(self.keys.stream(channel))
                        .arg(self.keys.meta(channel))
                        .arg(self.keys.events(channel))
                        .arg(prefix)
                        .arg(item.frame.as_str())
                        .arg(limits.size)
                        .arg(limits.ttl.as_millis().max(1) as u64)
                        .arg(&*crate::router::history::new_epoch())
                        .arg(META_TTL.as_millis() as u64)
                        .arg(item.ts)
                        .arg(format!("{:016x}", self.node))
                        .arg(*seq);
                }
            }
        }
        pipe
    }

    /// Sends a pipeline once on the publisher connection (made anew after
    /// Redis was found unreachable).
    async fn send_pipeline(
        &self,
        conn: &mut Option<(u64, MultiplexedConnection)>,
        pipe: &redis::Pipeline,
    ) -> Result<Vec<i64>, Failed> {
        let generation = self.generation.load(Ordering::Acquire);
        if conn.as_ref().is_none_or(|(g, _)| *g != generation) {
            *conn = Some((
                generation,
                self.connect().await.map_err(Failed::Unanswered)?,
            ));
        }
        let Some((_, connection)) = conn.as_mut() else {
            return Err(Failed::Unanswered(unavailable("no Redis connection")));
        };
        let sent = tokio::time::timeout(self.config.timeout, pipe.query_async(connection)).await;
        match sent {
            Ok(Ok(counts)) => Ok(counts),
            Ok(Err(err)) => {
                *conn = None;
                let unanswered = super::is_unanswered(&err);
                let err = self.lost(&err.to_string());
                Err(if unanswered {
                    Failed::Unanswered(err)
                } else {
                    Failed::Answered(err)
                })
            }
            Err(_) => {
                *conn = None;
                Err(Failed::Unanswered(self.lost("publish timed out")))
            }
        }
    }

    /// A local subscription to `pattern` appeared (`added`) or went away:
    /// adjusts the node's Redis subscriptions.
    pub(crate) fn interest_changed(&self, pattern: &Pattern, added: bool) {
        let sub = self.keys.subscription(pattern);
        let mut interest = self.interest.lock().unwrap_or_else(|p| p.into_inner());
        let changed = if added {
            let count = interest.desired.entry(sub).or_insert(0);
            *count += 1;
            *count == 1
        } else {
            match interest.desired.get_mut(&sub) {
                Some(count) if *count > 1 => {
                    *count -= 1;
                    false
                }
                Some(_) => {
                    interest.desired.remove(&sub);
                    true
                }
                None => false,
            }
        };
        drop(interest);
        if changed {
            self.interest_changed.notify_one();
        }
    }

    /// Waits (up to `redis.timeout`) until Redis confirmed the subscriptions
    /// `patterns` need, so events published from now on reach this node.
    /// Returns at once while Redis is down.
    pub(crate) async fn wait_subscribed(&self, patterns: &[Pattern]) {
        let subs: Vec<RedisSub> = patterns.iter().map(|p| self.keys.subscription(p)).collect();
        let mut confirmed = self.confirmed.subscribe();
        let deadline = tokio::time::Instant::now() + self.config.timeout;
        loop {
            let done = {
                let interest = self.interest.lock().unwrap_or_else(|p| p.into_inner());
                subs.iter()
                    .all(|s| interest.confirmed.contains(s) || !interest.desired.contains_key(s))
            };
            if done || !self.pubsub_up.load(Ordering::Acquire) {
                return;
            }
            if tokio::time::timeout_at(deadline, confirmed.changed())
                .await
                .is_err()
            {
                tracing::warn!("Redis did not confirm a subscription in time");
                return;
            }
        }
    }

    /// The pub/sub connection: (re)connects, places every wanted
    /// subscription, then delivers what arrives, until `shutdown`.
    pub(super) async fn run_pubsub(
        self: Arc<Self>,
        channels: Arc<ChannelManager>,
        shutdown: CancellationToken,
    ) {
        let mut backoff = Duration::from_millis(50);
        // Per publishing node: the highest sequence delivered.
        let mut last_seq: HashMap<u64, u64> = HashMap::new();
        // Per history channel: the last offset delivered, to catch up from.
        let mut delivered = Delivered::default();
        let mut prune = tokio::time::interval(PRUNE_EVERY);
        prune.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let connect = tokio::time::timeout(self.config.timeout, self.client.get_async_pubsub());
            let pubsub = tokio::select! {
                _ = shutdown.cancelled() => return,
                pubsub = connect => pubsub,
            };
            let Ok(Ok(pubsub)) = pubsub else {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            };
            backoff = Duration::from_millis(50);
            let (mut sink, mut stream) = pubsub.split();
            let mut placed: HashSet<RedisSub> = HashSet::new();
            // Subscribed again: what arrives from now on is live, and what
            // was published while this node was not subscribed is read
            // from the history streams first (see `catchup`).
            if self.reconcile(&mut sink, &mut placed).await.is_ok()
                && self.catch_up(&channels, &mut delivered).await.is_ok()
            {
                self.pubsub_up.store(true, Ordering::Release);
                self.confirmed.send_modify(|g| *g += 1);
                tracing::info!("Redis pub/sub connected");
                loop {
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        msg = stream.next() => match msg {
                            Some(msg) => {
                                self.on_message(&channels, &mut last_seq, &mut delivered, &msg)
                            }
                            None => break,
                        },
                        _ = self.interest_changed.notified() => {
                            if self.reconcile(&mut sink, &mut placed).await.is_err() {
                                break;
                            }
                        }
                        _ = prune.tick() => delivered.prune(&channels),
                    }
                }
            }
            if self.pubsub_up.swap(false, Ordering::AcqRel) {
                tracing::warn!("Redis pub/sub connection lost: reconnecting");
                self.generation.fetch_add(1, Ordering::AcqRel);
            }
            self.interest
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .confirmed
                .clear();
            self.confirmed.send_modify(|g| *g += 1);
        }
    }

    /// Places wanted subscriptions and removes unwanted ones.
    async fn reconcile(
        &self,
        sink: &mut PubSubSink,
        placed: &mut HashSet<RedisSub>,
    ) -> redis::RedisResult<()> {
        loop {
            let (add, remove): (Vec<RedisSub>, Vec<RedisSub>) = {
                let interest = self.interest.lock().unwrap_or_else(|p| p.into_inner());
                (
                    interest
                        .desired
                        .keys()
                        .filter(|s| !placed.contains(*s))
                        .cloned()
                        .collect(),
                    placed
                        .iter()
                        .filter(|s| !interest.desired.contains_key(*s))
                        .cloned()
                        .collect(),
                )
            };
            if add.is_empty() && remove.is_empty() {
                return Ok(());
            }
            for sub in remove {
                match &sub {
                    RedisSub::Channel(name) => sink.unsubscribe(name).await?,
                    RedisSub::Pattern(glob) => sink.punsubscribe(glob).await?,
                }
                placed.remove(&sub);
                let mut interest = self.interest.lock().unwrap_or_else(|p| p.into_inner());
                interest.confirmed.remove(&sub);
            }
            for sub in add {
                match &sub {
                    RedisSub::Channel(name) => sink.subscribe(name).await?,
                    RedisSub::Pattern(glob) => sink.psubscribe(glob).await?,
                }
                placed.insert(sub.clone());
                let mut interest = self.interest.lock().unwrap_or_else(|p| p.into_inner());
                interest.confirmed.insert(sub);
            }
            self.confirmed.send_modify(|g| *g += 1);
        }
    }

    /// Routes a message: node-to-node ones to the task side, events to
    /// the local fan-out.
    fn on_message(
        &self,
        channels: &ChannelManager,
        last_seq: &mut HashMap<u64, u64>,
        delivered: &mut Delivered,
        msg: &redis::Msg,
    ) {
        let name = msg.get_channel_name();
        if name == self.keys.wake() {
            self.task_wake.notify_one();
        } else if name == self.keys.node(self.node) {
            match split_payload(msg.get_payload_bytes()) {
                Some((node, seq, body)) => {
                    if first_copy(last_seq, node, seq) {
                        self.to_inboxes(body.as_bytes());
                    }
                }
                None => tracing::warn!("ignoring a malformed node message from Redis"),
            }
        } else {
            self.deliver(channels, last_seq, delivered, msg.get_payload_bytes());
        }
    }

    /// One message from Redis: dropped when it is a copy already
    /// delivered (by its node's sequence, or its offset after a catch-up),
    /// else fanned out to this node's subscribers.
    fn deliver(
        &self,
        channels: &ChannelManager,
        last_seq: &mut HashMap<u64, u64>,
        delivered: &mut Delivered,
        payload: &[u8],
    ) {
        let Some((node, seq, frame)) = split_payload(payload) else {
            tracing::warn!("ignoring a malformed event from Redis");
            return;
        };
        if !first_copy(last_seq, node, seq) {
            return;
        }
        if is_membership(frame) {
            let Some((channel, member)) = parse_membership(frame) else {
                tracing::warn!("ignoring a join/leave from Redis that does not parse");
                return;
            };
            // A member of this node got its own `join` when it subscribed.
            // (A `leave` goes to everyone: its member is gone, and one sent
            // by a sweep names a connection of a dead node.)
            let own_join = node == self.node && frame.starts_with(JOIN);
            let except = own_join.then_some(member).flatten();
            channels.send_to_subscribers_except(
                &channel,
                &Utf8Bytes::from(frame.to_string()),
                except,
            );
            return;
        }
        match parse_frame(frame) {
            Some(event) => {
                if delivered.is_new(&event) {
                    let event = Arc::new(event);
                    let reached = channels.deliver(&event) > 0;
                    delivered.record(&event, reached);
                }
            }
            None => tracing::warn!("ignoring an event from Redis that does not parse"),
        }
    }
}

/// Whether the message stamped `seq` by `node` is the first copy this node
/// sees: the sequence of one node only grows, and Redis hands on its
/// messages in that order, so a copy (an overlapping subscription, a batch
/// sent again) is never above the last one taken.
fn first_copy(last_seq: &mut HashMap<u64, u64>, node: u64, seq: u64) -> bool {
    let last = last_seq.entry(node).or_insert(0);
    if seq <= *last {
        return false;
    }
    *last = seq;
    true
}

/// Whether a frame from Redis is a `join` / `leave` rather than an event
/// (serde writes the `type` tag first).
fn is_membership(frame: &str) -> bool {
    frame.starts_with(JOIN) || frame.starts_with(r#"{"type":"leave","#)
}

/// How a `join` frame starts.
const JOIN: &str = r#"{"type":"join","#;

/// The channel of a `join` / `leave` frame, and the member's connection
/// id (on its own node).
fn parse_membership(frame: &str) -> Option<(ChannelName, Option<u64>)> {
    #[derive(Deserialize)]
    struct Membership {
        channel: String,
        info: Member,
    }
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Member {
        client_id: String,
    }
    let membership: Membership = serde_json::from_str(frame).ok()?;
    let channel = ChannelName::parse(&membership.channel, &NameLimits::UNBOUNDED).ok()?;
    Some((channel, membership.info.client_id.parse().ok()))
}

/// `<node hex>|<seq>|<frame>` → its parts.
fn split_payload(payload: &[u8]) -> Option<(u64, u64, &str)> {
    let text = std::str::from_utf8(payload).ok()?;
    let (node, rest) = text.split_once('|')?;
    let (seq, frame) = rest.split_once('|')?;
    Some((
        u64::from_str_radix(node, 16).ok()?,
        seq.parse().ok()?,
        frame,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_split_into_node_seq_and_frame() {
        let (node, seq, frame) =
            split_payload(b"00000000000000ff|7|{\"a\":\"x|y\"}").expect("parts");
        assert_eq!((node, seq, frame), (255, 7, "{\"a\":\"x|y\"}"));
        assert!(split_payload(b"nope").is_none());
    }

    #[test]
    fn frames_parse_back_into_events() {
        let frame = r#"{"type":"event","channel":"a:b","data":{"x":1},"id":"e1","ts":5,"offset":3,"epoch":"ab"}"#;
        let event = parse_frame(frame).expect("event");
        assert_eq!(event.channel.as_str(), "a:b");
        assert_eq!(event.position.as_ref().map(|p| p.offset), Some(3));
        assert_eq!(event.ws_frame().as_str(), frame);
    }
}
