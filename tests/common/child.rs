//! The `chanhub` binary as a child process, for tests that kill it,
//! signal it or restart it on the same data directory.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use chanhub::auth::ClientType;
use serde_json::{Value, json};

use super::{SECRET, WAIT, WsClient, bearer_client, token_with};

/// The `chanhub` binary serving on a free loopback port; killed on drop.
pub struct ChildHub {
    child: Child,
    pub addr: SocketAddr,
}

impl ChildHub {
    /// Starts `chanhub serve` on `data` and waits until `/healthz` answers.
    pub async fn start(data: &Path) -> ChildHub {
        ChildHub::start_at(data, free_port()).await
    }

    /// Like [`ChildHub::start`], on `addr` (a restart on the same address).
    pub async fn start_at(data: &Path, addr: SocketAddr) -> ChildHub {
        let mut hub = ChildHub::spawn(data, addr, |_| {});
        hub.wait_healthy().await;
        hub
    }

    /// `chanhub --config <config> serve` on `addr` and `data`, its log
    /// (stderr) appended to `log`; returns once `/readyz` answers 200 (a
    /// cluster node has reached Redis).
    pub async fn start_configured(
        data: &Path,
        addr: SocketAddr,
        config: &Path,
        log: &Path,
    ) -> ChildHub {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .expect("open the hub's log file");
        let mut hub = ChildHub::spawn(data, addr, |command| {
            command.arg("--config").arg(config).stderr(log);
        });
        hub.wait_status("/readyz").await;
        hub
    }

    /// Starts the binary; `tweak` adds to the command (arguments before
    /// `serve`, redirections).
    fn spawn(data: &Path, addr: SocketAddr, tweak: impl FnOnce(&mut Command)) -> ChildHub {
        let mut command = Command::new(env!("CARGO_BIN_EXE_chanhub"));
        tweak(&mut command);
        let child = command
            .args(["serve", "--listen", &addr.to_string()])
            .env("CHANHUB_DATA_DIR", data)
            .env("CHANHUB_AUTH__SECRET", SECRET)
            .env("CHANHUB_LOG__LEVEL", "warn")
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .expect("start the chanhub binary");
        ChildHub { child, addr }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The exit status, if the process has exited (it has crashed, unless
    /// the test stopped it).
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().expect("child status")
    }

    /// A memory figure of `/proc/<pid>/status` in KiB: `VmRSS` (resident
    /// memory), `RssAnon` (its anonymous part: the heap and stacks, without
    /// the pages of the binary and libraries), ….
    pub fn status_kib(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .expect("read /proc/<pid>/status");
        status
            .lines()
            .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("{field} in /proc/<pid>/status"))
    }

    /// Polls `/healthz` until it answers 200 (bounded by [`WAIT`]).
    pub async fn wait_healthy(&mut self) {
        self.wait_status("/healthz").await;
    }

    /// Polls `path` until it answers 200 (bounded by [`WAIT`]).
    pub async fn wait_status(&mut self, path: &str) {
        let http = reqwest::Client::new();
        let url = format!("http://{}{path}", self.addr);
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = self.child.try_wait().expect("child status") {
                panic!("the hub exited before {path} answered 200: {status}");
            }
            if let Ok(response) = http.get(&url).send().await {
                if response.status().is_success() {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "{path} did not answer 200 in {WAIT:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGKILL: no shutdown, no flush; only what is on disk survives.
    pub fn kill(mut self) {
        self.child.kill().expect("SIGKILL the hub");
        self.child.wait().expect("reap the hub");
    }

    pub async fn connect(&self, ty: ClientType, sub: &str) -> WsClient {
        let mut client = WsClient::connect(&format!("ws://{}/ws", self.addr)).await;
        let token = token_with(json!({ "client_type": ty.as_str(), "sub": sub }));
        client.send(json!({"type": "auth", "token": token})).await;
        let reply = client.recv().await;
        assert_eq!(reply["type"], "auth:success", "auth reply: {reply}");
        client
    }

    /// `GET /api/tasks?state=<state>` with a hub token.
    pub async fn tasks(&self, state: &str) -> Vec<Value> {
        list_tasks(&format!("http://{}", self.addr), state).await
    }
}

impl ChildHub {
    /// SIGTERM, then waits (bounded by [`WAIT`]) for the process to exit;
    /// returns its exit status.
    pub async fn terminate(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        let sent = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("run kill");
        assert!(sent.success(), "kill -TERM {pid} failed");
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = self.child.try_wait().expect("child status") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "the hub did not exit after SIGTERM"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for ChildHub {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A port that was free a moment ago: bind to port 0, read it, let go.
pub fn free_port() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr")
}

/// `GET <base>/api/tasks?state=<state>` with a hub token.
pub async fn list_tasks(base: &str, state: &str) -> Vec<Value> {
    let http = bearer_client(&token_with(json!({"client_type": "hub", "sub": "checker"})));
    let response = http
        .get(format!("{base}/api/tasks?state={state}"))
        .send()
        .await
        .expect("GET /api/tasks");
    assert_eq!(response.status().as_u16(), 200);
    let body: Value = response.json().await.expect("JSON");
    body.as_array().expect("a list").clone()
}
