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

use common::node::{ensure_test_packages, node_flags, node_test, run_node};

fn relative(path: &str) -> String {
    assert!(common::node::manifest_dir().join(path).exists(), "{path}");
    path.to_string()
}

#[test]
fn spawn_hub_passes_its_node_tests_against_the_real_binary() {
    let Some(flags) = node_flags() else { return };
    node_test(&flags, &relative("tests/browser/spawn.test.mjs"), None);
}

#[test]
fn chanhub_js_tasks_pass_their_node_tests_against_the_real_binary() {
    let Some(flags) = node_flags() else { return };
    ensure_test_packages();
    node_test(&flags, &relative("tests/browser/tasks.test.mjs"), None);
}

#[test]
fn the_sidecar_example_passes_an_event_and_stops_the_hub() {
    let Some(flags) = node_flags() else { return };
    let output = run_node(&flags, &[&relative("examples/sidecar.mjs")], None);
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
