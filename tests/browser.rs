//! The dashboard and chanhub.js in a real browser: headless Chromium driven
//! by `tests/browser/dashboard.mjs` (playwright-core). This test owns the
//! hub and the Rust-side clients and answers the script's requests over
//! stdio (see the script's header). The script signs in, watches the
//! connection count change, sees published events in the tail, submits a
//! task that a Rust worker completes, keeps a screenshot at
//! `target/dashboard.png`, checks token refresh, opens
//! `examples/browser.html` from disk and sees an event arrive, and checks
//! that chanhub.js reconnects and resubscribes after the hub restarts.
//!
//! Skipped, with the reason printed, only when `node` or `chromium` is not
//! installed (`.ci/run` installs both).

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use chanhub::{Config, Hub};
use common::{SECRET, WsClient, now_secs, token_with};
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::Command;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;

const ADMIN_KEY: &str = "browser-test-admin-key";

/// Upper bound on the whole browser run (launch, six scenarios, restart).
const RUN_LIMIT: Duration = Duration::from_secs(180);

fn manifest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The Chromium binary, if installed.
fn chromium() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("CHROMIUM") {
        return Some(PathBuf::from(path));
    }
    ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

fn has_node() -> bool {
    std::process::Command::new("node")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Installs playwright-core from the lock file when it is missing.
fn ensure_playwright(dir: &Path) {
    if dir
        .join("node_modules/playwright-core/package.json")
        .exists()
    {
        return;
    }
    let status = std::process::Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund"])
        .current_dir(dir)
        .status()
        .expect("run npm ci in tests/browser");
    assert!(status.success(), "npm ci in tests/browser failed");
}

/// A hub that can be stopped and started again on the same address.
struct RunningHub {
    addr: SocketAddr,
    stop: oneshot::Sender<()>,
    server: JoinHandle<Result<(), chanhub::ServerError>>,
}

async fn start_hub(addr: SocketAddr, data: &Path) -> RunningHub {
    let mut config = Config::default();
    config.auth.secret = Some(SECRET.into());
    config.auth.admin_keys = vec![ADMIN_KEY.into()];
    config.data_dir = Some(data.to_path_buf());
    config.log.level = "warn".into();
    config.shutdown.grace_period = Duration::from_secs(5);
    // In memory: the restarted hub must not wait for the old one's store.
    config.tasks.durable = false;
    // A federation peer that is never dialed, so the dashboard lists a link.
    config.federation = Config::from_toml("[[federation.peers]]\nname = \"east\"\n")
        .expect("federation config")
        .federation;
    config.validate().expect("valid config");
    let hub = Hub::new(config).expect("hub");
    let listener = tokio::net::TcpListener::bind(addr).await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(chanhub::serve(listener, hub, async {
        let _ = stopped.await;
    }));
    RunningHub { addr, stop, server }
}

impl RunningHub {
    async fn shutdown(self) {
        let _ = self.stop.send(());
        tokio::time::timeout(Duration::from_secs(15), self.server)
            .await
            .expect("hub stops within its grace period")
            .expect("server task")
            .expect("server result");
    }
}

/// A worker for `demo:*` that completes every task with its payload.
fn spawn_worker(url: String) -> JoinHandle<()> {
    tokio::spawn(async move {
        let token = token_with(json!({"client_type": "worker", "sub": "browser-test-worker"}));
        let mut ws = WsClient::connect(&url).await;
        ws.send(json!({"type": "auth", "token": token})).await;
        ws.recv_type("auth:success").await;
        ws.send(json!({"type": "register", "id": 1, "capabilities": ["demo:*"], "slots": 2}))
            .await;
        // Until the hub goes away (restart): answer assignments.
        while let Some(Ok(msg)) = ws.ws.next().await {
            let Message::Text(text) = msg else { continue };
            let msg: Value = serde_json::from_str(&text).expect("json");
            if msg["type"] == "task:assign" {
                let done = json!({
                    "type": "task:complete",
                    "taskId": msg["task"]["id"],
                    "result": {"echo": msg["task"]["payload"]},
                });
                if ws.ws.send(Message::text(done.to_string())).await.is_err() {
                    break;
                }
            }
        }
    })
}

#[tokio::test]
async fn dashboard_and_chanhub_js_in_chromium() {
    if common::skip_requested("CHANHUB_SKIP_BROWSER") {
        return;
    }
    let chromium = chromium().unwrap_or_else(|| {
        panic!(
            "chromium not found: install it with `apt-get install -y chromium` \
             (bash .ci/test does), or set CHANHUB_SKIP_BROWSER=1 to skip the browser tests"
        )
    });
    assert!(
        has_node(),
        "node not found: install Node.js (bash .ci/test does), or set \
         CHANHUB_SKIP_BROWSER=1 to skip the browser tests"
    );
    let script_dir = manifest_dir().join("tests/browser");
    ensure_playwright(&script_dir);

    let data = tempfile::tempdir().expect("tempdir");
    let mut hub = Some(start_hub("127.0.0.1:0".parse().expect("addr"), data.path()).await);
    let addr = hub.as_ref().expect("hub").addr;
    let hub_url = format!("http://{addr}");
    let ws_url = format!("ws://{addr}/ws");
    let hub_token = token_with(json!({"client_type": "hub", "sub": "browser-test"}));
    let browser_token = token_with(json!({"client_type": "browser", "sub": "example-page"}));
    let example_page = manifest_dir().join("examples/browser.html");
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| manifest_dir().join("target"));
    std::fs::create_dir_all(&target).expect("target dir");
    let screenshot = target.join("dashboard.png");
    let _ = std::fs::remove_file(&screenshot);

    let mut child = Command::new("node")
        .arg(script_dir.join("dashboard.mjs"))
        .args([&hub_url, ADMIN_KEY, &hub_token, &browser_token])
        .arg(&screenshot)
        .arg(&example_page)
        .env("CHROMIUM", &chromium)
        .current_dir(&script_dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start node");
    let mut stdin = child.stdin.take().expect("stdin");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut stderr = child.stderr.take().expect("stderr");

    // Clients the scenarios asked for; kept open until the end.
    let mut clients = Vec::new();
    let mut workers = Vec::new();
    let mut passed = Vec::new();
    let mut done = false;
    let run = async {
        while let Some(line) = lines.next_line().await.expect("read node output") {
            println!("node: {line}");
            if let Some(name) = line.strip_prefix("PASS ") {
                passed.push(name.to_string());
                continue;
            }
            if line == "DONE" {
                done = true;
                continue;
            }
            let Some(request) = line.strip_prefix("ASK ") else {
                continue;
            };
            let (n, what) = request.split_once(' ').expect("ASK <n> <what>");
            let answer = match what {
                "browser-client" => {
                    let token = token_with(json!({"client_type": "browser", "sub": "watcher"}));
                    let (client, _) = connect(&ws_url, &token).await;
                    clients.push(client);
                    String::new()
                }
                "publish" => {
                    publish(&hub_url, "demo:from-rust", json!({"via": "over http"})).await;
                    String::new()
                }
                "publish-example" => {
                    publish(
                        &hub_url,
                        "demo:example",
                        json!({"for": "examples/browser.html"}),
                    )
                    .await;
                    String::new()
                }
                "worker" => {
                    workers.push(spawn_worker(ws_url.clone()));
                    String::new()
                }
                "token" => token_with(json!({
                    "client_type": "hub",
                    "sub": "refresher",
                    "exp": now_secs() + 4,
                })),
                "restart" => {
                    hub.take().expect("hub running").shutdown().await;
                    hub = Some(start_hub(addr, data.path()).await);
                    String::new()
                }
                other => panic!("unknown request {other:?}"),
            };
            stdin
                .write_all(format!("ANS {n} {answer}\n").as_bytes())
                .await
                .expect("answer node");
        }
    };
    tokio::time::timeout(RUN_LIMIT, run)
        .await
        .expect("the browser run finished in time");
    let status = child.wait().await.expect("node exit");
    let mut errors = String::new();
    tokio::io::AsyncReadExt::read_to_string(&mut stderr, &mut errors)
        .await
        .expect("stderr");
    assert!(
        status.success() && done,
        "browser run failed ({status}); passed {passed:?}\n{errors}"
    );
    assert_eq!(
        passed,
        [
            "sign-in",
            "connection-count",
            "event-tail",
            "task-completes",
            "calls-panel",
            "screenshot",
            "token-refresh",
            "example-page",
            "reconnect-resubscribe"
        ]
    );
    let png = std::fs::read(&screenshot).expect("screenshot written");
    assert!(png.starts_with(b"\x89PNG"), "screenshot is a PNG");
    println!("screenshot: {}", screenshot.display());
    drop(clients);
    for worker in workers {
        worker.abort();
    }
    if let Some(hub) = hub {
        hub.shutdown().await;
    }
}

async fn publish(hub_url: &str, channel: &str, data: Value) {
    let response = reqwest::Client::new()
        .post(format!("{hub_url}/api/publish"))
        .bearer_auth(ADMIN_KEY)
        .json(&json!({"channel": channel, "data": data}))
        .send()
        .await
        .expect("publish");
    assert!(response.status().is_success(), "{response:?}");
}

async fn connect(url: &str, token: &str) -> (WsClient, Value) {
    let mut client = WsClient::connect(url).await;
    client.send(json!({"type": "auth", "token": token})).await;
    let reply = client.recv().await;
    assert_eq!(reply["type"], "auth:success", "{reply}");
    (client, reply)
}
