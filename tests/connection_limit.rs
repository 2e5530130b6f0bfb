//! The connection limit of a hub started as users start it (`chanhub
//! serve`, no configuration): derived from the open-file limit, said in
//! the log at start, and a refusal at it warned about, naming the setting.

mod common;

use std::process::Stdio;

use common::{SECRET, WAIT, WsClient};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStderr, Command};

/// `chanhub serve` on a free port with JSON logs on stderr; `env` adds
/// settings. Returns the child, its WebSocket URL and its log lines.
async fn start(env: &[(&str, &str)]) -> (Child, String, Lines<BufReader<ChildStderr>>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_chanhub"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--ready-json",
            "--ephemeral",
        ])
        .env("CHANHUB_AUTH__SECRET", SECRET)
        .env("CHANHUB_LOG__FORMAT", "json")
        .env("CHANHUB_LOG__LEVEL", "info")
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start chanhub");
    let stdout = child.stdout.take().expect("stdout");
    let line = tokio::time::timeout(WAIT, BufReader::new(stdout).lines().next_line())
        .await
        .expect("ready in time")
        .expect("read stdout")
        .expect("a ready line");
    let ready: Value = serde_json::from_str(&line).expect("ready JSON");
    let ws = ready["ws"].as_str().expect("ws url").to_string();
    let logs = BufReader::new(child.stderr.take().expect("stderr")).lines();
    (child, ws, logs)
}

/// The log lines (as JSON) until the one whose message contains `text`.
async fn until_logged(logs: &mut Lines<BufReader<ChildStderr>>, text: &str) -> Value {
    loop {
        let line = tokio::time::timeout(WAIT, logs.next_line())
            .await
            .unwrap_or_else(|_| panic!("no log line with {text:?} in time"))
            .expect("read stderr")
            .unwrap_or_else(|| panic!("stderr ended before a line with {text:?}"));
        let Ok(entry) = serde_json::from_str::<Value>(&line) else {
            continue;
        };
        if entry["fields"]["message"]
            .as_str()
            .is_some_and(|m| m.contains(text))
        {
            return entry;
        }
    }
}

/// The hard open-file limit this test (and so the hub) runs under.
fn hard_open_files() -> Option<u64> {
    let out = std::process::Command::new("sh")
        .args(["-c", "ulimit -Hn"])
        .output()
        .expect("run ulimit");
    String::from_utf8_lossy(&out.stdout).trim().parse().ok()
}

#[tokio::test]
async fn the_default_connection_limit_follows_the_open_file_limit_and_is_logged() {
    let (mut child, _, mut logs) = start(&[]).await;
    let entry = until_logged(&mut logs, "connection limit").await;
    let max = entry["fields"]["max"]
        .as_u64()
        .expect("max in the log line");
    match hard_open_files() {
        // The soft limit was raised to the hard one; 512 stay for the rest.
        Some(hard) => {
            assert_eq!(
                entry["fields"]["open_files"].as_u64(),
                Some(hard),
                "{entry}"
            );
            assert_eq!(max, hard.saturating_sub(512).max(64), "{entry}");
        }
        None => assert!(max > 10_000, "{entry}"),
    }
    child.kill().await.expect("kill");
}

#[tokio::test]
async fn refusals_at_the_limit_are_warned_about_once_naming_the_setting() {
    let (mut child, ws, mut logs) = start(&[("CHANHUB_LIMITS__MAX_CONNECTIONS", "1")]).await;
    let entry = until_logged(&mut logs, "connection limit").await;
    assert_eq!(entry["fields"]["max"], 1, "{entry}");

    let first = WsClient::try_connect(&ws)
        .await
        .expect("the first connection");
    for _ in 0..3 {
        match WsClient::try_connect(&ws).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
                assert_eq!(response.status(), 503);
            }
            Err(other) => panic!("expected HTTP 503, got {other}"),
            Ok(_) => panic!("a second connection was accepted"),
        }
    }
    let warning = until_logged(&mut logs, "refused connections").await;
    assert_eq!(warning["level"], "WARN", "{warning}");
    assert_eq!(warning["fields"]["refused"], 1, "{warning}");
    let message = warning["fields"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("limits.max_connections"), "{message}");

    // The other refusals came within the warning period: no second warning
    // up to the end of the log.
    drop(first);
    let pid = child.id().expect("pid").to_string();
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("run kill");
    assert!(status.success());
    let mut warnings = 0;
    while let Some(line) = logs.next_line().await.expect("read stderr") {
        if line.contains("refused connections") {
            warnings += 1;
        }
    }
    assert_eq!(warnings, 0, "one warning per period");
    child.wait().await.expect("exit");
}
