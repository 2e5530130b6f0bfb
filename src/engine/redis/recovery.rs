//! Subscribing with recovery on the Redis engine, for WebSocket sessions
//! and SSE streams alike.
//!
//! # Why nothing is missed or delivered twice
//!
//! 1. The subscription enters this node's index first, so every event this
//!    node receives from Redis from then on is queued for the connection.
//! 2. Then the node waits until Redis confirmed the node's pub/sub
//!    subscriptions for the new patterns
//!    ([`RedisEngine::wait_subscribed`]): every event Redis publishes after
//!    that point reaches this node, so it is queued live.
//! 3. Only then are positions and missed events read from the Redis
//!    streams. Anything published before the read is in it; anything after
//!    is queued live — and an event published between steps 1 and 3 may be
//!    in both. So the read's position of each channel goes into `skip`: the
//!    writer drops queued events of that channel at or before it.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::RedisEngine;
use crate::channels::{ChannelName, NameLimits, Pattern};
use crate::engine::Skip;
use crate::protocol::history::StreamPosition;
use crate::router::SubscribeOutcome;
use crate::router::manager::{ChannelManager, SubscriptionSet};

/// Subscribes `subs` to `patterns` and recovers each `since` channel from
/// Redis (see the module docs).
pub(crate) async fn subscribe(
    redis: &RedisEngine,
    channels: &Arc<ChannelManager>,
    subs: &mut SubscriptionSet,
    skip: &mut Skip,
    patterns: &[Pattern],
    since: &BTreeMap<ChannelName, StreamPosition>,
) -> SubscribeOutcome {
    let live_before: Vec<bool> = since.keys().map(|c| subs.matches(c)).collect();
    let mut outcome = subs.subscribe(patterns, &BTreeMap::new());
    redis.wait_subscribed(patterns).await;
    outcome.positions.clear();
    let accepted = |channel: &ChannelName| {
        patterns
            .iter()
            .zip(&outcome.results)
            .any(|(p, r)| r.is_ok() && p.matches(channel))
    };
    let mut recovered = BTreeMap::new();
    for ((channel, position), live) in since.iter().zip(live_before) {
        if live || !accepted(channel) {
            continue;
        }
        let Some(limits) = channels.history_limits(channel) else {
            recovered.insert(channel.to_string(), false);
            continue;
        };
        match redis.history(channel, limits, Some(position), None).await {
            Ok(page) => {
                let ok = page.recovered == Some(true);
                if ok {
                    outcome.replay.extend(page.events);
                }
                recovered.insert(channel.to_string(), ok);
                skip.insert(channel.clone(), page.position.offset);
                outcome.positions.insert(channel.to_string(), page.position);
            }
            Err(_) => {
                recovered.insert(channel.to_string(), false);
            }
        }
    }
    outcome.recovered = recovered;
    for (pattern, result) in patterns.iter().zip(&outcome.results) {
        if result.is_err() || !pattern.is_literal() {
            continue;
        }
        let Ok(channel) = ChannelName::parse(pattern.as_str(), &NameLimits::UNBOUNDED) else {
            continue;
        };
        if outcome.positions.contains_key(channel.as_str())
            || channels.history_limits(&channel).is_none()
        {
            continue;
        }
        if let Ok(position) = redis.position(&channel).await {
            skip.insert(channel.clone(), position.offset);
            outcome.positions.insert(channel.to_string(), position);
        }
    }
    outcome
}
