//! The call methods of [`Client`]: calling a method that another client
//! serves, and serving methods with an async handler.
//!
//! # Design
//!
//! A call is a request like `publish`, answered by `result` or `error`, with
//! two differences. Its bound is the call's own timeout, sent to the hub as
//! `timeoutMs`, so the hub's `timeout` answer normally comes first and the
//! local timer ([`CALL_GRACE`] later) only guards against a hub that went
//! silent. And dropping the call's future before the answer cancels it:
//! the future holds one end of a oneshot channel whose other end the
//! connection task watches, and sends `call:cancel` when it closes while
//! the call is in flight. A call in flight when the connection drops fails
//! with [`ClientError::Closed`] and is never sent again (calls are
//! at-most-once).
//!
//! Serving: [`Client::serve`] spawns a dispatcher task that owns the
//! service. The connection task hands it `call:request` and
//! `call:cancelled` (and a notice when the connection drops) through a
//! bounded inbox; the dispatcher runs each request as its own task, at most
//! `concurrency` at once (the hub never sends more; a request that arrives
//! while a finished handler has not been reaped yet waits for it), cancels
//! the one a `call:cancelled` names, and each handler task sends its
//! `call:reply` itself, so the dispatcher never waits on the connection.
//! Dropping or closing the [`Serving`] handle makes the dispatcher send
//! `unserve` and end once its running calls have. The service is kept like
//! a subscription: after a reconnect the client serves it again before it
//! reports `Connected`.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::future::{Future, IntoFuture};
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::FutureExt;
use futures::future::BoxFuture;
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};
use tokio::task::{AbortHandle, JoinHandle, JoinSet};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::call_ops::{CallOp, CallReply, Served, ServiceSpec};
use super::requests::{Op, Reply};
use super::types::ClientError;
use super::{Client, unexpected};
use crate::protocol::calls::{CallError, CallerInfo};
use crate::protocol::now_ms;

/// How long after its deadline a call waits for the hub's answer (the
/// hub's own `timeout` is due at the deadline) before giving up locally
/// with [`ClientError::Timeout`].
pub const CALL_GRACE: Duration = Duration::from_secs(2);

/// The code a handler that panicked answers with.
const PANICKED: &str = "handler_panicked";

/// The id of the next service (unique in the process).
static NEXT_SERVICE: AtomicU64 = AtomicU64::new(1);

impl Client {
    /// Calls `method` (permission `call`) with `params` and waits for the
    /// result of the client that serves it. Await it, after setting a
    /// timeout if the default ([`ClientOptions::call_timeout`](super::ClientOptions::call_timeout))
    /// does not fit:
    ///
    /// ```no_run
    /// # async fn example(client: chanhub::client::Client) -> Result<(), chanhub::client::ClientError> {
    /// use std::time::Duration;
    /// let sum = client
    ///     .call("demo.add", serde_json::json!({"a": 1, "b": 2}))
    ///     .timeout(Duration::from_secs(5))
    ///     .await?;
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// An error answer of the server is [`ClientError::CallFailed`] with
    /// its error object; the hub's refusals are [`ClientError::Refused`]
    /// with `no_server`, `timeout`, `server_gone`, `busy`, `forbidden`
    /// (see `proto-docs/calls.md`). Dropping the future before it is
    /// answered cancels the call (`call:cancel`: its server is told to
    /// stop). A call in flight when the connection drops fails with
    /// [`ClientError::Closed`]; it is not sent again after the reconnect,
    /// as the server may have run it.
    pub fn call(&self, method: &str, params: Value) -> Call<'_> {
        Call {
            client: self,
            method: method.to_string(),
            params,
            timeout: self.call_timeout,
        }
    }

    /// Serves calls of the methods matching `methods` (patterns in the
    /// channel grammar, e.g. `node.*`; permission `serve`), running
    /// `handler` for each, at most `concurrency` at once. Returns once the
    /// hub serves them (calls may reach `handler` before that).
    ///
    /// The handler gets a [`CallRequest`] and answers with a result or a
    /// [`CallError`], which the caller receives as
    /// [`ClientError::CallFailed`]. When the hub cancels a call (its
    /// caller cancelled or left, its deadline passed) or the connection
    /// drops (the hub ends its calls with `server_gone`), the handler's
    /// future is dropped and [`CallRequest::cancelled`] fires, for work it
    /// handed elsewhere. A handler that panics answers
    /// `handler_panicked`.
    ///
    /// A client serves one set of methods at a time (one handler may
    /// dispatch on [`CallRequest::method`]): another `serve` before the
    /// first [`Serving`] is closed is refused
    /// ([`ErrorCode::BadRequest`](crate::error::ErrorCode::BadRequest)).
    /// After a reconnect the client serves them again by itself.
    pub async fn serve<F, Fut>(
        &self,
        methods: &[&str],
        concurrency: u32,
        handler: F,
    ) -> Result<Serving, ClientError>
    where
        F: Fn(CallRequest) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Value, CallError>> + Send + 'static,
    {
        let spec = ServiceSpec {
            id: NEXT_SERVICE.fetch_add(1, Ordering::Relaxed),
            methods: methods.iter().map(|m| m.to_string()).collect(),
            concurrency,
        };
        // The hub may route calls before it answers `serving`, so the
        // dispatcher runs from the start. If the `serve` fails, dropping
        // `serving` ends it.
        let (inbox_tx, inbox) = mpsc::channel(inbox_capacity(concurrency));
        let stop = CancellationToken::new();
        let dispatcher = Dispatcher {
            client: self.clone(),
            handler: Arc::new(handler),
            concurrency: concurrency.max(1) as usize,
            running: JoinSet::new(),
            calls: HashMap::new(),
            tasks: HashMap::new(),
            waiting: VecDeque::new(),
        };
        let task = tokio::spawn(dispatcher.run(spec.clone(), inbox, stop.clone()));
        let mut serving = Serving {
            methods: Vec::new(),
            stop,
            task: Some(task),
        };
        let op = Op::Call(CallOp::Serve {
            spec,
            inbox: inbox_tx,
        });
        match self.request(op).await? {
            Reply::Call(CallReply::Serving(methods)) => {
                serving.methods = methods;
                Ok(serving)
            }
            other => Err(unexpected(other)),
        }
    }
}

/// A call of [`Client::call`] not yet sent: set its timeout, then `.await`
/// it.
#[derive(Debug)]
#[must_use = "a call does nothing until it is awaited"]
pub struct Call<'a> {
    client: &'a Client,
    method: String,
    params: Value,
    timeout: Duration,
}

impl Call<'_> {
    /// How long to wait for the result (sent as `timeoutMs`; the hub caps
    /// it at `calls.max_timeout`). Replaces
    /// [`ClientOptions::call_timeout`](super::ClientOptions::call_timeout).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    async fn run(self) -> Result<Value, ClientError> {
        let Call {
            client,
            method,
            params,
            timeout,
        } = self;
        // Held until this future ends; its drop tells the connection task
        // that nobody waits for the call any more.
        let (_waiting, caller) = oneshot::channel::<Infallible>();
        let op = Op::Call(CallOp::Call {
            method,
            params,
            deadline: Instant::now() + timeout,
            caller,
        });
        let reply = tokio::time::timeout(timeout.saturating_add(CALL_GRACE), client.exchange(op))
            .await
            .map_err(|_| ClientError::Timeout)??;
        match reply {
            Reply::Call(CallReply::Result(result)) => Ok(result),
            other => Err(unexpected(other)),
        }
    }
}

impl<'a> IntoFuture for Call<'a> {
    type Output = Result<Value, ClientError>;
    type IntoFuture = BoxFuture<'a, Result<Value, ClientError>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(self.run())
    }
}

/// One call for a [`Client::serve`] handler.
#[derive(Debug, Clone)]
pub struct CallRequest {
    /// The hub's id for the call.
    pub call_id: String,
    /// The method called (one the service's patterns match).
    pub method: String,
    /// The caller's params (`null` when it sent none).
    pub params: Value,
    /// Who called, as the hub verified it.
    pub caller: CallerInfo,
    /// When the caller stops waiting, ms since the Unix epoch.
    pub deadline: u64,
    /// Fires when the call is cancelled (the handler's future is dropped
    /// then too); for work the handler hands to other tasks or threads.
    pub cancelled: CancellationToken,
}

impl CallRequest {
    /// Time left until [`deadline`](Self::deadline).
    pub fn remaining(&self) -> Duration {
        Duration::from_millis(self.deadline.saturating_sub(now_ms()))
    }
}

/// A service started by [`Client::serve`]. Dropping it unserves in the
/// background; [`close`](Self::close) does it and waits. Either way the
/// calls it runs finish. It keeps the connection open, like a [`Client`].
#[derive(Debug)]
pub struct Serving {
    /// What the hub said it serves.
    methods: Vec<String>,
    /// Tells the dispatcher to unserve.
    stop: CancellationToken,
    /// The dispatcher; its output is the `unserve` outcome.
    task: Option<JoinHandle<Result<(), ClientError>>>,
}

impl Serving {
    /// Every pattern the hub said this connection serves.
    pub fn methods(&self) -> &[String] {
        &self.methods
    }

    /// Unserves (`unserve`), then waits for the calls still running to
    /// finish (each is bounded by its deadline). An error means the
    /// connection dropped or the client closed first, which ends the
    /// service as well.
    pub async fn close(mut self) -> Result<(), ClientError> {
        self.stop.cancel();
        match self.task.take() {
            Some(task) => task.await.map_err(|_| ClientError::Closed)?,
            None => Ok(()),
        }
    }
}

impl Drop for Serving {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Capacity of a service's inbox: the hub sends at most `concurrency`
/// requests in flight, and their cancellations; the dispatcher drains it
/// without waiting on anything else.
fn inbox_capacity(concurrency: u32) -> usize {
    (concurrency as usize).clamp(1, 1024) * 2 + 1
}

/// A call being handled.
struct Running {
    cancelled: CancellationToken,
    abort: AbortHandle,
}

/// The task that runs a service: its calls, their cancellation, and the
/// `unserve` at the end.
struct Dispatcher<F> {
    /// Sends the `call:reply`s and the `unserve`.
    client: Client,
    handler: Arc<F>,
    /// Handlers run at once.
    concurrency: usize,
    /// The handler tasks, one per call.
    running: JoinSet<()>,
    /// Running calls by call id.
    calls: HashMap<String, Running>,
    /// The call id of each handler task, to forget it when it ends.
    tasks: HashMap<tokio::task::Id, String>,
    /// Requests that arrived while `concurrency` handlers were running (a
    /// handler has replied, so the hub sent the next call, but its task
    /// has not been reaped yet). Bounded by the hub's concurrency.
    waiting: VecDeque<CallRequest>,
}

impl<F, Fut> Dispatcher<F>
where
    F: Fn(CallRequest) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Value, CallError>> + Send + 'static,
{
    /// Runs until the service is unserved and its calls are done, or the
    /// connection task is gone. Returns the `unserve` outcome.
    async fn run(
        mut self,
        spec: ServiceSpec,
        mut inbox: mpsc::Receiver<Served>,
        stop: CancellationToken,
    ) -> Result<(), ClientError> {
        let mut unserve: Option<BoxFuture<'static, Result<(), ClientError>>> = None;
        let mut unserved: Option<Result<(), ClientError>> = None;
        loop {
            if let Some(outcome) = &unserved {
                if self.running.is_empty() && self.waiting.is_empty() {
                    return outcome.clone();
                }
            }
            tokio::select! {
                biased;
                _ = stop.cancelled(), if unserve.is_none() && unserved.is_none() => {
                    let client = self.client.clone();
                    let op = Op::Call(CallOp::Unserve(spec.clone()));
                    unserve = Some(Box::pin(async move {
                        match client.request(op).await? {
                            Reply::Call(CallReply::Unserved) => Ok(()),
                            other => Err(unexpected(other)),
                        }
                    }));
                }
                outcome = async {
                    match unserve.as_mut() {
                        Some(request) => request.await,
                        None => std::future::pending().await,
                    }
                } => {
                    unserve = None;
                    unserved = Some(outcome);
                }
                item = inbox.recv() => match item {
                    Some(item) => self.on_item(item),
                    None => {
                        // The connection task is gone (closed client) or
                        // the hub refused the service after a reconnect.
                        self.stop_all();
                        return unserved.unwrap_or(Err(ClientError::Closed));
                    }
                },
                Some(joined) = self.running.join_next_with_id() => {
                    let id = match joined {
                        Ok((id, ())) => id,
                        Err(err) => err.id(),
                    };
                    if let Some(call_id) = self.tasks.remove(&id) {
                        self.calls.remove(&call_id);
                    }
                    self.start_waiting();
                }
            }
        }
    }

    fn on_item(&mut self, item: Served) {
        match item {
            Served::Request(request) => {
                self.waiting.push_back(request);
                self.start_waiting();
            }
            Served::Cancelled(call_id) => match self.calls.remove(&call_id) {
                Some(running) => {
                    running.cancelled.cancel();
                    running.abort.abort();
                }
                None => self.waiting.retain(|r| r.call_id != call_id),
            },
            Served::Lost => self.stop_all(),
        }
    }

    /// Starts waiting requests while there is room.
    fn start_waiting(&mut self) {
        while self.running.len() < self.concurrency {
            let Some(request) = self.waiting.pop_front() else {
                return;
            };
            self.start(request);
        }
    }

    fn start(&mut self, request: CallRequest) {
        let call_id = request.call_id.clone();
        let cancelled = request.cancelled.clone();
        let handler = Arc::clone(&self.handler);
        let client = self.client.clone();
        let reply_to = call_id.clone();
        let abort = self.running.spawn(async move {
            let handled = AssertUnwindSafe(async move { handler(request).await });
            let outcome = handled.catch_unwind().await.unwrap_or_else(|_| {
                tracing::error!(call_id = %reply_to, "a call handler panicked");
                Err(CallError::new(PANICKED, "the call's handler panicked"))
            });
            let op = Op::Call(CallOp::Reply {
                call_id: reply_to,
                outcome,
            });
            // An error means the client is closed; the hub has ended the
            // call then (`server_gone`).
            let _ = client.request(op).await;
        });
        self.tasks.insert(abort.id(), call_id.clone());
        self.calls.insert(call_id, Running { cancelled, abort });
    }

    /// Cancels every call: the connection that carried them is gone.
    fn stop_all(&mut self) {
        for (_, running) in self.calls.drain() {
            running.cancelled.cancel();
        }
        self.running.abort_all();
        self.waiting.clear();
    }
}
