//! `loadgen worker`: a task worker built on the Rust client library
//! (`chanhub::client`), the way an application writes one: it registers
//! `bench:task` with `slots` slots and completes each assignment with its
//! payload, each in a task of its own. `benches/js_worker.sh` runs it beside
//! the JavaScript package's worker (`benches/js-worker/worker.mjs`), with
//! `loadgen tasks --workers 0` submitting to whichever is connected.
//!
//! Prints `registered` once the hub has accepted the registration, then
//! runs until it is killed or the hub goes away.

use anyhow::{Context, Result, bail};
use chanhub::auth::ClientType;
use chanhub::client::{Client, ClientOptions, Registration, Work};

use crate::client::Target;

/// Runs the worker against `target` until the connection ends.
pub(crate) async fn run(target: &Target, slots: u32) -> Result<()> {
    let token = target.token(ClientType::Worker, "rust-bench-worker")?;
    let url = format!("ws://{}/ws", target.addr);
    // The event receiver stays alive (bound) for the client's life.
    let (client, _events) = Client::connect(ClientOptions::new(&url, token.as_str()))
        .await
        .context("connecting to the hub")?;
    let mut work = client
        .assignments()
        .context("the assignments stream was already taken")?;
    client
        .register_with(Registration::new(&["bench:task"], slots))
        .await
        .context("registering")?;
    println!("registered");
    while let Some(item) = work.next_work().await {
        match item {
            Work::Assigned(task) => {
                let client = client.clone();
                tokio::spawn(async move {
                    if let Err(err) = client.complete(&task.id, task.payload).await {
                        eprintln!("{}: complete refused: {err}", task.id);
                    }
                });
            }
            Work::RegistrationRefused { error } => bail!("registration refused: {error}"),
            Work::Cancelled { .. } | Work::Lost | Work::Reregistered { .. } => {}
        }
    }
    Ok(())
}
