//! The channel requests of a session that need more than the index:
//! `subscribe` (with recovery of missed events), `history`, `presence` and
//! `presence:stats`.

use std::collections::{BTreeMap, HashMap};

use axum::extract::ws::Message;
use futures::{Sink, SinkExt, Stream};

use super::{End, Session, bounded_write};
use crate::auth::Identity;
use crate::channels::manager::SubscriptionSet;
use crate::channels::{ChannelName, HistoryPage, Pattern, SubscribeOutcome};
use crate::engine::RedisEngine;
use crate::error::{ErrorCode, RequestError};
use crate::hub::Hub;
use crate::protocol::history::{HistoryEvent, StreamPosition};
use crate::protocol::{ClientMessage, RequestId, ServerMessage};

impl<S> Session<S>
where
    S: Stream<Item = Result<Message, axum::Error>> + Sink<Message, Error = axum::Error> + Unpin,
{
    /// `subscribe`: per-pattern errors in pattern order, then errors about
    /// `since` keys, then `subscribed`, then the recovered events (each
    /// channel's in offset order); live events follow from the queue.
    pub(super) async fn subscribe(
        &mut self,
        id: Option<RequestId>,
        channels: Vec<String>,
        since: BTreeMap<String, StreamPosition>,
    ) -> Result<(), End> {
        // Without the subscribe permission every pattern is refused one by
        // one (check_subscribe checks it), so the reply shape never changes.
        let limits = self.hub.name_limits();
        let max = self.hub.config().limits.max_subscriptions;
        let mut new_patterns: Vec<Pattern> = Vec::new();
        let mut checked: Vec<(String, Result<usize, RequestError>)> =
            Vec::with_capacity(channels.len());
        let mut patterns: Vec<Pattern> = Vec::with_capacity(channels.len());
        for raw in channels {
            let result = Pattern::parse(&raw, &limits)
                .map_err(RequestError::from)
                .and_then(|pattern| {
                    self.identity.permissions.check_subscribe(&pattern)?;
                    let is_new = !self.subs.contains(&pattern);
                    if is_new
                        && !new_patterns.contains(&pattern)
                        && self.subs.len() + new_patterns.len() >= max
                    {
                        return Err(RequestError::new(
                            ErrorCode::TooManySubscriptions,
                            format!("a connection may hold at most {max} subscriptions"),
                        ));
                    }
                    if is_new && !new_patterns.contains(&pattern) {
                        new_patterns.push(pattern.clone());
                    }
                    patterns.push(pattern);
                    Ok(patterns.len() - 1)
                });
            checked.push((raw, result));
        }
        let mut since_errors = Vec::new();
        let mut positions = BTreeMap::new();
        for (raw, position) in since {
            match ChannelName::parse(&raw, &limits) {
                Ok(channel) => {
                    positions.insert(channel, position);
                }
                Err(err) => since_errors.push((raw, RequestError::from(err))),
            }
        }

        let outcome = match self.hub.cluster().cloned() {
            None => self.subs.subscribe(&patterns, &positions),
            Some(cluster) => {
                self.subscribe_clustered(&cluster, &patterns, &positions)
                    .await
            }
        };

        let mut accepted = Vec::with_capacity(checked.len());
        for (raw, result) in checked {
            match result.and_then(|k| outcome.results[k].clone()) {
                Ok(()) => accepted.push(raw),
                Err(err) => self.error(id.clone(), err, Some(raw)).await?,
            }
        }
        for (raw, err) in since_errors {
            self.error(id.clone(), err, Some(raw)).await?;
        }
        self.reply(ServerMessage::Subscribed {
            id,
            channels: accepted,
            recovered: outcome.recovered,
            positions: outcome.positions,
        })
        .await?;
        if outcome.replay.is_empty() {
            return Ok(());
        }
        // Written here, before the loop reads the queue again, so they
        // precede every live event of their channels.
        let socket = &mut self.socket;
        let write = async {
            for event in &outcome.replay {
                socket.feed(Message::Text(event.ws_frame())).await?;
            }
            socket.flush().await
        };
        bounded_write(
            write,
            &self.subscriber,
            self.hub.config().websocket.ping_timeout,
        )
        .await
    }

    /// Cluster mode: subscribes in the local index, waits until Redis
    /// confirmed the node's subscriptions (so nothing published from here
    /// on is missed), then reads positions and missed events from Redis.
    /// Live events queued meanwhile at or before those positions are
    /// dropped by the writer (`skip`), so none is delivered twice.
    async fn subscribe_clustered(
        &mut self,
        cluster: &RedisEngine,
        patterns: &[Pattern],
        since: &BTreeMap<ChannelName, StreamPosition>,
    ) -> SubscribeOutcome {
        subscribe_clustered(
            &self.hub,
            cluster,
            &mut self.subs,
            &mut self.skip,
            patterns,
            since,
        )
        .await
    }

    /// `history`, `presence` and `presence:stats`: each needs the subscribe
    /// permission on the channel.
    pub(super) async fn on_channel_query(&mut self, msg: ClientMessage) -> Result<(), End> {
        let id = msg.id().cloned();
        let raw = match &msg {
            ClientMessage::History { channel, .. }
            | ClientMessage::Presence { channel, .. }
            | ClientMessage::PresenceStats { channel, .. } => channel.clone(),
            _ => return Ok(()),
        };
        if let Some(cluster) = self.hub.cluster().cloned() {
            let reply = query_clustered(&self.hub, &self.identity, &cluster, msg, &raw).await;
            return match reply {
                Ok(reply) => self.reply(reply).await,
                Err(err) => self.error(id, err, Some(raw)).await,
            };
        }
        let reply = self.channel_query(msg, &raw);
        match reply {
            Ok(reply) => self.reply(reply).await,
            Err(err) => self.error(id, err, Some(raw)).await,
        }
    }

    fn channel_query(&self, msg: ClientMessage, raw: &str) -> Result<ServerMessage, RequestError> {
        let channel = self.hub.channel(raw)?;
        let as_pattern = Pattern::parse(raw, &self.hub.name_limits())?;
        self.identity.permissions.check_subscribe(&as_pattern)?;
        let channels = self.hub.channels();
        Ok(match msg {
            ClientMessage::History {
                id, since, limit, ..
            } => {
                let page = channels.history(&channel, since.as_ref(), limit)?;
                history_reply(id, raw, page)
            }
            ClientMessage::Presence { id, .. } => ServerMessage::Presence {
                id,
                channel: raw.to_string(),
                clients: channels.presence(&channel)?,
            },
            ClientMessage::PresenceStats { id, .. } => {
                let (clients, users) = channels.presence_stats(&channel)?;
                ServerMessage::PresenceStats {
                    id,
                    channel: raw.to_string(),
                    clients,
                    users,
                }
            }
            _ => return Err(RequestError::new(ErrorCode::BadRequest, "not a query")),
        })
    }
}

/// The `history` reply for a page.
fn history_reply(id: Option<RequestId>, raw: &str, page: HistoryPage) -> ServerMessage {
    ServerMessage::History {
        id,
        channel: raw.to_string(),
        epoch: page.position.epoch,
        offset: page.position.offset,
        recovered: page.recovered,
        events: page
            .events
            .iter()
            .map(|e| HistoryEvent {
                data: e.data.clone(),
                id: e.id.clone(),
                ts: e.ts,
                offset: e.position.as_ref().map_or(0, |p| p.offset),
            })
            .collect(),
    }
}

/// `history`, `presence` and `presence:stats` in cluster mode: read from
/// Redis.
async fn query_clustered(
    hub: &Hub,
    identity: &Identity,
    cluster: &RedisEngine,
    msg: ClientMessage,
    raw: &str,
) -> Result<ServerMessage, RequestError> {
    let channel = hub.channel(raw)?;
    let as_pattern = Pattern::parse(raw, &hub.name_limits())?;
    identity.permissions.check_subscribe(&as_pattern)?;
    let (id, since, limit) = match msg {
        ClientMessage::History {
            id, since, limit, ..
        } => (id, since, limit),
        ClientMessage::Presence { id, .. } => {
            return Ok(ServerMessage::Presence {
                id,
                channel: raw.to_string(),
                clients: hub.presence(&channel).await?,
            });
        }
        ClientMessage::PresenceStats { id, .. } => {
            let (clients, users) = hub.presence_stats(&channel).await?;
            return Ok(ServerMessage::PresenceStats {
                id,
                channel: raw.to_string(),
                clients,
                users,
            });
        }
        _ => return Err(RequestError::new(ErrorCode::BadRequest, "not a query")),
    };
    let limits = hub
        .channels()
        .namespaces()
        .resolve(&channel)
        .and_then(|ns| ns.history)
        .ok_or_else(|| {
            RequestError::new(
                ErrorCode::BadRequest,
                format!("{channel} has no history: no namespace with history matches it"),
            )
        })?;
    let page = cluster
        .history(&channel, limits, since.as_ref(), limit)
        .await?;
    Ok(history_reply(id, raw, page))
}

/// Cluster-mode subscribe, shared by WebSocket sessions and SSE streams:
/// subscribes locally, waits until Redis confirmed the node's
/// subscriptions (so nothing published from here on is missed), then reads
/// positions and missed events from Redis. Live events queued meanwhile at
/// or before those positions are to be dropped by the writer (`skip`, see
/// [`wanted`](super::wanted)), so none is delivered twice.
pub(crate) async fn subscribe_clustered(
    hub: &Hub,
    cluster: &RedisEngine,
    subs: &mut SubscriptionSet,
    skip: &mut HashMap<ChannelName, u64>,
    patterns: &[Pattern],
    since: &BTreeMap<ChannelName, StreamPosition>,
) -> SubscribeOutcome {
    let live_before: Vec<bool> = since.keys().map(|c| subs.matches(c)).collect();
    let mut outcome = subs.subscribe(patterns, &BTreeMap::new());
    cluster.wait_subscribed(patterns).await;
    outcome.positions.clear();
    let channels = std::sync::Arc::clone(hub.channels());
    let namespaces = channels.namespaces();
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
        let Some(limits) = namespaces.resolve(channel).and_then(|ns| ns.history) else {
            recovered.insert(channel.to_string(), false);
            continue;
        };
        match cluster.history(channel, limits, Some(position), None).await {
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
        let Ok(channel) = hub.channel(pattern.as_str()) else {
            continue;
        };
        if outcome.positions.contains_key(channel.as_str())
            || namespaces
                .resolve(&channel)
                .and_then(|ns| ns.history)
                .is_none()
        {
            continue;
        }
        if let Ok(position) = cluster.position(&channel).await {
            skip.insert(channel.clone(), position.offset);
            outcome.positions.insert(channel.to_string(), position);
        }
    }
    outcome
}
