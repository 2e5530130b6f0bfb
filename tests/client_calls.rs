//! The Rust client's calls against a real hub on 127.0.0.1:0: one
//! `chanhub::client::Client` serves methods with an async handler, another
//! calls them. Results and every error the caller can get, the call's
//! timeout and cancel-on-drop reaching the handler, concurrency, one
//! service per client, and connections that drop (a proxy cuts them while
//! the hub keeps running): the caller's call fails and is not sent again,
//! the server's calls are cancelled and its service comes back.

mod common;

use std::future::IntoFuture;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use chanhub::auth::ClientType;
use chanhub::client::{
    Backoff, CallError, CallRequest, Client, ClientError, ClientOptions, ConnectionState, Serving,
};
use chanhub::error::ErrorCode;
use common::proxy::Proxy;
use common::{TestHub, WAIT};
use futures::future::BoxFuture;
use serde_json::{Value, json};
use tokio::sync::{Semaphore, mpsc};

/// Options for tests: fast reconnects, and timeouts that only guard
/// against hangs.
fn options(url: &str, token: String) -> ClientOptions {
    ClientOptions {
        backoff: Backoff {
            base: Duration::from_millis(10),
            cap: Duration::from_millis(50),
        },
        request_timeout: WAIT,
        connect_timeout: WAIT,
        call_timeout: WAIT,
        ..ClientOptions::new(url, token)
    }
}

/// A client with a token of `ty` (`worker` to serve, `browser` to call).
async fn connect(url: &str, hub: &TestHub, ty: ClientType, sub: &str) -> Client {
    let (client, _events) = Client::connect(options(url, hub.token(ty, sub)))
        .await
        .expect("connects");
    client
}

/// Answers `demo.echo` with its params and who called, `demo.fail` with
/// an error, anything else `not_found`.
async fn demo(req: CallRequest) -> Result<Value, CallError> {
    match req.method.as_str() {
        "demo.echo" => Ok(json!({"params": req.params, "caller": req.caller.sub})),
        "demo.fail" => Err(CallError::new("demo_failed", "as asked").with_data(req.params)),
        other => Err(CallError::new("not_found", format!("no method {other}"))),
    }
}

fn refused_code(err: ClientError) -> ErrorCode {
    match err {
        ClientError::Refused { code, .. } => code,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

/// Sends its call id when dropped: the handler's future is gone.
struct OnDrop {
    call_id: String,
    dropped: mpsc::UnboundedSender<String>,
}

impl Drop for OnDrop {
    fn drop(&mut self) {
        let _ = self.dropped.send(self.call_id.clone());
    }
}

/// What a handler that never answers reports.
struct Blocked {
    /// Each request, when its handler starts.
    started: mpsc::UnboundedReceiver<CallRequest>,
    /// Each call id, when its handler's future is dropped.
    dropped: mpsc::UnboundedReceiver<String>,
}

type Handler =
    Box<dyn Fn(CallRequest) -> BoxFuture<'static, Result<Value, CallError>> + Send + Sync>;

/// A handler that reports its start and waits until it is dropped.
fn blocking() -> (Handler, Blocked) {
    let (started_tx, started) = mpsc::unbounded_channel();
    let (dropped_tx, dropped) = mpsc::unbounded_channel();
    let handler: Handler = Box::new(move |req: CallRequest| {
        let started = started_tx.clone();
        let dropped = dropped_tx.clone();
        Box::pin(async move {
            let _guard = OnDrop {
                call_id: req.call_id.clone(),
                dropped,
            };
            let _ = started.send(req);
            std::future::pending().await
        })
    });
    (handler, Blocked { started, dropped })
}

impl Blocked {
    async fn started(&mut self) -> CallRequest {
        tokio::time::timeout(WAIT, self.started.recv())
            .await
            .expect("timed out waiting for a handler to start")
            .expect("handler gone")
    }

    /// Waits until the handler of `req` has been dropped and its token
    /// cancelled.
    async fn cancelled(&mut self, req: &CallRequest) {
        let dropped = tokio::time::timeout(WAIT, self.dropped.recv())
            .await
            .expect("timed out waiting for the handler to be dropped")
            .expect("handler gone");
        assert_eq!(dropped, req.call_id);
        assert!(req.cancelled.is_cancelled(), "its token fired too");
    }
}

async fn serve(server: &Client, methods: &[&str], concurrency: u32, handler: Handler) -> Serving {
    server
        .serve(methods, concurrency, handler)
        .await
        .expect("serve")
}

async fn wait_state(client: &Client, ok: impl FnMut(&ConnectionState) -> bool) {
    let mut state = client.state();
    tokio::time::timeout(WAIT, state.wait_for(ok))
        .await
        .expect("timed out waiting for a connection state")
        .expect("state sender dropped");
}

fn is_connected(state: &ConnectionState) -> bool {
    matches!(state, ConnectionState::Connected { .. })
}

#[tokio::test]
async fn a_call_reaches_the_serving_client_and_its_result_comes_back() {
    let hub = TestHub::start().await;
    let server = connect(&hub.ws_url(), &hub, ClientType::Worker, "w").await;
    let serving = server.serve(&["demo.*"], 4, demo).await.expect("serve");
    assert_eq!(serving.methods(), ["demo.*".to_string()]);

    let caller = connect(&hub.ws_url(), &hub, ClientType::Browser, "ui-1").await;
    let result = caller
        .call("demo.echo", json!({"text": "hi"}))
        .await
        .expect("call");
    assert_eq!(result, json!({"params": {"text": "hi"}, "caller": "ui-1"}));

    // A server's error answer keeps its code, message and data.
    let err = caller
        .call("demo.fail", json!({"why": 1}))
        .timeout(Duration::from_secs(5))
        .await
        .unwrap_err();
    assert_eq!(
        err,
        ClientError::CallFailed(
            CallError::new("demo_failed", "as asked").with_data(json!({"why": 1}))
        )
    );
    let err = caller.call("demo.nope", Value::Null).await.unwrap_err();
    let ClientError::CallFailed(error) = err else {
        panic!("expected call_failed, got {err:?}");
    };
    assert_eq!(error.code, "not_found");
}

#[tokio::test]
async fn the_hubs_refusals_keep_their_code() {
    let hub = TestHub::start().await;
    let caller = connect(&hub.ws_url(), &hub, ClientType::Browser, "ui").await;
    let err = caller.call("demo.echo", json!(1)).await.unwrap_err();
    assert_eq!(refused_code(err), ErrorCode::NoServer);
    let err = caller.call("demo.*", json!(1)).await.unwrap_err();
    assert_eq!(refused_code(err), ErrorCode::InvalidChannel, "no wildcards");

    // A browser may call but not serve.
    let err = caller.serve(&["ui.*"], 1, demo).await.unwrap_err();
    assert_eq!(refused_code(err), ErrorCode::Forbidden);
    // The refused service is gone: serving again is refused by the hub
    // (for the same reason), not by the client.
    let err = caller.serve(&["ui.*"], 1, demo).await.unwrap_err();
    assert_eq!(refused_code(err), ErrorCode::Forbidden);
}

#[tokio::test]
async fn a_call_past_its_timeout_is_refused_timeout_and_its_handler_cancelled() {
    let hub = TestHub::start().await;
    let server = connect(&hub.ws_url(), &hub, ClientType::Worker, "w").await;
    let (handler, mut blocked) = blocking();
    let _serving = serve(&server, &["slow.*"], 1, handler).await;
    let caller = connect(&hub.ws_url(), &hub, ClientType::Browser, "ui").await;

    let err = caller
        .call("slow.op", json!(null))
        .timeout(Duration::from_millis(200))
        .await
        .unwrap_err();
    assert_eq!(refused_code(err), ErrorCode::Timeout, "the hub's answer");
    let req = blocked.started().await;
    assert!(req.deadline > 0);
    blocked.cancelled(&req).await;
}

#[tokio::test]
async fn dropping_a_call_cancels_it_on_its_server() {
    let hub = TestHub::start().await;
    let server = connect(&hub.ws_url(), &hub, ClientType::Worker, "w").await;
    let (handler, mut blocked) = blocking();
    let _serving = serve(&server, &["slow.*"], 1, handler).await;
    let caller = connect(&hub.ws_url(), &hub, ClientType::Browser, "ui").await;

    let call = caller.call("slow.op", json!({"n": 1})).into_future();
    let req = tokio::select! {
        result = call => panic!("answered: {result:?}"),
        req = blocked.started() => req,
    };
    // The call's future is dropped now: `call:cancel` goes out.
    assert_eq!(req.params, json!({"n": 1}));
    blocked.cancelled(&req).await;

    // The slot is free again (concurrency 1), and the caller still works.
    let call = caller.call("slow.op", json!({"n": 2})).into_future();
    let req = tokio::select! {
        result = call => panic!("answered: {result:?}"),
        req = blocked.started() => req,
    };
    assert_eq!(req.params, json!({"n": 2}));
    caller.ping().await.expect("ping");
}

#[tokio::test]
async fn a_server_with_concurrency_2_never_runs_3_at_once() {
    let hub = TestHub::start().await;
    let server = connect(&hub.ws_url(), &hub, ClientType::Worker, "w").await;
    let gate = Arc::new(Semaphore::new(0));
    let running = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let (started_tx, mut started) = mpsc::unbounded_channel();
    let handler = {
        let (gate, running, most) = (gate.clone(), running.clone(), most.clone());
        move |req: CallRequest| {
            let (gate, running, most) = (gate.clone(), running.clone(), most.clone());
            let started = started_tx.clone();
            async move {
                let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(now, Ordering::SeqCst);
                let _ = started.send(());
                gate.acquire().await.expect("gate").forget();
                running.fetch_sub(1, Ordering::SeqCst);
                Ok(req.params)
            }
        }
    };
    let _serving = server.serve(&["work.*"], 2, handler).await.expect("serve");
    let caller = connect(&hub.ws_url(), &hub, ClientType::Hub, "backend").await;

    let calls: Vec<_> = (0..6)
        .map(|n| {
            let caller = caller.clone();
            tokio::spawn(async move { caller.call("work.item", json!(n)).await })
        })
        .collect();
    next_start(&mut started).await;
    next_start(&mut started).await;
    // Each release lets exactly one more call in.
    for _ in 0..4 {
        gate.add_permits(1);
        next_start(&mut started).await;
    }
    gate.add_permits(2);
    let mut results = Vec::new();
    for call in calls {
        let result = tokio::time::timeout(WAIT, call)
            .await
            .expect("timed out waiting for a call")
            .expect("call task");
        results.push(result.expect("call"));
    }
    results.sort_by_key(|v| v.as_i64());
    assert_eq!(results, (0..6).map(|n| json!(n)).collect::<Vec<_>>());
    assert_eq!(most.load(Ordering::SeqCst), 2, "at most 2 at once");
}

async fn next_start(started: &mut mpsc::UnboundedReceiver<()>) {
    tokio::time::timeout(WAIT, started.recv())
        .await
        .expect("timed out waiting for a handler to start")
        .expect("handler gone");
}

#[tokio::test]
async fn one_service_per_client_until_it_is_closed() {
    let hub = TestHub::start().await;
    let server = connect(&hub.ws_url(), &hub, ClientType::Worker, "w").await;
    let caller = connect(&hub.ws_url(), &hub, ClientType::Browser, "ui").await;
    let serving = server.serve(&["demo.*"], 2, demo).await.expect("serve");
    let err = server.serve(&["other.*"], 1, demo).await.unwrap_err();
    assert_eq!(refused_code(err), ErrorCode::BadRequest);

    serving.close().await.expect("unserve");
    let err = caller.call("demo.echo", json!(1)).await.unwrap_err();
    assert_eq!(refused_code(err), ErrorCode::NoServer, "unserved");

    let _serving = server
        .serve(&["other.*"], 1, demo)
        .await
        .expect("serve again");
    let err = caller.call("other.x", json!(1)).await.unwrap_err();
    assert!(matches!(err, ClientError::CallFailed(e) if e.code == "not_found"));
}

#[tokio::test]
async fn a_servers_dropped_connection_ends_its_calls_and_its_service_comes_back() {
    let hub = TestHub::start().await;
    let proxy = Proxy::start(hub.addr).await;
    let server = connect(&proxy.url(), &hub, ClientType::Worker, "w").await;
    let (handler, mut blocked) = blocking();
    let _serving = serve(&server, &["slow.*", "fast.*"], 2, handler).await;
    let caller = connect(&hub.ws_url(), &hub, ClientType::Browser, "ui").await;

    let call = tokio::spawn({
        let caller = caller.clone();
        async move { caller.call("slow.op", json!(1)).await }
    });
    let req = blocked.started().await;
    proxy.cut();
    let err = tokio::time::timeout(WAIT, call)
        .await
        .expect("timed out waiting for the call")
        .expect("call task")
        .unwrap_err();
    assert_eq!(refused_code(err), ErrorCode::ServerGone);
    blocked.cancelled(&req).await;

    // Served again on the new connection before it is `Connected`.
    wait_state(&server, |s| !is_connected(s)).await;
    proxy.reopen();
    wait_state(&server, is_connected).await;
    let call = caller.call("fast.op", json!(2)).into_future();
    let req = tokio::select! {
        result = call => panic!("answered: {result:?}"),
        req = blocked.started() => req,
    };
    assert_eq!(req.method, "fast.op");
    assert_eq!(req.params, json!(2));
}

#[tokio::test]
async fn a_call_in_flight_when_the_callers_connection_drops_fails_and_is_not_sent_again() {
    let hub = TestHub::start().await;
    let server = connect(&hub.ws_url(), &hub, ClientType::Worker, "w").await;
    let (handler, mut blocked) = blocking();
    let _serving = serve(&server, &["slow.*"], 4, handler).await;
    let proxy = Proxy::start(hub.addr).await;
    let caller = connect(&proxy.url(), &hub, ClientType::Browser, "ui").await;

    let call = tokio::spawn({
        let caller = caller.clone();
        async move { caller.call("slow.op", json!("first")).await }
    });
    let first = blocked.started().await;
    proxy.cut();
    let err = tokio::time::timeout(WAIT, call)
        .await
        .expect("timed out waiting for the call")
        .expect("call task")
        .unwrap_err();
    assert_eq!(err, ClientError::Closed);
    // The hub cancels the calls of a caller that left.
    blocked.cancelled(&first).await;

    wait_state(&caller, |s| !is_connected(s)).await;
    proxy.reopen();
    wait_state(&caller, is_connected).await;
    let call = caller.call("slow.op", json!("second")).into_future();
    let next = tokio::select! {
        result = call => panic!("answered: {result:?}"),
        req = blocked.started() => req,
    };
    assert_eq!(
        next.params,
        json!("second"),
        "the first call was not resent"
    );
}
