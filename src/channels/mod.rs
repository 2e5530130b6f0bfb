//! Channel names, channel patterns and the subscription index.
//!
//! Clients publish to channels and subscribe to patterns over channels, and
//! permissions are allow-lists of patterns. This module owns that grammar so
//! that it is defined, validated and matched in exactly one place: input is
//! parsed once at the edge into [`ChannelName`] / [`Pattern`], and the rest of
//! the broker only ever handles validated values. [`SubscriptionIndex`] then
//! answers "who receives an event on this channel?" without scanning every
//! subscription.
//!
//! This module is the bottom of the crate: it imports nothing else from it.
//! The fan-out path built on the index, namespaces, history and presence
//! are the router (`router/`, part of the server). [`list`] splits the
//! comma-separated pattern lists of `?channels=` and CLI flags.
//!
//! # Grammar
//!
//! A **channel name** is one or more segments separated by `:`, e.g.
//! `session:42:log`.
//!
//! - Every segment is non-empty and consists only of `A-Z a-z 0-9` and
//!   `_ . @ / + = -`. (`/` is an ordinary character, not a separator.)
//! - The whole name is at most [`NameLimits::max_bytes`] bytes (default 255)
//!   and has at most [`NameLimits::max_segments`] segments (default 16).
//!
//! A **pattern** has the same segment structure and limits. Each segment is
//! one of:
//!
//! | Segment | Matches |
//! |---|---|
//! | literal, e.g. `session` | exactly that segment |
//! | `*` | exactly one segment, any content |
//! | `**` | zero or more whole segments |
//! | glob, e.g. `job-*`, `v?`, `[a-z]x`, `[!0-9]`, `{eu,us}` | one segment matching the glob |
//!
//! Glob segments may use the name characters plus `* ? [ ] { } , ! ^`.
//! Within a segment, `*` matches any run of characters, `?` one character,
//! `[a-z]` / `[!a-z]` (or `[^a-z]`) a character class and `{eu,us}` any of the
//! alternatives. A glob never matches across a `:`. `**` mixed with other
//! characters in one segment (`foo**`) is rejected: `**` must be a whole
//! segment. Consecutive `**` segments are normalised to one (`a:**:**` is
//! `a:**`).
//!
//! Examples:
//!
//! - `session:*` matches `session:42` but not `session:42:log` or `session`;
//! - `session:**` matches `session`, `session:42` and `session:42:log`;
//! - `**` matches every channel;
//! - `region:{eu,us}:*` matches `region:eu:1` and `region:us:2`.
//!
//! Parsing never panics; invalid input yields a [`ChannelError`] naming the
//! problem and its position.
//!
//! # Example
//!
//! ```
//! use chanhub::channels::{ChannelName, NameLimits, Pattern, SubscriptionIndex};
//!
//! let limits = NameLimits::default();
//! let index = SubscriptionIndex::new(1024);
//! // Connection 1 has two overlapping patterns; it still gets one event.
//! index.insert(&Pattern::parse("session:*", &limits)?, 1, "conn-1");
//! index.insert(&Pattern::parse("session:**", &limits)?, 1, "conn-1");
//! index.insert(&Pattern::parse("task:*", &limits)?, 2, "conn-2");
//!
//! let hits = index.matches(&ChannelName::parse("session:42", &limits)?);
//! assert_eq!(&*hits, ["conn-1"]);
//!
//! // Permissions: a subscription is allowed if an allow-list entry covers it.
//! let allowed = Pattern::parse("session:**", &limits)?;
//! assert!(allowed.covers(&Pattern::parse("session:*:log", &limits)?));
//! assert!(!allowed.covers(&Pattern::parse("**", &limits)?));
//! # Ok::<(), chanhub::channels::ChannelError>(())
//! ```

pub mod list;

mod error;
mod index;
mod name;
mod pattern;

#[cfg(test)]
mod test_support;

pub use error::ChannelError;
pub use index::SubscriptionIndex;
pub use name::{ChannelName, NameLimits};
pub use pattern::Pattern;
// The router ranks namespaces by their patterns' segments.
#[cfg(feature = "server")]
pub(crate) use pattern::Segment;
