//! The task methods of [`Client`]: submitting and cancelling tasks, and
//! running them as a worker.
//!
//! # Design
//!
//! Every task call is a request with an integer id, answered like
//! `publish`: `task:accepted` (sent once the task is durable), `registered`,
//! `draining`, or `task:ack`; an `error` is [`ClientError::Refused`]. Worker
//! reports always carry an id, so a worker learns at once that the hub
//! refused one (`not_assigned`: its lease expired or the task was
//! cancelled and someone else may hold it now).
//!
//! What the hub pushes unasked is not mixed into [`Events`](super::Events)
//! (which stays a stream of channel events): `task:result` goes to
//! [`TaskResults`], `task:assign` and `task:cancel` to [`Assignments`] as
//! [`Work`]. Each stream exists from connect time and is taken once, so
//! nothing that arrives before the caller asks for it is lost (up to
//! [`ClientOptions::event_buffer`](super::ClientOptions::event_buffer)
//! items), and a client that never asks cannot stall its connection.
//!
//! A registration is kept like a subscription: after a reconnect the client
//! registers again with the same capabilities, slots and labels before it
//! reports `Connected`. The hub requeued the tasks the old connection held,
//! so the worker must drop them: [`Work::Lost`] says so as soon as the drop
//! is seen, [`Work::Reregistered`] once the new registration stands.

use serde_json::Value;

use super::pushes::{Assignments, TaskResults};
use super::requests::{Op, Reply};
use super::task_ops::{TaskOp, TaskReply};
use super::types::{ClientError, Registration};
use super::{Client, unexpected};
use crate::protocol::tasks::{Accepted, TaskSpec, TaskState};

impl Client {
    /// Submits a task (permission `task:submit`, hub tokens by default) and
    /// waits until the hub has stored it durably (`task:accepted`).
    ///
    /// With a [`TaskSpec::dedup_key`] that an unfinished task already has,
    /// the existing task's id comes back with [`Accepted::deduplicated`].
    /// A full queue is [`ClientError::Refused`] with
    /// [`ErrorCode::QueueFull`](crate::error::ErrorCode::QueueFull).
    ///
    /// The final state arrives on [`task_results`](Self::task_results) if
    /// this connection is still the one that submitted it.
    pub async fn submit(&self, spec: TaskSpec) -> Result<Accepted, ClientError> {
        match self.task(TaskOp::Submit(spec)).await? {
            TaskReply::Accepted(accepted) => Ok(accepted),
            other => Err(unexpected(Reply::Task(other))),
        }
    }

    /// Cancels a task this client's token submitted; returns its state
    /// afterwards ([`TaskState::Cancelled`]). A running task's worker is
    /// told to stop. A finished task is refused with
    /// [`ErrorCode::InvalidState`](crate::error::ErrorCode::InvalidState).
    pub async fn cancel_task(&self, task_id: &str) -> Result<TaskState, ClientError> {
        self.ack(TaskOp::Cancel(task_id.to_string())).await
    }

    /// The final states (completed, dead, cancelled) of the tasks this
    /// client submits, as the hub pushes them (`task:result`). The first
    /// call on any handle returns the stream; later calls return `None`.
    /// Results that arrive before it is taken are kept (up to
    /// `event_buffer`).
    pub fn task_results(&self) -> Option<TaskResults> {
        self.results.take().map(|rx| TaskResults { rx })
    }

    /// Registers this connection as a worker (permission `task:receive`)
    /// for task types matching `capabilities`, running up to `slots` tasks
    /// at once; returns the worker id. Tasks arrive on
    /// [`assignments`](Self::assignments), possibly before this returns.
    ///
    /// A client registers once; a second call is refused
    /// ([`ErrorCode::BadRequest`](crate::error::ErrorCode::BadRequest)).
    /// After a reconnect the client registers again by itself (see
    /// [`Work::Lost`](super::Work::Lost)); the worker id changes then, as it
    /// is the connection's id.
    pub async fn register(&self, capabilities: &[&str], slots: u32) -> Result<String, ClientError> {
        self.register_with(Registration::new(capabilities, slots))
            .await
    }

    /// [`register`](Self::register) with labels (shown in
    /// `GET /api/workers`).
    pub async fn register_with(&self, registration: Registration) -> Result<String, ClientError> {
        match self.task(TaskOp::Register(registration)).await? {
            TaskReply::Registered(worker_id) => Ok(worker_id),
            other => Err(unexpected(Reply::Task(other))),
        }
    }

    /// The worker's [`Work`](super::Work): assignments, cancellations and
    /// reconnect notices. The first call on any handle returns the stream;
    /// later calls return `None`. Take it before or after
    /// [`register`](Self::register): nothing is lost in between.
    pub fn assignments(&self) -> Option<Assignments> {
        self.work.take().map(|rx| Assignments { rx })
    }

    /// Reports progress on a task this worker holds (`progress` 0–100,
    /// `message` free text); this also extends its lease. Refused with
    /// [`ErrorCode::NotAssigned`](crate::error::ErrorCode::NotAssigned) if
    /// the worker no longer holds it.
    pub async fn progress(
        &self,
        task_id: &str,
        progress: Option<u8>,
        message: Option<&str>,
    ) -> Result<(), ClientError> {
        let op = TaskOp::Progress {
            task_id: task_id.to_string(),
            progress,
            message: message.map(str::to_string),
        };
        self.ack(op).await.map(drop)
    }

    /// Reports a task done with `result`, which the submitter receives.
    /// Refused with
    /// [`ErrorCode::NotAssigned`](crate::error::ErrorCode::NotAssigned) if
    /// the worker no longer holds it (lease expired, cancelled, or the
    /// connection dropped since it was assigned).
    pub async fn complete(&self, task_id: &str, result: Value) -> Result<(), ClientError> {
        let op = TaskOp::Complete {
            task_id: task_id.to_string(),
            result,
        };
        self.ack(op).await.map(drop)
    }

    /// Reports a task failed. With `retryable` and attempts left it is
    /// retried after a backoff ([`TaskState::Failed`] is returned);
    /// otherwise it is dead-lettered ([`TaskState::Dead`]). Refused with
    /// [`ErrorCode::NotAssigned`](crate::error::ErrorCode::NotAssigned) if
    /// the worker no longer holds it.
    pub async fn fail(
        &self,
        task_id: &str,
        error: Value,
        retryable: bool,
    ) -> Result<TaskState, ClientError> {
        let op = TaskOp::Fail {
            task_id: task_id.to_string(),
            error,
            retryable,
        };
        self.ack(op).await
    }

    /// Stops new assignments to this worker; the tasks it runs finish
    /// normally. Returns how many it still runs. A draining worker is not
    /// registered again after a reconnect.
    pub async fn drain(&self) -> Result<usize, ClientError> {
        match self.task(TaskOp::Drain).await? {
            TaskReply::Draining(running) => Ok(running),
            other => Err(unexpected(Reply::Task(other))),
        }
    }

    /// Sends a request answered by `task:ack`; returns the acked state.
    async fn ack(&self, op: TaskOp) -> Result<TaskState, ClientError> {
        match self.task(op).await? {
            TaskReply::Ack(state) => Ok(state),
            other => Err(unexpected(Reply::Task(other))),
        }
    }

    async fn task(&self, op: TaskOp) -> Result<TaskReply, ClientError> {
        match self.request(Op::Task(op)).await? {
            Reply::Task(reply) => Ok(reply),
            other => Err(unexpected(other)),
        }
    }
}
