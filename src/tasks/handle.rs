//! One task service, whichever engine runs: [`Tasks`] is the value the
//! sessions, the HTTP API and the metrics talk to. It is matched here and
//! nowhere else (the engine's choice reaches `tasks/` once, when the hub is
//! built):
//!
//! - `Local` — [`TaskService`]: the dispatcher in this process, with its
//!   durable store (memory engine);
//! - `Cluster` — [`ClusterTasks`]: the queue in Redis, this node's workers
//!   (Redis engine).
//!
//! Every operation is async (the cluster's go to Redis); the local ones
//! resolve at once. A request from a connection (`accept`, `complete`,
//! `fail`, `cancel_request`) is answered by the service itself —
//! `task:accepted` or `task:ack` once the change is durable, in order with
//! everything else it sends about the task — so the caller only answers
//! refusals.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::Value;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::cluster::ClusterTasks;
use super::{Connections, TaskService, TaskSummary};
use crate::channels::{NameLimits, Pattern};
use crate::engine::Engine;
use crate::error::RequestError;
use crate::metrics::Histogram;
use crate::protocol::RequestId;
use crate::protocol::tasks::{Accepted, TaskSpec, TaskState, TaskView, WorkerView};
use crate::router::manager::ChannelManager;
use crate::tasks::config::TasksConfig;

/// The hub's task service: submit, look up, list and cancel tasks, see
/// the workers, whichever engine runs.
pub struct Tasks(Service);

/// The task services, matched in this file only.
enum Service {
    /// Tasks in this process (memory engine).
    Local(Arc<TaskService>),
    /// Tasks in Redis; this node runs its own workers (Redis engine).
    Cluster {
        /// The node's side of the queue in Redis.
        node: Arc<ClusterTasks>,
        /// The in-process service, which holds only what peer hubs hand
        /// over (federation); its timers run as on the memory engine.
        handed_over: Arc<TaskService>,
    },
}

/// What `/metrics` and `/api/stats` show of the tasks.
#[derive(Debug, Clone, Default)]
pub(crate) struct TaskReport {
    /// Counts by type and state, and the queue depth.
    pub(crate) summary: TaskSummary,
    /// The newest dead-lettered tasks, newest first.
    pub(crate) dead: Vec<TaskView>,
}

impl Tasks {
    /// The task service for `engine`: `local` itself on the memory engine,
    /// the cluster's node side on Redis.
    pub(crate) fn new(
        engine: &Engine,
        local: &Arc<TaskService>,
        channels: &Arc<ChannelManager>,
        connections: &Arc<Connections>,
        config: &TasksConfig,
        limits: NameLimits,
    ) -> Tasks {
        Tasks(match engine.redis() {
            None => Service::Local(Arc::clone(local)),
            Some(redis) => Service::Cluster {
                node: ClusterTasks::new(
                    Arc::clone(redis),
                    Arc::clone(channels),
                    Arc::clone(connections),
                    config.clone(),
                    limits,
                ),
                handed_over: Arc::clone(local),
            },
        })
    }

    /// Starts the service's background work (timers, or the cluster's
    /// dispatch loop); it stops with `shutdown`.
    pub(crate) fn start(&self, tracker: &TaskTracker, shutdown: CancellationToken) {
        match &self.0 {
            Service::Local(tasks) => {
                tracker.spawn(Arc::clone(tasks).run_timers(shutdown));
            }
            Service::Cluster { node, handed_over } => {
                tracker.spawn(Arc::clone(handed_over).run_timers(shutdown.clone()));
                tracker.spawn(Arc::clone(node).run(shutdown));
            }
        }
    }

    /// Accepts a task and resolves once it is durable (the HTTP API: no
    /// connection gets its `task:result`).
    pub async fn submit(
        &self,
        spec: TaskSpec,
        submitted_by: &str,
    ) -> Result<Accepted, RequestError> {
        match &self.0 {
            Service::Local(tasks) => tasks.submit(spec, submitted_by).await,
            Service::Cluster { node: tasks, .. } => tasks.submit(spec, submitted_by, None).await,
        }
    }

    /// Accepts a task from connection `conn`, in order with its other
    /// messages; the service sends `task:accepted` (with `id`) once the
    /// task is durable and before anything else about it, without holding
    /// up the connection while the disk syncs. `Err` is a refusal.
    pub(crate) async fn accept(
        &self,
        spec: TaskSpec,
        submitted_by: &str,
        conn: u64,
        id: Option<RequestId>,
    ) -> Result<(), RequestError> {
        match &self.0 {
            Service::Local(tasks) => tasks.accept(spec, submitted_by, conn, id),
            Service::Cluster { node: tasks, .. } => tasks
                .submit(spec, submitted_by, Some((conn, id)))
                .await
                .map(drop),
        }
    }

    /// Registers connection `conn` as a worker; returns its capabilities
    /// and its worker id.
    pub(crate) fn register(
        &self,
        conn: u64,
        sub: &str,
        capabilities: &[String],
        slots: u32,
        labels: BTreeMap<String, String>,
    ) -> Result<(Vec<Pattern>, String), RequestError> {
        match &self.0 {
            Service::Local(tasks) => Ok((
                tasks.register(conn, sub, capabilities, slots, labels)?,
                conn.to_string(),
            )),
            Service::Cluster { node: tasks, .. } => Ok((
                tasks.register(conn, sub, capabilities, slots, labels)?,
                tasks.worker_id(conn),
            )),
        }
    }

    /// Stops new assignments to a worker; returns how many it still runs.
    pub(crate) fn drain(&self, conn: u64) -> Result<usize, RequestError> {
        match &self.0 {
            Service::Local(tasks) => tasks.drain(conn),
            Service::Cluster { node: tasks, .. } => tasks.drain(conn),
        }
    }

    /// A worker was heard from.
    pub(crate) fn touch(&self, conn: u64) {
        match &self.0 {
            Service::Local(tasks) => tasks.touch(conn),
            Service::Cluster { node: tasks, .. } => tasks.touch(conn),
        }
    }

    /// `task:progress` from worker `conn`; extends the lease.
    pub(crate) async fn progress(
        &self,
        conn: u64,
        task_id: &str,
        progress: Option<u8>,
        message: Option<String>,
    ) -> Result<(), RequestError> {
        match &self.0 {
            Service::Local(tasks) => tasks.progress(conn, task_id, progress, message),
            Service::Cluster { node: tasks, .. } => {
                tasks.progress(conn, task_id, progress, message).await
            }
        }
    }

    /// `task:complete` from worker `conn`; with `id`, the service sends
    /// its `task:ack` once the completion is durable.
    pub(crate) async fn complete(
        &self,
        conn: u64,
        task_id: &str,
        result: Value,
        id: Option<RequestId>,
    ) -> Result<(), RequestError> {
        match &self.0 {
            Service::Local(tasks) => tasks.complete(conn, task_id, result, id),
            Service::Cluster { node: tasks, .. } => tasks.complete(conn, task_id, result, id).await,
        }
    }

    /// `task:error` from worker `conn`; with `id`, the service sends its
    /// `task:ack` (with the task's new state) once the change is durable.
    pub(crate) async fn fail(
        &self,
        conn: u64,
        task_id: &str,
        error: Value,
        retryable: bool,
        id: Option<RequestId>,
    ) -> Result<(), RequestError> {
        match &self.0 {
            Service::Local(tasks) => tasks.fail(conn, task_id, error, retryable, id).map(drop),
            Service::Cluster { node: tasks, .. } => {
                tasks.fail(conn, task_id, error, retryable, id).await
            }
        }
    }

    /// Cancels a task and returns once the cancel is durable (the HTTP
    /// API); `by` is the caller's `sub`, `None` for an admin.
    pub async fn cancel(&self, task_id: &str, by: Option<&str>) -> Result<TaskView, RequestError> {
        match &self.0 {
            Service::Local(tasks) => tasks.cancel_durably(task_id, by).await,
            Service::Cluster { node: tasks, .. } => tasks.cancel(task_id, by, None).await,
        }
    }

    /// `task:cancel` from connection `conn` (whose `sub` is `by`); with
    /// `id`, the service sends its `task:ack` once the cancel is durable.
    pub(crate) async fn cancel_request(
        &self,
        conn: u64,
        id: Option<RequestId>,
        task_id: &str,
        by: &str,
    ) -> Result<(), RequestError> {
        match &self.0 {
            Service::Local(tasks) => tasks.cancel(task_id, Some(by), Some((conn, id))).map(drop),
            Service::Cluster { node: tasks, .. } => tasks
                .cancel(task_id, Some(by), Some((conn, id)))
                .await
                .map(drop),
        }
    }

    /// A task by id.
    pub async fn get(&self, task_id: &str) -> Result<Option<TaskView>, RequestError> {
        match &self.0 {
            Service::Local(tasks) => Ok(tasks.get(task_id)),
            Service::Cluster { node: tasks, .. } => tasks.get(task_id).await,
        }
    }

    /// Tasks in `state` whose type matches `kind`, oldest first; in a
    /// cluster, every node's.
    pub async fn list(
        &self,
        state: Option<TaskState>,
        kind: Option<&Pattern>,
    ) -> Result<Vec<TaskView>, RequestError> {
        match &self.0 {
            Service::Local(tasks) => Ok(tasks.list(state, kind)),
            Service::Cluster { node: tasks, .. } => tasks.list(state, kind).await,
        }
    }

    /// Every worker; in a cluster, every live node's.
    pub async fn workers(&self) -> Result<Vec<WorkerView>, RequestError> {
        match &self.0 {
            Service::Local(tasks) => Ok(tasks.workers()),
            Service::Cluster { node: tasks, .. } => tasks.all_workers().await,
        }
    }

    /// This node's workers (`/metrics`, `/api/stats`).
    pub(crate) fn local_workers(&self) -> Vec<WorkerView> {
        match &self.0 {
            Service::Local(tasks) => tasks.workers(),
            Service::Cluster { node: tasks, .. } => tasks.workers(),
        }
    }

    /// Task counts by type and state and the newest dead-lettered tasks
    /// (at most `max_dead`, newest first), for `/metrics` and `/api/stats`:
    /// every task of the hub — in a cluster, read from Redis, so any node
    /// shows the whole queue (one scan of the task records per call, as the
    /// memory engine walks its own).
    pub(crate) async fn report(&self, max_dead: usize) -> Result<TaskReport, RequestError> {
        match &self.0 {
            Service::Local(tasks) => Ok(TaskReport {
                summary: tasks.summary(),
                dead: tasks.recent_dead(max_dead),
            }),
            Service::Cluster { node: tasks, .. } => tasks.report(max_dead).await,
        }
    }

    /// Time from queued to assigned, for tasks this node assigned.
    pub(crate) fn dispatch_wait(&self) -> &Histogram {
        match &self.0 {
            Service::Local(tasks) => &tasks.dispatch_wait,
            Service::Cluster { node: tasks, .. } => tasks.dispatch_wait(),
        }
    }

    /// A connection ended: whatever it held as a worker goes back to the
    /// queue (in a cluster, through Redis, on a task `tracker` waits for).
    pub(crate) fn connection_closed(&self, conn: u64, tracker: &TaskTracker) {
        match &self.0 {
            Service::Local(tasks) => tasks.connection_closed(conn),
            Service::Cluster { node: tasks, .. } if tasks.is_worker(conn) => {
                let tasks = Arc::clone(tasks);
                tracker.spawn(async move { tasks.connection_closed(conn).await });
            }
            Service::Cluster { .. } => {}
        }
    }

    /// Holds the local task store's commits (`true`) until released
    /// (`false`), as a stalled disk would (the `test-hooks` hook).
    #[cfg(feature = "test-hooks")]
    pub(crate) fn hold_commits(&self, hold: bool) {
        match &self.0 {
            Service::Local(tasks)
            | Service::Cluster {
                handed_over: tasks, ..
            } => tasks.hold_commits(hold),
        }
    }

    /// Waits until every change so far is durable (shutdown).
    pub(crate) async fn flush(&self) {
        match &self.0 {
            Service::Local(tasks) => tasks.flush().await,
            // Every change to the queue went to Redis when it was made;
            // what peers handed over may be in the local store.
            Service::Cluster { handed_over, .. } => handed_over.flush().await,
        }
    }
}
