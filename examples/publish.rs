//! A chanhub publisher: publishes `--count` events to a channel, one every
//! `--interval`, and prints each acknowledgement (event id and how many
//! connections it was queued for).
//!
//! Run with (a hub running, e.g. `cargo run -- serve`, and a subscriber such
//! as `cargo run -- sub 'demo:*'`):
//!
//! ```text
//! cargo run --example publish -- --url ws://127.0.0.1:7070/ws \
//!     --token "$(cargo run -q -- token --type hub --sub publisher)" \
//!     --channel demo:ticks --count 5
//! ```

use std::time::Duration;

use anyhow::{Context, Result};
use chanhub::client::{Client, ClientOptions};
use clap::Parser;
use serde_json::json;

/// Publishes numbered events to a chanhub channel.
#[derive(Parser)]
struct Args {
    /// The hub's WebSocket endpoint.
    #[arg(long, env = "HUB_URL", default_value = "ws://127.0.0.1:7070/ws")]
    url: String,
    /// A hub token (`chanhub token --type hub --sub <name>`).
    #[arg(long, env = "HUB_TOKEN")]
    token: String,
    /// Channel to publish to.
    #[arg(long, default_value = "demo:ticks")]
    channel: String,
    /// How many events.
    #[arg(long, default_value_t = 5)]
    count: u32,
    /// Pause between events, e.g. 200ms.
    #[arg(long, default_value = "200ms", value_parser = humantime::parse_duration)]
    interval: Duration,
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let (client, _events) = Client::connect(ClientOptions::new(&args.url, args.token.as_str()))
        .await
        .context("connecting to the hub")?;
    for n in 1..=args.count {
        let ack = client
            .publish(&args.channel, json!({ "n": n, "of": args.count }))
            .await
            .with_context(|| format!("publishing event {n}"))?;
        println!(
            "{}",
            json!({ "channel": ack.channel, "id": ack.event_id, "delivered": ack.delivered })
        );
        if n < args.count {
            tokio::time::sleep(args.interval).await;
        }
    }
    client.close().await;
    Ok(())
}
