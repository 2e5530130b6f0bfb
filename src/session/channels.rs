//! The channel requests of a session that need more than the index:
//! `subscribe` (with recovery of missed events), `history`, `presence` and
//! `presence:stats`.

use std::collections::BTreeMap;

use futures::{Sink, SinkExt, Stream};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use super::{End, Session, bounded_write};
use crate::auth::Identity;
use crate::channels::{ChannelName, Pattern};
use crate::error::{ErrorCode, RequestError};
use crate::hub::Hub;
use crate::protocol::history::{HistoryEvent, StreamPosition};
use crate::protocol::{ClientMessage, RequestId, ServerMessage};
use crate::router::HistoryPage;

impl<S> Session<S>
where
    S: Stream<Item = Result<Message, WsError>> + Sink<Message, Error = WsError> + Unpin,
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

        let outcome = self
            .hub
            .engine()
            .subscribe(&mut self.subs, &mut self.skip, &patterns, &positions)
            .await;

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
        let reply = channel_query(&self.hub, &self.identity, msg, &raw).await;
        match reply {
            Ok(reply) => self.reply(reply).await,
            Err(err) => self.error(id, err, Some(raw)).await,
        }
    }
}

/// `history`, `presence` and `presence:stats`, from the engine. A free
/// function: the session (and its socket) is not held across the awaits.
async fn channel_query(
    hub: &Hub,
    identity: &Identity,
    msg: ClientMessage,
    raw: &str,
) -> Result<ServerMessage, RequestError> {
    let channel = hub.channel(raw)?;
    let as_pattern = Pattern::parse(raw, &hub.name_limits())?;
    identity.permissions.check_subscribe(&as_pattern)?;
    let engine = hub.engine();
    Ok(match msg {
        ClientMessage::History {
            id, since, limit, ..
        } => {
            let page = engine.history(&channel, since.as_ref(), limit).await?;
            history_reply(id, raw, page)
        }
        ClientMessage::Presence { id, .. } => ServerMessage::Presence {
            id,
            channel: raw.to_string(),
            clients: engine.presence(&channel).await?,
        },
        ClientMessage::PresenceStats { id, .. } => {
            let (clients, users) = engine.presence_stats(&channel).await?;
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
