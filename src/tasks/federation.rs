//! What the federation needs from task routing: peers as remote workers
//! (see `dispatcher/remote.rs`), tasks handed over by peers, local capacity
//! for `hub:capacity`, and an observer told about changes so progress of a
//! peer's task can flow back and capacity adverts stay current.

use std::sync::{Arc, Weak};
use std::time::Duration;

pub(crate) use super::dispatcher::{Chooser, RemoteCandidate};
use super::{Lifecycle, Outbox, TaskService};
use crate::channels::Pattern;
use crate::error::RequestError;
use crate::protocol::tasks::{Accepted, TaskSpec, TaskView};

/// Told about task changes. Called with the dispatcher lock held: an
/// observer must not call back into the task service.
pub(crate) trait TaskObserver: Send + Sync {
    /// Workers, assignments or tasks changed: capacity may have too.
    fn capacity_changed(&self);
    /// `task:progress` of a task (relayed to the peer that handed it over).
    fn task_progress(&self, task: &TaskView);
    /// A worker reports an error for a task, before it is applied.
    fn task_failing(&self, task_id: &str, retryable: bool);
}

impl TaskService {
    /// Connects the observer (once; weak, the federation holds this service).
    pub(crate) fn set_observer(&self, observer: Weak<dyn TaskObserver>) {
        let _ = self.observer.set(observer);
    }

    fn observer(&self) -> Option<Arc<dyn TaskObserver>> {
        self.observer.get().and_then(Weak::upgrade)
    }

    /// Tells the observer about an outbox about to be carried out.
    pub(super) fn observe(&self, out: &Outbox) {
        let Some(observer) = self.observer() else {
            return;
        };
        for (lifecycle, task) in &out.events {
            if *lifecycle == Lifecycle::Progress {
                observer.task_progress(task);
            }
        }
        if !out.assigns.is_empty() || !out.events.is_empty() || !out.worker_events.is_empty() {
            observer.capacity_changed();
        }
    }

    /// Tells the observer a worker is failing a task.
    pub(super) fn observe_fail(&self, task_id: &str, retryable: bool) {
        if let Some(observer) = self.observer() {
            observer.task_failing(task_id, retryable);
        }
    }

    /// Lets peers take tasks: `chooser` picks among eligible peers.
    pub(crate) fn set_remote_policy(&self, chooser: Chooser, task_wait: Duration, max_hops: u32) {
        self.lock().set_remote_policy(chooser, task_wait, max_hops);
    }

    /// A link came up: its peer becomes a remote worker (no capacity yet).
    pub(crate) fn register_remote(&self, worker_id: u64, hub_id: &str, hub_name: &str) {
        self.run(|d, _, ms, _| d.register_remote(worker_id, hub_id, hub_name, ms));
    }

    /// What a peer advertises now.
    pub(crate) fn update_remote(&self, worker_id: u64, capabilities: Vec<Pattern>, free: u32) {
        self.run(|d, now, ms, out| d.update_remote(worker_id, capabilities, free, now, ms, out));
    }

    /// Names the hub that really runs a task given to peer `worker_id`.
    pub(crate) fn set_executing_hub(&self, worker_id: u64, task_id: &str, hub: &str) {
        self.lock().set_executing_hub(worker_id, task_id, hub);
    }

    /// Accepts a task a peer handed over (not persisted: its origin keeps
    /// it). `submitter` is the link, which gets the `task:result`.
    pub(crate) fn accept_forwarded(
        &self,
        spec: TaskSpec,
        submitted_by: &str,
        submitter: u64,
        route: Vec<String>,
    ) -> Result<Accepted, RequestError> {
        Ok(self.run(|d, now, ms, out| {
            d.submit_forwarded(spec, submitted_by, submitter, route, now, ms, out)
        })?)
    }

    /// The hubs a task was on before this one (origin first).
    pub(crate) fn route(&self, task_id: &str) -> Vec<String> {
        self.lock().route(task_id)
    }
}
