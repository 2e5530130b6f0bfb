//! What one task operation tells the world, and when. The dispatcher
//! records its side effects in an [`Outbox`]; [`TaskService`] hands the
//! writes to the store at once and sends the rest — replies, events,
//! `task:assign`, `task:cancel`, `task:result` — once the store has
//! committed those writes, in operation order: nothing reports a change a
//! crash could still undo, and a submitter hears `task:accepted` before
//! anything else about its task.

use std::collections::VecDeque;
use std::sync::MutexGuard;

use tokio_tungstenite::tungstenite::Utf8Bytes;

use super::{Lifecycle, StoredTask, TaskService, WorkerEvent};
use crate::error::ErrorCode;
use crate::protocol::tasks::{Accepted, Assignment, TaskState, TaskView, WorkerView};
use crate::protocol::{RequestId, ServerMessage};

/// Side effects of one dispatcher operation, in the order they happened.
#[derive(Default)]
pub(crate) struct Outbox {
    /// Replies that confirm the operation (`task:accepted`, `task:ack`).
    pub(super) replies: Vec<Reply>,
    /// `task:assign` to a worker connection.
    pub(super) assigns: Vec<(u64, Assignment)>,
    /// `task:cancel` to a worker connection, with the reason.
    pub(super) cancels: Vec<(u64, String, &'static str)>,
    /// Lifecycle events.
    pub(super) events: Vec<(Lifecycle, TaskView)>,
    /// `task:result` to the submitting connection.
    pub(super) results: Vec<(u64, TaskView)>,
    /// Records to write.
    pub(super) persist: Vec<StoredTask>,
    /// Records to delete.
    pub(super) remove: Vec<String>,
    /// `worker:connected` / `worker:disconnected` events.
    pub(super) worker_events: Vec<(WorkerEvent, WorkerView)>,
    /// How long each task assigned by this operation waited since it was
    /// (re)queued, in ms, for the dispatch-wait histogram.
    pub(super) dispatch_waits: Vec<u64>,
}

impl Outbox {
    /// Whether carrying it out sends nothing (a purge, say).
    pub(super) fn is_silent(&self) -> bool {
        self.replies.is_empty()
            && self.assigns.is_empty()
            && self.cancels.is_empty()
            && self.events.is_empty()
            && self.results.is_empty()
            && self.worker_events.is_empty()
    }
}

/// A reply that confirms a change: sent once the change is on disk, or as
/// `error` `unavailable` when the commit that held it failed.
pub(super) struct Reply {
    /// The requesting connection.
    conn: u64,
    /// The request's id, for the error.
    id: Option<RequestId>,
    /// The reply.
    msg: ServerMessage,
    /// The error's message when the commit failed.
    not_durable: &'static str,
}

impl Reply {
    /// `task:accepted` (always sent, with or without an id).
    pub(super) fn accepted(conn: u64, id: Option<RequestId>, accepted: Accepted) -> Reply {
        Reply {
            conn,
            id: id.clone(),
            msg: ServerMessage::TaskAccepted {
                id,
                task_id: accepted.task_id,
                deduplicated: accepted.deduplicated,
            },
            not_durable: NOT_DURABLE_TASK,
        }
    }

    /// `task:ack`, only when the request has an id.
    pub(super) fn ack(
        conn: u64,
        id: Option<RequestId>,
        task_id: &str,
        state: TaskState,
    ) -> Option<Reply> {
        let id = id?;
        Some(Reply {
            conn,
            id: Some(id.clone()),
            msg: ServerMessage::TaskAck {
                id: Some(id),
                task_id: task_id.to_string(),
                state,
            },
            not_durable: NOT_DURABLE_CHANGE,
        })
    }
}

/// The refusal of a submit whose commit failed.
pub(super) const NOT_DURABLE_TASK: &str = "the task store failed; the task is not durable";

/// The refusal of a report or cancel whose commit failed.
pub(super) const NOT_DURABLE_CHANGE: &str = "the task store failed; the change is not durable";

/// Outboxes waiting for the commit of their writes, with the ticket of
/// the last write each needs, oldest first.
pub(super) type Deferred = VecDeque<(u64, Outbox)>;

impl TaskService {
    fn deferred(&self) -> MutexGuard<'_, Deferred> {
        self.deferred.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Hands an outbox on; returns the ticket of its writes (0 without a
    /// store). Called with the dispatcher lock held; nothing awaits.
    ///
    /// Its writes go to the store at once; what it sends waits until the
    /// store has committed them — a reply never confirms, an event never
    /// reports, and `task:assign` never starts an attempt that a crash
    /// could still undo — and, to keep the order of the state changes,
    /// until every earlier outbox went out. So a submitter gets
    /// `task:accepted` before anything else about its task. An outbox that
    /// writes nothing and has nothing ahead of it goes out at once; one
    /// whose commit failed goes out too, its replies turned into
    /// `unavailable` errors (the hub keeps running in memory while it
    /// retries the disk).
    pub(super) fn carry_out(&self, mut out: Outbox) -> u64 {
        self.observe(&out);
        for waited in out.dispatch_waits.drain(..) {
            self.dispatch_wait
                .record(std::time::Duration::from_millis(waited));
        }
        let Some(store) = &self.store else {
            self.send(out, true);
            return 0;
        };
        let mut ticket = store.last_ticket();
        for task in out.persist.drain(..) {
            ticket = store.put(task);
        }
        for id in out.remove.drain(..) {
            ticket = store.remove(id);
        }
        if out.is_silent() {
            return ticket;
        }
        let mut deferred = self.deferred();
        match store.commits().outcome(ticket) {
            Some(durable) if deferred.is_empty() => {
                drop(deferred);
                self.send(out, durable);
            }
            _ => deferred.push_back((ticket, out)),
        }
        ticket
    }

    /// Sends the deferred outboxes whose commits are done, in order (after
    /// each commit of the store).
    pub(super) fn release_committed(&self) {
        let Some(store) = &self.store else {
            return;
        };
        let _dispatcher = self.lock();
        let commits = store.commits();
        let mut deferred = self.deferred();
        while let Some(durable) = deferred.front().and_then(|(t, _)| commits.outcome(*t)) {
            if let Some((_, out)) = deferred.pop_front() {
                self.send(out, durable);
            }
        }
    }

    /// Sends what an outbox holds: replies (or, when its commit failed,
    /// their refusals), events, then the direct messages. With the
    /// dispatcher lock held; every step is a queue push.
    fn send(&self, out: Outbox, durable: bool) {
        for reply in out.replies {
            let msg = if durable {
                reply.msg
            } else {
                ServerMessage::Error {
                    id: reply.id,
                    code: ErrorCode::Unavailable,
                    message: reply.not_durable.to_string(),
                    channel: None,
                    detail: None,
                }
            };
            self.direct(reply.conn, &msg);
        }
        for (which, worker) in out.worker_events {
            self.events.worker(which, &worker);
        }
        for (lifecycle, task) in out.events {
            self.events.task(lifecycle, &task);
        }
        // Cancels before assigns: a cancel is about an attempt the worker
        // held before this operation, an assign is newer. When a lapsed
        // lease hands the task straight back to the same worker, it must
        // see the cancel of the old attempt before the new one.
        for (worker, task_id, reason) in out.cancels {
            self.direct(
                worker,
                &ServerMessage::TaskCancel {
                    task_id,
                    reason: reason.to_string(),
                },
            );
        }
        for (worker, task) in out.assigns {
            self.direct(worker, &ServerMessage::TaskAssign { task });
        }
        for (conn, task) in out.results {
            self.direct(conn, &ServerMessage::TaskResult { task });
        }
    }

    /// Sends a message to one connection's queue. A full queue makes it a
    /// slow consumer; its disconnect requeues whatever it held.
    fn direct(&self, client_id: u64, msg: &ServerMessage) {
        if let Some(conn) = self.connections.get(&client_id) {
            conn.send_direct(Utf8Bytes::from(msg.to_json()));
        }
    }
}
