//! Catching up after the pub/sub connection was down.
//!
//! While a node is not subscribed in Redis — its pub/sub connection
//! dropped, Redis restarted, the node was cut off from it — what other
//! nodes publish never reaches it, and its own connections stay open. A
//! client that reconnects recovers by offset by itself; one that stayed
//! connected cannot know it missed anything. So the node remembers the
//! position of the last event it delivered of each history channel its
//! connections receive, and once it has subscribed again (so that every
//! event published from then on arrives live) it reads what followed from
//! each channel's stream and delivers it, before anything that arrives
//! live; a live copy of an event it caught up on is dropped by its offset.
//!
//! What it cannot catch up on: channels without history (no stream to
//! read: their events published meanwhile are lost, as for any outage), a
//! history channel it never delivered an event of before the outage (a
//! pattern subscriber's first event of a new channel), and events no
//! longer kept (beyond `history_size`, older than `history_ttl`, or lost
//! with Redis's data). In that last case it delivers the oldest kept
//! events, so subscribers see the offsets jump (or a new epoch start), and
//! logs a warning naming the channels.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use super::RedisEngine;
use crate::channels::ChannelName;
use crate::error::RequestError;
use crate::protocol::Event;
use crate::protocol::history::StreamPosition;
use crate::router::manager::ChannelManager;

/// Most channels remembered; beyond it the quieter half is forgotten (a
/// node whose connections receive more history channels than this may
/// miss events of the quiet ones across an outage).
const MAX_CHANNELS: usize = 65_536;

/// Catch-ups in a row that may fail (Redis answered the subscriptions,
/// then not a read) before the node forgets its positions and turns ready
/// without them: a stream that cannot be read at all must not keep the
/// node unready for good.
const MAX_FAILURES: u32 = 3;

/// How often channels none of the node's connections receive any more are
/// forgotten.
pub(super) const PRUNE_EVERY: Duration = Duration::from_secs(10);

/// The last position this node delivered of each history channel its
/// connections receive. Owned by the pub/sub task: no lock.
#[derive(Default)]
pub(super) struct Delivered {
    last: HashMap<ChannelName, Last>,
    /// Counts deliveries, to tell quiet channels from busy ones.
    clock: u64,
    /// Catch-ups that failed in a row.
    failures: u32,
}

/// One channel's last delivered position.
struct Last {
    epoch: Arc<str>,
    offset: u64,
    /// [`Delivered::clock`] when it was delivered.
    at: u64,
}

impl Delivered {
    /// False when `event` is at or before the last delivered position of
    /// its channel, in the same epoch: a live copy of an event caught up on.
    pub(super) fn is_new(&self, event: &Event) -> bool {
        let Some(position) = &event.position else {
            return true;
        };
        let Some(last) = self.last.get(&event.channel) else {
            return true;
        };
        last.epoch != position.epoch || position.offset > last.offset
    }

    /// Records `event` as delivered; a channel not remembered yet is
    /// remembered only if the event reached one of this node's connections.
    pub(super) fn record(&mut self, event: &Event, reached: bool) {
        let Some(position) = &event.position else {
            return;
        };
        self.clock += 1;
        if let Some(last) = self.last.get_mut(&event.channel) {
            last.epoch = Arc::clone(&position.epoch);
            last.offset = position.offset;
            last.at = self.clock;
            return;
        }
        if !reached {
            return;
        }
        self.last.insert(
            event.channel.clone(),
            Last {
                epoch: Arc::clone(&position.epoch),
                offset: position.offset,
                at: self.clock,
            },
        );
        if self.last.len() > MAX_CHANNELS {
            self.shed();
        }
    }

    /// Sets a channel's position after catching up on it.
    fn set(&mut self, channel: &ChannelName, position: &StreamPosition) {
        self.clock += 1;
        let last = Last {
            epoch: Arc::from(position.epoch.as_str()),
            offset: position.offset,
            at: self.clock,
        };
        self.last.insert(channel.clone(), last);
    }

    /// Forgets the channels none of this node's connections receive.
    pub(super) fn prune(&mut self, channels: &ChannelManager) {
        self.last
            .retain(|channel, _| !channels.matching(channel).is_empty());
    }

    /// Forgets the quieter half.
    fn shed(&mut self) {
        let mut ats: Vec<u64> = self.last.values().map(|l| l.at).collect();
        ats.sort_unstable();
        let median = ats[ats.len() / 2];
        self.last.retain(|_, last| last.at >= median);
    }
}

impl RedisEngine {
    /// Delivers what each remembered history channel missed (see the
    /// module docs). Called on a fresh pub/sub connection once every
    /// subscription is confirmed, before its messages are read; an error
    /// (Redis went away again) leaves the rest for the next connection,
    /// up to [`MAX_FAILURES`] in a row.
    pub(super) async fn catch_up(
        &self,
        channels: &ChannelManager,
        delivered: &mut Delivered,
    ) -> Result<(), RequestError> {
        match self.catch_up_channels(channels, delivered).await {
            Ok(()) => {
                delivered.failures = 0;
                Ok(())
            }
            Err(err) if delivered.failures + 1 < MAX_FAILURES => {
                delivered.failures += 1;
                Err(err)
            }
            Err(err) => {
                tracing::warn!(error = %err, channels = delivered.last.len(),
                    "could not read what the history channels missed; giving up on it");
                delivered.last.clear();
                delivered.failures = 0;
                Ok(())
            }
        }
    }

    async fn catch_up_channels(
        &self,
        channels: &ChannelManager,
        delivered: &mut Delivered,
    ) -> Result<(), RequestError> {
        delivered.prune(channels);
        let remembered: Vec<(ChannelName, StreamPosition)> = delivered
            .last
            .iter()
            .map(|(channel, last)| {
                let position = StreamPosition {
                    offset: last.offset,
                    epoch: last.epoch.to_string(),
                };
                (channel.clone(), position)
            })
            .collect();
        let (mut caught_up, mut lost) = (0, Vec::new());
        for (channel, since) in remembered {
            let Some(limits) = channels.history_limits(&channel) else {
                continue;
            };
            let page = self.history(&channel, limits, Some(&since), None).await?;
            if page.recovered != Some(true) {
                lost.push(channel.to_string());
            }
            for event in page.events {
                if delivered.is_new(&event) {
                    channels.deliver(&event);
                    delivered.record(&event, true);
                    caught_up += 1;
                }
            }
            // Live events at or before the read are in it.
            delivered.set(&channel, &page.position);
        }
        if caught_up > 0 {
            tracing::info!(
                events = caught_up,
                "delivered the events published while the pub/sub connection was down"
            );
        }
        if !lost.is_empty() {
            tracing::warn!(
                channels = ?lost,
                "events published while the pub/sub connection was down are no longer kept: \
                 subscribers of these channels missed some"
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::channels::NameLimits;
    use crate::protocol::Position;
    use tokio_tungstenite::tungstenite::Utf8Bytes;

    fn event(channel: &str, epoch: &str, offset: u64) -> Event {
        let channel = ChannelName::parse(channel, &NameLimits::UNBOUNDED).expect("name");
        let position = Position {
            offset,
            epoch: Arc::from(epoch),
        };
        Event::from_frame(
            channel,
            serde_json::Value::Null,
            "id".into(),
            0,
            Some(position),
            Utf8Bytes::from_static("{}"),
        )
    }

    #[test]
    fn an_event_at_or_before_the_last_delivered_offset_is_a_copy() {
        let mut delivered = Delivered::default();
        delivered.record(&event("a:1", "e1", 5), true);
        assert!(!delivered.is_new(&event("a:1", "e1", 4)));
        assert!(!delivered.is_new(&event("a:1", "e1", 5)));
        assert!(delivered.is_new(&event("a:1", "e1", 6)));
        // Another epoch starts over; another channel is unrelated.
        assert!(delivered.is_new(&event("a:1", "e2", 1)));
        assert!(delivered.is_new(&event("a:2", "e1", 1)));
    }

    #[test]
    fn a_channel_is_remembered_once_an_event_of_it_reached_a_connection() {
        let mut delivered = Delivered::default();
        delivered.record(&event("a:1", "e1", 5), false);
        assert!(delivered.is_new(&event("a:1", "e1", 5)));
        delivered.record(&event("a:1", "e1", 5), true);
        // Remembered: followed even by events that reached nobody.
        delivered.record(&event("a:1", "e1", 6), false);
        assert!(!delivered.is_new(&event("a:1", "e1", 6)));
    }

    #[test]
    fn too_many_channels_forget_the_quieter_half() {
        let mut delivered = Delivered::default();
        for n in 0..=MAX_CHANNELS {
            delivered.record(&event(&format!("a:{n}"), "e", 1), true);
        }
        assert!(delivered.last.len() <= MAX_CHANNELS / 2 + 1);
        // The busiest (latest) is kept.
        assert!(!delivered.is_new(&event(&format!("a:{MAX_CHANNELS}"), "e", 1)));
    }
}
