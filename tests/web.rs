//! The files a browser loads from the hub: served with the right content
//! types and headers, byte for byte the sources in `src/web/` (the
//! client package in `src/web/client/`); and
//! chanhub.js checked in Node: its pure parts (pattern matching, backoff,
//! URLs), and its connection logic against a scripted fake hub (refresh,
//! resubscribe with `since`, held and failed requests, heartbeat).

mod common;

use std::path::PathBuf;

use common::TestHub;

fn source(path: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("src/web")
        .join(path);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

async fn get(hub: &TestHub, path: &str) -> reqwest::Response {
    reqwest::get(hub.http_url(path)).await.expect("GET")
}

fn header<'a>(response: &'a reqwest::Response, name: &str) -> &'a str {
    response
        .headers()
        .get(name)
        .unwrap_or_else(|| panic!("no {name} header"))
        .to_str()
        .expect("ascii header")
}

#[tokio::test]
async fn chanhub_js_is_served_as_javascript() {
    let hub = TestHub::start().await;
    let response = get(&hub, "/chanhub.js").await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        header(&response, "content-type"),
        "text/javascript; charset=utf-8"
    );
    assert_eq!(header(&response, "x-content-type-options"), "nosniff");
    // Pages on other origins import it as a module, which needs CORS.
    assert_eq!(header(&response, "access-control-allow-origin"), "*");
    let body = response.text().await.expect("body");
    assert_eq!(body, source("client/chanhub.js"));
    assert!(body.contains("export function connect("));

    let response = get(&hub, "/chanhub.d.ts").await;
    assert_eq!(response.status(), 200);
    assert!(header(&response, "content-type").starts_with("application/typescript"));
    assert_eq!(
        response.text().await.expect("body"),
        source("client/chanhub.d.ts")
    );
    // The wire types it imports (`./wire.js`) are served beside it.
    let response = get(&hub, "/wire.d.ts").await;
    assert_eq!(response.status(), 200);
    assert!(header(&response, "content-type").starts_with("application/typescript"));
    assert_eq!(
        response.text().await.expect("body"),
        source("client/wire.d.ts")
    );
}

#[tokio::test]
async fn dashboard_is_served_with_its_assets_and_a_strict_policy() {
    let hub = TestHub::start().await;
    let response = get(&hub, "/").await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        header(&response, "content-type"),
        "text/html; charset=utf-8"
    );
    let csp = header(&response, "content-security-policy").to_string();
    assert!(csp.contains("default-src 'none'"), "{csp}");
    assert!(csp.contains("connect-src 'self'"), "{csp}");
    let html = response.text().await.expect("body");
    assert_eq!(html, source("dashboard/index.html"));
    // Nothing from elsewhere: every script and stylesheet is the hub's own.
    assert!(!html.contains("http://") && !html.contains("https://"));

    for (path, file, content_type) in [
        (
            "/dashboard/app.js",
            "dashboard/app.js",
            "text/javascript; charset=utf-8",
        ),
        (
            "/dashboard/style.css",
            "dashboard/style.css",
            "text/css; charset=utf-8",
        ),
    ] {
        let response = get(&hub, path).await;
        assert_eq!(response.status(), 200, "{path}");
        assert_eq!(header(&response, "content-type"), content_type, "{path}");
        assert_eq!(response.text().await.expect("body"), source(file), "{path}");
    }
    let app = source("dashboard/app.js");
    assert!(
        app.contains(r#"from "/chanhub.js""#),
        "the dashboard uses chanhub.js"
    );
}

/// Runs `tests/browser/<script>` in Node; it prints "ok". Fails saying how
/// to install Node when it is missing (`CHANHUB_SKIP_BROWSER=1` skips).
fn node_script(script: &str) {
    if common::skip_requested("CHANHUB_SKIP_BROWSER") {
        return;
    }
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/browser")
        .join(script);
    let output = std::process::Command::new("node")
        .arg(&path)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "node not found ({e}): install Node.js (bash .ci/test does), or set \
                 CHANHUB_SKIP_BROWSER=1 to skip the Node tests"
            )
        });
    assert!(
        output.status.success(),
        "{script} failed:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), "ok");
}

#[test]
fn chanhub_js_pure_parts_in_node() {
    node_script("unit.mjs");
}

#[test]
fn chanhub_js_connection_logic_against_a_fake_hub() {
    node_script("client.mjs");
}
