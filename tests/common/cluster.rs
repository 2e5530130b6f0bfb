//! Cluster mode: a `redis-server` child on a free loopback port, hub nodes
//! on it that can be killed without a graceful shutdown, and the helpers
//! the `cluster_*` tests share.

use std::net::SocketAddr;
use std::time::Duration;

use chanhub::auth::ClientType;
use chanhub::config::NamespaceConfig;
use chanhub::{Config, Hub};
use serde_json::json;
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::{SECRET, WAIT, WsClient, token_with};

/// Whether the Redis half of the tests can run: `true` when a
/// `redis-server` binary is on PATH. When it is not, a missing install step
/// must not pass unnoticed: this panics saying how to install it, unless
/// `CHANHUB_SKIP_REDIS=1` is set, in which case it prints why the Redis half
/// is skipped and returns `false`.
pub fn redis_available() -> bool {
    let found = std::process::Command::new("redis-server")
        .arg("--version")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok();
    if found {
        return true;
    }
    if std::env::var("CHANHUB_SKIP_REDIS").as_deref() == Ok("1") {
        eprintln!("skipping the Redis half: no redis-server on PATH and CHANHUB_SKIP_REDIS=1");
        return false;
    }
    panic!(
        "redis-server not found: install it with `apt-get install redis-server` \
         (bash .ci/test does), or set CHANHUB_SKIP_REDIS=1 to skip the Redis half"
    );
}

/// A `redis-server` child process on a free loopback port, killed on drop.
pub struct RedisServer {
    pub port: u16,
    child: Option<std::process::Child>,
    dir: tempfile::TempDir,
    /// Whether it keeps an append-only file (fsync before every reply), so
    /// a kill and a restart lose nothing it answered.
    persistent: bool,
}

impl RedisServer {
    /// Starts Redis. Without a `redis-server` binary on PATH this panics
    /// with how to install it, unless `CHANHUB_SKIP_REDIS=1` is set: then
    /// it returns `None` (with the reason printed) and the caller skips its
    /// Redis half. See [`redis_available`].
    pub async fn start() -> Option<RedisServer> {
        RedisServer::start_with(false).await
    }

    /// Like [`RedisServer::start`], with an append-only file fsynced before
    /// every reply (`appendfsync always`): [`RedisServer::stop`] (SIGKILL)
    /// and [`RedisServer::restart`] lose nothing Redis answered, as in a
    /// deployment that runs it with persistence.
    pub async fn start_persistent() -> Option<RedisServer> {
        RedisServer::start_with(true).await
    }

    async fn start_with(persistent: bool) -> Option<RedisServer> {
        if !redis_available() {
            return None;
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let mut server = RedisServer {
            port,
            child: None,
            dir: tempfile::tempdir().expect("tempdir"),
            persistent,
        };
        server.restart().await;
        Some(server)
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kills Redis (SIGKILL). Its data is gone unless it was started with
    /// [`RedisServer::start_persistent`].
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Freezes Redis (SIGSTOP), as a network partition would: commands
    /// get no answer, and the data is kept for [`RedisServer::resume`].
    pub fn pause(&mut self) {
        self.signal("-STOP");
    }

    /// Thaws Redis after [`RedisServer::pause`] (SIGCONT).
    pub fn resume(&mut self) {
        self.signal("-CONT");
    }

    fn signal(&mut self, signal: &str) {
        let child = self.child.as_ref().expect("redis-server running");
        let status = std::process::Command::new("kill")
            .arg(signal)
            .arg(child.id().to_string())
            .status()
            .expect("kill");
        assert!(status.success(), "kill {signal} failed");
    }

    /// Starts Redis (again) on the same port and waits until it answers
    /// (a persistent one has loaded its append-only file by then).
    pub async fn restart(&mut self) {
        self.stop();
        let appendonly: &[&str] = if self.persistent {
            &["--appendonly", "yes", "--appendfsync", "always"]
        } else {
            &["--appendonly", "no"]
        };
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let child = std::process::Command::new("redis-server")
                .args(["--port", &self.port.to_string()])
                .args(["--bind", "127.0.0.1", "--save", ""])
                .args(appendonly)
                .arg("--dir")
                .arg(self.dir.path())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .expect("spawn redis-server");
            self.child = Some(child);
            if self.answers(deadline).await {
                return;
            }
            // The port may still be held by the previous process: retry.
            self.stop();
            assert!(
                tokio::time::Instant::now() < deadline,
                "redis-server did not start"
            );
        }
    }

    /// Polls PING until `+PONG`, the child exits, or `deadline`.
    async fn answers(&mut self, deadline: tokio::time::Instant) -> bool {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        while tokio::time::Instant::now() < deadline {
            if let Some(child) = self.child.as_mut() {
                if matches!(child.try_wait(), Ok(Some(_))) {
                    return false;
                }
            }
            if let Ok(mut tcp) = TcpStream::connect(("127.0.0.1", self.port)).await {
                let mut buf = [0u8; 7];
                if tcp.write_all(b"PING\r\n").await.is_ok()
                    && tcp.read_exact(&mut buf).await.is_ok()
                    && &buf == b"+PONG\r\n"
                {
                    return true;
                }
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        false
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A hub node on its own runtime, so the test can kill it the way a
/// crash would: every task stops and every socket closes at once, with no
/// graceful shutdown.
pub struct ClusterNode {
    pub addr: SocketAddr,
    pub hub: Hub,
    runtime: Option<tokio::runtime::Runtime>,
    /// Asks for a graceful shutdown.
    stop: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<Result<(), chanhub::ServerError>>>,
    _data: tempfile::TempDir,
}

impl ClusterNode {
    /// A node of the cluster on `redis` (key prefix `prefix`), with test
    /// defaults, then `tweak`. Returns once the node reaches Redis.
    pub async fn start(
        redis: &RedisServer,
        prefix: &str,
        tweak: impl FnOnce(&mut Config),
    ) -> ClusterNode {
        let data = tempfile::tempdir().expect("tempdir");
        let mut config = Config::default();
        config.auth.secret = Some(SECRET.into());
        config.data_dir = Some(data.path().to_path_buf());
        config.log.level = "warn".into();
        config.engine = chanhub::config::EngineKind::Redis;
        config.redis.url = redis.url();
        config.redis.key_prefix = prefix.into();
        config.redis.health_interval = Duration::from_millis(50);
        config.redis.timeout = Duration::from_millis(500);
        tweak(&mut config);
        config.validate().expect("valid test config");
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let hub = {
            let _entered = runtime.enter();
            Hub::new(config).expect("hub")
        };
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("addr");
        let served = hub.clone();
        let (stop, stopped) = oneshot::channel::<()>();
        let server = runtime.spawn(async move {
            let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
            chanhub::serve(listener, served, async {
                let _ = stopped.await;
            })
            .await
        });
        let node = ClusterNode {
            addr,
            hub,
            runtime: Some(runtime),
            stop: Some(stop),
            server: Some(server),
            _data: data,
        };
        node.wait_ready().await;
        node
    }

    /// Waits until the node reaches Redis.
    pub async fn wait_ready(&self) {
        assert!(
            self.hub.engine().wait_ready(WAIT).await,
            "node did not reach Redis"
        );
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    pub fn http_url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub async fn connect(&self, ty: ClientType, sub: &str) -> WsClient {
        let token = token_with(json!({ "client_type": ty.as_str(), "sub": sub }));
        let mut client = WsClient::connect(&self.ws_url()).await;
        client.send(json!({"type": "auth", "token": token})).await;
        let reply = client.recv().await;
        assert_eq!(reply["type"], "auth:success", "auth reply: {reply}");
        client
    }

    /// Shuts the node down gracefully (as on SIGTERM) and waits until it
    /// has finished.
    pub async fn shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(server) = self.server.take() {
            let served = tokio::time::timeout(WAIT, server)
                .await
                .expect("graceful shutdown timed out");
            served.expect("server task").expect("server");
        }
    }

    /// Kills the node: no graceful shutdown, its sockets just close.
    pub fn kill(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl Drop for ClusterNode {
    fn drop(&mut self) {
        self.kill();
    }
}

// ---- Shared by the cluster_* tests ----

/// `redis.presence_ttl` of the tests that wait for a dead node to drop out:
/// short, but well above a health check delayed by a loaded machine (a
/// live node whose heartbeat lapses counts as dead).
pub const PRESENCE_TTL: Duration = Duration::from_secs(1);

/// Starts Redis and `n` nodes on it, or `None` when Redis is not installed
/// and `CHANHUB_SKIP_REDIS=1` skips the Redis half.
pub async fn cluster(
    n: usize,
    tweak: impl Fn(&mut Config),
) -> Option<(RedisServer, Vec<ClusterNode>)> {
    let redis = RedisServer::start().await?;
    let mut nodes = Vec::with_capacity(n);
    for _ in 0..n {
        nodes.push(ClusterNode::start(&redis, "test:", &tweak).await);
    }
    Some((redis, nodes))
}

/// `chat:*` keeps history.
pub fn with_history(config: &mut Config) {
    config.namespaces = vec![NamespaceConfig {
        pattern: "chat:*".into(),
        history_size: 100,
        history_ttl: Duration::from_secs(600),
        presence: false,
        join_leave: false,
        allow_publish_by: Vec::new(),
        max_subscribers: None,
    }];
}

/// `room:*` has presence with `join` / `leave`.
pub fn with_join_leave(config: &mut Config) {
    config.namespaces = vec![NamespaceConfig {
        pattern: "room:*".into(),
        history_size: 0,
        history_ttl: Duration::ZERO,
        presence: true,
        join_leave: true,
        allow_publish_by: Vec::new(),
        max_subscribers: None,
    }];
}

/// Returns once every Redis write `node` queued before the call is done:
/// a hub's publish goes out through the node's one ordered publisher
/// connection and is acked only after Redis ran it (presence writes and
/// `join` / `leave` go through the same connection).
pub async fn flush(node: &ClusterNode) {
    flush_at(node.addr).await;
}

/// [`flush`] for the node serving on `addr`.
pub async fn flush_at(addr: SocketAddr) {
    let mut backend = WsClient::connect(&format!("ws://{addr}/ws")).await;
    let token = token_with(json!({"client_type": "hub", "sub": "flush"}));
    backend.send(json!({"type": "auth", "token": token})).await;
    let reply = backend.recv().await;
    assert_eq!(reply["type"], "auth:success", "auth reply: {reply}");
    backend.publish_ok("sync:flush", json!(null)).await;
}

/// The `sub`s in `presence` of `channel`, asked on `client`'s node.
pub async fn present(client: &mut WsClient, channel: &str) -> Vec<String> {
    client
        .send(json!({"type": "presence", "id": "p", "channel": channel}))
        .await;
    let reply = client.recv_type("presence").await;
    let mut subs: Vec<String> = reply["clients"]
        .as_array()
        .unwrap_or_else(|| panic!("no clients: {reply}"))
        .iter()
        .map(|c| c["sub"].as_str().unwrap_or_default().to_string())
        .collect();
    subs.sort();
    subs
}

/// The next message, which must be `ty` (`join` / `leave`) of `sub` on
/// `channel`.
pub async fn expect_membership(client: &mut WsClient, ty: &str, channel: &str, sub: &str) {
    let msg = client.recv().await;
    assert_eq!(msg["type"], ty, "expected a {ty}: {msg}");
    assert_eq!(msg["channel"], channel, "{msg}");
    assert_eq!(msg["info"]["sub"], sub, "{msg}");
}
