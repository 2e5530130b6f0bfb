//! The `chanhub` binary as an operator runs it, against a real hub.

mod common;

use chanhub::auth::ClientType;
use common::{TestHub, WAIT};
use serde_json::{Value, json};
use tokio::process::Command;

/// Runs `chanhub tasks submit ... --wait` while a worker reports progress
/// and completes the task: the progress shows on stderr, the final record on
/// stdout, and the exit status says it completed.
#[tokio::test]
async fn tasks_submit_wait_shows_progress_and_the_result() {
    let hub = TestHub::start().await;
    let data = tempfile::tempdir().expect("tempdir");
    let (mut worker, _) = hub.connect(ClientType::Worker, "w").await;
    worker.register(&["demo:*"], 1).await;

    let cli = Command::new(env!("CARGO_BIN_EXE_chanhub"))
        .args(["tasks", "submit", "demo:cli", r#"{"n":1}"#, "--wait"])
        .arg("--url")
        .arg(hub.http_url(""))
        .arg("--token")
        .arg(hub.token(ClientType::Hub, "operator"))
        .env("CHANHUB_DATA_DIR", data.path())
        .env("NO_COLOR", "1")
        .kill_on_drop(true)
        .output();
    let run_worker = async {
        let task = worker.next_assign().await;
        let id = task["id"].as_str().expect("task id").to_string();
        worker
            .send(json!({"type": "task:progress", "id": "p", "taskId": id, "progress": 50, "message": "half way"}))
            .await;
        worker.recv_type("task:ack").await;
        worker.complete_task(&id, json!({"ok": true})).await;
        id
    };
    let (output, id) = tokio::time::timeout(WAIT, async { tokio::join!(cli, run_worker) })
        .await
        .expect("the CLI did not finish");
    let output = output.expect("ran the CLI");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "stdout: {stdout}\nstderr: {stderr}"
    );
    assert!(stderr.contains(&format!("task {id} accepted")), "{stderr}");
    assert!(stderr.contains("assigned to worker"), "{stderr}");
    assert!(stderr.contains(" 50% half way"), "{stderr}");
    let record: Value = serde_json::from_str(&stdout).expect("final record is JSON");
    assert_eq!(record["id"], id.as_str());
    assert_eq!(record["state"], "completed");
    assert_eq!(record["result"], json!({"ok": true}));
}

/// A task that dies makes `--wait` fail, so scripts can tell.
#[tokio::test]
async fn tasks_submit_wait_fails_when_the_task_dies() {
    let hub = TestHub::start().await;
    let data = tempfile::tempdir().expect("tempdir");
    let (mut worker, _) = hub.connect(ClientType::Worker, "w").await;
    worker.register(&["demo:*"], 1).await;
    let cli = Command::new(env!("CARGO_BIN_EXE_chanhub"))
        .args(["tasks", "submit", "demo:cli", "null", "--wait"])
        .arg("--url")
        .arg(hub.http_url(""))
        .arg("--token")
        .arg(hub.token(ClientType::Hub, "operator"))
        .env("CHANHUB_DATA_DIR", data.path())
        .kill_on_drop(true)
        .output();
    let run_worker = async {
        let task = worker.next_assign().await;
        worker
            .send(json!({"type": "task:error", "taskId": task["id"], "error": "boom", "retryable": false}))
            .await;
    };
    let (output, ()) = tokio::time::timeout(WAIT, async { tokio::join!(cli, run_worker) })
        .await
        .expect("the CLI did not finish");
    let output = output.expect("ran the CLI");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(stderr.contains("ended dead"), "{stderr}");
}

/// Runs `chanhub call ...` the way an operator would, with `args` after
/// `call`, while `serve` answers the worker's side; returns the output.
async fn chanhub_call(hub: &TestHub, args: &[&str]) -> std::process::Output {
    let data = tempfile::tempdir().expect("tempdir");
    let output = Command::new(env!("CARGO_BIN_EXE_chanhub"))
        .arg("call")
        .args(args)
        .arg("--url")
        .arg(hub.http_url(""))
        .arg("--token")
        .arg(hub.token(ClientType::Hub, "operator"))
        .env("CHANHUB_DATA_DIR", data.path())
        .kill_on_drop(true)
        .output();
    tokio::time::timeout(WAIT, output)
        .await
        .expect("the CLI did not finish")
        .expect("ran the CLI")
}

/// `chanhub call METHOD PARAMS` prints the worker's result and exits 0; a
/// worker's error makes it exit non-zero with the error on stderr.
#[tokio::test]
async fn call_prints_the_result_and_fails_on_an_error() {
    let hub = TestHub::start().await;
    let (mut worker, _) = hub.connect(ClientType::Worker, "w").await;
    worker
        .send(json!({"type": "serve", "id": 1, "methods": ["demo.*"]}))
        .await;
    assert_eq!(worker.recv().await["type"], "serving");
    let answer = async {
        for _ in 0..2 {
            let req = worker.recv_type("call:request").await;
            let reply = match req["method"].as_str() {
                Some("demo.add") => {
                    let sum =
                        req["params"]["a"].as_i64().unwrap() + req["params"]["b"].as_i64().unwrap();
                    json!({"type": "call:reply", "callId": req["callId"], "result": {"sum": sum}})
                }
                _ => json!({"type": "call:reply", "callId": req["callId"],
                    "error": {"code": "demo_failed", "message": "as asked"}}),
            };
            worker.send(reply).await;
        }
    };
    let cli = async {
        let ok = chanhub_call(&hub, &["demo.add", r#"{"a":2,"b":3}"#]).await;
        let failed = chanhub_call(&hub, &["demo.fail", "--timeout", "5s"]).await;
        (ok, failed)
    };
    let ((ok, failed), ()) = tokio::join!(cli, answer);
    let stdout = String::from_utf8_lossy(&ok.stdout);
    assert!(
        ok.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let result: Value = serde_json::from_str(&stdout).expect("the result is JSON");
    assert_eq!(result, json!({"sum": 5}));

    let stderr = String::from_utf8_lossy(&failed.stderr);
    assert!(!failed.status.success(), "{stderr}");
    assert!(stderr.contains("call_failed"), "{stderr}");
    assert!(
        stderr.contains("demo_failed"),
        "the server's error: {stderr}"
    );

    // Nobody serves it: no_server, non-zero.
    worker
        .send(json!({"type": "unserve", "id": 2, "methods": ["demo.*"]}))
        .await;
    assert_eq!(worker.recv().await["type"], "unserving");
    let none = chanhub_call(&hub, &["demo.add", "{}"]).await;
    let stderr = String::from_utf8_lossy(&none.stderr);
    assert!(!none.status.success(), "{stderr}");
    assert!(stderr.contains("no_server"), "{stderr}");
}

/// Runs `chanhub token` with `config` (TOML) and `args`; the token on
/// stdout, or the failure's stderr.
async fn mint_with(config: &str, args: &[&str]) -> Result<String, String> {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("chanhub.toml");
    std::fs::write(&file, config).expect("write config");
    let output = Command::new(env!("CARGO_BIN_EXE_chanhub"))
        .arg("token")
        .args(args)
        .arg("--config")
        .arg(&file)
        .env("CHANHUB_DATA_DIR", dir.path())
        .output()
        .await
        .expect("ran chanhub token");
    if output.status.success() {
        Ok(String::from_utf8(output.stdout)
            .expect("utf-8")
            .trim()
            .to_string())
    } else {
        Err(String::from_utf8_lossy(&output.stderr).into_owned())
    }
}

/// The header and the claims of a token, undecoded by any key.
fn parts(token: &str) -> (Value, Value) {
    use base64::Engine;
    let decode = |part: &str| -> Value {
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(part)
            .expect("base64url");
        serde_json::from_slice(&bytes).expect("json")
    };
    let mut it = token.split('.');
    let header = decode(it.next().expect("header"));
    (header, decode(it.next().expect("claims")))
}

/// `chanhub token` mints what the configuration checks: the client type
/// under `auth.client_type_claim`, `aud` and `iss`; and a hub with that
/// configuration accepts it.
#[tokio::test]
async fn token_honours_the_claim_name_audience_and_issuer() {
    let config = format!(
        "[auth]\nsecret = \"{}\"\nclient_type_claim = \"https://example.com/role\"\n\
         audience = \"chanhub\"\nissuer = \"https://id.example.com\"\n",
        common::SECRET
    );
    let token = mint_with(&config, &["--type", "worker", "--sub", "w-1"])
        .await
        .expect("minted");
    let (header, claims) = parts(&token);
    assert_eq!(header["alg"], "HS256");
    assert!(header.get("kid").is_none(), "{header}");
    assert_eq!(claims["https://example.com/role"], "worker", "{claims}");
    assert!(claims.get("client_type").is_none(), "{claims}");
    assert_eq!(claims["aud"], "chanhub");
    assert_eq!(claims["iss"], "https://id.example.com");
    let hub = TestHub::with_config(|c| {
        c.auth.client_type_claim = "https://example.com/role".into();
        c.auth.audience = Some("chanhub".into());
        c.auth.issuer = Some("https://id.example.com".into());
    })
    .await;
    let (_client, hello) = hub.connect_with_token(&token).await;
    assert_eq!(hello["clientType"], "worker");
    assert_eq!(hello["sub"], "w-1");
}

/// `--kid` signs with that `[[auth.keys]]` entry and names it; an
/// asymmetric key needs `--private-key`; with several keys and no `[auth]`
/// key, a kid must be named.
#[tokio::test]
async fn token_signs_with_the_key_of_a_kid() {
    let keys = common::jwks::key_file("ec-a.pub.pem");
    let config = format!(
        "[[auth.keys]]\nkid = \"hs\"\nalgorithm = \"HS256\"\nsecret = \"hs-secret\"\n\
         [[auth.keys]]\nkid = \"es\"\nalgorithm = \"ES256\"\npublic_key_file = {:?}\n",
        keys.display().to_string()
    );
    let err = mint_with(&config, &["--type", "hub", "--sub", "x"])
        .await
        .expect_err("no default key");
    assert!(err.contains("--kid"), "{err}");
    let err = mint_with(&config, &["--type", "hub", "--sub", "x", "--kid", "es"])
        .await
        .expect_err("needs the private key");
    assert!(err.contains("--private-key"), "{err}");
    let private = common::jwks::key_file("ec-a.pem");
    let private = private.to_str().expect("utf-8 path");
    let es = mint_with(
        &config,
        &[
            "--type",
            "hub",
            "--sub",
            "x",
            "--kid",
            "es",
            "--private-key",
            private,
        ],
    )
    .await
    .expect("minted");
    let hs = mint_with(&config, &["--type", "browser", "--sub", "y", "--kid", "hs"])
        .await
        .expect("minted");
    assert_eq!(parts(&es).0["kid"], "es");
    assert_eq!(parts(&es).0["alg"], "ES256");
    assert_eq!(parts(&hs).0["kid"], "hs");
    // The same [auth] (so no TestHub secret).
    let auth = chanhub::Config::from_toml(&config).expect("config").auth;
    let hub = TestHub::with_config(|c| c.auth = auth).await;
    let (_client, hello) = hub.connect_with_token(&es).await;
    assert_eq!(hello["clientType"], "hub");
    let (_client, hello) = hub.connect_with_token(&hs).await;
    assert_eq!(hello["clientType"], "browser");
}
