//! The embedding API (`Hub::builder(config).listen(..).start()`): a hub in
//! this test's own runtime, real WebSocket clients authenticated with the
//! tokens it mints, and a graceful, bounded shutdown.

mod common;

use std::time::{Duration, Instant};

use chanhub::auth::{ClientType, TokenClaims};
use chanhub::{Config, EmbedError, Hub, RunningHub};
use common::{Closed, SECRET, WAIT, WsClient, authenticated};
use serde_json::json;

const GRACE: Duration = Duration::from_secs(5);
const HOUR: Duration = Duration::from_secs(3600);

/// Defaults, with a data dir of its own and a short grace period.
fn config(data: &tempfile::TempDir) -> Config {
    let mut config = Config {
        data_dir: Some(data.path().to_path_buf()),
        ..Config::default()
    };
    config.shutdown.grace_period = GRACE;
    config
}

async fn start(config: Config) -> RunningHub {
    let hub = Hub::builder(config)
        .listen("127.0.0.1:0")
        .start()
        .await
        .expect("start");
    tokio::time::timeout(WAIT, hub.ready())
        .await
        .expect("ready in time")
        .expect("ready");
    hub
}

/// The first reply to `auth` with `token`.
async fn auth_reply(hub: &RunningHub, token: &str) -> serde_json::Value {
    let mut client = WsClient::connect(&hub.ws_url()).await;
    client.send(json!({"type": "auth", "token": token})).await;
    client.recv().await
}

#[tokio::test]
async fn a_built_hub_serves_minted_tokens_and_stops_with_1012_within_the_grace_period() {
    let data = tempfile::tempdir().expect("tempdir");
    let hub = start(config(&data)).await;
    assert!(hub.addr().ip().is_loopback());
    assert_ne!(hub.addr().port(), 0, "the port chosen for :0");
    assert_eq!(hub.ws_url(), format!("ws://{}/ws", hub.addr()));
    assert_eq!(hub.hub().config().listen, hub.addr());
    let ready = reqwest::get(format!("{}/readyz", hub.http_url()))
        .await
        .expect("GET /readyz");
    assert_eq!(ready.status(), 200);
    // No secret configured: one generated in memory, none written.
    assert!(!data.path().join("secret").exists());

    let browser = hub
        .mint_token(ClientType::Browser, "ui", HOUR)
        .expect("mint");
    let (mut ui, welcome) = authenticated(&hub.ws_url(), &browser).await;
    assert_eq!(welcome["clientType"], "browser", "{welcome}");
    ui.subscribe(&["session:*"]).await;
    let backend_token = hub.mint_token(ClientType::Hub, "app", HOUR).expect("mint");
    let (mut backend, _) = authenticated(&hub.ws_url(), &backend_token).await;
    backend.publish_ok("session:1", json!({"n": 1})).await;
    let event = ui.recv_type("event").await;
    assert_eq!(event["channel"], "session:1");
    assert_eq!(event["data"], json!({"n": 1}));
    // A token signed with any other secret is refused.
    let reply = auth_reply(
        &hub,
        &common::token_with(json!({"client_type": "hub", "sub": "x"})),
    )
    .await;
    assert_eq!(reply["type"], "auth:failed", "{reply}");

    let addr = hub.addr();
    let started = Instant::now();
    let stopping = tokio::spawn(hub.shutdown());
    for client in [&mut ui, &mut backend] {
        assert_eq!(client.closed().await, Closed::Code(1012));
        client.finish_close().await;
    }
    let stopped = tokio::time::timeout(GRACE + Duration::from_secs(2), stopping)
        .await
        .expect("shutdown did not return")
        .expect("shutdown panicked");
    assert!(stopped.is_ok(), "{stopped:?}");
    let took = started.elapsed();
    assert!(
        took < GRACE,
        "shutdown took {took:?}, the whole grace period"
    );
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}

#[tokio::test]
async fn two_embedded_hubs_run_side_by_side_with_their_own_ports_and_secrets() {
    let (data_a, data_b) = (
        tempfile::tempdir().expect("tempdir"),
        tempfile::tempdir().expect("tempdir"),
    );
    let a = start(config(&data_a)).await;
    let b = start(config(&data_b)).await;
    assert_ne!(a.addr(), b.addr());
    assert_ne!(a.hub().hub_id(), b.hub().hub_id());

    let mut uis = Vec::new();
    for hub in [&a, &b] {
        let token = hub
            .mint_token(ClientType::Browser, "ui", HOUR)
            .expect("mint");
        let (mut ui, _) = authenticated(&hub.ws_url(), &token).await;
        ui.subscribe(&["session:*"]).await;
        uis.push(ui);
    }
    // Each hub's tokens are its own.
    let from_a = a.mint_token(ClientType::Hub, "app", HOUR).expect("mint");
    let reply = auth_reply(&b, &from_a).await;
    assert_eq!(reply["type"], "auth:failed", "{reply}");

    let (mut backend, _) = authenticated(&a.ws_url(), &from_a).await;
    let published = backend.publish_ok("session:1", json!("only a")).await;
    assert_eq!(published["delivered"], 1, "{published}");
    let event = uis[0].recv_type("event").await;
    assert_eq!(event["data"], "only a");
    uis[1].expect_quiet().await;

    for hub in [a, b] {
        tokio::time::timeout(GRACE + Duration::from_secs(2), hub.shutdown())
            .await
            .expect("shutdown in time")
            .expect("clean shutdown");
    }
}

#[tokio::test]
async fn minted_tokens_follow_the_configured_claim_name_audience_and_issuer() {
    let data = tempfile::tempdir().expect("tempdir");
    let mut config = config(&data);
    config.auth.secret = Some(SECRET.into());
    config.auth.client_type_claim = "role".into();
    config.auth.audience = Some("my-app".into());
    config.auth.issuer = Some("my-app-main".into());
    let hub = start(config).await;
    let token = hub
        .mint_token(ClientType::Worker, "w1", HOUR)
        .expect("mint");
    let identity = hub.hub().verify(&token).await.expect("accepted");
    assert_eq!(identity.client_type, ClientType::Worker);
    assert_eq!(identity.sub, "w1");
    // Narrowed claims go through `mint`.
    let narrowed = hub
        .mint(&TokenClaims {
            sub: "ui".into(),
            exp: chanhub::protocol::now_ms() / 1000 + 60,
            iat: None,
            client_type: ClientType::Browser,
            channels: Some(vec!["session:1".into()]),
            publish: None,
            capabilities: None,
            max_slots: None,
            call: None,
            serve: None,
        })
        .expect("mint");
    let (mut ui, _) = authenticated(&hub.ws_url(), &narrowed).await;
    ui.send(json!({"type": "subscribe", "id": "s", "channels": ["session:2"]}))
        .await;
    let reply = ui.recv().await;
    assert_eq!(reply["type"], "error", "{reply}");
    assert_eq!(reply["code"], "forbidden", "{reply}");
    assert_eq!(reply["channel"], "session:2", "{reply}");
    hub.shutdown().await.expect("clean shutdown");
}

#[tokio::test]
async fn dropping_the_handle_stops_the_hub_gracefully() {
    let data = tempfile::tempdir().expect("tempdir");
    let hub = start(config(&data)).await;
    let token = hub
        .mint_token(ClientType::Browser, "ui", HOUR)
        .expect("mint");
    let (mut ui, _) = authenticated(&hub.ws_url(), &token).await;
    let addr = hub.addr();
    drop(hub);
    assert_eq!(ui.closed().await, Closed::Code(1012));
    ui.finish_close().await;
    let refused = tokio::time::timeout(WAIT, async {
        while tokio::net::TcpStream::connect(addr).await.is_ok() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(refused.is_ok(), "still listening on {addr}");
}

#[tokio::test]
async fn a_hub_that_verifies_with_a_public_key_cannot_mint() {
    let data = tempfile::tempdir().expect("tempdir");
    let mut config = config(&data);
    config.auth.algorithm = "RS256".into();
    config.auth.public_key_file =
        Some(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/keys/rsa-a.pub.pem"));
    let hub = start(config).await;
    let err = hub
        .mint_token(ClientType::Browser, "ui", HOUR)
        .expect_err("no private key");
    assert!(matches!(err, EmbedError::NoSigningKey { .. }), "{err}");
    hub.shutdown().await.expect("clean shutdown");
}

#[tokio::test]
async fn a_port_in_use_fails_to_start() {
    let data = tempfile::tempdir().expect("tempdir");
    let taken = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = taken.local_addr().expect("addr");
    let err = Hub::builder(config(&data))
        .listen(addr)
        .start()
        .await
        .expect_err("the port is taken");
    assert!(matches!(err, EmbedError::Bind { .. }), "{err}");
    assert!(err.to_string().contains(&addr.to_string()), "{err}");
}
