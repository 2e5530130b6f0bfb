//! Nothing accepted is lost: the hub binary killed with SIGKILL and
//! restarted on the same data directory still completes every accepted
//! task, and 10,000 tasks all complete while workers keep dying mid-task.
//! Nothing acknowledged is undone: an attempt a worker was handed is
//! counted after the restart, and a completion the worker was acked for
//! (or the submitter got a `task:result` for) is still completed and never
//! runs again.

mod common;

use std::collections::{HashMap, HashSet};
use std::path::Path;

use std::time::Instant;

use chanhub::auth::ClientType;
use common::child::{ChildHub, list_tasks};
use common::{TestHub, WAIT, WsClient};
use futures::{SinkExt, StreamExt};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

/// Tasks accepted before the kill.
const ACCEPTED: usize = 1_000;

/// Sends `count` submits without waiting between them while reading the
/// replies; returns the accepted ids in submission order. Any
/// `task:result` seen meanwhile goes to `results`.
async fn submit_pipelined(
    client: WsClient,
    count: usize,
    task: impl Fn(usize) -> Value,
    results: &mut HashMap<String, Value>,
) -> (WsClient, Vec<String>) {
    let (mut sink, mut stream) = client.ws.split();
    let send = async {
        for n in 0..count {
            let msg = json!({"type": "task:submit", "id": n, "task": task(n)});
            sink.feed(Message::text(msg.to_string()))
                .await
                .expect("send");
        }
        sink.flush().await.expect("flush");
    };
    let receive = async {
        let mut ids = vec![None; count];
        let mut accepted = 0;
        while accepted < count {
            let msg = next_json(&mut stream).await;
            match msg["type"].as_str() {
                Some("task:accepted") => {
                    let n = msg["id"].as_u64().expect("request id") as usize;
                    assert!(ids[n].is_none(), "accepted twice: {msg}");
                    ids[n] = Some(msg["taskId"].as_str().expect("taskId").to_string());
                    accepted += 1;
                }
                Some("task:result") => {
                    let id = msg["task"]["id"].as_str().expect("id").to_string();
                    assert!(results.insert(id, msg["task"].clone()).is_none(), "{msg}");
                }
                _ => panic!("unexpected reply to a submit: {msg}"),
            }
        }
        ids.into_iter().map(|id| id.expect("accepted")).collect()
    };
    let ((), ids) = tokio::join!(send, receive);
    let ws = sink.reunite(stream).expect("same socket");
    (WsClient { ws }, ids)
}

/// The next JSON text frame (bounded by [`WAIT`]).
async fn next_json<S>(stream: &mut S) -> Value
where
    S: futures::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    loop {
        let msg = tokio::time::timeout(WAIT, stream.next())
            .await
            .expect("timed out waiting for a message")
            .expect("stream ended")
            .expect("read error");
        match msg {
            Message::Text(text) => return serde_json::from_str(&text).expect("json"),
            Message::Close(frame) => panic!("closed: {frame:?}"),
            _ => continue,
        }
    }
}

/// A worker that completes every assignment and reports the task id once
/// the hub has acknowledged the completion.
fn spawn_completing_worker(
    mut client: WsClient,
    done: mpsc::UnboundedSender<String>,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let msg = tokio::select! {
                _ = stop.cancelled() => return,
                msg = client.recv() => msg,
            };
            match msg["type"].as_str() {
                Some("task:assign") => {
                    let id = &msg["task"]["id"];
                    client
                        .send(json!({"type": "task:complete", "id": id, "taskId": id, "result": "ok"}))
                        .await;
                }
                Some("task:ack") => {
                    assert_eq!(msg["state"], "completed", "{msg}");
                    let id = msg["taskId"].as_str().expect("taskId").to_string();
                    let _ = done.send(id);
                }
                _ => panic!("unexpected message to a worker: {msg}"),
            }
        }
    })
}

/// Restarts on `data`, checks every accepted task is back in the queue,
/// lets 4 workers complete them all, and returns the completed records by
/// id and how many times each id was delivered after the restart.
/// Takes `worker`'s next assignments, one per task of `first` (the tasks
/// accepted first), each a first attempt; returns their ids.
async fn take_first_assignments(worker: &mut WsClient, first: &[String]) -> HashSet<String> {
    let mut held = HashSet::new();
    for _ in first {
        let task = worker.next_assign().await;
        assert_eq!(task["attempt"], 1, "{task}");
        held.insert(task["id"].as_str().expect("id").to_string());
    }
    assert_eq!(held, first.iter().cloned().collect::<HashSet<_>>());
    held
}

async fn restart_and_complete(
    data: &Path,
    accepted: &[String],
) -> (HashMap<String, Value>, HashMap<String, usize>) {
    let hub = ChildHub::start(data).await;

    // Before any worker: all of them are back, queued, in submission order.
    let queued: Vec<String> = hub
        .tasks("queued")
        .await
        .iter()
        .map(|t| t["id"].as_str().expect("id").to_string())
        .collect();
    assert_eq!(
        queued, accepted,
        "every accepted task is queued after the restart"
    );

    let (done_tx, mut done_rx) = mpsc::unbounded_channel();
    let stop = CancellationToken::new();
    let mut workers = Vec::new();
    for n in 0..4 {
        let mut client = hub
            .connect(ClientType::Worker, &format!("worker-{n}"))
            .await;
        client.register(&["work:*"], 8).await;
        workers.push(spawn_completing_worker(
            client,
            done_tx.clone(),
            stop.clone(),
        ));
    }
    let mut deliveries: HashMap<String, usize> = HashMap::new();
    while deliveries.len() < accepted.len() {
        let id = tokio::time::timeout(WAIT, done_rx.recv())
            .await
            .expect("workers stalled")
            .expect("workers alive");
        *deliveries.entry(id).or_default() += 1;
    }
    stop.cancel();
    for worker in workers {
        worker.await.expect("worker task");
    }

    let completed = hub.tasks("completed").await;
    let mut by_id = HashMap::new();
    for task in completed {
        let id = task["id"].as_str().expect("id").to_string();
        assert_eq!(task["state"], "completed", "{task}");
        assert!(by_id.insert(id, task).is_none(), "a task listed twice");
    }
    for state in ["queued", "assigned", "failed", "dead", "cancelled"] {
        assert_eq!(
            hub.tasks(state).await,
            Vec::<Value>::new(),
            "{state} tasks left"
        );
    }
    (by_id, deliveries)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_accepted_task_survives_sigkill_and_completes_once() {
    let data = tempfile::tempdir().expect("tempdir");
    let hub = ChildHub::start(data.path()).await;
    let backend = hub.connect(ClientType::Hub, "backend").await;
    let mut results = HashMap::new();
    let (_backend, accepted) = submit_pipelined(
        backend,
        ACCEPTED,
        |n| json!({"type": "work:x", "payload": n}),
        &mut results,
    )
    .await;
    assert!(results.is_empty(), "no worker, no results");
    hub.kill();

    let (completed, deliveries) = restart_and_complete(data.path(), &accepted).await;
    assert_eq!(completed.len(), ACCEPTED);
    for (n, id) in accepted.iter().enumerate() {
        let task = completed
            .get(id)
            .unwrap_or_else(|| panic!("accepted task {id} not completed"));
        assert_eq!(task["payload"], n, "{task}");
        // No worker was connected before the kill, so nothing was ever
        // assigned then: each task is delivered exactly once, as attempt 1.
        assert_eq!(task["attempt"], 1, "{task}");
        assert_eq!(deliveries[id], 1, "task {id} delivered more than once");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_assigned_when_the_hub_is_killed_are_redelivered_as_attempt_2() {
    const HELD: usize = 5;
    let data = tempfile::tempdir().expect("tempdir");
    let hub = ChildHub::start(data.path()).await;
    // A worker connected before the submits gets the first five at once;
    // their assignment is stored with the submit, before `task:accepted`.
    let mut early = hub.connect(ClientType::Worker, "early").await;
    early.register(&["work:*"], HELD as u32).await;
    let backend = hub.connect(ClientType::Hub, "backend").await;
    let mut results = HashMap::new();
    let (_backend, accepted) = submit_pipelined(
        backend,
        ACCEPTED,
        |n| json!({"type": "work:x", "payload": n}),
        &mut results,
    )
    .await;
    let held = take_first_assignments(&mut early, &accepted[..HELD]).await;
    // Killed while the early worker holds five tasks it never finishes.
    hub.kill();

    let (completed, deliveries) = restart_and_complete(data.path(), &accepted).await;
    assert_eq!(completed.len(), ACCEPTED);
    for id in &accepted {
        let task = completed
            .get(id)
            .unwrap_or_else(|| panic!("accepted task {id} not completed"));
        // The held five were seen twice by workers (the early one, then one
        // after the restart); the restart counts the lost delivery, so
        // their completing delivery is attempt 2. Every other task is
        // delivered once. Each is completed once either way.
        let want = if held.contains(id) { 2 } else { 1 };
        assert_eq!(task["attempt"], want, "{task}");
        assert_eq!(
            deliveries[id], 1,
            "task {id} delivered twice after the restart"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_assignment_from_the_queue_counts_its_attempt_across_sigkill() {
    const HELD: usize = 5;
    let data = tempfile::tempdir().expect("tempdir");
    let hub = ChildHub::start(data.path()).await;
    let backend = hub.connect(ClientType::Hub, "backend").await;
    let mut results = HashMap::new();
    let (_backend, accepted) = submit_pipelined(
        backend,
        ACCEPTED,
        |n| json!({"type": "work:x", "payload": n}),
        &mut results,
    )
    .await;
    // Every task waits on disk; a worker that comes now is handed the
    // first five from the queue: five new attempts, each committed before
    // its `task:assign` leaves.
    let mut late = hub.connect(ClientType::Worker, "late").await;
    late.register(&["work:*"], HELD as u32).await;
    let held = take_first_assignments(&mut late, &accepted[..HELD]).await;
    // Killed the moment the worker has them.
    hub.kill();

    let (completed, deliveries) = restart_and_complete(data.path(), &accepted).await;
    for id in &accepted {
        let task = &completed[id];
        // The attempt the late worker got is counted: a task that kills
        // its hub does not get a fresh first attempt each time.
        let want = if held.contains(id) { 2 } else { 1 };
        assert_eq!(task["attempt"], want, "{task}");
        assert_eq!(
            deliveries[id], 1,
            "task {id} delivered twice after the restart"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_completion_acknowledged_before_sigkill_stays_completed_and_never_runs_again() {
    const TASKS: usize = 200;
    const ACKED_BEFORE_KILL: usize = 100;
    let data = tempfile::tempdir().expect("tempdir");
    let hub = ChildHub::start(data.path()).await;
    let mut eager = hub.connect(ClientType::Worker, "eager").await;
    eager.register(&["work:*"], 8).await;
    let (done_tx, mut done_rx) = mpsc::unbounded_channel();
    let stop = CancellationToken::new();
    let working = spawn_completing_worker(eager, done_tx, stop.clone());
    let backend = hub.connect(ClientType::Hub, "backend").await;
    // Results the submitter got before every submit was accepted.
    let mut results = HashMap::new();
    let (_backend, accepted) = submit_pipelined(
        backend,
        TASKS,
        |n| json!({"type": "work:x", "payload": n}),
        &mut results,
    )
    .await;
    let mut acked = HashSet::new();
    while acked.len() < ACKED_BEFORE_KILL {
        let id = tokio::time::timeout(WAIT, done_rx.recv())
            .await
            .expect("the worker stalled")
            .expect("the worker runs");
        assert!(acked.insert(id), "acked twice");
    }
    // Killed while the worker is still completing tasks.
    hub.kill();
    stop.cancel();
    let _ = working.await;

    let hub = ChildHub::start(data.path()).await;
    let ids = |tasks: Vec<Value>| -> HashSet<String> {
        tasks
            .iter()
            .map(|t| t["id"].as_str().expect("id").to_string())
            .collect()
    };
    let completed = ids(hub.tasks("completed").await);
    let queued = ids(hub.tasks("queued").await);
    for id in acked.iter().chain(results.keys()) {
        assert!(
            completed.contains(id),
            "task {id} was acknowledged as completed but is not after the restart"
        );
    }
    assert_eq!(
        completed.len() + queued.len(),
        TASKS,
        "every task is either"
    );
    // The rest run once more; nothing acknowledged is delivered again.
    let (done_tx, mut done_rx) = mpsc::unbounded_channel();
    let stop = CancellationToken::new();
    let mut fresh = hub.connect(ClientType::Worker, "fresh").await;
    fresh.register(&["work:*"], 8).await;
    let working = spawn_completing_worker(fresh, done_tx, stop.clone());
    let mut redone = HashSet::new();
    while redone.len() < queued.len() {
        let id = tokio::time::timeout(WAIT, done_rx.recv())
            .await
            .expect("the worker stalled")
            .expect("the worker runs");
        assert!(
            queued.contains(&id),
            "task {id} ran again: it was completed"
        );
        assert!(redone.insert(id), "delivered twice");
    }
    stop.cancel();
    let _ = working.await;
    assert_eq!(ids(hub.tasks("completed").await).len(), TASKS);
    assert!(
        accepted
            .iter()
            .all(|id| completed.contains(id) || queued.contains(id))
    );
}

// ---- Churn ----

/// How a churning worker drops its connection.
#[derive(Clone, Copy)]
enum Crash {
    /// Sends a close frame.
    Close,
    /// Drops the TCP connection, no close frame.
    Drop,
}

/// One worker seat: connects, registers, completes assignments; a churny
/// seat sometimes dies on receiving one (holding it and whatever else it
/// was sent) and a new worker takes the seat. Returns how often it died.
async fn worker_seat(hub: &TestHub, seat: u64, churny: bool, stop: CancellationToken) -> usize {
    let mut rng = StdRng::seed_from_u64(0x5eed_0000 + seat);
    let mut crashes = 0;
    loop {
        let (mut client, _) = hub
            .connect(ClientType::Worker, &format!("seat-{seat}"))
            .await;
        client.register(&["work:*"], 4).await;
        let crash = loop {
            let msg = tokio::select! {
                _ = stop.cancelled() => return crashes,
                msg = client.recv() => msg,
            };
            assert_eq!(msg["type"], "task:assign", "{msg}");
            if churny && rng.random_bool(0.01) {
                break if rng.random_bool(0.5) {
                    Crash::Close
                } else {
                    Crash::Drop
                };
            }
            let id = &msg["task"]["id"];
            client
                .send(json!({"type": "task:complete", "taskId": id, "result": null}))
                .await;
        };
        crashes += 1;
        match crash {
            Crash::Close => {
                let _ = client.ws.close(None).await;
            }
            Crash::Drop => drop(client),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_task_is_lost_while_workers_die_mid_task() {
    const TASKS: usize = 10_000;
    const SEATS: u64 = 8;
    let started = Instant::now();
    // In memory only: this test is about the dispatcher's bookkeeping under
    // churn; the SIGKILL tests above cover the store, and its fsyncs would
    // make this one half again as slow.
    let hub = TestHub::with_config(|c| c.tasks.durable = false).await;
    let stop = CancellationToken::new();

    let (backend, _) = hub.connect(ClientType::Hub, "backend").await;
    let work = async {
        let mut results = HashMap::new();
        let (backend, accepted) = submit_pipelined(
            backend,
            TASKS,
            // Enough attempts that no run of bad luck dead-letters a task.
            |n| json!({"type": "work:x", "payload": n, "maxAttempts": 1000}),
            &mut results,
        )
        .await;
        let (_sink, mut stream) = backend.ws.split();
        while results.len() < TASKS {
            let msg = next_json(&mut stream).await;
            assert_eq!(msg["type"], "task:result", "{msg}");
            let id = msg["task"]["id"].as_str().expect("id").to_string();
            assert!(results.insert(id, msg["task"].clone()).is_none(), "{msg}");
        }
        stop.cancel();
        (accepted, results)
    };
    // Half the seats churn, half are steady.
    let seats = futures::future::join_all(
        (0..SEATS).map(|seat| worker_seat(&hub, seat, seat % 2 == 0, stop.clone())),
    );
    let ((accepted, results), crashes) = tokio::join!(work, seats);
    let crashes: usize = crashes.iter().sum();

    // The submitter heard of every accepted task, once, completed.
    let accepted: HashSet<String> = accepted.into_iter().collect();
    assert_eq!(accepted.len(), TASKS);
    assert_eq!(results.keys().cloned().collect::<HashSet<_>>(), accepted);
    for task in results.values() {
        assert_eq!(task["state"], "completed", "{task}");
    }
    // The hub agrees.
    let base = format!("http://{}", hub.addr);
    let completed = list_tasks(&base, "completed").await;
    assert_eq!(completed.len(), TASKS);
    let listed: HashSet<&str> = completed
        .iter()
        .map(|t| t["id"].as_str().expect("id"))
        .collect();
    assert_eq!(listed.len(), TASKS, "each task listed once");
    for state in ["queued", "assigned", "failed", "dead", "cancelled"] {
        assert_eq!(
            list_tasks(&base, state).await,
            Vec::<Value>::new(),
            "{state} tasks left"
        );
    }
    // And the churn really took tasks away from workers.
    let redelivered = completed
        .iter()
        .filter(|t| t["attempt"].as_u64() > Some(1))
        .count();
    assert!(crashes > 0, "no worker died");
    assert!(redelivered > 0, "no task was redelivered");
    eprintln!(
        "churn: {TASKS} tasks, {crashes} worker deaths, {redelivered} redelivered, {:?}",
        started.elapsed()
    );
}

// ---- Nothing before its commit ----

/// With the store's commits held (a stalled disk), nothing that reports a
/// change goes out: not `task:accepted` or the task's events, not the
/// `task:assign` of a new attempt, not the `task:ack`, event and
/// `task:result` of a completion. Each follows once the commit is done.
#[tokio::test]
async fn nothing_about_a_change_goes_out_before_its_commit() {
    let hub = TestHub::start().await;
    let (mut backend, _) = hub.connect(ClientType::Hub, "backend").await;
    backend
        .subscribe(&["task:{queued,assigned,completed}"])
        .await;
    hub.hub.hold_task_commits(true);
    backend
        .send(json!({"type": "task:submit", "id": "s1", "task": {"type": "work:x"}}))
        .await;
    backend.expect_quiet().await;
    let (mut worker, _) = hub.connect(ClientType::Worker, "w").await;
    worker.register(&["work:*"], 1).await;
    // Assigned in memory, but its attempt is not on disk: not sent.
    worker.expect_quiet().await;

    hub.hub.hold_task_commits(false);
    let accepted = backend.recv().await;
    assert_eq!(accepted["type"], "task:accepted", "{accepted}");
    assert_eq!(accepted["id"], "s1", "{accepted}");
    let id = accepted["taskId"].as_str().expect("taskId").to_string();
    for channel in ["task:queued", "task:assigned"] {
        let event = backend.recv().await;
        assert_eq!(event["channel"], channel, "{event}");
    }
    let assign = worker.next_assign().await;
    assert_eq!(assign["id"], id.as_str(), "{assign}");
    assert_eq!(assign["attempt"], 1, "{assign}");

    hub.hub.hold_task_commits(true);
    worker
        .send(json!({"type": "task:complete", "id": "c1", "taskId": id, "result": 1}))
        .await;
    worker.expect_quiet().await;
    backend.expect_quiet().await;

    hub.hub.hold_task_commits(false);
    let ack = worker.recv().await;
    assert_eq!(ack["type"], "task:ack", "{ack}");
    assert_eq!(ack["id"], "c1", "{ack}");
    assert_eq!(ack["state"], "completed", "{ack}");
    let event = backend.recv().await;
    assert_eq!(event["channel"], "task:completed", "{event}");
    let result = backend.recv().await;
    assert_eq!(result["type"], "task:result", "{result}");
    assert_eq!(result["task"]["result"], 1, "{result}");
}
