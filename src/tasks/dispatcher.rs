//! The dispatcher: queued tasks, live workers, leases and retries, as one
//! synchronous state machine. Every operation updates the state and records
//! what must happen outside (messages to workers, events, writes to the
//! store, timers) in an [`Outbox`]; the async [`TaskService`] carries those
//! out. Keeping it free of I/O makes the rules testable in isolation.
//!
//! Invariant after every operation: no queued task has a live,
//! non-draining, capable worker with a free slot. So a new task either goes
//! straight to a worker or waits, and a freed slot takes the best waiting
//! task — dispatch is event-driven, never polled.
//!
//! [`TaskService`]: super::TaskService

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use serde_json::Value;
use tokio::time::Instant;

use crate::channels::{ChannelName, NameLimits, Pattern, SubscriptionIndex};
use crate::protocol::tasks::{Accepted, Assignment, TaskSpec, TaskState, TaskView, WorkerView};
use crate::tasks::config::TasksConfig;

use super::retry::RetryRules;
use super::{Lifecycle, Outbox, StoredTask, TaskError, Timer, WorkerEvent};

mod remote;
pub(crate) use remote::{Chooser, RemoteCandidate};

/// One task with the bookkeeping that is not part of its record.
#[derive(Debug)]
struct Task {
    /// The record: what the API shows, events carry and the store keeps.
    view: TaskView,
    /// The task type, validated.
    kind: ChannelName,
    /// Submission order, for FIFO within a priority (survives restarts).
    seq: u64,
    /// Connection that submitted it, for `task:result` (this process only).
    submitter: Option<u64>,
    /// Lease end of the current assignment.
    lease: Option<Instant>,
}

/// A registered worker.
#[derive(Debug)]
struct Worker {
    /// What the API shows.
    view: WorkerView,
    /// Capability patterns, parsed.
    capabilities: Vec<Pattern>,
}

impl Worker {
    fn free(&self) -> u32 {
        self.view
            .slots
            .saturating_sub(self.view.running.len() as u32)
    }

    fn can_take(&self) -> bool {
        !self.view.draining && self.free() > 0
    }

    fn capable(&self, kind: &ChannelName) -> bool {
        self.capabilities.iter().any(|p| p.matches(kind))
    }
}

/// Queue position: higher priority first, then older first.
type QueueKey = (Reverse<u8>, u64);

/// The whole task state of one hub.
pub(crate) struct Dispatcher {
    /// Limits and defaults.
    config: TasksConfig,
    /// Grammar limits for task types and capabilities.
    limits: NameLimits,
    /// Retry rules by task-type pattern, parsed once.
    retry: RetryRules,
    /// Every known task, terminal ones until their retention ends.
    tasks: HashMap<String, Task>,
    /// Waiting tasks by type, each ordered by priority then age.
    queues: HashMap<ChannelName, BTreeMap<QueueKey, String>>,
    /// Tasks queued or backing off, for `tasks.max_queued`.
    waiting: usize,
    /// Live workers by connection id.
    workers: HashMap<u64, Worker>,
    /// Capability pattern → worker, so finding the workers for a task type
    /// does not scan every worker.
    capable: SubscriptionIndex<u64>,
    /// Dedup key → task id, while that task is not terminal.
    dedup: HashMap<String, String>,
    /// Pending deadlines: leases, retries, purges.
    timers: BTreeSet<(Instant, Timer)>,
    /// Next submission sequence number.
    next_seq: u64,
    /// Rotates ties between equally free workers.
    round_robin: usize,
    /// Peer hubs as workers (federation); see `remote`.
    remote: remote::Remote,
}

impl Dispatcher {
    pub(crate) fn new(config: TasksConfig, limits: NameLimits) -> Dispatcher {
        let retry = RetryRules::new(&config, &limits);
        Dispatcher {
            config,
            limits,
            retry,
            tasks: HashMap::new(),
            queues: HashMap::new(),
            waiting: 0,
            workers: HashMap::new(),
            capable: SubscriptionIndex::new(256),
            dedup: HashMap::new(),
            timers: BTreeSet::new(),
            next_seq: 1,
            round_robin: 0,
            remote: remote::Remote::default(),
        }
    }

    /// Loads tasks from the store after a restart: queued ones wait again,
    /// ones that were assigned or backing off are requeued (their attempt
    /// stays counted), terminal ones are kept until their retention ends.
    pub(crate) fn restore(&mut self, stored: Vec<StoredTask>, now: Instant, out: &mut Outbox) {
        for StoredTask { seq, mut task } in stored {
            let Ok(kind) = ChannelName::parse(&task.kind, &self.limits) else {
                tracing::error!(
                    task_id = task.id,
                    kind = task.kind,
                    "stored task's type is invalid under the current channel limits; not restored"
                );
                continue;
            };
            self.next_seq = self.next_seq.max(seq + 1);
            let id = task.id.clone();
            // A task that was running on its last attempt has used them all.
            let exhausted = task.state == TaskState::Assigned && task.attempt >= task.max_attempts;
            if exhausted {
                task.state = TaskState::Dead;
                task.worker_id = None;
                task.error = Some(Value::String(
                    "the hub restarted during its last attempt".into(),
                ));
            }
            if task.state.is_terminal() {
                let purge_at = now + self.config.retention;
                self.timers.insert((purge_at, Timer::Purge(id.clone())));
            } else {
                task.state = TaskState::Queued;
                task.worker_id = None;
                if let Some(key) = &task.dedup_key {
                    self.dedup.insert(key.clone(), id.clone());
                }
            }
            let queued = task.state == TaskState::Queued;
            self.tasks.insert(
                id.clone(),
                Task {
                    view: task,
                    kind,
                    seq,
                    submitter: None,
                    lease: None,
                },
            );
            if queued {
                self.waiting += 1;
                self.enqueue(&id);
            }
            if queued || exhausted {
                self.persist(&id, out);
            }
        }
    }

    /// Accepts a task: assigns it at once when a worker can take it, else
    /// queues it.
    pub(crate) fn submit(
        &mut self,
        spec: TaskSpec,
        submitted_by: &str,
        submitter: Option<u64>,
        now: Instant,
        now_ms: u64,
        out: &mut Outbox,
    ) -> Result<Accepted, TaskError> {
        let (kind, view) = super::new_task(spec, &self.config, &self.limits, submitted_by, now_ms)?;
        if let Some(key) = &view.dedup_key {
            if let Some(existing) = self.dedup.get(key) {
                return Ok(Accepted {
                    task_id: existing.clone(),
                    deduplicated: true,
                });
            }
        }
        if self.waiting >= self.config.max_queued {
            return Err(TaskError::QueueFull(self.config.max_queued));
        }
        let id = view.id.clone();
        if let Some(key) = &view.dedup_key {
            self.dedup.insert(key.clone(), id.clone());
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.tasks.insert(
            id.clone(),
            Task {
                view,
                kind,
                seq,
                submitter,
                lease: None,
            },
        );
        self.remote.adopt(&id);
        self.waiting += 1;
        self.persist(&id, out);
        self.event(&id, Lifecycle::Queued, out);
        self.place(&id, None, now, now_ms, out);
        Ok(Accepted {
            task_id: id,
            deduplicated: false,
        })
    }

    /// Adds a worker and gives it work.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn register(
        &mut self,
        worker_id: u64,
        sub: &str,
        capabilities: Vec<Pattern>,
        slots: u32,
        labels: BTreeMap<String, String>,
        now: Instant,
        now_ms: u64,
        out: &mut Outbox,
    ) -> Result<(), TaskError> {
        if self.workers.contains_key(&worker_id) {
            return Err(TaskError::AlreadyRegistered);
        }
        for pattern in &capabilities {
            self.capable.insert(pattern, worker_id, worker_id);
        }
        let worker = Worker {
            view: WorkerView {
                worker_id: worker_id.to_string(),
                sub: sub.to_string(),
                capabilities: capabilities
                    .iter()
                    .map(|p| p.as_str().to_string())
                    .collect(),
                slots,
                running: Vec::new(),
                draining: false,
                labels,
                connected_at: now_ms,
                last_seen: now_ms,
            },
            capabilities,
        };
        out.worker_events
            .push((WorkerEvent::Connected, worker.view.clone()));
        self.workers.insert(worker_id, worker);
        self.fill(worker_id, now, now_ms, out);
        Ok(())
    }

    /// Stops new assignments to a worker; its running tasks finish.
    pub(crate) fn drain(&mut self, worker_id: u64) -> Result<usize, TaskError> {
        let worker = self
            .workers
            .get_mut(&worker_id)
            .ok_or(TaskError::NotRegistered)?;
        worker.view.draining = true;
        Ok(worker.view.running.len())
    }

    /// A worker's connection ended: every task it held is requeued (or
    /// dead-lettered when out of attempts).
    pub(crate) fn worker_gone(
        &mut self,
        worker_id: u64,
        now: Instant,
        now_ms: u64,
        out: &mut Outbox,
    ) {
        let Some(worker) = self.workers.remove(&worker_id) else {
            return;
        };
        for pattern in &worker.capabilities {
            self.capable.remove(pattern, worker_id);
        }
        if self.remote.is_remote(worker_id) {
            self.remote.forget_worker(worker_id);
        } else {
            out.worker_events
                .push((WorkerEvent::Disconnected, worker.view.clone()));
        }
        for task_id in &worker.view.running {
            self.release(task_id, "worker disconnected", None, now, now_ms, out);
        }
    }

    /// Marks a worker as seen (any message from it).
    pub(crate) fn touch(&mut self, worker_id: u64, now_ms: u64) {
        if let Some(worker) = self.workers.get_mut(&worker_id) {
            worker.view.last_seen = now_ms;
        }
    }

    /// `task:progress`: records progress and extends the lease.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn progress(
        &mut self,
        worker_id: u64,
        task_id: &str,
        progress: Option<u8>,
        message: Option<String>,
        now: Instant,
        now_ms: u64,
        out: &mut Outbox,
    ) -> Result<(), TaskError> {
        let task = self.held_mut(worker_id, task_id)?;
        if let Some(p) = progress {
            task.view.progress = Some(p.min(100));
        }
        if message.is_some() {
            task.view.message = message;
        }
        task.view.updated_at = now_ms;
        let lease = now + Duration::from_millis(task.view.timeout_ms);
        let old = task.lease.replace(lease);
        let attempt = task.view.attempt;
        if let Some(old) = old {
            self.timers
                .remove(&(old, Timer::Lease(task_id.to_string(), attempt)));
        }
        self.timers
            .insert((lease, Timer::Lease(task_id.to_string(), attempt)));
        self.event(task_id, Lifecycle::Progress, out);
        Ok(())
    }

    /// `task:complete`.
    pub(crate) fn complete(
        &mut self,
        worker_id: u64,
        task_id: &str,
        result: Value,
        now: Instant,
        now_ms: u64,
        out: &mut Outbox,
    ) -> Result<(), TaskError> {
        let task = self.held_mut(worker_id, task_id)?;
        task.view.result = Some(result);
        task.view.progress = Some(100);
        self.finish(task_id, TaskState::Completed, now, now_ms, out);
        self.free_slot(worker_id, task_id, now, now_ms, out);
        Ok(())
    }

    /// `task:error`: retried after a backoff when `retryable` and attempts
    /// remain, else dead.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn fail(
        &mut self,
        worker_id: u64,
        task_id: &str,
        error: Value,
        retryable: bool,
        now: Instant,
        now_ms: u64,
        out: &mut Outbox,
    ) -> Result<TaskState, TaskError> {
        let task = self.held_mut(worker_id, task_id)?;
        task.view.error = Some(error);
        let retry = retryable && task.view.attempt < task.view.max_attempts;
        if retry {
            let delay = self.backoff(task_id);
            let task = self.task_mut(task_id)?;
            task.view.state = TaskState::Failed;
            task.view.updated_at = now_ms;
            task.lease = None;
            self.waiting += 1;
            self.timers
                .insert((now + delay, Timer::Retry(task_id.to_string())));
            self.persist(task_id, out);
            self.event(task_id, Lifecycle::Failed, out);
        } else {
            // The failure event already shows where the task ends up.
            if let Ok(task) = self.task_mut(task_id) {
                task.view.state = TaskState::Dead;
            }
            self.event(task_id, Lifecycle::Failed, out);
            self.finish(task_id, TaskState::Dead, now, now_ms, out);
        }
        self.free_slot(worker_id, task_id, now, now_ms, out);
        Ok(if retry {
            TaskState::Failed
        } else {
            TaskState::Dead
        })
    }

    /// Cancels a task that is not finished yet. `by` is the caller's `sub`,
    /// or `None` for an admin.
    pub(crate) fn cancel(
        &mut self,
        task_id: &str,
        by: Option<&str>,
        now: Instant,
        now_ms: u64,
        out: &mut Outbox,
    ) -> Result<TaskView, TaskError> {
        let task = self.task_mut(task_id)?;
        if let Some(sub) = by {
            if task.view.submitted_by != sub {
                return Err(TaskError::Forbidden);
            }
        }
        if task.view.state.is_terminal() {
            return Err(TaskError::InvalidState(task.view.state));
        }
        let holder = task.view.worker_id.as_deref().and_then(|w| w.parse().ok());
        let state = task.view.state;
        if state == TaskState::Queued {
            self.dequeue(task_id);
        }
        self.finish(task_id, TaskState::Cancelled, now, now_ms, out);
        if let Some(worker_id) = holder.filter(|_| state == TaskState::Assigned) {
            out.cancels
                .push((worker_id, task_id.to_string(), "cancelled"));
            self.free_slot(worker_id, task_id, now, now_ms, out);
        }
        self.view(task_id).ok_or(TaskError::NotFound)
    }

    /// The earliest pending deadline.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.timers.first().map(|(at, _)| *at)
    }

    /// Handles every deadline up to `now`: expired leases (requeue and tell
    /// the old worker), finished backoffs, retention ends.
    pub(crate) fn fire_timers(&mut self, now: Instant, now_ms: u64, out: &mut Outbox) {
        while let Some((at, _)) = self.timers.first() {
            if *at > now {
                break;
            }
            let Some((_, timer)) = self.timers.pop_first() else {
                break;
            };
            match timer {
                Timer::Lease(task_id, attempt) => {
                    self.lease_expired(&task_id, attempt, now, now_ms, out)
                }
                Timer::Retry(task_id) => {
                    let waiting = self
                        .tasks
                        .get(&task_id)
                        .is_some_and(|t| t.view.state == TaskState::Failed);
                    if waiting {
                        if let Some(task) = self.tasks.get_mut(&task_id) {
                            task.view.state = TaskState::Queued;
                            task.view.updated_at = now_ms;
                        }
                        self.persist(&task_id, out);
                        self.event(&task_id, Lifecycle::Queued, out);
                        self.place(&task_id, None, now, now_ms, out);
                    }
                }
                Timer::Forward(task_id) => self.forward_due(&task_id, now, now_ms, out),
                Timer::Purge(task_id) => {
                    if self
                        .tasks
                        .get(&task_id)
                        .is_some_and(|t| t.view.state.is_terminal())
                    {
                        self.tasks.remove(&task_id);
                        out.remove.push(task_id);
                    }
                }
            }
        }
    }

    /// One task's record.
    pub(crate) fn view(&self, task_id: &str) -> Option<TaskView> {
        self.tasks.get(task_id).map(|t| t.view.clone())
    }

    /// Tasks filtered by state and type pattern, oldest first.
    pub(crate) fn list(&self, state: Option<TaskState>, kind: Option<&Pattern>) -> Vec<TaskView> {
        let mut found: Vec<&Task> = self
            .tasks
            .values()
            .filter(|t| state.is_none_or(|s| t.view.state == s))
            .filter(|t| kind.is_none_or(|p| p.matches(&t.kind)))
            .collect();
        found.sort_by_key(|t| t.seq);
        found.into_iter().map(|t| t.view.clone()).collect()
    }

    /// Live workers, by id.
    pub(crate) fn workers(&self) -> Vec<WorkerView> {
        let mut views: Vec<WorkerView> = self
            .workers
            .iter()
            .filter(|(id, _)| !self.remote.is_remote(**id))
            .map(|(_, w)| w.view.clone())
            .collect();
        views.sort_by_key(|w| w.worker_id.parse::<u64>().unwrap_or(0));
        views
    }

    /// Task counts by (type, state) and the queue depth.
    pub(crate) fn summary(&self) -> super::TaskSummary {
        let mut summary = super::TaskSummary {
            waiting: self.waiting,
            ..Default::default()
        };
        for task in self.tasks.values() {
            let key = (task.view.kind.clone(), task.view.state.as_str());
            *summary.counts.entry(key).or_default() += 1;
        }
        summary
    }

    /// Tasks waiting for a worker (queued or backing off).
    pub(crate) fn waiting(&self) -> usize {
        self.waiting
    }

    /// Live workers and free slots per capability pattern, sorted by pattern
    /// (what this hub can take; draining workers have no free slots).
    pub(crate) fn capacity(&self) -> Vec<crate::protocol::federation::CapabilityLoad> {
        let mut loads: BTreeMap<&str, (u32, u32)> = BTreeMap::new();
        for (id, worker) in &self.workers {
            // Peers (federation links) advertise their own capacity.
            if self.remote.is_remote(*id) {
                continue;
            }
            let free = if worker.view.draining {
                0
            } else {
                worker.free()
            };
            for capability in &worker.view.capabilities {
                let entry = loads.entry(capability.as_str()).or_default();
                entry.0 += 1;
                entry.1 += free;
            }
        }
        loads
            .into_iter()
            .map(|(capability, (workers, free_slots))| {
                crate::protocol::federation::CapabilityLoad {
                    capability: capability.to_string(),
                    workers,
                    free_slots,
                }
            })
            .collect()
    }

    /// Whether `worker_id` is registered.
    pub(crate) fn is_worker(&self, worker_id: u64) -> bool {
        self.workers.contains_key(&worker_id)
    }

    // ---- internals ----

    fn task_mut(&mut self, task_id: &str) -> Result<&mut Task, TaskError> {
        self.tasks.get_mut(task_id).ok_or(TaskError::NotFound)
    }

    /// The task, if `worker_id` holds it now.
    fn held_mut(&mut self, worker_id: u64, task_id: &str) -> Result<&mut Task, TaskError> {
        let task = self.tasks.get_mut(task_id).ok_or(TaskError::NotAssigned)?;
        let holder = worker_id.to_string();
        if task.view.state != TaskState::Assigned || task.view.worker_id.as_deref() != Some(&holder)
        {
            return Err(TaskError::NotAssigned);
        }
        Ok(task)
    }

    /// Gives a queued task to the most free capable worker, or queues it.
    /// `exclude` is a worker that just lost the task; it only gets it back
    /// through the queue when no other worker can take it.
    fn place(
        &mut self,
        task_id: &str,
        exclude: Option<u64>,
        now: Instant,
        now_ms: u64,
        out: &mut Outbox,
    ) {
        let Some(task) = self.tasks.get(task_id) else {
            return;
        };
        let candidates = self.capable.matches(&task.kind);
        let mut best: Vec<u64> = Vec::new();
        let mut best_free = 0;
        for id in candidates.iter() {
            let Some(worker) = self.workers.get(id) else {
                continue;
            };
            // Peers only take what no local worker can (see `remote`).
            if !worker.can_take() || exclude == Some(*id) || self.remote.is_remote(*id) {
                continue;
            }
            let free = worker.free();
            if free > best_free {
                best_free = free;
                best.clear();
            }
            if free == best_free {
                best.push(*id);
            }
        }
        if best.is_empty() {
            if !self.place_remote(task_id, &candidates, exclude, now, now_ms, out) {
                self.enqueue(task_id);
            }
            return;
        }
        let chosen = best[self.round_robin % best.len()];
        self.round_robin = self.round_robin.wrapping_add(1);
        self.assign(task_id, chosen, now, now_ms, out);
    }

    /// Fills a worker's free slots with the best waiting tasks it can take.
    fn fill(&mut self, worker_id: u64, now: Instant, now_ms: u64, out: &mut Outbox) {
        if self.remote.is_remote(worker_id) {
            return self.fill_remote(worker_id, now, now_ms, out);
        }
        loop {
            let Some(worker) = self.workers.get(&worker_id) else {
                return;
            };
            if !worker.can_take() {
                return;
            }
            // Scans the task types that have waiting tasks (not the tasks).
            let best = self
                .queues
                .iter()
                .filter(|(kind, _)| worker.capable(kind))
                .filter_map(|(_, queue)| queue.first_key_value())
                .min_by_key(|(key, _)| **key)
                .map(|(_, id)| id.clone());
            let Some(task_id) = best else {
                return;
            };
            self.dequeue(&task_id);
            self.assign(&task_id, worker_id, now, now_ms, out);
        }
    }

    fn enqueue(&mut self, task_id: &str) {
        if let Some(task) = self.tasks.get(task_id) {
            self.queues
                .entry(task.kind.clone())
                .or_default()
                .insert((Reverse(task.view.priority), task.seq), task_id.to_string());
        }
    }

    fn dequeue(&mut self, task_id: &str) {
        let Some(task) = self.tasks.get(task_id) else {
            return;
        };
        if let Some(queue) = self.queues.get_mut(&task.kind) {
            queue.remove(&(Reverse(task.view.priority), task.seq));
            if queue.is_empty() {
                self.queues.remove(&task.kind);
            }
        }
    }

    fn assign(
        &mut self,
        task_id: &str,
        worker_id: u64,
        now: Instant,
        now_ms: u64,
        out: &mut Outbox,
    ) {
        let Some(task) = self.tasks.get_mut(task_id) else {
            return;
        };
        let Some(worker) = self.workers.get_mut(&worker_id) else {
            return;
        };
        self.waiting = self.waiting.saturating_sub(1);
        // A queued task's record last changed when it was (re)queued.
        out.dispatch_waits
            .push(now_ms.saturating_sub(task.view.updated_at));
        task.view.state = TaskState::Assigned;
        task.view.attempt += 1;
        task.view.worker_id = Some(worker_id.to_string());
        task.view.hub = self.remote.hub_name(worker_id).map(Into::into);
        task.view.updated_at = now_ms;
        let lease = now + Duration::from_millis(task.view.timeout_ms);
        task.lease = Some(lease);
        worker.view.running.push(task_id.to_string());
        self.timers
            .insert((lease, Timer::Lease(task_id.to_string(), task.view.attempt)));
        out.assigns.push((
            worker_id,
            Assignment {
                id: task_id.to_string(),
                kind: task.view.kind.clone(),
                payload: task.view.payload.clone(),
                attempt: task.view.attempt,
                deadline: now_ms + task.view.timeout_ms,
            },
        ));
        self.persist(task_id, out);
        self.event(task_id, Lifecycle::Assigned, out);
    }

    /// The holder lost the task (disconnect, lease expiry): requeue it, or
    /// dead-letter it when its attempts are used up.
    fn release(
        &mut self,
        task_id: &str,
        why: &str,
        exclude: Option<u64>,
        now: Instant,
        now_ms: u64,
        out: &mut Outbox,
    ) {
        let Some(task) = self.tasks.get_mut(task_id) else {
            return;
        };
        if task.view.state != TaskState::Assigned {
            return;
        }
        task.lease = None;
        task.view.worker_id = None;
        task.view.hub = None;
        task.view.error = Some(Value::String(why.to_string()));
        if task.view.attempt >= task.view.max_attempts {
            self.finish(task_id, TaskState::Dead, now, now_ms, out);
            return;
        }
        task.view.state = TaskState::Queued;
        task.view.updated_at = now_ms;
        self.waiting += 1;
        self.persist(task_id, out);
        self.event(task_id, Lifecycle::Queued, out);
        self.place(task_id, exclude, now, now_ms, out);
    }

    fn lease_expired(
        &mut self,
        task_id: &str,
        attempt: u32,
        now: Instant,
        now_ms: u64,
        out: &mut Outbox,
    ) {
        let Some(task) = self.tasks.get(task_id) else {
            return;
        };
        if task.view.state != TaskState::Assigned || task.view.attempt != attempt {
            return;
        }
        let Some(worker_id) = task
            .view
            .worker_id
            .as_deref()
            .and_then(|w| w.parse::<u64>().ok())
        else {
            return;
        };
        tracing::info!(task_id, worker_id, attempt, "lease expired; reassigning");
        out.cancels
            .push((worker_id, task_id.to_string(), "lease_expired"));
        if let Some(worker) = self.workers.get_mut(&worker_id) {
            worker.view.running.retain(|t| t != task_id);
        }
        self.release(task_id, "lease expired", Some(worker_id), now, now_ms, out);
        self.fill(worker_id, now, now_ms, out);
    }

    /// Moves a task to a terminal state and tells everyone.
    fn finish(
        &mut self,
        task_id: &str,
        state: TaskState,
        now: Instant,
        now_ms: u64,
        out: &mut Outbox,
    ) {
        let Some(task) = self.tasks.get_mut(task_id) else {
            return;
        };
        if matches!(task.view.state, TaskState::Queued | TaskState::Failed) {
            self.waiting = self.waiting.saturating_sub(1);
        }
        task.view.state = state;
        task.view.updated_at = now_ms;
        task.lease = None;
        if let Some(key) = &task.view.dedup_key {
            if self.dedup.get(key).is_some_and(|id| id == task_id) {
                self.dedup.remove(key);
            }
        }
        if let Some(conn) = task.submitter {
            out.results.push((conn, task.view.clone()));
        }
        self.timers.insert((
            now + self.config.retention,
            Timer::Purge(task_id.to_string()),
        ));
        self.persist(task_id, out);
        let lifecycle = match state {
            TaskState::Completed => Lifecycle::Completed,
            TaskState::Cancelled => Lifecycle::Cancelled,
            _ => Lifecycle::Dead,
        };
        self.event(task_id, lifecycle, out);
        self.remote.finished(task_id);
    }

    /// A worker is done with a task: free its slot and refill it.
    fn free_slot(
        &mut self,
        worker_id: u64,
        task_id: &str,
        now: Instant,
        now_ms: u64,
        out: &mut Outbox,
    ) {
        if let Some(worker) = self.workers.get_mut(&worker_id) {
            worker.view.running.retain(|t| t != task_id);
        }
        self.fill(worker_id, now, now_ms, out);
    }

    fn backoff(&self, task_id: &str) -> Duration {
        let Some(task) = self.tasks.get(task_id) else {
            return Duration::ZERO;
        };
        self.retry.backoff(&task.kind, task.view.attempt)
    }

    fn persist(&self, task_id: &str, out: &mut Outbox) {
        // A task a peer handed over is kept durable by its origin.
        if self.remote.is_ephemeral(task_id) {
            return;
        }
        if let Some(task) = self.tasks.get(task_id) {
            out.persist.push(StoredTask {
                seq: task.seq,
                task: task.view.clone(),
            });
        }
    }

    fn event(&self, task_id: &str, lifecycle: Lifecycle, out: &mut Outbox) {
        if let Some(task) = self.tasks.get(task_id) {
            out.events.push((lifecycle, task.view.clone()));
        }
    }
}

/// A new task id: 16 hex digits, valid as a channel segment.
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_task_restored_mid_last_attempt_is_dead_not_redelivered() {
        let mut d = Dispatcher::new(TasksConfig::default(), NameLimits::default());
        let mut out = Outbox::default();
        let spec = TaskSpec {
            kind: "demo:x".into(),
            payload: Value::Null,
            priority: None,
            timeout_ms: None,
            max_attempts: Some(1),
            dedup_key: None,
        };
        let id = d
            .submit(spec, "me", None, Instant::now(), 0, &mut out)
            .expect("accepted")
            .task_id;
        let mut stored = out.persist.last().cloned().expect("persisted");
        stored.task.state = TaskState::Assigned;
        stored.task.attempt = 1;
        let mut restarted = Dispatcher::new(TasksConfig::default(), NameLimits::default());
        restarted.restore(vec![stored], Instant::now(), &mut Outbox::default());
        assert_eq!(restarted.view(&id).map(|t| t.state), Some(TaskState::Dead));
        assert!(restarted.queues.is_empty());
    }
}
