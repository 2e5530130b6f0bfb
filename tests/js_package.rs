//! The `chanhub` npm package (`src/web/client/`) as users get it: `npm
//! pack` makes the tarball, which is installed (with `ws`) into an empty
//! temporary project; there `tests/browser/tarball.test.mjs` runs a Node
//! worker and a caller (calls and tasks) against this build's `chanhub`
//! binary through the installed package's `exports`, and tsc compiles
//! `tests/browser/tarball-usage.ts` against its types. And the drift test
//! of the package's wire types (`wire.d.ts`) against `proto-docs/schemas/`.
//!
//! Needs `node` and `npm`; fails saying how to install them when they are
//! missing (`CHANHUB_SKIP_BROWSER=1` skips on purpose).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::node::{
    ensure_test_packages, manifest_dir, node_flags, node_test, npm, run_node, script_dir,
};
use serde_json::{Value, json};

fn package_dir() -> PathBuf {
    manifest_dir().join("src/web/client")
}

/// Runs `command` and returns its stdout; fails with its output otherwise.
fn run(command: &mut Command, what: &str) -> String {
    let output = command.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        output.status.success(),
        "{what} failed:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// `npm pack`s the package into `dir`; returns the tarball's path and the
/// files it holds.
fn pack(dir: &Path) -> (PathBuf, Vec<String>) {
    let out = run(
        npm()
            .args(["pack", "--json", "--pack-destination"])
            .arg(dir)
            .current_dir(package_dir()),
        "npm pack",
    );
    let packed: Value = serde_json::from_str(&out).expect("npm pack --json");
    let packed = &packed[0];
    let files = packed["files"]
        .as_array()
        .expect("files")
        .iter()
        .map(|f| f["path"].as_str().expect("path").to_string())
        .collect();
    let tarball = dir.join(packed["filename"].as_str().expect("filename"));
    assert!(tarball.exists(), "{}", tarball.display());
    (tarball, files)
}

/// An empty ES module project in `dir` with the tarball and `ws` (from
/// `tests/browser/node_modules`, copied: no registry needed) installed.
fn install(dir: &Path, tarball: &Path) {
    std::fs::create_dir_all(dir).expect("project dir");
    let manifest = json!({"name": "chanhub-tarball-test", "private": true, "type": "module"});
    std::fs::write(dir.join("package.json"), manifest.to_string()).expect("package.json");
    run(
        npm()
            .args([
                "install",
                "--no-audit",
                "--no-fund",
                "--no-package-lock",
                "--install-links",
            ])
            .arg(tarball)
            .arg(script_dir().join("node_modules/ws"))
            .current_dir(dir),
        "npm install of the tarball",
    );
    let installed = dir.join("node_modules/chanhub");
    assert!(
        installed.join("package.json").exists() && !installed.is_symlink(),
        "the tarball was installed as files into {}",
        installed.display()
    );
}

#[test]
fn the_packed_tarball_installs_and_runs_a_node_worker_and_a_caller() {
    if node_flags().is_none() {
        return;
    }
    ensure_test_packages();
    let tmp = tempfile::tempdir().expect("tempdir");
    let (tarball, files) = pack(tmp.path());
    for file in [
        "package.json",
        "README.md",
        "LICENSE",
        "chanhub.js",
        "chanhub.d.ts",
        "wire.d.ts",
        "node.js",
        "node.d.ts",
        "react.js",
        "react.d.ts",
    ] {
        assert!(files.iter().any(|f| f == file), "{file} in {files:?}");
    }

    let project = tmp.path().join("project");
    install(&project, &tarball);

    // The browser entry imports nothing (zero dependencies, no
    // node:child_process), and the browser condition has no chanhub/node.
    let main = std::fs::read_to_string(project.join("node_modules/chanhub/chanhub.js"))
        .expect("installed chanhub.js");
    assert!(
        !main.lines().any(|l| l.starts_with("import ")),
        "chanhub.js imports nothing"
    );
    let browser_import = |specifier: &str| {
        Command::new("node")
            .args(["--conditions=browser", "--input-type=module", "-e"])
            .arg(format!("await import({specifier:?})"))
            .current_dir(&project)
            .output()
            .expect("node")
    };
    assert!(browser_import("chanhub").status.success());
    let refused = browser_import("chanhub/node");
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("ERR_PACKAGE_PATH_NOT_EXPORTED"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );

    // A worker and a caller against the real hub, through the package.
    std::fs::copy(
        script_dir().join("tarball.test.mjs"),
        project.join("tarball.test.mjs"),
    )
    .expect("copy the test");
    node_test(&[], "tarball.test.mjs", Some(&project));

    // Its types, as a TypeScript project resolves them.
    std::fs::copy(
        script_dir().join("tarball-usage.ts"),
        project.join("usage.ts"),
    )
    .expect("copy the usage file");
    let tsconfig = json!({
        "compilerOptions": {
            "strict": true,
            "noEmit": true,
            "target": "es2022",
            "module": "nodenext",
            "moduleResolution": "nodenext",
            "lib": ["es2022", "dom"],
            "types": [],
        },
        "files": ["usage.ts"],
    });
    std::fs::write(project.join("tsconfig.json"), tsconfig.to_string()).expect("tsconfig.json");
    run(
        Command::new("node")
            .arg(script_dir().join("node_modules/typescript/bin/tsc"))
            .args(["-p", "."])
            .current_dir(&project),
        "tsc on usage.ts in the installed project",
    );
}

/// `wire.d.ts` is what `scripts/gen-types.mjs` makes of
/// `proto-docs/schemas/` (themselves checked against the Rust types by
/// `tests/schemas.rs`): after a protocol change, regenerate it with
/// `node src/web/client/scripts/gen-types.mjs`.
#[test]
fn the_wire_types_are_generated_from_the_schemas() {
    if node_flags().is_none() {
        return;
    }
    let output = run_node(
        &[],
        &["src/web/client/scripts/gen-types.mjs", "--check"],
        None,
    );
    assert!(
        output.status.success(),
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}
