//! Peer hubs as workers. A federation link is registered with the
//! dispatcher as a *remote worker*: its capabilities and slots are what the
//! peer (and the hubs behind it) advertise, and assigning a task to it
//! forwards the task. Everything else — leases, progress, completion,
//! retries, requeueing when the link drops (attempt counted) — is the
//! ordinary worker machinery, so the origin stays the owner of the task.
//!
//! Rules that only apply to remote workers, kept here:
//! - a local worker is always preferred; a task goes to a peer only when
//!   no local worker has the capability, or after it has waited
//!   `federation.task_wait` while every capable local worker was busy;
//! - a task never goes to a hub it has already been on (its `route`), nor
//!   once it has been forwarded `max_hops` times;
//! - among eligible peers the federation's strategy chooses;
//! - a task that arrived from a peer is not written to the store: its
//!   origin keeps it durable and requeues it if this hub goes away.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::{Dispatcher, Worker};
use crate::channels::Pattern;
use crate::protocol::tasks::{TaskState, WorkerView};
use crate::tasks::{Outbox, Timer};

/// A peer that could take a task, for the federation's strategy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RemoteCandidate {
    /// The remote worker (the link's id).
    pub(crate) worker_id: u64,
    /// Its free slots as last advertised.
    pub(crate) free: u32,
}

/// Picks one candidate (never called with an empty list).
pub(crate) type Chooser = Arc<dyn Fn(&[RemoteCandidate]) -> Option<u64> + Send + Sync>;

/// A remote worker: which hub is behind it.
#[derive(Debug, Clone)]
struct RemoteWorker {
    /// The peer's hub id (a task is never sent to a hub on its route).
    hub_id: String,
    /// The peer's name, shown as the executing hub.
    hub_name: String,
}

/// Federation facts of one task.
#[derive(Debug, Clone, Default)]
pub(crate) struct RemoteTask {
    /// Hubs the task was on before this one, its origin first.
    pub(crate) route: Vec<String>,
    /// Arrived from a peer: not persisted here.
    pub(crate) ephemeral: bool,
    /// While capable local workers are busy, it may go to a peer from
    /// this instant on.
    forward_after: Option<Instant>,
}

/// The dispatcher's federation state.
#[derive(Default)]
pub(crate) struct Remote {
    /// Remote workers by worker (link) id.
    workers: HashMap<u64, RemoteWorker>,
    /// Tasks with federation facts, by task id.
    tasks: HashMap<String, RemoteTask>,
    /// The facts of the task being submitted by `submit_forwarded`.
    pending: Option<RemoteTask>,
    /// Chooses among eligible peers; `None` until federation is wired.
    chooser: Option<Chooser>,
    /// `federation.task_wait`.
    task_wait: Duration,
    /// `federation.max_hops`.
    max_hops: u32,
}

impl std::fmt::Debug for Remote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Remote")
            .field("workers", &self.workers)
            .field("tasks", &self.tasks.len())
            .finish_non_exhaustive()
    }
}

impl Remote {
    pub(crate) fn is_remote(&self, worker_id: u64) -> bool {
        self.workers.contains_key(&worker_id)
    }

    pub(crate) fn is_ephemeral(&self, task_id: &str) -> bool {
        self.tasks.get(task_id).is_some_and(|t| t.ephemeral)
    }

    /// The executing hub's name when `worker_id` is a peer.
    pub(crate) fn hub_name(&self, worker_id: u64) -> Option<String> {
        self.workers.get(&worker_id).map(|w| w.hub_name.clone())
    }

    /// Gives the task being submitted its pending federation facts.
    pub(crate) fn adopt(&mut self, task_id: &str) {
        if let Some(facts) = self.pending.take() {
            self.tasks.insert(task_id.to_string(), facts);
        }
    }

    /// A task is finished: its facts are no longer needed.
    pub(crate) fn finished(&mut self, task_id: &str) {
        self.tasks.remove(task_id);
    }

    /// A worker left.
    pub(crate) fn forget_worker(&mut self, worker_id: u64) {
        self.workers.remove(&worker_id);
    }
}

impl Dispatcher {
    /// Wires the federation in: its strategy and limits.
    pub(crate) fn set_remote_policy(
        &mut self,
        chooser: Chooser,
        task_wait: Duration,
        max_hops: u32,
    ) {
        self.remote.chooser = Some(chooser);
        self.remote.task_wait = task_wait;
        self.remote.max_hops = max_hops;
    }

    /// Registers a link as a remote worker with no capability yet.
    pub(crate) fn register_remote(
        &mut self,
        worker_id: u64,
        hub_id: &str,
        hub_name: &str,
        now_ms: u64,
    ) {
        self.remote.workers.insert(
            worker_id,
            RemoteWorker {
                hub_id: hub_id.to_string(),
                hub_name: hub_name.to_string(),
            },
        );
        self.workers.insert(
            worker_id,
            Worker {
                view: WorkerView {
                    worker_id: worker_id.to_string(),
                    sub: format!("hub:{hub_name}"),
                    capabilities: Vec::new(),
                    slots: 0,
                    running: Vec::new(),
                    draining: false,
                    labels: BTreeMap::from([("hub".to_string(), hub_name.to_string())]),
                    connected_at: now_ms,
                    last_seen: now_ms,
                },
                capabilities: Vec::new(),
            },
        );
    }

    /// New advertised capacity of a remote worker: `free` slots for
    /// `capabilities`. Fills them with eligible waiting tasks.
    pub(crate) fn update_remote(
        &mut self,
        worker_id: u64,
        capabilities: Vec<Pattern>,
        free: u32,
        now: Instant,
        now_ms: u64,
        out: &mut Outbox,
    ) {
        let Some(worker) = self.workers.get_mut(&worker_id) else {
            return;
        };
        if !self.remote.is_remote(worker_id) {
            return;
        }
        for old in &worker.capabilities {
            self.capable.remove(old, worker_id);
        }
        for new in &capabilities {
            self.capable.insert(new, worker_id, worker_id);
        }
        worker.view.capabilities = capabilities
            .iter()
            .map(|p| p.as_str().to_string())
            .collect();
        worker.capabilities = capabilities;
        worker.view.slots = worker.view.running.len() as u32 + free;
        worker.view.last_seen = now_ms;
        self.fill_remote(worker_id, now, now_ms, out);
    }

    /// A peer reports which hub really runs a task it was given (the task
    /// may have been forwarded on); shown as the task's `hub`.
    pub(crate) fn set_executing_hub(&mut self, worker_id: u64, task_id: &str, hub: &str) {
        if let Ok(task) = self.held_mut(worker_id, task_id) {
            task.view.hub = Some(hub.into());
        }
    }

    /// Submits a task a peer handed over: like `submit`, but it remembers
    /// the hubs it came through and is not persisted.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn submit_forwarded(
        &mut self,
        spec: crate::protocol::tasks::TaskSpec,
        submitted_by: &str,
        submitter: u64,
        route: Vec<String>,
        now: Instant,
        now_ms: u64,
        out: &mut Outbox,
    ) -> Result<crate::protocol::tasks::Accepted, crate::tasks::TaskError> {
        self.remote.pending = Some(RemoteTask {
            route,
            ephemeral: true,
            forward_after: None,
        });
        let accepted = self.submit(spec, submitted_by, Some(submitter), now, now_ms, out);
        self.remote.pending = None;
        accepted
    }

    /// The hubs a task was on before this one (origin first).
    pub(crate) fn route(&self, task_id: &str) -> Vec<String> {
        self.remote
            .tasks
            .get(task_id)
            .map(|t| t.route.clone())
            .unwrap_or_default()
    }

    /// Whether `task_id` may go to remote worker `worker_id` now.
    fn remote_eligible(
        &self,
        task_id: &str,
        worker_id: u64,
        local_capable: bool,
        now: Instant,
    ) -> bool {
        let Some(worker) = self.remote.workers.get(&worker_id) else {
            return false;
        };
        let facts = self.remote.tasks.get(task_id);
        let route = facts.map(|t| t.route.as_slice()).unwrap_or_default();
        if route.len() as u32 >= self.remote.max_hops || route.contains(&worker.hub_id) {
            return false;
        }
        !local_capable
            || facts
                .and_then(|t| t.forward_after)
                .is_some_and(|at| at <= now)
    }

    /// Whether a live local worker has a capability for `task_id`.
    fn local_capable(&self, task_id: &str) -> bool {
        let Some(task) = self.tasks.get(task_id) else {
            return false;
        };
        self.capable
            .matches(&task.kind)
            .iter()
            .any(|id| !self.remote.is_remote(*id) && self.workers.contains_key(id))
    }

    /// No local worker can take the task now: hands it to a peer when
    /// allowed (true), else arms the wait after which it may go (false).
    pub(super) fn place_remote(
        &mut self,
        task_id: &str,
        candidates: &[u64],
        exclude: Option<u64>,
        now: Instant,
        now_ms: u64,
        out: &mut Outbox,
    ) -> bool {
        let Some(chooser) = self.remote.chooser.clone() else {
            return false;
        };
        let local = self.local_capable(task_id);
        let eligible: Vec<RemoteCandidate> = candidates
            .iter()
            .filter(|id| exclude != Some(**id))
            .filter_map(|id| {
                let worker = self.workers.get(id)?;
                (worker.can_take() && self.remote_eligible(task_id, *id, local, now)).then_some(
                    RemoteCandidate {
                        worker_id: *id,
                        free: worker.free(),
                    },
                )
            })
            .collect();
        if local {
            self.arm_forward(task_id, now);
        }
        if eligible.is_empty() {
            return false;
        }
        match chooser(&eligible) {
            Some(worker_id) if eligible.iter().any(|c| c.worker_id == worker_id) => {
                self.assign(task_id, worker_id, now, now_ms, out);
                true
            }
            _ => false,
        }
    }

    /// Sets (once) when a task waiting for busy local workers may go to a
    /// peer.
    fn arm_forward(&mut self, task_id: &str, now: Instant) {
        if self.remote.chooser.is_none() || self.remote.workers.is_empty() {
            return;
        }
        let facts = self.remote.tasks.entry(task_id.to_string()).or_default();
        if facts.forward_after.is_none() {
            let at = now + self.remote.task_wait;
            facts.forward_after = Some(at);
            self.timers
                .insert((at, Timer::Forward(task_id.to_string())));
        }
    }

    /// The wait of a queued task is over: try the peers.
    pub(super) fn forward_due(
        &mut self,
        task_id: &str,
        now: Instant,
        now_ms: u64,
        out: &mut Outbox,
    ) {
        let queued = self
            .tasks
            .get(task_id)
            .is_some_and(|t| t.view.state == TaskState::Queued);
        if !queued {
            return;
        }
        let Some(kind) = self.tasks.get(task_id).map(|t| t.kind.clone()) else {
            return;
        };
        let candidates: Vec<u64> = self
            .capable
            .matches(&kind)
            .iter()
            .copied()
            .filter(|id| self.remote.is_remote(*id))
            .collect();
        self.dequeue(task_id);
        if !self.place_remote(task_id, &candidates, None, now, now_ms, out) {
            self.enqueue(task_id);
        }
    }

    /// Fills a remote worker's free slots with the best eligible waiting
    /// tasks (a local worker would have taken the others already).
    pub(super) fn fill_remote(
        &mut self,
        worker_id: u64,
        now: Instant,
        now_ms: u64,
        out: &mut Outbox,
    ) {
        loop {
            let Some(worker) = self.workers.get(&worker_id) else {
                return;
            };
            if !worker.can_take() {
                return;
            }
            let mut best: Option<(super::QueueKey, String)> = None;
            for (kind, queue) in &self.queues {
                if !worker.capable(kind) {
                    continue;
                }
                // The first eligible task of this queue.
                let found = queue.iter().find(|(_, id)| {
                    let local = self.local_capable(id);
                    self.remote_eligible(id, worker_id, local, now)
                });
                if let Some((key, id)) = found {
                    if best.as_ref().is_none_or(|(k, _)| key < k) {
                        best = Some((*key, id.clone()));
                    }
                }
            }
            let Some((_, task_id)) = best else {
                return;
            };
            self.dequeue(&task_id);
            self.assign(&task_id, worker_id, now, now_ms, out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::channels::NameLimits;
    use crate::protocol::tasks::TaskSpec;
    use crate::tasks::config::TasksConfig;

    fn dispatcher(max_hops: u32) -> Dispatcher {
        let mut d = Dispatcher::new(TasksConfig::default(), NameLimits::default());
        // Always the first candidate.
        let chooser: Chooser = Arc::new(|c: &[RemoteCandidate]| c.first().map(|c| c.worker_id));
        d.set_remote_policy(chooser, Duration::from_secs(1), max_hops);
        let cap = Pattern::parse("demo:*", &NameLimits::default()).expect("pattern");
        let mut out = Outbox::default();
        d.register_remote(7, "hub-b", "b", 0);
        d.update_remote(7, vec![cap], 4, Instant::now(), 0, &mut out);
        d
    }

    fn spec() -> TaskSpec {
        TaskSpec {
            kind: "demo:x".into(),
            payload: serde_json::Value::Null,
            priority: None,
            timeout_ms: None,
            max_attempts: None,
            dedup_key: None,
        }
    }

    fn forwarded(d: &mut Dispatcher, route: &[&str]) -> (String, Outbox) {
        let mut out = Outbox::default();
        let route = route.iter().map(|s| s.to_string()).collect();
        let id = d
            .submit_forwarded(spec(), "me", 99, route, Instant::now(), 0, &mut out)
            .expect("accepted")
            .task_id;
        (id, out)
    }

    #[test]
    fn a_task_goes_to_a_peer_only_if_not_on_its_route_and_within_hops() {
        let mut d = dispatcher(3);
        let (id, out) = forwarded(&mut d, &["hub-a"]);
        assert_eq!(out.assigns.len(), 1, "no local worker: forwarded at once");
        assert_eq!(d.view(&id).and_then(|t| t.hub).as_deref(), Some("b"));
        assert!(out.persist.is_empty(), "a peer's task is not persisted");

        let (back, out) = forwarded(&mut d, &["hub-b", "hub-a"]);
        assert!(
            out.assigns.is_empty(),
            "never back to a hub it came through"
        );
        assert_eq!(d.view(&back).map(|t| t.state), Some(TaskState::Queued));

        let (far, out) = forwarded(&mut d, &["h1", "h2", "h3"]);
        assert!(out.assigns.is_empty(), "forwarded max_hops times already");
        assert_eq!(d.view(&far).map(|t| t.state), Some(TaskState::Queued));
    }

    #[test]
    fn local_workers_come_first_and_remote_workers_are_not_listed() {
        let mut d = dispatcher(8);
        let cap = Pattern::parse("demo:*", &NameLimits::default()).expect("pattern");
        let mut out = Outbox::default();
        d.register(
            1,
            "w",
            vec![cap],
            1,
            BTreeMap::new(),
            Instant::now(),
            0,
            &mut out,
        )
        .expect("registered");
        let mut out = Outbox::default();
        d.submit(spec(), "me", None, Instant::now(), 0, &mut out)
            .expect("accepted");
        assert_eq!(
            out.assigns.first().map(|a| a.0),
            Some(1),
            "the local worker"
        );
        // The local worker is busy: the next task waits for task_wait.
        let mut out = Outbox::default();
        let id = d
            .submit(spec(), "me", None, Instant::now(), 0, &mut out)
            .expect("accepted")
            .task_id;
        assert!(out.assigns.is_empty());
        let later = Instant::now() + Duration::from_secs(2);
        let mut out = Outbox::default();
        d.fire_timers(later, 0, &mut out);
        assert_eq!(out.assigns.first().map(|a| a.0), Some(7), "then the peer");
        assert_eq!(d.view(&id).map(|t| t.state), Some(TaskState::Assigned));
        assert_eq!(d.workers().len(), 1);
        assert_eq!(d.capacity()[0].free_slots, 0);
    }
}
