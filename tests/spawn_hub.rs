//! `spawnHub` (`src/web/client/node.js`), the Node helper that runs the
//! hub as a sidecar, against this build's `chanhub` binary:
//! `tests/browser/spawn.test.mjs` under node's test runner (ready, startup
//! errors, timeout-and-kill, crash reported by `onExit`, `stop()`, the hub
//! dying with its Node parent), and the `examples/sidecar.mjs` and
//! `examples/node-workers/` examples.
//! Also the task API of `chanhub.js` (`hub.worker`, `runTask`, `watchTask`):
//! `tests/browser/tasks.test.mjs`, with the `ws` package as its WebSocket,
//! under Node, Bun and Deno (both from the npm registry, `tests/runtimes`).
//!
//! Needs `node` (and, for the task tests, `npm`: `ws` is installed from
//! `tests/browser/package-lock.json` when missing); fails saying how to
//! install node when it is missing (`CHANHUB_SKIP_BROWSER=1` skips on
//! purpose).

mod common;

use common::node::{ensure_test_packages, node_flags, node_test, run_node, run_program};

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

/// The same worker and submitter tests under Bun (`bun test`, which runs
/// `node:test` suites), installed from `tests/runtimes`.
#[test]
fn chanhub_js_tasks_pass_under_bun() {
    if node_flags().is_none() {
        return;
    }
    ensure_test_packages();
    let bun = common::node::ensure_runtimes().join("bun");
    let output = run_program(&bun, &["test", "./tests/browser/tasks.test.mjs"], None);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "bun test failed:\n{text}");
    assert!(text.contains(" 0 fail"), "{text}");
    assert!(!text.contains(" 0 pass"), "{text}");
}

/// And under Deno (`deno test`, which runs `node:test` suites too; `ws`
/// from `tests/browser/node_modules`), installed from `tests/runtimes`.
#[test]
fn chanhub_js_tasks_pass_under_deno() {
    if node_flags().is_none() {
        return;
    }
    ensure_test_packages();
    let deno = common::node::ensure_runtimes().join("deno");
    let output = run_program(
        &deno,
        &["test", "--allow-all", "--no-check", "./tasks.test.mjs"],
        // Deno finds `ws` through the package.json of its working directory.
        Some(&common::node::script_dir()),
    );
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "deno test failed:\n{text}");
    assert!(text.contains("| 0 failed"), "{text}");
    assert!(!text.contains("| 0 passed"), "{text}");
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

/// `examples/node-workers`: the main thread spawns the hub, four
/// `worker_threads` index 100 files as workers, progress comes from the
/// lifecycle events, and everything stops. Its npm packages (the package
/// from `src/web/client`, `ws`) are installed from its lock file when
/// missing.
#[test]
fn the_node_workers_example_indexes_100_files_and_stops() {
    if node_flags().is_none() {
        return;
    }
    let dir = common::node::manifest_dir().join("examples/node-workers");
    let modules = dir.join("node_modules");
    if !(modules.join("chanhub").exists() && modules.join("ws/package.json").exists()) {
        let status = common::node::npm()
            .args(["ci", "--no-audit", "--no-fund", "--prefer-offline"])
            .current_dir(&dir)
            .status()
            .expect("run npm ci in examples/node-workers");
        assert!(status.success(), "npm ci in examples/node-workers failed");
    }
    // Node 20 without flags: the example brings `ws`.
    let output = run_node(&[], &["main.mjs"], Some(&dir));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "examples/node-workers failed:\n{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(
        lines[0].starts_with("hub ready at ws://127.0.0.1:"),
        "{stdout}"
    );
    assert_eq!(lines[1], "4 workers ready", "{stdout}");
    assert!(lines.contains(&"submitted 100 tasks"), "{stdout}");
    // One progress line per ten tasks completed, the last at 100.
    let progress: Vec<&&str> = lines
        .iter()
        .filter(|l| l.starts_with("progress:"))
        .collect();
    assert_eq!(progress.len(), 10, "{stdout}");
    assert!(
        progress[9].starts_with("progress: 100/100 indexed"),
        "{stdout}"
    );
    // 40 × (1 + … + 100) lines of 9 words each.
    assert_eq!(
        &lines[lines.len() - 3..],
        [
            "indexed 100 files: 202000 lines, 1818000 words",
            "workers stopped (100 tasks run in all)",
            "hub stopped with status 0",
        ],
        "{stdout}"
    );
}
