//! Redis going away under a cluster: killed (its data lost) or frozen with
//! SIGSTOP (a partition), and coming back. Nodes turn not ready and refuse
//! publishes, submits and task reports with `engine_unavailable`, keep
//! their connections, and recover by themselves: subscriptions restored,
//! presence members written again (with a `join`), and a completion or
//! dead letter Redis ran while frozen reported once. A submit or a publish
//! that was out when Redis froze is sent again once it thaws, and happens
//! exactly once from the clients' view. A node cut off from Redis while
//! the others are not catches up on the history channels its connections
//! receive once it is back.

mod common;

use std::time::Duration;

use chanhub::auth::ClientType;
use common::cluster::{
    ClusterNode, PRESENCE_TTL, RedisServer, cluster, expect_membership, flush, present,
    with_history, with_join_leave,
};
use common::proxy::Proxy;
use common::{WAIT, WsClient, expect_error};
use serde_json::{Value, json};

/// `GET /readyz`: (status code, body status).
async fn readyz(node: &ClusterNode) -> (u16, String) {
    let response = reqwest::get(node.http_url("/readyz"))
        .await
        .expect("readyz");
    let status = response.status().as_u16();
    let body: Value = response.json().await.expect("json");
    (
        status,
        body["status"].as_str().unwrap_or_default().to_string(),
    )
}

/// Polls `/readyz` until it answers `status`.
async fn wait_readyz(node: &ClusterNode, status: u16) -> String {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (code, body) = readyz(node).await;
        if code == status {
            return body;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "/readyz stayed {code} {body}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn redis_going_away_makes_nodes_not_ready_and_refuse_publishes_until_it_returns() {
    let Some((mut redis, nodes)) = cluster(2, |_| {}).await else {
        return;
    };
    let (a, b) = (&nodes[0], &nodes[1]);
    assert_eq!(readyz(a).await, (200, "ready".to_string()));
    let mut publisher = a.connect(ClientType::Hub, "backend").await;
    let mut ui = b.connect(ClientType::Browser, "ui").await;
    ui.subscribe(&["news:*"]).await;
    publisher.publish("news:1", json!("before")).await;
    assert_eq!(ui.recv_type("event").await["data"], "before");

    redis.stop();
    assert_eq!(wait_readyz(a, 503).await, "engine_unavailable");
    assert_eq!(wait_readyz(b, 503).await, "engine_unavailable");
    // Refused, with a code, over the WebSocket and over HTTP.
    publisher
        .send(json!({"type": "publish", "id": "p", "channel": "news:1", "data": "lost"}))
        .await;
    expect_error(&mut publisher, "engine_unavailable").await;
    let http = reqwest::Client::new()
        .post(a.http_url("/api/publish"))
        .bearer_auth(common::token_with(
            json!({"client_type": "hub", "sub": "backend"}),
        ))
        .json(&json!({"channel": "news:1", "data": "lost"}))
        .send()
        .await
        .expect("post");
    assert_eq!(http.status().as_u16(), 503);
    let body: Value = http.json().await.expect("json");
    assert_eq!(body["error"]["code"], "engine_unavailable", "{body}");
    publisher
        .send(json!({"type": "task:submit", "id": "t", "task": {"type": "x", "payload": {}}}))
        .await;
    expect_error(&mut publisher, "engine_unavailable").await;

    // Back on the same port, empty: the nodes reconnect and resubscribe.
    redis.restart().await;
    assert_eq!(wait_readyz(a, 200).await, "ready");
    assert_eq!(wait_readyz(b, 200).await, "ready");
    let reply = publisher.publish("news:1", json!("after")).await;
    assert_eq!(reply["type"], "published", "{reply}");
    // The same connections, still open; "lost" was never delivered.
    assert_eq!(ui.recv_type("event").await["data"], "after");
    ui.sync().await;
}

/// What the submitter hears until it has a `task:result` and a lifecycle
/// event, and then nothing more: (results, events).
async fn results_and_events(submitter: &mut WsClient) -> (Vec<Value>, Vec<Value>) {
    let (mut results, mut events) = (Vec::new(), Vec::new());
    while results.is_empty() || events.is_empty() {
        let msg = submitter.recv().await;
        match msg["type"].as_str() {
            Some("task:result") => results.push(msg["task"].clone()),
            Some("event") => events.push(msg["data"].clone()),
            _ => panic!("unexpected {msg}"),
        }
    }
    submitter.expect_quiet().await;
    (results, events)
}

#[tokio::test]
async fn task_operations_while_redis_is_away_are_refused_and_a_completion_is_reported_once() {
    let Some((mut redis, nodes)) = cluster(2, |_| {}).await else {
        return;
    };
    let (a, b) = (&nodes[0], &nodes[1]);
    let mut submitter = a.connect(ClientType::Hub, "backend").await;
    submitter.subscribe(&["task:completed"]).await;
    let mut worker = b.connect(ClientType::Worker, "w").await;
    worker.register(&["job"], 1).await;
    // A lease far longer than the outage.
    let task_id = submitter
        .submit_task(json!({"type": "job", "payload": 1, "timeoutMs": 600000}))
        .await;
    assert_eq!(worker.next_assign().await["id"], task_id.as_str());

    // Redis stops answering (a partition; it keeps its data). The node has
    // not noticed yet: the complete reaches Redis, which runs it only when
    // it answers again — the worker must not be acked meanwhile.
    redis.pause();
    worker
        .send(json!({"type": "task:complete", "id": "c1", "taskId": task_id, "result": "first"}))
        .await;
    let refused = expect_error(&mut worker, "engine_unavailable").await;
    assert_eq!(refused["id"], "c1", "{refused}");
    wait_readyz(a, 503).await;
    wait_readyz(b, 503).await;
    // Now known to be away: refused at once.
    worker
        .send(json!({"type": "task:complete", "id": "c2", "taskId": task_id, "result": "second"}))
        .await;
    expect_error(&mut worker, "engine_unavailable").await;
    let refused = submitter
        .submit_task_reply(json!({"type": "job", "payload": 2}))
        .await;
    assert_eq!(refused["code"], "engine_unavailable", "{refused}");

    redis.resume();
    wait_readyz(a, 200).await;
    wait_readyz(b, 200).await;
    // The worker tries again: acked, and the submitter hears of it once.
    worker
        .send(json!({"type": "task:complete", "id": "c3", "taskId": task_id, "result": "third"}))
        .await;
    let ack = worker.recv_type("task:ack").await;
    assert_eq!(ack["state"], "completed", "{ack}");
    // A repeat after the ack is refused, and tells nobody.
    worker
        .send(json!({"type": "task:complete", "id": "c4", "taskId": task_id, "result": "fourth"}))
        .await;
    expect_error(&mut worker, "invalid_state").await;

    let (results, events) = results_and_events(&mut submitter).await;
    assert_eq!(results.len(), 1);
    assert_eq!(events.len(), 1);
    assert_eq!(results[0]["state"], "completed", "{}", results[0]);
    // Whichever complete Redis ran first is the result: the one sent while
    // it was frozen (run when it thawed), or the retry.
    assert!(
        results[0]["result"] == "first" || results[0]["result"] == "third",
        "{}",
        results[0]
    );
    assert_eq!(events[0]["result"], results[0]["result"]);

    // Submits work again.
    submitter
        .submit_task(json!({"type": "job", "payload": 3}))
        .await;
}

#[tokio::test]
async fn members_are_written_again_and_rejoin_after_redis_lost_its_data() {
    let Some((mut redis, nodes)) = cluster(2, |config| {
        with_join_leave(config);
        config.redis.presence_ttl = PRESENCE_TTL;
    })
    .await
    else {
        return;
    };
    let (a, b) = (&nodes[0], &nodes[1]);
    let mut bob = b.connect(ClientType::Browser, "bob").await;
    bob.subscribe(&["room:1"]).await;
    expect_membership(&mut bob, "join", "room:1", "bob").await;
    flush(b).await;
    let mut watcher = b.connect(ClientType::Browser, "watcher").await;
    watcher.subscribe(&["room:*"]).await;
    let mut on_a = a.connect(ClientType::Browser, "alice").await;
    assert_eq!(present(&mut on_a, "room:1").await, ["bob"]);

    // Redis comes back empty: bob is still connected to B.
    redis.restart().await;
    wait_readyz(a, 200).await;
    wait_readyz(b, 200).await;
    // B writes bob again and says so; A lists bob again.
    expect_membership(&mut watcher, "join", "room:1", "bob").await;
    let deadline = tokio::time::Instant::now() + WAIT;
    while present(&mut on_a, "room:1").await != ["bob"] {
        assert!(
            tokio::time::Instant::now() < deadline,
            "bob never came back"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Bob himself was not told he joined again.
    bob.expect_quiet().await;
}

#[tokio::test]
async fn a_dead_letter_redis_ran_while_frozen_is_reported_once_when_the_worker_repeats_it() {
    let Some((mut redis, nodes)) = cluster(2, |_| {}).await else {
        return;
    };
    let (a, b) = (&nodes[0], &nodes[1]);
    let mut submitter = a.connect(ClientType::Hub, "backend").await;
    submitter.subscribe(&["task:dead"]).await;
    let mut worker = b.connect(ClientType::Worker, "w").await;
    worker.register(&["job"], 1).await;
    let task_id = submitter
        .submit_task(json!({"type": "job", "payload": 1, "timeoutMs": 600000}))
        .await;
    assert_eq!(worker.next_assign().await["id"], task_id.as_str());

    // A non-retryable error reaches the frozen Redis, runs when it thaws.
    redis.pause();
    worker
        .send(json!({"type": "task:error", "id": "e1", "taskId": task_id, "error": "bad input"}))
        .await;
    expect_error(&mut worker, "engine_unavailable").await;
    redis.resume();
    wait_readyz(b, 200).await;
    wait_readyz(a, 200).await;
    worker
        .send(json!({"type": "task:error", "id": "e2", "taskId": task_id, "error": "bad input"}))
        .await;
    let ack = worker.recv_type("task:ack").await;
    assert_eq!(ack["state"], "dead", "{ack}");
    worker
        .send(json!({"type": "task:error", "id": "e3", "taskId": task_id, "error": "bad input"}))
        .await;
    expect_error(&mut worker, "invalid_state").await;

    let (results, events) = results_and_events(&mut submitter).await;
    assert_eq!((results.len(), events.len()), (1, 1));
    assert_eq!(results[0]["state"], "dead", "{}", results[0]);
    assert_eq!(results[0]["error"], "bad input", "{}", results[0]);
}

/// `redis.timeout` of the tests that freeze Redis under a request: the
/// node gives up on the request after it and sends it again once Redis
/// answers, for up to four of it.
const FROZEN_TIMEOUT: Duration = Duration::from_secs(1);

/// Waits until `count` (a node's count of unanswered submits or publish
/// batches) is above `before`: a request the node sent reached the frozen
/// Redis and timed out, so the node sends it again once Redis answers.
async fn wait_unanswered(count: impl Fn() -> u64, before: u64) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let now = count();
        if now > before {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no request went unanswered"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn a_submit_out_when_redis_froze_is_accepted_once_and_runs_once() {
    let Some((mut redis, nodes)) = cluster(2, |c| c.redis.timeout = FROZEN_TIMEOUT).await else {
        return;
    };
    let (a, b) = (&nodes[0], &nodes[1]);
    let mut submitter = a.connect(ClientType::Hub, "backend").await;
    submitter
        .subscribe(&["task:{queued,assigned,completed}"])
        .await;
    let mut worker = b.connect(ClientType::Worker, "w").await;
    worker.register(&["job"], 1).await;

    // The submit reaches Redis as it freezes: Redis runs it when it thaws,
    // but the node, which got no answer in time, cannot know.
    redis.pause();
    submitter
        .send(json!({"type": "task:submit", "id": "s1", "task": {"type": "job", "payload": 1, "dedupKey": "job-1"}}))
        .await;
    wait_unanswered(|| a.hub.engine_unanswered_submits(), 0).await;
    redis.resume();

    // The node sent it again, the same task — not a duplicate of itself
    // by its dedup key: accepted once, before anything else about it.
    let accepted = submitter.recv().await;
    assert_eq!(accepted["type"], "task:accepted", "{accepted}");
    assert_eq!(accepted["id"], "s1", "{accepted}");
    assert_eq!(accepted["deduplicated"], false, "{accepted}");
    let task_id = accepted["taskId"].as_str().expect("taskId").to_string();
    let assign = worker.next_assign().await;
    assert_eq!(assign["id"], task_id.as_str(), "{assign}");
    assert_eq!(assign["attempt"], 1, "{assign}");
    worker.complete_task(&task_id, json!("done")).await;

    // One task, one life, one result.
    let mut heard = Vec::new();
    while heard.len() < 4 {
        let msg = submitter.recv().await;
        let what = match msg["type"].as_str() {
            Some("event") => {
                assert_eq!(msg["data"]["id"], task_id.as_str(), "{msg}");
                msg["channel"].as_str().expect("channel").to_string()
            }
            Some("task:result") => {
                assert_eq!(msg["task"]["id"], task_id.as_str(), "{msg}");
                "result".to_string()
            }
            _ => panic!("unexpected {msg}"),
        };
        heard.push(what);
    }
    let events: Vec<&str> = heard
        .iter()
        .map(String::as_str)
        .filter(|h| *h != "result")
        .collect();
    assert_eq!(
        events,
        ["task:queued", "task:assigned", "task:completed"],
        "{heard:?}"
    );
    submitter.expect_quiet().await;
    worker.expect_quiet().await;
    let listed: Value = reqwest::Client::new()
        .get(b.http_url("/api/tasks"))
        .bearer_auth(common::token_with(
            json!({"client_type": "hub", "sub": "backend"}),
        ))
        .send()
        .await
        .expect("list")
        .json()
        .await
        .expect("json");
    let listed = listed.as_array().expect("a list");
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["state"], "completed", "{listed:?}");
}

/// Publishes on `channel` from `publisher` while Redis is frozen, thaws it
/// once `node` found its batch unanswered, and checks the publish is acked
/// once and each subscriber gets the event once: the next event they get
/// is one published after it. Returns the events, one per subscriber.
async fn publish_across_a_freeze(
    redis: &mut common::cluster::RedisServer,
    node: &ClusterNode,
    publisher: &mut WsClient,
    subscribers: &mut [&mut WsClient],
    channel: &str,
    data: Value,
) -> Vec<Value> {
    let before = node.hub.engine_unanswered_batches();
    redis.pause();
    publisher
        .send(json!({"type": "publish", "id": channel, "channel": channel, "data": data}))
        .await;
    wait_unanswered(|| node.hub.engine_unanswered_batches(), before).await;
    redis.resume();
    // The node sent the batch again once Redis answered; the publish is
    // acked, once.
    let reply = publisher.recv().await;
    assert_eq!(reply["type"], "published", "{reply}");
    assert_eq!(reply["id"], channel, "{reply}");
    assert!(reply["delivered"].as_u64() >= Some(1), "{reply}");
    publisher.expect_quiet().await;
    // A copy of the event would come before this one (Redis keeps the
    // publishing node's order).
    publisher.publish_ok(channel, json!("next")).await;
    let mut events = Vec::new();
    for subscriber in subscribers.iter_mut() {
        let event = subscriber.recv().await;
        assert_eq!(event["type"], "event", "{event}");
        assert_eq!(event["channel"], channel, "{event}");
        assert_eq!(event["data"], data, "{event}");
        let next = subscriber.recv().await;
        assert_eq!(next["data"], "next", "a copy came first: {next}");
        events.push(event);
    }
    events
}

#[tokio::test]
async fn a_publish_out_when_redis_froze_is_delivered_and_kept_once() {
    let Some((mut redis, nodes)) = cluster(2, |c| {
        with_history(c);
        c.redis.timeout = FROZEN_TIMEOUT;
    })
    .await
    else {
        return;
    };
    let (a, b) = (&nodes[0], &nodes[1]);
    let mut publisher = a.connect(ClientType::Hub, "backend").await;
    // Subscribers on the publishing node and on the other one.
    let mut near = a.connect(ClientType::Browser, "near").await;
    near.subscribe(&["news:*", "chat:*"]).await;
    let mut far = b.connect(ClientType::Browser, "far").await;
    far.subscribe(&["news:*", "chat:*"]).await;

    // A plain publish: the copy Redis sent when it thawed is delivered,
    // the one sent again is dropped.
    publish_across_a_freeze(
        &mut redis,
        a,
        &mut publisher,
        &mut [&mut near, &mut far],
        "news:1",
        json!("once"),
    )
    .await;
    // A history channel's: kept once, with one offset.
    let events = publish_across_a_freeze(
        &mut redis,
        a,
        &mut publisher,
        &mut [&mut near, &mut far],
        "chat:1",
        json!("kept once"),
    )
    .await;
    for event in events {
        assert_eq!(event["offset"], 1, "{event}");
    }
    far.send(json!({"type": "history", "id": "h", "channel": "chat:1"}))
        .await;
    let page = far.recv_type("history").await;
    let events = page["events"].as_array().expect("events");
    let data: Vec<&Value> = events.iter().map(|e| &e["data"]).collect();
    assert_eq!(data, [&json!("kept once"), &json!("next")], "{page}");
    assert_eq!(events[1]["offset"], 2, "{page}");
}

#[tokio::test]
async fn a_submit_whose_node_died_before_queueing_it_is_queued_by_another_node() {
    // Short: a staged task waits twelve of these for its node.
    let Some((mut redis, mut nodes)) =
        cluster(2, |c| c.redis.timeout = Duration::from_millis(200)).await
    else {
        return;
    };
    let mut watcher = nodes[1].connect(ClientType::Browser, "watcher").await;
    watcher.subscribe(&["task:{queued,assigned}"]).await;
    let mut worker = nodes[1].connect(ClientType::Worker, "w").await;
    worker.register(&["job"], 1).await;
    let mut submitter = nodes[0].connect(ClientType::Hub, "backend").await;

    // Redis runs the submit when it thaws; by then its node is dead and
    // never releases the staged task to the queue.
    redis.pause();
    submitter
        .send(json!({"type": "task:submit", "id": "s1", "task": {"type": "job", "payload": 7}}))
        .await;
    wait_unanswered(|| nodes[0].hub.engine_unanswered_submits(), 0).await;
    nodes[0].kill();
    redis.resume();

    // The other node's reaper queues it; its worker runs it, once.
    let assign = worker.next_assign().await;
    assert_eq!(assign["payload"], 7, "{assign}");
    assert_eq!(assign["attempt"], 1, "{assign}");
    for channel in ["task:queued", "task:assigned"] {
        let event = watcher.recv().await;
        assert_eq!(event["channel"], channel, "{event}");
        assert_eq!(event["data"]["id"], assign["id"], "{event}");
    }
    worker.expect_quiet().await;
}

#[tokio::test]
async fn a_node_cut_off_from_redis_catches_up_on_history_channels_when_it_is_back() {
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let a = ClusterNode::start(&redis, "test:", with_history).await;
    // B reaches Redis through a proxy that can cut it off alone.
    let proxy = Proxy::start(([127, 0, 0, 1], redis.port).into()).await;
    let b = ClusterNode::start(&redis, "test:", |c| {
        with_history(c);
        c.redis.url = format!("redis://{}", proxy.addr());
    })
    .await;
    let mut publisher = a.connect(ClientType::Hub, "backend").await;
    // On B: one subscriber by name, one by pattern (two Redis
    // subscriptions of B, so two copies of each event reach it).
    let mut by_name = b.connect(ClientType::Browser, "by-name").await;
    by_name.subscribe(&["chat:1"]).await;
    let mut by_pattern = b.connect(ClientType::Browser, "by-pattern").await;
    by_pattern.subscribe(&["chat:*"]).await;
    publisher.publish_ok("chat:1", json!("one")).await;
    for subscriber in [&mut by_name, &mut by_pattern] {
        assert_eq!(subscriber.recv_type("event").await["offset"], 1);
    }

    // B loses Redis; A publishes meanwhile. B's subscribers stay
    // connected, and B's pub/sub connection misses the event.
    proxy.cut();
    wait_readyz(&b, 503).await;
    publisher.publish_ok("chat:1", json!("two")).await;
    proxy.reopen();
    wait_readyz(&b, 200).await;
    publisher.publish_ok("chat:1", json!("three")).await;

    // B read what it missed from the stream before delivering live
    // events: nothing lost, nothing twice.
    for subscriber in [&mut by_name, &mut by_pattern] {
        for (offset, data) in [(2, "two"), (3, "three")] {
            let event = subscriber.recv().await;
            assert_eq!(event["type"], "event", "{event}");
            assert_eq!(event["data"], data, "{event}");
            assert_eq!(event["offset"], offset, "{event}");
        }
        subscriber.expect_quiet().await;
    }
}
