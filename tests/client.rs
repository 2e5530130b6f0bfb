//! The Rust client against a real hub on 127.0.0.1:0: requests and their
//! answers, events, authentication failures, reconnect and resubscribe
//! across a hub restart on the same address, and close.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use chanhub::auth::{ClientType, mint};
use chanhub::client::{
    Backoff, Client, ClientError, ClientOptions, ClosedReason, ConnectionState, Event, Events,
    TokenSource,
};
use chanhub::error::{AuthError, ErrorCode};
use common::{RestartedHub, TestHub, WAIT, now_secs, token_with};
use futures::StreamExt;
use jsonwebtoken::{Algorithm, EncodingKey};
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// Options for tests: fast reconnects, and a request timeout that only
/// guards against hangs.
fn options(url: &str, token: impl Into<TokenSource>) -> ClientOptions {
    ClientOptions {
        backoff: Backoff {
            base: Duration::from_millis(10),
            cap: Duration::from_millis(50),
        },
        request_timeout: WAIT,
        connect_timeout: WAIT,
        ..ClientOptions::with_token_source(url, token.into())
    }
}

async fn connect(hub: &TestHub, ty: ClientType, sub: &str) -> (Client, Events) {
    Client::connect(options(&hub.ws_url(), hub.token(ty, sub)))
        .await
        .expect("connect")
}

async fn next_event(events: &mut Events) -> Event {
    tokio::time::timeout(WAIT, events.next_event())
        .await
        .expect("timed out waiting for an event")
        .expect("events ended")
}

/// Waits (bounded) until the state satisfies `ok`; returns it.
async fn wait_state(
    state: &mut watch::Receiver<ConnectionState>,
    ok: impl FnMut(&ConnectionState) -> bool,
) -> ConnectionState {
    tokio::time::timeout(WAIT, state.wait_for(ok))
        .await
        .expect("timed out waiting for a connection state")
        .expect("state sender dropped")
        .clone()
}

fn is_connected(state: &ConnectionState) -> bool {
    matches!(state, ConnectionState::Connected { .. })
}

/// Stops a test hub and waits for its server task to finish.
async fn stop(hub: &mut TestHub) {
    let server = hub.begin_shutdown();
    tokio::time::timeout(WAIT, server)
        .await
        .expect("hub did not stop")
        .expect("server task")
        .expect("server result");
}

#[tokio::test]
async fn subscriber_receives_what_another_client_publishes() {
    let hub = TestHub::start().await;
    let (ui, mut events) = connect(&hub, ClientType::Browser, "ui").await;
    assert_eq!(ui.auth().client_type, ClientType::Browser);
    assert_eq!(ui.auth().sub, "ui");
    let subscribed = ui.subscribe(&["session:*"]).await.expect("subscribe");
    assert_eq!(subscribed.accepted, vec!["session:*".to_string()]);
    assert!(subscribed.rejected.is_empty());

    let (backend, _backend_events) = connect(&hub, ClientType::Hub, "backend").await;
    let ack = backend
        .publish("session:42", json!({"hello": 1}))
        .await
        .expect("publish");
    assert_eq!(ack.delivered, 1);
    assert_eq!(ack.channel, "session:42");

    let event = next_event(&mut events).await;
    assert_eq!(event.channel, "session:42");
    assert_eq!(event.data, json!({"hello": 1}));
    assert_eq!(event.id, ack.event_id);
}

#[tokio::test]
async fn events_arrive_in_order_through_the_stream() {
    let hub = TestHub::start().await;
    let (client, mut events) = connect(&hub, ClientType::Hub, "loop").await;
    client.subscribe(&["count"]).await.expect("subscribe");
    for n in 0..50 {
        client.publish("count", json!(n)).await.expect("publish");
    }
    for n in 0..50 {
        let event = tokio::time::timeout(WAIT, events.next())
            .await
            .expect("timed out")
            .expect("events ended");
        assert_eq!(event.data, json!(n));
    }
}

#[tokio::test]
async fn subscribe_reports_accepted_and_rejected_patterns() {
    let hub = TestHub::start().await;
    let (client, _events) = connect(&hub, ClientType::Browser, "ui").await;
    let subscribed = client
        .subscribe(&["session:*", "session::broken"])
        .await
        .expect("subscribe");
    assert_eq!(subscribed.accepted, vec!["session:*".to_string()]);
    assert_eq!(subscribed.rejected.len(), 1, "{subscribed:?}");
    assert_eq!(subscribed.rejected[0].channel, "session::broken");
    assert_eq!(subscribed.rejected[0].code, ErrorCode::InvalidChannel);
}

#[tokio::test]
async fn forbidden_publish_is_refused() {
    let hub = TestHub::start().await;
    let (browser, _events) = connect(&hub, ClientType::Browser, "ui").await;
    let err = browser
        .publish("session:1", json!(1))
        .await
        .expect_err("browsers may not publish");
    assert!(
        matches!(
            err,
            ClientError::Refused {
                code: ErrorCode::Forbidden,
                ..
            }
        ),
        "{err:?}"
    );
    // The connection stays usable.
    browser.ping().await.expect("ping after a refusal");
}

#[tokio::test]
async fn unsubscribe_stops_delivery() {
    let hub = TestHub::start().await;
    let (client, _events) = connect(&hub, ClientType::Hub, "h").await;
    client
        .subscribe(&["session:*", "job:*"])
        .await
        .expect("subscribe");
    let dropped = client
        .unsubscribe(&["session:*", "never:*"])
        .await
        .expect("unsubscribe");
    assert_eq!(dropped, vec!["session:*".to_string()]);
    let ack = client
        .publish("session:1", json!(1))
        .await
        .expect("publish");
    assert_eq!(ack.delivered, 0);
    let ack = client.publish("job:1", json!(1)).await.expect("publish");
    assert_eq!(ack.delivered, 1);
}

#[tokio::test]
async fn bad_tokens_fail_connect_with_the_reason() {
    let hub = TestHub::start().await;

    let wrong_key = mint(
        &json!({"client_type": "hub", "sub": "x", "exp": now_secs() + 3600}),
        Algorithm::HS256,
        &EncodingKey::from_secret(b"some-other-secret-0123456789"),
    )
    .expect("mint");
    let expired = token_with(json!({"client_type": "hub", "sub": "x", "exp": now_secs() - 3600}));
    let cases = [
        (wrong_key, AuthError::BadSignature),
        (expired, AuthError::Expired),
        ("not-a-jwt".to_string(), AuthError::MalformedToken),
    ];
    for (token, expected) in cases {
        let err = Client::connect(options(&hub.ws_url(), token))
            .await
            .expect_err("bad token must not connect");
        match err {
            ClientError::AuthFailed { reason, .. } => assert_eq!(reason, expected),
            other => panic!("expected AuthFailed({expected:?}), got {other:?}"),
        }
    }
}

#[tokio::test]
async fn unreachable_hub_fails_connect() {
    // A port that was free a moment ago; nothing listens on it now.
    let addr = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind")
        .local_addr()
        .expect("addr");
    let err = Client::connect(options(&format!("ws://{addr}/ws"), "token"))
        .await
        .expect_err("nothing listens");
    assert!(matches!(err, ClientError::Connect(_)), "{err:?}");
}

#[tokio::test]
async fn failing_token_provider_fails_connect() {
    let hub = TestHub::start().await;
    let source = TokenSource::provider(|| Err("vault unreachable".into()));
    let err = Client::connect(options(&hub.ws_url(), source))
        .await
        .expect_err("no token");
    assert_eq!(err, ClientError::Token("vault unreachable".into()));
}

#[tokio::test]
async fn reconnects_and_resubscribes_after_a_hub_restart() {
    let mut first = TestHub::start().await;
    let addr = first.addr;
    let config = first.hub.config().clone();

    let calls = Arc::new(AtomicUsize::new(0));
    let token = first.token(ClientType::Browser, "ui");
    let counter = Arc::clone(&calls);
    let source = TokenSource::provider(move || {
        counter.fetch_add(1, Ordering::SeqCst);
        Ok(token.clone())
    });
    let (client, mut events) = Client::connect(options(&first.ws_url(), source))
        .await
        .expect("connect");
    client.subscribe(&["session:*"]).await.expect("subscribe");
    let mut state = client.state();

    // The hub restarts: the client is told 1012 and starts reconnecting.
    stop(&mut first).await;
    wait_state(&mut state, |s| !is_connected(s)).await;

    // A request made while disconnected waits for the reconnection.
    let waiting = tokio::spawn({
        let client = client.clone();
        async move { client.ping().await }
    });

    let second = RestartedHub::start(addr, config).await;
    let back = wait_state(&mut state, is_connected).await;
    assert!(
        calls.load(Ordering::SeqCst) >= 2,
        "token provider asked again"
    );
    let ConnectionState::Connected { client_id } = back else {
        unreachable!("waited for Connected");
    };
    assert_eq!(client.auth().client_id, client_id);
    tokio::time::timeout(WAIT, waiting)
        .await
        .expect("queued request timed out")
        .expect("task")
        .expect("ping after reconnect");

    // Connected means resubscribed: an event published now arrives.
    let (publisher, _publisher_events) = Client::connect(options(
        &format!("ws://{addr}/ws"),
        first.token(ClientType::Hub, "backend"),
    ))
    .await
    .expect("connect to the new hub");
    let ack = publisher
        .publish("session:7", json!({"after": "restart"}))
        .await
        .expect("publish");
    assert_eq!(ack.delivered, 1, "the client resubscribed");
    let event = next_event(&mut events).await;
    assert_eq!(event.channel, "session:7");
    assert_eq!(event.data, json!({"after": "restart"}));
    assert_eq!(second.hub.connection_count(), 2);
}

#[tokio::test]
async fn static_token_refused_on_reconnect_closes_the_client() {
    let mut first = TestHub::start().await;
    let addr = first.addr;
    let mut config = first.hub.config().clone();
    // The restarted hub has a new secret: the old token is no longer valid.
    config.auth.secret = Some("a-rotated-secret-0123456789".into());
    let (client, mut events) = connect(&first, ClientType::Browser, "ui").await;
    let mut state = client.state();

    stop(&mut first).await;
    let _second = RestartedHub::start(addr, config).await;
    let closed = wait_state(&mut state, |s| matches!(s, ConnectionState::Closed { .. })).await;
    match closed {
        ConnectionState::Closed {
            reason: ClosedReason::AuthFailed { reason, .. },
        } => assert_eq!(reason, AuthError::BadSignature),
        other => panic!("expected Closed(AuthFailed), got {other:?}"),
    }
    let end = tokio::time::timeout(WAIT, events.next_event())
        .await
        .expect("events did not end");
    assert!(end.is_none());
    assert_eq!(client.ping().await, Err(ClientError::Closed));
}

#[tokio::test]
async fn without_reconnect_a_dropped_connection_closes_the_client() {
    let mut hub = TestHub::start().await;
    let mut options = options(&hub.ws_url(), hub.token(ClientType::Hub, "h"));
    options.reconnect = false;
    let (client, _events) = Client::connect(options).await.expect("connect");
    let mut state = client.state();
    stop(&mut hub).await;
    let closed = wait_state(&mut state, |s| matches!(s, ConnectionState::Closed { .. })).await;
    match closed {
        ConnectionState::Closed {
            reason: ClosedReason::ConnectionLost { code, .. },
        } => assert_eq!(code, Some(1012), "service restart"),
        other => panic!("expected Closed(ConnectionLost), got {other:?}"),
    }
}

#[tokio::test]
async fn requests_time_out_while_the_hub_is_away() {
    let mut hub = TestHub::start().await;
    let mut options = options(&hub.ws_url(), hub.token(ClientType::Hub, "h"));
    options.request_timeout = Duration::from_millis(300);
    let (client, _events) = Client::connect(options).await.expect("connect");
    let mut state = client.state();
    stop(&mut hub).await;
    wait_state(&mut state, |s| !is_connected(s)).await;
    let err = client.publish("a", json!(1)).await.expect_err("no hub");
    assert_eq!(err, ClientError::Timeout);
}

#[tokio::test]
async fn close_ends_events_and_marks_the_client_closed() {
    let hub = TestHub::start().await;
    let (client, mut events) = connect(&hub, ClientType::Hub, "h").await;
    client.subscribe(&["a"]).await.expect("subscribe");
    client.publish("a", json!(1)).await.expect("publish");
    // The hub writes the event before it reads the ping, so once the pong is
    // back the event sits in the client's queue.
    client.ping().await.expect("ping");
    let other = client.clone();
    client.close().await;

    assert_eq!(
        *client.state().borrow(),
        ConnectionState::Closed {
            reason: ClosedReason::Requested
        }
    );
    // Events already queued are still delivered, then the stream ends.
    assert_eq!(next_event(&mut events).await.data, json!(1));
    let end = tokio::time::timeout(WAIT, events.next())
        .await
        .expect("events did not end");
    assert!(end.is_none());
    assert_eq!(
        other.publish("a", json!(2)).await,
        Err(ClientError::Closed),
        "every handle sees the close"
    );
}

#[tokio::test]
async fn answers_hub_pings_while_idle() {
    // The hub closes connections silent for 250 ms (4011); the client's
    // automatic pong answers must keep this one open well past that.
    let hub = TestHub::with_config(|c| {
        c.websocket.ping_interval = Duration::from_millis(50);
        c.websocket.ping_timeout = Duration::from_millis(250);
    })
    .await;
    let (client, _events) = connect(&hub, ClientType::Hub, "idle").await;
    let mut state = client.state();
    let dropped = tokio::time::timeout(
        Duration::from_millis(750),
        state.wait_for(|s| !is_connected(s)),
    )
    .await;
    assert!(
        dropped.is_err(),
        "connection dropped while idle: {dropped:?}"
    );
    client.ping().await.expect("still usable");
}
