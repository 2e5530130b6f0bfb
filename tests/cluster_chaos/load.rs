//! The load of the fault run: subscribers, publishers, submitters and
//! workers. Each is a real [`Client`] (which reconnects, resubscribes with
//! its history positions and registers again by itself) connected through
//! the balancer, and each keeps a log that the checks read.

use std::collections::HashMap;
use std::collections::HashSet;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use chanhub::auth::ClientType;
use chanhub::client::{
    Client, ClientError, ClientOptions, ConnectionState, Event, Events, TaskSpec, Work,
};
use chanhub::error::ErrorCode;
use serde_json::json;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::common::token_with;
use crate::{LEASE, SUBMIT_EVERY};

/// A log shared by a client's task and the checks.
pub(crate) type Shared<T> = Arc<Mutex<T>>;

/// Locks a log (never held across an await).
pub(crate) fn lock<T>(log: &Mutex<T>) -> MutexGuard<'_, T> {
    log.lock().unwrap_or_else(|e| e.into_inner())
}

/// The task type every submit uses and every worker runs.
pub(crate) const TASK_TYPE: &str = "job:a";

/// Connects to `url` with a token of `ty` for `sub`.
pub(crate) async fn connect(url: &str, ty: ClientType, sub: &str) -> (Client, Events) {
    let token = token_with(json!({"client_type": ty.as_str(), "sub": sub}));
    Client::connect(ClientOptions::new(url, token))
        .await
        .unwrap_or_else(|e| panic!("{sub} could not connect: {e}"))
}

/// Counts the reconnects of `client` (a `Connected` with a new connection
/// id) until it closes.
pub(crate) fn count_reconnects(client: &Client) -> Arc<AtomicU32> {
    let count = Arc::new(AtomicU32::new(0));
    let counted = Arc::clone(&count);
    let mut state = client.state();
    tokio::spawn(async move {
        let mut current = connection_id(&state.borrow_and_update());
        while state.changed().await.is_ok() {
            let now = connection_id(&state.borrow_and_update());
            match now {
                Some(id) if current.as_ref() != Some(&id) => {
                    current = Some(id);
                    counted.fetch_add(1, Ordering::Relaxed);
                }
                Some(_) => {}
                None if matches!(*state.borrow(), ConnectionState::Closed { .. }) => return,
                None => {}
            }
        }
    });
    count
}

fn connection_id(state: &ConnectionState) -> Option<String> {
    match state {
        ConnectionState::Connected { client_id } => Some(client_id.clone()),
        _ => None,
    }
}

/// A short name for why a request failed, for the report.
pub(crate) fn failure(err: &ClientError) -> String {
    match err {
        ClientError::Refused { code, .. } => code.as_str().to_string(),
        ClientError::Timeout => "timeout".into(),
        ClientError::Closed => "connection dropped".into(),
        other => format!("{other}"),
    }
}

// ---- Subscribers ----

/// What one subscriber received on its one channel.
#[derive(Debug, Default)]
pub(crate) struct SubscriberLog {
    /// Which balancer frontend it connected through (the node it started on).
    pub(crate) frontend: usize,
    pub(crate) channel: String,
    /// The epoch of the last event.
    pub(crate) epoch: Option<String>,
    /// The offset of the last event.
    pub(crate) last: u64,
    pub(crate) received: u64,
    /// Offsets skipped with no word from the client (expected, got): events
    /// lost.
    pub(crate) silent_gaps: Vec<(u64, u64)>,
    /// Jumps after a reconnect whose recovery the client reported failed
    /// (`recovered: false`), and the events they skipped.
    pub(crate) told_gaps: u64,
    pub(crate) told_missed: u64,
    /// Events at or below the last offset (none expected: the client drops
    /// repeats, so one here is out of order).
    pub(crate) out_of_order: u64,
    /// Events of another channel or without an offset.
    pub(crate) strays: u64,
    /// Reconnects, and of those the ones whose recovery failed.
    pub(crate) reconnects: u32,
    pub(crate) unrecovered: u32,
    /// The ids of every event received, kept by one subscriber per channel
    /// (a witness) to check acknowledged publishes against.
    pub(crate) ids: Option<HashSet<String>>,
}

impl SubscriberLog {
    /// Takes one event: checks it continues the channel's offsets.
    fn observe(&mut self, event: Event, told: &mut bool) {
        let Some(offset) = event.offset.filter(|_| event.channel == self.channel) else {
            self.strays += 1;
            return;
        };
        let same_epoch = self.epoch.is_some() && self.epoch == event.epoch;
        let expected = if same_epoch { self.last + 1 } else { 1 };
        if offset < expected {
            self.out_of_order += 1;
            return;
        }
        if offset > expected {
            if *told {
                self.told_gaps += 1;
                self.told_missed += offset - expected;
            } else {
                self.silent_gaps.push((expected, offset));
            }
        }
        *told = false;
        self.epoch = event.epoch;
        self.last = offset;
        self.received += 1;
        if let Some(ids) = &mut self.ids {
            ids.insert(event.id);
        }
    }
}

/// Reads `events` into `log` until `stop`, then closes the client.
pub(crate) fn run_subscriber(
    client: Client,
    mut events: Events,
    log: Shared<SubscriberLog>,
    stop: CancellationToken,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let channel = lock(&log).channel.clone();
        let mut unrecovered = client.unrecovered();
        let mut state = client.state();
        let mut current = connection_id(&state.borrow_and_update());
        // The client said the last reconnect could not recover the channel;
        // the next event may jump.
        let mut told = false;
        loop {
            // Biased: the client publishes a reconnect's outcome before it
            // hands on any event of the new connection, so a jump is
            // judged knowing whether it was announced.
            tokio::select! {
                biased;
                _ = stop.cancelled() => break,
                Ok(()) = unrecovered.changed() => {
                    if unrecovered.borrow_and_update().contains(&channel) {
                        told = true;
                        lock(&log).unrecovered += 1;
                    }
                }
                Ok(()) = state.changed() => {
                    let now = connection_id(&state.borrow_and_update());
                    if now.is_some() && now != current {
                        current = now;
                        lock(&log).reconnects += 1;
                    }
                }
                event = events.next_event() => match event {
                    Some(event) => lock(&log).observe(event, &mut told),
                    None => break,
                },
            }
        }
        client.close().await;
    })
}

// ---- Publishers ----

/// What one publisher sent.
#[derive(Debug, Default)]
pub(crate) struct PublisherLog {
    /// Acknowledged publishes: (channel index, event id).
    pub(crate) acked: Vec<(usize, String)>,
    /// Refused or unanswered publishes, by why.
    pub(crate) failed: HashMap<String, u64>,
}

/// Publishes to `feed:0` … `feed:<channels - 1>` in turn, one publish
/// every `every`, each awaited, until `stop`.
pub(crate) fn run_publisher(
    client: Client,
    index: usize,
    channels: usize,
    every: Duration,
    log: Shared<PublisherLog>,
    stop: CancellationToken,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        for n in index.. {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tick.tick() => {}
            }
            let channel = n % channels;
            let data = json!({"publisher": index, "n": n});
            match client.publish(&format!("feed:{channel}"), data).await {
                Ok(ack) => lock(&log).acked.push((channel, ack.event_id)),
                Err(err) => *lock(&log).failed.entry(failure(&err)).or_default() += 1,
            }
        }
        client.close().await;
    })
}

// ---- Submitters ----

/// What one submitter submitted and heard back.
#[derive(Debug, Default)]
pub(crate) struct SubmitterLog {
    /// Accepted tasks: task id → submit number.
    pub(crate) accepted: HashMap<String, u64>,
    /// Submits answered `deduplicated: true` (none expected: every key is
    /// new, and a submit is sent once).
    pub(crate) deduplicated: u64,
    /// Refused or unanswered submits, by why, and their dedup keys.
    pub(crate) failed: HashMap<String, u64>,
    pub(crate) failed_keys: HashSet<String>,
    /// `task:completed` events heard, by task id (every submitter's tasks).
    pub(crate) completed: HashMap<String, u32>,
    /// The dedup key of each completed task.
    pub(crate) keys: HashMap<String, String>,
    /// `task:result`s on this connection, by task id, and their states.
    pub(crate) results: HashMap<String, u32>,
    pub(crate) result_states: HashMap<String, u64>,
    /// Reconnects whose recovery of `task:completed` failed.
    pub(crate) unrecovered: u32,
}

/// Subscribes `client` to `task:completed` (a history channel, so a
/// reconnect recovers what it missed), then submits a task (leased for
/// [`LEASE`]) every [`SUBMIT_EVERY`] until `load`, and listens until
/// `stop`; returns the submitting and the listening task.
pub(crate) async fn run_submitter(
    client: Client,
    mut events: Events,
    index: usize,
    log: Shared<SubmitterLog>,
    load: CancellationToken,
    stop: CancellationToken,
) -> (JoinHandle<()>, JoinHandle<()>) {
    let mut results = client.task_results().expect("results taken once");
    let subscribed = client
        .subscribe(&["task:completed"])
        .await
        .expect("subscribe");
    assert!(subscribed.rejected.is_empty(), "{subscribed:?}");
    let listen_log = Arc::clone(&log);
    let mut unrecovered = client.unrecovered();
    let listening = tokio::spawn(async move {
        let log = listen_log;
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                Ok(()) = unrecovered.changed() => {
                    if !unrecovered.borrow_and_update().is_empty() {
                        lock(&log).unrecovered += 1;
                    }
                }
                event = events.next_event() => {
                    let Some(event) = event else { break };
                    let id = event.data["id"].as_str().unwrap_or_default().to_string();
                    let key = event.data["dedupKey"].as_str().unwrap_or_default().to_string();
                    let mut log = lock(&log);
                    *log.completed.entry(id.clone()).or_default() += 1;
                    log.keys.insert(id, key);
                }
                task = results.next_result() => {
                    let Some(task) = task else { break };
                    let mut log = lock(&log);
                    *log.results.entry(task.id.clone()).or_default() += 1;
                    let state = format!("{:?}", task.state).to_lowercase();
                    *log.result_states.entry(state).or_default() += 1;
                }
            }
        }
    });
    let submit_client = client.clone();
    let submitting = tokio::spawn(async move {
        let client = submit_client;
        let mut tick = tokio::time::interval(SUBMIT_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        for n in 0u64.. {
            tokio::select! {
                _ = load.cancelled() => break,
                _ = tick.tick() => {}
            }
            let key = format!("s{index}-{n}");
            let spec = TaskSpec {
                kind: TASK_TYPE.into(),
                payload: json!({"submitter": index, "n": n}),
                priority: None,
                timeout_ms: Some(LEASE.as_millis() as u64),
                max_attempts: Some(20),
                dedup_key: Some(key.clone()),
            };
            match client.submit(spec).await {
                Ok(accepted) if accepted.deduplicated => lock(&log).deduplicated += 1,
                Ok(accepted) => {
                    lock(&log).accepted.insert(accepted.task_id, n);
                }
                Err(err) => {
                    let mut log = lock(&log);
                    *log.failed.entry(failure(&err)).or_default() += 1;
                    log.failed_keys.insert(key);
                }
            }
        }
    });
    (submitting, listening)
}

// ---- Workers ----

/// What one worker was handed and reported.
#[derive(Debug, Default)]
pub(crate) struct WorkerLog {
    /// Assignments: (task id, attempt).
    pub(crate) assigned: Vec<(String, u32)>,
    /// Completions the hub acknowledged.
    pub(crate) acked: Vec<String>,
    /// `task:complete`s refused for good, by why (`not_assigned`: the task
    /// went to another delivery).
    pub(crate) refused: HashMap<String, u64>,
    /// `task:complete`s refused with `engine_unavailable` and sent again.
    pub(crate) retried: u64,
    /// `task:cancel`s (`lease_expired`), and connections lost while
    /// holding tasks.
    pub(crate) cancelled: u64,
    pub(crate) lost: u64,
}

/// Registers `client` for [`TASK_TYPE`] with `slots`, then runs each task
/// for `work` and completes it, until `stop`.
pub(crate) async fn run_worker(
    client: Client,
    slots: u32,
    work: Duration,
    log: Shared<WorkerLog>,
    stop: CancellationToken,
) -> JoinHandle<()> {
    let mut assignments = client.assignments().expect("assignments taken once");
    client.register(&["job:*"], slots).await.expect("register");
    tokio::spawn(async move {
        let mut running: HashMap<String, JoinHandle<()>> = HashMap::new();
        loop {
            let item = tokio::select! {
                _ = stop.cancelled() => break,
                item = assignments.next_work() => item,
            };
            let Some(item) = item else { break };
            match item {
                Work::Assigned(task) => {
                    lock(&log).assigned.push((task.id.clone(), task.attempt));
                    running.retain(|_, handle| !handle.is_finished());
                    let run = run_task(client.clone(), task.id.clone(), work, Arc::clone(&log));
                    running.insert(task.id, tokio::spawn(run));
                }
                Work::Cancelled { task_id, .. } => {
                    lock(&log).cancelled += 1;
                    if let Some(handle) = running.remove(&task_id) {
                        handle.abort();
                    }
                }
                Work::Lost => {
                    lock(&log).lost += 1;
                    for (_, handle) in running.drain() {
                        handle.abort();
                    }
                }
                Work::Reregistered { .. } => {}
                Work::RegistrationRefused { error } => {
                    panic!("a worker's registration was refused after a reconnect: {error}")
                }
            }
        }
        for (_, handle) in running.drain() {
            handle.abort();
        }
        client.close().await;
    })
}

/// Works on one task, then completes it; sends the completion again while
/// Redis is away (as tasks.md asks of a worker), at most for `GIVE_UP`.
async fn run_task(client: Client, id: String, work: Duration, log: Shared<WorkerLog>) {
    const GIVE_UP: Duration = Duration::from_secs(20);
    tokio::time::sleep(work).await;
    let deadline = tokio::time::Instant::now() + GIVE_UP;
    loop {
        match client.complete(&id, json!({"done": id})).await {
            Ok(()) => {
                lock(&log).acked.push(id);
                return;
            }
            Err(ClientError::Refused {
                code: ErrorCode::EngineUnavailable,
                ..
            }) if tokio::time::Instant::now() < deadline => {
                lock(&log).retried += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(err) => {
                *lock(&log).refused.entry(failure(&err)).or_default() += 1;
                return;
            }
        }
    }
}
