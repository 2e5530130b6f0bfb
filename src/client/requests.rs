//! Request/reply bookkeeping for one client: ids, the map of requests
//! waiting for an answer, the set of patterns to resubscribe after a
//! reconnect, the worker registration and the service to send again, and
//! the callers of calls in flight (a call whose caller gives up is
//! cancelled). Pure state with no I/O, driven by the connection task.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};

use super::call_ops::{CallKind, CallOp, CallReply, ServeState, Served, Start};
use super::task_ops::{TaskKind, TaskOp, TaskReply, WorkerState};
use super::types::{ClientError, Event, Published, Rejected, Subscribed};
use crate::channels::{ChannelName, NameLimits, Pattern};
use crate::protocol::history::StreamPosition;
use crate::protocol::{ClientMessage, RequestId, ServerMessage};

/// The smallest pending-map size at which requests whose caller gave up are
/// swept out.
const PRUNE_FLOOR: usize = 64;

/// What a caller asks the connection task to do.
#[derive(Debug)]
pub(crate) enum Op {
    /// `subscribe` these patterns.
    Subscribe(Vec<String>),
    /// `unsubscribe` these patterns.
    Unsubscribe(Vec<String>),
    /// `publish` with an id, so the hub acknowledges.
    Publish {
        /// A concrete channel.
        channel: String,
        /// The event's payload.
        data: Value,
    },
    /// Application-level `ping`.
    Ping,
    /// A task request (submitter or worker).
    Task(TaskOp),
    /// A call request (caller or server).
    Call(CallOp),
}

/// A successful answer to an [`Op`].
#[derive(Debug)]
pub(crate) enum Reply {
    /// Answer to [`Op::Subscribe`].
    Subscribed(Subscribed),
    /// Answer to [`Op::Unsubscribe`]: the patterns that were held.
    Unsubscribed(Vec<String>),
    /// Answer to [`Op::Publish`].
    Published(Published),
    /// Answer to [`Op::Ping`].
    Pong,
    /// Answer to [`Op::Task`].
    Task(TaskReply),
    /// Answer to [`Op::Call`].
    Call(CallReply),
}

/// Where the answer to a request goes.
pub(crate) type ReplyTx = oneshot::Sender<Result<Reply, ClientError>>;

/// A request from a [`Client`](super::Client) handle to the connection task.
#[derive(Debug)]
pub(crate) struct Command {
    /// What to do.
    pub(crate) op: Op,
    /// The caller waiting for the answer.
    pub(crate) reply: ReplyTx,
}

/// What kind of answer a pending request expects.
enum Kind {
    Subscribe,
    /// Remembers the patterns so the answer removes them from the
    /// resubscribe set even if a `subscribe` answered in between added them.
    Unsubscribe(Vec<String>),
    Publish,
    Ping,
    Task(TaskKind),
    Call(CallKind),
}

/// A request sent and not yet answered.
struct Pending {
    kind: Kind,
    reply: ReplyTx,
    /// Per-pattern refusals that arrive before a `subscribed`/`unsubscribed`.
    rejected: Vec<Rejected>,
}

/// Request ids, waiting callers and the subscription set.
#[derive(Default)]
pub(crate) struct Requests {
    /// The last id handed out. Never reset, so a late answer on one
    /// connection can never be taken for an answer on the next.
    last_id: i64,
    /// Sent requests by id.
    pending: HashMap<i64, Pending>,
    /// Patterns the hub accepted and the user has not unsubscribed;
    /// resubscribed after every reconnect.
    subscriptions: BTreeSet<String>,
    /// The worker registration, registered again after every reconnect.
    pub(crate) worker: WorkerState,
    /// The service, served again after every reconnect.
    pub(crate) serve: ServeState,
    /// The callers of calls in flight: each resolves to the call's id when
    /// its caller drops the call.
    callers: FuturesUnordered<Caller>,
    /// The last known position of each history channel: from the
    /// `positions` of every `subscribed` and the offset of every event.
    /// Sent as `since` on resubscribe, so missed events are replayed.
    positions: HashMap<String, StreamPosition>,
    /// Pending-map size at which to sweep out abandoned requests; doubles
    /// with the map so sweeping stays amortised O(1) per request.
    prune_at: usize,
}

impl Requests {
    /// Registers `command` and returns the frame to send, or `None` when
    /// there is nothing to send (the caller already gave up).
    pub(crate) fn start(&mut self, command: Command) -> Option<String> {
        let Command { op, reply } = command;
        if reply.is_closed() {
            return None;
        }
        self.last_id = self.last_id.wrapping_add(1);
        let id = Some(RequestId::Int(self.last_id));
        let (msg, kind) = match op {
            Op::Subscribe(channels) => (
                ClientMessage::Subscribe {
                    id,
                    channels,
                    since: Default::default(),
                },
                Kind::Subscribe,
            ),
            Op::Unsubscribe(channels) => {
                // Forget them now: if the connection drops before the answer,
                // the user still does not want them back.
                for pattern in &channels {
                    self.subscriptions.remove(pattern);
                }
                let kind = Kind::Unsubscribe(channels.clone());
                (ClientMessage::Unsubscribe { id, channels }, kind)
            }
            Op::Publish { channel, data } => {
                (ClientMessage::Publish { id, channel, data }, Kind::Publish)
            }
            Op::Ping => (ClientMessage::Ping { id }, Kind::Ping),
            Op::Task(op) => {
                if let Err(err) = self.worker.check(&op) {
                    let _ = reply.send(Err(err));
                    return None;
                }
                let (msg, kind) = op.into_message(id);
                (msg, Kind::Task(kind))
            }
            Op::Call(op) => match self.serve.start(op, self.last_id) {
                Start::Request { msg, kind, caller } => {
                    if let Some(caller) = caller {
                        self.callers.push(Caller {
                            id: self.last_id,
                            caller,
                        });
                    }
                    (msg, Kind::Call(kind))
                }
                Start::Notice(msg) => {
                    let text = frame(&msg);
                    let answer = match &text {
                        Ok(_) => Ok(Reply::Call(CallReply::Sent)),
                        Err(err) => Err(err.clone()),
                    };
                    let _ = reply.send(answer);
                    return text.ok();
                }
                Start::Answered(result) => {
                    let _ = reply.send(result.map(Reply::Call));
                    return None;
                }
            },
        };
        let text = match frame(&msg) {
            Ok(text) => text,
            Err(err) => {
                let _ = reply.send(Err(err));
                return None;
            }
        };
        self.prune();
        if let Kind::Task(kind) = &kind {
            self.worker.sent(kind);
        }
        self.pending.insert(
            self.last_id,
            Pending {
                kind,
                reply,
                rejected: Vec::new(),
            },
        );
        Some(text)
    }

    /// Drops requests whose caller timed out, once the map has grown.
    fn prune(&mut self) {
        if self.pending.len() < self.prune_at.max(PRUNE_FLOOR) {
            return;
        }
        // A `register` is kept even if its caller gave up: a `registered`
        // makes this connection a worker either way. So are call requests:
        // a call whose caller left is cancelled (and forgotten) by
        // `abandoned`, and the answers to `serve` and `unserve` keep the
        // service's state.
        let keep = |p: &Pending| {
            !p.reply.is_closed()
                || matches!(p.kind, Kind::Task(TaskKind::Register(_)) | Kind::Call(_))
        };
        self.pending.retain(|_, p| keep(p));
        self.prune_at = self.pending.len() * 2;
    }

    /// Routes an answer (`subscribed`, `unsubscribed`, `published`, `pong`,
    /// the task answers, `error`) to its caller. Other messages are ignored.
    pub(crate) fn on_reply(&mut self, msg: ServerMessage) {
        let Some(id) = reply_id(&msg) else {
            match &msg {
                ServerMessage::Error { code, message, .. } => {
                    tracing::warn!(?code, %message, "hub reported an error for no request");
                }
                other => tracing::debug!(msg = %other.to_json(), "ignoring an unhandled message"),
            }
            return;
        };
        if let ServerMessage::Error {
            channel: Some(channel),
            code,
            message,
            ..
        } = &msg
        {
            // A per-pattern refusal of a (un)subscribe; its summary follows.
            if let Some(p) = self.pending.get_mut(&id) {
                if matches!(p.kind, Kind::Subscribe | Kind::Unsubscribe(_)) {
                    p.rejected.push(Rejected {
                        channel: channel.clone(),
                        code: *code,
                        message: message.clone(),
                    });
                    return;
                }
            }
        }
        let Some(pending) = self.pending.remove(&id) else {
            tracing::debug!(id, "answer to a request nobody waits for");
            return;
        };
        let result = self.complete(pending.kind, pending.rejected, msg);
        // The caller may have timed out; that is its business.
        let _ = pending.reply.send(result);
    }

    fn complete(
        &mut self,
        kind: Kind,
        rejected: Vec<Rejected>,
        msg: ServerMessage,
    ) -> Result<Reply, ClientError> {
        match (kind, msg) {
            (Kind::Task(kind), msg) => self.worker.complete(kind, msg).map(Reply::Task),
            (Kind::Call(kind), msg) => self.serve.complete(kind, msg).map(Reply::Call),
            (_, ServerMessage::Error { code, message, .. }) => {
                Err(ClientError::Refused { code, message })
            }
            (
                Kind::Subscribe,
                ServerMessage::Subscribed {
                    channels,
                    positions,
                    ..
                },
            ) => {
                self.subscriptions.extend(channels.iter().cloned());
                self.note_positions(positions, false);
                Ok(Reply::Subscribed(Subscribed {
                    accepted: channels,
                    rejected,
                }))
            }
            (Kind::Unsubscribe(asked), ServerMessage::Unsubscribed { channels, .. }) => {
                for pattern in &asked {
                    self.subscriptions.remove(pattern);
                }
                Ok(Reply::Unsubscribed(channels))
            }
            (
                Kind::Publish,
                ServerMessage::Published {
                    channel,
                    event_id,
                    delivered,
                    ..
                },
            ) => Ok(Reply::Published(Published {
                channel,
                event_id,
                delivered,
            })),
            (Kind::Ping, ServerMessage::Pong { .. }) => Ok(Reply::Pong),
            (_, other) => Err(ClientError::Protocol(format!(
                "unexpected answer to a request: {}",
                other.to_json()
            ))),
        }
    }

    /// Fails every request in flight with [`ClientError::Closed`]: their
    /// connection is gone and the hub may or may not have acted on them.
    fn fail_all(&mut self) {
        for (_, pending) in self.pending.drain() {
            let _ = pending.reply.send(Err(ClientError::Closed));
        }
        self.prune_at = 0;
    }

    /// The connection dropped: fails every request in flight (see
    /// [`fail_all`](Self::fail_all)), calls included (they are never sent
    /// again); says what the hub has now ended.
    pub(crate) fn connection_lost(&mut self) -> Lost {
        self.fail_all();
        Lost {
            was_worker: self.worker.connection_lost(),
            service: self.serve.connection_lost(),
        }
    }

    /// The `call:cancel` of the next call whose caller gave up while it was
    /// in flight. Pending while there is none; cancel-safe.
    pub(crate) async fn abandoned(&mut self) -> String {
        loop {
            let Some(id) = self.callers.next().await else {
                // Nothing to watch; a new call starts a new wait.
                return std::future::pending().await;
            };
            let in_flight = matches!(
                self.pending.get(&id),
                Some(Pending {
                    kind: Kind::Call(CallKind::Call),
                    ..
                })
            );
            if !in_flight {
                continue; // answered (or failed) before its caller left
            }
            self.pending.remove(&id);
            let cancel = ClientMessage::CallCancel {
                id: RequestId::Int(id),
            };
            match frame(&cancel) {
                Ok(text) => return text,
                Err(err) => tracing::warn!(error = %err, "could not write a call:cancel"),
            }
        }
    }

    /// The patterns to resubscribe after a reconnect.
    pub(crate) fn subscriptions(&self) -> Vec<String> {
        self.subscriptions.iter().cloned().collect()
    }

    /// Remembers the `positions` of a `subscribed`. Without `overwrite`, a
    /// position already known in the same epoch is kept: events before the
    /// hub's position may still be on their way (for a pattern already
    /// held), and must not be taken for duplicates.
    pub(crate) fn note_positions(
        &mut self,
        positions: BTreeMap<String, StreamPosition>,
        overwrite: bool,
    ) {
        for (channel, position) in positions {
            match self.positions.get(&channel) {
                Some(known) if !overwrite && known.epoch == position.epoch => {}
                _ => {
                    self.positions.insert(channel, position);
                }
            }
        }
    }

    /// Records the position of an event on a history channel. Returns
    /// false for an event at or before the position already recorded in
    /// the same epoch: a duplicate, which should not be delivered again.
    pub(crate) fn observe(&mut self, event: &Event) -> bool {
        let (Some(offset), Some(epoch)) = (event.offset, event.epoch.as_ref()) else {
            return true;
        };
        if let Some(known) = self.positions.get(&event.channel) {
            if &known.epoch == epoch && offset <= known.offset {
                return false;
            }
        }
        self.positions.insert(
            event.channel.clone(),
            StreamPosition {
                offset,
                epoch: epoch.clone(),
            },
        );
        true
    }

    /// The `since` of a resubscribe to `patterns`: the recorded positions
    /// of the channels they match.
    pub(crate) fn since(&self, patterns: &[String]) -> BTreeMap<String, StreamPosition> {
        let limits = NameLimits::default();
        let patterns: Vec<Pattern> = patterns
            .iter()
            .filter_map(|p| Pattern::parse(p, &limits).ok())
            .collect();
        self.positions
            .iter()
            .filter(|(channel, _)| {
                ChannelName::parse(channel, &limits)
                    .is_ok_and(|name| patterns.iter().any(|p| p.matches(&name)))
            })
            .map(|(channel, position)| (channel.clone(), position.clone()))
            .collect()
    }

    /// Forgets patterns the hub refused on a resubscribe.
    pub(crate) fn forget(&mut self, rejected: &[Rejected]) {
        for r in rejected {
            self.subscriptions.remove(&r.channel);
        }
    }
}

/// What a dropped connection ended.
pub(crate) struct Lost {
    /// This client was a registered worker: the hub requeued its tasks.
    pub(crate) was_worker: bool,
    /// The inbox of the service whose calls the hub ended.
    pub(crate) service: Option<mpsc::Sender<Served>>,
}

/// Resolves to a call's request id once its caller has dropped the call.
struct Caller {
    id: i64,
    /// Never sent on; closes when the caller's end is dropped.
    caller: oneshot::Receiver<Infallible>,
}

impl Future for Caller {
    type Output = i64;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<i64> {
        let id = self.id;
        Pin::new(&mut self.caller).poll(cx).map(|_| id)
    }
}

/// A message as a text frame.
fn frame(msg: &ClientMessage) -> Result<String, ClientError> {
    serde_json::to_string(msg).map_err(|e| ClientError::Protocol(e.to_string()))
}

/// The integer id of an answer, if it has one (string ids are not ours).
fn reply_id(msg: &ServerMessage) -> Option<i64> {
    let id = match msg {
        ServerMessage::Result { id, .. } => Some(id),
        ServerMessage::Subscribed { id, .. }
        | ServerMessage::Unsubscribed { id, .. }
        | ServerMessage::Published { id, .. }
        | ServerMessage::Pong { id }
        | ServerMessage::Registered { id, .. }
        | ServerMessage::Draining { id, .. }
        | ServerMessage::TaskAccepted { id, .. }
        | ServerMessage::TaskAck { id, .. }
        | ServerMessage::Serving { id, .. }
        | ServerMessage::Unserving { id, .. }
        | ServerMessage::Error { id, .. } => id.as_ref(),
        _ => None,
    };
    match id {
        Some(RequestId::Int(n)) => Some(*n),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorCode;

    fn command(op: Op) -> (Command, oneshot::Receiver<Result<Reply, ClientError>>) {
        let (reply, rx) = oneshot::channel();
        (Command { op, reply }, rx)
    }

    fn sent_id(text: &str) -> i64 {
        let value: Value = serde_json::from_str(text).expect("json");
        value["id"].as_i64().expect("integer id")
    }

    #[test]
    fn subscribe_collects_rejections_until_the_summary() {
        let mut requests = Requests::default();
        let (cmd, mut rx) = command(Op::Subscribe(vec!["a:*".into(), "b::".into()]));
        let id = sent_id(&requests.start(cmd).expect("frame"));
        requests.on_reply(ServerMessage::Error {
            id: Some(RequestId::Int(id)),
            code: ErrorCode::InvalidChannel,
            message: "bad".into(),
            channel: Some("b::".into()),
            detail: None,
        });
        assert!(rx.try_recv().is_err(), "not answered before `subscribed`");
        requests.on_reply(ServerMessage::Subscribed {
            id: Some(RequestId::Int(id)),
            channels: vec!["a:*".into()],
            recovered: Default::default(),
            positions: Default::default(),
        });
        match rx.try_recv().expect("answered") {
            Ok(Reply::Subscribed(s)) => {
                assert_eq!(s.accepted, vec!["a:*".to_string()]);
                assert_eq!(s.rejected.len(), 1);
                assert_eq!(s.rejected[0].code, ErrorCode::InvalidChannel);
            }
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(requests.subscriptions(), vec!["a:*".to_string()]);
    }

    #[test]
    fn publish_error_with_a_channel_is_final() {
        let mut requests = Requests::default();
        let (cmd, mut rx) = command(Op::Publish {
            channel: "x".into(),
            data: Value::Null,
        });
        let id = sent_id(&requests.start(cmd).expect("frame"));
        requests.on_reply(ServerMessage::Error {
            id: Some(RequestId::Int(id)),
            code: ErrorCode::Forbidden,
            message: "no".into(),
            channel: Some("x".into()),
            detail: None,
        });
        assert!(matches!(
            rx.try_recv().expect("answered"),
            Err(ClientError::Refused {
                code: ErrorCode::Forbidden,
                ..
            })
        ));
    }

    #[test]
    fn unsubscribe_wins_over_an_earlier_subscribe_answered_later() {
        let mut requests = Requests::default();
        let (sub, _sub_rx) = command(Op::Subscribe(vec!["a".into()]));
        let sub_id = sent_id(&requests.start(sub).expect("frame"));
        let (unsub, _unsub_rx) = command(Op::Unsubscribe(vec!["a".into()]));
        let unsub_id = sent_id(&requests.start(unsub).expect("frame"));
        requests.on_reply(ServerMessage::Subscribed {
            id: Some(RequestId::Int(sub_id)),
            channels: vec!["a".into()],
            recovered: Default::default(),
            positions: Default::default(),
        });
        requests.on_reply(ServerMessage::Unsubscribed {
            id: Some(RequestId::Int(unsub_id)),
            channels: vec!["a".into()],
        });
        assert!(requests.subscriptions().is_empty());
    }

    #[test]
    fn fail_all_answers_closed_and_skips_abandoned_requests() {
        let mut requests = Requests::default();
        let (cmd, mut rx) = command(Op::Ping);
        requests.start(cmd).expect("frame");
        let (gone, gone_rx) = command(Op::Ping);
        drop(gone_rx);
        assert!(
            requests.start(gone).is_none(),
            "nothing sent for a caller that left"
        );
        requests.fail_all();
        assert!(matches!(rx.try_recv(), Ok(Err(ClientError::Closed))));
    }

    fn event(channel: &str, offset: u64, epoch: &str) -> Event {
        Event {
            channel: channel.into(),
            data: Value::Null,
            id: String::new(),
            ts: 0,
            offset: Some(offset),
            epoch: Some(epoch.into()),
        }
    }

    fn at(offset: u64, epoch: &str) -> StreamPosition {
        StreamPosition {
            offset,
            epoch: epoch.into(),
        }
    }

    #[test]
    fn positions_are_tracked_deduplicated_and_sent_for_matching_patterns() {
        let mut requests = Requests::default();
        assert!(requests.observe(&event("room:1", 1, "e1")));
        assert!(requests.observe(&event("room:1", 2, "e1")));
        assert!(!requests.observe(&event("room:1", 2, "e1")), "duplicate");
        assert!(requests.observe(&event("room:1", 1, "e2")), "new epoch");
        assert!(requests.observe(&event("other:1", 5, "e3")));
        let since = requests.since(&["room:*".into()]);
        assert_eq!(since, BTreeMap::from([("room:1".into(), at(1, "e2"))]));

        // A `subscribed` does not move a known position back or forward in
        // the same epoch, unless told to overwrite (after a resubscribe).
        let positions = BTreeMap::from([("room:1".to_string(), at(9, "e2"))]);
        requests.note_positions(positions.clone(), false);
        assert_eq!(requests.since(&["room:1".into()])["room:1"], at(1, "e2"));
        requests.note_positions(positions, true);
        assert_eq!(requests.since(&["room:1".into()])["room:1"], at(9, "e2"));
    }

    fn call_op() -> (oneshot::Sender<Infallible>, Op) {
        let (waiting, caller) = oneshot::channel();
        let op = Op::Call(CallOp::Call {
            method: "demo.add".into(),
            params: Value::Null,
            deadline: tokio::time::Instant::now() + std::time::Duration::from_secs(5),
            caller,
        });
        (waiting, op)
    }

    #[tokio::test]
    async fn a_call_dropped_in_flight_is_cancelled_and_an_answered_one_is_not() {
        use futures::FutureExt;

        let mut requests = Requests::default();
        let (answered_caller, op) = call_op();
        let (cmd, mut answered_rx) = command(op);
        let answered = sent_id(&requests.start(cmd).expect("frame"));
        let (dropped_caller, op) = call_op();
        let (cmd, dropped_rx) = command(op);
        let dropped = sent_id(&requests.start(cmd).expect("frame"));
        assert!(requests.abandoned().now_or_never().is_none(), "both wait");

        requests.on_reply(ServerMessage::Result {
            id: RequestId::Int(answered),
            result: Value::from(3).into(),
        });
        assert!(matches!(
            answered_rx.try_recv(),
            Ok(Ok(Reply::Call(CallReply::Result(_))))
        ));
        drop(answered_caller);
        drop(answered_rx);
        assert!(
            requests.abandoned().now_or_never().is_none(),
            "an answered call is not cancelled"
        );

        drop(dropped_caller);
        drop(dropped_rx);
        let cancel = requests.abandoned().now_or_never().expect("cancelled");
        let cancel: Value = serde_json::from_str(&cancel).expect("json");
        assert_eq!(
            cancel,
            serde_json::json!({"type": "call:cancel", "id": dropped})
        );
        assert!(requests.pending.is_empty());
    }

    #[test]
    fn abandoned_requests_are_pruned() {
        let mut requests = Requests::default();
        for _ in 0..1000 {
            let (cmd, rx) = command(Op::Ping);
            requests.start(cmd).expect("frame");
            drop(rx);
        }
        assert!(
            requests.pending.len() <= PRUNE_FLOOR,
            "{}",
            requests.pending.len()
        );
    }
}
