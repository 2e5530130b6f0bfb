//! Engines: where the hub's cross-connection state lives.
//!
//! - **memory** (the default): everything in this process, as the rest of
//!   the crate implements it. The fan-out path pays one `OnceLock` load per
//!   publish to learn that no cluster engine is set, nothing per subscriber.
//! - **redis** ([`RedisEngine`]): several nodes sharing one Redis act as one
//!   hub. Publishes go to Redis pub/sub and come back to every node whose
//!   connections want them (the publishing node included), so each node
//!   fans out in the order Redis saw the events; history channels are
//!   numbered and kept in Redis, so a client recovers by offset on any node.
//!
//! The engine is chosen once, when the hub is built ([`crate::Hub::new`]);
//! `Hub::cluster()` is `None` for memory.

pub mod config;
pub mod redis;

pub use self::redis::RedisEngine;
