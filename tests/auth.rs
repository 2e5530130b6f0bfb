//! Authentication over WebSocket: every refusal with its reason code
//! (`auth:failed`, then close 4001), the three ways to present a token, the
//! auth timeout (4002), token expiry (4003) and `auth:refresh`.

mod common;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chanhub::auth::{ClientType, mint};
use chanhub::protocol::now_ms;
use common::{Closed, SECRET, TestHub, WsClient, now_secs, token_with};
use jsonwebtoken::{Algorithm, EncodingKey};
use serde_json::{Value, json};
use std::time::Duration;

/// Claims of a valid hub token.
fn valid_claims() -> Value {
    json!({"sub": "backend", "client_type": "hub", "exp": now_secs() + 3600})
}

/// A token made by hand: base64url header and claims, and `signature` as is.
fn hand_made(header: Value, claims: Value, signature: &str) -> String {
    format!(
        "{}.{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string()),
        signature
    )
}

/// Presents `token` in an `auth` message and expects exactly one
/// `auth:failed` (echoing the id) then close 4001; returns the reason.
async fn refused(hub: &TestHub, token: &str) -> String {
    let mut client = WsClient::connect(&hub.ws_url()).await;
    client
        .send(json!({"type": "auth", "id": "a-1", "token": token}))
        .await;
    let (closed, seen) = client.drain_until_closed().await;
    assert_eq!(closed, Closed::Code(4001), "messages: {seen:?}");
    assert_eq!(seen.len(), 1, "{seen:?}");
    let failed = &seen[0];
    assert_eq!(failed["type"], "auth:failed", "{failed}");
    assert_eq!(failed["id"], "a-1", "{failed}");
    assert!(
        failed["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{failed}"
    );
    failed["reason"].as_str().expect("reason").to_string()
}

#[tokio::test]
async fn a_valid_token_is_accepted() {
    let hub = TestHub::start().await;
    let (_client, hello) = hub.connect_with_token(&token_with(valid_claims())).await;
    assert_eq!(hello["sub"], "backend");
    assert_eq!(hello["clientType"], "hub");
}

#[tokio::test]
async fn bad_signature_is_refused() {
    let hub = TestHub::start().await;
    let token = mint(
        &valid_claims(),
        Algorithm::HS256,
        &EncodingKey::from_secret(b"not-the-secret"),
    )
    .expect("mint");
    assert_eq!(refused(&hub, &token).await, "bad_signature");
}

#[tokio::test]
async fn alg_none_is_refused() {
    let hub = TestHub::start().await;
    let token = hand_made(json!({"alg": "none", "typ": "JWT"}), valid_claims(), "");
    assert_eq!(refused(&hub, &token).await, "algorithm_not_allowed");
}

#[tokio::test]
async fn another_algorithm_in_the_header_is_refused() {
    let hub = TestHub::start().await;
    let token = hand_made(
        json!({"alg": "RS256", "typ": "JWT"}),
        valid_claims(),
        "c2lnbmF0dXJl",
    );
    assert_eq!(refused(&hub, &token).await, "algorithm_not_allowed");
}

#[tokio::test]
async fn another_hmac_algorithm_with_the_right_secret_is_refused() {
    let hub = TestHub::start().await;
    let token = mint(
        &valid_claims(),
        Algorithm::HS512,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .expect("mint");
    assert_eq!(refused(&hub, &token).await, "algorithm_not_allowed");
}

/// A throwaway Ed25519 key pair, used only by these tests.
const ED25519_PRIVATE: &str = "-----BEGIN PRIVATE KEY-----
MC4CAQAwBQYDK2VwBCIEILWopxM2hpUifUvmy5bGY3PmbGTNme2S4DyUP/aCEbNZ
-----END PRIVATE KEY-----
";
const ED25519_PUBLIC: &str = "-----BEGIN PUBLIC KEY-----
MCowBQYDK2VwAyEAyqgpXb7ISYQQbSY4wi/xEIMCimqA1SWksl1OH8PSN2M=
-----END PUBLIC KEY-----
";

#[tokio::test]
async fn asymmetric_hub_refuses_hmac_signed_with_its_public_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let key_file = dir.path().join("jwt.pub.pem");
    std::fs::write(&key_file, ED25519_PUBLIC).expect("write key");
    let hub = TestHub::with_config(|c| {
        c.auth.algorithm = "EdDSA".into();
        c.auth.public_key_file = Some(key_file.clone());
    })
    .await;

    // A properly signed EdDSA token works ...
    let signed = mint(
        &valid_claims(),
        Algorithm::EdDSA,
        &EncodingKey::from_ed_pem(ED25519_PRIVATE.as_bytes()).expect("key"),
    )
    .expect("mint");
    let (_client, hello) = hub.connect_with_token(&signed).await;
    assert_eq!(hello["sub"], "backend");

    // ... an HS256 token using the public key as the HMAC secret does not.
    let confused = mint(
        &valid_claims(),
        Algorithm::HS256,
        &EncodingKey::from_secret(ED25519_PUBLIC.as_bytes()),
    )
    .expect("mint");
    assert_eq!(refused(&hub, &confused).await, "algorithm_not_allowed");
}

#[tokio::test]
async fn expired_token_is_refused() {
    let hub = TestHub::start().await;
    let mut claims = valid_claims();
    claims["exp"] = json!(now_secs() - 60);
    assert_eq!(refused(&hub, &token_with(claims)).await, "expired");
}

#[tokio::test]
async fn not_yet_valid_token_is_refused() {
    let hub = TestHub::start().await;
    let mut claims = valid_claims();
    claims["nbf"] = json!(now_secs() + 600);
    assert_eq!(refused(&hub, &token_with(claims)).await, "not_yet_valid");
}

#[tokio::test]
async fn wrong_audience_is_refused() {
    let hub = TestHub::with_config(|c| c.auth.audience = Some("chanhub".into())).await;
    let mut claims = valid_claims();
    claims["aud"] = json!("someone-else");
    assert_eq!(
        refused(&hub, &token_with(claims.clone())).await,
        "invalid_audience"
    );
    claims["aud"] = json!("chanhub");
    hub.connect_with_token(&token_with(claims)).await;
}

#[tokio::test]
async fn missing_audience_is_refused_when_one_is_configured() {
    let hub = TestHub::with_config(|c| c.auth.audience = Some("chanhub".into())).await;
    assert_eq!(
        refused(&hub, &token_with(valid_claims())).await,
        "invalid_audience"
    );
}

#[tokio::test]
async fn missing_issuer_is_refused_when_one_is_configured() {
    let hub = TestHub::with_config(|c| c.auth.issuer = Some("https://id.example".into())).await;
    assert_eq!(
        refused(&hub, &token_with(valid_claims())).await,
        "invalid_issuer"
    );
}

#[tokio::test]
async fn wrong_issuer_is_refused() {
    let hub = TestHub::with_config(|c| c.auth.issuer = Some("https://id.example".into())).await;
    let mut claims = valid_claims();
    claims["iss"] = json!("https://evil.example");
    assert_eq!(
        refused(&hub, &token_with(claims.clone())).await,
        "invalid_issuer"
    );
    claims["iss"] = json!("https://id.example");
    hub.connect_with_token(&token_with(claims)).await;
}

#[tokio::test]
async fn unknown_client_type_is_refused() {
    let hub = TestHub::start().await;
    let mut claims = valid_claims();
    claims["client_type"] = json!("admin");
    assert_eq!(
        refused(&hub, &token_with(claims)).await,
        "unknown_client_type"
    );
}

#[tokio::test]
async fn missing_client_type_is_refused() {
    let hub = TestHub::start().await;
    let mut claims = valid_claims();
    claims
        .as_object_mut()
        .expect("object")
        .remove("client_type");
    assert_eq!(
        refused(&hub, &token_with(claims)).await,
        "missing_client_type"
    );
}

#[tokio::test]
async fn missing_sub_is_refused() {
    let hub = TestHub::start().await;
    let mut claims = valid_claims();
    claims.as_object_mut().expect("object").remove("sub");
    assert_eq!(refused(&hub, &token_with(claims)).await, "missing_claim");
}

#[tokio::test]
async fn garbage_token_is_refused() {
    let hub = TestHub::start().await;
    assert_eq!(refused(&hub, "not-a-jwt").await, "malformed_token");
}

#[tokio::test]
async fn bearer_header_on_the_upgrade_authenticates() {
    let hub = TestHub::start().await;
    let token = hub.token(ClientType::Worker, "w-1");
    let mut client = WsClient::connect_with_bearer(&hub.ws_url(), &token).await;
    // No auth message: the hub greets first.
    let hello = client.recv().await;
    assert_eq!(hello["type"], "auth:success", "{hello}");
    assert_eq!(hello["sub"], "w-1", "{hello}");
    assert_eq!(hello["clientType"], "worker", "{hello}");
    client.sync().await;
}

#[tokio::test]
async fn query_token_authenticates() {
    let hub = TestHub::start().await;
    let token = hub.token(ClientType::Browser, "ui-1");
    let mut client = WsClient::connect(&format!("{}?token={token}", hub.ws_url())).await;
    let hello = client.recv().await;
    assert_eq!(hello["type"], "auth:success", "{hello}");
    assert_eq!(hello["sub"], "ui-1", "{hello}");
    client.sync().await;
}

#[tokio::test]
async fn bad_query_token_is_refused_and_closed() {
    let hub = TestHub::start().await;
    let mut claims = valid_claims();
    claims["exp"] = json!(now_secs() - 60);
    let url = format!("{}?token={}", hub.ws_url(), token_with(claims));
    let mut client = WsClient::connect(&url).await;
    let (closed, seen) = client.drain_until_closed().await;
    assert_eq!(closed, Closed::Code(4001), "{seen:?}");
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0]["type"], "auth:failed");
    assert_eq!(seen[0]["reason"], "expired");
}

#[tokio::test]
async fn query_token_is_ignored_when_disabled() {
    let hub = TestHub::with_config(|c| {
        c.auth.allow_query_token = false;
        c.auth.timeout = Duration::from_millis(200);
    })
    .await;
    let token = hub.token(ClientType::Browser, "ui-1");
    let mut client = WsClient::connect(&format!("{}?token={token}", hub.ws_url())).await;
    // The hub waits for an auth message; none comes, so it times out.
    let (closed, seen) = client.drain_until_closed().await;
    assert_eq!(closed, Closed::Code(4002), "{seen:?}");
    assert!(seen.is_empty(), "no auth:success expected: {seen:?}");
}

#[tokio::test]
async fn auth_message_still_works_when_query_tokens_are_disabled() {
    let hub = TestHub::with_config(|c| c.auth.allow_query_token = false).await;
    let token = hub.token(ClientType::Browser, "ui-1");
    let mut client = WsClient::connect(&format!("{}?token=ignored", hub.ws_url())).await;
    client.send(json!({"type": "auth", "token": token})).await;
    let hello = client.recv().await;
    assert_eq!(hello["type"], "auth:success", "{hello}");
}

#[tokio::test]
async fn first_message_other_than_auth_is_refused() {
    let hub = TestHub::start().await;
    let mut client = WsClient::connect(&hub.ws_url()).await;
    client.send(json!({"type": "ping", "id": "p-1"})).await;
    let (closed, seen) = client.drain_until_closed().await;
    assert_eq!(closed, Closed::Code(4001), "{seen:?}");
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0]["type"], "auth:failed");
    assert_eq!(seen[0]["reason"], "auth_required");
    assert_eq!(seen[0]["id"], "p-1");
}

#[tokio::test]
async fn no_token_within_the_auth_timeout_closes_with_4002() {
    let hub = TestHub::with_config(|c| c.auth.timeout = Duration::from_millis(200)).await;
    let mut client = WsClient::connect(&hub.ws_url()).await;
    let (closed, seen) = client.drain_until_closed().await;
    assert_eq!(closed, Closed::Code(4002), "{seen:?}");
    assert!(seen.is_empty(), "{seen:?}");
}

#[tokio::test]
async fn token_expiry_closes_with_4003() {
    let hub = TestHub::start().await;
    let mut claims = valid_claims();
    claims["exp"] = json!(now_secs() + 2);
    let (mut client, hello) = hub.connect_with_token(&token_with(claims.clone())).await;
    assert_eq!(
        hello["expiresAt"],
        json!(claims["exp"].as_u64().unwrap() * 1000)
    );
    let (closed, seen) = client.drain_until_closed().await;
    assert_eq!(closed, Closed::Code(4003), "{seen:?}");
    assert!(seen.is_empty(), "{seen:?}");
}

#[tokio::test]
async fn auth_refresh_keeps_the_connection_past_the_old_expiry() {
    let hub = TestHub::start().await;
    let old_exp = now_secs() + 2;
    let short = token_with(json!({"sub": "ui", "client_type": "browser", "exp": old_exp}));
    // Same token, never refreshed: shows when the old token ran out.
    let (mut control, _) = hub.connect_with_token(&short).await;
    let (mut client, _) = hub.connect_with_token(&short).await;

    let new_exp = now_secs() + 3600;
    let fresh = token_with(json!({"sub": "ui", "client_type": "browser", "exp": new_exp}));
    client
        .send(json!({"type": "auth:refresh", "id": "r-1", "token": fresh}))
        .await;
    let reply = client.recv().await;
    assert_eq!(reply["type"], "auth:refreshed", "{reply}");
    assert_eq!(reply["id"], "r-1", "{reply}");
    assert_eq!(reply["expiresAt"], json!(new_exp * 1000), "{reply}");

    // Waits for the old expiry itself: the control connection is closed ...
    assert_eq!(control.closed().await, Closed::Code(4003));
    // ... (and a little past it, so an un-refreshed timer would have fired
    // however the two connections' deadlines were rounded) ...
    let past_old_exp = (old_exp * 1000 + 200).saturating_sub(now_ms());
    tokio::time::sleep(Duration::from_millis(past_old_exp)).await;
    // ... and the refreshed one is still open and served.
    client.sync().await;
    client.subscribe(&["session:*"]).await;
}

#[tokio::test]
async fn refresh_with_another_subject_is_refused_and_the_connection_stays_open() {
    let hub = TestHub::start().await;
    let (mut client, _) = hub.connect(ClientType::Browser, "ui").await;
    let other = hub.token(ClientType::Browser, "someone-else");
    client
        .send(json!({"type": "auth:refresh", "id": "r-1", "token": other}))
        .await;
    let reply = client.recv().await;
    assert_eq!(reply["type"], "auth:failed", "{reply}");
    assert_eq!(reply["reason"], "subject_mismatch", "{reply}");
    assert_eq!(reply["id"], "r-1", "{reply}");
    client.sync().await;
}

#[tokio::test]
async fn refresh_with_another_client_type_is_refused_and_the_connection_stays_open() {
    let hub = TestHub::start().await;
    let (mut client, _) = hub.connect(ClientType::Browser, "ui").await;
    let hub_token = hub.token(ClientType::Hub, "ui");
    client
        .send(json!({"type": "auth:refresh", "id": "r-1", "token": hub_token}))
        .await;
    let reply = client.recv().await;
    assert_eq!(reply["type"], "auth:failed", "{reply}");
    assert_eq!(reply["reason"], "subject_mismatch", "{reply}");
    // Still a browser: publishing stays forbidden.
    client
        .send(json!({"type": "publish", "id": "p", "channel": "a", "data": 1}))
        .await;
    let err = client.recv().await;
    assert_eq!(err["code"], "forbidden", "{err}");
}

#[tokio::test]
async fn refresh_with_an_invalid_token_is_refused_and_the_connection_stays_open() {
    let hub = TestHub::start().await;
    let (mut client, _) = hub.connect(ClientType::Browser, "ui").await;
    let mut claims = json!({"sub": "ui", "client_type": "browser"});
    claims["exp"] = json!(now_secs() - 60);
    client
        .send(json!({"type": "auth:refresh", "id": 5, "token": token_with(claims)}))
        .await;
    let reply = client.recv().await;
    assert_eq!(reply["type"], "auth:failed", "{reply}");
    assert_eq!(reply["reason"], "expired", "{reply}");
    assert_eq!(reply["id"], 5, "{reply}");
    client.sync().await;
}
