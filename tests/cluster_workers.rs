//! Cluster workers and their nodes: worker ids unique across nodes and a
//! task record naming the node that runs it, the worker list showing every
//! live node's workers, draining, and the tasks of a node that is killed
//! (leases expire) or shut down gracefully (handed back at once) finishing
//! on another node's worker once.

mod common;

use std::time::Duration;

use chanhub::auth::ClientType;
use common::WAIT;
use common::cluster::{ClusterNode, PRESENCE_TTL, cluster};
use serde_json::{Value, json};

/// Node `node`'s id in the cluster.
fn node_id(node: &ClusterNode) -> String {
    node.hub.engine().node_id().expect("a cluster node")
}

#[tokio::test]
async fn worker_ids_are_unique_across_nodes_and_hub_names_the_node_running_the_task() {
    let Some((_redis, nodes)) = cluster(2, |_| {}).await else {
        return;
    };
    let (a, b) = (&nodes[0], &nodes[1]);
    // The first connection of each node: the same connection id on both.
    let mut on_a = a.connect(ClientType::Worker, "wa").await;
    let mut on_b = b.connect(ClientType::Worker, "wb").await;
    let id_a = on_a.register(&["render"], 1).await["workerId"].clone();
    let id_b = on_b.register(&["mail"], 1).await["workerId"].clone();
    assert_ne!(id_a, id_b, "worker ids repeat across nodes");
    assert_eq!(id_a, json!(format!("{}-1", node_id(a))));
    assert_eq!(id_b, json!(format!("{}-1", node_id(b))));

    // A task submitted on A, run by B's worker: its record names B.
    let mut submitter = a.connect(ClientType::Hub, "backend").await;
    submitter.subscribe(&["task:queued", "task:assigned"]).await;
    let task_id = submitter
        .submit_task(json!({"type": "mail", "payload": 1}))
        .await;
    let queued = submitter.recv_type("event").await;
    assert_eq!(queued["channel"], "task:queued", "{queued}");
    assert!(queued["data"].get("hub").is_none(), "{queued}");
    assert!(queued["data"].get("workerId").is_none(), "{queued}");
    let assigned = submitter.recv_type("event").await;
    assert_eq!(assigned["channel"], "task:assigned", "{assigned}");
    assert_eq!(assigned["data"]["workerId"], id_b, "{assigned}");
    assert_eq!(assigned["data"]["hub"], node_id(b).as_str(), "{assigned}");
    assert_eq!(on_b.next_assign().await["id"], task_id.as_str());
    on_b.complete_task(&task_id, json!("sent")).await;
    let result = submitter.recv_type("task:result").await;
    assert_eq!(result["task"]["workerId"], id_b, "{result}");
    assert_eq!(result["task"]["hub"], node_id(b).as_str(), "{result}");

    // The same in the HTTP record and the workers list, asked on A.
    let http = common::bearer_client(&common::token_with(
        json!({"client_type": "hub", "sub": "ops"}),
    ));
    let record: Value = http
        .get(a.http_url(&format!("/api/tasks/{task_id}")))
        .send()
        .await
        .expect("GET task")
        .json()
        .await
        .expect("json");
    assert_eq!(record["workerId"], id_b, "{record}");
    assert_eq!(record["hub"], node_id(b).as_str(), "{record}");
    let ids =
        |list: &[Value]| -> Vec<Value> { list.iter().map(|w| w["workerId"].clone()).collect() };
    let workers = workers_until(a, |list| list.len() == 2).await;
    let mut expected = vec![id_a, id_b];
    expected.sort_by(|x, y| x.as_str().cmp(&y.as_str()));
    assert_eq!(ids(&workers), expected);
}

#[tokio::test]
async fn a_draining_worker_finishes_its_task_and_gets_no_new_one_in_cluster_mode() {
    let Some((_redis, nodes)) = cluster(2, |_| {}).await else {
        return;
    };
    let (a, b) = (&nodes[0], &nodes[1]);
    let mut submitter = a.connect(ClientType::Hub, "backend").await;
    let mut leaving = b.connect(ClientType::Worker, "leaving").await;
    leaving.register(&["job"], 2).await;
    let first = submitter
        .submit_task(json!({"type": "job", "payload": 1}))
        .await;
    assert_eq!(leaving.next_assign().await["id"], first.as_str());
    leaving.send(json!({"type": "drain", "id": "d"})).await;
    let draining = leaving.recv_type("draining").await;
    assert_eq!(draining["running"], 1, "{draining}");

    // A free slot, but draining: the next task waits for another worker.
    let second = submitter
        .submit_task(json!({"type": "job", "payload": 2}))
        .await;
    let http = common::bearer_client(&common::token_with(
        json!({"client_type": "hub", "sub": "ops"}),
    ));
    let workers: Value = http
        .get(b.http_url("/api/workers"))
        .send()
        .await
        .expect("GET workers")
        .json()
        .await
        .expect("json");
    assert_eq!(workers[0]["draining"], true, "{workers}");
    assert_eq!(workers[0]["running"], json!([first]), "{workers}");
    let mut staying = a.connect(ClientType::Worker, "staying").await;
    staying.register(&["job"], 1).await;
    assert_eq!(staying.next_assign().await["id"], second.as_str());

    // The running task still completes.
    leaving.complete_task(&first, json!("done")).await;
    staying.complete_task(&second, json!("done")).await;
    let mut results = Vec::new();
    for _ in 0..2 {
        let result = submitter.recv_type("task:result").await;
        assert_eq!(result["task"]["state"], "completed", "{result}");
        results.push(result["task"]["id"].as_str().expect("id").to_string());
    }
    results.sort();
    let mut expected = vec![first, second];
    expected.sort();
    assert_eq!(results, expected);
    leaving.expect_quiet().await;
}

/// Polls `GET /api/workers` on `node` until `done` holds for the list;
/// returns it.
async fn workers_until(node: &ClusterNode, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let http = common::bearer_client(&common::token_with(
        json!({"client_type": "hub", "sub": "ops"}),
    ));
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let list: Value = http
            .get(node.http_url("/api/workers"))
            .send()
            .await
            .expect("GET /api/workers")
            .json()
            .await
            .expect("json");
        let list = list.as_array().expect("a list").clone();
        if done(&list) {
            return list;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "GET /api/workers never got there: {list:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn the_worker_list_shows_every_live_nodes_workers() {
    let Some((_redis, mut nodes)) = cluster(3, |config| {
        config.redis.presence_ttl = PRESENCE_TTL;
    })
    .await
    else {
        return;
    };
    let mut on_a = nodes[0].connect(ClientType::Worker, "wa").await;
    let id_a = on_a.register(&["render"], 1).await["workerId"].clone();
    let mut on_b = nodes[1].connect(ClientType::Worker, "wb").await;
    let id_b = on_b.register(&["mail"], 2).await["workerId"].clone();
    on_b.send(json!({"type": "drain", "id": "d"})).await;
    on_b.recv_type("draining").await;
    let mut submitter = nodes[2].connect(ClientType::Hub, "backend").await;
    let task_id = submitter
        .submit_task(json!({"type": "render", "payload": 1}))
        .await;
    assert_eq!(on_a.next_assign().await["id"], task_id.as_str());

    // Asked on C, which has no worker: A's and B's, as they are now.
    let mut expected = vec![
        (id_a.clone(), json!("wa"), json!([task_id]), json!(false)),
        (id_b.clone(), json!("wb"), json!([]), json!(true)),
    ];
    expected.sort_by(|x, y| x.0.as_str().cmp(&y.0.as_str()));
    let shown = |list: &[Value]| -> Vec<(Value, Value, Value, Value)> {
        list.iter()
            .map(|w| {
                (
                    w["workerId"].clone(),
                    w["sub"].clone(),
                    w["running"].clone(),
                    w["draining"].clone(),
                )
            })
            .collect()
    };
    let list = workers_until(&nodes[2], |list| shown(list) == expected).await;

    // A worker's task messages move its lastSeen, on every node's list.
    let seen = |list: &[Value]| -> u64 {
        let wa = list.iter().find(|w| w["workerId"] == id_a).expect("wa");
        wa["lastSeen"].as_u64().expect("lastSeen")
    };
    let before = seen(&list);
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        on_a.send(json!({"type": "task:progress", "id": "p", "taskId": task_id, "progress": 10}))
            .await;
        on_a.recv_type("task:ack").await;
        let now = workers_until(&nodes[2], |list| list.len() == 2).await;
        if seen(&now) > before {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "lastSeen never moved"
        );
    }

    // B dies: its worker drops out once B's snapshot expires.
    nodes[1].kill();
    drop(on_b);
    let list = workers_until(&nodes[2], |list| list.len() == 1).await;
    assert_eq!(list[0]["workerId"], id_a, "{list:?}");
    // A's worker leaves: nobody.
    drop(on_a);
    workers_until(&nodes[0], |list| list.is_empty()).await;
    workers_until(&nodes[2], |list| list.is_empty()).await;
}

#[tokio::test]
async fn tasks_held_by_a_killed_node_are_completed_by_another_nodes_worker_once() {
    let Some((_redis, mut nodes)) = cluster(3, |_| {}).await else {
        return;
    };
    let mut submitter = nodes[0].connect(ClientType::Hub, "backend").await;
    submitter.subscribe(&["task:completed"]).await;
    let mut doomed = nodes[2].connect(ClientType::Worker, "doomed").await;
    doomed.register(&["job"], 2).await;
    let mut ids = Vec::new();
    for n in 0..2 {
        ids.push(
            submitter
                .submit_task(json!({"type": "job", "payload": n, "timeoutMs": 300}))
                .await,
        );
    }
    // Both held by the worker on the node about to die.
    for _ in 0..2 {
        let assign = doomed.next_assign().await;
        assert_eq!(assign["attempt"], 1);
    }
    let mut survivor = nodes[1].connect(ClientType::Worker, "survivor").await;
    survivor.register(&["job"], 2).await;
    nodes[2].kill();
    drop(doomed);

    // The leases run out; the other node's worker gets both, second attempt.
    let mut taken = Vec::new();
    for _ in 0..2 {
        let assign = survivor.next_assign().await;
        assert_eq!(assign["attempt"], 2, "{assign}");
        taken.push(assign["id"].as_str().expect("id").to_string());
    }
    for id in &taken {
        survivor.complete_task(id, json!("done")).await;
    }
    taken.sort();
    ids.sort();
    assert_eq!(taken, ids);

    // The submitter hears of each completion once: one result, one event.
    let mut results = Vec::new();
    let mut completed = Vec::new();
    while results.len() < 2 || completed.len() < 2 {
        let msg = submitter.recv().await;
        match msg["type"].as_str() {
            Some("task:result") => {
                assert_eq!(msg["task"]["state"], "completed", "{msg}");
                results.push(msg["task"]["id"].as_str().unwrap_or_default().to_string());
            }
            Some("event") => {
                completed.push(msg["data"]["id"].as_str().unwrap_or_default().to_string())
            }
            _ => panic!("unexpected {msg}"),
        }
    }
    results.sort();
    completed.sort();
    assert_eq!(results, ids);
    assert_eq!(completed, ids);
    submitter.expect_quiet().await;
}

#[tokio::test]
async fn a_node_shut_down_gracefully_hands_its_workers_tasks_to_other_nodes_at_once() {
    let Some((_redis, mut nodes)) = cluster(3, |_| {}).await else {
        return;
    };
    let mut submitter = nodes[0].connect(ClientType::Hub, "backend").await;
    let mut leaving = nodes[1].connect(ClientType::Worker, "leaving").await;
    leaving.register(&["job"], 1).await;
    // A lease far longer than any wait here: only the hand-back can move it.
    let id = submitter
        .submit_task(json!({"type": "job", "payload": 1, "timeoutMs": 600000}))
        .await;
    assert_eq!(leaving.next_assign().await["id"], id.as_str());
    let mut staying = nodes[2].connect(ClientType::Worker, "staying").await;
    staying.register(&["job"], 1).await;

    // Rolling restart of node 1: SIGTERM-like shutdown.
    nodes[1].shutdown().await;
    let assign = staying.next_assign().await;
    assert_eq!(assign["id"], id.as_str());
    assert_eq!(assign["attempt"], 2, "{assign}");
    staying.complete_task(&id, json!("ok")).await;
    let result = submitter.recv_type("task:result").await;
    assert_eq!(result["task"]["state"], "completed", "{result}");
    assert_eq!(result["task"]["attempt"], 2, "{result}");
}
