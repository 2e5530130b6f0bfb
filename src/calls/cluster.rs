//! Calls across the nodes of a Redis cluster.
//!
//! Every node keeps what its connections serve in Redis (method patterns
//! and their total concurrency, renewed each `redis.health_interval`,
//! expiring after `redis.presence_ttl`), and reads the other nodes' entries
//! into its own registry, one remote server per node. A call a node routes
//! to another goes on that node's channel (`callRequest`); the node runs it
//! as a *relayed* call on its own servers and sends the outcome straight
//! back to the caller's node (`callAnswer`). A cancel follows the same way
//! (`callCancel`). A node whose entry expired (it died) stops being a
//! server: its calls in flight end with `server_gone`, and the calls it
//! relayed here are cancelled.
//!
//! A node tells the others when what it serves changes, and a `serve` is
//! acknowledged only once Redis has the new entry; a call that finds no
//! server reads the entries again before answering `no_server`, so a
//! method served anywhere is callable everywhere as soon as `serving` came.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{CallRequest, CallerPort, Calls, NewCall, ServerPort};
use crate::channels::{ChannelName, NameLimits, Pattern};
use crate::engine::redis::{NodeInbox, RedisEngine};
use crate::protocol::RequestId;
use crate::protocol::calls::CallOutcome;
use crate::protocol::cluster::NodeMessage;

/// What a node keeps in Redis about its servers.
#[derive(Debug, Serialize, Deserialize)]
struct Entry {
    /// Method patterns served by the node's connections.
    patterns: Vec<String>,
    /// Calls they run at once, in all.
    concurrency: u32,
}

/// The calls of one cluster node, as far as other nodes go.
pub(super) struct ClusterCalls {
    engine: Arc<RedisEngine>,
    calls: Weak<Calls>,
    limits: NameLimits,
    /// The other nodes this node routed to or took calls from.
    nodes: Mutex<HashMap<u64, Node>>,
    /// One advertisement at a time, so entries reach Redis in the order
    /// they were taken.
    advertising: tokio::sync::Mutex<String>,
    /// Another node's servers changed.
    changed: Notify,
}

/// Another node, as a server and as a caller.
#[derive(Clone)]
struct Node {
    server_id: u64,
    caller_id: u64,
    port: Arc<NodePort>,
}

/// Sends to one other node.
struct NodePort {
    engine: Arc<RedisEngine>,
    node: u64,
}

impl NodePort {
    fn send(&self, msg: &NodeMessage) {
        if !self.engine.send_to_node(self.node, msg.to_bytes()) {
            // Redis is away: the call ends at its deadline.
            tracing::debug!(node = self.node, "could not relay a call message");
        }
    }
}

impl ServerPort for NodePort {
    fn request(&self, call_id: &str, request: CallRequest) {
        self.send(&NodeMessage::CallRequest {
            from: self.engine.node(),
            call_id: call_id.to_string(),
            method: request.method,
            params: request.params,
            caller: request.caller,
            deadline: request.deadline,
        });
    }

    fn cancelled(&self, call_id: &str) {
        self.send(&NodeMessage::CallCancel {
            from: self.engine.node(),
            call_id: call_id.to_string(),
        });
    }
}

impl CallerPort for NodePort {
    fn answer(&self, request_id: RequestId, outcome: CallOutcome) {
        let RequestId::Str(call_id) = request_id else {
            return;
        };
        self.send(&NodeMessage::CallAnswer {
            from: self.engine.node(),
            call_id,
            outcome,
        });
    }
}

impl ClusterCalls {
    pub(super) fn new(
        engine: &Arc<RedisEngine>,
        calls: Weak<Calls>,
        limits: NameLimits,
    ) -> Arc<ClusterCalls> {
        let cluster = Arc::new(ClusterCalls {
            engine: Arc::clone(engine),
            calls,
            limits,
            nodes: Mutex::new(HashMap::new()),
            advertising: tokio::sync::Mutex::new(String::new()),
            changed: Notify::new(),
        });
        let inbox: Arc<dyn NodeInbox> = Arc::clone(&cluster) as _;
        engine.add_inbox(Arc::downgrade(&inbox));
        cluster
    }

    /// Renews this node's entry and re-reads the others' every refresh
    /// period (and when a node says its servers changed) until `shutdown`;
    /// then removes the entry.
    pub(super) fn start(self: &Arc<Self>, tracker: &TaskTracker, shutdown: CancellationToken) {
        let cluster = Arc::clone(self);
        tracker.spawn(async move {
            let mut tick = tokio::time::interval(cluster.engine.call_servers_refresh());
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    _ = tick.tick() => cluster.advertise_always().await,
                    () = cluster.changed.notified() => {}
                }
                cluster.refresh().await;
            }
            cluster.engine.forget_call_servers();
        });
    }

    /// Stores what this node serves now, telling the other nodes when it
    /// changed. Returns once Redis has it (or could not be reached).
    pub(super) async fn advertise(&self) {
        self.store(false).await;
    }

    /// [`advertise`](Self::advertise), renewing the entry even when
    /// nothing changed.
    async fn advertise_always(&self) {
        self.store(true).await;
    }

    async fn store(&self, renew: bool) {
        let Some(calls) = self.calls.upgrade() else {
            return;
        };
        let mut last = self.advertising.lock().await;
        let (patterns, concurrency) = calls.local_serving();
        let entry = serde_json::to_string(&Entry {
            patterns,
            concurrency,
        })
        .unwrap_or_default();
        let changed = *last != entry;
        if !changed && !renew {
            return;
        }
        match self.engine.store_call_servers(&entry).await {
            Ok(others) => {
                if changed {
                    let msg = NodeMessage::CallServersChanged {
                        from: self.engine.node(),
                    }
                    .to_bytes();
                    for node in others {
                        self.engine.send_to_node(node, msg.clone());
                    }
                }
                *last = entry;
            }
            Err(err) => tracing::debug!(error = %err, "could not store this node's call servers"),
        }
    }

    /// Reads the other nodes' entries into the registry. Nodes whose entry
    /// is gone are gone.
    pub(super) async fn refresh(&self) {
        let Some(calls) = self.calls.upgrade() else {
            return;
        };
        let entries = match self.engine.call_servers().await {
            Ok(entries) => entries,
            Err(err) => {
                // Keep the last view: Redis being away is not nodes dying.
                tracing::debug!(error = %err, "could not read the cluster's call servers");
                return;
            }
        };
        let mut alive = Vec::with_capacity(entries.len());
        for (node_id, entry) in entries {
            let Ok(entry) = serde_json::from_str::<Entry>(&entry) else {
                tracing::warn!(node = node_id, "ignoring a malformed call server entry");
                continue;
            };
            let patterns = entry
                .patterns
                .iter()
                .filter_map(|raw| Pattern::parse(raw, &self.limits).ok())
                .collect();
            let node = self.node(&calls, node_id);
            let port: Arc<dyn ServerPort> = node.port;
            calls.set_node(node.server_id, &port, patterns, entry.concurrency);
            alive.push(node_id);
        }
        let gone: Vec<Node> = {
            let mut nodes = self.lock();
            let gone: Vec<u64> = nodes
                .keys()
                .filter(|id| !alive.contains(id))
                .copied()
                .collect();
            gone.iter().filter_map(|id| nodes.remove(id)).collect()
        };
        for node in gone {
            tracing::info!(
                node = node.port.node,
                "a node's call servers expired: it is gone"
            );
            calls.endpoint_gone(node.server_id);
            calls.endpoint_gone(node.caller_id);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Node>> {
        self.nodes.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The endpoints of node `id`, made on first sight.
    fn node(&self, calls: &Calls, id: u64) -> Node {
        self.lock()
            .entry(id)
            .or_insert_with(|| Node {
                server_id: calls.endpoint_id(),
                caller_id: calls.endpoint_id(),
                port: Arc::new(NodePort {
                    engine: Arc::clone(&self.engine),
                    node: id,
                }),
            })
            .clone()
    }
}

impl NodeInbox for ClusterCalls {
    fn on_node_message(&self, msg: &NodeMessage) {
        let Some(calls) = self.calls.upgrade() else {
            return;
        };
        match msg {
            NodeMessage::CallRequest {
                from,
                call_id,
                method,
                params,
                caller,
                deadline,
            } => {
                let node = self.node(&calls, *from);
                let request_id = RequestId::Str(call_id.clone());
                let started = ChannelName::parse(method, &self.limits)
                    .map_err(crate::error::RequestError::from)
                    .and_then(|method| {
                        let call = NewCall {
                            caller_id: node.caller_id,
                            caller: Arc::clone(&node.port) as _,
                            request_id: request_id.clone(),
                            method,
                            params: params.clone(),
                            info: caller.clone(),
                        };
                        calls.call_relayed(call, *deadline)
                    });
                if let Err(err) = started {
                    let outcome = CallOutcome::Error {
                        code: err.code,
                        message: err.message,
                    };
                    node.port.answer(request_id, outcome);
                }
            }
            NodeMessage::CallCancel { from, call_id } => {
                let node = self.node(&calls, *from);
                calls.cancel(node.caller_id, &RequestId::Str(call_id.clone()));
            }
            NodeMessage::CallAnswer {
                from,
                call_id,
                outcome,
            } => {
                let node = self.node(&calls, *from);
                if matches!(outcome, CallOutcome::Error { code, .. } if *code == crate::error::ErrorCode::NoServer)
                {
                    // Our view of that node was stale.
                    self.changed.notify_one();
                }
                calls.answer_from(node.server_id, call_id, outcome.clone());
            }
            NodeMessage::CallServersChanged { .. } => self.changed.notify_one(),
            // The task side's.
            _ => {}
        }
    }
}
