//! The event path: the hook the channel manager calls on every publish
//! (match the channel against what each link's peer wants, check the
//! export list, serialize one `hub:event` and queue it on each link), and
//! receiving an event from a link (origin, hop limit, import list,
//! duplicate filter, then the normal fan-out).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use serde_json::Value;
use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use super::link::{self, Link};
use super::{Federation, Forwarder, Origin, lock};
use crate::channels::{ChannelName, SubscriptionIndex};
use crate::protocol::Event;

/// What the channel manager holds: the part of the federation the
/// publish path needs, and nothing that holds the manager (no cycle).
pub(crate) struct Hook {
    /// This hub's id, the origin of events published here.
    pub(super) hub_id: String,
    /// `federation.max_hops`.
    pub(super) max_hops: u32,
    /// Pattern → links whose peer wants it (after our export list).
    pub(super) index: SubscriptionIndex<Arc<Link>>,
    /// Links up; zero skips the lookup entirely.
    pub(super) links_up: AtomicUsize,
    /// Wakes the interest debouncer.
    pub(super) local_dirty: Arc<Notify>,
}

impl Federation {
    /// An event arrived over `link`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn receive_event(
        &self,
        link: &Arc<Link>,
        origin: String,
        msg_id: String,
        hops: u32,
        channel: &str,
        data: Value,
        ts: u64,
    ) {
        let counters = &link.counters;
        if origin == self.hub_id || hops > self.config.max_hops {
            counters.dropped_duplicate.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let Ok(channel) = ChannelName::parse(channel, &self.limits) else {
            counters.dropped_import.fetch_add(1, Ordering::Relaxed);
            return;
        };
        if !link.peer.imports(&channel) {
            counters.dropped_import.fetch_add(1, Ordering::Relaxed);
            return;
        }
        if !lock(&self.dedup).first_time(&origin, &msg_id) {
            counters.dropped_duplicate.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let origin = Origin {
            hub: origin,
            msg_id,
            hops,
            link: link.id,
        };
        self.channels.publish_forwarded(channel, data, ts, origin);
        // Counted once handed on, so sent and received counts across the
        // network only balance when nothing is in flight.
        counters.events_in.fetch_add(1, Ordering::Relaxed);
    }
}

impl Forwarder for Hook {
    fn forward(&self, event: &Arc<Event>, origin: Option<&Origin>) {
        if self.links_up.load(Ordering::Relaxed) == 0 {
            return;
        }
        let links = self.index.matches(&event.channel);
        if links.is_empty() {
            return;
        }
        let (origin_hub, msg_id, hops, arrived_on) = match origin {
            Some(o) => (o.hub.as_str(), o.msg_id.as_str(), o.hops + 1, Some(o.link)),
            None => (self.hub_id.as_str(), event.id.as_str(), 1, None),
        };
        if hops > self.max_hops {
            return;
        }
        // Serialized once, for every link that takes it.
        let mut frame: Option<Utf8Bytes> = None;
        for link in links.iter() {
            if arrived_on == Some(link.id) || link.hello.hub_id == origin_hub {
                continue;
            }
            if !link.peer.exports(&event.channel) {
                continue;
            }
            let frame = frame.get_or_insert_with(|| {
                Utf8Bytes::from(link::event_frame(origin_hub, msg_id, hops, event))
            });
            if frame.len() > link.hello.max_frame_bytes {
                link.counters
                    .dropped_oversize
                    .fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    peer = %link.peer.config.name,
                    channel = %event.channel,
                    bytes = frame.len(),
                    "event too large for the peer's frame limit; not forwarded"
                );
                continue;
            }
            if link.send(frame.clone()) {
                link.counters.events_out.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    fn interest_changed(&self) {
        self.local_dirty.notify_one();
    }
}
