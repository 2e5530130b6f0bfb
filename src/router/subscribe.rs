//! Subscribing with recovery and membership: the one place where a
//! subscription, the missed events of its channels and its presence are
//! decided together, under the locks of the channels involved (see
//! [`state`](super::state) for the ordering argument).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use super::history::Recovery;
use super::manager::SubscriptionSet;
use super::namespace::Namespace;
use super::state::{ChannelEntry, membership_frame};
use crate::channels::{ChannelName, NameLimits, Pattern};
use crate::error::{ErrorCode, RequestError};
use crate::protocol::Event;
use crate::protocol::history::StreamPosition;

/// What a [`SubscriptionSet::subscribe`] did.
#[derive(Debug)]
pub(crate) struct SubscribeOutcome {
    /// Per requested pattern, in request order: subscribed (or already
    /// held), or refused because the channel is full (`max_subscribers`).
    pub results: Vec<Result<(), RequestError>>,
    /// For each `since` channel matched by a newly subscribed pattern:
    /// whether every event after the position is in `replay`.
    pub recovered: BTreeMap<String, bool>,
    /// Where live delivery starts, for each history channel subscribed by
    /// name or recovered.
    pub positions: BTreeMap<String, StreamPosition>,
    /// The missed events of the recovered channels, each channel's in
    /// offset order (channels in name order). Every later event of those
    /// channels is queued live; none of these is.
    pub replay: Vec<Arc<Event>>,
}

/// What one namespace channel needs from a subscribe.
struct Plan<'a> {
    /// Its namespace.
    namespace: Arc<Namespace>,
    /// The request's pattern naming exactly this channel, if any.
    by_name: Option<usize>,
    /// The position to recover from, if any.
    since: Option<&'a StreamPosition>,
}

impl SubscriptionSet {
    /// Subscribes to `patterns` (already validated and permitted) and, for
    /// each `since` channel matched by a newly subscribed pattern, recovers
    /// the events published after that position.
    ///
    /// For every channel involved (named exactly by a pattern in a namespace
    /// that tracks channels, or recovered), the channel's lock is held from
    /// before the subscription enters the index until its snapshot is taken,
    /// so a concurrent publish lands either in `replay` or in the live
    /// queue, never both and never neither. A `since` channel that a pattern
    /// held *before* this request already matches is skipped: its events
    /// are on their way already.
    pub(crate) fn subscribe(
        &mut self,
        patterns: &[Pattern],
        since: &BTreeMap<ChannelName, StreamPosition>,
    ) -> SubscribeOutcome {
        let manager = Arc::clone(&self.manager);
        let namespaces = manager.namespaces();
        let mut outcome = SubscribeOutcome {
            results: vec![Ok(()); patterns.len()],
            recovered: BTreeMap::new(),
            positions: BTreeMap::new(),
            replay: Vec::new(),
        };
        // Patterns not held yet, first occurrence only.
        let fresh: Vec<usize> = (0..patterns.len())
            .filter(|&i| !self.contains(&patterns[i]) && !patterns[..i].contains(&patterns[i]))
            .collect();

        let mut plans: BTreeMap<ChannelName, Plan<'_>> = BTreeMap::new();
        if !namespaces.is_empty() {
            for &i in &fresh {
                let pattern = &patterns[i];
                if !pattern.is_literal() {
                    continue;
                }
                let Ok(channel) = ChannelName::parse(pattern.as_str(), &NameLimits::UNBOUNDED)
                else {
                    continue;
                };
                if let Some(namespace) =
                    namespaces.resolve(&channel).filter(|n| n.tracks_channels())
                {
                    plans.insert(
                        channel,
                        Plan {
                            namespace,
                            by_name: Some(i),
                            since: None,
                        },
                    );
                }
            }
        }
        for (channel, position) in since {
            let live_already = self.patterns.iter().any(|p| p.matches(channel));
            if live_already || !fresh.iter().any(|&i| patterns[i].matches(channel)) {
                continue;
            }
            match namespaces.resolve(channel).filter(|n| n.history.is_some()) {
                None => {
                    outcome.recovered.insert(channel.to_string(), false);
                }
                Some(namespace) => {
                    plans
                        .entry(channel.clone())
                        .or_insert(Plan {
                            namespace,
                            by_name: None,
                            since: None,
                        })
                        .since = Some(position);
                }
            }
        }

        // Lock every channel involved, in name order (the map's order), so
        // two subscribes never wait on each other in a cycle.
        let entries: Vec<Arc<ChannelEntry>> = plans
            .iter()
            .map(|(channel, plan)| manager.states.get_or_create(channel, &plan.namespace))
            .collect();
        let mut guards: Vec<_> = entries.iter().map(|e| e.lock()).collect();
        if guards.iter().any(|g| g.dead) {
            // The sweeper dropped one between lookup and lock: look again.
            drop(guards);
            return self.subscribe(patterns, since);
        }

        // A full channel refuses the pattern naming it.
        if self.member.is_some() {
            for ((channel, plan), state) in plans.iter().zip(&guards) {
                let (Some(i), Some(max)) = (plan.by_name, plan.namespace.max_subscribers) else {
                    continue;
                };
                if state.members.len() >= max {
                    outcome.results[i] = Err(RequestError::new(
                        ErrorCode::TooManySubscriptions,
                        format!("{channel} already has its maximum of {max} subscribers"),
                    ));
                }
            }
        }

        // Into the index: from here on, publishes to these channels (which
        // wait for the locks) are queued for this connection.
        let mut accepted: Vec<&Pattern> = Vec::with_capacity(fresh.len());
        for &i in &fresh {
            if outcome.results[i].is_err() {
                continue;
            }
            let pattern = &patterns[i];
            if manager.subscribe(pattern, &self.subscriber) {
                self.patterns.push(pattern.clone());
            }
            accepted.push(pattern);
        }

        let now = Instant::now();
        for (k, (channel, plan)) in plans.iter().enumerate() {
            let state = &mut *guards[k];
            if let Some(history) = state.history.as_mut() {
                history.trim(now);
            }
            let joined = plan.by_name.is_some_and(|i| outcome.results[i].is_ok());
            if let (true, Some(info)) = (joined, &self.member) {
                state.members.insert(self.subscriber.id, info.clone());
                if let (true, Some(upstream)) = (plan.namespace.presence, manager.upstream()) {
                    upstream.member_joined(channel, self.subscriber.id, info);
                }
                self.memberships.push(Arc::clone(&entries[k]));
                if plan.namespace.join_leave {
                    let frame = membership_frame(true, channel, info);
                    match manager.upstream() {
                        // Through the shared engine, to every node (this
                        // one too), in order with the channel's events; the
                        // new member, whose engine subscription may not be
                        // placed yet, gets its own at once.
                        Some(upstream) if upstream.membership(channel, &frame) => {
                            self.subscriber.send_direct(frame);
                        }
                        _ => manager.send_to_subscribers(channel, &frame),
                    }
                }
            }
            let live = accepted.iter().any(|p| p.matches(channel));
            if !live {
                continue;
            }
            if let Some(since) = plan.since {
                let recovered = match state.history.as_ref().map(|h| h.recover(since)) {
                    Some(Recovery::Continued(events)) => {
                        outcome.replay.extend(events);
                        true
                    }
                    Some(Recovery::Lost) | None => false,
                };
                outcome.recovered.insert(channel.to_string(), recovered);
            }
            if let Some(history) = state.history.as_ref() {
                outcome
                    .positions
                    .insert(channel.to_string(), history.position());
            }
        }
        drop(guards);
        outcome
    }

    /// Leaves a channel this connection was a member of: removes it from
    /// the members and, with `join_leave`, tells the subscribers.
    pub(super) fn leave(&self, entry: &ChannelEntry) {
        let mut state = entry.lock();
        state.touch(Instant::now());
        if let Some(info) = state.members.remove(&self.subscriber.id) {
            if let (true, Some(upstream)) = (entry.namespace.presence, self.manager.upstream()) {
                upstream.member_left(&entry.channel, self.subscriber.id);
            }
            if entry.namespace.join_leave {
                let frame = membership_frame(false, &entry.channel, &info);
                let sent = self
                    .manager
                    .upstream()
                    .is_some_and(|upstream| upstream.membership(&entry.channel, &frame));
                if !sent {
                    self.manager.send_to_subscribers(&entry.channel, &frame);
                }
            }
        }
    }
}
