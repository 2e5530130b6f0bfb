//! The hub under test as a child process: `chanhub serve --json-logs` on
//! `127.0.0.1:0` with a temporary data dir and a random HS256 secret, its
//! address read from the "chanhub listening" log line, its RSS from
//! `/proc/<pid>/status`, every log line counted by level.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use chanhub::auth::{ClientType, TokenClaims, mint};
use jsonwebtoken::{Algorithm, EncodingKey};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::oneshot;

use crate::ledger::lock;

/// User + system CPU time of a process so far, in seconds (`/proc/<pid>/stat`,
/// 100 ticks per second).
pub(crate) fn cpu_secs(pid: Option<u32>) -> f64 {
    let path = match pid {
        Some(pid) => format!("/proc/{pid}/stat"),
        None => "/proc/self/stat".to_string(),
    };
    let Ok(stat) = std::fs::read_to_string(path) else {
        return 0.0;
    };
    // The command name may contain spaces; fields resume after its ')'.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let tick = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    (tick(11) + tick(12)) as f64 / 100.0
}

/// Log lines of the hub, by level, with the messages of warnings and errors.
#[derive(Default)]
pub(crate) struct Logs {
    /// Lines per level (`ERROR`, `WARN`, `INFO`, …; `OTHER` for non-JSON lines).
    pub(crate) by_level: BTreeMap<String, u64>,
    /// WARN and ERROR lines per (level, message).
    pub(crate) messages: BTreeMap<(String, String), u64>,
    /// The first error lines, whole.
    pub(crate) first_errors: Vec<String>,
}

pub(crate) struct HubProcess {
    child: Child,
    pub(crate) pid: u32,
    pub(crate) addr: SocketAddr,
    secret: String,
    pub(crate) logs: Arc<Mutex<Logs>>,
    _data: tempfile::TempDir,
}

/// The hub binary: `explicit`, else the one `cargo bench` built beside this
/// bench (`CARGO_BIN_EXE_chanhub`, optimized with the bench profile), else a
/// fresh `cargo build --release --bin chanhub` (when this binary was moved).
pub(crate) fn hub_binary(explicit: Option<PathBuf>) -> Result<PathBuf> {
    if let Some(path) = explicit {
        return Ok(path);
    }
    let built = PathBuf::from(env!("CARGO_BIN_EXE_chanhub"));
    if built.exists() {
        return Ok(built);
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    eprintln!("soak: cargo build --release --bin chanhub");
    let status = std::process::Command::new(cargo)
        .args(["build", "--release", "--bin", "chanhub"])
        .current_dir(root)
        .status()
        .context("running cargo build")?;
    if !status.success() {
        bail!("cargo build --release --bin chanhub failed");
    }
    Ok(target.join("release").join("chanhub"))
}

impl HubProcess {
    /// Starts the hub with `env` on top of the soak's settings and waits for
    /// its listening address.
    pub(crate) async fn start(binary: &Path, env: &[(String, String)]) -> Result<HubProcess> {
        let data = tempfile::tempdir().context("temp data dir")?;
        let secret: String = {
            use rand::Rng;
            let mut rng = rand::rng();
            (0..40)
                .map(|_| {
                    char::from(b"abcdefghijklmnopqrstuvwxyz0123456789"[rng.random_range(0..36)])
                })
                .collect()
        };
        let mut cmd = Command::new(binary);
        cmd.args(["serve", "--listen", "127.0.0.1:0", "--json-logs"])
            .env("CHANHUB_AUTH__SECRET", &secret)
            .env("CHANHUB_DATA_DIR", data.path())
            .env("CHANHUB_TASKS__DURABLE", "true")
            .env("CHANHUB_LIMITS__MAX_CONNECTIONS", "20000")
            .env("CHANHUB_LOG__LEVEL", "info")
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let pid = child.id().context("the hub has no pid")?;
        let logs = Arc::new(Mutex::new(Logs::default()));
        let (addr_tx, addr_rx) = oneshot::channel();
        let stderr = child.stderr.take().context("hub stderr")?;
        let stdout = child.stdout.take().context("hub stdout")?;
        tokio::spawn(read_logs(
            BufReader::new(stderr),
            Arc::clone(&logs),
            Some(addr_tx),
        ));
        tokio::spawn(read_logs(BufReader::new(stdout), Arc::clone(&logs), None));
        let addr = tokio::time::timeout(Duration::from_secs(20), addr_rx)
            .await
            .context("the hub did not log its address within 20 s")?
            .context("the hub exited before listening")?;
        Ok(HubProcess {
            child,
            pid,
            addr,
            secret,
            logs,
            _data: data,
        })
    }

    /// A token for `sub` of `client_type`, valid for two hours.
    pub(crate) fn token(&self, client_type: ClientType, sub: &str) -> String {
        mint_token(&self.secret, client_type, sub)
    }

    /// A token minter that does not borrow the process handle.
    pub(crate) fn minter(&self) -> impl Fn(ClientType, &str) -> String + Send + Sync + 'static {
        let secret = self.secret.clone();
        move |ty, sub| mint_token(&secret, ty, sub)
    }

    /// The hub's data dir.
    pub(crate) fn data_dir(&self) -> &Path {
        self._data.path()
    }

    /// `VmRSS` in KiB.
    pub(crate) fn rss_kib(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid)).ok()?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
    }

    /// GET `path` with a hub token; the body as text.
    pub(crate) async fn get(&self, path: &str) -> Result<String> {
        let token = self.token(ClientType::Hub, "soak-inspector");
        let response = reqwest::Client::new()
            .get(format!("http://{}{}", self.addr, path))
            .bearer_auth(token)
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .with_context(|| format!("GET {path}"))?;
        let status = response.status();
        let body = response.text().await?;
        if !status.is_success() {
            bail!("GET {path}: {status} {body}");
        }
        Ok(body)
    }

    /// SIGTERM, then waits (at most `grace`) for the exit; kills it after.
    /// Returns the exit code (None: killed or by a signal).
    pub(crate) async fn stop(mut self, grace: Duration) -> Option<i32> {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .status();
        match tokio::time::timeout(grace, self.child.wait()).await {
            Ok(Ok(status)) => status.code(),
            _ => {
                let _ = self.child.kill().await;
                None
            }
        }
    }
}

async fn read_logs<R: tokio::io::AsyncRead + Unpin>(
    reader: BufReader<R>,
    logs: Arc<Mutex<Logs>>,
    mut addr_tx: Option<oneshot::Sender<SocketAddr>>,
) {
    let mut lines = reader.lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let parsed: Option<serde_json::Value> = serde_json::from_str(&line).ok();
        let level = parsed
            .as_ref()
            .and_then(|v| v["level"].as_str())
            .unwrap_or("OTHER")
            .to_string();
        let message = parsed
            .as_ref()
            .and_then(|v| v["fields"]["message"].as_str())
            .unwrap_or(&line)
            .to_string();
        if message == "chanhub listening" {
            let addr = parsed
                .as_ref()
                .and_then(|v| v["fields"]["addr"].as_str())
                .and_then(|a| a.parse().ok());
            if let (Some(addr), Some(tx)) = (addr, addr_tx.take()) {
                let _ = tx.send(addr);
            }
        }
        let mut logs = lock(&logs);
        *logs.by_level.entry(level.clone()).or_default() += 1;
        if level == "ERROR" || level == "WARN" || level == "OTHER" {
            *logs.messages.entry((level.clone(), message)).or_default() += 1;
        }
        if level == "ERROR" && logs.first_errors.len() < 10 {
            logs.first_errors.push(line);
        }
    }
}

/// An HS256 token for `sub` of `client_type`, valid for two hours.
fn mint_token(secret: &str, client_type: ClientType, sub: &str) -> String {
    let now = chanhub::protocol::now_ms() / 1000;
    let claims = TokenClaims {
        sub: sub.to_string(),
        exp: now + 7200,
        iat: Some(now),
        client_type,
        channels: None,
        publish: None,
        capabilities: None,
        max_slots: None,
        call: None,
        serve: None,
    };
    let key = EncodingKey::from_secret(secret.as_bytes());
    mint(&claims, Algorithm::HS256, &key).expect("HS256 minting does not fail")
}
