//! A chanhub submitter: submits tasks, prints every state change of each
//! (from its `task:<id>` channel; tasks of the same token subject) and
//! each final result (`task:result`), and exits when all have finished.
//!
//! Run with (a hub and `examples/worker.rs` running):
//!
//! ```text
//! cargo run --example submit -- --url ws://127.0.0.1:7070/ws \
//!     --token "$(cargo run -q -- token --type hub --sub backend)" \
//!     --type demo:echo --count 5 --priority 7
//! ```

use std::collections::HashSet;

use anyhow::{Context, Result, bail};
use chanhub::client::{Client, ClientError, ClientOptions, TaskSpec, TaskView};
use clap::Parser;
use serde_json::json;
use tokio::sync::mpsc;

/// Submits demo tasks to a chanhub hub and follows them to the end.
#[derive(Parser)]
struct Args {
    /// The hub's WebSocket endpoint.
    #[arg(long, env = "HUB_URL", default_value = "ws://127.0.0.1:7070/ws")]
    url: String,
    /// A hub token (`chanhub token --type hub --sub <name>`).
    #[arg(long, env = "HUB_TOKEN")]
    token: String,
    /// Task type.
    #[arg(long = "type", default_value = "demo:echo")]
    kind: String,
    /// How many tasks.
    #[arg(long, default_value_t = 3)]
    count: u32,
    /// 0–9, higher first.
    #[arg(long, default_value_t = 5)]
    priority: u8,
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
    let (client, mut events) = Client::connect(ClientOptions::new(&args.url, args.token.as_str()))
        .await
        .context("connecting to the hub")?;
    let mut results = client
        .task_results()
        .context("the results stream was already taken")?;
    // Every change of a task is published on `task:<id>` (and on lifecycle
    // channels such as `task:queued`, also matched here and skipped below).
    // Subscribing before submitting means no change is missed.
    client.subscribe(&["task:*"]).await.context("subscribing")?;
    let sub = client.auth().sub;

    // Submit from another task while this one reads events: the first
    // changes of a task can arrive before its `task:accepted`, and a full
    // event queue would hold up the answers to the submits.
    let (accepted_tx, mut accepted) = mpsc::channel(64);
    tokio::spawn(submit_all(client.clone(), args, accepted_tx));

    let mut submitted = HashSet::new();
    let mut finished = HashSet::new();
    let mut all_submitted = false;
    while !(all_submitted && submitted.is_subset(&finished)) {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => bail!("interrupted"),
            id = accepted.recv(), if !all_submitted => match id {
                Some(Ok(id)) => {
                    println!("{id} submitted");
                    submitted.insert(id);
                }
                Some(Err(err)) => bail!("submitting failed: {err}"),
                None => all_submitted = true,
            },
            event = events.next_event() => {
                let Some(event) = event else { bail!("the client closed") };
                let Ok(task) = serde_json::from_value::<TaskView>(event.data) else { continue };
                // Each change once (from `task:<id>`), and only ours.
                if event.channel == format!("task:{}", task.id) && task.submitted_by == sub {
                    print_change(&task);
                    if task.state.is_terminal() {
                        finish(&mut finished, task);
                    }
                }
            }
            result = results.next_result() => {
                let Some(task) = result else { bail!("the client closed") };
                finish(&mut finished, task);
            }
        }
    }
    client.close().await;
    Ok(())
}

/// Submits `args.count` tasks, sending each id (or the error that stops
/// it) to `accepted`.
async fn submit_all(
    client: Client,
    args: Args,
    accepted: mpsc::Sender<Result<String, ClientError>>,
) {
    for n in 0..args.count {
        let spec = TaskSpec {
            kind: args.kind.clone(),
            payload: json!({ "n": n }),
            priority: Some(args.priority),
            timeout_ms: None,
            max_attempts: None,
            dedup_key: None,
        };
        let result = client.submit(spec).await.map(|a| a.task_id);
        let failed = result.is_err();
        if accepted.send(result).await.is_err() || failed {
            return;
        }
    }
}

/// Records a finished task and prints its outcome, once: it is reported
/// both by `task:result` and by the last event on `task:<id>`. The event
/// matters when the hub restarted (or this client reconnected) since the
/// submit: `task:result` goes only to the connection that submitted.
fn finish(finished: &mut HashSet<String>, task: TaskView) {
    if finished.contains(&task.id) {
        return;
    }
    let outcome = task.result.as_ref().or(task.error.as_ref());
    let outcome = outcome.map_or_else(String::new, |v| v.to_string());
    println!("{} finished: {} {outcome}", task.id, task.state.as_str());
    finished.insert(task.id);
}

/// One line per state change: state, attempt, progress and message.
fn print_change(task: &TaskView) {
    let mut line = format!(
        "{} {} (attempt {})",
        task.id,
        task.state.as_str(),
        task.attempt
    );
    if let Some(progress) = task.progress {
        line.push_str(&format!(" {progress}%"));
    }
    if let Some(message) = &task.message {
        line.push_str(&format!(" {message}"));
    }
    println!("{line}");
}
