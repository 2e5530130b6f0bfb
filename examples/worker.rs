//! A chanhub worker: registers for task types, and for each task it is
//! given reports progress 50, then completes with a result echoing the
//! payload. A cancelled task (or every task, when the connection drops) is
//! stopped at once. Ctrl-c drains: no new tasks, running ones finish.
//!
//! Run with (a hub running, e.g. `cargo run -- serve`):
//!
//! ```text
//! cargo run --example worker -- --url ws://127.0.0.1:7070/ws \
//!     --token "$(cargo run -q -- token --type worker --sub w1)" \
//!     --capabilities 'demo:*' --slots 4
//! ```
//!
//! Then submit tasks with `examples/submit.rs`.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use chanhub::client::{Assignment, Client, ClientOptions, Registration, Work};
use clap::Parser;
use serde_json::json;
use tokio::task::JoinHandle;

/// Runs demo tasks for a chanhub hub.
#[derive(Parser)]
struct Args {
    /// The hub's WebSocket endpoint.
    #[arg(long, env = "HUB_URL", default_value = "ws://127.0.0.1:7070/ws")]
    url: String,
    /// A worker token (`chanhub token --type worker --sub <name>`).
    #[arg(long, env = "HUB_TOKEN")]
    token: String,
    /// Task-type patterns to run (comma-separated).
    #[arg(long, default_value = "demo:*")]
    capabilities: String,
    /// Tasks run at once.
    #[arg(long, default_value_t = 4)]
    slots: u32,
    /// How long each task pretends to work, in ms.
    #[arg(long, default_value_t = 1000)]
    work_ms: u64,
}

#[tokio::main]
async fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let (client, _events) = Client::connect(ClientOptions::new(&args.url, args.token.as_str()))
        .await
        .context("connecting to the hub")?;
    let mut work = client
        .assignments()
        .context("the assignments stream was already taken")?;
    let capabilities: Vec<&str> = args.capabilities.split(',').map(str::trim).collect();
    let worker_id = client
        .register_with(Registration::new(&capabilities, args.slots).label("example", "worker"))
        .await
        .context("registering")?;
    println!(
        "registered as worker {worker_id} for {capabilities:?} with {} slots",
        args.slots
    );

    let work_time = Duration::from_millis(args.work_ms);
    let mut running: HashMap<String, JoinHandle<()>> = HashMap::new();
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        let item = tokio::select! {
            _ = &mut ctrl_c => break,
            item = work.next_work() => item,
        };
        let Some(item) = item else {
            bail!("the client closed");
        };
        match item {
            Work::Assigned(task) => {
                running.retain(|_, handle| !handle.is_finished());
                let id = task.id.clone();
                running.insert(id, tokio::spawn(run_task(client.clone(), task, work_time)));
            }
            Work::Cancelled { task_id, reason } => {
                println!("{task_id}: stopped ({reason})");
                if let Some(handle) = running.remove(&task_id) {
                    handle.abort();
                }
            }
            Work::Lost => {
                // The hub has requeued them; finishing them would be refused.
                println!("connection lost: dropping {} running tasks", running.len());
                for (_, handle) in running.drain() {
                    handle.abort();
                }
            }
            Work::Reregistered { worker_id } => println!("registered again as worker {worker_id}"),
            Work::RegistrationRefused { error } => {
                bail!("the hub refused to register again: {error}")
            }
        }
    }

    let left = client.drain().await.context("draining")?;
    println!("draining: waiting for {left} running tasks");
    for (_, handle) in running.drain() {
        // An aborted or panicked task has nothing left to wait for.
        let _ = handle.await;
    }
    client.close().await;
    Ok(())
}

/// Pretends to work on `task`: half the time, progress 50, the other
/// half, then completes with the payload echoed.
async fn run_task(client: Client, task: Assignment, work_time: Duration) {
    println!(
        "{}: {} attempt {} payload {}",
        task.id, task.kind, task.attempt, task.payload
    );
    tokio::time::sleep(work_time / 2).await;
    if let Err(err) = client.progress(&task.id, Some(50), Some("halfway")).await {
        eprintln!("{}: progress refused: {err}", task.id);
        return;
    }
    tokio::time::sleep(work_time / 2).await;
    match client
        .complete(&task.id, json!({ "echo": task.payload }))
        .await
    {
        Ok(()) => println!("{}: completed", task.id),
        Err(err) => eprintln!("{}: complete refused: {err}", task.id),
    }
}
