//! A Rust app with chanhub inside it, as a Tauri app would run it: the hub
//! starts on the app's tokio runtime with `Hub::builder`, on a free
//! loopback port, and the app mints the tokens its UI and workers connect
//! with. Here a worker and a subscriber (the UI) connect with the Rust
//! client; the app publishes an event the subscriber receives and submits
//! a task the worker completes, then shuts the hub down.
//!
//! ```text
//! cargo run --example embed
//! ```
//!
//! It stops by itself (within 20 s even if something hangs) and exits 0
//! when everything arrived.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use chanhub::auth::ClientType;
use chanhub::client::{Client, ClientOptions, TaskSpec, Work};
use chanhub::{Config, Hub, RunningHub};
use serde_json::json;

/// How long the tokens minted here live.
const TOKEN_TTL: Duration = Duration::from_secs(3600);

#[tokio::main]
async fn main() -> Result<()> {
    // The app's own log subscriber also gets the hub's lines.
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();

    // A real app keeps the hub's data in its own data directory (Tauri:
    // `app.path().app_data_dir()`); this example throws it away. No secret
    // is configured: the hub generates one in memory, and every token comes
    // from `hub.mint_token`.
    let data = tempfile::tempdir().context("creating a data directory")?;
    let config = Config {
        data_dir: Some(data.path().to_path_buf()),
        ..Config::default()
    };
    let hub = Hub::builder(config)
        .listen("127.0.0.1:0")
        .start()
        .await
        .context("starting the hub")?;
    hub.ready().await?;
    println!("hub listening on {}", hub.ws_url());

    let outcome = tokio::time::timeout(Duration::from_secs(20), run(&hub)).await;
    // Stop the hub whatever happened: connections get 1012, tasks are
    // handed back and flushed.
    hub.shutdown().await.context("stopping the hub")?;
    println!("hub stopped");
    match outcome {
        Ok(result) => result,
        Err(_) => bail!("the example did not finish within 20 s"),
    }
}

/// The app's work against its hub: a worker, a subscriber, one event, one
/// task.
async fn run(hub: &RunningHub) -> Result<()> {
    let connect = |client_type, sub: &str| -> Result<ClientOptions> {
        let token = hub.mint_token(client_type, sub, TOKEN_TTL)?;
        Ok(ClientOptions::new(hub.ws_url(), token))
    };

    // A worker: runs `demo:*` tasks, one at a time.
    let (worker, _) = Client::connect(connect(ClientType::Worker, "worker-1")?).await?;
    let mut work = worker.assignments().context("assignments taken")?;
    worker.register(&["demo:*"], 1).await?;
    let worker_loop = tokio::spawn({
        let worker = worker.clone();
        async move {
            while let Some(item) = work.next_work().await {
                if let Work::Assigned(task) = item {
                    println!("worker got task {} ({})", task.kind, task.payload);
                    worker.progress(&task.id, Some(50), Some("halfway")).await?;
                    worker
                        .complete(&task.id, json!({ "echo": task.payload }))
                        .await?;
                }
            }
            anyhow::Ok(())
        }
    });

    // A subscriber: what the app's window would be.
    let (ui, mut events) = Client::connect(connect(ClientType::Browser, "main-window")?).await?;
    ui.subscribe(&["demo:*"]).await?;

    // The app's backend side: publishes and submits (a hub client).
    let (backend, _) = Client::connect(connect(ClientType::Hub, "app")?).await?;
    let mut results = backend.task_results().context("results taken")?;

    let ack = backend
        .publish("demo:greeting", json!({ "hello": "from the app" }))
        .await?;
    println!(
        "published event {} to {} subscriber(s)",
        ack.event_id, ack.delivered
    );
    let event = events
        .next_event()
        .await
        .context("the subscriber's connection ended")?;
    println!("subscriber received {} {}", event.channel, event.data);

    let accepted = backend
        .submit(TaskSpec {
            kind: "demo:echo".into(),
            payload: json!({ "n": 1 }),
            priority: None,
            timeout_ms: None,
            max_attempts: None,
            dedup_key: None,
        })
        .await?;
    let task = loop {
        let task = results
            .next_result()
            .await
            .context("the backend's connection ended")?;
        if task.id == accepted.task_id {
            break task;
        }
    };
    println!(
        "task {} {} with result {}",
        task.id,
        task.state.as_str(),
        task.result
            .as_ref()
            .map_or_else(String::new, |r| r.to_string())
    );
    if task.state != chanhub::client::TaskState::Completed {
        bail!("the task ended {}", task.state.as_str());
    }

    for client in [&backend, &ui, &worker] {
        client.close().await;
    }
    worker_loop.await.context("the worker panicked")??;
    Ok(())
}
