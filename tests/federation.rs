//! Federation: several hubs in one process, each on 127.0.0.1:0 with its
//! own token secret, linked as configured in `[[federation.peers]]`.
//!
//! Waits are bounded. Link state and interest convergence are polled on the
//! hubs' federation views (what `GET /api/federation` returns) with a short
//! yield between checks; "exactly once" is checked after the network is
//! quiet: every event frame any link sent has been received and handled
//! (sent and received counters across all links balance), so a late
//! duplicate could no longer arrive.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use chanhub::auth::mint;
use chanhub::config::{PeerConfig, Strategy};
use chanhub::protocol::federation::{FederationView, LinkState, LinkView};
use chanhub::{Config, Hub};
use common::{WAIT, WsClient, bearer_client};
use jsonwebtoken::{Algorithm, EncodingKey};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

/// One hub of a test network.
struct Node {
    name: String,
    secret: String,
    addr: std::net::SocketAddr,
    hub: Hub,
    shutdown: Option<oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<Result<(), chanhub::ServerError>>>,
    _data: tempfile::TempDir,
}

impl Node {
    fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    /// A token this hub accepts.
    fn token(&self, client_type: &str, sub: &str) -> String {
        sign(
            &self.secret,
            json!({"client_type": client_type, "sub": sub}),
        )
    }

    async fn client(&self, client_type: &str, sub: &str) -> WsClient {
        let mut client = WsClient::connect(&self.ws_url()).await;
        client
            .send(json!({"type": "auth", "token": self.token(client_type, sub)}))
            .await;
        let reply = client.recv().await;
        assert_eq!(reply["type"], "auth:success", "{reply}");
        client
    }

    fn view(&self) -> FederationView {
        self.hub.federation_view()
    }

    fn link(&self, peer: &str) -> LinkView {
        self.view()
            .links
            .into_iter()
            .find(|l| l.peer == peer)
            .unwrap_or_else(|| panic!("{} has no link {peer}", self.name))
    }

    fn publish(&self, channel: &str, data: Value) {
        let channel = self.hub.channel(channel).expect("channel");
        self.hub.publish(channel, data);
    }

    /// Stops the hub and waits for it to finish.
    async fn stop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(server) = self.server.take() {
            let _ = tokio::time::timeout(WAIT, server).await;
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

fn sign(secret: &str, mut claims: Value) -> String {
    claims["exp"] = json!(chanhub::protocol::now_ms() / 1000 + 3600);
    mint(
        &claims,
        Algorithm::HS256,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("mint")
}

fn secret_of(name: &str) -> String {
    format!("secret-of-{name}-0123456789")
}

fn peer(name: &str) -> PeerConfig {
    PeerConfig {
        name: name.into(),
        url: None,
        token: None,
        token_file: None,
        export: vec!["**".into()],
        import: vec!["**".into()],
        call_export: Vec::new(),
        call_import: Vec::new(),
        priority: 0,
        weight: 1,
        region: None,
        labels: BTreeMap::new(),
    }
}

/// Starts hubs `names`; each `(dialer, acceptor)` in `links` becomes a
/// peer entry on both sides (with a url and a token the acceptor signed on
/// the dialer's side), exporting and importing everything. `tweak` adjusts
/// each config before start.
async fn network(
    names: &[&str],
    links: &[(&str, &str)],
    tweak: impl Fn(&str, &mut Config),
) -> Vec<Node> {
    let mut listeners = Vec::new();
    for _ in names {
        listeners.push(TcpListener::bind("127.0.0.1:0").await.expect("bind"));
    }
    let addrs: BTreeMap<&str, std::net::SocketAddr> = names
        .iter()
        .zip(&listeners)
        .map(|(n, l)| (*n, l.local_addr().expect("addr")))
        .collect();
    let mut nodes = Vec::new();
    for (name, listener) in names.iter().zip(listeners) {
        let data = tempfile::tempdir().expect("tempdir");
        let mut config = Config::default();
        config.auth.secret = Some(secret_of(name));
        config.data_dir = Some(data.path().to_path_buf());
        config.log.level = "warn".into();
        config.tasks.durable = false;
        let fed = &mut config.federation;
        fed.name = Some(name.to_string());
        fed.ping_interval = Duration::from_millis(500);
        fed.ping_timeout = Duration::from_secs(5);
        fed.debounce = Duration::from_millis(10);
        fed.reconnect_initial = Duration::from_millis(50);
        fed.reconnect_max = Duration::from_millis(300);
        fed.task_wait = Duration::from_millis(200);
        for (dialer, acceptor) in links {
            let other = if dialer == name {
                acceptor
            } else if acceptor == name {
                dialer
            } else {
                continue;
            };
            if !fed.peers.iter().any(|p| p.name == *other) {
                fed.peers.push(peer(other));
            }
            if dialer == name {
                let p = fed
                    .peers
                    .iter_mut()
                    .find(|p| p.name == *other)
                    .expect("peer");
                p.url = Some(format!("ws://{}/ws", addrs[acceptor]));
                p.token = Some(sign(
                    &secret_of(acceptor),
                    json!({"client_type": "hub", "sub": format!("hub-{name}")}),
                ));
            }
        }
        tweak(name, &mut config);
        config.validate().expect("valid config");
        let hub = Hub::new(config).expect("hub");
        let (tx, rx) = oneshot::channel::<()>();
        let server = tokio::spawn(chanhub::serve(listener, hub.clone(), async {
            let _ = rx.await;
        }));
        nodes.push(Node {
            name: name.to_string(),
            secret: secret_of(name),
            addr: addrs[name],
            hub,
            shutdown: Some(tx),
            server: Some(server),
            _data: data,
        });
    }
    nodes
}

/// Polls `check` until it holds; panics after [`WAIT`] with `what`.
async fn until(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !check() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn node<'a>(nodes: &'a [Node], name: &str) -> &'a Node {
    nodes.iter().find(|n| n.name == name).expect("node")
}

/// Waits until every configured link of every hub is up.
async fn all_up(nodes: &[Node]) {
    until("every link up", || {
        nodes
            .iter()
            .all(|n| n.view().links.iter().all(|l| l.state == LinkState::Up))
    })
    .await;
}

/// Waits until `from`'s link to `to` carries interest in `n` patterns
/// (what `to`'s side asked for, after `from`'s export list).
async fn interest(nodes: &[Node], from: &str, to: &str, n: usize) {
    let what = format!("{from} to know {n} patterns wanted over its link to {to}");
    until(&what, || node(nodes, from).link(to).interest_in == n).await;
}

/// Waits until nothing is in flight: every event frame sent over any link
/// has been handled by the receiving hub, twice in a row.
async fn quiet(nodes: &[Node]) {
    let totals = || {
        let (mut sent, mut handled) = (0, 0);
        for n in nodes {
            for l in n.view().links {
                let c = l.counters;
                sent += c.events_out;
                handled += c.events_in + c.dropped_import + c.dropped_duplicate;
            }
        }
        (sent, handled)
    };
    let mut previous = None;
    until("the network to be quiet", || {
        let now = totals();
        let settled = now.0 == now.1 && previous == Some(now);
        previous = Some(now);
        settled
    })
    .await;
}

/// The next `event` message, skipping others.
async fn next_event(client: &mut WsClient) -> Value {
    client.recv_type("event").await
}

// ---- links ----

#[tokio::test]
async fn links_come_up_with_hello_and_events() {
    let nodes = network(&["a", "b"], &[("a", "b")], |_, _| {}).await;
    let (a, b) = (node(&nodes, "a"), node(&nodes, "b"));
    let mut watcher = b.client("browser", "ops").await;
    watcher.subscribe(&["hub:*"]).await;
    all_up(&nodes).await;
    let view = a.link("b");
    assert_eq!(view.peer_id.as_deref(), Some(b.hub.hub_id()));
    assert_eq!(view.direction.as_deref(), Some("dialed"));
    assert_eq!(b.link("a").direction.as_deref(), Some("accepted"));
    // Keepalive measures latency.
    until("a round trip measured", || a.link("b").rtt_ms.is_some()).await;
    // hub:connected on b; a disconnect announces hub:disconnected and
    // the dialer brings the link back.
    assert!(a.hub.disconnect_peer("b"));
    let mut seen = Vec::new();
    while !seen.contains(&"hub:disconnected".to_string()) {
        let event = next_event(&mut watcher).await;
        assert_eq!(event["data"]["peer"], "a", "{event}");
        seen.push(event["channel"].as_str().unwrap_or_default().to_string());
    }
    assert_eq!(seen.first().map(String::as_str), Some("hub:connected"));
    let back = next_event(&mut watcher).await;
    assert_eq!(back["channel"], "hub:connected", "{back}");
    all_up(&nodes).await;
}

#[tokio::test]
async fn hub_id_is_stable_across_restarts() {
    let data = tempfile::tempdir().expect("tempdir");
    let config = || {
        let mut c = Config::default();
        c.auth.secret = Some("x".into());
        c.data_dir = Some(data.path().to_path_buf());
        c.tasks.durable = false;
        c
    };
    let first = Hub::new(config()).expect("hub");
    let id = first.hub_id().to_string();
    drop(first);
    let second = Hub::new(config()).expect("hub");
    assert_eq!(second.hub_id(), id);
    assert!(data.path().join("hub_id").exists());
}

#[tokio::test]
async fn both_sides_dialing_settle_on_one_link() {
    let nodes = network(&["a", "b"], &[("a", "b"), ("b", "a")], |_, _| {}).await;
    // Each side has the other once, under its one peer entry.
    all_up(&nodes).await;
    let (a, b) = (node(&nodes, "a"), node(&nodes, "b"));
    let mut sub = b.client("browser", "ui").await;
    sub.subscribe(&["session:*"]).await;
    interest(&nodes, "a", "b", 1).await;
    a.publish("session:1", json!(1));
    assert_eq!(next_event(&mut sub).await["data"], 1);
    quiet(&nodes).await;
    sub.expect_quiet().await;
    assert_eq!(a.view().links.len(), 1);
    assert_eq!(b.view().links.len(), 1);
}

// ---- events ----

#[tokio::test]
async fn chain_forwards_only_what_is_wanted_and_exactly_once() {
    let nodes = network(&["a", "b", "c"], &[("a", "b"), ("b", "c")], |_, _| {}).await;
    all_up(&nodes).await;
    let (a, b, c) = (node(&nodes, "a"), node(&nodes, "b"), node(&nodes, "c"));

    // Nobody on c wants session events: b passes none on.
    let mut on_b = b.client("browser", "ui-b").await;
    on_b.subscribe(&["session:*"]).await;
    interest(&nodes, "a", "b", 1).await;
    assert_eq!(b.link("c").interest_in, 0);
    a.publish("session:1", json!({"n": 1}));
    assert_eq!(next_event(&mut on_b).await["data"]["n"], 1);
    quiet(&nodes).await;
    assert_eq!(a.link("b").counters.events_out, 1);
    assert_eq!(
        b.link("c").counters.events_out,
        0,
        "no session traffic to c"
    );
    assert_eq!(c.link("b").counters.events_in, 0);

    // A browser on c: the event crosses both links, once.
    let mut on_c = c.client("browser", "ui-c").await;
    on_c.subscribe(&["session:*"]).await;
    interest(&nodes, "b", "c", 1).await;
    a.publish("session:2", json!({"n": 2}));
    let event = next_event(&mut on_c).await;
    assert_eq!(event["channel"], "session:2");
    assert_eq!(event["data"]["n"], 2);
    quiet(&nodes).await;
    on_c.expect_quiet().await;
    assert_eq!(b.link("c").counters.events_out, 1);
    assert_eq!(next_event(&mut on_b).await["data"]["n"], 2);
    on_b.expect_quiet().await;

    // c's browser leaves: the interest is withdrawn along the chain.
    drop(on_c);
    interest(&nodes, "b", "c", 0).await;
    a.publish("session:3", json!({"n": 3}));
    assert_eq!(next_event(&mut on_b).await["data"]["n"], 3);
    quiet(&nodes).await;
    assert_eq!(b.link("c").counters.events_out, 1, "nothing more to c");
}

/// Every hub has a subscriber; events published anywhere reach each of
/// them exactly once.
async fn exactly_once_everywhere(nodes: &[Node]) {
    all_up(nodes).await;
    let mut subs = Vec::new();
    for n in nodes {
        let mut s = n.client("browser", &format!("ui-{}", n.name)).await;
        s.subscribe(&["session:*"]).await;
        subs.push(s);
    }
    // Every link knows its peer's side wants session:* (the peer's own
    // subscriber and the hubs behind it, reduced to one pattern).
    for n in nodes {
        for l in n.view().links {
            interest(nodes, &n.name, &l.peer, 1).await;
        }
    }
    for (i, n) in nodes.iter().enumerate() {
        n.publish(&format!("session:{i}"), json!({"from": n.name}));
    }
    for s in &mut subs {
        let mut got = Vec::new();
        for _ in nodes {
            got.push(
                next_event(s).await["channel"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            );
        }
        got.sort();
        let want: Vec<String> = (0..nodes.len()).map(|i| format!("session:{i}")).collect();
        assert_eq!(got, want);
    }
    quiet(nodes).await;
    for s in &mut subs {
        s.expect_quiet().await;
    }
    let dropped: u64 = nodes
        .iter()
        .flat_map(|n| n.view().links)
        .map(|l| l.counters.dropped_duplicate)
        .sum();
    assert!(dropped > 0, "a loop topology sends some copies twice");
}

#[tokio::test]
async fn triangle_delivers_exactly_once() {
    let nodes = network(
        &["a", "b", "c"],
        &[("a", "b"), ("b", "c"), ("c", "a")],
        |_, _| {},
    )
    .await;
    exactly_once_everywhere(&nodes).await;
}

#[tokio::test]
async fn full_mesh_of_four_delivers_exactly_once() {
    let nodes = network(
        &["a", "b", "c", "d"],
        &[
            ("a", "b"),
            ("a", "c"),
            ("a", "d"),
            ("b", "c"),
            ("b", "d"),
            ("c", "d"),
        ],
        |_, _| {},
    )
    .await;
    exactly_once_everywhere(&nodes).await;
}

#[tokio::test]
async fn interest_of_a_departed_hub_dies_out_in_a_ring() {
    let mut nodes = network(
        &["a", "b", "c"],
        &[("a", "b"), ("b", "c"), ("c", "a")],
        |_, _| {},
    )
    .await;
    all_up(&nodes).await;
    let mut on_c = node(&nodes, "c").client("browser", "ui").await;
    on_c.subscribe(&["session:*"]).await;
    interest(&nodes, "a", "c", 1).await;
    interest(&nodes, "a", "b", 1).await;
    drop(on_c);
    let c = nodes.iter_mut().find(|n| n.name == "c").expect("c");
    c.stop().await;
    let nodes = &nodes;
    // a and b forget c's interest, though each had it from the other too.
    interest(nodes, "a", "b", 0).await;
    interest(nodes, "b", "a", 0).await;
}

#[tokio::test]
async fn export_and_import_lists_filter_events() {
    let nodes = network(&["a", "b"], &[("a", "b")], |name, config| {
        let p = &mut config.federation.peers[0];
        match name {
            "a" => p.export = vec!["session:**".into(), "task:**".into()],
            _ => p.import = vec!["session:*".into()],
        }
    })
    .await;
    all_up(&nodes).await;
    let (a, b) = (node(&nodes, "a"), node(&nodes, "b"));
    let mut on_b = b.client("browser", "ui").await;
    // `secret:*` is not imported at all, so b does not ask for it; `*:42`
    // overlaps what b imports, so b asks for it as is.
    on_b.subscribe(&["*:42", "secret:*"]).await;
    interest(&nodes, "a", "b", 1).await;
    assert_eq!(b.link("a").interest_out, 1);

    // Not exported: never leaves a.
    a.publish("secret:42", json!("no"));
    // Exported, not imported: crosses and is dropped by b.
    a.publish("task:42", json!("dropped"));
    // Both: delivered.
    a.publish("session:42", json!("yes"));
    let event = next_event(&mut on_b).await;
    assert_eq!(event["channel"], "session:42", "{event}");
    quiet(&nodes).await;
    on_b.expect_quiet().await;
    let out = a.link("b").counters;
    assert_eq!(out.events_out, 2, "secret:42 stayed on a");
    let inbound = b.link("a").counters;
    assert_eq!(inbound.dropped_import, 1, "task:42 dropped by b");
    assert_eq!(inbound.events_in, 1);
}

#[tokio::test]
async fn nothing_flows_without_lists() {
    let nodes = network(&["a", "b"], &[("a", "b")], |_, config| {
        let p = &mut config.federation.peers[0];
        p.export.clear();
        p.import.clear();
    })
    .await;
    all_up(&nodes).await;
    let (a, b) = (node(&nodes, "a"), node(&nodes, "b"));
    let mut on_b = b.client("browser", "ui").await;
    on_b.subscribe(&["**"]).await;
    a.publish("session:1", json!(1));
    on_b.expect_quiet().await;
    assert_eq!(b.link("a").interest_out, 0);
    assert_eq!(a.link("b").counters.events_out, 0);
}

// ---- refused links ----

/// `a` dials `b` and is refused: the dialer keeps retrying with backoff
/// and records why, and `a` keeps serving its own clients throughout.
async fn refused(nodes: &[Node], reason: &str) {
    let a = node(nodes, "a");
    let mut local = a.client("browser", "ui").await;
    local.subscribe(&["session:*"]).await;
    until(&format!("repeated refusals ({reason})"), || {
        let link = a.link("b");
        link.attempts >= 3
            && link.state != LinkState::Up
            && link
                .last_error
                .as_deref()
                .is_some_and(|e| e.contains(reason))
    })
    .await;
    a.publish("session:1", json!("local"));
    assert_eq!(next_event(&mut local).await["data"], "local");
    let b = node(nodes, "b");
    assert!(b.view().links.iter().all(|l| l.state != LinkState::Up));
}

#[tokio::test]
async fn wrong_token_is_refused_and_retried() {
    let nodes = network(&["a", "b"], &[("a", "b")], |name, config| {
        if name == "a" {
            config.federation.peers[0].token = Some(sign(
                "not-b's-secret",
                json!({"client_type": "hub", "sub": "a"}),
            ));
        }
    })
    .await;
    refused(&nodes, "bad_signature").await;
}

#[tokio::test]
async fn non_hub_token_is_refused_and_retried() {
    let nodes = network(&["a", "b"], &[("a", "b")], |name, config| {
        if name == "a" {
            config.federation.peers[0].token = Some(sign(
                &secret_of("b"),
                json!({"client_type": "browser", "sub": "a"}),
            ));
        }
    })
    .await;
    refused(&nodes, "federate").await;
}

#[tokio::test]
async fn equal_hub_ids_are_refused_and_retried() {
    let nodes = network(&["a", "b"], &[("a", "b")], |_, config| {
        config.federation.hub_id = Some("twin".into());
    })
    .await;
    refused(&nodes, "same_hub_id").await;
}

#[tokio::test]
async fn the_acceptor_refuses_hello_without_federate_and_unknown_peers() {
    let nodes = network(&["a", "b"], &[], |_, _| {}).await;
    let b = node(&nodes, "b");
    let hello = |name: &str, id: &str| {
        json!({"type": "hub:hello", "hubId": id, "name": name, "version": "0",
               "maxFrameBytes": 65536})
    };
    let cases = [
        (
            sign(
                &b.secret,
                json!({"client_type": "hub", "sub": "x", "permissions": ["subscribe", "publish"]}),
            ),
            hello("a", "id-a"),
            "not_permitted",
        ),
        (b.token("hub", "x"), hello("nobody", "id-n"), "unknown_peer"),
        (
            b.token("hub", "x"),
            hello("a", b.hub.hub_id()),
            "same_hub_id",
        ),
    ];
    for (token, hello, reason) in cases {
        let mut ws = WsClient::connect(&b.ws_url()).await;
        ws.send(json!({"type": "auth", "token": token})).await;
        assert_eq!(ws.recv().await["type"], "auth:success");
        ws.send(hello).await;
        let refused = ws.recv().await;
        assert_eq!(refused["type"], "hub:refused", "{refused}");
        assert_eq!(refused["reason"], reason, "{refused}");
        assert_eq!(ws.closed().await, common::Closed::Code(1008));
    }
}

// ---- the API ----

#[tokio::test]
async fn api_lists_links() {
    let nodes = network(&["a", "b"], &[("a", "b")], |_, _| {}).await;
    all_up(&nodes).await;
    let a = node(&nodes, "a");
    let url = format!("http://{}/api/federation", a.addr);
    let response = bearer_client(&a.token("hub", "ops"))
        .get(&url)
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["name"], "a");
    assert_eq!(body["hubId"], a.hub.hub_id());
    let link = &body["links"][0];
    assert_eq!(link["peer"], "b");
    assert_eq!(link["state"], "up");
    for key in ["peerId", "since", "interestIn", "interestOut", "counters"] {
        assert!(link.get(key).is_some(), "{key} missing: {link}");
    }
    let refused = bearer_client(&a.token("browser", "ui"))
        .get(&url)
        .send()
        .await
        .expect("request");
    assert_eq!(refused.status(), 403);
}

#[test]
fn example_configs_load() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/federation");
    for file in ["a.toml", "b.toml"] {
        let text = std::fs::read_to_string(dir.join(file)).expect("example config");
        let config = Config::from_toml(&text).unwrap_or_else(|e| panic!("{file}: {e}"));
        assert!(!config.federation.peers.is_empty(), "{file}");
    }
}

// ---- tasks ----

/// The next event about task `id`.
async fn event_of(client: &mut WsClient, id: &str) -> Value {
    loop {
        let event = next_event(client).await;
        if event["data"]["id"] == id {
            return event;
        }
    }
}

/// The next message of one of `types`.
async fn recv_one_of(client: &mut WsClient, types: &[&str]) -> Value {
    loop {
        let msg = client.recv().await;
        if types.contains(&msg["type"].as_str().unwrap_or_default()) {
            return msg;
        }
    }
}

#[tokio::test]
async fn task_runs_two_hops_away_with_progress_at_the_origin() {
    let nodes = network(&["a", "b", "c"], &[("a", "b"), ("b", "c")], |_, _| {}).await;
    all_up(&nodes).await;
    let (a, c) = (node(&nodes, "a"), node(&nodes, "c"));
    let mut watcher = a.client("browser", "ui").await;
    watcher
        .subscribe(&["task:progress", "task:completed"])
        .await;
    let mut worker = c.client("worker", "w-c").await;
    worker.register(&["demo:*"], 2).await;
    let mut submitter = a.client("hub", "backend").await;
    let id = submitter
        .submit_task(json!({"type": "demo:echo", "payload": {"x": 1}}))
        .await;
    let task = worker.next_assign().await;
    assert_eq!(task["payload"], json!({"x": 1}));
    let remote_id = task["id"].as_str().expect("id").to_string();
    worker
        .send(json!({"type": "task:progress", "taskId": remote_id, "progress": 50, "message": "half"}))
        .await;
    // The copies on b and c publish their own task events, and a's
    // watcher gets those too (everything is exported here): pick a's task.
    let progress = event_of(&mut watcher, &id).await;
    assert_eq!(progress["channel"], "task:progress", "{progress}");
    assert_eq!(progress["data"]["progress"], 50);
    assert_eq!(progress["data"]["hub"], "c", "the executing hub is named");
    worker.complete_task(&remote_id, json!({"ok": true})).await;
    let result = recv_one_of(&mut submitter, &["task:result"]).await;
    assert_eq!(result["task"]["id"], id.as_str());
    assert_eq!(result["task"]["state"], "completed");
    assert_eq!(result["task"]["result"], json!({"ok": true}));
    assert_eq!(result["task"]["hub"], "c");
    let completed = event_of(&mut watcher, &id).await;
    assert_eq!(completed["channel"], "task:completed");
    submitter.expect_quiet().await;
    assert_eq!(a.link("b").counters.tasks_out, 1);
    assert_eq!(node(&nodes, "b").link("c").counters.tasks_out, 1);
}

/// a links to b and c, each with one capable worker; returns which of
/// them ran a task submitted at a.
async fn chosen_peer(
    strategy: Strategy,
    priorities: (u32, u32),
    slots: (u32, u32),
) -> &'static str {
    let nodes = network(
        &["a", "b", "c"],
        &[("a", "b"), ("a", "c")],
        |name, config| {
            if name == "a" {
                config.federation.strategy = strategy;
                for p in &mut config.federation.peers {
                    p.priority = if p.name == "b" {
                        priorities.0
                    } else {
                        priorities.1
                    };
                }
            }
        },
    )
    .await;
    all_up(&nodes).await;
    let a = node(&nodes, "a");
    let mut on_b = node(&nodes, "b").client("worker", "w-b").await;
    on_b.register(&["demo:*"], slots.0).await;
    let mut on_c = node(&nodes, "c").client("worker", "w-c").await;
    on_c.register(&["demo:*"], slots.1).await;
    until("both peers' capacity known at a", || {
        let free = |p: &str| a.link(p).capacity.first().map_or(0, |c| c.free_slots);
        free("b") == slots.0 && free("c") == slots.1
    })
    .await;
    let mut submitter = a.client("hub", "backend").await;
    submitter.submit_task(json!({"type": "demo:x"})).await;
    let winner = tokio::select! {
        _ = on_b.next_assign() => "b",
        _ = on_c.next_assign() => "c",
    };
    assert_eq!(a.link(winner).counters.tasks_out, 1);
    winner
}

#[tokio::test]
async fn priority_strategy_prefers_the_higher_priority_peer() {
    assert_eq!(chosen_peer(Strategy::Priority, (1, 5), (4, 1)).await, "c");
    assert_eq!(chosen_peer(Strategy::Priority, (7, 5), (1, 4)).await, "b");
}

#[tokio::test]
async fn least_loaded_strategy_prefers_the_most_free_slots() {
    assert_eq!(
        chosen_peer(Strategy::LeastLoaded, (9, 0), (1, 3)).await,
        "c"
    );
    assert_eq!(
        chosen_peer(Strategy::LeastLoaded, (0, 9), (4, 2)).await,
        "b"
    );
}

#[tokio::test]
async fn local_workers_are_preferred_and_busy_ones_forward_after_the_wait() {
    let nodes = network(&["a", "b"], &[("a", "b")], |_, _| {}).await;
    all_up(&nodes).await;
    let (a, b) = (node(&nodes, "a"), node(&nodes, "b"));
    let mut local = a.client("worker", "w-a").await;
    local.register(&["demo:*"], 1).await;
    let mut remote = b.client("worker", "w-b").await;
    remote.register(&["demo:*"], 1).await;
    until("b's capacity known at a", || {
        a.link("b")
            .capacity
            .first()
            .is_some_and(|c| c.free_slots == 1)
    })
    .await;
    let mut submitter = a.client("hub", "backend").await;
    let first = submitter.submit_task(json!({"type": "demo:1"})).await;
    assert_eq!(
        local.next_assign().await["id"],
        first.as_str(),
        "local first"
    );
    // The local worker is busy: the next task waits task_wait, then goes to b.
    let second = submitter.submit_task(json!({"type": "demo:2"})).await;
    let forwarded = remote.next_assign().await;
    assert_eq!(forwarded["type"], "demo:2");
    remote
        .complete_task(forwarded["id"].as_str().expect("id"), json!(2))
        .await;
    let result = recv_one_of(&mut submitter, &["task:result"]).await;
    assert_eq!(result["task"]["id"], second.as_str());
    assert_eq!(result["task"]["hub"], "b");
}

#[tokio::test]
async fn link_drop_mid_task_requeues_at_the_origin() {
    let nodes = network(&["a", "c"], &[("a", "c")], |_, _| {}).await;
    all_up(&nodes).await;
    let (a, c) = (node(&nodes, "a"), node(&nodes, "c"));
    let mut watcher = a.client("browser", "ui").await;
    let mut first = c.client("worker", "w-c").await;
    first.register(&["demo:*"], 1).await;
    let mut submitter = a.client("hub", "backend").await;
    let id = submitter
        .submit_task(json!({"type": "demo:long", "maxAttempts": 3}))
        .await;
    watcher.subscribe(&[&format!("task:{id}")]).await;
    let held = first.next_assign().await;
    let held_id = held["id"].as_str().expect("id").to_string();
    first
        .send(json!({"type": "task:progress", "taskId": held_id, "progress": 10}))
        .await;
    let progress = loop {
        let event = next_event(&mut watcher).await;
        if event["data"]["progress"] == 10 {
            break event;
        }
    };
    assert_eq!(progress["data"]["hub"], "c", "{progress}");
    // The worker at c takes nothing new, so the task cannot go back there.
    first.send(json!({"type": "drain", "id": "d"})).await;
    assert_eq!(first.recv().await["type"], "draining");

    assert!(a.hub.disconnect_peer("c"));
    // a requeues the task (its first attempt counted) ...
    let requeued = next_event(&mut watcher).await;
    assert_eq!(requeued["data"]["state"], "queued", "{requeued}");
    assert_eq!(requeued["data"]["attempt"], 1);
    // ... and c stops its copy.
    let cancel = first.recv_type("task:cancel").await;
    assert_eq!(cancel["taskId"], held_id.as_str());

    // A later worker (at a) runs it.
    let mut second = a.client("worker", "w-a").await;
    second.register(&["demo:*"], 1).await;
    let again = second.next_assign().await;
    assert_eq!(again["id"], id.as_str());
    assert_eq!(again["attempt"], 2);
    second.complete_task(&id, json!("done")).await;
    let result = recv_one_of(&mut submitter, &["task:result"]).await;
    assert_eq!(result["task"]["state"], "completed");
    assert_eq!(result["task"]["attempt"], 2);

    // The first worker's late result counts for nothing.
    first
        .send(json!({"type": "task:complete", "id": "late", "taskId": held_id, "result": "late"}))
        .await;
    let refused = first.recv_type("error").await;
    assert_eq!(refused["code"], "not_assigned", "{refused}");
    all_up(&nodes).await;
    submitter.expect_quiet().await;
    let view = a.hub.tasks().get(&id).await.expect("get").expect("task");
    assert_eq!(view.result, Some(json!("done")));
}

/// An event from a peer takes the same publish path as a local one: on a
/// channel whose namespace keeps history, the hub that received it numbers
/// and keeps it, so its clients see offsets and recover it from history
/// like any other event.
#[tokio::test]
async fn a_peers_event_on_a_history_channel_is_numbered_and_kept() {
    let nodes = network(&["a", "b"], &[("a", "b")], |name, config| {
        if name == "b" {
            config.namespaces = vec![chanhub::config::NamespaceConfig {
                pattern: "chat:*".into(),
                history_size: 10,
                history_ttl: Duration::from_secs(600),
                presence: false,
                join_leave: false,
                allow_publish_by: Vec::new(),
                max_subscribers: None,
            }];
        }
    })
    .await;
    all_up(&nodes).await;
    let (a, b) = (node(&nodes, "a"), node(&nodes, "b"));
    let mut on_b = b.client("browser", "ui").await;
    on_b.subscribe(&["chat:1"]).await;
    interest(&nodes, "a", "b", 1).await;

    a.publish("chat:1", json!("first"));
    a.publish("chat:1", json!("second"));
    let first = next_event(&mut on_b).await;
    let second = next_event(&mut on_b).await;
    assert_eq!(
        (&first["data"], &second["data"]),
        (&json!("first"), &json!("second"))
    );
    let offset = |e: &Value| {
        e["offset"]
            .as_u64()
            .unwrap_or_else(|| panic!("no offset: {e}"))
    };
    assert_eq!(offset(&second), offset(&first) + 1, "{first} {second}");

    on_b.send(json!({"type": "history", "id": "h", "channel": "chat:1"}))
        .await;
    let page = on_b.recv().await;
    assert_eq!(page["type"], "history", "{page}");
    assert_eq!(page["offset"], second["offset"], "{page}");
    let kept: Vec<&Value> = page["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|e| &e["data"])
        .collect();
    assert_eq!(kept, [&json!("first"), &json!("second")], "{page}");
}

// ---- calls ----

/// Calls `method` from `caller` until some hub has a server for it (a
/// peer's `hub:serving` arrives after the link is up); returns the first
/// answer that is not `no_server`, or the last `no_server` after `WAIT`.
async fn call_when_served(caller: &mut WsClient, method: &str, params: Value) -> Value {
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut n = 0;
    loop {
        n += 1;
        caller
            .send(json!({"type": "call", "id": n, "method": method, "params": params}))
            .await;
        let answer = caller.recv().await;
        let unserved = answer["code"] == "no_server";
        if !unserved || tokio::time::Instant::now() >= deadline {
            return answer;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn a_call_crosses_a_link_only_for_exported_and_imported_methods() {
    let nodes = network(&["a", "b"], &[("a", "b")], |name, config| {
        let p = &mut config.federation.peers[0];
        match name {
            "a" => p.call_import = vec!["demo.*".into(), "secret.*".into()],
            _ => p.call_export = vec!["demo.*".into(), "other.*".into()],
        }
    })
    .await;
    all_up(&nodes).await;
    let (a, b) = (node(&nodes, "a"), node(&nodes, "b"));
    let mut worker = b.client("worker", "w").await;
    worker
        .send(json!({"type": "serve", "id": 1, "methods": ["demo.*", "secret.*", "other.*"]}))
        .await;
    assert_eq!(worker.recv().await["type"], "serving");
    let mut ui = a.client("browser", "ui-1").await;

    let answer = tokio::spawn(async move {
        let answer = call_when_served(&mut ui, "demo.add", json!({"a": 1, "b": 2})).await;
        (ui, answer)
    });
    let req = worker.recv_type("call:request").await;
    assert_eq!(req["method"], "demo.add", "{req}");
    assert_eq!(
        req["caller"]["sub"], "ui-1",
        "the caller as a saw it: {req}"
    );
    worker
        .send(json!({"type": "call:reply", "callId": req["callId"], "result": {"sum": 3}}))
        .await;
    let (mut ui, answer) = answer.await.expect("caller");
    assert_eq!(answer["type"], "result", "{answer}");
    assert_eq!(answer["result"], json!({"sum": 3}), "{answer}");

    // A cancel crosses too.
    ui.send(json!({"type": "call", "id": "c", "method": "demo.slow"}))
        .await;
    let req = worker.recv_type("call:request").await;
    ui.send(json!({"type": "call:cancel", "id": "c"})).await;
    let cancelled = worker.recv_type("call:cancelled").await;
    assert_eq!(cancelled["callId"], req["callId"], "{cancelled}");

    // secret.* is imported by a but not exported by b; other.* exported
    // but not imported: neither crosses.
    for method in ["secret.x", "other.x"] {
        ui.send(json!({"type": "call", "id": method, "method": method}))
            .await;
        let err = ui.recv().await;
        assert_eq!(err["code"], "no_server", "{method}: {err}");
    }

    // A server of its own comes first: a's worker takes a's calls.
    let mut local = a.client("worker", "local").await;
    local
        .send(json!({"type": "serve", "id": 1, "methods": ["demo.*"]}))
        .await;
    assert_eq!(local.recv().await["type"], "serving");
    ui.send(json!({"type": "call", "id": "here", "method": "demo.add"}))
        .await;
    let req = local.recv_type("call:request").await;
    local
        .send(json!({"type": "call:reply", "callId": req["callId"], "result": "local"}))
        .await;
    assert_eq!(ui.recv().await["result"], "local");
    worker.expect_quiet().await;
}

#[tokio::test]
async fn a_link_that_drops_mid_call_is_server_gone_at_once() {
    let mut nodes = network(&["a", "b"], &[("a", "b")], |name, config| {
        let p = &mut config.federation.peers[0];
        match name {
            "a" => p.call_import = vec!["**".into()],
            _ => p.call_export = vec!["**".into()],
        }
    })
    .await;
    all_up(&nodes).await;
    let mut worker = node(&nodes, "b").client("worker", "w").await;
    worker
        .send(json!({"type": "serve", "id": 1, "methods": ["job"]}))
        .await;
    assert_eq!(worker.recv().await["type"], "serving");
    let mut ui = node(&nodes, "a").client("browser", "ui").await;
    let pending = tokio::spawn(async move {
        let answer = call_when_served(&mut ui, "job", Value::Null).await;
        (ui, answer)
    });
    worker.recv_type("call:request").await;
    // b goes away: a's caller hears server_gone, not the deadline (30 s).
    let started = std::time::Instant::now();
    nodes.retain(|n| n.name != "b");
    let (_ui, answer) = pending.await.expect("caller");
    assert_eq!(answer["code"], "server_gone", "{answer}");
    assert!(started.elapsed() < Duration::from_secs(10));
}
