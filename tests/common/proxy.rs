//! A TCP proxy in front of a hub, so a test can drop a client's
//! connection (a network failure) while the hub keeps running, then let
//! the client reconnect; and a balancer in front of cluster nodes, so
//! clients of a node that dies reconnect to another one.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// A TCP proxy in front of the hub, to drop the client's connection while
/// the hub keeps running.
pub struct Proxy {
    addr: SocketAddr,
    /// Whether new connections are forwarded (else closed at once).
    open: watch::Sender<bool>,
    /// Bumped to cut every forwarded connection.
    cuts: watch::Sender<u64>,
}

impl Proxy {
    pub async fn start(hub: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (open, open_rx) = watch::channel(true);
        let (cuts, cuts_rx) = watch::channel(0u64);
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if !*open_rx.borrow() {
                    continue; // dropped: the client's attempt fails
                }
                let mut cut = cuts_rx.clone();
                cut.mark_unchanged();
                tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(hub).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = cut.changed() => {}
                    }
                });
            }
        });
        Proxy { addr, open, cuts }
    }

    pub fn url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    /// Where it listens (a proxy in front of Redis: `redis://<addr>`).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Refuses new connections and cuts the current ones.
    pub fn cut(&self) {
        self.open.send_replace(false);
        self.cuts.send_modify(|n| *n += 1);
    }

    /// Forwards new connections again.
    pub fn reopen(&self) {
        self.open.send_replace(true);
    }
}

/// A TCP balancer in front of cluster nodes, as README's "Running a
/// cluster" puts one there: new connections go only to nodes whose
/// `GET /readyz` answers 200 (checked every 50 ms, and a node that refuses
/// the connection is skipped at once). Frontend `i` prefers node `i` and
/// falls over to the next ready ones in order, so a test decides where a
/// client lands while its node is up, and where it goes when that node
/// dies. A connection stays on its node until one side closes it.
pub struct Balancer {
    frontends: Vec<SocketAddr>,
    /// Whether each node answered its last `/readyz` with 200.
    ready: Arc<Vec<AtomicBool>>,
    /// Connections forwarded, by frontend, then by node.
    routed: Arc<Mutex<Vec<Vec<u64>>>>,
    /// Stops the health checks, the frontends and every forwarded
    /// connection (on drop).
    stop: CancellationToken,
}

impl Balancer {
    /// One frontend per node of `nodes`.
    pub async fn start(nodes: &[SocketAddr]) -> Balancer {
        let stop = CancellationToken::new();
        let ready: Arc<Vec<AtomicBool>> =
            Arc::new(nodes.iter().map(|_| AtomicBool::new(false)).collect());
        let routed = Arc::new(Mutex::new(vec![vec![0; nodes.len()]; nodes.len()]));
        for (i, node) in nodes.iter().copied().enumerate() {
            tokio::spawn(check_ready(node, Arc::clone(&ready), i, stop.clone()));
        }
        let mut frontends = Vec::new();
        for i in 0..nodes.len() {
            let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            frontends.push(listener.local_addr().expect("addr"));
            let order: Vec<usize> = (0..nodes.len()).map(|k| (i + k) % nodes.len()).collect();
            let frontend = Frontend {
                index: i,
                nodes: nodes.to_vec(),
                order,
                ready: Arc::clone(&ready),
                routed: Arc::clone(&routed),
            };
            tokio::spawn(frontend.run(listener, stop.clone()));
        }
        Balancer {
            frontends,
            ready,
            routed,
            stop,
        }
    }

    /// Waits (bounded by [`WAIT`](super::WAIT)) until the balancer has
    /// seen node `i` ready, so a frontend preferring it routes to it.
    pub async fn wait_ready(&self, i: usize) {
        let deadline = tokio::time::Instant::now() + super::WAIT;
        while !self.ready[i].load(Ordering::Acquire) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the balancer never saw node {i} ready"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The WebSocket URL of frontend `i` (which prefers node `i`).
    pub fn url(&self, i: usize) -> String {
        format!("ws://{}/ws", self.frontends[i])
    }

    /// Connections frontend `i` forwarded so far, by node.
    pub fn routed(&self, i: usize) -> Vec<u64> {
        self.routed.lock().unwrap_or_else(|e| e.into_inner())[i].clone()
    }
}

impl Drop for Balancer {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Keeps `ready[i]` up to date with `GET /readyz` of `node`.
async fn check_ready(
    node: SocketAddr,
    ready: Arc<Vec<AtomicBool>>,
    i: usize,
    stop: CancellationToken,
) {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_millis(500))
        .build()
        .expect("http client");
    let url = format!("http://{node}/readyz");
    loop {
        let up = matches!(http.get(&url).send().await, Ok(r) if r.status().is_success());
        ready[i].store(up, Ordering::Release);
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_millis(50)) => {}
        }
    }
}

/// One listening address of a [`Balancer`].
struct Frontend {
    index: usize,
    nodes: Vec<SocketAddr>,
    /// Node indexes, most preferred first.
    order: Vec<usize>,
    ready: Arc<Vec<AtomicBool>>,
    routed: Arc<Mutex<Vec<Vec<u64>>>>,
}

impl Frontend {
    async fn run(self, listener: TcpListener, stop: CancellationToken) {
        let frontend = Arc::new(self);
        loop {
            let inbound = tokio::select! {
                _ = stop.cancelled() => return,
                accepted = listener.accept() => match accepted {
                    Ok((inbound, _)) => inbound,
                    Err(_) => continue,
                },
            };
            let frontend = Arc::clone(&frontend);
            let stop = stop.clone();
            tokio::spawn(async move {
                // No ready node: the client's attempt fails and it retries.
                let Some(mut outbound) = frontend.connect().await else {
                    return;
                };
                let mut inbound = inbound;
                tokio::select! {
                    _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                    _ = stop.cancelled() => {}
                }
            });
        }
    }

    /// A connection to the first ready node that accepts one.
    async fn connect(&self) -> Option<TcpStream> {
        for &node in &self.order {
            if !self.ready[node].load(Ordering::Acquire) {
                continue;
            }
            match TcpStream::connect(self.nodes[node]).await {
                Ok(stream) => {
                    let _ = stream.set_nodelay(true);
                    self.routed.lock().unwrap_or_else(|e| e.into_inner())[self.index][node] += 1;
                    return Some(stream);
                }
                // Down since the last check: skip it until it is ready again.
                Err(_) => self.ready[node].store(false, Ordering::Release),
            }
        }
        None
    }
}
