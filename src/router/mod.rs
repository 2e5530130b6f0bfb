//! The router: this node's subscriptions and the fan-out path, built on the
//! channel grammar and index of [`crate::channels`].
//!
//! - [`manager`] — who is subscribed to what, and the one way into the
//!   connections' bounded queues for an event (whatever its origin: a local
//!   publish, a peer hub, the shared engine).
//! - [`upstream`] — the interfaces the router hands events on through (a
//!   shared engine, links to peer hubs), implemented by the modules above it,
//!   so callbacks point one way.
//! - [`reserved`] — the channels only the hub publishes on.
//! - [`namespace`] — the per-channel options of `[[namespaces]]` (history,
//!   presence, who may publish).
//! - `state`, `history`, `subscribe` — the memory engine's per-channel
//!   history and members, and subscribing with recovery under the
//!   per-channel locks (the ordering argument is in `state.rs`).
//! - `queue` — a connection's bounded outbound queue.

pub(crate) mod manager;
pub(crate) mod namespace;
pub(crate) mod reserved;
pub(crate) mod upstream;

pub(crate) mod history;
mod queue;
mod state;
mod subscribe;

pub(crate) use state::HistoryPage;
pub(crate) use state::membership_frame;
pub(crate) use subscribe::SubscribeOutcome;
