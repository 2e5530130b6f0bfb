//! Keys from an identity provider: the hub pointed at a JWKS endpoint the
//! test serves on 127.0.0.1:0 (`common::jwks::JwksServer`), whose key set
//! the test changes while the hub runs. Rotation without restart, an
//! unknown `kid`, the endpoint down (at start and later), a key removed
//! from the set, and concurrent tokens sharing one fetch.

mod common;

use std::time::Duration;

use chanhub::Config;
use common::jwks::{JwksServer, TestKey, jwks_refreshes, readyz, refused, until};
use common::{TestHub, WsClient};
use serde_json::json;

/// A hub that trusts only the JWKS at `url` (no `[auth]` secret), fetching
/// it again at most once per `min_refetch` and every `interval`.
async fn hub(url: &str, min_refetch: Duration, interval: Duration) -> TestHub {
    let url = url.to_string();
    TestHub::with_config(move |c: &mut Config| {
        c.auth.secret = None;
        c.auth.jwks_url = Some(url);
        c.auth.jwks_min_refetch = min_refetch;
        c.auth.jwks_refresh_interval = interval;
    })
    .await
}

const HOUR: Duration = Duration::from_secs(3600);

async fn ready(hub: &TestHub) {
    until("/readyz to answer 200", || async {
        readyz(hub).await.0 == 200
    })
    .await;
}

#[tokio::test]
async fn tokens_signed_by_any_key_of_the_set_are_accepted() {
    let (rsa, ec, ed) = (
        TestKey::rsa("rsa-a", "rsa-1"),
        TestKey::ec("ec-a", "ec-1"),
        TestKey::ed("ed-a", "ed-1"),
    );
    let jwks = JwksServer::start(&[&rsa, &ec, &ed]).await;
    let hub = hub(&jwks.url, HOUR, HOUR).await;
    ready(&hub).await;
    assert_eq!(readyz(&hub).await, (200, "ready".into()));
    for key in [&rsa, &ec, &ed] {
        let (_client, hello) = hub.connect_with_token(&key.hub_token(&key.kid)).await;
        assert_eq!(hello["sub"], key.kid.as_str(), "{hello}");
        assert_eq!(hello["clientType"], "hub");
    }
    // Verification reads the cache: one fetch, at start.
    assert_eq!(jwks.fetches(), 1);
    assert_eq!(jwks_refreshes(&hub, "ok").await, 1);
    let metrics = reqwest::get(hub.http_url("/metrics"))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(
        metrics.contains("chanhub_jwks_refresh_total{result=\"ok\"} 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_new_key_is_accepted_without_restart_and_the_retired_one_is_refused() {
    let (old, new) = (
        TestKey::rsa("rsa-a", "2025-01"),
        TestKey::rsa("rsa-b", "2025-02"),
    );
    let jwks = JwksServer::start(&[&old]).await;
    let hub = hub(&jwks.url, Duration::ZERO, HOUR).await;
    ready(&hub).await;
    let (_kept, _) = hub.connect_with_token(&old.hub_token("old")).await;

    // The provider rotates: the new key appears, the old one is retired.
    jwks.set(&[&new]);
    // An unknown kid makes the hub fetch the set again.
    let (_client, hello) = hub.connect_with_token(&new.hub_token("new")).await;
    assert_eq!(hello["sub"], "new");
    assert_eq!(jwks.fetches(), 2);
    // That fetch replaced the set: the old key no longer verifies.
    assert_eq!(refused(&hub, &old.hub_token("old")).await, "unknown_key");
    // The old key's signature under the new kid is not the new key's.
    let impostor = TestKey::rsa("rsa-a", "2025-02");
    assert_eq!(
        refused(&hub, &impostor.hub_token("x")).await,
        "bad_signature"
    );
}

#[tokio::test]
async fn an_unknown_kid_is_refused_and_fetches_at_most_once_per_floor() {
    let known = TestKey::ec("ec-a", "known");
    let stranger = TestKey::rsa("rsa-a", "stranger");
    let jwks = JwksServer::start(&[&known]).await;
    let hub = hub(&jwks.url, HOUR, HOUR).await;
    ready(&hub).await;
    assert_eq!(jwks.fetches(), 1);
    for _ in 0..3 {
        assert_eq!(refused(&hub, &stranger.hub_token("x")).await, "unknown_key");
    }
    // Within jwks_min_refetch of the last fetch: no fetch at all.
    assert_eq!(jwks.fetches(), 1);
    // Without a kid there is no default key when the keys come from a JWKS.
    let no_kid = known.sign_with_kid(json!({"sub": "a", "client_type": "hub"}), None);
    assert_eq!(refused(&hub, &no_kid).await, "unknown_key");
    // A known kid with another key's signature, and the key's kid under
    // another algorithm.
    let forged = stranger.sign_with_kid(json!({"sub": "a", "client_type": "hub"}), Some("known"));
    assert_eq!(refused(&hub, &forged).await, "algorithm_not_allowed");
    let other_ec = TestKey::ec("ec-a", "known");
    let (_ok, _) = hub
        .connect_with_token(&other_ec.hub_token("same key"))
        .await;
    assert_eq!(jwks.fetches(), 1);
}

#[tokio::test]
async fn an_unknown_kid_fetches_again_when_the_floor_has_passed() {
    let known = TestKey::rsa("rsa-a", "known");
    let stranger = TestKey::rsa("rsa-b", "stranger");
    let jwks = JwksServer::start(&[&known]).await;
    let hub = hub(&jwks.url, Duration::ZERO, HOUR).await;
    ready(&hub).await;
    assert_eq!(refused(&hub, &stranger.hub_token("x")).await, "unknown_key");
    assert_eq!(refused(&hub, &stranger.hub_token("x")).await, "unknown_key");
    // One fetch at start, one per refused token (the floor is zero).
    assert_eq!(jwks.fetches(), 3);
    // A token without kid has nothing to learn from the provider.
    let no_kid = known.sign_with_kid(json!({"sub": "a", "client_type": "hub"}), None);
    assert_eq!(refused(&hub, &no_kid).await, "unknown_key");
    assert_eq!(jwks.fetches(), 3);
}

#[tokio::test]
async fn when_the_endpoint_is_down_the_cached_keys_keep_working() {
    let (cached, later) = (
        TestKey::rsa("rsa-a", "cached"),
        TestKey::ec("ec-a", "later"),
    );
    let jwks = JwksServer::start(&[&cached]).await;
    let hub = hub(&jwks.url, Duration::ZERO, Duration::from_millis(20)).await;
    ready(&hub).await;

    jwks.set_down(true);
    jwks.set(&[&cached, &later]);
    let failed = jwks_refreshes(&hub, "error").await;
    until("a failed refresh", || async {
        jwks_refreshes(&hub, "error").await > failed
    })
    .await;
    // The set fetched before still verifies, the hub stays ready, and a key
    // the provider added meanwhile cannot be learnt.
    let (_client, hello) = hub.connect_with_token(&cached.hub_token("still")).await;
    assert_eq!(hello["sub"], "still");
    assert_eq!(readyz(&hub).await, (200, "ready".into()));
    assert_eq!(refused(&hub, &later.hub_token("new")).await, "unknown_key");

    // Back up: the next refresh brings the new key.
    jwks.set_down(false);
    let ok = jwks_refreshes(&hub, "ok").await;
    until("a refresh after the outage", || async {
        jwks_refreshes(&hub, "ok").await > ok
    })
    .await;
    let (_client, hello) = hub.connect_with_token(&later.hub_token("new")).await;
    assert_eq!(hello["sub"], "new");
}

#[tokio::test]
async fn a_hub_whose_provider_is_down_at_start_is_not_ready_until_the_first_fetch() {
    let key = TestKey::ed("ed-a", "ed");
    let jwks = JwksServer::start(&[&key]).await;
    jwks.set_down(true);
    let hub = hub(&jwks.url, Duration::ZERO, Duration::from_millis(20)).await;
    until("a failed first fetch", || async {
        jwks_refreshes(&hub, "error").await > 0
    })
    .await;
    assert_eq!(readyz(&hub).await, (503, "keys_unavailable".into()));
    assert_eq!(refused(&hub, &key.hub_token("early")).await, "unknown_key");

    jwks.set_down(false);
    ready(&hub).await;
    let (_client, hello) = hub.connect_with_token(&key.hub_token("later")).await;
    assert_eq!(hello["sub"], "later");
}

#[tokio::test]
async fn an_unreachable_provider_leaves_the_static_keys_working() {
    // A port nothing listens on: every fetch is refused.
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("addr").port()
    };
    let hs = TestKey::rsa("rsa-b", "unused");
    let hub = TestHub::with_config(move |c: &mut Config| {
        c.auth.jwks_url = Some(format!("http://127.0.0.1:{port}/jwks.json"));
        c.auth.jwks_refresh_interval = Duration::from_millis(20);
        c.auth.jwks_min_refetch = Duration::ZERO;
        // The [auth] secret stays configured: tokens without kid use it.
    })
    .await;
    until("a failed fetch", || async {
        jwks_refreshes(&hub, "error").await > 0
    })
    .await;
    assert_eq!(readyz(&hub).await, (503, "keys_unavailable".into()));
    let (_client, hello) = hub.connect(chanhub::auth::ClientType::Hub, "local").await;
    assert_eq!(hello["sub"], "local");
    assert_eq!(refused(&hub, &hs.hub_token("idp")).await, "unknown_key");
}

#[tokio::test]
async fn a_key_removed_from_the_set_stops_verifying_after_the_interval_refresh() {
    let (a, b) = (TestKey::rsa("rsa-a", "a"), TestKey::rsa("rsa-b", "b"));
    let jwks = JwksServer::start(&[&a, &b]).await;
    // The floor keeps unknown kids from fetching: only the interval does.
    let hub = hub(
        &jwks.url,
        Duration::from_millis(20),
        Duration::from_millis(20),
    )
    .await;
    ready(&hub).await;
    let (mut connected, _) = hub.connect_with_token(&b.hub_token("b")).await;

    jwks.set(&[&a]);
    // A fetch in flight may still have read the old set: wait for two.
    let ok = jwks_refreshes(&hub, "ok").await;
    until("two refreshes after the change", || async {
        jwks_refreshes(&hub, "ok").await >= ok + 2
    })
    .await;
    assert_eq!(refused(&hub, &b.hub_token("b")).await, "unknown_key");
    let (_client, hello) = hub.connect_with_token(&a.hub_token("a")).await;
    assert_eq!(hello["sub"], "a");
    // A connection authenticated before keeps its session, but cannot
    // refresh with a token of the removed key.
    connected
        .send(json!({"type": "auth:refresh", "id": "r", "token": b.hub_token("b")}))
        .await;
    let reply = connected.recv_type("auth:failed").await;
    assert_eq!(reply["reason"], "unknown_key", "{reply}");
    connected.sync().await;
}

#[tokio::test]
async fn tokens_waiting_for_the_same_fetch_share_it() {
    let key = TestKey::ec("ec-a", "k");
    // The first fetch (at start) is held until every client has asked.
    let jwks = JwksServer::start_holding(&[&key]).await;
    let hub = hub(&jwks.url, HOUR, HOUR).await;
    let mut clients = Vec::new();
    for i in 0..8 {
        let mut client = WsClient::connect(&hub.ws_url()).await;
        client
            .send(json!({"type": "auth", "token": key.hub_token(&format!("c{i}"))}))
            .await;
        clients.push(client);
    }
    jwks.release_first();
    for mut client in clients {
        let reply = client.recv().await;
        assert_eq!(reply["type"], "auth:success", "{reply}");
    }
    // The start fetch, and at most one a token began before it: never one
    // per token (with a floor of an hour, a token that did not share a
    // fetch would have been refused).
    assert!(jwks.fetches() <= 2, "{} fetches", jwks.fetches());
}

#[tokio::test]
async fn keys_a_hub_cannot_use_are_left_out_of_the_set() {
    let good = TestKey::rsa("rsa-a", "good");
    let jwks = JwksServer::start(&[]).await;
    let mut enc = TestKey::rsa("rsa-b", "enc").jwk;
    enc["use"] = json!("enc");
    let mut mislabelled = TestKey::rsa("rsa-b", "mislabelled").jwk;
    mislabelled["alg"] = json!("ES256");
    let mut no_kid = TestKey::rsa("rsa-b", "x").jwk;
    no_kid.as_object_mut().expect("object").remove("kid");
    let hmac = json!({"kty": "oct", "kid": "hmac", "k": "c2VjcmV0", "alg": "HS256"});
    let unknown = json!({"kty": "XYZ", "kid": "xyz"});
    jwks.set_raw(vec![
        enc,
        mislabelled,
        no_kid,
        hmac,
        unknown,
        good.jwk.clone(),
    ]);
    let hub = hub(&jwks.url, HOUR, HOUR).await;
    ready(&hub).await;
    // The one good key survives the others.
    let (_client, hello) = hub.connect_with_token(&good.hub_token("good")).await;
    assert_eq!(hello["sub"], "good");
    // An HMAC key published in a JWKS is never trusted: anyone could sign.
    let forged = jsonwebtoken::encode(
        &{
            let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
            h.kid = Some("hmac".into());
            h
        },
        &json!({"sub": "x", "client_type": "hub", "exp": common::now_secs() + 60}),
        &jsonwebtoken::EncodingKey::from_secret(b"secret"),
    )
    .expect("sign");
    assert_eq!(refused(&hub, &forged).await, "algorithm_not_allowed");
    let enc_token = TestKey::rsa("rsa-b", "enc").hub_token("enc");
    assert_eq!(refused(&hub, &enc_token).await, "unknown_key");
    let mislabelled_token = TestKey::rsa("rsa-b", "mislabelled").hub_token("m");
    assert_eq!(refused(&hub, &mislabelled_token).await, "unknown_key");
}

#[tokio::test]
async fn sse_and_the_http_api_check_jwks_tokens_too() {
    let (old, new) = (TestKey::rsa("rsa-a", "old"), TestKey::ed("ed-a", "new"));
    let jwks = JwksServer::start(&[&old]).await;
    let hub = hub(&jwks.url, Duration::ZERO, HOUR).await;
    ready(&hub).await;
    jwks.set(&[&old, &new]);
    let http = reqwest::Client::new();
    // A publish with a token whose kid the cache lacks: fetched, accepted.
    let published = http
        .post(hub.http_url("/api/publish"))
        .bearer_auth(new.hub_token("backend"))
        .json(&json!({"channel": "news:1", "data": {"n": 1}}))
        .send()
        .await
        .expect("publish");
    assert_eq!(published.status(), 200, "{:?}", published.text().await);
    let stream = http
        .get(hub.http_url("/api/stream?channels=news:*"))
        .bearer_auth(old.hub_token("watcher"))
        .send()
        .await
        .expect("stream");
    assert_eq!(stream.status(), 200);
    let stranger = TestKey::rsa("rsa-b", "stranger");
    let refused = http
        .get(hub.http_url("/api/stream?channels=news:*"))
        .bearer_auth(stranger.hub_token("x"))
        .send()
        .await
        .expect("stream");
    assert_eq!(refused.status(), 401);
    let body: serde_json::Value = refused.json().await.expect("json");
    assert_eq!(body["error"]["code"], "unknown_key", "{body}");
}
