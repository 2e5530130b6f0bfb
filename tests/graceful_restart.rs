//! Graceful shutdown and restart of the real binary (issue #7): SIGTERM
//! while clients are connected and workers hold tasks. Connections get
//! 1012, the running tasks go back to the queue and are on disk when the
//! process exits 0; after a restart on the same address and data directory,
//! the Rust client workers reconnect and register by themselves, and every
//! task completes exactly once from the submitter's view.

mod common;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use chanhub::auth::ClientType;
use chanhub::client::{Assignments, Backoff, Client, ClientOptions, Work};
use common::child::ChildHub;
use common::{Closed, WAIT, token_with};
use serde_json::{Value, json};
use tokio::sync::{mpsc, watch};

const TASKS: usize = 20;
const WORKERS: usize = 2;
const SLOTS: u32 = 4;

fn options(url: &str, sub: &str) -> ClientOptions {
    let token = token_with(json!({"client_type": "worker", "sub": sub}));
    ClientOptions {
        backoff: Backoff {
            base: Duration::from_millis(20),
            cap: Duration::from_millis(200),
        },
        request_timeout: WAIT,
        connect_timeout: WAIT,
        ..ClientOptions::new(url, token)
    }
}

/// What a worker reports to the test.
#[derive(Debug)]
enum Seen {
    Held(String),
    Lost,
    Reregistered,
    Completed(String),
}

/// Holds its assignments while `finish` is false; completes the held ones
/// when it turns true, and every later one at once.
fn run_worker(
    client: Client,
    mut work: Assignments,
    mut finish: watch::Receiver<bool>,
    seen: mpsc::UnboundedSender<Seen>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut holding = Vec::new();
        loop {
            tokio::select! {
                Ok(()) = finish.changed() => {
                    if *finish.borrow() {
                        for id in holding.drain(..) {
                            complete(&client, id, &seen).await;
                        }
                    }
                }
                item = work.next_work() => match item {
                    None => return,
                    Some(Work::Assigned(task)) if *finish.borrow() => {
                        complete(&client, task.id, &seen).await;
                    }
                    Some(Work::Assigned(task)) => {
                        holding.push(task.id.clone());
                        let _ = seen.send(Seen::Held(task.id));
                    }
                    Some(Work::Lost) => {
                        // Held tasks went back to the queue with the connection.
                        holding.clear();
                        let _ = seen.send(Seen::Lost);
                    }
                    Some(Work::Reregistered { .. }) => {
                        let _ = seen.send(Seen::Reregistered);
                    }
                    Some(other) => panic!("unexpected work item {other:?}"),
                },
            }
        }
    })
}

async fn complete(client: &Client, id: String, seen: &mpsc::UnboundedSender<Seen>) {
    client.complete(&id, json!("done")).await.expect("complete");
    let _ = seen.send(Seen::Completed(id));
}

async fn next_seen(rx: &mut mpsc::UnboundedReceiver<Seen>) -> Seen {
    tokio::time::timeout(WAIT, rx.recv())
        .await
        .expect("workers stalled")
        .expect("workers alive")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_hands_running_tasks_back_and_workers_finish_them_after_restart() {
    let data = tempfile::tempdir().expect("tempdir");
    let hub = ChildHub::start(data.path()).await;
    let addr = hub.addr;
    let url = format!("ws://{addr}/ws");

    let mut browser = hub.connect(ClientType::Browser, "watcher").await;
    browser.subscribe(&["task:**"]).await;
    let (seen_tx, mut seen) = mpsc::unbounded_channel();
    let (finish, finish_rx) = watch::channel(false);
    let mut workers = Vec::new();
    for n in 0..WORKERS {
        let (client, _events) = Client::connect(options(&url, &format!("worker-{n}")))
            .await
            .expect("worker connects");
        let work = client.assignments().expect("assignments");
        client.register(&["job:*"], SLOTS).await.expect("register");
        workers.push(run_worker(client, work, finish_rx.clone(), seen_tx.clone()));
    }

    let mut submitter = hub.connect(ClientType::Hub, "submitter").await;
    let mut accepted = Vec::new();
    for n in 0..TASKS {
        accepted.push(
            submitter
                .submit_task(json!({"type": "job:x", "payload": n}))
                .await,
        );
    }
    // Every slot is busy: 8 tasks running, the rest queued.
    let mut held = HashSet::new();
    while held.len() < WORKERS * SLOTS as usize {
        match next_seen(&mut seen).await {
            Seen::Held(id) => assert!(held.insert(id), "assigned twice"),
            other => panic!("before the shutdown: {other:?}"),
        }
    }
    assert_eq!(hub.tasks("assigned").await.len(), held.len());

    let status = hub.terminate().await;
    assert!(status.success(), "exit status after SIGTERM: {status}");
    assert_eq!(browser.closed().await, Closed::Code(1012));
    assert_eq!(submitter.closed().await, Closed::Code(1012));
    for _ in 0..WORKERS {
        assert!(matches!(next_seen(&mut seen).await, Seen::Lost));
    }

    // After the restart the workers come back by themselves and fill their
    // slots again; the submitter, back too, watches completions before the
    // workers are let go.
    let hub = ChildHub::start_at(data.path(), addr).await;
    let (mut reregistered, mut held_again) = (0, 0);
    while reregistered < WORKERS || held_again < held.len() {
        match next_seen(&mut seen).await {
            Seen::Reregistered => reregistered += 1,
            Seen::Held(_) => held_again += 1,
            other => panic!("after the restart: {other:?}"),
        }
    }
    let mut watcher = hub.connect(ClientType::Hub, "submitter").await;
    watcher.subscribe(&["task:completed"]).await;
    finish.send(true).expect("workers alive");

    let mut completed: HashMap<String, usize> = HashMap::new();
    while completed.values().sum::<usize>() < TASKS {
        match next_seen(&mut seen).await {
            Seen::Completed(id) => *completed.entry(id).or_default() += 1,
            other => panic!("while completing: {other:?}"),
        }
    }
    let accepted_ids: HashSet<&String> = accepted.iter().collect();
    assert_eq!(
        completed.keys().collect::<HashSet<_>>(),
        accepted_ids,
        "every accepted task completed"
    );
    assert!(completed.values().all(|&n| n == 1), "{completed:?}");
    // Exactly one `task:completed` per task, then nothing more.
    let mut announced = HashSet::new();
    for _ in 0..TASKS {
        let event = watcher.recv_type("event").await;
        let id = event["data"]["id"].as_str().expect("id").to_string();
        assert!(announced.insert(id), "completed twice: {event}");
    }
    watcher.expect_quiet().await;
    assert_eq!(announced.iter().collect::<HashSet<_>>(), accepted_ids);

    // The hub's own record agrees, and the tasks that were running at the
    // shutdown went out again as attempt 2, the others as attempt 1.
    let listed = hub.tasks("completed").await;
    assert_eq!(listed.len(), TASKS);
    for task in &listed {
        let id = task["id"].as_str().expect("id");
        let attempt = if held.contains(id) { 2 } else { 1 };
        assert_eq!(task["attempt"], attempt, "{task}");
    }
    for state in ["queued", "assigned", "failed", "dead"] {
        assert_eq!(hub.tasks(state).await, Vec::<Value>::new(), "{state}");
    }
    drop(hub);
    for worker in workers {
        worker.abort();
    }
}
