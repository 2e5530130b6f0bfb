//! The processes of the fault run: Redis, the `chanhub` nodes behind the
//! balancer, and the worker that is frozen with SIGSTOP.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::mpsc;

use crate::common::child::{ChildHub, free_port, list_tasks};
use crate::common::cluster::RedisServer;
use crate::common::proxy::Balancer;
use crate::common::{bearer_client, example, token_with};
use crate::{LEASE, RUN_WAIT, SURVIVORS, load::TASK_TYPE, try_wait_for};

/// The nodes' configuration, beside `CHANHUB_AUTH__SECRET` (the tests'
/// secret) and `CHANHUB_LOG__LEVEL=warn`. Health checks every 100 ms and
/// a 500 ms Redis timeout make the outages short; `feed:9`'s two-event
/// window is exceeded by a client that misses three events (it is then
/// told `recovered: false`); `task:completed` keeps every completion so a
/// submitter that reconnects recovers the ones it missed.
fn node_config(redis_url: &str) -> String {
    format!(
        r#"engine = "redis"

[redis]
url = "{redis_url}"
key_prefix = "chaos:"
health_interval = "100ms"
timeout = "500ms"
presence_ttl = "2s"

[tasks]
durable = false

[[namespaces]]
pattern = "feed:*"
history_size = 10000
history_ttl = "10m"

[[namespaces]]
pattern = "feed:9"
history_size = 2
history_ttl = "10m"

[[namespaces]]
pattern = "task:completed"
history_size = 100000
history_ttl = "10m"
"#
    )
}

/// Redis, the nodes (`None` while killed) and the balancer in front.
pub(crate) struct Cluster {
    pub(crate) redis: RedisServer,
    nodes: Vec<Option<ChildHub>>,
    addrs: Vec<SocketAddr>,
    /// Each node's data directory (kept across its restart).
    data: Vec<tempfile::TempDir>,
    /// The configuration file and the nodes' logs.
    dir: tempfile::TempDir,
    pub(crate) balancer: Balancer,
}

/// One node's memory, KiB.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Memory {
    /// Resident memory (`VmRSS`).
    pub(crate) rss: u64,
    /// Its anonymous part (`RssAnon`): what the process allocated, without
    /// the pages of its binary (which grow as code runs for the first
    /// time, such as the failover paths).
    pub(crate) anon: u64,
}

/// The memory and the gauges of the nodes once the clients have gone.
pub(crate) struct Settled {
    /// Each node's memory once no connection was left, and at the last
    /// reading.
    pub(crate) first: Vec<Memory>,
    pub(crate) memory: Vec<Memory>,
    /// Connections and subscriptions each node still counts.
    pub(crate) connections: Vec<u64>,
    pub(crate) subscriptions: Vec<u64>,
    /// From the clients' close to no connection left, and to the last
    /// reading.
    pub(crate) emptied: Duration,
    pub(crate) took: Duration,
}

impl Cluster {
    /// Redis (persistent), `n` nodes on it and the balancer, all ready;
    /// `None` when `CHANHUB_SKIP_REDIS=1` skips the Redis tests.
    pub(crate) async fn start(n: usize) -> Option<Cluster> {
        let redis = RedisServer::start_persistent().await?;
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("node.toml"), node_config(&redis.url()))
            .expect("write the node config");
        let addrs: Vec<SocketAddr> = (0..n).map(|_| free_port()).collect();
        let data: Vec<tempfile::TempDir> = (0..n)
            .map(|_| tempfile::tempdir().expect("tempdir"))
            .collect();
        let mut nodes = Vec::new();
        for i in 0..n {
            let log = dir.path().join(format!("node-{i}.log"));
            let config = dir.path().join("node.toml");
            nodes.push(Some(
                ChildHub::start_configured(data[i].path(), addrs[i], &config, &log).await,
            ));
        }
        let balancer = Balancer::start(&addrs).await;
        for i in 0..n {
            balancer.wait_ready(i).await;
        }
        let cluster = Cluster {
            redis,
            nodes,
            addrs,
            data,
            dir,
            balancer,
        };
        Some(cluster)
    }

    fn log_path(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("node-{i}.log"))
    }

    fn config_path(&self) -> PathBuf {
        self.dir.path().join("node.toml")
    }

    /// The memory of every node (all must be running).
    pub(crate) fn memory(&self) -> Vec<Memory> {
        (0..self.nodes.len())
            .map(|i| Memory {
                rss: self.node(i).status_kib("VmRSS"),
                anon: self.node(i).status_kib("RssAnon"),
            })
            .collect()
    }

    /// Node `i`, which must be running.
    pub(crate) fn node(&self, i: usize) -> &ChildHub {
        self.nodes[i].as_ref().expect("the node is running")
    }

    /// SIGKILL node `i`.
    pub(crate) fn kill(&mut self, i: usize) {
        self.nodes[i].take().expect("the node is running").kill();
    }

    /// Starts node `i` (again, on its address and data directory) and
    /// waits until it is ready.
    pub(crate) async fn restart(&mut self, i: usize) {
        let node = ChildHub::start_configured(
            self.data[i].path(),
            self.addrs[i],
            &self.config_path(),
            &self.log_path(i),
        )
        .await;
        self.nodes[i] = Some(node);
    }

    /// Fails the run if a running node has exited.
    pub(crate) fn assert_alive(&mut self) {
        for i in 0..self.nodes.len() {
            let status = self.nodes[i].as_mut().and_then(ChildHub::exited);
            if let Some(status) = status {
                let log = std::fs::read_to_string(self.log_path(i)).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(30).collect();
                panic!(
                    "node {i} crashed ({status}); the end of its log:\n{}",
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                );
            }
        }
    }

    /// Waits until every running node's `/readyz` answers `status`.
    pub(crate) async fn wait_readyz(&self, status: u16) {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_millis(500))
            .build()
            .expect("http client");
        let deadline = tokio::time::Instant::now() + RUN_WAIT;
        for (i, node) in self.nodes.iter().enumerate() {
            let Some(node) = node else { continue };
            let url = format!("http://{}/readyz", node.addr);
            loop {
                let got = http.get(&url).send().await.map(|r| r.status().as_u16());
                if got.as_ref().ok() == Some(&status) {
                    break;
                }
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "node {i}'s /readyz stayed {got:?}, not {status}"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }

    /// `GET /api/tasks?state=<state>` on node 0.
    pub(crate) async fn tasks(&self, state: &str) -> Vec<Value> {
        list_tasks(&format!("http://{}", self.addrs[0]), state).await
    }

    /// `GET /api/tasks/{id}` on node 0.
    pub(crate) async fn task(&self, id: &str) -> Value {
        let http = bearer_client(&token_with(json!({"client_type": "hub", "sub": "checker"})));
        http.get(format!("http://{}/api/tasks/{id}", self.addrs[0]))
            .send()
            .await
            .expect("GET /api/tasks/{id}")
            .json()
            .await
            .expect("JSON")
    }

    /// After every client closed: waits until each node counts no
    /// connection and no subscription, then until the survivors' allocated
    /// memory (`RssAnon`) is at most `limit` of what it was before the
    /// load (reading every 250 ms for up to 20 s: the allocator hands freed
    /// pages back over seconds).
    pub(crate) async fn settle(
        &mut self,
        before: &[Memory],
        limit: impl Fn(u64) -> u64,
    ) -> Settled {
        let started = Instant::now();
        let n = self.nodes.len();
        let (mut connections, mut subscriptions) = (vec![0; n], vec![0; n]);
        let deadline = tokio::time::Instant::now() + RUN_WAIT;
        loop {
            for i in 0..n {
                (connections[i], subscriptions[i]) = self.gauges(i).await;
            }
            let idle = connections.iter().chain(&subscriptions).all(|g| *g == 0);
            if idle || tokio::time::Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let emptied = started.elapsed();
        let first = self.memory();
        let mut memory = first.clone();
        try_wait_for(Duration::from_secs(20), || {
            memory = self.memory();
            SURVIVORS
                .iter()
                .all(|&i| memory[i].anon <= limit(before[i].anon))
        })
        .await;
        Settled {
            first,
            memory,
            emptied,
            connections,
            subscriptions,
            took: started.elapsed(),
        }
    }

    /// Node `i`'s `chanhub_connections` (all transports and client
    /// types) and `chanhub_subscriptions`, from `/metrics`.
    async fn gauges(&self, i: usize) -> (u64, u64) {
        let text = reqwest::get(format!("http://{}/metrics", self.addrs[i]))
            .await
            .expect("GET /metrics")
            .text()
            .await
            .expect("metrics text");
        let value = |line: &str| -> u64 {
            let number = line.rsplit(' ').next().unwrap_or_default();
            number.parse::<f64>().unwrap_or(0.0) as u64
        };
        let connections = text
            .lines()
            .filter(|l| l.starts_with("chanhub_connections{"))
            .map(value)
            .sum();
        let subscriptions = text
            .lines()
            .filter(|l| l.starts_with("chanhub_subscriptions "))
            .map(value)
            .sum();
        (connections, subscriptions)
    }

    /// Node `i`'s log lines (both lives of a restarted node): the
    /// error-level lines and panics, and the warnings counted by message.
    pub(crate) fn log_lines(&self, i: usize) -> (Vec<String>, HashMap<String, usize>) {
        let log = std::fs::read_to_string(self.log_path(i)).unwrap_or_default();
        let mut errors = Vec::new();
        let mut warnings = HashMap::new();
        for line in log.lines() {
            if line.contains("ERROR") || line.contains("panicked") {
                errors.push(line.to_string());
            } else if let Some((_, message)) = line.split_once(" WARN ") {
                // `<target>: <message> <fields>`: keep the message.
                let message = message.split_once(": ").map_or(message, |(_, m)| m);
                let message: String = message.chars().take(60).collect();
                *warnings.entry(message).or_default() += 1;
            }
        }
        (errors, warnings)
    }
}

/// `kill -<signal> <pid>`.
fn signal(pid: u32, signal: &str) {
    let status = std::process::Command::new("kill")
        .arg(signal)
        .arg(pid.to_string())
        .status()
        .expect("run kill");
    assert!(status.success(), "kill {signal} {pid} failed");
}

/// `examples/worker` as a process of its own, so it can be frozen.
pub(crate) struct WorkerProcess {
    child: tokio::process::Child,
    /// Its stdout and stderr, line by line.
    lines: mpsc::UnboundedReceiver<String>,
    /// Its worker id, from its first line.
    worker_id: String,
}

/// What freezing the worker process did.
pub(crate) struct Frozen {
    /// The worker process's worker id.
    pub(crate) worker: String,
    /// The task it held, the attempt it held it at, and the attempt that
    /// took it over.
    pub(crate) task: String,
    pub(crate) attempt: u64,
    pub(crate) next_attempt: u64,
    /// How long it stayed frozen.
    pub(crate) took: Duration,
    /// What the worker said about the task once thawed.
    pub(crate) heard: String,
}

impl WorkerProcess {
    /// Starts `examples/worker` on `url` and waits until it has
    /// registered: 400 ms a task, so it is caught holding one, and four
    /// slots, more than the other workers' two (a node hands a task to its
    /// worker with the most free slots), so it gets tasks.
    pub(crate) async fn start(url: &str) -> WorkerProcess {
        let token = token_with(json!({"client_type": "worker", "sub": "worker-process"}));
        let mut child = tokio::process::Command::new(example("worker"))
            .args(["--url", url, "--capabilities", "job:*", "--slots", "4"])
            .args(["--work-ms", "400", "--token", &token])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("start examples/worker");
        let (tx, mut lines) = mpsc::unbounded_channel();
        for pipe in [
            Box::new(child.stdout.take().expect("stdout"))
                as Box<dyn tokio::io::AsyncRead + Send + Unpin>,
            Box::new(child.stderr.take().expect("stderr")),
        ] {
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut reader = BufReader::new(pipe).lines();
                while let Ok(Some(line)) = reader.next_line().await {
                    let _ = tx.send(line);
                }
            });
        }
        let worker_id = loop {
            let line = next_line(&mut lines).await;
            if let Some(rest) = line.strip_prefix("registered as worker ") {
                break rest.split(' ').next().unwrap_or_default().to_string();
            }
        };
        WorkerProcess {
            child,
            lines,
            worker_id,
        }
    }

    /// Freezes the worker (SIGSTOP) as it starts a task, keeps it frozen
    /// until the task's lease expired and another attempt of it began,
    /// then thaws it (SIGCONT) and waits until it says it lost the task.
    pub(crate) async fn freeze_past_lease(&mut self, cluster: &Cluster) -> Frozen {
        while self.lines.try_recv().is_ok() {}
        let (task, attempt) = loop {
            let line = next_line(&mut self.lines).await;
            if let Some(started) = task_started(&line) {
                break started;
            }
        };
        let pid = self.child.id().expect("the worker process runs");
        signal(pid, "-STOP");
        let stopped = Instant::now();
        let deadline = tokio::time::Instant::now() + LEASE + RUN_WAIT;
        let next_attempt = loop {
            let record = cluster.task(&task).await;
            let now = record["attempt"].as_u64().unwrap_or(0);
            if now > attempt {
                break now;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the frozen worker's task never ran again: {record}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        signal(pid, "-CONT");
        let took = stopped.elapsed();
        let heard = loop {
            let line = next_line(&mut self.lines).await;
            if line.contains(&task) && (line.contains("stopped") || line.contains("refused")) {
                break line;
            }
        };
        Frozen {
            worker: self.worker_id.clone(),
            task,
            attempt,
            next_attempt,
            took,
            heard,
        }
    }

    /// Stops it as ctrl-c would (it drains and closes), bounded; killed if
    /// it does not exit.
    pub(crate) async fn stop(&mut self) {
        if let Some(pid) = self.child.id() {
            signal(pid, "-INT");
        }
        if tokio::time::timeout(RUN_WAIT, self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
            panic!("the worker process did not exit after SIGINT");
        }
    }
}

/// The next line of the worker process (bounded by [`RUN_WAIT`]).
async fn next_line(lines: &mut mpsc::UnboundedReceiver<String>) -> String {
    tokio::time::timeout(RUN_WAIT, lines.recv())
        .await
        .expect("the worker process went quiet")
        .expect("the worker process ended")
}

/// `<id>: job:a attempt <n> payload …` (a task started) → (id, n).
fn task_started(line: &str) -> Option<(String, u64)> {
    let (id, rest) = line.split_once(": ")?;
    let rest = rest.strip_prefix(TASK_TYPE)?.strip_prefix(" attempt ")?;
    let attempt = rest.split(' ').next()?.parse().ok()?;
    Some((id.to_string(), attempt))
}
