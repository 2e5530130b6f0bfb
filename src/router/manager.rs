//! The fan-out path: who is subscribed to what, and handing a published event
//! to every matching subscriber without ever waiting for one.
//!
//! A publish looks up the matching subscribers in the [`SubscriptionIndex`]
//! (a trie with a match cache), then `try_send`s one `Arc<Event>` into each
//! subscriber's bounded queue. Nothing is serialized or allocated per
//! subscriber beyond the refcount. A full queue means the subscriber cannot
//! keep up: it is marked as a slow consumer and its session closes it.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use serde_json::Value;
use tokio_tungstenite::tungstenite::Utf8Bytes;
use tokio_util::sync::CancellationToken;

use super::namespace::Namespaces;
use super::queue::{KEEP_SLOTS, PushError, Queue};
use super::state::{ChannelEntry, ChannelStates};
use super::upstream::{Forwarder, Origin, Upstream};
use crate::channels::{ChannelName, Pattern, SubscriptionIndex};
use crate::error::CloseReason;
use crate::pacing::Pacer;
use crate::protocol::history::PresenceInfo;
use crate::protocol::{Event, EventIds, now_ms};

/// What a connection's queue carries.
#[derive(Debug)]
pub(crate) enum Outbound {
    /// A published event, shared by every subscriber.
    Event(Arc<Event>),
    /// A message for this connection only (`task:assign`, `task:result`, …),
    /// already serialized. Boxed so the enum, and so a queue slot, is two
    /// words.
    Direct(Box<Utf8Bytes>),
}

/// The connection's side of its event queue; dropping it closes the queue
/// (later sends to the connection are refused as if it were gone).
#[derive(Debug)]
pub(crate) struct Inbox {
    subscriber: Arc<Subscriber>,
    /// What [`take`](Self::take) moved out of the queue: the consumer's
    /// half of a double buffer, so a batch costs one lock.
    batch: VecDeque<Outbound>,
}

impl Inbox {
    /// The next queued message, waiting for one.
    pub(crate) async fn recv(&self) -> Outbound {
        self.subscriber.queue.pop().await
    }

    /// The next queued message, if one is queued.
    #[cfg(test)]
    pub(crate) fn try_recv(&self) -> Option<Outbound> {
        self.subscriber.queue.try_pop()
    }

    /// Up to `max` queued messages, oldest first, taken under one lock.
    /// What the caller does not take from the batch comes first at the
    /// next `take`; [`recv`](Self::recv) and [`try_recv`](Self::try_recv)
    /// do not see it, so a consumer that mixes them drains each batch (the
    /// session stops part-way only when its connection ends).
    pub(crate) fn take(&mut self, max: usize) -> Batch<'_> {
        let room = max.saturating_sub(self.batch.len());
        self.subscriber.queue.pop_batch(&mut self.batch, room);
        Batch(&mut self.batch)
    }
}

/// Messages [`Inbox::take`] moved out of the queue, oldest first.
#[derive(Debug)]
pub(crate) struct Batch<'a>(&'a mut VecDeque<Outbound>);

impl Iterator for Batch<'_> {
    type Item = Outbound;

    fn next(&mut self) -> Option<Outbound> {
        self.0.pop_front()
    }
}

impl Drop for Batch<'_> {
    fn drop(&mut self) {
        // A burst's buffer goes back to the allocator once written.
        if self.0.is_empty() && self.0.capacity() > KEEP_SLOTS {
            *self.0 = VecDeque::new();
        }
    }
}

impl Drop for Inbox {
    fn drop(&mut self) {
        self.subscriber.queue.close();
    }
}

/// The hub's side of one connection's event queue.
#[derive(Debug)]
pub(crate) struct Subscriber {
    /// Connection id; the index deduplicates matches by it so overlapping
    /// patterns deliver an event once per connection.
    pub id: u64,
    /// Bounded queue into the connection's session.
    queue: Queue<Outbound>,
    /// Cancelled when the hub wants this connection gone (slow consumer);
    /// the session selects on it.
    kicked: CancellationToken,
    /// Why it was kicked; set once, before `kicked` is cancelled.
    reason: OnceLock<CloseReason>,
}

impl Subscriber {
    /// A subscriber and the receiving end of its queue.
    pub(crate) fn new(id: u64, queue: usize) -> (Arc<Subscriber>, Inbox) {
        Subscriber::build(id, queue, CancellationToken::new())
    }

    /// Like [`new`](Self::new), but [`kicked`](Self::kicked) also resolves
    /// (with `ServiceRestart`) when `stop` — the hub's shutdown — is
    /// cancelled, so a session waits on one token instead of two.
    pub(crate) fn stopped_by(
        id: u64,
        queue: usize,
        stop: &CancellationToken,
    ) -> (Arc<Subscriber>, Inbox) {
        Subscriber::build(id, queue, stop.child_token())
    }

    fn build(id: u64, queue: usize, kicked: CancellationToken) -> (Arc<Subscriber>, Inbox) {
        let sub = Arc::new(Subscriber {
            id,
            queue: Queue::new(queue),
            kicked,
            reason: OnceLock::new(),
        });
        (
            Arc::clone(&sub),
            Inbox {
                subscriber: sub,
                batch: VecDeque::new(),
            },
        )
    }

    /// Queues a message for this connection alone. Like events, it never
    /// waits: a full queue marks the connection a slow consumer.
    pub(crate) fn send_direct(&self, frame: Utf8Bytes) -> bool {
        match self.queue.push(Outbound::Direct(Box::new(frame))) {
            Ok(_) => true,
            Err(PushError::Full(_)) => {
                tracing::warn!(
                    client_id = self.id,
                    "slow consumer: outbound queue full, disconnecting"
                );
                self.kick(CloseReason::SlowConsumer);
                false
            }
            Err(PushError::Closed(_)) => false,
        }
    }

    /// Asks the session to close the connection for `reason`. The first
    /// reason wins.
    pub(crate) fn kick(&self, reason: CloseReason) {
        if self.reason.set(reason).is_ok() {
            self.kicked.cancel();
        }
    }

    /// Resolves once the connection has been kicked, or the hub it was
    /// made [`stopped_by`](Self::stopped_by) shuts down.
    pub(crate) async fn kicked(&self) -> CloseReason {
        self.kicked.cancelled().await;
        // `kick` sets a reason before it cancels; no reason: shutdown.
        self.reason
            .get()
            .copied()
            .unwrap_or(CloseReason::ServiceRestart)
    }

    /// Whether the connection has been kicked.
    pub(crate) fn is_kicked(&self) -> bool {
        self.kicked.is_cancelled()
    }
}

/// Counters of the fan-out path.
#[derive(Debug, Default)]
pub(crate) struct FanoutStats {
    /// Events published.
    pub published: AtomicU64,
    /// Event deliveries queued (one per subscriber per event).
    pub delivered: AtomicU64,
    /// Subscribers disconnected because their queue was full.
    pub slow_consumers: AtomicU64,
}

/// The subscription index plus the publish operation.
pub(crate) struct ChannelManager {
    /// Pattern → subscribers.
    index: SubscriptionIndex<Arc<Subscriber>>,
    /// Event id generator.
    event_ids: EventIds,
    /// Counters, read by logs and (later) metrics.
    pub stats: FanoutStats,
    /// Federation: hands every published event to the links whose peers
    /// want it, and hears when local interest changes. It holds nothing
    /// that holds this manager, so a strong reference makes no cycle.
    forwarder: OnceLock<Arc<dyn Forwarder>>,
    /// Subscriptions per distinct pattern: the interest this hub
    /// advertises to its peers. A std mutex: held for a map update only.
    interest: Mutex<HashMap<Pattern, usize>>,
    /// Namespace options by channel (history, presence, ...).
    namespaces: Namespaces,
    /// History and members of the namespace channels that need them.
    pub(super) states: ChannelStates,
    /// A shared engine (`engine = "redis"`): publishes go through it and
    /// come back (to every node) through [`ChannelManager::deliver`]. Unset
    /// for the memory engine; the fan-out path checks it once per publish,
    /// never per subscriber.
    upstream: OnceLock<Arc<dyn Upstream>>,
    /// Under overload, puts off waking a connection to the next tick.
    pacer: Arc<Pacer>,
    /// A delivery found a connection's queue half full since a publisher
    /// last looked ([`take_pressure`](Self::take_pressure)).
    pressure: AtomicBool,
}

impl ChannelManager {
    /// An empty manager whose match cache holds `cache_capacity` channels.
    pub(crate) fn new(cache_capacity: usize) -> Self {
        ChannelManager {
            index: SubscriptionIndex::new(cache_capacity),
            event_ids: EventIds::new(),
            stats: FanoutStats::default(),
            forwarder: OnceLock::new(),
            interest: Mutex::new(HashMap::new()),
            namespaces: Namespaces::none(),
            states: ChannelStates::default(),
            upstream: OnceLock::new(),
            pacer: Arc::new(Pacer::new(Duration::ZERO)),
            pressure: AtomicBool::new(false),
        }
    }

    /// Whether a delivery found a connection's queue half full since the
    /// last call: its writer falls behind whoever publishes, and a
    /// publisher handling a backlog of frames without a pause should let
    /// it run before the queue fills (see `session`).
    pub(crate) fn take_pressure(&self) -> bool {
        // A load first: the common answer costs no write.
        self.pressure.load(Ordering::Relaxed) && self.pressure.swap(false, Ordering::Relaxed)
    }

    /// Wakes connections through `pacer` (`websocket.coalesce_interval`);
    /// without it, every event wakes its connection at once.
    pub(crate) fn with_pacer(mut self, pacer: Arc<Pacer>) -> Self {
        self.pacer = pacer;
        self
    }

    /// Write coalescing under overload.
    pub(crate) fn pacer(&self) -> &Arc<Pacer> {
        &self.pacer
    }

    /// Hands publishes, interest and memberships to a shared engine (once,
    /// when the hub is built).
    pub(crate) fn set_upstream(&self, upstream: Arc<dyn Upstream>) {
        let _ = self.upstream.set(upstream);
    }

    /// The shared engine, if any.
    pub(super) fn upstream(&self) -> Option<&Arc<dyn Upstream>> {
        self.upstream.get()
    }

    /// Connects the federation (once, when the hub is built).
    pub(crate) fn set_forwarder(&self, forwarder: Arc<dyn Forwarder>) {
        let _ = self.forwarder.set(forwarder);
    }

    fn forwarder(&self) -> Option<&Arc<dyn Forwarder>> {
        self.forwarder.get()
    }

    /// The distinct patterns local connections are subscribed to.
    pub(crate) fn local_patterns(&self) -> Vec<Pattern> {
        let interest = self.interest.lock().unwrap_or_else(|p| p.into_inner());
        interest.keys().cloned().collect()
    }

    /// Counts a subscription to `pattern` in or out; tells the federation
    /// when a pattern appears or disappears.
    fn count_interest(&self, pattern: &Pattern, added: bool) {
        let changed = {
            let mut interest = self.interest.lock().unwrap_or_else(|p| p.into_inner());
            if added {
                let count = interest.entry(pattern.clone()).or_insert(0);
                *count += 1;
                *count == 1
            } else {
                match interest.get_mut(pattern) {
                    Some(count) if *count > 1 => {
                        *count -= 1;
                        false
                    }
                    Some(_) => {
                        interest.remove(pattern);
                        true
                    }
                    None => false,
                }
            }
        };
        if changed {
            if let Some(upstream) = self.upstream() {
                upstream.interest_changed(pattern, added);
            }
            if let Some(forwarder) = self.forwarder() {
                forwarder.interest_changed();
            }
        }
    }

    /// Adds a subscription; false if the connection already had this pattern.
    pub(crate) fn subscribe(&self, pattern: &Pattern, subscriber: &Arc<Subscriber>) -> bool {
        let added = self
            .index
            .insert(pattern, subscriber.id, Arc::clone(subscriber));
        if added {
            self.count_interest(pattern, true);
        }
        added
    }

    /// Removes a subscription; false if it was not held.
    pub(crate) fn unsubscribe(&self, pattern: &Pattern, subscriber_id: u64) -> bool {
        let removed = self.index.remove(pattern, subscriber_id);
        if removed {
            self.count_interest(pattern, false);
        }
        removed
    }

    /// Number of subscriptions across all connections.
    pub(crate) fn subscription_count(&self) -> usize {
        self.index.len()
    }

    /// Every subscribed pattern with its number of subscribers, for the
    /// dashboard and `/api/stats` (walks the index; not for hot paths).
    pub(crate) fn pattern_counts(&self) -> Vec<(String, usize)> {
        self.index.pattern_counts()
    }

    /// Applies the configured namespaces (history, presence, ...).
    pub(crate) fn with_namespaces(mut self, namespaces: Namespaces) -> Self {
        self.namespaces = namespaces;
        self
    }

    /// The configured namespaces.
    pub(crate) fn namespaces(&self) -> &Namespaces {
        &self.namespaces
    }

    /// A fresh event id.
    pub(crate) fn next_event_id(&self) -> String {
        self.event_ids.next_id()
    }

    /// The connections subscribed to `channel`.
    pub(crate) fn matching(&self, channel: &ChannelName) -> Arc<[Arc<Subscriber>]> {
        self.index.matches(channel)
    }

    /// Builds an event for `data` on `channel` (permissions already checked)
    /// and publishes it; returns the event and how many of this node's
    /// connections it was queued for (0 with a shared engine, which
    /// delivers it when it comes back). On a history channel the event is
    /// numbered and kept.
    pub(crate) fn publish_data(&self, channel: ChannelName, data: Value) -> (Arc<Event>, usize) {
        self.publish_new(channel, data, now_ms(), None)
    }

    /// Builds and publishes an event a federation link delivered: the same
    /// path as a local publish (history included), and it goes on to the
    /// other links that want it (never back where it came from).
    pub(crate) fn publish_forwarded(
        &self,
        channel: ChannelName,
        data: Value,
        ts: u64,
        origin: Origin,
    ) -> (Arc<Event>, usize) {
        self.publish_new(channel, data, ts, Some(&origin))
    }

    /// The one publish path, whatever the event's origin: to the shared
    /// engine if there is one, else numbered and kept (history channels)
    /// and queued here.
    fn publish_new(
        &self,
        channel: ChannelName,
        data: Value,
        ts: u64,
        origin: Option<&Origin>,
    ) -> (Arc<Event>, usize) {
        // Channels without history pay one cached lookup here (nothing when
        // no namespace is configured) and take no lock of their own.
        let history = self
            .namespaces
            .resolve(&channel)
            .filter(|ns| ns.history.is_some());
        if let Some(upstream) = self.upstream() {
            let event = self.new_event(channel, data, ts);
            self.published(&event, origin);
            upstream.publish(&event, history.and_then(|ns| ns.history));
            return (event, 0);
        }
        if let Some(namespace) = history {
            return self.publish_with_history(&namespace, channel, data, ts, origin);
        }
        let event = self.new_event(channel, data, ts);
        self.published(&event, origin);
        let delivered = self.deliver(&event);
        (event, delivered)
    }

    /// A fresh event for `data` on `channel` at `ts`, not yet published
    /// (every publish path builds its event here).
    pub(crate) fn new_event(&self, channel: ChannelName, data: Value, ts: u64) -> Arc<Event> {
        Arc::new(Event::new(channel, data, self.event_ids.next_id(), ts))
    }

    /// Counts a publish and hands it to the federation; `origin` is set for
    /// events from another hub.
    pub(crate) fn published(&self, event: &Arc<Event>, origin: Option<&Origin>) {
        self.stats.published.fetch_add(1, Ordering::Relaxed);
        if let Some(forwarder) = self.forwarder() {
            forwarder.forward(event, origin);
        }
    }

    /// The history limits of `channel`'s namespace, if it keeps history.
    pub(crate) fn history_limits(
        &self,
        channel: &ChannelName,
    ) -> Option<super::namespace::HistoryLimits> {
        self.namespaces.resolve(channel).and_then(|ns| ns.history)
    }

    /// Queues `event` for this node's matching subscribers, once per
    /// subscriber: the one way into the connections' queues for an event,
    /// whether published here, by a peer hub, or brought back by the shared
    /// engine. Never waits: a subscriber whose queue is full is kicked as a
    /// slow consumer. Returns the number of subscribers it was queued for.
    pub(crate) fn deliver(&self, event: &Arc<Event>) -> usize {
        let subscribers = self.index.matches(&event.channel);
        let mut delivered = 0;
        let mut pressed = false;
        self.pacer.delivering();
        let holding = self.pacer.holding();
        for sub in subscribers.iter() {
            let out = Outbound::Event(Arc::clone(event));
            let pushed = if holding {
                sub.queue.push_parked(out, |waker| self.pacer.park(waker))
            } else {
                sub.queue.push(out)
            };
            match pushed {
                Ok(half_full) => {
                    delivered += 1;
                    pressed |= half_full;
                }
                Err(PushError::Full(_)) => {
                    if !sub.is_kicked() {
                        self.stats.slow_consumers.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(
                            client_id = sub.id,
                            channel = %event.channel,
                            "slow consumer: outbound queue full, disconnecting"
                        );
                        sub.kick(CloseReason::SlowConsumer);
                    }
                }
                // The session is gone and will drop its subscriptions.
                Err(PushError::Closed(_)) => {}
            }
        }
        self.stats
            .delivered
            .fetch_add(delivered as u64, Ordering::Relaxed);
        if pressed && !self.pressure.load(Ordering::Relaxed) {
            self.pressure.store(true, Ordering::Relaxed);
        }
        delivered
    }
}

/// The subscriptions of one connection; dropping it removes them all from
/// the index, so a connection that ends in any way leaves nothing behind.
pub(crate) struct SubscriptionSet {
    /// The index the subscriptions live in.
    pub(super) manager: Arc<ChannelManager>,
    /// This connection's queue.
    pub(super) subscriber: Arc<Subscriber>,
    /// Patterns held, in subscription order.
    pub(super) patterns: Vec<Pattern>,
    /// Who the connection is, for presence; `None`: it is never a member.
    pub(super) member: Option<PresenceInfo>,
    /// Namespace channels this connection is subscribed to by name (a
    /// member of), with their state.
    pub(super) memberships: Vec<Arc<ChannelEntry>>,
}

impl SubscriptionSet {
    /// An empty set for `subscriber`.
    pub(crate) fn new(manager: Arc<ChannelManager>, subscriber: Arc<Subscriber>) -> Self {
        SubscriptionSet {
            manager,
            subscriber,
            patterns: Vec::new(),
            member: None,
            memberships: Vec::new(),
        }
    }

    /// Makes the connection a member (presence, `join` / `leave`,
    /// `max_subscribers`) of the namespace channels it subscribes to by name.
    pub(crate) fn with_member(mut self, info: PresenceInfo) -> Self {
        self.member = Some(info);
        self
    }

    /// Number of patterns held.
    pub(crate) fn len(&self) -> usize {
        self.patterns.len()
    }

    /// Whether `pattern` is held.
    pub(crate) fn contains(&self, pattern: &Pattern) -> bool {
        self.patterns.iter().any(|p| p == pattern)
    }

    /// Whether a held pattern matches `channel`.
    pub(crate) fn matches(&self, channel: &ChannelName) -> bool {
        self.patterns.iter().any(|p| p.matches(channel))
    }

    /// Subscribes, without recovery; idempotent. False when refused (the
    /// channel has `max_subscribers` members); [`SubscriptionSet::subscribe`]
    /// says why.
    #[cfg(test)]
    pub(crate) fn add(&mut self, pattern: Pattern) -> bool {
        let outcome = self.subscribe(&[pattern], &Default::default());
        outcome.results.iter().all(Result::is_ok)
    }

    /// Unsubscribes; returns whether it was held. Leaving a channel the
    /// connection was a member of tells its `join_leave` subscribers.
    pub(crate) fn remove(&mut self, pattern: &Pattern) -> bool {
        let Some(pos) = self.patterns.iter().position(|p| p == pattern) else {
            return false;
        };
        self.patterns.swap_remove(pos);
        let removed = self.manager.unsubscribe(pattern, self.subscriber.id);
        if pattern.is_literal() {
            if let Some(i) = self
                .memberships
                .iter()
                .position(|e| e.channel.as_str() == pattern.as_str())
            {
                let entry = self.memberships.swap_remove(i);
                self.leave(&entry);
            }
        }
        removed
    }
}

impl Drop for SubscriptionSet {
    fn drop(&mut self) {
        for pattern in &self.patterns {
            self.manager.unsubscribe(pattern, self.subscriber.id);
        }
        for entry in std::mem::take(&mut self.memberships) {
            self.leave(&entry);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn direct(n: usize) -> Utf8Bytes {
        Utf8Bytes::from(n.to_string())
    }

    fn text(out: Outbound) -> String {
        match out {
            Outbound::Direct(text) => text.as_str().to_owned(),
            Outbound::Event(event) => panic!("unexpected event {}", event.id),
        }
    }

    #[test]
    fn an_inbox_batch_keeps_order_and_leaves_the_rest_for_next_time() {
        let (subscriber, mut inbox) = Subscriber::new(1, 4096);
        for n in 0..1000 {
            assert!(subscriber.send_direct(direct(n)));
        }
        let mut batch = inbox.take(300);
        let first: Vec<String> = batch.by_ref().take(10).map(text).collect();
        assert_eq!(first, (0..10).map(|n| n.to_string()).collect::<Vec<_>>());
        drop(batch);
        // The 290 not taken come first, then the queue, 300 at most.
        let next: Vec<String> = inbox.take(300).map(text).collect();
        assert_eq!(next, (10..310).map(|n| n.to_string()).collect::<Vec<_>>());
        let rest: Vec<String> = inbox.take(usize::MAX).map(text).collect();
        assert_eq!(rest, (310..1000).map(|n| n.to_string()).collect::<Vec<_>>());
        // The burst's buffer is given back once the batch is written.
        assert!(inbox.batch.capacity() <= KEEP_SLOTS);
        assert!(inbox.try_recv().is_none());
    }
}
