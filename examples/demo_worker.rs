//! A chanhub server of calls: serves the `demo.*` methods with the Rust
//! client, so any client (a browser, `Client::call`) can call them.
//!
//! - `demo.echo` `{"text": ...}` answers `{"text": ...}`;
//! - `demo.add` `{"a": 2, "b": 3}` answers `{"sum": 5}`;
//! - `demo.fail` answers the error `demo_failed` (with the params as data);
//! - any other `demo.*` method answers the error `not_found`.
//!
//! Prints `serving demo.*` once the hub routes calls to it. Ctrl-c unserves
//! (calls running finish) and exits.
//!
//! Run with (a hub running, e.g. `cargo run -- serve`):
//!
//! ```text
//! cargo run --example demo_worker -- --url ws://127.0.0.1:7070/ws \
//!     --token "$(cargo run -q -- token --type worker --sub demo)"
//! ```

use anyhow::{Context, Result};
use chanhub::client::{CallError, CallRequest, Client, ClientOptions};
use clap::Parser;
use serde_json::{Value, json};

/// Serves the demo.* methods for a chanhub hub.
#[derive(Parser)]
struct Args {
    /// The hub's WebSocket endpoint.
    #[arg(long, env = "HUB_URL", default_value = "ws://127.0.0.1:7070/ws")]
    url: String,
    /// A token that may serve (`chanhub token --type worker --sub <name>`).
    #[arg(long, env = "HUB_TOKEN")]
    token: String,
    /// Calls run at once.
    #[arg(long, default_value_t = 16)]
    concurrency: u32,
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
    let serving = client
        .serve(&["demo.*"], args.concurrency, handle)
        .await
        .context("serving demo.*")?;
    println!("serving {}", serving.methods().join(", "));

    tokio::signal::ctrl_c()
        .await
        .context("waiting for ctrl-c")?;
    serving.close().await.context("unserving")?;
    client.close().await;
    Ok(())
}

/// Answers one call.
async fn handle(req: CallRequest) -> Result<Value, CallError> {
    match req.method.as_str() {
        "demo.echo" => Ok(json!({ "text": req.params["text"] })),
        "demo.add" => add(&req.params["a"], &req.params["b"]).map(|sum| json!({ "sum": sum })),
        "demo.fail" => {
            Err(CallError::new("demo_failed", "demo.fail always fails").with_data(req.params))
        }
        other => Err(CallError::new(
            "not_found",
            format!("{other} is not a demo method"),
        )),
    }
}

/// `a + b`: an integer for two integers, else a float.
fn add(a: &Value, b: &Value) -> Result<Value, CallError> {
    if let (Some(a), Some(b)) = (a.as_i64(), b.as_i64()) {
        if let Some(sum) = a.checked_add(b) {
            return Ok(sum.into());
        }
    }
    match (a.as_f64(), b.as_f64()) {
        (Some(a), Some(b)) => Ok(json!(a + b)),
        _ => Err(CallError::new("bad_params", "a and b must be numbers")),
    }
}
