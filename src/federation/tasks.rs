//! Task federation. Each link is a remote worker in the dispatcher, whose
//! capabilities and free slots are what the peer advertises (its own
//! workers and, one hop further each, the hubs behind it). When the
//! dispatcher assigns a task to it, the link sends `hub:task`; the peer
//! runs it as a local task (not persisted: the origin owns durability) and
//! answers with `hub:task:progress`, `hub:task:complete` or
//! `hub:task:error`, which the origin applies as if its own worker had
//! reported. A link that drops hands its tasks back (requeued, attempt
//! counted) and the peer cancels what it ran for the link.
//!
//! The strategy choosing among several eligible peers lives here too.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use rand::Rng;
use serde_json::Value;

use super::HubRef;
use super::config::Strategy;
use super::link::Link;
use super::{Federation, lock};
use crate::channels::Pattern;
use crate::protocol::ServerMessage;
use crate::protocol::federation::{ForwardedTask, HubMessage};
use crate::protocol::tasks::{TaskSpec, TaskState, TaskView};
use crate::tasks::{Chooser, RemoteCandidate, TaskObserver};

/// A peer that could take a task, with its link.
type Candidate = (RemoteCandidate, Arc<Link>);

/// An order on candidates: greater is better.
type Compare = dyn Fn(&Candidate, &Candidate) -> std::cmp::Ordering;

/// A task this hub runs for a peer.
#[derive(Debug, Clone)]
struct RunFor {
    /// The link it came over.
    link: u64,
    /// Its id at the peer, which every report names.
    remote_id: String,
}

/// Bookkeeping of tasks run for peers, and the round-robin turn.
#[derive(Debug, Default)]
pub(crate) struct Forwarded {
    /// Local task id → who it runs for.
    running: Mutex<HashMap<String, RunFor>>,
    /// Retryable flag of the last `task:error` of such a task.
    failing: Mutex<HashMap<String, bool>>,
    /// Rotates the round-robin strategy and ties of the others.
    turn: AtomicUsize,
}

impl Federation {
    /// Wires task routing to this federation: the strategy (only when
    /// peers are configured) and the observer.
    pub(crate) fn observe_tasks(self: &Arc<Self>) {
        let observer: Arc<dyn TaskObserver> = self.clone();
        self.tasks.set_observer(Arc::downgrade(&observer));
        if self.peers.is_empty() {
            return;
        }
        let weak = Arc::downgrade(self);
        let chooser: Chooser = Arc::new(move |candidates: &[RemoteCandidate]| {
            weak.upgrade().and_then(|fed| fed.choose(candidates))
        });
        self.tasks
            .set_remote_policy(chooser, self.config.task_wait, self.config.max_hops);
    }

    /// The strategy: which of `candidates` (links with free slots, all
    /// eligible) gets the task. Reads only link atomics and config.
    fn choose(&self, candidates: &[RemoteCandidate]) -> Option<u64> {
        let turn = self.forwarded.turn.fetch_add(1, Ordering::Relaxed);
        let links: Vec<Candidate> = candidates
            .iter()
            .filter_map(|c| Some((*c, self.links.get(&c.worker_id)?.clone())))
            .collect();
        if links.is_empty() {
            return None;
        }
        // Unknown latency sorts last.
        fn rtt(l: &Link) -> u128 {
            l.rtt().map_or(u128::MAX, |d| d.as_micros())
        }
        // The peer's waiting tasks, from its last hub:ping.
        fn queued(l: &Link) -> u64 {
            l.peer_queued.load(Ordering::Relaxed)
        }
        let best_by = |better: &Compare| {
            let top = links.iter().max_by(|a, b| better(a, b))?;
            let ties: Vec<&Candidate> = links
                .iter()
                .filter(|l| better(l, top) == std::cmp::Ordering::Equal)
                .collect();
            Some(ties[turn % ties.len()].0.worker_id)
        };
        match self.config.strategy {
            Strategy::Priority => best_by(&|a, b| {
                a.1.peer
                    .config
                    .priority
                    .cmp(&b.1.peer.config.priority)
                    .then_with(|| rtt(&b.1).cmp(&rtt(&a.1)))
                    .then_with(|| queued(&b.1).cmp(&queued(&a.1)))
            }),
            Strategy::LeastLoaded => best_by(&|a, b| {
                a.0.free
                    .cmp(&b.0.free)
                    .then_with(|| rtt(&b.1).cmp(&rtt(&a.1)))
            }),
            Strategy::RoundRobin => Some(links[turn % links.len()].0.worker_id),
            Strategy::Weighted => {
                let total: u64 = links
                    .iter()
                    .map(|l| u64::from(l.1.peer.config.weight))
                    .sum();
                if total == 0 {
                    return None;
                }
                let mut pick = rand::rng().random_range(0..total);
                for (c, link) in &links {
                    let w = u64::from(link.peer.config.weight);
                    if pick < w {
                        return Some(c.worker_id);
                    }
                    pick -= w;
                }
                None
            }
        }
    }

    /// A link came up: the peer becomes a remote worker.
    pub(crate) fn tasks_link_up(&self, link: &Arc<Link>) {
        self.tasks
            .register_remote(link.id, &link.hello.hub_id, &link.peer.config.name);
    }

    /// A link went down: what it handed this hub is cancelled (its origin
    /// requeues it). What this hub handed it was requeued when the link's
    /// connection entry was dropped.
    pub(crate) fn tasks_link_down(&self, link: &Arc<Link>) {
        let orphans: Vec<String> = {
            let mut running = lock(&self.forwarded.running);
            let ids: Vec<String> = running
                .iter()
                .filter(|(_, r)| r.link == link.id)
                .map(|(id, _)| id.clone())
                .collect();
            for id in &ids {
                running.remove(id);
            }
            ids
        };
        for id in orphans {
            let _ = self.tasks.cancel(&id, None, None);
            lock(&self.forwarded.failing).remove(&id);
        }
    }

    /// The capacity heard over `link` changed: update its remote worker.
    /// Per origin hub the largest free-slot count of its capabilities is
    /// taken (a worker with two capabilities is counted under both), and
    /// the origins reached over the link are added up.
    pub(crate) fn refresh_capacity(&self, link: &Arc<Link>) {
        let (capabilities, free) = {
            let tables = lock(&self.tables);
            let mut caps = BTreeSet::new();
            let mut free = 0u32;
            for (_, route) in tables.capacity.via(link.id, self.config.max_hops) {
                let mut most = 0;
                for load in &route.payload {
                    if load.workers > 0 {
                        caps.insert(load.capability.clone());
                    }
                    most = most.max(load.free_slots);
                }
                free = free.saturating_add(most);
            }
            (caps, free)
        };
        let patterns: Vec<Pattern> = capabilities
            .iter()
            .filter_map(|c| Pattern::parse(c, &self.limits).ok())
            .collect();
        self.tasks.update_remote(link.id, patterns, free);
    }

    /// A message the dispatcher addressed to the link as a worker or as a
    /// submitter: translated into hub messages.
    pub(crate) fn on_dispatcher_message(&self, link: &Arc<Link>, text: &str) {
        let Ok(msg) = serde_json::from_str::<ServerMessage>(text) else {
            return;
        };
        match msg {
            ServerMessage::TaskAssign { task } => {
                let Some(view) = self.tasks.get(&task.id) else {
                    return;
                };
                let mut route = self.tasks.route(&task.id);
                route.push(self.hub_id.clone());
                let forwarded = ForwardedTask {
                    id: task.id,
                    kind: task.kind,
                    payload: task.payload,
                    priority: view.priority,
                    timeout_ms: view.timeout_ms,
                    attempt: task.attempt,
                    route,
                    submitted_by: view.submitted_by,
                };
                let id = forwarded.id.clone();
                if link.send_msg(&HubMessage::Task { task: forwarded }) {
                    link.counters.tasks_out.fetch_add(1, Ordering::Relaxed);
                } else {
                    // Too big for the peer (or the link is closing): the
                    // attempt fails and the retry rules decide.
                    let error = Value::String(format!(
                        "could not hand the task to {}",
                        link.peer.config.name
                    ));
                    let _ = self.tasks.fail(link.id, &id, error, true, None);
                }
            }
            ServerMessage::TaskCancel { task_id, reason } => {
                link.send_msg(&HubMessage::TaskCancel { task_id, reason });
            }
            ServerMessage::TaskResult { task } => self.report_result(link, task),
            _ => {}
        }
    }

    /// A task run for a peer reached its final state here: tell the peer.
    fn report_result(&self, link: &Arc<Link>, task: TaskView) {
        let Some(run) = lock(&self.forwarded.running).remove(&task.id) else {
            return;
        };
        let retryable = lock(&self.forwarded.failing).remove(&task.id);
        let hub = task.hub.as_deref().unwrap_or(&self.name).to_string();
        let msg = match task.state {
            TaskState::Completed => HubMessage::TaskComplete {
                task_id: run.remote_id,
                result: task.result.unwrap_or(Value::Null),
                hub,
            },
            TaskState::Cancelled => HubMessage::TaskError {
                task_id: run.remote_id,
                error: Value::String(format!("cancelled at {}", self.name)),
                retryable: true,
                hub,
            },
            _ => HubMessage::TaskError {
                task_id: run.remote_id,
                error: task.error.unwrap_or(Value::Null),
                // A worker's own verdict, else (worker lost, lease over)
                // another attempt may succeed.
                retryable: retryable.unwrap_or(true),
                hub,
            },
        };
        link.send_msg(&msg);
    }

    /// A task message from the peer.
    pub(crate) async fn on_task_message(&self, _hub: &HubRef, link: &Arc<Link>, msg: HubMessage) {
        match msg {
            HubMessage::Task { task } => self.run_for_peer(link, task),
            HubMessage::TaskCancel { task_id, .. } => {
                let local = {
                    let running = lock(&self.forwarded.running);
                    running
                        .iter()
                        .find(|(_, r)| r.link == link.id && r.remote_id == task_id)
                        .map(|(id, _)| id.clone())
                };
                if let Some(local) = local {
                    lock(&self.forwarded.running).remove(&local);
                    lock(&self.forwarded.failing).remove(&local);
                    let _ = self.tasks.cancel(&local, None, None);
                }
            }
            HubMessage::TaskProgress {
                task_id,
                progress,
                message,
                hub,
            } => {
                self.tasks.set_executing_hub(link.id, &task_id, &hub);
                let _ = self.tasks.progress(link.id, &task_id, progress, message);
            }
            HubMessage::TaskComplete {
                task_id,
                result,
                hub,
            } => {
                self.tasks.set_executing_hub(link.id, &task_id, &hub);
                let _ = self.tasks.complete(link.id, &task_id, result, None);
            }
            HubMessage::TaskError {
                task_id,
                error,
                retryable,
                hub,
            } => {
                self.tasks.set_executing_hub(link.id, &task_id, &hub);
                let _ = self.tasks.fail(link.id, &task_id, error, retryable, None);
            }
            _ => {}
        }
    }

    /// `hub:task`: run it here as a local task submitted by the link.
    fn run_for_peer(&self, link: &Arc<Link>, task: ForwardedTask) {
        let refuse = |why: String| {
            link.send_msg(&HubMessage::TaskError {
                task_id: task.id.clone(),
                error: Value::String(why),
                retryable: true,
                hub: self.name.clone(),
            });
        };
        if task.route.contains(&self.hub_id) {
            return refuse(format!("{} already handled this task (loop)", self.name));
        }
        if task.route.len() as u32 > self.config.max_hops {
            return refuse("forwarded more than max_hops times".into());
        }
        let spec = TaskSpec {
            kind: task.kind.clone(),
            payload: task.payload.clone(),
            priority: Some(task.priority),
            timeout_ms: Some(task.timeout_ms),
            // One delivery here: retries are the origin's decision.
            max_attempts: Some(1),
            dedup_key: None,
        };
        let accepted =
            self.tasks
                .accept_forwarded(spec, &task.submitted_by, link.id, task.route.clone());
        match accepted {
            Ok(accepted) => {
                link.counters.tasks_in.fetch_add(1, Ordering::Relaxed);
                lock(&self.forwarded.running).insert(
                    accepted.task_id,
                    RunFor {
                        link: link.id,
                        remote_id: task.id.clone(),
                    },
                );
            }
            Err(e) => refuse(e.message),
        }
    }
}

impl TaskObserver for Federation {
    fn capacity_changed(&self) {
        self.capacity_dirty.notify_one();
    }

    fn task_progress(&self, task: &TaskView) {
        let Some(run) = lock(&self.forwarded.running).get(&task.id).cloned() else {
            return;
        };
        if let Some(link) = self.links.get(&run.link) {
            link.send_msg(&HubMessage::TaskProgress {
                task_id: run.remote_id,
                progress: task.progress,
                message: task.message.clone(),
                hub: task.hub.as_deref().unwrap_or(&self.name).to_string(),
            });
        }
    }

    fn task_failing(&self, task_id: &str, retryable: bool) {
        if lock(&self.forwarded.running).contains_key(task_id) {
            lock(&self.forwarded.failing).insert(task_id.to_string(), retryable);
        }
    }
}
