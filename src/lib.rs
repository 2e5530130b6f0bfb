//! chanhub: a pub/sub channel hub. Browsers, workers and hubs connect over
//! WebSocket, authenticate with a JWT naming their client type, subscribe to
//! channels by wildcard pattern and publish events; operators read the same
//! events as Server-Sent Events with `curl -N`.
//!
//! # Layout
//!
//! - [`server`] — the router and `run(listener, config, shutdown)`, which
//!   tests and embedders call with a listener on `127.0.0.1:0`.
//! - [`hub`] — the shared state behind a cheap-`Clone` handle.
//! - [`session`] (private) — one WebSocket connection's loop.
//! - `transport` (private) — `/ws`, `/api/stream` (SSE), `/api/publish`, health.
//! - `writer` (private) — the one writer of WebSocket and SSE:
//!   batched takes from a connection's queue, the skip filter, counting.
//! - [`protocol`] — the wire messages; the single source of truth for
//!   `proto-docs/`.
//! - [`channels`] — channel names, patterns, the subscription trie and the
//!   fan-out path (`channels/manager.rs`, the one way into the
//!   connections' queues); namespaces, per-channel history (offsets,
//!   epochs, recovery) and presence of the memory engine; the interfaces
//!   the router hands events on through (`channels/upstream.rs`:
//!   `Upstream` for a shared engine, `Forwarder` for peer hubs).
//! - [`auth`] — JWT verification, client types, permissions.
//! - [`config`] — the configuration tree, defaults, env overrides, validation.
//! - [`error`] — error enums and their HTTP status / close-code mapping.
//! - [`tasks`] — task routing behind one value, [`tasks::Tasks`]
//!   (`tasks/handle.rs`: local | cluster): the local dispatcher, leases,
//!   durable store; the cluster node's side (`tasks/cluster.rs`); the
//!   lifecycle vocabulary both publish (`tasks/events.rs`) and the retry
//!   rules both apply (`tasks/retry.rs`).
//! - [`client`] — a Rust client with reconnect and resubscribe.
//! - [`pacing`] — write coalescing under overload.
//! - [`metrics`] — counters and the state read for `/metrics` (OpenMetrics
//!   text) and `/api/stats` (JSON for the dashboard).
//! - `web` (files under `src/web/`, served by `transport/web.rs`) — the
//!   browser client `chanhub.js` and the dashboard at `/`.
//! - [`engine`] — where cross-node state lives, behind one value,
//!   [`engine::Engine`] (`engine/mod.rs`, the only place that matches on
//!   memory | redis): confirmed publishes, subscribing with recovery,
//!   history, presence, readiness. The Redis engine is `engine/redis/`
//!   (its recovery argument in `engine/redis/recovery.rs`); node-to-node
//!   messages are typed in [`protocol::cluster`].
//! - [`federation`] — links to peer hubs: interest, event forwarding,
//!   task forwarding.

pub mod auth;
pub mod channels;
pub mod client;
pub mod config;
pub mod engine;
pub mod error;
pub mod federation;
pub mod hub;
pub mod limits;
pub mod logging;
pub mod metrics;
pub mod pacing;
pub mod protocol;
pub mod router;
pub mod server;
mod session;
pub mod tasks;
mod transport;
mod writer;

pub use config::Config;
pub use engine::Engine;
pub use hub::Hub;
pub use server::{ServerError, app, run, serve};

/// Entry points for the fuzz targets and property tests (`test-hooks`
/// feature only; not a supported API).
#[cfg(feature = "test-hooks")]
#[doc(hidden)]
pub mod fuzz_api;
