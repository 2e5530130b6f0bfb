//! Static keys selected by `kid` (`[[auth.keys]]`) next to the `[auth]`
//! key: RS256, ES256, EdDSA and HS256 by kid, no algorithm confusion
//! between them, which key checks a token without `kid`, and the client
//! type taken from an identity provider's claim name.

mod common;

use chanhub::Config;
use chanhub::auth::KeyConfig;
use common::jwks::{TestKey, key_file, refused};
use common::{SECRET, TestHub, token_with};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

fn public(kid: &str, algorithm: &str, file: &str) -> KeyConfig {
    KeyConfig {
        kid: kid.into(),
        algorithm: algorithm.into(),
        secret: None,
        secret_file: None,
        public_key_file: Some(key_file(file)),
    }
}

fn hmac(kid: &str, secret: &str) -> KeyConfig {
    KeyConfig {
        kid: kid.into(),
        algorithm: "HS256".into(),
        secret: Some(secret.into()),
        secret_file: None,
        public_key_file: None,
    }
}

/// A hub with an RS256, an ES256, an EdDSA and an HS256 key by kid, and no
/// `[auth]` key.
async fn four_keys() -> TestHub {
    TestHub::with_config(|c: &mut Config| {
        c.auth.secret = None;
        c.auth.keys = vec![
            public("rs", "RS256", "rsa-a.pub.pem"),
            public("es", "ES256", "ec-a.pub.pem"),
            public("ed", "EdDSA", "ed-a.pub.pem"),
            hmac("hs", "hs-secret"),
        ];
    })
    .await
}

fn signed(alg: Algorithm, kid: Option<&str>, key: &EncodingKey, claims: Value) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(String::from);
    let mut claims = claims;
    claims["exp"] = json!(common::now_secs() + 3600);
    jsonwebtoken::encode(&header, &claims, key).expect("sign")
}

fn hub_claims(sub: &str) -> Value {
    json!({"sub": sub, "client_type": "hub"})
}

#[tokio::test]
async fn each_static_key_verifies_the_tokens_naming_its_kid() {
    let hub = four_keys().await;
    for key in [
        TestKey::rsa("rsa-a", "rs"),
        TestKey::ec("ec-a", "es"),
        TestKey::ed("ed-a", "ed"),
    ] {
        let (_client, hello) = hub.connect_with_token(&key.hub_token(&key.kid)).await;
        assert_eq!(hello["sub"], key.kid.as_str(), "{hello}");
    }
    let hs = signed(
        Algorithm::HS256,
        Some("hs"),
        &EncodingKey::from_secret(b"hs-secret"),
        hub_claims("hs"),
    );
    let (_client, hello) = hub.connect_with_token(&hs).await;
    assert_eq!(hello["sub"], "hs");
}

#[tokio::test]
async fn a_token_must_name_the_algorithm_of_the_key_its_kid_selects() {
    let hub = four_keys().await;
    // An EC token under the RSA key's kid.
    let ec_as_rs = TestKey::ec("ec-a", "rs").hub_token("x");
    assert_eq!(refused(&hub, &ec_as_rs).await, "algorithm_not_allowed");
    // The classic confusion: HMAC keyed with the RSA public key's PEM.
    let pem = std::fs::read(key_file("rsa-a.pub.pem")).expect("pem");
    let confused = signed(
        Algorithm::HS256,
        Some("rs"),
        &EncodingKey::from_secret(&pem),
        hub_claims("x"),
    );
    assert_eq!(refused(&hub, &confused).await, "algorithm_not_allowed");
    // An Ed25519 token under the HMAC key's kid.
    let ed_as_hs = TestKey::ed("ed-a", "hs").hub_token("x");
    assert_eq!(refused(&hub, &ed_as_hs).await, "algorithm_not_allowed");
    // `none`, with a kid.
    let none = format!(
        "{}.{}.",
        b64(&json!({"alg": "none", "kid": "rs"})),
        b64(&json!({"sub": "x", "client_type": "hub", "exp": common::now_secs() + 60}))
    );
    assert_eq!(refused(&hub, &none).await, "algorithm_not_allowed");
    // The right algorithm, another key.
    let other_rsa = TestKey::rsa("rsa-b", "rs").hub_token("x");
    assert_eq!(refused(&hub, &other_rsa).await, "bad_signature");
}

fn b64(value: &Value) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(value.to_string())
}

#[tokio::test]
async fn with_several_keys_a_token_without_kid_or_with_an_unknown_kid_is_refused() {
    let hub = four_keys().await;
    let rsa = TestKey::rsa("rsa-a", "rs");
    let no_kid = rsa.sign_with_kid(hub_claims("x"), None);
    assert_eq!(refused(&hub, &no_kid).await, "unknown_key");
    let unknown = rsa.sign_with_kid(hub_claims("x"), Some("nope"));
    assert_eq!(refused(&hub, &unknown).await, "unknown_key");
    // The secret TestHub would use is not configured here.
    assert_eq!(
        refused(&hub, &token_with(hub_claims("x"))).await,
        "unknown_key"
    );
}

#[tokio::test]
async fn a_single_static_key_also_checks_tokens_without_kid() {
    let hub = TestHub::with_config(|c: &mut Config| {
        c.auth.secret = None;
        c.auth.keys = vec![public("only", "ES256", "ec-a.pub.pem")];
    })
    .await;
    let key = TestKey::ec("ec-a", "only");
    let (_client, hello) = hub
        .connect_with_token(&key.sign_with_kid(hub_claims("no kid"), None))
        .await;
    assert_eq!(hello["sub"], "no kid");
    let (_client, hello) = hub.connect_with_token(&key.hub_token("kid")).await;
    assert_eq!(hello["sub"], "kid");
    let other_kid = key.sign_with_kid(hub_claims("x"), Some("other"));
    assert_eq!(refused(&hub, &other_kid).await, "unknown_key");
}

#[tokio::test]
async fn the_auth_key_checks_tokens_without_kid_next_to_static_keys() {
    // TestHub keeps its [auth] secret; a rotation adds keys by kid.
    let hub = TestHub::with_config(|c: &mut Config| {
        c.auth.keys = vec![public("next", "RS256", "rsa-a.pub.pem")];
    })
    .await;
    let (_client, hello) = hub
        .connect_with_token(&token_with(hub_claims("legacy")))
        .await;
    assert_eq!(hello["sub"], "legacy");
    let next = TestKey::rsa("rsa-a", "next");
    let (_client, hello) = hub.connect_with_token(&next.hub_token("next")).await;
    assert_eq!(hello["sub"], "next");
    // With key ids configured, a kid must name one of them.
    let stray = signed(
        Algorithm::HS256,
        Some("stray"),
        &EncodingKey::from_secret(SECRET.as_bytes()),
        hub_claims("x"),
    );
    assert_eq!(refused(&hub, &stray).await, "unknown_key");
}

#[tokio::test]
async fn with_only_the_auth_key_a_kid_is_ignored_as_before() {
    let hub = TestHub::start().await;
    let with_kid = signed(
        Algorithm::HS256,
        Some("whatever"),
        &EncodingKey::from_secret(SECRET.as_bytes()),
        hub_claims("kid ignored"),
    );
    let (_client, hello) = hub.connect_with_token(&with_kid).await;
    assert_eq!(hello["sub"], "kid ignored");
    // The [auth] key is HS256: other algorithms are refused before any key.
    let rsa = TestKey::rsa("rsa-a", "whatever").hub_token("x");
    assert_eq!(refused(&hub, &rsa).await, "algorithm_not_allowed");
}

#[tokio::test]
async fn the_client_type_comes_from_a_namespaced_claim() {
    // Auth0 requires custom claims to be namespaced with a URL.
    const CLAIM: &str = "https://chanhub.example.com/client_type";
    let hub = TestHub::with_config(|c: &mut Config| {
        c.auth.client_type_claim = CLAIM.into();
    })
    .await;
    let (_client, hello) = hub
        .connect_with_token(&token_with(json!({"sub": "w", CLAIM: "worker"})))
        .await;
    assert_eq!(hello["clientType"], "worker");
    // The default name means nothing here.
    let plain = token_with(json!({"sub": "w", "client_type": "hub"}));
    assert_eq!(refused(&hub, &plain).await, "missing_client_type");
}

#[tokio::test]
async fn the_client_type_comes_from_a_nested_claim_or_a_roles_array() {
    let nested = TestHub::with_config(|c: &mut Config| {
        c.auth.client_type_claim = "chanhub.client_type".into();
    })
    .await;
    let (_client, hello) = nested
        .connect_with_token(&token_with(
            json!({"sub": "b", "chanhub": {"client_type": "browser"}}),
        ))
        .await;
    assert_eq!(hello["clientType"], "browser");

    let roles = TestHub::with_config(|c: &mut Config| {
        c.auth.client_type_claim = "roles".into();
    })
    .await;
    let (_client, hello) = roles
        .connect_with_token(&token_with(
            json!({"sub": "w", "roles": ["reader", "worker"]}),
        ))
        .await;
    assert_eq!(hello["clientType"], "worker");
    let two = token_with(json!({"sub": "x", "roles": ["browser", "hub"]}));
    assert_eq!(refused(&roles, &two).await, "unknown_client_type");
    let none = token_with(json!({"sub": "x", "roles": ["reader"]}));
    assert_eq!(refused(&roles, &none).await, "missing_client_type");
}
