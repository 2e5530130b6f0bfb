//! Per-channel state of namespace channels: the history ring and the
//! members (connections subscribed by name), behind one short std lock per
//! channel.
//!
//! # Why one lock per channel, and what it orders
//!
//! A history channel's lock is held while an event is numbered, appended
//! *and* fanned out, and while a subscription with recovery is registered in
//! the index *and* the missed events are copied out. So for one channel, a
//! publish happens entirely before or entirely after a subscribe: an event
//! is either in the recovery snapshot (published before; the new subscriber
//! was not in the index yet, so it was not queued live) or queued live
//! (published after; it is not in the snapshot). No gap, no duplicate. It
//! also makes fan-out follow offset order. The lock is a `std` mutex because
//! nothing awaits while it is held; it is only taken for channels whose
//! namespace needs it, so channels without history never touch it.
//!
//! Lock order: channel entries (several in channel-name order) before the
//! subscription index's lock; the index lock is never held while an entry is
//! locked for the first time. The sweeper only `try_lock`s entries while it
//! holds a map shard, so it never waits inside the map.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, TryLockError};
use std::time::{Duration, Instant};

use dashmap::DashMap;
use serde_json::Value;
use tokio_tungstenite::tungstenite::Utf8Bytes;
use tokio_util::sync::CancellationToken;

use super::history::{History, Recovery};
use super::manager::ChannelManager;
use super::namespace::Namespace;
use super::upstream::Origin;
use crate::channels::ChannelName;
use crate::error::{ErrorCode, RequestError};
use crate::protocol::history::{PresenceInfo, StreamPosition};
use crate::protocol::{Event, ServerMessage};

/// The state of one namespace channel.
pub(crate) struct ChannelEntry {
    /// The channel.
    pub(crate) channel: ChannelName,
    /// Its namespace (resolved once, when the entry was made).
    pub(crate) namespace: Arc<Namespace>,
    /// History and members.
    state: Mutex<EntryState>,
}

/// What a channel's lock protects.
pub(crate) struct EntryState {
    /// `Some` when the namespace keeps history.
    pub(crate) history: Option<History>,
    /// Connections subscribed by name, by connection id (so in connection
    /// order): presence, `max_subscribers`, and what keeps the entry (and
    /// its epoch) alive while nobody publishes.
    pub(crate) members: BTreeMap<u64, PresenceInfo>,
    /// Last publish or creation, for the sweeper.
    touched: Instant,
    /// Removed from the map by the sweeper; whoever finds it dead looks the
    /// channel up again.
    pub(crate) dead: bool,
}

impl ChannelEntry {
    /// Locks the entry. A poisoned lock is recovered: every critical section
    /// leaves the state consistent before anything that could panic.
    pub(crate) fn lock(&self) -> MutexGuard<'_, EntryState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl EntryState {
    /// Restarts the idle clock: the sweeper keeps the entry (and its epoch)
    /// for at least the history TTL after this.
    pub(crate) fn touch(&mut self, now: Instant) {
        self.touched = now;
    }

    /// Whether the sweeper may drop it: nobody subscribed by name, no event
    /// kept, and quiet for the history TTL (so a client that was just told a
    /// position can still recover from it).
    fn is_idle(&mut self, now: Instant) -> bool {
        if !self.members.is_empty() {
            return false;
        }
        match &mut self.history {
            None => true,
            Some(history) => {
                history.trim(now);
                history.is_empty() && now.saturating_duration_since(self.touched) >= history.ttl()
            }
        }
    }
}

/// This node's members of one presence channel.
pub(crate) struct ChannelMembers {
    /// The channel.
    pub(crate) channel: ChannelName,
    /// Whether it sends `join` / `leave`.
    pub(crate) join_leave: bool,
    /// Members by connection id.
    pub(crate) members: Vec<(u64, PresenceInfo)>,
}

/// Every namespace channel with state.
#[derive(Default)]
pub(crate) struct ChannelStates {
    /// Channel → state.
    map: DashMap<ChannelName, Arc<ChannelEntry>>,
    /// Notified when an entry is made, so the sweeper can sleep while
    /// there is none.
    created: tokio::sync::Notify,
}

impl ChannelStates {
    /// The channel's entry, made if missing.
    pub(crate) fn get_or_create(
        &self,
        channel: &ChannelName,
        namespace: &Arc<Namespace>,
    ) -> Arc<ChannelEntry> {
        if let Some(entry) = self.map.get(channel) {
            return Arc::clone(&entry);
        }
        let entry = self.map.entry(channel.clone()).or_insert_with(|| {
            self.created.notify_one();
            Arc::new(ChannelEntry {
                channel: channel.clone(),
                namespace: Arc::clone(namespace),
                state: Mutex::new(EntryState {
                    history: namespace.history.map(History::new),
                    members: BTreeMap::new(),
                    touched: Instant::now(),
                    dead: false,
                }),
            })
        });
        Arc::clone(&entry)
    }

    /// The channel's entry, if it has one.
    pub(crate) fn get(&self, channel: &ChannelName) -> Option<Arc<ChannelEntry>> {
        self.map.get(channel).map(|e| Arc::clone(&e))
    }

    /// The members of every presence channel that has some.
    pub(crate) fn members(&self) -> Vec<ChannelMembers> {
        // Entries first, then their locks: no entry is locked inside the map.
        let entries: Vec<Arc<ChannelEntry>> = self
            .map
            .iter()
            .filter(|e| e.namespace.presence)
            .map(|e| Arc::clone(e.value()))
            .collect();
        entries
            .into_iter()
            .filter_map(|entry| {
                let state = entry.lock();
                if state.dead || state.members.is_empty() {
                    return None;
                }
                let members = state
                    .members
                    .iter()
                    .map(|(id, info)| (*id, info.clone()))
                    .collect();
                Some(ChannelMembers {
                    channel: entry.channel.clone(),
                    join_leave: entry.namespace.join_leave,
                    members,
                })
            })
            .collect()
    }

    /// Waits until an entry may exist (at once if one was made since the
    /// last wait); returns false at once if one does.
    pub(crate) async fn until_any(&self) -> bool {
        if !self.map.is_empty() {
            return false;
        }
        self.created.notified().await;
        true
    }

    /// Drops expired events and idle channels.
    pub(crate) fn sweep(&self, now: Instant) {
        self.map.retain(|_, entry| {
            let mut state = match entry.state.try_lock() {
                Ok(state) => state,
                Err(TryLockError::Poisoned(p)) => p.into_inner(),
                // Busy: in use right now, so not idle.
                Err(TryLockError::WouldBlock) => return true,
            };
            if state.is_idle(now) {
                state.dead = true;
                return false;
            }
            true
        });
    }
}

/// A page of a channel's history.
#[derive(Debug)]
pub(crate) struct HistoryPage {
    /// The channel's newest offset and epoch.
    pub position: StreamPosition,
    /// With `since`: whether `events` continue it without a gap.
    pub recovered: Option<bool>,
    /// Events, oldest first.
    pub events: Vec<Arc<Event>>,
}

impl ChannelManager {
    /// Runs `f` on the live entry of `channel`, made if missing.
    pub(crate) fn with_entry<R>(
        &self,
        channel: &ChannelName,
        namespace: &Arc<Namespace>,
        f: impl FnOnce(&ChannelEntry, &mut EntryState) -> R,
    ) -> R {
        loop {
            let entry = self.states.get_or_create(channel, namespace);
            let mut state = entry.lock();
            if state.dead {
                continue;
            }
            return f(&entry, &mut state);
        }
    }

    /// Publishes on a history channel: numbers the event, keeps it and fans
    /// it out, all under the channel's lock (see the module docs).
    pub(crate) fn publish_with_history(
        &self,
        namespace: &Arc<Namespace>,
        channel: ChannelName,
        data: Value,
        ts: u64,
        origin: Option<&Origin>,
    ) -> (Arc<Event>, usize) {
        let id = self.next_event_id();
        let key = channel.clone();
        self.with_entry(&key, namespace, |_, state| {
            let now = Instant::now();
            state.touched = now;
            let position = state.history.as_mut().map(|history| {
                history.trim(now);
                history.next_position()
            });
            let event = Arc::new(match position {
                Some(position) => Event::with_position(channel, data, id, ts, position),
                // Unreachable: entries of history namespaces have one.
                None => Event::new(channel, data, id, ts),
            });
            if let Some(history) = state.history.as_mut() {
                history.push(now, Arc::clone(&event));
            }
            self.published(&event, origin);
            let delivered = self.deliver(&event);
            (event, delivered)
        })
    }

    /// `frame` to every connection subscribed to `channel` (join / leave).
    pub(crate) fn send_to_subscribers(&self, channel: &ChannelName, frame: &Utf8Bytes) {
        self.send_to_subscribers_except(channel, frame, None);
    }

    /// `frame` to every connection subscribed to `channel` but `except`.
    pub(crate) fn send_to_subscribers_except(
        &self,
        channel: &ChannelName,
        frame: &Utf8Bytes,
        except: Option<u64>,
    ) {
        for sub in self.matching(channel).iter() {
            if Some(sub.id) != except {
                sub.send_direct(frame.clone());
            }
        }
    }

    /// The history of `channel` (a history namespace): with `since`, up to
    /// `limit` events after it; without, the newest `limit`.
    pub(crate) fn history(
        &self,
        channel: &ChannelName,
        since: Option<&StreamPosition>,
        limit: Option<usize>,
    ) -> Result<HistoryPage, RequestError> {
        let namespace = self
            .namespaces()
            .resolve(channel)
            .filter(|ns| ns.history.is_some())
            .ok_or_else(|| not_enabled("history", channel))?;
        let limit = limit.unwrap_or(usize::MAX);
        self.with_entry(channel, &namespace, |_, state| {
            let history = state
                .history
                .as_mut()
                .ok_or_else(|| not_enabled("history", channel))?;
            history.trim(Instant::now());
            let (recovered, events) = match since {
                None => (None, history.newest(limit)),
                Some(since) => match history.recover(since) {
                    Recovery::Continued(mut events) => {
                        events.truncate(limit);
                        (Some(true), events)
                    }
                    Recovery::Lost => (Some(false), history.after(0, limit)),
                },
            };
            Ok(HistoryPage {
                position: history.position(),
                recovered,
                events,
            })
        })
    }

    /// The connections subscribed to `channel` by name (a presence
    /// namespace), oldest connection first.
    pub(crate) fn presence(
        &self,
        channel: &ChannelName,
    ) -> Result<Vec<PresenceInfo>, RequestError> {
        self.namespaces()
            .resolve(channel)
            .filter(|ns| ns.presence)
            .ok_or_else(|| not_enabled("presence", channel))?;
        let Some(entry) = self.states.get(channel) else {
            return Ok(Vec::new());
        };
        let state = entry.lock();
        Ok(state.members.values().cloned().collect())
    }

    /// (connections, distinct subs) subscribed to `channel` by name.
    pub(crate) fn presence_stats(
        &self,
        channel: &ChannelName,
    ) -> Result<(usize, usize), RequestError> {
        self.namespaces()
            .resolve(channel)
            .filter(|ns| ns.presence)
            .ok_or_else(|| not_enabled("presence", channel))?;
        let Some(entry) = self.states.get(channel) else {
            return Ok((0, 0));
        };
        let state = entry.lock();
        let mut subs: Vec<&str> = state.members.values().map(|m| m.sub.as_str()).collect();
        subs.sort_unstable();
        subs.dedup();
        Ok((state.members.len(), subs.len()))
    }

    /// This node's members of every presence channel (see
    /// [`ChannelStates::members`]).
    pub(crate) fn local_members(&self) -> Vec<ChannelMembers> {
        self.states.members()
    }

    /// Drops expired events and idle channel states until `shutdown`; returns
    /// at once when no namespace keeps state, and sleeps while no channel
    /// has state.
    pub(crate) async fn run_sweeper(self: Arc<Self>, shutdown: CancellationToken) {
        let Some(period) = self.sweep_period() else {
            return;
        };
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => self.states.sweep(Instant::now()),
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                waited = self.states.until_any() => if waited {
                    tick.reset();
                },
            }
        }
    }

    /// Half the shortest history TTL, within 100 ms..10 s; `None` when no
    /// namespace keeps per-channel state.
    fn sweep_period(&self) -> Option<Duration> {
        let tracked: Vec<_> = self
            .namespaces()
            .iter()
            .filter(|ns| ns.tracks_channels())
            .collect();
        if tracked.is_empty() {
            return None;
        }
        let shortest = tracked
            .iter()
            .filter_map(|ns| ns.history.map(|h| h.ttl))
            .min()
            .unwrap_or(Duration::from_secs(20));
        Some((shortest / 2).clamp(Duration::from_millis(100), Duration::from_secs(10)))
    }
}

/// The `join` / `leave` frame for `info` on `channel`.
pub(crate) fn membership_frame(
    join: bool,
    channel: &ChannelName,
    info: &PresenceInfo,
) -> Utf8Bytes {
    let channel = channel.to_string();
    let info = info.clone();
    let msg = if join {
        ServerMessage::Join { channel, info }
    } else {
        ServerMessage::Leave { channel, info }
    };
    Utf8Bytes::from(msg.to_json())
}

fn not_enabled(feature: &str, channel: &ChannelName) -> RequestError {
    RequestError::new(
        ErrorCode::BadRequest,
        format!("{channel} has no {feature}: no namespace with {feature} matches it"),
    )
}
