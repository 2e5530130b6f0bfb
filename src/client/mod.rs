//! A Rust client for chanhub: connect over WebSocket, authenticate, subscribe
//! by pattern, publish with acknowledgement, and receive events as a
//! [`Stream`]; submit tasks and receive their results; run tasks as a
//! worker; call methods and serve them. It exists so the CLI, the tests,
//! the examples and Rust services all speak the protocol one way, and so
//! none of them has to reimplement reconnecting: when a connection drops
//! (hub restart, slow consumer, network) the client reconnects with
//! jittered backoff, re-authenticates (asking a [`TokenSource::Provider`]
//! for a fresh token), resubscribes every pattern it held, registers its
//! worker and serves its methods again. On channels with
//! history it tracks the offset of every event and resubscribes from there,
//! so missed events arrive (once, in order) before live ones; channels it
//! could not recover are reported by [`Client::unrecovered`].
//!
//! One background task owns the socket; [`Client`] is a cheap-`Clone`
//! handle that talks to it over a bounded channel (the async-nats pattern).
//!
//! ```no_run
//! use chanhub::client::{Client, ClientOptions};
//! use futures::StreamExt;
//!
//! # async fn example() -> Result<(), chanhub::client::ClientError> {
//! let options = ClientOptions::new("ws://127.0.0.1:7070/ws", "<jwt>");
//! let (client, mut events) = Client::connect(options).await?;
//! client.subscribe(&["session:*"]).await?;
//! let ack = client.publish("session:42", serde_json::json!({"hello": 1})).await?;
//! println!("event {} reached {} connections", ack.event_id, ack.delivered);
//! while let Some(event) = events.next().await {
//!     println!("{}: {}", event.channel, event.data);
//! }
//! client.close().await;
//! # Ok(())
//! # }
//! ```
//!
//! Tasks: a submitter calls [`Client::submit`] and reads final states from
//! [`Client::task_results`]; a worker calls [`Client::register`], reads
//! [`Work`] from [`Client::assignments`] and reports with
//! [`Client::progress`], [`Client::complete`] and [`Client::fail`]. See the
//! `tasks` module for the design and `examples/worker.rs`,
//! `examples/submit.rs` for both sides.
//!
//! ```no_run
//! use chanhub::client::{Client, ClientOptions, Work};
//!
//! # async fn worker() -> Result<(), chanhub::client::ClientError> {
//! let options = ClientOptions::new("ws://127.0.0.1:7070/ws", "<worker jwt>");
//! let (client, _events) = Client::connect(options).await?;
//! let mut work = client.assignments().expect("taken once");
//! client.register(&["demo:*"], 4).await?;
//! while let Some(item) = work.next_work().await {
//!     match item {
//!         Work::Assigned(task) => {
//!             client.progress(&task.id, Some(50), None).await?;
//!             client.complete(&task.id, task.payload).await?;
//!         }
//!         // Stop that task / every task held: the hub took them back.
//!         Work::Cancelled { .. } | Work::Lost => {}
//!         Work::Reregistered { .. } | Work::RegistrationRefused { .. } => {}
//!     }
//! }
//! # Ok(())
//! # }
//! ```
//!
//! Calls: a caller awaits [`Client::call`] (with an optional
//! [`Call::timeout`]; dropping the future cancels the call); a server
//! passes an async handler to [`Client::serve`]. See the `calls` module
//! for the design and `examples/demo_worker.rs`.
//!
//! ```no_run
//! use chanhub::client::{CallError, CallRequest, Client, ClientOptions};
//! use serde_json::{Value, json};
//!
//! async fn add(req: CallRequest) -> Result<Value, CallError> {
//!     match (req.params["a"].as_f64(), req.params["b"].as_f64()) {
//!         (Some(a), Some(b)) => Ok(json!({"sum": a + b})),
//!         _ => Err(CallError::new("bad_params", "a and b must be numbers")),
//!     }
//! }
//!
//! # async fn calls() -> Result<(), chanhub::client::ClientError> {
//! let (server, _) = Client::connect(ClientOptions::new("ws://127.0.0.1:7070/ws", "<worker jwt>")).await?;
//! let _serving = server.serve(&["math.*"], 8, add).await?; // unserves on drop
//!
//! let (caller, _) = Client::connect(ClientOptions::new("ws://127.0.0.1:7070/ws", "<jwt>")).await?;
//! let sum = caller.call("math.add", json!({"a": 1, "b": 2})).await?;
//! assert_eq!(sum, json!({"sum": 3.0}));
//! # Ok(())
//! # }
//! ```
//!
//! # Layout
//!
//! - `options` — [`ClientOptions`], [`TokenSource`].
//! - `backoff` — [`Backoff`]: exponential backoff with full jitter.
//! - `types` — events, request results, [`Work`], [`Registration`],
//!   [`ConnectionState`], [`ClientError`].
//! - `handshake` — dial, authenticate, resubscribe, register again.
//! - `connection` — the task that owns the socket and reconnects.
//! - `requests` — request ids, waiting callers, the resubscribe set.
//! - `task_ops` — task requests and the worker registration state.
//! - `tasks` — the task methods of [`Client`].
//! - `call_ops` — call requests and the service (serve registration) state.
//! - `calls` — the call methods of [`Client`], [`Call`], [`Serving`] and
//!   the dispatcher that runs a service's handlers.
//! - `pushes` — unasked messages and the [`TaskResults`] and
//!   [`Assignments`] streams (calls to serve go to the dispatcher).

mod backoff;
mod call_ops;
mod calls;
mod connection;
mod handshake;
mod options;
mod pushes;
pub mod render;
mod requests;
mod task_ops;
mod tasks;
mod types;

/// The call wire types the call methods take and hand over.
pub use crate::protocol::calls::{CallError, CallerInfo};
/// The task wire types the task methods take and return.
pub use crate::protocol::tasks::{Accepted, Assignment, TaskSpec, TaskState, TaskView};
pub use backoff::Backoff;
pub use calls::{CALL_GRACE, Call, CallRequest, Serving};
pub use options::{ClientOptions, TokenProvider, TokenSource};
pub use pushes::{Assignments, TaskResults};
pub use types::{
    AuthInfo, ClientError, ClosedReason, ConnectionState, Event, Published, Registration, Rejected,
    Subscribed, Work,
};

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures::Stream;
use serde_json::Value;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

use connection::Connection;
use handshake::Restore;
use pushes::Inlet;
use requests::{Command, Op, Reply, Requests};

/// Capacity of the channel from handles to the connection task. Requests
/// beyond it wait for room (still bounded by `request_timeout`).
const COMMAND_BUFFER: usize = 256;

/// A handle to one logical connection to a hub, surviving reconnects.
///
/// Cloning is cheap; every clone talks to the same connection task. The
/// connection stays open until [`Client::close`] is called, or every handle,
/// the [`Events`] stream and every [`Serving`] have been dropped.
#[derive(Debug, Clone)]
pub struct Client {
    /// Requests to the connection task.
    commands: mpsc::Sender<Command>,
    /// The task's published state.
    state: watch::Receiver<ConnectionState>,
    /// The last `auth:success`, updated on every reconnect.
    auth: watch::Receiver<AuthInfo>,
    /// Tells the task to close; a token rather than a command so a close is
    /// seen even while the task is disconnected or blocked on a full queue.
    shutdown: CancellationToken,
    /// Bound on every request, including time spent waiting to reconnect.
    request_timeout: Duration,
    /// Timeout of a call that sets none.
    call_timeout: Duration,
    /// `task:result`s, until someone takes them.
    results: Inlet<TaskView>,
    /// Worker items, until someone takes them.
    work: Inlet<Work>,
    /// Channels the last resubscribe could not recover.
    unrecovered: watch::Receiver<Vec<String>>,
}

impl Client {
    /// Connects and authenticates (sends `{"type":"auth","token":...}` as
    /// the first message and waits for `auth:success`).
    ///
    /// Failing to connect or authenticate the first time is returned as an
    /// error; after that the client reconnects by itself.
    pub async fn connect(options: ClientOptions) -> Result<(Client, Events), ClientError> {
        let ready = handshake::establish(&options, Restore::default()).await?;
        let client_id = ready.auth.client_id.clone();
        tracing::info!(client_id = %client_id, "connected to the hub");
        let (commands_tx, commands) = mpsc::channel(COMMAND_BUFFER);
        let (events_tx, events) = mpsc::channel(options.event_buffer.max(1));
        let (results_tx, results) = pushes::channel(options.event_buffer, "task result");
        let (work_tx, work) = pushes::channel(options.event_buffer, "worker message");
        let (state_tx, state) = watch::channel(ConnectionState::Connected { client_id });
        let (auth_tx, auth) = watch::channel(ready.auth);
        let (unrecovered_tx, unrecovered) = watch::channel(Vec::new());
        let shutdown = CancellationToken::new();
        let client = Client {
            commands: commands_tx.clone(),
            state,
            auth,
            shutdown: shutdown.clone(),
            request_timeout: options.request_timeout,
            call_timeout: options.call_timeout,
            results,
            work,
            unrecovered,
        };
        let task = Connection {
            options,
            commands,
            events: events_tx,
            results: results_tx,
            work: work_tx,
            state: state_tx,
            auth: auth_tx,
            unrecovered: unrecovered_tx,
            shutdown,
            requests: Requests::default(),
        };
        tokio::spawn(task.run(ready.ws));
        let events = Events {
            events,
            _keepalive: commands_tx,
        };
        Ok((client, events))
    }

    /// Subscribes to channel patterns (e.g. `session:*`, `task:**`).
    ///
    /// The hub answers per pattern: refused ones (bad grammar, not allowed,
    /// too many) are in [`Subscribed::rejected`] and do not fail the call.
    /// Accepted patterns are resubscribed after every reconnect.
    pub async fn subscribe(&self, patterns: &[&str]) -> Result<Subscribed, ClientError> {
        let op = Op::Subscribe(patterns.iter().map(|p| p.to_string()).collect());
        match self.request(op).await? {
            Reply::Subscribed(subscribed) => Ok(subscribed),
            other => Err(unexpected(other)),
        }
    }

    /// Drops subscriptions (patterns exactly as subscribed); returns the ones
    /// that were held. They are not resubscribed after a reconnect, even if
    /// this call fails.
    pub async fn unsubscribe(&self, patterns: &[&str]) -> Result<Vec<String>, ClientError> {
        let op = Op::Unsubscribe(patterns.iter().map(|p| p.to_string()).collect());
        match self.request(op).await? {
            Reply::Unsubscribed(channels) => Ok(channels),
            other => Err(unexpected(other)),
        }
    }

    /// Publishes `data` on `channel` and waits for the hub's
    /// acknowledgement. A refusal (no permission, bad channel name) is
    /// [`ClientError::Refused`].
    pub async fn publish(&self, channel: &str, data: Value) -> Result<Published, ClientError> {
        let op = Op::Publish {
            channel: channel.to_string(),
            data,
        };
        match self.request(op).await? {
            Reply::Published(published) => Ok(published),
            other => Err(unexpected(other)),
        }
    }

    /// Round-trips an application-level `ping`; returns how long it took.
    /// Every request sent before it has been handled by the hub when it
    /// returns.
    pub async fn ping(&self) -> Result<Duration, ClientError> {
        let started = Instant::now();
        match self.request(Op::Ping).await? {
            Reply::Pong => Ok(started.elapsed()),
            other => Err(unexpected(other)),
        }
    }

    /// The connection state; `wait_for` on it to wait for a reconnect.
    pub fn state(&self) -> watch::Receiver<ConnectionState> {
        self.state.clone()
    }

    /// The history channels (see `proto-docs/history.md`) whose missed
    /// events the last reconnect could not replay (`recovered: false`:
    /// another epoch, or too far behind). Updated on every reconnect, before
    /// the state turns `Connected`; `changed()` on it to be told.
    ///
    /// The client tracks the offset of every event on a history channel and
    /// resubscribes with them after a reconnect, so for the other channels
    /// the events missed while disconnected arrive on [`Events`] (exactly
    /// once, in offset order) before the live ones. For these, re-fetch
    /// their state from the source of truth, then apply live events.
    pub fn unrecovered(&self) -> watch::Receiver<Vec<String>> {
        self.unrecovered.clone()
    }

    /// What the hub said when it last accepted the token.
    pub fn auth(&self) -> AuthInfo {
        self.auth.borrow().clone()
    }

    /// Sends a normal close (1000), stops reconnecting and ends [`Events`]
    /// (after the events already queued). Returns once the client is
    /// [`ConnectionState::Closed`]; requests after it fail with
    /// [`ClientError::Closed`].
    pub async fn close(&self) {
        self.shutdown.cancel();
        let mut state = self.state.clone();
        // An error means the task is gone, which is closed too.
        let _ = state
            .wait_for(|s| matches!(s, ConnectionState::Closed { .. }))
            .await;
    }

    /// Queues `op` for the connection task and waits for its answer, all
    /// within `request_timeout`.
    async fn request(&self, op: Op) -> Result<Reply, ClientError> {
        tokio::time::timeout(self.request_timeout, self.exchange(op))
            .await
            .map_err(|_| ClientError::Timeout)?
    }

    /// Queues `op` for the connection task and waits for its answer, with
    /// no bound of its own.
    async fn exchange(&self, op: Op) -> Result<Reply, ClientError> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(Command { op, reply })
            .await
            .map_err(|_| ClientError::Closed)?;
        // A dropped sender means the connection task dropped the request.
        answer.await.map_err(|_| ClientError::Closed)?
    }
}

/// A reply of the wrong kind; the request map makes this unreachable in
/// practice, but it is an error, not a panic.
fn unexpected(reply: Reply) -> ClientError {
    ClientError::Protocol(format!("unexpected reply {reply:?}"))
}

/// The events of every subscription of a [`Client`], in the order the hub
/// sent them. A [`Stream`]; ends when the client is closed.
///
/// The queue behind it is bounded ([`ClientOptions::event_buffer`]); while
/// it is full the client stops reading the socket.
#[derive(Debug)]
pub struct Events {
    /// Events from the connection task.
    events: mpsc::Receiver<Event>,
    /// Keeps the connection open while the stream is alive, even if every
    /// [`Client`] handle was dropped.
    _keepalive: mpsc::Sender<Command>,
}

impl Events {
    /// The next event; `None` once the client is closed.
    pub async fn next_event(&mut self) -> Option<Event> {
        self.events.recv().await
    }
}

impl Stream for Events {
    type Item = Event;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        self.get_mut().events.poll_recv(cx)
    }
}
