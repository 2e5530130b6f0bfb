//! The connection task: the one place that owns the socket. It reads frames
//! (which also answers the hub's pings), writes the requests that
//! [`Client`](super::Client) handles queue on a bounded channel, routes
//! answers, events, task and call messages, cancels the calls whose caller
//! gave up, and when the connection drops, reconnects with backoff,
//! re-authenticates, resubscribes, registers the worker and serves the
//! service again.

use futures::{SinkExt, StreamExt};
use tokio::sync::{mpsc, watch};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_util::sync::CancellationToken;

use super::ClientOptions;
use super::call_ops::Served;
use super::handshake::{self, CLOSE_TIMEOUT, Ready, Restore, Ws};
use super::pushes::{Incoming, Outlet, Push};
use super::requests::{Command, Requests};
use super::types::{AuthInfo, ClientError, ClosedReason, ConnectionState, Event, Rejected, Work};
use crate::protocol::ServerMessage;
use crate::protocol::tasks::TaskView;

/// Most queued requests written before one flush.
const WRITE_BATCH: usize = 64;

/// Why the connected phase ended.
enum Stop {
    /// The user closed the client, or dropped every handle.
    Requested,
    /// The connection dropped without the user asking.
    Lost {
        /// The hub's close code, if it sent a close frame.
        code: Option<u16>,
        /// The close text or I/O error.
        reason: String,
    },
}

impl Stop {
    fn io(err: impl std::fmt::Display) -> Stop {
        Stop::Lost {
            code: None,
            reason: err.to_string(),
        }
    }
}

/// The state the task owns. Built by [`Client::connect`](super::Client::connect)
/// after the first handshake succeeded.
pub(crate) struct Connection {
    /// Where and how to (re)connect.
    pub(crate) options: ClientOptions,
    /// Requests from the handles. Not read while disconnected, so requests
    /// made then wait in the channel (bounded) until a connection exists.
    pub(crate) commands: mpsc::Receiver<Command>,
    /// Events to the user; awaited when full, which stops the task reading
    /// the socket (backpressure up to the hub).
    pub(crate) events: mpsc::Sender<Event>,
    /// `task:result`s to the user.
    pub(crate) results: Outlet<TaskView>,
    /// Assignments, cancellations and reconnect notices to a worker.
    pub(crate) work: Outlet<Work>,
    /// Published connection state.
    pub(crate) state: watch::Sender<ConnectionState>,
    /// The last `auth:success`.
    pub(crate) auth: watch::Sender<AuthInfo>,
    /// Channels the last resubscribe could not recover.
    pub(crate) unrecovered: watch::Sender<Vec<String>>,
    /// Cancelled by [`Client::close`](super::Client::close).
    pub(crate) shutdown: CancellationToken,
    /// Pending requests, the resubscribe set, the worker registration and
    /// the service.
    pub(crate) requests: Requests,
}

impl Connection {
    /// Runs until the user closes the client or the client gives up.
    pub(crate) async fn run(mut self, mut ws: Ws) {
        let reason = loop {
            let stop = self.serve(&mut ws).await;
            let lost = self.requests.connection_lost();
            match stop {
                Stop::Requested => {
                    close(&mut ws).await;
                    break ClosedReason::Requested;
                }
                Stop::Lost { code, reason } => {
                    tracing::warn!(?code, %reason, "connection to the hub lost");
                    if lost.was_worker {
                        // The hub requeues what this worker held; say so at
                        // once, so work on those tasks stops now. A close
                        // during the wait is seen by `reconnect`.
                        self.work.deliver(Work::Lost, &self.shutdown).await;
                    }
                    if let Some(service) = lost.service {
                        // The hub ended the calls it ran (`server_gone`).
                        tokio::select! {
                            biased;
                            _ = self.shutdown.cancelled() => {}
                            _ = service.send(Served::Lost) => {}
                        }
                    }
                    if !self.options.reconnect {
                        break ClosedReason::ConnectionLost { code, reason };
                    }
                }
            }
            // Release the dead socket now rather than after the backoff.
            drop(ws);
            match self.reconnect().await {
                Ok(fresh) => ws = fresh,
                Err(reason) => break reason,
            }
        };
        self.finish(reason);
    }

    /// Ends the task: the event stream ends, then the state says why.
    fn finish(self, reason: ClosedReason) {
        let Connection {
            commands,
            events,
            results,
            work,
            state,
            ..
        } = self;
        // Queued requests are dropped here, which answers them `Closed`.
        drop(commands);
        drop(events);
        drop(results);
        drop(work);
        tracing::debug!(?reason, "client closed");
        state.send_replace(ConnectionState::Closed { reason });
    }

    /// The connected phase: read frames, write requests.
    async fn serve(&mut self, ws: &mut Ws) -> Stop {
        let shutdown = self.shutdown.clone();
        loop {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => return Stop::Requested,
                frame = ws.next() => match frame {
                    Some(Ok(Message::Text(text))) => {
                        if let Err(stop) = self.on_text(text.as_str()).await {
                            return stop;
                        }
                    }
                    Some(Ok(Message::Close(frame))) => {
                        let stop = Stop::Lost {
                            code: frame.as_ref().map(|f| u16::from(f.code)),
                            reason: handshake::describe_close(frame.as_ref()),
                        };
                        // Completes the close handshake the hub started.
                        let _ = tokio::time::timeout(CLOSE_TIMEOUT, handshake::drain(ws)).await;
                        return stop;
                    }
                    Some(Ok(_)) => {}
                    Some(Err(err)) => return Stop::io(err),
                    None => return Stop::io("the connection ended"),
                },
                cancel = self.requests.abandoned() => {
                    if let Err(err) = ws.send(Message::text(cancel)).await {
                        return Stop::io(err);
                    }
                }
                command = self.commands.recv() => {
                    let Some(command) = command else {
                        // Every Client handle and the Events are gone.
                        return Stop::Requested;
                    };
                    tokio::select! {
                        biased;
                        _ = shutdown.cancelled() => return Stop::Requested,
                        written = self.write(ws, command) => {
                            if let Err(err) = written {
                                return Stop::io(err);
                            }
                        }
                    }
                }
            }
        }
    }

    /// Writes `first` and whatever other requests are already queued, then
    /// flushes once.
    async fn write(
        &mut self,
        ws: &mut Ws,
        first: Command,
    ) -> Result<(), tokio_tungstenite::tungstenite::Error> {
        let mut next = Some(first);
        let mut written = 0;
        while let Some(command) = next.take() {
            if let Some(text) = self.requests.start(command) {
                ws.feed(Message::text(text)).await?;
            }
            written += 1;
            if written < WRITE_BATCH {
                next = self.commands.try_recv().ok();
            }
        }
        ws.flush().await
    }

    /// Handles one text frame from the hub.
    async fn on_text(&mut self, text: &str) -> Result<(), Stop> {
        let msg = match serde_json::from_str::<ServerMessage>(text) {
            Ok(msg) => msg,
            Err(err) => {
                tracing::warn!(error = %err, "ignoring an unreadable message from the hub");
                return Ok(());
            }
        };
        match Push::sort(msg) {
            Incoming::Push(push) => self.deliver(push).await,
            Incoming::Other(
                msg @ (ServerMessage::AuthSuccess { .. }
                | ServerMessage::AuthFailed { .. }
                | ServerMessage::AuthRefreshed { .. }),
            ) => {
                tracing::debug!(msg = %msg.to_json(), "ignoring an unrequested auth message");
                Ok(())
            }
            Incoming::Other(reply) => {
                self.requests.on_reply(reply);
                Ok(())
            }
        }
    }

    /// Hands a push to the user, waiting while its queue is full. An event
    /// on a history channel at or before the position already seen is a
    /// duplicate and is dropped.
    async fn deliver(&mut self, push: Push) -> Result<(), Stop> {
        let delivered = match push {
            Push::Event(event) if !self.requests.observe(&event) => {
                tracing::debug!(channel = %event.channel, offset = ?event.offset,
                    "dropping an event already delivered");
                true
            }
            Push::Event(event) => tokio::select! {
                biased;
                _ = self.shutdown.cancelled() => false,
                // An error means the Events stream was dropped: nobody
                // wants events any more, so they are discarded.
                _ = self.events.send(event) => true,
            },
            Push::Work(work) => self.work.deliver(work, &self.shutdown).await,
            Push::Result(task) => self.results.deliver(task, &self.shutdown).await,
            Push::Serve(item) => match self.requests.serve.inbox() {
                Some(service) => tokio::select! {
                    biased;
                    _ = self.shutdown.cancelled() => false,
                    // An error means the service just ended.
                    _ = service.send(item) => true,
                },
                None => {
                    tracing::debug!(?item, "a call message for no service; ignoring");
                    true
                }
            },
        };
        if delivered {
            Ok(())
        } else {
            Err(Stop::Requested)
        }
    }

    /// Reconnects with backoff until it succeeds, the user closes, or the
    /// hub refuses a token that cannot change.
    async fn reconnect(&mut self) -> Result<Ws, ClosedReason> {
        let mut attempt: u32 = 0;
        loop {
            attempt = attempt.saturating_add(1);
            self.state
                .send_replace(ConnectionState::Reconnecting { attempt });
            let delay = self.options.backoff.delay(attempt - 1);
            tracing::debug!(attempt, ?delay, "reconnecting after backoff");
            tokio::select! {
                biased;
                _ = self.shutdown.cancelled() => return Err(ClosedReason::Requested),
                _ = tokio::time::sleep(delay) => {}
            }
            if self.commands.is_closed() {
                // Every handle is gone; nobody would use the connection.
                return Err(ClosedReason::Requested);
            }
            self.state.send_replace(ConnectionState::Connecting);
            let patterns = self.requests.subscriptions();
            let restore = Restore {
                since: self.requests.since(&patterns),
                patterns,
                registration: self.requests.worker.registration(),
                service: self.requests.serve.restore(),
            };
            let result = tokio::select! {
                biased;
                _ = self.shutdown.cancelled() => return Err(ClosedReason::Requested),
                result = handshake::establish(&self.options, restore) => result,
            };
            match result {
                Ok(ready) => return Ok(self.resume(ready, attempt).await),
                Err(ClientError::AuthFailed { reason, message })
                    if !self.options.token.may_change() =>
                {
                    tracing::error!(reason = reason.code(), %message,
                        "the hub refused the token on reconnect; giving up");
                    return Err(ClosedReason::AuthFailed { reason, message });
                }
                Err(err) => tracing::warn!(attempt, error = %err, "reconnect attempt failed"),
            }
        }
    }

    /// Takes a fresh connection into use and reports it `Connected`.
    async fn resume(&mut self, ready: Ready, attempt: u32) -> Ws {
        let Ready {
            ws,
            auth,
            rejected,
            recovered,
            mut positions,
            registered,
            served,
            early,
        } = ready;
        log_rejected(&rejected);
        self.requests.forget(&rejected);
        // A recovered channel's position advances with the replayed events
        // in `early` and after; taking `positions` for it now would make
        // them look like duplicates.
        positions.retain(|channel, _| recovered.get(channel) != Some(&true));
        self.requests.note_positions(positions, true);
        let unrecovered: Vec<String> = recovered
            .into_iter()
            .filter(|(_, ok)| !ok)
            .map(|(channel, _)| channel)
            .collect();
        if !unrecovered.is_empty() {
            tracing::warn!(channels = ?unrecovered,
                "missed events could not be recovered; their state must be re-fetched");
        }
        self.unrecovered.send_replace(unrecovered);
        let notice = registered.map(|registered| match registered {
            Ok(worker_id) => {
                tracing::info!(worker_id = %worker_id, "registered again as a worker");
                Work::Reregistered { worker_id }
            }
            Err(error) => {
                tracing::warn!(%error, "the hub refused to register this worker again");
                self.requests.worker.forget();
                Work::RegistrationRefused { error }
            }
        });
        match served {
            Some(Ok(methods)) => tracing::info!(?methods, "serving again"),
            Some(Err(error)) => {
                // Its dispatcher ends; `Serving::close` reports it.
                tracing::warn!(%error, "the hub refused to serve this client's methods again");
                self.requests.serve.forget();
            }
            None => {}
        }
        let client_id = auth.client_id.clone();
        tracing::info!(attempt, client_id = %client_id, "reconnected to the hub");
        self.auth.send_replace(auth);
        self.state
            .send_replace(ConnectionState::Connected { client_id });
        // The notice goes first: assignments in `early` are for the new
        // registration.
        let pushes = notice.map(Push::Work).into_iter().chain(early);
        for push in pushes {
            if self.deliver(push).await.is_err() {
                // Closing: the serve loop sees the cancellation at once.
                break;
            }
        }
        ws
    }
}

fn log_rejected(rejected: &[Rejected]) {
    for r in rejected {
        tracing::warn!(pattern = %r.channel, code = ?r.code, message = %r.message,
            "the hub refused a pattern on resubscribe; dropping it");
    }
}

/// Sends a normal close and waits (bounded) for the hub's answer.
async fn close(ws: &mut Ws) {
    let frame = CloseFrame {
        code: CloseCode::Normal,
        reason: "".into(),
    };
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
        if ws.close(Some(frame)).await.is_ok() {
            handshake::drain(ws).await;
        }
    })
    .await;
}
