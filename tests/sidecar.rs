//! `chanhub serve` as a desktop app's child process (a sidecar), with the
//! real binary and real processes: the ready line and file, startup
//! failures as one JSON line with an exit status per kind, stopping with
//! the parent (SIGKILL too) or when stdin closes, a bounded stop, and
//! `--ephemeral`.

#![cfg(unix)]

mod common;

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use chanhub::auth::ClientType;
use common::{Closed, SECRET, WAIT, authenticated, token_with};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};

/// `chanhub serve` with `args`, stdout piped, the tests' secret, logs quiet.
fn hub_command(args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_chanhub"));
    cmd.arg("serve")
        .args(args)
        .env("CHANHUB_AUTH__SECRET", SECRET)
        .env("CHANHUB_LOG__LEVEL", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true);
    cmd
}

/// The next stdout line, as JSON.
async fn json_line(lines: &mut Lines<BufReader<ChildStdout>>) -> Value {
    let line = tokio::time::timeout(WAIT, lines.next_line())
        .await
        .expect("a line in time")
        .expect("read stdout")
        .expect("a line before stdout ended");
    serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"))
}

/// Starts a hub with `args` and waits for its ready line.
async fn ready_hub(args: &[&str]) -> (Child, Lines<BufReader<ChildStdout>>, Value) {
    let mut child = hub_command(args).spawn().expect("start chanhub");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let ready = json_line(&mut lines).await;
    assert_eq!(ready["event"], "ready", "{ready}");
    (child, lines, ready)
}

/// Sends `signal` (e.g. `TERM`) to `pid`.
fn kill(signal: &str, pid: u32) {
    let status = std::process::Command::new("kill")
        .args([format!("-{signal}"), pid.to_string()])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -{signal} {pid}");
}

/// Whether process `pid` is gone (or a zombie nobody reaped yet).
fn gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/status")) {
        Err(_) => true,
        Ok(status) => status
            .lines()
            .any(|l| l.starts_with("State:") && l.contains('Z')),
    }
}

/// Waits until process `pid` is gone; returns how long that took.
async fn until_gone(pid: u32) -> Duration {
    let started = Instant::now();
    while !gone(pid) {
        assert!(started.elapsed() < WAIT, "process {pid} still running");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    started.elapsed()
}

async fn exit_code(child: &mut Child) -> Option<i32> {
    tokio::time::timeout(WAIT, child.wait())
        .await
        .expect("the hub exited in time")
        .expect("wait")
        .code()
}

#[tokio::test]
async fn the_ready_line_comes_once_with_a_working_url_and_the_file_matches() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("ready.json");
    let file_arg = file.to_str().expect("utf-8 path");
    let args = [
        "--listen",
        "127.0.0.1:0",
        "--ready-json",
        "--ready-file",
        file_arg,
        "--ephemeral",
    ];
    let (mut child, mut lines, ready) = ready_hub(&args).await;
    // A second hub on port 0 beside it.
    let (mut other, _, other_ready) =
        ready_hub(&["--listen", "127.0.0.1:0", "--ready-json", "--ephemeral"]).await;
    assert_ne!(ready["listen"], other_ready["listen"]);
    assert_ne!(ready["dataDir"], other_ready["dataDir"]);

    assert_eq!(ready["pid"], child.id().expect("pid"));
    let ws = ready["ws"].as_str().expect("ws url");
    assert_eq!(ws, format!("ws://{}/ws", ready["listen"].as_str().unwrap()));
    let token = token_with(json!({"client_type": ClientType::Browser.as_str(), "sub": "app"}));
    let (mut client, _) = authenticated(ws, &token).await;
    let on_disk: Value =
        serde_json::from_str(&std::fs::read_to_string(&file).expect("ready file")).expect("JSON");
    assert_eq!(on_disk, ready);

    let data_dir = ready["dataDir"].as_str().expect("dataDir").to_string();
    assert!(Path::new(&data_dir).exists());
    kill("TERM", child.id().expect("pid"));
    assert_eq!(client.closed().await, Closed::Code(1012));
    assert_eq!(exit_code(&mut child).await, Some(0));
    // Nothing more on stdout: the ready line came once.
    assert_eq!(lines.next_line().await.expect("read"), None);
    assert!(
        !Path::new(&data_dir).exists(),
        "--ephemeral removed {data_dir}"
    );

    kill("TERM", other.id().expect("pid"));
    assert_eq!(exit_code(&mut other).await, Some(0));
}

/// A startup failure: the one JSON line, its code, the exit status.
async fn fails(args: &[&str]) -> (Value, Option<i32>) {
    let mut child = hub_command(args).spawn().expect("start chanhub");
    let mut out = String::new();
    child
        .stdout
        .take()
        .expect("stdout")
        .read_to_string(&mut out)
        .await
        .expect("read stdout");
    let code = exit_code(&mut child).await;
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 1, "one line: {out}");
    (serde_json::from_str(lines[0]).expect("JSON"), code)
}

#[tokio::test]
async fn startup_failures_are_one_json_line_and_an_exit_status_per_kind() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bad_config = dir.path().join("bad.toml");
    std::fs::write(&bad_config, "listen = 5\n").expect("write config");
    let (line, code) = fails(&[
        "--config",
        bad_config.to_str().unwrap(),
        "--ready-json",
        "--ephemeral",
    ])
    .await;
    assert_eq!(
        (line["event"].as_str(), line["code"].as_str()),
        (Some("error"), Some("config_invalid")),
        "{line}"
    );
    assert!(
        line["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{line}"
    );
    assert_eq!(code, Some(3));

    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr").to_string();
    let (line, code) = fails(&["--listen", &addr, "--ready-json", "--ephemeral"]).await;
    assert_eq!(line["code"], "bind_failed", "{line}");
    assert_eq!(code, Some(4));

    // A data directory below a plain file cannot be created.
    let file = dir.path().join("a-file");
    std::fs::write(&file, "").expect("write file");
    let below = file.join("data");
    let (line, code) = fails(&[
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        below.to_str().unwrap(),
        "--ready-json",
    ])
    .await;
    assert_eq!(line["code"], "data_dir", "{line}");
    assert_eq!(code, Some(5));
}

#[tokio::test]
async fn a_hub_stops_when_its_parent_is_killed_with_sigkill() {
    // The parent: a shell that starts the hub and waits for it.
    let script =
        r#""$0" serve --listen 127.0.0.1:0 --ready-json --ephemeral --exit-with-parent & wait"#;
    let mut parent = Command::new("sh")
        .args(["-c", script, env!("CARGO_BIN_EXE_chanhub")])
        .env("CHANHUB_AUTH__SECRET", SECRET)
        .env("CHANHUB_LOG__LEVEL", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start the parent");
    let mut lines = BufReader::new(parent.stdout.take().expect("stdout")).lines();
    let ready = json_line(&mut lines).await;
    let hub_pid = u32::try_from(ready["pid"].as_u64().expect("pid")).expect("pid");
    let token = token_with(json!({"client_type": "worker", "sub": "w"}));
    let (mut client, _) = authenticated(ready["ws"].as_str().unwrap(), &token).await;

    let killed = Instant::now();
    parent.kill().await.expect("SIGKILL the parent");
    assert_eq!(client.closed().await, Closed::Code(1012), "a graceful stop");
    // Hang up, as a browser answering the close would.
    drop(client);
    until_gone(hub_pid).await;
    let took = killed.elapsed();
    assert!(
        !Path::new(ready["dataDir"].as_str().unwrap()).exists(),
        "a graceful stop removes the ephemeral data dir"
    );
    println!("hub gone {took:?} after its parent was killed");
}

#[tokio::test]
async fn a_hub_stops_when_its_stdin_closes() {
    let mut cmd = hub_command(&[
        "--listen",
        "127.0.0.1:0",
        "--ready-json",
        "--ephemeral",
        "--exit-on-stdin-close",
    ]);
    let mut child = cmd.stdin(Stdio::piped()).spawn().expect("start chanhub");
    let stdin = child.stdin.take().expect("stdin");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let ready = json_line(&mut lines).await;
    let token = token_with(json!({"client_type": "hub", "sub": "app"}));
    let (mut client, _) = authenticated(ready["ws"].as_str().unwrap(), &token).await;
    drop(stdin);
    assert_eq!(client.closed().await, Closed::Code(1012));
    assert_eq!(exit_code(&mut child).await, Some(0));
}

#[tokio::test]
async fn the_secret_can_come_from_the_first_line_of_stdin() {
    let mut cmd = hub_command(&[
        "--listen",
        "127.0.0.1:0",
        "--ready-json",
        "--ephemeral",
        "--secret-stdin",
    ]);
    cmd.env_remove("CHANHUB_AUTH__SECRET");
    let mut child = cmd.stdin(Stdio::piped()).spawn().expect("start chanhub");
    let mut stdin = child.stdin.take().expect("stdin");
    tokio::io::AsyncWriteExt::write_all(&mut stdin, format!("{SECRET}\n").as_bytes())
        .await
        .expect("write the secret");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let ready = json_line(&mut lines).await;
    let token = token_with(json!({"client_type": "browser", "sub": "ui"}));
    authenticated(ready["ws"].as_str().unwrap(), &token).await;
    kill("TERM", child.id().expect("pid"));
    assert_eq!(exit_code(&mut child).await, Some(0));
}

/// A connection that never finishes its HTTP request holds a graceful stop
/// open until the grace period ends.
async fn stuck_client(ready: &Value) -> tokio::net::TcpStream {
    let mut tcp = tokio::net::TcpStream::connect(ready["listen"].as_str().unwrap())
        .await
        .expect("connect");
    tokio::io::AsyncWriteExt::write_all(
        &mut tcp,
        b"POST /api/publish HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{",
    )
    .await
    .expect("write");
    tcp
}

#[tokio::test]
async fn a_stop_ends_within_the_grace_period_and_a_second_signal_at_once() {
    let mut cmd = hub_command(&["--listen", "127.0.0.1:0", "--ready-json", "--ephemeral"]);
    cmd.env("CHANHUB_SHUTDOWN__GRACE_PERIOD", "1s");
    let mut child = cmd.spawn().expect("start chanhub");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let ready = json_line(&mut lines).await;
    let _stuck = stuck_client(&ready).await;
    let started = Instant::now();
    kill("TERM", child.id().expect("pid"));
    exit_code(&mut child).await;
    let bounded = started.elapsed();
    println!("stopped {bounded:?} after SIGTERM with a 1 s grace period");

    // A long grace period, and a second SIGTERM.
    let mut cmd = hub_command(&["--listen", "127.0.0.1:0", "--ready-json", "--ephemeral"]);
    cmd.env("CHANHUB_SHUTDOWN__GRACE_PERIOD", "10m");
    let mut child = cmd.spawn().expect("start chanhub");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let ready = json_line(&mut lines).await;
    let _stuck = stuck_client(&ready).await;
    let pid = child.id().expect("pid");
    kill("TERM", pid);
    // The first signal is being handled once the hub stops accepting.
    let listen = ready["listen"].as_str().unwrap().to_string();
    let started = Instant::now();
    while tokio::net::TcpStream::connect(&listen).await.is_ok() {
        assert!(
            started.elapsed() < WAIT,
            "the hub kept accepting after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    kill("TERM", pid);
    assert_eq!(exit_code(&mut child).await, Some(1), "not a clean stop");
}

/// A parent that quits during startup sends SIGTERM right after the ready
/// line: still a graceful stop (exit 0, the ephemeral directory removed),
/// not the default death by signal.
#[tokio::test]
async fn a_sigterm_right_after_the_ready_line_is_a_graceful_stop() {
    for _ in 0..3 {
        let (mut child, _lines, ready) =
            ready_hub(&["--listen", "127.0.0.1:0", "--ready-json", "--ephemeral"]).await;
        kill("TERM", child.id().expect("pid"));
        assert_eq!(
            exit_code(&mut child).await,
            Some(0),
            "exit status 0, not killed by the signal"
        );
        assert!(!Path::new(ready["dataDir"].as_str().unwrap()).exists());
    }
}
