//! The router's outward interfaces: what the fan-out path hands on beyond
//! this process's connections. The router owns these traits and the
//! modules above it implement them (centrifuge's `BrokerEventHandler`
//! idea, turned around for the outbound side), so `channels` imports
//! nothing from the engines or the federation, and callbacks point one way.
//!
//! - [`Upstream`] — a shared engine (Redis) that carries every publish,
//!   interest change and membership to every node, the publishing one
//!   included; the engine then hands events back through
//!   [`ChannelManager::deliver`](super::manager::ChannelManager::deliver).
//!   Unset when this process is the whole hub (the memory engine).
//! - [`Forwarder`] — links to peer hubs: every event published here or
//!   arriving from a peer, and every change of local interest.

use std::sync::Arc;

use tokio_tungstenite::tungstenite::Utf8Bytes;

use super::namespace::HistoryLimits;
use crate::channels::{ChannelName, Pattern};
use crate::protocol::Event;
use crate::protocol::history::PresenceInfo;

/// A shared engine between this node's router and the other nodes'.
///
/// Contract: [`publish`](Upstream::publish) numbers and keeps the event when
/// `history` is set and brings it back to every node whose connections want
/// it, in the order the engine saw it; nothing is delivered locally by the
/// router itself. Every method returns without waiting: what cannot be
/// carried now is the engine's to retry or to report as not ready.
pub(crate) trait Upstream: Send + Sync {
    /// Carries a publish to every node.
    fn publish(&self, event: &Arc<Event>, history: Option<HistoryLimits>);
    /// A pattern gained its first (`added`) or lost its last local subscriber.
    fn interest_changed(&self, pattern: &Pattern, added: bool);
    /// Connection `conn` became a member of presence channel `channel`.
    fn member_joined(&self, channel: &ChannelName, conn: u64, info: &PresenceInfo);
    /// Connection `conn` left presence channel `channel`.
    fn member_left(&self, channel: &ChannelName, conn: u64);
    /// Carries a `join` / `leave` frame to every node's subscribers of
    /// `channel`, in order with its events; false when it could not, and
    /// the router tells this node's subscribers itself.
    fn membership(&self, channel: &ChannelName, frame: &Utf8Bytes) -> bool;
}

/// Links to peer hubs, as the router sees them.
pub(crate) trait Forwarder: Send + Sync {
    /// An event was published here (`origin` is `None`) or delivered by a
    /// link: hand it to the links whose peers want it.
    fn forward(&self, event: &Arc<Event>, origin: Option<&Origin>);
    /// A pattern gained its first or lost its last local subscriber.
    fn interest_changed(&self);
}

/// The federation facts of an event another hub published.
#[derive(Debug, Clone)]
pub(crate) struct Origin {
    /// Id of the hub it was published on.
    pub hub: String,
    /// The origin's id for it; with `hub`, the duplicate-detection key.
    pub msg_id: String,
    /// Links it crossed to get here.
    pub hops: u32,
    /// The local link it arrived on; never sent back over it.
    pub link: u64,
}
