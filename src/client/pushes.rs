//! Messages the hub sends unasked (events, task assignments and
//! cancellations, task results, calls to serve), and the streams that hand
//! them to the user. Calls go to the service's dispatcher instead (see the
//! `calls` module).
//!
//! Events go to [`Events`](super::Events), returned by
//! [`Client::connect`](super::Client::connect). Task results and worker
//! items each have their own stream, created at connect time and taken once
//! from any handle ([`Client::task_results`](super::Client::task_results),
//! [`Client::assignments`](super::Client::assignments)). Until it is taken,
//! a stream buffers up to [`ClientOptions::event_buffer`](super::ClientOptions::event_buffer)
//! items and then drops (and logs) further ones, so a client that never asks
//! for results cannot stall its connection; once taken, a full stream holds
//! up the connection like a full [`Events`](super::Events) does.

use std::fmt;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use futures::Stream;
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TrySendError;
use tokio_util::sync::CancellationToken;

use super::call_ops::Served;
use super::calls::CallRequest;
use super::types::{Event, Work};
use crate::protocol::ServerMessage;
use crate::protocol::tasks::TaskView;

/// A message the hub sent without being asked.
#[derive(Debug)]
pub(crate) enum Push {
    /// An event on a subscribed channel.
    Event(Event),
    /// `task:assign` or `task:cancel`, for a worker.
    Work(Work),
    /// `task:result`, for the submitter.
    Result(TaskView),
    /// `call:request` or `call:cancelled`, for the service.
    Serve(Served),
}

/// A message from the hub, sorted: a push, or anything else (answers,
/// auth messages).
pub(crate) enum Incoming {
    /// An unasked message for one of the streams.
    Push(Push),
    /// Anything else.
    Other(ServerMessage),
}

impl Push {
    /// Sorts a message from the hub.
    pub(crate) fn sort(msg: ServerMessage) -> Incoming {
        Incoming::Push(match msg {
            ServerMessage::Event {
                channel,
                data,
                id,
                ts,
                offset,
                epoch,
            } => Push::Event(Event {
                channel,
                data,
                id,
                ts,
                offset,
                epoch,
            }),
            ServerMessage::TaskAssign { task } => Push::Work(Work::Assigned(task)),
            ServerMessage::TaskCancel { task_id, reason } => {
                Push::Work(Work::Cancelled { task_id, reason })
            }
            ServerMessage::TaskResult { task } => Push::Result(task),
            ServerMessage::CallRequest {
                call_id,
                method,
                params,
                caller,
                deadline,
            } => Push::Serve(Served::Request(CallRequest {
                call_id,
                method,
                params: params.to_value(),
                caller,
                deadline,
                cancelled: CancellationToken::new(),
            })),
            ServerMessage::CallCancelled { call_id } => Push::Serve(Served::Cancelled(call_id)),
            other => return Incoming::Other(other),
        })
    }
}

/// A take-once stream's receiving end, shared by every [`Client`](super::Client) handle.
pub(crate) struct Inlet<T> {
    /// `None` once taken.
    rx: Arc<Mutex<Option<mpsc::Receiver<T>>>>,
    /// Set when taken, so the connection task knows it may wait for room.
    taken: Arc<AtomicBool>,
}

impl<T> Clone for Inlet<T> {
    fn clone(&self) -> Self {
        Inlet {
            rx: Arc::clone(&self.rx),
            taken: Arc::clone(&self.taken),
        }
    }
}

impl<T> fmt::Debug for Inlet<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Inlet")
            .field("taken", &self.taken.load(Ordering::Relaxed))
            .finish()
    }
}

impl<T> Inlet<T> {
    /// The receiver, the first time only.
    pub(crate) fn take(&self) -> Option<mpsc::Receiver<T>> {
        // A std mutex: nothing awaits while it is held. A poisoned lock
        // still holds a valid Option.
        let mut slot = self.rx.lock().unwrap_or_else(|p| p.into_inner());
        let rx = slot.take();
        if rx.is_some() {
            self.taken.store(true, Ordering::Release);
        }
        rx
    }
}

/// The connection task's sending end of a take-once stream.
pub(crate) struct Outlet<T> {
    /// Where items go.
    tx: mpsc::Sender<T>,
    /// Whether someone took the receiver.
    taken: Arc<AtomicBool>,
    /// What the items are, for the log line when one is dropped.
    what: &'static str,
}

/// A take-once stream of `capacity` (at least 1) items of kind `what`.
pub(crate) fn channel<T>(capacity: usize, what: &'static str) -> (Outlet<T>, Inlet<T>) {
    let (tx, rx) = mpsc::channel(capacity.max(1));
    let taken = Arc::new(AtomicBool::new(false));
    let outlet = Outlet {
        tx,
        taken: Arc::clone(&taken),
        what,
    };
    let inlet = Inlet {
        rx: Arc::new(Mutex::new(Some(rx))),
        taken,
    };
    (outlet, inlet)
}

impl<T> Outlet<T> {
    /// Hands `item` over: waits for room if the stream was taken, buffers
    /// or drops it (logged) if not. Items for a dropped stream are
    /// discarded: nobody wants them. Returns false if `shutdown` fired
    /// while waiting.
    pub(crate) async fn deliver(&self, item: T, shutdown: &CancellationToken) -> bool {
        if self.taken.load(Ordering::Acquire) {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => return false,
                _ = self.tx.send(item) => {}
            }
            return true;
        }
        if let Err(TrySendError::Full(_)) = self.tx.try_send(item) {
            tracing::warn!(
                what = self.what,
                "dropping a message: its stream was never taken from the client and its buffer is full"
            );
        }
        true
    }
}

/// The final state of every task this client submitted (`task:result`), in
/// the order the hub reported them. Take it with
/// [`Client::task_results`](super::Client::task_results).
///
/// A result is pushed to the connection that submitted the task; results
/// of tasks submitted on a connection that has since dropped do not arrive
/// here (watch the `task:<id>` channel or `GET /api/tasks/:id` for those).
/// Ends when the client is closed.
#[derive(Debug)]
pub struct TaskResults {
    /// Results from the connection task.
    pub(crate) rx: mpsc::Receiver<TaskView>,
}

impl TaskResults {
    /// The next result; `None` once the client is closed.
    pub async fn next_result(&mut self) -> Option<TaskView> {
        self.rx.recv().await
    }
}

impl Stream for TaskResults {
    type Item = TaskView;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<TaskView>> {
        self.get_mut().rx.poll_recv(cx)
    }
}

/// A worker's assignments, cancellations and reconnect notices, in the
/// order they happened. Take it with
/// [`Client::assignments`](super::Client::assignments). Ends when the
/// client is closed.
#[derive(Debug)]
pub struct Assignments {
    /// Items from the connection task.
    pub(crate) rx: mpsc::Receiver<Work>,
}

impl Assignments {
    /// The next item; `None` once the client is closed.
    pub async fn next_work(&mut self) -> Option<Work> {
        self.rx.recv().await
    }
}

impl Stream for Assignments {
    type Item = Work;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Work>> {
        self.get_mut().rx.poll_recv(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn untaken_streams_buffer_then_drop_instead_of_blocking() {
        let (outlet, inlet) = channel::<u32>(2, "test");
        let shutdown = CancellationToken::new();
        for n in 0..5 {
            assert!(outlet.deliver(n, &shutdown).await, "never blocks");
        }
        let mut rx = inlet.take().expect("first take");
        assert!(inlet.clone().take().is_none(), "taken once");
        assert_eq!(rx.recv().await, Some(0));
        assert_eq!(rx.recv().await, Some(1));
        assert!(rx.try_recv().is_err(), "the overflow was dropped");
    }

    #[tokio::test]
    async fn taken_streams_wait_for_room_until_shutdown() {
        let (outlet, inlet) = channel::<u32>(1, "test");
        let shutdown = CancellationToken::new();
        let _rx = inlet.take().expect("take");
        assert!(outlet.deliver(1, &shutdown).await);
        shutdown.cancel();
        assert!(
            !outlet.deliver(2, &shutdown).await,
            "full: waits, then sees shutdown"
        );
    }

    #[tokio::test]
    async fn items_for_a_dropped_stream_are_discarded() {
        let (outlet, inlet) = channel::<u32>(1, "test");
        drop(inlet.take());
        let shutdown = CancellationToken::new();
        assert!(outlet.deliver(1, &shutdown).await);
        assert!(outlet.deliver(2, &shutdown).await);
    }
}
