//! Keys for the key-selection tests: the throwaway keys of `tests/keys/`
//! with a kid, tokens signed by them, and a JWKS endpoint served by the
//! test on 127.0.0.1:0 whose key set, health and first answer the test
//! controls.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use super::now_secs;

/// A file of `tests/keys/`.
pub fn key_file(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/keys")
        .join(name)
}

/// A test key pair with a kid: signs tokens, and is published as a JWK.
#[derive(Clone)]
pub struct TestKey {
    pub kid: String,
    pub alg: Algorithm,
    pub private: EncodingKey,
    /// The public half as a JWK (with `kid`, `alg`, `use`).
    pub jwk: Value,
}

impl TestKey {
    /// `tests/keys/<name>.pem` as an RS256 key.
    pub fn rsa(name: &str, kid: &str) -> TestKey {
        let pem = std::fs::read(key_file(&format!("{name}.pem"))).expect("key file");
        let private = EncodingKey::from_rsa_pem(&pem).expect("RSA key");
        let jwk = Jwk::from_encoding_key(&private, Algorithm::RS256).expect("jwk");
        TestKey::new(kid, Algorithm::RS256, private, jwk_json(&jwk))
    }

    /// `tests/keys/<name>.pem` as an ES256 key.
    pub fn ec(name: &str, kid: &str) -> TestKey {
        let pem = std::fs::read(key_file(&format!("{name}.pem"))).expect("key file");
        let private = EncodingKey::from_ec_pem(&pem).expect("EC key");
        let jwk = Jwk::from_encoding_key(&private, Algorithm::ES256).expect("jwk");
        TestKey::new(kid, Algorithm::ES256, private, jwk_json(&jwk))
    }

    /// `tests/keys/<name>.pem` as an EdDSA key (jsonwebtoken cannot write an
    /// Ed25519 JWK: `x` is the last 32 bytes of the public key's DER).
    pub fn ed(name: &str, kid: &str) -> TestKey {
        let pem = std::fs::read(key_file(&format!("{name}.pem"))).expect("key file");
        let private = EncodingKey::from_ed_pem(&pem).expect("Ed25519 key");
        let public = std::fs::read_to_string(key_file(&format!("{name}.pub.pem"))).expect("key");
        let der: String = public.lines().filter(|l| !l.starts_with("-----")).collect();
        let der = STANDARD.decode(der).expect("PEM body");
        let x = URL_SAFE_NO_PAD.encode(&der[der.len() - 32..]);
        let jwk = json!({"kty": "OKP", "crv": "Ed25519", "x": x, "alg": "EdDSA"});
        TestKey::new(kid, Algorithm::EdDSA, private, jwk)
    }

    fn new(kid: &str, alg: Algorithm, private: EncodingKey, mut jwk: Value) -> TestKey {
        jwk["kid"] = json!(kid);
        jwk["use"] = json!("sig");
        TestKey {
            kid: kid.to_string(),
            alg,
            private,
            jwk,
        }
    }

    /// A token for `claims` (with `exp` an hour ahead unless given),
    /// signed by this key, its header naming the kid.
    pub fn sign(&self, claims: Value) -> String {
        self.sign_with_kid(claims, Some(&self.kid))
    }

    /// As [`TestKey::sign`], the header naming `kid` (or none).
    pub fn sign_with_kid(&self, mut claims: Value, kid: Option<&str>) -> String {
        if claims.get("exp").is_none() {
            claims["exp"] = json!(now_secs() + 3600);
        }
        let mut header = Header::new(self.alg);
        header.kid = kid.map(String::from);
        jsonwebtoken::encode(&header, &claims, &self.private).expect("sign")
    }

    /// A hub token for `sub`.
    pub fn hub_token(&self, sub: &str) -> String {
        self.sign(json!({"sub": sub, "client_type": "hub"}))
    }
}

fn jwk_json(jwk: &Jwk) -> Value {
    serde_json::to_value(jwk).expect("jwk json")
}

/// What the endpoint serves, shared with its handler.
#[derive(Default)]
struct Served {
    /// The JWKs in the set.
    keys: Mutex<Vec<Value>>,
    /// Answer 503 instead of the set.
    down: AtomicBool,
    /// Requests answered (or held) so far.
    fetches: AtomicUsize,
    /// Hold the first request until [`JwksServer::release_first`].
    hold_first: AtomicBool,
    /// Wakes the held first request.
    release: Notify,
}

/// A JWKS endpoint on 127.0.0.1:0; stops when dropped.
pub struct JwksServer {
    /// `http://127.0.0.1:<port>/jwks.json`.
    pub url: String,
    served: Arc<Served>,
    task: JoinHandle<()>,
}

impl JwksServer {
    /// Serves `keys`.
    pub async fn start(keys: &[&TestKey]) -> JwksServer {
        let served = Arc::new(Served::default());
        let server = JwksServer::serve(Arc::clone(&served)).await;
        server.set(keys);
        server
    }

    /// Serves `keys`, but holds the first request until
    /// [`JwksServer::release_first`].
    pub async fn start_holding(keys: &[&TestKey]) -> JwksServer {
        let server = JwksServer::start(keys).await;
        server.served.hold_first.store(true, Ordering::SeqCst);
        server
    }

    async fn serve(served: Arc<Served>) -> JwksServer {
        let app = Router::new()
            .route("/jwks.json", get(jwks))
            .with_state(Arc::clone(&served));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        JwksServer {
            url: format!("http://{addr}/jwks.json"),
            served,
            task,
        }
    }

    /// Replaces the served set.
    pub fn set(&self, keys: &[&TestKey]) {
        *self.served.keys.lock().expect("lock") = keys.iter().map(|k| k.jwk.clone()).collect();
    }

    /// Replaces the served set with raw JWKs.
    pub fn set_raw(&self, keys: Vec<Value>) {
        *self.served.keys.lock().expect("lock") = keys;
    }

    /// Answers 503 (`true`) or the set again.
    pub fn set_down(&self, down: bool) {
        self.served.down.store(down, Ordering::SeqCst);
    }

    /// Requests so far.
    pub fn fetches(&self) -> usize {
        self.served.fetches.load(Ordering::SeqCst)
    }

    /// Lets the held first request be answered.
    pub fn release_first(&self) {
        self.served.hold_first.store(false, Ordering::SeqCst);
        self.served.release.notify_one();
    }
}

impl Drop for JwksServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn jwks(State(served): State<Arc<Served>>) -> Response {
    let first = served.fetches.fetch_add(1, Ordering::SeqCst) == 0;
    if first && served.hold_first.load(Ordering::SeqCst) {
        // `notify_one` keeps a permit when nobody waits yet.
        served.release.notified().await;
    }
    if served.down.load(Ordering::SeqCst) {
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    }
    let keys = served.keys.lock().expect("lock").clone();
    axum::Json(json!({ "keys": keys })).into_response()
}

/// Presents `token` and returns the `auth:failed` reason (the connection is
/// then closed with 4001).
pub async fn refused(hub: &super::TestHub, token: &str) -> String {
    let mut client = super::WsClient::connect(&hub.ws_url()).await;
    client.send(json!({"type": "auth", "token": token})).await;
    let (closed, seen) = client.drain_until_closed().await;
    assert_eq!(closed, super::Closed::Code(4001), "messages: {seen:?}");
    assert_eq!(seen[0]["type"], "auth:failed", "{seen:?}");
    seen[0]["reason"].as_str().expect("reason").to_string()
}

/// Waits (at most [`super::WAIT`]) until `check` holds, polling.
pub async fn until<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + super::WAIT;
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

/// `GET /readyz`: the status code and the body's `status`.
pub async fn readyz(hub: &super::TestHub) -> (u16, String) {
    let response = reqwest::get(hub.http_url("/readyz")).await.expect("readyz");
    let status = response.status().as_u16();
    let body: Value = response.json().await.expect("json");
    (status, body["status"].as_str().unwrap_or("").to_string())
}

/// JWKS fetches so far with `result` (`ok` or `error`), from `/api/stats`.
pub async fn jwks_refreshes(hub: &super::TestHub, result: &str) -> u64 {
    hub.hub
        .stats()
        .await
        .jwks_refreshes
        .get(result)
        .copied()
        .unwrap_or(0)
}
