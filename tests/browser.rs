//! The dashboard and chanhub.js in a real browser: headless Chromium driven
//! by scripts in `tests/browser/` (playwright-core). Each test owns the hub
//! and the Rust-side clients and answers its script's requests over stdio
//! (see the scripts' headers).
//!
//! `dashboard.mjs` signs in, watches the connection count change, sees
//! published events in the tail, submits a task that a Rust worker
//! completes, keeps a screenshot at `target/dashboard.png`, checks token
//! refresh, opens `examples/browser.html` from disk and sees an event
//! arrive, a call answered and a task's progress and result (served and
//! run by a Node client of the package), and checks that chanhub.js
//! reconnects and resubscribes after the hub restarts.
//!
//! `calls.mjs` makes calls between two pages (one serves with a worker
//! token, one calls with a browser token): a result, a thrown error as
//! `call_failed`, `no_server`, a timeout and an abort that the server's
//! signal sees, the `createCaller` proxy, `examples/calls.html` from disk,
//! and a call out when the hub restarts failing once while the serve comes
//! back by itself.
//!
//! `react.mjs` renders a React 18 page (StrictMode) with the hooks of
//! `chanhub/react`: the connection state, live events, the latest event
//! per channel, a task's progress and result, a call, a hub restart, and an
//! unmount after which the hub delivers to nobody.
//!
//! `types/calls.ts` is compiled with `tsc` against `chanhub.d.ts`: the
//! typed `createCaller<API>` accepts the API's params and refuses others;
//! `types/spawn.ts` against `node.d.ts` (`spawnHub`, `chanhub/node`);
//! `types/tasks.ts` the task API (`hub.worker`, `runTask`, `watchTask`,
//! the `WebSocket` option); `types/wire.ts` the generated wire types
//! (`wire.d.ts`) as the public API uses them (`onMessage`, `request`,
//! `TaskRecord`, error codes); `types/react.tsx` the hooks in TSX.
//!
//! Skipped, with the reason printed, only when `node` or `chromium` is not
//! installed (`.ci/run` installs both).

mod common;

use std::ffi::OsStr;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use chanhub::{Config, Hub};
use common::{SECRET, WsClient, now_secs, token_with};
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStderr, ChildStdin, ChildStdout, Command};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;

const ADMIN_KEY: &str = "browser-test-admin-key";

/// Upper bound on a whole browser run (launch, its scenarios, a restart).
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

fn script_dir() -> PathBuf {
    common::node::script_dir()
}

/// Node (and, for `browser`, Chromium) with the npm packages installed, or
/// `None` when `CHANHUB_SKIP_BROWSER` asks to skip; fails saying what to
/// install when something is missing.
fn prerequisites(browser: bool) -> Option<Option<PathBuf>> {
    if common::skip_requested("CHANHUB_SKIP_BROWSER") {
        return None;
    }
    let chromium = browser.then(|| {
        chromium().unwrap_or_else(|| {
            panic!(
                "chromium not found: install it with `apt-get install -y chromium` \
                 (bash .ci/test does), or set CHANHUB_SKIP_BROWSER=1 to skip the browser tests"
            )
        })
    });
    assert!(
        has_node(),
        "node not found: install Node.js (bash .ci/test does), or set \
         CHANHUB_SKIP_BROWSER=1 to skip the browser tests"
    );
    common::node::ensure_test_packages();
    Some(chromium)
}

/// A scenario script in node, talking with the test over stdio: it asks
/// (`ASK <n> <what>`, answered with `ANS <n> <payload>`), reports each
/// scenario (`PASS <name>`) and the end (`DONE`).
struct Script {
    child: Child,
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
    stderr: ChildStderr,
    passed: Vec<String>,
    done: bool,
}

impl Script {
    fn start(name: &str, args: &[&OsStr], chromium: &Path) -> Script {
        let dir = script_dir();
        let mut child = Command::new("node")
            .arg(dir.join(name))
            .args(args)
            .env("CHROMIUM", chromium)
            .current_dir(&dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("start node");
        Script {
            stdin: child.stdin.take().expect("stdin"),
            lines: BufReader::new(child.stdout.take().expect("stdout")).lines(),
            stderr: child.stderr.take().expect("stderr"),
            child,
            passed: Vec::new(),
            done: false,
        }
    }

    /// The script's next request as `(n, what)`, noting the PASS and DONE
    /// lines before it; `None` when its output ends.
    async fn next_request(&mut self) -> Option<(String, String)> {
        while let Some(line) = self.lines.next_line().await.expect("read node output") {
            println!("node: {line}");
            if let Some(name) = line.strip_prefix("PASS ") {
                self.passed.push(name.to_string());
            } else if line == "DONE" {
                self.done = true;
            } else if let Some(request) = line.strip_prefix("ASK ") {
                let (n, what) = request.split_once(' ').expect("ASK <n> <what>");
                return Some((n.to_string(), what.to_string()));
            }
        }
        None
    }

    async fn answer(&mut self, n: &str, payload: &str) {
        self.stdin
            .write_all(format!("ANS {n} {payload}\n").as_bytes())
            .await
            .expect("answer node");
    }

    /// Waits for the script to exit and checks that it succeeded with
    /// exactly `expected` scenarios passed, in order.
    async fn finish(mut self, expected: &[&str]) {
        let status = self.child.wait().await.expect("node exit");
        let mut errors = String::new();
        self.stderr
            .read_to_string(&mut errors)
            .await
            .expect("stderr");
        assert!(
            status.success() && self.done,
            "browser run failed ({status}); passed {:?}\n{errors}",
            self.passed
        );
        assert_eq!(self.passed, expected);
    }
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
    let Some(chromium) = prerequisites(true) else {
        return;
    };
    let chromium = chromium.expect("chromium");

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

    let mut script = Script::start(
        "dashboard.mjs",
        &[
            hub_url.as_ref(),
            ADMIN_KEY.as_ref(),
            hub_token.as_ref(),
            browser_token.as_ref(),
            screenshot.as_ref(),
            example_page.as_ref(),
        ],
        &chromium,
    );

    // Clients the scenarios asked for; kept open until the end.
    let mut clients = Vec::new();
    let mut workers = Vec::new();
    let run = async {
        while let Some((n, what)) = script.next_request().await {
            let answer = match what.as_str() {
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
                "worker-token" => {
                    token_with(json!({"client_type": "worker", "sub": "example-backend"}))
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
            script.answer(&n, &answer).await;
        }
    };
    tokio::time::timeout(RUN_LIMIT, run)
        .await
        .expect("the browser run finished in time");
    script
        .finish(&[
            "sign-in",
            "connection-count",
            "event-tail",
            "task-completes",
            "calls-panel",
            "screenshot",
            "token-refresh",
            "example-page",
            "reconnect-resubscribe",
        ])
        .await;
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

/// Calls between two chanhub.js pages (`tests/browser/calls.mjs`): one
/// serves with a worker token, the other calls with a browser token.
#[tokio::test]
async fn calls_between_chanhub_js_pages_in_chromium() {
    let Some(chromium) = prerequisites(true) else {
        return;
    };
    let chromium = chromium.expect("chromium");

    let data = tempfile::tempdir().expect("tempdir");
    let mut hub = Some(start_hub("127.0.0.1:0".parse().expect("addr"), data.path()).await);
    let addr = hub.as_ref().expect("hub").addr;
    let hub_url = format!("http://{addr}");
    // Browsers may not serve (permission `serve`); workers may.
    let server_token = token_with(json!({"client_type": "worker", "sub": "calls-server"}));
    let caller_token = token_with(json!({"client_type": "browser", "sub": "calls-caller"}));
    let calls_page = manifest_dir().join("examples/calls.html");
    let mut demo_worker: Option<tokio::process::Child> = None;

    let mut script = Script::start(
        "calls.mjs",
        &[
            hub_url.as_ref(),
            server_token.as_ref(),
            caller_token.as_ref(),
            calls_page.as_ref(),
        ],
        &chromium,
    );
    let run = async {
        while let Some((n, what)) = script.next_request().await {
            match what.as_str() {
                "restart" => {
                    hub.take().expect("hub running").shutdown().await;
                    hub = Some(start_hub(addr, data.path()).await);
                }
                "demo-worker" => {
                    let token = token_with(json!({"client_type": "worker", "sub": "demo"}));
                    demo_worker = Some(start_demo_worker(&format!("ws://{addr}/ws"), &token).await);
                }
                "stop-demo-worker" => {
                    let mut worker = demo_worker.take().expect("demo worker running");
                    worker.kill().await.expect("stop the demo worker");
                }
                other => panic!("unknown request {other:?}"),
            }
            script.answer(&n, "").await;
        }
    };
    tokio::time::timeout(RUN_LIMIT, run)
        .await
        .expect("the browser run finished in time");
    script
        .finish(&[
            "call-result",
            "call-failed",
            "no-server",
            "timeout",
            "abort",
            "caller-proxy",
            "example-page",
            "serve-restored",
        ])
        .await;
    if let Some(hub) = hub {
        hub.shutdown().await;
    }
}

/// The React hooks of `chanhub/react` on a page (`tests/browser/react.mjs`):
/// a UI client with a browser token renders with them; a worker and a hub
/// client on the same page serve, run tasks and publish.
#[tokio::test]
async fn react_hooks_in_chromium() {
    let Some(chromium) = prerequisites(true) else {
        return;
    };
    let chromium = chromium.expect("chromium");

    let data = tempfile::tempdir().expect("tempdir");
    let mut hub = Some(start_hub("127.0.0.1:0".parse().expect("addr"), data.path()).await);
    let addr = hub.as_ref().expect("hub").addr;
    let hub_url = format!("http://{addr}");
    let ui_token = token_with(json!({"client_type": "browser", "sub": "react-ui"}));
    let worker_token = token_with(json!({"client_type": "worker", "sub": "react-worker"}));
    let hub_token = token_with(json!({"client_type": "hub", "sub": "react-publisher"}));

    let mut script = Script::start(
        "react.mjs",
        &[
            hub_url.as_ref(),
            ui_token.as_ref(),
            worker_token.as_ref(),
            hub_token.as_ref(),
        ],
        &chromium,
    );
    let run = async {
        while let Some((n, what)) = script.next_request().await {
            match what.as_str() {
                "restart" => {
                    hub.take().expect("hub running").shutdown().await;
                    hub = Some(start_hub(addr, data.path()).await);
                }
                other => panic!("unknown request {other:?}"),
            }
            script.answer(&n, "").await;
        }
    };
    tokio::time::timeout(RUN_LIMIT, run)
        .await
        .expect("the browser run finished in time");
    script
        .finish(&[
            "hub-state",
            "subscription-live",
            "channel-state",
            "task-progress",
            "call",
            "reconnect",
            "unmount-unsubscribes",
        ])
        .await;
    if let Some(hub) = hub {
        hub.shutdown().await;
    }
}

/// Runs `examples/demo_worker` against `url` and returns once it says it
/// serves `demo.*`.
async fn start_demo_worker(url: &str, token: &str) -> tokio::process::Child {
    use tokio::io::AsyncBufReadExt;
    let mut child = tokio::process::Command::new(common::example("demo_worker"))
        .args(["--url", url, "--token", token])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start examples/demo_worker");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let line = tokio::time::timeout(common::WAIT, lines.next_line())
        .await
        .expect("demo_worker started in time")
        .expect("read demo_worker")
        .expect("demo_worker printed a line");
    assert_eq!(line, "serving demo.*");
    child
}

/// `chanhub.d.ts` compiled with tsc against `tests/browser/types/calls.ts`
/// (`createCaller<API>` takes the API's params and results) and
/// `node.d.ts` against `types/spawn.ts`; each `@ts-expect-error`
/// there (a wrong param type, a missing method, …) must be an error.
#[test]
fn chanhub_d_ts_types_check_with_tsc() {
    if prerequisites(false).is_none() {
        return;
    }
    let dir = script_dir();
    let output = std::process::Command::new("node")
        .arg(dir.join("node_modules/typescript/bin/tsc"))
        .args(["-p", "types"])
        .current_dir(&dir)
        .output()
        .expect("run tsc");
    assert!(
        output.status.success(),
        "tsc -p tests/browser/types failed:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
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
