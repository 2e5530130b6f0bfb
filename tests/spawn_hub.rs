//! `spawnHub` (`src/web/client/node.js`), the Node helper that runs the
//! hub as a sidecar, against this build's `chanhub` binary:
//! `tests/browser/spawn.test.mjs` under node's test runner (ready, startup
//! errors, timeout-and-kill, crash reported by `onExit`, `stop()`, the hub
//! dying with its Node parent), and the `examples/sidecar.mjs` example.
//! Also the task API of `chanhub.js` (`hub.worker`, `runTask`, `watchTask`):
//! `tests/browser/tasks.test.mjs`, with the `ws` package as its WebSocket.
//!
//! Needs `node` (and, for the task tests, `npm`: `ws` is installed from
//! `tests/browser/package-lock.json` when missing); fails saying how to
//! install node when it is missing (`CHANHUB_SKIP_BROWSER=1` skips on
//! purpose).

mod common;

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Upper bound on one node run; a passing run takes a few seconds.
const RUN_LIMIT: Duration = Duration::from_secs(120);

fn manifest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `node`'s flags for a global `WebSocket` (Node 20 and 21 need
/// `--experimental-websocket`; 22+ have it), or `None` when
/// `CHANHUB_SKIP_BROWSER=1` asks to skip. Fails when node is missing.
fn node_flags() -> Option<Vec<&'static str>> {
    if common::skip_requested("CHANHUB_SKIP_BROWSER") {
        return None;
    }
    let has_websocket = |flags: &[&str]| {
        Command::new("node")
            .args(flags)
            .args([
                "-e",
                "process.exit(typeof WebSocket === 'function' ? 0 : 1)",
            ])
            .output()
            .map(|o| o.status.success())
    };
    match has_websocket(&[]) {
        Err(e) => panic!(
            "node not found ({e}): install Node.js 20 or later (bash .ci/test does), or set \
             CHANHUB_SKIP_BROWSER=1 to skip the Node tests"
        ),
        Ok(true) => Some(vec![]),
        Ok(false) => {
            let flags = vec!["--experimental-websocket"];
            assert!(
                has_websocket(&flags).unwrap_or(false),
                "this node has no WebSocket, even with --experimental-websocket: install Node.js 20 or later"
            );
            Some(flags)
        }
    }
}

/// Runs node with `args` in the repository, `CHANHUB_BIN` set to this
/// build's binary; killed after [`RUN_LIMIT`].
fn run_node(flags: &[&str], args: &[&str]) -> Output {
    let mut child = Command::new("node")
        .args(flags)
        .args(args)
        .current_dir(manifest_dir())
        .env("CHANHUB_BIN", env!("CARGO_BIN_EXE_chanhub"))
        .env("CHANHUB_LOG__LEVEL", "warn")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start node");
    // Read the pipes on threads so a chatty run cannot fill them and stall.
    let read = |mut pipe: Box<dyn std::io::Read + Send>| {
        std::thread::spawn(move || {
            let mut out = Vec::new();
            let _ = pipe.read_to_end(&mut out);
            out
        })
    };
    let stdout = read(Box::new(child.stdout.take().expect("stdout")));
    let stderr = read(Box::new(child.stderr.take().expect("stderr")));
    let deadline = Instant::now() + RUN_LIMIT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for node") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("node {args:?} did not finish within {RUN_LIMIT:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    Output {
        status,
        stdout: stdout.join().expect("stdout reader"),
        stderr: stderr.join().expect("stderr reader"),
    }
}

fn relative(path: &str) -> String {
    assert!(manifest_dir().join(path).exists(), "{path}");
    path.to_string()
}

#[test]
fn spawn_hub_passes_its_node_tests_against_the_real_binary() {
    let Some(flags) = node_flags() else { return };
    let script = relative("tests/browser/spawn.test.mjs");
    let output = run_node(&flags, &["--test", &script]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "node --test {script} failed:\n{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    // Guard against a run that found no tests (the TAP summary counts them).
    assert!(stdout.contains("# fail 0"), "{stdout}");
    assert!(!stdout.contains("# pass 0"), "{stdout}");
}

/// Installs the npm packages of `tests/browser` from its lock file when
/// `ws` is missing.
fn ensure_ws() {
    let dir = manifest_dir().join("tests/browser");
    if dir.join("node_modules/ws/package.json").exists() {
        return;
    }
    let status = Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund"])
        .current_dir(&dir)
        .status()
        .expect("run npm ci in tests/browser");
    assert!(status.success(), "npm ci in tests/browser failed");
}

#[test]
fn chanhub_js_tasks_pass_their_node_tests_against_the_real_binary() {
    let Some(flags) = node_flags() else { return };
    ensure_ws();
    let script = relative("tests/browser/tasks.test.mjs");
    let output = run_node(&flags, &["--test", &script]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "node --test {script} failed:\n{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("# fail 0"), "{stdout}");
    assert!(!stdout.contains("# pass 0"), "{stdout}");
}

#[test]
fn the_sidecar_example_passes_an_event_and_stops_the_hub() {
    let Some(flags) = node_flags() else { return };
    let output = run_node(&flags, &[&relative("examples/sidecar.mjs")]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "examples/sidecar.mjs failed:\n{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{stdout}");
    assert!(
        lines[0].starts_with("hub ready at ws://127.0.0.1:"),
        "{stdout}"
    );
    assert_eq!(
        lines[1],
        r#"renderer got app:greeting: {"text":"hello from the main process"}"#
    );
    assert_eq!(lines[2], "hub stopped with status 0");
}
