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
//! resolve at once.

use std::collections::BTreeMap;
use std::sync::Arc;

use futures::future::BoxFuture;
use serde_json::Value;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::cluster::ClusterTasks;
use super::{Connections, TaskService, TaskSummary};
use crate::channels::{NameLimits, Pattern};
use crate::engine::Engine;
use crate::error::RequestError;
use crate::metrics::Histogram;
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

/// A submit taken in order with its connection's other messages; its
/// `task:accepted` waits for [`Pending::durable`].
pub(crate) struct Pending {
    /// What the submitter will be told.
    accepted: Accepted,
    /// Resolves once the task is durable; `None` when it already is.
    durable: Option<BoxFuture<'static, Result<(), RequestError>>>,
}

impl Pending {
    /// The accepted task, once it is already durable (no wait needed).
    pub(crate) fn now(self) -> Result<Accepted, Pending> {
        match self.durable {
            None => Ok(self.accepted),
            Some(_) => Err(self),
        }
    }

    /// Waits until the task is durable.
    pub(crate) async fn durable(self) -> Result<Accepted, RequestError> {
        if let Some(durable) = self.durable {
            durable.await?;
        }
        Ok(self.accepted)
    }
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

    /// Accepts a task and resolves once it is durable (the HTTP API).
    pub async fn submit(
        &self,
        spec: TaskSpec,
        submitted_by: &str,
        submitter: Option<u64>,
    ) -> Result<Accepted, RequestError> {
        match &self.0 {
            Service::Local(tasks) => tasks.submit(spec, submitted_by, submitter).await,
            Service::Cluster { node: tasks, .. } => {
                tasks.submit(spec, submitted_by, submitter).await
            }
        }
    }

    /// Accepts a task from a connection, in order with its other messages;
    /// the caller sends `task:accepted` once [`Pending::durable`] resolves,
    /// without holding up the connection while the disk syncs.
    pub(crate) async fn accept(
        &self,
        spec: TaskSpec,
        submitted_by: &str,
        submitter: Option<u64>,
    ) -> Result<Pending, RequestError> {
        match &self.0 {
            Service::Local(tasks) => {
                let accepted = tasks.accept(spec, submitted_by, submitter)?;
                let tasks = Arc::clone(tasks);
                Ok(Pending {
                    accepted,
                    durable: Some(Box::pin(async move { tasks.durable().await })),
                })
            }
            Service::Cluster { node: tasks, .. } => Ok(Pending {
                accepted: tasks.submit(spec, submitted_by, submitter).await?,
                durable: None,
            }),
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

    /// `task:complete` from worker `conn`.
    pub(crate) async fn complete(
        &self,
        conn: u64,
        task_id: &str,
        result: Value,
    ) -> Result<(), RequestError> {
        match &self.0 {
            Service::Local(tasks) => tasks.complete(conn, task_id, result),
            Service::Cluster { node: tasks, .. } => tasks.complete(conn, task_id, result).await,
        }
    }

    /// `task:error` from worker `conn`; returns the task's new state.
    pub(crate) async fn fail(
        &self,
        conn: u64,
        task_id: &str,
        error: Value,
        retryable: bool,
    ) -> Result<TaskState, RequestError> {
        match &self.0 {
            Service::Local(tasks) => tasks.fail(conn, task_id, error, retryable),
            Service::Cluster { node: tasks, .. } => {
                tasks.fail(conn, task_id, error, retryable).await
            }
        }
    }

    /// Cancels a task; `by` is the caller's `sub`, `None` for an admin.
    pub async fn cancel(&self, task_id: &str, by: Option<&str>) -> Result<TaskView, RequestError> {
        match &self.0 {
            Service::Local(tasks) => tasks.cancel(task_id, by),
            Service::Cluster { node: tasks, .. } => tasks.cancel(task_id, by).await,
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
