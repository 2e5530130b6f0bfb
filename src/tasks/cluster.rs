//! Tasks in cluster mode (`engine = "redis"`): the queue, leases, attempts,
//! dedup keys and the dead-letter state live in Redis (see
//! `engine::redis::tasks`); this is the node's half — its own workers,
//! handing them tasks, and telling everyone what happened.
//!
//! - Any node dispatches to its own workers: when a task is queued, its
//!   node announces it (`<prefix>wake`), and every node with a free,
//!   capable worker tries to claim the best queued task (priority, then
//!   age) in one atomic script, so a task is never held by two workers.
//! - A node that dies stops renewing nothing: its workers' leases simply
//!   expire, and any node's reaper (every [`REAP_EVERY`]) requeues those
//!   tasks, counting the attempt, or dead-letters them.
//! - Lifecycle events are ordinary channel events (`task:<id>`,
//!   `task:queued`, ...), so the cluster fan-out brings them to the
//!   submitter's node; `task:result` and `task:cancel` for a connection on
//!   another node travel on that node's channel (`<prefix>node:<id>`).
//! - A submit is staged in Redis, not yet claimable; its node sends
//!   `task:accepted`, publishes `task:queued`, and only then releases it
//!   to the queue through the same ordered connection as the event. So
//!   nothing about the task (`task:assigned`, `task:result`, …) can come
//!   before either. The task's id is made before the first try, so a
//!   submit Redis ran but never answered is sent again as a no-op.
//! - [`workers`]: this node's workers, and the cluster's worker list.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde_json::Value;
use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::Utf8Bytes;
use tokio_util::sync::CancellationToken;

use super::retry::RetryRules;
use super::{Connections, Events, Lifecycle, TaskReport, TaskSummary, WorkerEvent};
use crate::channels::{ChannelName, NameLimits, Pattern};
use crate::engine::RedisEngine;
use crate::engine::redis::NodeInbox;
use crate::engine::redis::{NewTask, TaskRecord};
use crate::error::{ErrorCode, RequestError};
use crate::metrics::Histogram;
use crate::protocol::cluster::NodeMessage;
use crate::protocol::tasks::{Accepted, Assignment, TaskSpec, TaskState, TaskView, WorkerView};
use crate::protocol::{RequestId, ServerMessage, now_ms};
use crate::router::manager::ChannelManager;
use crate::tasks::config::TasksConfig;

mod workers;

/// How often each node looks for expired leases and finished backoffs
/// (and for queued tasks it may have missed a wake-up for).
pub(crate) const REAP_EVERY: Duration = Duration::from_millis(100);

/// One of this node's workers.
struct LocalWorker {
    /// What the API shows.
    view: WorkerView,
    /// Capability patterns.
    capabilities: Vec<Pattern>,
    /// Tasks it holds: id → (type, attempt), for the retry backoff.
    running: HashMap<String, (ChannelName, u32)>,
}

impl LocalWorker {
    fn free(&self) -> u32 {
        if self.view.draining {
            return 0;
        }
        self.view.slots.saturating_sub(self.running.len() as u32)
    }
}

/// The task side of one cluster node.
pub(crate) struct ClusterTasks {
    /// Redis.
    engine: Arc<RedisEngine>,
    /// Lifecycle events go out through the (cluster) fan-out.
    events: Events,
    /// This node's connections, for direct messages.
    connections: Arc<Connections>,
    /// Defaults, retries, retention.
    config: TasksConfig,
    /// Grammar limits for task types.
    limits: NameLimits,
    /// Retry backoffs by task type, parsed once.
    retry: RetryRules,
    /// This node's workers. A std mutex: never held across an await.
    workers: Mutex<HashMap<u64, LocalWorker>>,
    /// Wakes the dispatcher loop: a local slot freed or a worker arrived.
    local_wake: Notify,
    /// The workers changed since the snapshot in Redis was written (see
    /// [`ClusterTasks::all_workers`]).
    workers_changed: AtomicBool,
    /// Time from queued to assigned of the first attempts this node's
    /// workers claimed, for `/metrics`.
    dispatch_wait: Histogram,
}

impl ClusterTasks {
    pub(crate) fn new(
        engine: Arc<RedisEngine>,
        channels: Arc<ChannelManager>,
        connections: Arc<Connections>,
        config: TasksConfig,
        limits: NameLimits,
    ) -> Arc<ClusterTasks> {
        let tasks = Arc::new(ClusterTasks {
            engine,
            events: Events::new(channels, limits),
            connections,
            retry: RetryRules::new(&config, &limits),
            config,
            limits,
            workers: Mutex::new(HashMap::new()),
            local_wake: Notify::new(),
            workers_changed: AtomicBool::new(true),
            dispatch_wait: Histogram::new(crate::metrics::WAIT_BUCKETS),
        });
        let inbox: Arc<dyn NodeInbox> = Arc::clone(&tasks) as _;
        tasks.engine.add_inbox(Arc::downgrade(&inbox));
        tasks
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<u64, LocalWorker>> {
        self.workers.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues a task in Redis (or returns the unfinished one with the same
    /// dedup key) and announces it to every node. With `reply` (the
    /// submitting connection and its request id), that connection gets
    /// `task:accepted` before anything else about the task, and later its
    /// `task:result`.
    pub(crate) async fn submit(
        &self,
        spec: TaskSpec,
        submitted_by: &str,
        reply: Option<(u64, Option<RequestId>)>,
    ) -> Result<Accepted, RequestError> {
        self.engine.check_ready()?;
        // The id is made here, once: a retried submit names the same task.
        let (_, view) = super::new_task(spec, &self.config, &self.limits, submitted_by, now_ms())?;
        let submitter = reply
            .as_ref()
            .map(|(conn, _)| format!("{:016x}|{conn}", self.engine.node()))
            .unwrap_or_default();
        let submitted = self
            .engine
            .task_submit(NewTask {
                view: &view,
                submitter,
                max_queued: self.config.max_queued,
            })
            .await?;
        let accepted = Accepted {
            task_id: submitted.task_id,
            deduplicated: submitted.deduplicated,
        };
        if let Some((conn, id)) = reply {
            let msg = ServerMessage::TaskAccepted {
                id,
                task_id: accepted.task_id.clone(),
                deduplicated: accepted.deduplicated,
            };
            self.direct(conn, &msg.to_json());
        }
        if !submitted.deduplicated {
            self.event(&view, Lifecycle::Queued);
            // After the event, on the same connection: the task becomes
            // claimable, and whoever claims it publishes `task:assigned`,
            // only after `task:queued` went out.
            self.engine.task_enqueue(&view.id);
        }
        Ok(accepted)
    }
    /// `task:progress` from a worker of this node; extends the lease.
    pub(crate) async fn progress(
        &self,
        worker_id: u64,
        task_id: &str,
        progress: Option<u8>,
        message: Option<String>,
    ) -> Result<(), RequestError> {
        let record = self
            .engine
            .task_progress(worker_id, task_id, progress, message.as_deref(), now_ms())
            .await?;
        self.event(&record.view, Lifecycle::Progress);
        Ok(())
    }

    /// `task:complete` from a worker of this node; with `ack`, the worker
    /// gets `task:ack` (Redis ran the change before this returns).
    pub(crate) async fn complete(
        &self,
        worker_id: u64,
        task_id: &str,
        result: Value,
        ack: Option<RequestId>,
    ) -> Result<(), RequestError> {
        // Refused at once while Redis is known to be away; the worker
        // sends it again later (its lease is kept until it expires).
        self.engine.check_ready()?;
        let (record, again) = self
            .engine
            .task_complete(worker_id, task_id, &result, now_ms(), self.config.retention)
            .await
            .inspect_err(|err| self.lost_hold(err, worker_id, task_id))?;
        // Done already by this worker: if this node still counts the task
        // as running, the first complete ran in Redis but its reply was
        // lost (Redis went away), so nobody was told — tell them now, once.
        // Otherwise the worker was acked before and this is a repeat.
        let untold = !again || self.is_running(worker_id, task_id);
        if !untold {
            return Err(RequestError::new(
                ErrorCode::InvalidState,
                "the task is already completed",
            ));
        }
        self.free(worker_id, task_id);
        self.ack(worker_id, ack, task_id, TaskState::Completed);
        self.event(&record.view, Lifecycle::Completed);
        self.result_to_submitter(&record);
        Ok(())
    }

    /// `task:error` from a worker of this node: retried after a backoff
    /// while attempts remain and it is retryable, else dead.
    pub(crate) async fn fail(
        &self,
        worker_id: u64,
        task_id: &str,
        error: Value,
        retryable: bool,
        ack: Option<RequestId>,
    ) -> Result<(), RequestError> {
        self.engine.check_ready()?;
        let attempt = self
            .lock()
            .get(&worker_id)
            .and_then(|w| w.running.get(task_id).cloned());
        let backoff = attempt
            .map(|(kind, attempt)| self.retry.backoff(&kind, attempt))
            .unwrap_or_default();
        let (record, again) = self
            .engine
            .task_fail(
                worker_id,
                task_id,
                &error,
                retryable,
                now_ms(),
                backoff,
                self.config.retention,
            )
            .await
            .inspect_err(|err| self.lost_hold(err, worker_id, task_id))?;
        // Dead-lettered already by this worker's earlier error, whose reply
        // was lost: tell everyone now, once (as for `complete`).
        if again && !self.is_running(worker_id, task_id) {
            return Err(RequestError::new(
                ErrorCode::InvalidState,
                "the task is already dead",
            ));
        }
        self.free(worker_id, task_id);
        self.ack(worker_id, ack, task_id, record.view.state);
        self.event(&record.view, Lifecycle::Failed);
        if record.view.state == TaskState::Dead {
            self.event(&record.view, Lifecycle::Dead);
            self.result_to_submitter(&record);
        }
        Ok(())
    }

    /// Cancels a task; `by` is the caller's `sub`, `None` for an admin.
    /// With `ack` (a connection and its request id), that connection gets
    /// `task:ack`.
    pub(crate) async fn cancel(
        &self,
        task_id: &str,
        by: Option<&str>,
        ack: Option<(u64, Option<RequestId>)>,
    ) -> Result<TaskView, RequestError> {
        self.engine.check_ready()?;
        let released = self
            .engine
            .task_cancel(task_id, by, now_ms(), self.config.retention)
            .await?;
        if let Some((conn, id)) = ack {
            self.ack(conn, id, task_id, TaskState::Cancelled);
        }
        if let Some((node, worker)) = released.holder {
            self.tell_cancel(node, worker, task_id, "cancelled");
        }
        self.event(&released.record.view, Lifecycle::Cancelled);
        self.result_to_submitter(&released.record);
        Ok(released.record.view)
    }

    /// A task by id, from Redis.
    pub(crate) async fn get(&self, task_id: &str) -> Result<Option<TaskView>, RequestError> {
        Ok(self.engine.task_get(task_id).await?.map(|r| r.view))
    }

    /// Every node's tasks in `state` whose type matches `kind`, from Redis,
    /// in submission order.
    pub(crate) async fn list(
        &self,
        state: Option<TaskState>,
        kind: Option<&Pattern>,
    ) -> Result<Vec<TaskView>, RequestError> {
        let mut records: Vec<_> = self
            .engine
            .task_list()
            .await?
            .into_iter()
            .filter(|r| state.is_none_or(|s| r.view.state == s))
            .filter(|r| {
                kind.is_none_or(|p| {
                    ChannelName::parse(&r.view.kind, &self.limits)
                        .is_ok_and(|name| p.matches(&name))
                })
            })
            .collect();
        records.sort_by_key(|r| r.seq);
        Ok(records.into_iter().map(|r| r.view).collect())
    }

    /// Every node's tasks by type and state, the queue depth and the
    /// newest dead-lettered tasks, from Redis.
    pub(crate) async fn report(&self, max_dead: usize) -> Result<TaskReport, RequestError> {
        self.engine.check_ready()?;
        let waiting = self.engine.task_waiting().await?;
        let records = self.engine.task_list().await?;
        let mut summary = TaskSummary {
            waiting,
            ..TaskSummary::default()
        };
        let mut dead = Vec::new();
        for record in records {
            let view = record.view;
            let key = (view.kind.clone(), view.state.as_str());
            *summary.counts.entry(key).or_default() += 1;
            if view.state == TaskState::Dead {
                dead.push(view);
            }
        }
        dead.sort_by_key(|t| std::cmp::Reverse(t.updated_at));
        dead.truncate(max_dead);
        Ok(TaskReport { summary, dead })
    }

    /// Time from queued to assigned of first attempts this node claimed.
    pub(crate) fn dispatch_wait(&self) -> &Histogram {
        &self.dispatch_wait
    }

    /// The cluster-wide worker id of this node's connection `conn`.
    pub(crate) fn worker_id(&self, conn: u64) -> String {
        self.engine.worker_id(conn)
    }

    /// A connection of this node ended: if it was a worker, its tasks go
    /// back to the queue (attempt counted) for any node's workers.
    pub(crate) async fn connection_closed(&self, worker_id: u64) {
        let Some(worker) = self.lock().remove(&worker_id) else {
            return;
        };
        self.workers_changed();
        self.events.worker(WorkerEvent::Disconnected, &worker.view);
        let mut requeued = false;
        for task_id in worker.running.keys() {
            let released = self
                .engine
                .task_release(
                    worker_id,
                    task_id,
                    "worker disconnected",
                    now_ms(),
                    self.config.retention,
                )
                .await;
            // Unreachable Redis: the lease expires and any node requeues it.
            if let Ok(Some(record)) = released {
                requeued |= self.released(&record);
            }
        }
        if requeued {
            self.engine.announce_tasks();
        }
    }

    /// Hands queued tasks to this node's free workers when woken, and
    /// reaps expired leases every [`REAP_EVERY`], until `shutdown`.
    pub(crate) async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(REAP_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // When this node's worker snapshot was last written to Redis.
        let mut stored_at = None;
        loop {
            let reap = tokio::select! {
                _ = shutdown.cancelled() => {
                    // Leaving: the other nodes stop listing these workers.
                    self.engine.forget_workers();
                    return;
                }
                _ = self.engine.task_woken() => false,
                _ = self.local_wake.notified() => false,
                _ = tick.tick() => true,
            };
            if !self.engine.is_ready() {
                // Redis may come back empty: write the snapshot again then.
                stored_at = None;
                continue;
            }
            if reap {
                self.reap().await;
            }
            self.fill().await;
            self.store_workers(&mut stored_at);
        }
    }

    /// Claims queued tasks for free workers, most free first.
    async fn fill(&self) {
        let mut idle: Vec<(u64, Vec<Pattern>, u32)> = self
            .lock()
            .iter()
            .filter(|(_, w)| w.free() > 0)
            .map(|(id, w)| (*id, w.capabilities.clone(), w.free()))
            .collect();
        if idle.is_empty() {
            return;
        }
        idle.sort_by_key(|(id, _, free)| (std::cmp::Reverse(*free), *id));
        let Ok(types) = self.engine.task_types().await else {
            return;
        };
        if types.is_empty() {
            return;
        }
        for (worker_id, capabilities, free) in idle {
            let kinds: Vec<String> = types
                .iter()
                .filter(|t| {
                    ChannelName::parse(t, &self.limits)
                        .is_ok_and(|name| capabilities.iter().any(|p| p.matches(&name)))
                })
                .cloned()
                .collect();
            if kinds.is_empty() {
                continue;
            }
            for _ in 0..free {
                match self.engine.task_claim(worker_id, &kinds, now_ms()).await {
                    Ok(Some(record)) => self.assigned(worker_id, record).await,
                    Ok(None) => break,
                    Err(_) => return,
                }
            }
        }
    }

    /// A claimed task: to the worker, and everyone hears of it.
    async fn assigned(&self, worker_id: u64, record: TaskRecord) {
        let view = &record.view;
        if view.attempt == 1 {
            // A retry's wait since it was requeued is not in the record.
            let waited = now_ms().saturating_sub(view.created_at);
            self.dispatch_wait.record(Duration::from_millis(waited));
        }
        let kind = ChannelName::parse(&view.kind, &self.limits).ok();
        let kept = match (self.lock().get_mut(&worker_id), kind) {
            (Some(worker), Some(kind)) => {
                worker.running.insert(view.id.clone(), (kind, view.attempt));
                true
            }
            _ => false,
        };
        self.workers_changed.store(true, Ordering::Release);
        self.event(view, Lifecycle::Assigned);
        if !kept {
            // The worker left while its claim was in flight.
            let released = self
                .engine
                .task_release(
                    worker_id,
                    &view.id,
                    "worker disconnected",
                    now_ms(),
                    self.config.retention,
                )
                .await;
            if let Ok(Some(record)) = released {
                if self.released(&record) {
                    self.engine.announce_tasks();
                }
            }
            return;
        }
        let assign = ServerMessage::TaskAssign {
            task: Assignment {
                id: view.id.clone(),
                kind: view.kind.clone(),
                payload: view.payload.clone(),
                attempt: view.attempt,
                deadline: record.lease,
            },
        };
        self.direct(worker_id, &assign.to_json());
    }

    /// Expired leases (any node's) back to the queue or dead; finished
    /// backoffs back to the queue.
    async fn reap(&self) {
        let Ok(released) = self.engine.task_reap(now_ms(), self.config.retention).await else {
            return;
        };
        let mut requeued = false;
        for item in released {
            if let Some((node, worker)) = item.holder {
                tracing::info!(task_id = item.record.view.id, "lease expired; requeued");
                self.tell_cancel(node, worker, &item.record.view.id, "lease_expired");
            }
            requeued |= self.released(&item.record);
        }
        if requeued {
            self.engine.announce_tasks();
        }
    }

    /// Events for a task that lost its holder; true when it is queued again.
    fn released(&self, record: &TaskRecord) -> bool {
        match record.view.state {
            TaskState::Queued => {
                self.event(&record.view, Lifecycle::Queued);
                true
            }
            TaskState::Dead => {
                self.event(&record.view, Lifecycle::Dead);
                self.result_to_submitter(record);
                false
            }
            _ => false,
        }
    }

    /// Redis says the worker no longer holds the task (its lease expired
    /// and the message telling this node got lost): free the slot anyway.
    fn lost_hold(&self, err: &RequestError, worker_id: u64, task_id: &str) {
        if err.code == ErrorCode::NotAssigned {
            self.free(worker_id, task_id);
        }
    }

    /// Whether this node counts `task_id` as running on `worker_id`.
    fn is_running(&self, worker_id: u64, task_id: &str) -> bool {
        self.lock()
            .get(&worker_id)
            .is_some_and(|w| w.running.contains_key(task_id))
    }

    /// A worker is done with a task (or lost it): its slot is free.
    fn free(&self, worker_id: u64, task_id: &str) {
        if let Some(worker) = self.lock().get_mut(&worker_id) {
            worker.running.remove(task_id);
        }
        self.workers_changed();
    }

    /// Tells the holder of a task that it lost it.
    fn tell_cancel(&self, node: u64, worker_id: u64, task_id: &str, reason: &str) {
        if node == self.engine.node() {
            self.cancel_local(worker_id, task_id, reason);
        } else {
            let msg = NodeMessage::Cancel {
                worker: worker_id,
                task_id: task_id.to_string(),
                reason: reason.to_string(),
            };
            self.engine.send_to_node(node, msg.to_bytes());
        }
    }

    fn cancel_local(&self, worker_id: u64, task_id: &str, reason: &str) {
        let held = self
            .lock()
            .get_mut(&worker_id)
            .and_then(|w| w.running.remove(task_id))
            .is_some();
        if held {
            let msg = ServerMessage::TaskCancel {
                task_id: task_id.to_string(),
                reason: reason.to_string(),
            };
            self.direct(worker_id, &msg.to_json());
            self.workers_changed();
        }
    }

    /// `task:result` to the submitting connection, on whatever node.
    fn result_to_submitter(&self, record: &TaskRecord) {
        let Some((node, conn)) = record.submitter else {
            return;
        };
        let frame = ServerMessage::TaskResult {
            task: record.view.clone(),
        }
        .to_json();
        if node == self.engine.node() {
            self.direct(conn, &frame);
        } else {
            let msg = NodeMessage::Direct { conn, frame };
            self.engine.send_to_node(node, msg.to_bytes());
        }
    }

    /// `task:ack` to `conn`, when the request had an id.
    fn ack(&self, conn: u64, id: Option<RequestId>, task_id: &str, state: TaskState) {
        if let Some(id) = id {
            let msg = ServerMessage::TaskAck {
                id: Some(id),
                task_id: task_id.to_string(),
                state,
            };
            self.direct(conn, &msg.to_json());
        }
    }

    fn direct(&self, conn: u64, frame: &str) {
        if let Some(conn) = self.connections.get(&conn) {
            conn.send_direct(Utf8Bytes::from(frame.to_string()));
        }
    }

    /// `task:<id>` and the lifecycle channel.
    fn event(&self, view: &TaskView, lifecycle: Lifecycle) {
        self.events.task(lifecycle, view);
    }
}

impl NodeInbox for ClusterTasks {
    /// A message another node sent this one.
    fn on_node_message(&self, msg: &NodeMessage) {
        match msg {
            NodeMessage::Direct { conn, frame } => self.direct(*conn, frame),
            NodeMessage::Cancel {
                worker,
                task_id,
                reason,
            } => self.cancel_local(*worker, task_id, reason),
            // The calls side's.
            _ => {}
        }
    }
}
