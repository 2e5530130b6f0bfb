//! The fan-out path: who is subscribed to what, and handing a published event
//! to every matching subscriber without ever waiting for one.
//!
//! A publish looks up the matching subscribers in the [`SubscriptionIndex`]
//! (a trie with a match cache), then `try_send`s one `Arc<Event>` into each
//! subscriber's bounded queue. Nothing is serialized or allocated per
//! subscriber beyond the refcount. A full queue means the subscriber cannot
//! keep up: it is marked as a slow consumer and its session closes it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use axum::extract::ws::Utf8Bytes;
use serde_json::Value;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{ChannelName, Pattern, SubscriptionIndex};
use crate::error::CloseReason;
use crate::protocol::{Event, EventIds, now_ms};

/// What a connection's queue carries.
#[derive(Debug)]
pub enum Outbound {
    /// A published event, shared by every subscriber.
    Event(Arc<Event>),
    /// A message for this connection only (`task:assign`, `task:result`, …),
    /// already serialized.
    Direct(Utf8Bytes),
}

/// The hub's side of one connection's event queue.
#[derive(Debug)]
pub struct Subscriber {
    /// Connection id; the index deduplicates matches by it so overlapping
    /// patterns deliver an event once per connection.
    pub id: u64,
    /// Bounded queue into the connection's session.
    tx: mpsc::Sender<Outbound>,
    /// Cancelled when the hub wants this connection gone (slow consumer);
    /// the session selects on it.
    kicked: CancellationToken,
    /// Why it was kicked; set once, before `kicked` is cancelled.
    reason: OnceLock<CloseReason>,
}

impl Subscriber {
    /// A subscriber and the receiving end of its queue.
    pub fn new(id: u64, queue: usize) -> (Arc<Subscriber>, mpsc::Receiver<Outbound>) {
        let (tx, rx) = mpsc::channel(queue.max(1));
        let sub = Subscriber {
            id,
            tx,
            kicked: CancellationToken::new(),
            reason: OnceLock::new(),
        };
        (Arc::new(sub), rx)
    }

    /// Queues a message for this connection alone. Like events, it never
    /// waits: a full queue marks the connection a slow consumer.
    pub fn send_direct(&self, frame: Utf8Bytes) -> bool {
        match self.tx.try_send(Outbound::Direct(frame)) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                tracing::warn!(
                    client_id = self.id,
                    "slow consumer: outbound queue full, disconnecting"
                );
                self.kick(CloseReason::SlowConsumer);
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }

    /// Asks the session to close the connection for `reason`. The first
    /// reason wins.
    pub fn kick(&self, reason: CloseReason) {
        if self.reason.set(reason).is_ok() {
            self.kicked.cancel();
        }
    }

    /// Resolves once the connection has been kicked.
    pub async fn kicked(&self) -> CloseReason {
        self.kicked.cancelled().await;
        self.reason.get().copied().unwrap_or(CloseReason::Normal)
    }

    /// Whether the connection has been kicked.
    pub fn is_kicked(&self) -> bool {
        self.kicked.is_cancelled()
    }
}

/// Counters of the fan-out path.
#[derive(Debug, Default)]
pub struct FanoutStats {
    /// Events published.
    pub published: AtomicU64,
    /// Event deliveries queued (one per subscriber per event).
    pub delivered: AtomicU64,
    /// Subscribers disconnected because their queue was full.
    pub slow_consumers: AtomicU64,
}

/// The subscription index plus the publish operation.
pub struct ChannelManager {
    /// Pattern → subscribers.
    index: SubscriptionIndex<Arc<Subscriber>>,
    /// Event id generator.
    event_ids: EventIds,
    /// Counters, read by logs and (later) metrics.
    pub stats: FanoutStats,
}

impl ChannelManager {
    /// An empty manager whose match cache holds `cache_capacity` channels.
    pub fn new(cache_capacity: usize) -> Self {
        ChannelManager {
            index: SubscriptionIndex::new(cache_capacity),
            event_ids: EventIds::new(),
            stats: FanoutStats::default(),
        }
    }

    /// Adds a subscription; false if the connection already had this pattern.
    pub fn subscribe(&self, pattern: &Pattern, subscriber: &Arc<Subscriber>) -> bool {
        self.index
            .insert(pattern, subscriber.id, Arc::clone(subscriber))
    }

    /// Removes a subscription; false if it was not held.
    pub fn unsubscribe(&self, pattern: &Pattern, subscriber_id: u64) -> bool {
        self.index.remove(pattern, subscriber_id)
    }

    /// Number of subscriptions across all connections.
    pub fn subscription_count(&self) -> usize {
        self.index.len()
    }

    /// Builds an event for `data` on `channel` (permissions already checked)
    /// and publishes it; returns the event and how many connections it was
    /// queued for.
    pub fn publish_data(&self, channel: ChannelName, data: Value) -> (Arc<Event>, usize) {
        let event = Arc::new(Event::new(
            channel,
            data,
            self.event_ids.next_id(),
            now_ms(),
        ));
        let delivered = self.publish(Arc::clone(&event));
        (event, delivered)
    }

    /// Queues `event` for every subscriber whose patterns match its channel,
    /// once per subscriber. Never waits: a subscriber whose queue is full is
    /// kicked as a slow consumer. Returns the number of subscribers it was
    /// queued for.
    pub fn publish(&self, event: Arc<Event>) -> usize {
        self.stats.published.fetch_add(1, Ordering::Relaxed);
        let subscribers = self.index.matches(&event.channel);
        let mut delivered = 0;
        for sub in subscribers.iter() {
            match sub.tx.try_send(Outbound::Event(Arc::clone(&event))) {
                Ok(()) => delivered += 1,
                Err(mpsc::error::TrySendError::Full(_)) => {
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
                Err(mpsc::error::TrySendError::Closed(_)) => {}
            }
        }
        self.stats
            .delivered
            .fetch_add(delivered as u64, Ordering::Relaxed);
        delivered
    }
}

/// The subscriptions of one connection; dropping it removes them all from
/// the index, so a connection that ends in any way leaves nothing behind.
pub struct SubscriptionSet {
    /// The index the subscriptions live in.
    manager: Arc<ChannelManager>,
    /// This connection's queue.
    subscriber: Arc<Subscriber>,
    /// Patterns held, in subscription order.
    patterns: Vec<Pattern>,
}

impl SubscriptionSet {
    /// An empty set for `subscriber`.
    pub fn new(manager: Arc<ChannelManager>, subscriber: Arc<Subscriber>) -> Self {
        SubscriptionSet {
            manager,
            subscriber,
            patterns: Vec::new(),
        }
    }

    /// Number of patterns held.
    pub fn len(&self) -> usize {
        self.patterns.len()
    }

    /// Whether no pattern is held.
    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }

    /// Whether `pattern` is held.
    pub fn contains(&self, pattern: &Pattern) -> bool {
        self.patterns.iter().any(|p| p == pattern)
    }

    /// Subscribes; idempotent.
    pub fn add(&mut self, pattern: Pattern) {
        if self.manager.subscribe(&pattern, &self.subscriber) {
            self.patterns.push(pattern);
        }
    }

    /// Unsubscribes; returns whether it was held.
    pub fn remove(&mut self, pattern: &Pattern) -> bool {
        let Some(pos) = self.patterns.iter().position(|p| p == pattern) else {
            return false;
        };
        self.patterns.swap_remove(pos);
        self.manager.unsubscribe(pattern, self.subscriber.id)
    }
}

impl Drop for SubscriptionSet {
    fn drop(&mut self) {
        for pattern in &self.patterns {
            self.manager.unsubscribe(pattern, self.subscriber.id);
        }
    }
}
