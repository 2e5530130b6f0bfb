//! Task routing: workers register capabilities and slots; the hub queues
//! submitted tasks by priority, hands each to a capable free worker under a
//! lease, retries, dead-letters, and reports every state change as events.
//!
//! - [`dispatcher`] — the synchronous state machine (queues, workers,
//!   leases); it records side effects in an [`Outbox`].
//! - [`store`] — the durable record (redb, group commit).
//! - `outbox` — what an operation sends, and the rule that it waits for
//!   the store's commit of the operation's writes.
//! - [`TaskService`] — runs the dispatcher under a short std mutex, hands
//!   each outbox's writes to the store at once and carries out the rest
//!   (replies, events, `task:assign`, `task:result`) once the store has
//!   committed those writes, in the order of the state changes (see
//!   [`TaskService::carry_out`]); it drives deadlines from one timer task.
//! - [`cluster`] — the same operations on the Redis engine: the queue in
//!   Redis, this node's workers.
//! - `handle` — [`Tasks`], the one value the rest of the hub talks to,
//!   whichever of the two runs (matched there and nowhere else).
//! - `events` — the lifecycle and worker events both publish.
//! - `retry` — the retry rules both apply, parsed once.

pub(crate) mod cluster;
pub(crate) mod config;
mod dispatcher;
mod events;
mod federation;
mod handle;
mod outbox;
mod retry;
mod store;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};

use dashmap::DashMap;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::channels::{ChannelName, NameLimits, Pattern};
use crate::error::{ErrorCode, RequestError};
use crate::protocol::tasks::{Accepted, TaskSpec, TaskState, TaskView, WorkerView};
use crate::protocol::{RequestId, now_ms};
use crate::router::manager::{ChannelManager, Subscriber};
use crate::tasks::config::TasksConfig;

use dispatcher::Dispatcher;
pub(crate) use events::{Events, Lifecycle, WorkerEvent};
pub(crate) use federation::{Chooser, RemoteCandidate, TaskObserver};
pub(crate) use handle::TaskReport;
pub use handle::Tasks;
pub(crate) use outbox::Outbox;
use outbox::{Deferred, NOT_DURABLE_CHANGE, NOT_DURABLE_TASK, Reply};
pub(crate) use store::Store;
pub(crate) use store::StoreError;

/// A task record as stored: the record plus its submission order.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct StoredTask {
    /// Submission order, for FIFO within a priority across restarts.
    seq: u64,
    /// The record.
    task: TaskView,
}

/// A pending deadline.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Timer {
    /// The lease of (task, attempt) ends.
    Lease(String, u32),
    /// A retry backoff ends.
    Retry(String),
    /// A terminal task's retention ends.
    Purge(String),
    /// A task waiting for busy local workers may go to a peer hub.
    Forward(String),
}

/// Why a task operation was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub(crate) enum TaskError {
    /// The task or registration is malformed.
    #[error("{0}")]
    Invalid(String),
    /// `tasks.max_queued` tasks are already waiting.
    #[error("the task queue is full ({0} tasks waiting)")]
    QueueFull(usize),
    /// No such task.
    #[error("no such task")]
    NotFound,
    /// The connection does not hold this task (never did, or lost its lease).
    #[error("this connection does not hold that task")]
    NotAssigned,
    /// The connection is already a registered worker.
    #[error("this connection is already registered as a worker")]
    AlreadyRegistered,
    /// The connection has not registered as a worker.
    #[error("register first")]
    NotRegistered,
    /// Only the submitter or an admin may do this.
    #[error("only the submitter or an admin may cancel this task")]
    Forbidden,
    /// The task is already finished.
    #[error("the task is already {}", .0.as_str())]
    InvalidState(TaskState),
}

impl From<TaskError> for RequestError {
    fn from(err: TaskError) -> Self {
        let code = match &err {
            TaskError::Invalid(_) | TaskError::AlreadyRegistered => ErrorCode::BadRequest,
            TaskError::QueueFull(_) => ErrorCode::QueueFull,
            TaskError::NotFound => ErrorCode::NotFound,
            TaskError::NotAssigned => ErrorCode::NotAssigned,
            TaskError::NotRegistered => ErrorCode::NotRegistered,
            TaskError::Forbidden => ErrorCode::Forbidden,
            TaskError::InvalidState(_) => ErrorCode::InvalidState,
        };
        RequestError::new(code, err.to_string())
    }
}

/// Task counts read at one moment.
#[derive(Debug, Clone, Default)]
pub(crate) struct TaskSummary {
    /// (task type, state name) → tasks.
    pub counts: BTreeMap<(String, &'static str), u64>,
    /// Tasks waiting for a worker or a retry (what `tasks.max_queued` limits).
    pub waiting: usize,
}

/// The live connections that can be sent direct messages (workers,
/// submitters), by client id.
pub(crate) type Connections = DashMap<u64, Arc<Subscriber>>;

/// Task routing for one hub.
pub(crate) struct TaskService {
    /// The state machine. A std mutex: it is held only for synchronous work
    /// (the operation and its outbox), never across an await.
    dispatcher: Mutex<Dispatcher>,
    /// Durable record; `None` when `tasks.durable = false`.
    store: Option<Store>,
    /// Outboxes waiting for the commit of their writes (their ticket), in
    /// the order of the operations. Locked only with the dispatcher lock
    /// held (dispatcher first).
    deferred: Mutex<Deferred>,
    /// Lifecycle events go out through the normal fan-out path.
    events: Events,
    /// Direct messages to workers and submitters.
    connections: Arc<Connections>,
    /// Wakes the timer task when a nearer deadline may exist.
    wake: Notify,
    /// Grammar limits for capabilities.
    limits: NameLimits,
    /// The federation, told about changes (see `federation`).
    observer: OnceLock<Weak<dyn TaskObserver>>,
    /// Time from queued to assigned, for `/metrics`.
    pub dispatch_wait: crate::metrics::Histogram,
}

impl TaskService {
    /// Builds the service; with `store_path`, loads and requeues stored tasks.
    pub(crate) fn new(
        config: TasksConfig,
        limits: NameLimits,
        store_path: Option<&std::path::Path>,
        channels: Arc<ChannelManager>,
        connections: Arc<Connections>,
    ) -> Result<TaskService, StoreError> {
        let (store, stored) = match store_path {
            Some(path) => {
                let (store, stored) = Store::open(path)?;
                (Some(store), stored)
            }
            None => (None, Vec::new()),
        };
        let restored = stored.len();
        let mut dispatcher = Dispatcher::new(config, limits);
        let mut out = Outbox::default();
        dispatcher.restore(stored, Instant::now(), &mut out);
        let service = TaskService {
            dispatcher: Mutex::new(dispatcher),
            store,
            deferred: Mutex::new(Deferred::new()),
            events: Events::new(channels, limits),
            connections,
            wake: Notify::new(),
            limits,
            observer: OnceLock::new(),
            dispatch_wait: crate::metrics::Histogram::new(crate::metrics::WAIT_BUCKETS),
        };
        service.carry_out(out);
        if restored > 0 {
            tracing::info!(tasks = restored, "restored tasks from the store");
        }
        Ok(service)
    }

    fn lock(&self) -> MutexGuard<'_, Dispatcher> {
        // A panic while holding the lock leaves the state usable: every
        // operation completes its invariants before returning.
        self.dispatcher
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Runs one dispatcher operation and hands its side effects on before
    /// releasing the lock (see [`carry_out`](Self::carry_out)), so they
    /// leave in state-change order.
    fn run<T>(&self, op: impl FnOnce(&mut Dispatcher, Instant, u64, &mut Outbox) -> T) -> T {
        self.run_ticket(op).0
    }

    /// [`run`](Self::run), also returning the ticket of the operation's
    /// writes (what [`durable`](Self::durable) waits for).
    fn run_ticket<T>(
        &self,
        op: impl FnOnce(&mut Dispatcher, Instant, u64, &mut Outbox) -> T,
    ) -> (T, u64) {
        let mut out = Outbox::default();
        let mut dispatcher = self.lock();
        let result = op(&mut dispatcher, Instant::now(), now_ms(), &mut out);
        let ticket = self.carry_out(out);
        drop(dispatcher);
        self.wake.notify_one();
        (result, ticket)
    }

    /// Accepts a task; returns once it is durable (the HTTP API).
    pub(crate) async fn submit(
        &self,
        spec: TaskSpec,
        submitted_by: &str,
    ) -> Result<Accepted, RequestError> {
        let (accepted, ticket) =
            self.run_ticket(|d, now, ms, out| d.submit(spec, submitted_by, None, now, ms, out));
        let accepted = accepted?;
        self.durable(ticket, NOT_DURABLE_TASK).await?;
        Ok(accepted)
    }

    /// Accepts a task from connection `conn` (queued or assigned at once)
    /// and returns at once; `task:accepted` goes to `conn` once the task
    /// is on disk, before anything else about the task.
    pub(crate) fn accept(
        &self,
        spec: TaskSpec,
        submitted_by: &str,
        conn: u64,
        id: Option<RequestId>,
    ) -> Result<(), RequestError> {
        Ok(self.run(|d, now, ms, out| {
            let accepted = d.submit(spec, submitted_by, Some(conn), now, ms, out)?;
            out.replies.push(Reply::accepted(conn, id, accepted));
            Ok::<_, TaskError>(())
        })?)
    }

    /// Waits until the writes up to `ticket` are on disk; `unavailable`
    /// (with `message`) when their commit failed.
    async fn durable(&self, ticket: u64, message: &'static str) -> Result<(), RequestError> {
        if let Some(store) = &self.store {
            store.committed(ticket).await.map_err(|e| {
                tracing::error!(error = %e, "task store write failed");
                RequestError::new(ErrorCode::Unavailable, message)
            })?;
        }
        Ok(())
    }

    /// Registers a worker connection.
    pub(crate) fn register(
        &self,
        worker_id: u64,
        sub: &str,
        capabilities: &[String],
        slots: u32,
        labels: BTreeMap<String, String>,
    ) -> Result<Vec<Pattern>, RequestError> {
        let patterns = parse_capabilities(capabilities, &self.limits)?;
        let registered = patterns.clone();
        self.run(|d, now, ms, out| {
            d.register(worker_id, sub, patterns, slots, labels, now, ms, out)
        })?;
        Ok(registered)
    }

    /// Stops new assignments to a worker; returns how many it still runs.
    pub(crate) fn drain(&self, worker_id: u64) -> Result<usize, RequestError> {
        Ok(self.run(|d, _, _, _| d.drain(worker_id))?)
    }

    /// A connection ended: requeue what it held.
    pub(crate) fn connection_closed(&self, client_id: u64) {
        if self.lock().is_worker(client_id) {
            self.run(|d, now, ms, out| d.worker_gone(client_id, now, ms, out));
        }
    }

    /// Records that a worker sent something.
    pub(crate) fn touch(&self, worker_id: u64) {
        self.lock().touch(worker_id, now_ms());
    }

    /// `task:progress` from a worker.
    pub(crate) fn progress(
        &self,
        worker_id: u64,
        task_id: &str,
        progress: Option<u8>,
        message: Option<String>,
    ) -> Result<(), RequestError> {
        Ok(self.run(|d, now, ms, out| {
            d.progress(worker_id, task_id, progress, message, now, ms, out)
        })?)
    }

    /// `task:complete` from a worker; with `ack`, its `task:ack` goes out
    /// once the completion is on disk.
    pub(crate) fn complete(
        &self,
        worker_id: u64,
        task_id: &str,
        result: Value,
        ack: Option<RequestId>,
    ) -> Result<(), RequestError> {
        Ok(self.run(|d, now, ms, out| {
            d.complete(worker_id, task_id, result, now, ms, out)?;
            out.replies
                .extend(Reply::ack(worker_id, ack, task_id, TaskState::Completed));
            Ok::<_, TaskError>(())
        })?)
    }

    /// `task:error` from a worker; with `ack`, as for `complete`.
    pub(crate) fn fail(
        &self,
        worker_id: u64,
        task_id: &str,
        error: Value,
        retryable: bool,
        ack: Option<RequestId>,
    ) -> Result<TaskState, RequestError> {
        self.observe_fail(task_id, retryable);
        Ok(self.run(|d, now, ms, out| {
            let state = d.fail(worker_id, task_id, error, retryable, now, ms, out)?;
            out.replies
                .extend(Reply::ack(worker_id, ack, task_id, state));
            Ok::<_, TaskError>(state)
        })?)
    }

    /// Cancels a task; `by` is the caller's `sub`, `None` for an admin.
    /// With `ack` (a connection and its request id) the `task:ack` goes
    /// out once the cancel is on disk; returns the record and the ticket
    /// of the write.
    pub(crate) fn cancel(
        &self,
        task_id: &str,
        by: Option<&str>,
        ack: Option<(u64, Option<RequestId>)>,
    ) -> Result<(TaskView, u64), RequestError> {
        let (view, ticket) = self.run_ticket(|d, now, ms, out| {
            let view = d.cancel(task_id, by, now, ms, out)?;
            if let Some((conn, id)) = ack {
                out.replies
                    .extend(Reply::ack(conn, id, task_id, TaskState::Cancelled));
            }
            Ok::<_, TaskError>(view)
        });
        Ok((view?, ticket))
    }

    /// Cancels a task and returns once the cancel is on disk (the HTTP API).
    pub(crate) async fn cancel_durably(
        &self,
        task_id: &str,
        by: Option<&str>,
    ) -> Result<TaskView, RequestError> {
        let (view, ticket) = self.cancel(task_id, by, None)?;
        self.durable(ticket, NOT_DURABLE_CHANGE).await?;
        Ok(view)
    }

    /// One task.
    pub(crate) fn get(&self, task_id: &str) -> Option<TaskView> {
        self.lock().view(task_id)
    }

    /// Tasks by state and type pattern.
    pub(crate) fn list(&self, state: Option<TaskState>, kind: Option<&Pattern>) -> Vec<TaskView> {
        self.lock().list(state, kind)
    }

    /// Tasks waiting for a worker (queued or backing off).
    pub(crate) fn waiting(&self) -> usize {
        self.lock().waiting()
    }

    /// Live workers and free slots per capability pattern.
    pub(crate) fn capacity(&self) -> Vec<crate::protocol::federation::CapabilityLoad> {
        self.lock().capacity()
    }

    /// Live workers.
    pub(crate) fn workers(&self) -> Vec<WorkerView> {
        self.lock().workers()
    }

    /// The newest dead-lettered tasks, newest first, at most `max`.
    pub(crate) fn recent_dead(&self, max: usize) -> Vec<TaskView> {
        let mut dead = self.list(Some(TaskState::Dead), None);
        dead.sort_by_key(|t| std::cmp::Reverse(t.updated_at));
        dead.truncate(max);
        dead
    }

    /// Task counts by type and state, and the queue depth, without copying
    /// any task record (for `/metrics` and `/api/stats`).
    pub(crate) fn summary(&self) -> TaskSummary {
        self.lock().summary()
    }

    /// Drives leases, retries and retention until `shutdown`: sleeps until
    /// the nearest deadline, or until an operation may have added a nearer
    /// one. Also sends what waited for each commit of the store.
    pub(crate) async fn run_timers(self: Arc<Self>, shutdown: CancellationToken) {
        let mut commits = self.store.as_ref().map(Store::watch_commits);
        self.release_committed();
        loop {
            let next = self.lock().next_deadline();
            let sleep = async {
                match next {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            let committed = async {
                match commits.as_mut() {
                    Some(watch) => {
                        if watch.changed().await.is_err() {
                            // The writer is gone: release what waited
                            // (as failed), then stop watching.
                            commits = None;
                        }
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = committed => self.release_committed(),
                _ = self.wake.notified() => {}
                _ = sleep => self.run(|d, now, ms, out| d.fire_timers(now, ms, out)),
            }
        }
    }

    /// Holds the store's commits (`true`) until released (`false`), as a
    /// stalled disk would (the `test-hooks` hook).
    #[cfg(feature = "test-hooks")]
    pub(crate) fn hold_commits(&self, hold: bool) {
        if let Some(store) = &self.store {
            store.hold_commits(hold);
        }
    }

    /// Waits until every change so far is on disk, then sends what waited
    /// for it (shutdown).
    pub(crate) async fn flush(&self) {
        if let Some(store) = &self.store {
            if let Err(e) = store.sync().await {
                tracing::error!(error = %e, "task store flush failed");
            }
        }
        self.release_committed();
    }
}

/// A `register`'s capability patterns: each must parse, and there must be
/// at least one.
pub(crate) fn parse_capabilities(
    capabilities: &[String],
    limits: &NameLimits,
) -> Result<Vec<Pattern>, RequestError> {
    let patterns = capabilities
        .iter()
        .map(|c| Pattern::parse(c, limits))
        .collect::<Result<Vec<_>, _>>()?;
    if patterns.is_empty() {
        return Err(TaskError::Invalid("name at least one capability".into()).into());
    }
    Ok(patterns)
}

/// Checks a submitted spec against the defaults and limits in `config` and
/// builds the new task's record (queued, attempt 0, a fresh random id);
/// shared by the in-memory dispatcher and cluster mode.
pub(crate) fn new_task(
    spec: TaskSpec,
    config: &TasksConfig,
    limits: &NameLimits,
    submitted_by: &str,
    now_ms: u64,
) -> Result<(ChannelName, TaskView), TaskError> {
    let kind = ChannelName::parse(&spec.kind, limits)
        .map_err(|e| TaskError::Invalid(format!("type {:?}: {e}", spec.kind)))?;
    let priority = spec.priority.unwrap_or(5);
    if priority > 9 {
        return Err(TaskError::Invalid("priority must be 0–9".into()));
    }
    let max_attempts = spec.max_attempts.unwrap_or(config.default_max_attempts);
    if max_attempts == 0 {
        return Err(TaskError::Invalid("maxAttempts must be at least 1".into()));
    }
    let timeout_ms = spec
        .timeout_ms
        .unwrap_or(config.default_timeout.as_millis() as u64);
    if timeout_ms == 0 {
        return Err(TaskError::Invalid("timeoutMs must be positive".into()));
    }
    let view = TaskView {
        id: format!("{:016x}", rand::random::<u64>()),
        kind: spec.kind,
        payload: spec.payload,
        priority,
        state: TaskState::Queued,
        attempt: 0,
        max_attempts,
        timeout_ms,
        dedup_key: spec.dedup_key,
        submitted_by: submitted_by.to_string(),
        worker_id: None,
        progress: None,
        message: None,
        result: None,
        error: None,
        hub: None,
        created_at: now_ms,
        updated_at: now_ms,
    };
    Ok((kind, view))
}
