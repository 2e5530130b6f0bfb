//! This node's workers in cluster mode: registering, draining, and the
//! list — the node's own, plus the other nodes' from the snapshots each
//! keeps in Redis (`engine::redis::workers`).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering;

use super::{ClusterTasks, LocalWorker};
use crate::channels::Pattern;
use crate::error::{ErrorCode, RequestError};
use crate::protocol::now_ms;
use crate::protocol::tasks::WorkerView;

impl ClusterTasks {
    /// Registers one of this node's connections as a worker.
    pub(crate) fn register(
        &self,
        worker_id: u64,
        sub: &str,
        capabilities: &[String],
        slots: u32,
        labels: BTreeMap<String, String>,
    ) -> Result<Vec<Pattern>, RequestError> {
        let patterns = crate::tasks::parse_capabilities(capabilities, &self.limits)?;
        let now = now_ms();
        let view = WorkerView {
            worker_id: self.engine.worker_id(worker_id),
            sub: sub.to_string(),
            capabilities: patterns.iter().map(|p| p.as_str().to_string()).collect(),
            slots,
            running: Vec::new(),
            draining: false,
            labels,
            connected_at: now,
            last_seen: now,
        };
        {
            let mut workers = self.lock();
            if workers.contains_key(&worker_id) {
                return Err(RequestError::new(
                    ErrorCode::BadRequest,
                    "this connection is already registered as a worker",
                ));
            }
            workers.insert(
                worker_id,
                LocalWorker {
                    view: view.clone(),
                    capabilities: patterns.clone(),
                    running: HashMap::new(),
                },
            );
        }
        self.events
            .worker(crate::tasks::WorkerEvent::Connected, &view);
        self.workers_changed();
        Ok(patterns)
    }

    /// A task message from one of this node's workers: its `lastSeen`.
    pub(crate) fn touch(&self, worker_id: u64) {
        if let Some(worker) = self.lock().get_mut(&worker_id) {
            worker.view.last_seen = now_ms();
        }
        self.workers_changed.store(true, Ordering::Release);
    }

    /// Whether `worker_id` is one of this node's workers.
    pub(crate) fn is_worker(&self, worker_id: u64) -> bool {
        self.lock().contains_key(&worker_id)
    }

    /// Stops new assignments to a worker; returns how many it still runs.
    pub(crate) fn drain(&self, worker_id: u64) -> Result<usize, RequestError> {
        let mut workers = self.lock();
        let worker = workers
            .get_mut(&worker_id)
            .ok_or_else(|| RequestError::new(ErrorCode::NotRegistered, "register first"))?;
        worker.view.draining = true;
        let running = worker.running.len();
        drop(workers);
        self.workers_changed();
        Ok(running)
    }

    /// Every live node's workers, by node and connection: this node's as
    /// they are, the others' from the snapshots they keep in Redis (at most
    /// one [`REAP_EVERY`] behind).
    pub(crate) async fn all_workers(&self) -> Result<Vec<WorkerView>, RequestError> {
        self.engine.check_ready()?;
        let mut views = self.workers();
        for snapshot in self.engine.other_workers().await? {
            match serde_json::from_str::<Vec<WorkerView>>(&snapshot) {
                Ok(theirs) => views.extend(theirs),
                Err(err) => tracing::warn!(error = %err, "ignoring a node's worker list"),
            }
        }
        views.sort_by(|a, b| worker_order(&a.worker_id).cmp(&worker_order(&b.worker_id)));
        Ok(views)
    }

    /// Marks the snapshot stale and wakes the loop that writes it.
    pub(super) fn workers_changed(&self) {
        self.workers_changed.store(true, Ordering::Release);
        self.local_wake.notify_one();
    }

    /// Writes this node's worker snapshot to Redis when it changed, or
    /// when it is due for renewal.
    pub(super) fn store_workers(&self, stored_at: &mut Option<tokio::time::Instant>) {
        let due = stored_at.is_none_or(|at| at.elapsed() >= self.engine.workers_refresh());
        if !self.workers_changed.swap(false, Ordering::AcqRel) && !due {
            return;
        }
        let snapshot = serde_json::to_string(&self.workers()).unwrap_or_else(|_| "[]".into());
        if self.engine.store_workers(snapshot) {
            *stored_at = Some(tokio::time::Instant::now());
        } else {
            self.workers_changed.store(true, Ordering::Release);
        }
    }

    /// This node's workers.
    pub(crate) fn workers(&self) -> Vec<WorkerView> {
        let mut views: Vec<(u64, WorkerView)> = self
            .lock()
            .iter()
            .map(|(id, w)| {
                let mut view = w.view.clone();
                view.running = w.running.keys().cloned().collect();
                (*id, view)
            })
            .collect();
        views.sort_by_key(|(id, _)| *id);
        views.into_iter().map(|(_, view)| view).collect()
    }
}

/// Sort key of a cluster worker id (`<node>-<connection>`): by node, then
/// by connection number.
fn worker_order(worker_id: &str) -> (&str, u64) {
    match worker_id.rsplit_once('-') {
        Some((node, conn)) => (node, conn.parse().unwrap_or(0)),
        None => (worker_id, 0),
    }
}
