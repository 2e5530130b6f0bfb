//! Node.js for the tests of the JavaScript package: finding `node` (and the
//! flag its global `WebSocket` needs), installing the test-only npm
//! packages of `tests/browser/`, and running a node script against this
//! build's `chanhub` binary.
//!
//! A missing `node` or `npm` fails the test saying how to install it;
//! only `CHANHUB_SKIP_BROWSER=1` skips, on purpose.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Upper bound on one node run; a passing run takes a few seconds.
pub const RUN_LIMIT: Duration = Duration::from_secs(120);

/// The npm packages `tests/browser/package-lock.json` installs.
const TEST_PACKAGES: [&str; 5] = ["playwright-core", "typescript", "ws", "react", "react-dom"];

pub fn manifest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `tests/browser/`: the node scripts and their npm packages.
pub fn script_dir() -> PathBuf {
    manifest_dir().join("tests/browser")
}

/// `node`'s flags for a global `WebSocket` (Node 20 and 21 need
/// `--experimental-websocket`; 22+ have it), or `None` when
/// `CHANHUB_SKIP_BROWSER=1` asks to skip. Fails when node is missing.
pub fn node_flags() -> Option<Vec<&'static str>> {
    if super::skip_requested("CHANHUB_SKIP_BROWSER") {
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

/// An `npm` command; fails saying how to install npm when it is missing.
pub fn npm() -> Command {
    if let Err(e) = Command::new("npm").arg("--version").output() {
        panic!("npm not found ({e}): install npm (apt-get install -y npm; bash .ci/test does)");
    }
    Command::new("npm")
}

/// Installs the npm packages of `tests/browser` from its lock file when
/// one is missing. Tests run in parallel: one installs.
pub fn ensure_test_packages() {
    static INSTALL: Mutex<()> = Mutex::new(());
    let _one_at_a_time = INSTALL.lock().unwrap_or_else(|e| e.into_inner());
    let modules = script_dir().join("node_modules");
    if TEST_PACKAGES
        .iter()
        .all(|p| modules.join(p).join("package.json").exists())
    {
        return;
    }
    let status = npm()
        .args(["ci", "--no-audit", "--no-fund"])
        .current_dir(script_dir())
        .status()
        .expect("run npm ci in tests/browser");
    assert!(status.success(), "npm ci in tests/browser failed");
}

/// Installs Bun and Deno (npm packages of `tests/runtimes`) from its lock
/// file when one is missing, and returns that folder's `node_modules/.bin`.
pub fn ensure_runtimes() -> PathBuf {
    let dir = manifest_dir().join("tests/runtimes");
    let bin = dir.join("node_modules/.bin");
    if !(bin.join("bun").exists() && bin.join("deno").exists()) {
        let status = npm()
            .args(["ci", "--no-audit", "--no-fund"])
            .current_dir(&dir)
            .status()
            .expect("run npm ci in tests/runtimes");
        assert!(status.success(), "npm ci in tests/runtimes failed");
    }
    bin
}

/// Runs node with `flags` and `args` in `dir` (the repository when `None`),
/// `CHANHUB_BIN` set to this build's binary; killed after [`RUN_LIMIT`].
pub fn run_node(flags: &[&str], args: &[&str], dir: Option<&Path>) -> Output {
    let args: Vec<&str> = flags.iter().chain(args).copied().collect();
    run_program(Path::new("node"), &args, dir)
}

/// Runs `program` with `args` in `dir` (the repository when `None`),
/// `CHANHUB_BIN` set to this build's binary; killed after [`RUN_LIMIT`].
pub fn run_program(program: &Path, args: &[&str], dir: Option<&Path>) -> Output {
    let mut child = Command::new(program)
        .args(args)
        .current_dir(dir.map_or_else(manifest_dir, Path::to_path_buf))
        .env("CHANHUB_BIN", env!("CARGO_BIN_EXE_chanhub"))
        .env("CHANHUB_LOG__LEVEL", "warn")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .env("NO_COLOR", "1")
        .spawn()
        .unwrap_or_else(|e| panic!("start {}: {e}", program.display()));
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
        if let Some(status) = child.try_wait().expect("wait for the child") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{} {args:?} did not finish within {RUN_LIMIT:?}",
                program.display()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    Output {
        status,
        stdout: stdout.join().expect("stdout reader"),
        stderr: stderr.join().expect("stderr reader"),
    }
}

/// Runs `script` under node's test runner (in `dir`, or the repository)
/// and checks that it ran tests and all passed.
pub fn node_test(flags: &[&str], script: &str, dir: Option<&Path>) {
    let output = run_node(flags, &["--test", script], dir);
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
