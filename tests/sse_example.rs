//! `examples/sse.sh` against a real hub: it connects, prints the
//! `connected` frame, then a published event.

mod common;

use std::process::Stdio;

use chanhub::auth::ClientType;
use common::{TestHub, WAIT};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

#[tokio::test]
async fn sse_script_prints_events() {
    if std::process::Command::new("curl")
        .arg("--version")
        .output()
        .is_err()
    {
        println!("SKIPPED: curl is not installed");
        return;
    }
    let hub = TestHub::start().await;
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/sse.sh");
    let mut child = Command::new("bash")
        .arg(&script)
        .args(["demo:*", "other:**"])
        .env("HUB", hub.http_url(""))
        .env("TOKEN", hub.token(ClientType::Browser, "sse-example"))
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("run examples/sse.sh");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut next_data = async || loop {
        let line = tokio::time::timeout(WAIT, lines.next_line())
            .await
            .expect("sse.sh printed nothing in time")
            .expect("read")
            .expect("sse.sh ended early");
        if let Some(data) = line.strip_prefix("data: ") {
            return serde_json::from_str::<serde_json::Value>(data).expect("json");
        }
    };
    let connected = next_data().await;
    assert_eq!(connected["type"], "connected");
    // The stream is subscribed once `connected` is out.
    hub.hub
        .publish(hub.hub.channel("demo:1").expect("name"), json!({"n": 1}));
    let event = next_data().await;
    assert_eq!(event["channel"], "demo:1");
    assert_eq!(event["data"], json!({"n": 1}));
    child.kill().await.expect("stop curl");
}
