//! One harness for both engines: a behaviour scenario is written once as
//! `async fn scenario(engine: Engine)` against [`Hubs`], and
//! [`on_both_engines!`] turns it into two tests, `scenario::memory` (one
//! in-process hub) and `scenario::redis` (a `redis-server` child on a free
//! port and cluster nodes on it).
//!
//! A scenario that asks for several nodes gets them on Redis; on memory
//! every node is the same hub. So "publish on node 0, subscribe on node 1"
//! is a cross-node check on Redis and the same check on one hub on memory.

use std::net::SocketAddr;

use chanhub::Config;
use chanhub::auth::ClientType;
use serde_json::{Value, json};

use super::cluster::{ClusterNode, RedisServer, flush_at, redis_available};
use super::{TestHub, WsClient, authenticated, bearer_client, token_with};

/// Which engine a scenario runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Engine {
    /// The default in-process engine: one [`TestHub`].
    Memory,
    /// `engine = "redis"`: [`ClusterNode`]s on a [`RedisServer`] child.
    Redis,
}

impl Engine {
    /// Whether this engine's half can run here. Memory always can; Redis
    /// panics without `redis-server` unless `CHANHUB_SKIP_REDIS=1` (see
    /// [`redis_available`]).
    pub fn available(self) -> bool {
        match self {
            Engine::Memory => true,
            Engine::Redis => redis_available(),
        }
    }
}

/// The running hub(s) of one scenario. Dropped nodes first, then Redis.
pub struct Hubs {
    pub engine: Engine,
    memory: Option<TestHub>,
    nodes: Vec<ClusterNode>,
    /// Declared last: dropped after the nodes that use it.
    _redis: Option<RedisServer>,
}

impl Hubs {
    /// One hub on `engine` with test defaults, then `tweak`.
    pub async fn start(engine: Engine, tweak: impl Fn(&mut Config)) -> Hubs {
        Hubs::nodes(engine, 1, tweak).await
    }

    /// `n` nodes on Redis (one hub on memory), each with `tweak`.
    pub async fn nodes(engine: Engine, n: usize, tweak: impl Fn(&mut Config)) -> Hubs {
        assert!(n >= 1, "at least one node");
        match engine {
            Engine::Memory => Hubs {
                engine,
                memory: Some(TestHub::with_config(&tweak).await),
                nodes: Vec::new(),
                _redis: None,
            },
            Engine::Redis => {
                let redis = RedisServer::start()
                    .await
                    .expect("the Redis half runs only when redis-server is installed");
                let mut nodes = Vec::with_capacity(n);
                for _ in 0..n {
                    nodes.push(ClusterNode::start(&redis, "test:", &tweak).await);
                }
                Hubs {
                    engine,
                    memory: None,
                    nodes,
                    _redis: Some(redis),
                }
            }
        }
    }

    /// Node `i` (on memory: the one hub, whatever `i`).
    pub fn node(&self, i: usize) -> Node {
        let addr = match &self.memory {
            Some(hub) => hub.addr,
            None => {
                self.nodes
                    .get(i)
                    .unwrap_or_else(|| panic!("no node {i}: started {}", self.nodes.len()))
                    .addr
            }
        };
        Node { addr }
    }

    /// Returns once every write to the engine that the nodes queued before
    /// the call is done. Memory writes before it answers; a Redis node
    /// writes presence members after `subscribed`, in order with its
    /// publishes, so a publish acked on each node proves them written.
    pub async fn flush(&self) {
        for node in &self.nodes {
            flush_at(node.addr).await;
        }
    }
}

impl TestHub {
    /// This hub as a [`Node`], for helpers written for both engines.
    pub fn node(&self) -> Node {
        Node { addr: self.addr }
    }
}

/// One node's address, and the clients a scenario opens on it.
#[derive(Clone, Copy, Debug)]
pub struct Node {
    pub addr: SocketAddr,
}

impl Node {
    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    pub fn http_url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// A token of `ty` for `sub`, valid for an hour.
    pub fn token(&self, ty: ClientType, sub: &str) -> String {
        token_with(json!({ "client_type": ty.as_str(), "sub": sub }))
    }

    /// Connects and authenticates; returns the client and `auth:success`.
    pub async fn connect(&self, ty: ClientType, sub: &str) -> (WsClient, Value) {
        self.connect_with_token(&self.token(ty, sub)).await
    }

    pub async fn connect_with_token(&self, token: &str) -> (WsClient, Value) {
        authenticated(&self.ws_url(), token).await
    }

    /// An HTTP client that sends `Authorization: Bearer <token>`.
    pub fn http(&self, token: &str) -> reqwest::Client {
        bearer_client(token)
    }
}

/// Turns `async fn $name(engine: Engine)` into the tests `$name::memory`
/// and `$name::redis`. Extra arguments go to `#[tokio::test(...)]`, e.g.
/// `on_both_engines!(name, flavor = "multi_thread", worker_threads = 2);`.
/// The scenario stays an ordinary function, so rustfmt formats it.
#[allow(unused_macros)]
macro_rules! on_both_engines {
    ($name:ident $(, $($args:tt)*)?) => {
        mod $name {
            #[tokio::test$(($($args)*))?]
            async fn memory() {
                super::$name($crate::common::engine::Engine::Memory).await;
            }

            #[tokio::test$(($($args)*))?]
            async fn redis() {
                if $crate::common::engine::Engine::Redis.available() {
                    super::$name($crate::common::engine::Engine::Redis).await;
                }
            }
        }
    };
}
#[allow(unused_imports)]
pub(crate) use on_both_engines;
