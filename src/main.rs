//! The `chanhub` command: run the hub, mint tokens, and talk to a hub from
//! the shell. The only place that uses `anyhow`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use chanhub::auth::{ClientType, TokenClaims, mint};
use chanhub::channels::list::split_list;
use chanhub::client::{Client, ClientOptions, TokenSource, render};
use chanhub::config::{Config, DEFAULT_CONFIG_TOML, LogConfig};
use chanhub::protocol::now_ms;
use clap::{Parser, Subcommand};
use jsonwebtoken::{Algorithm, EncodingKey};

/// jemalloc rather than glibc malloc: with its background purging thread
/// (switched on in `main`) it hands freed pages back to the system, where
/// glibc kept a soak run's RSS 16 % above its post-warm-up level with
/// nothing left in the hub (`benches/soak/README.md`).
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// The tokio runtime: one worker thread per CPU the process may run on
/// (its affinity, so `taskset -c 0` means one), and on a single CPU the
/// current-thread scheduler, which does the same work without the
/// multi-thread scheduler's cross-thread queues: a publish to 1,000
/// subscribers wakes 1,000 tasks, and on one worker most of them overflow
/// its 256-slot local queue into the shared one.
fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    let cpus = std::thread::available_parallelism().map_or(1, usize::from);
    if cpus == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(cpus)
            .enable_all()
            .build()
    }
}

#[derive(Parser)]
#[command(name = "chanhub", version, about = "A pub/sub channel hub")]
struct Cli {
    /// Configuration file (TOML). Without one, defaults and CHANHUB_* variables apply.
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the hub.
    Serve {
        /// Address to listen on (overrides `listen`).
        #[arg(long, value_name = "ADDR")]
        listen: Option<std::net::SocketAddr>,
        /// Log as JSON lines instead of human-readable text.
        #[arg(long)]
        json_logs: bool,
        /// Where cross-node state lives: memory (one node) or redis (a
        /// cluster; overrides `engine`).
        #[arg(long, value_name = "ENGINE")]
        engine: Option<chanhub::config::EngineKind>,
        /// Redis URL for `--engine redis` (overrides `redis.url`).
        #[arg(long, value_name = "URL")]
        redis_url: Option<String>,
    },
    /// Mint a token signed with the hub's key.
    Token {
        /// Client type.
        #[arg(long = "type", value_name = "TYPE", value_parser = parse_client_type)]
        client_type: ClientType,
        /// Subject: who the client is.
        #[arg(long)]
        sub: String,
        /// Lifetime, e.g. 30m, 1h, 7d.
        #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
        ttl: Duration,
        /// Narrow what the token may subscribe to (comma-separated patterns).
        #[arg(long, value_name = "PATTERNS")]
        channels: Option<String>,
        /// Narrow where the token may publish (comma-separated patterns).
        #[arg(long, value_name = "PATTERNS")]
        publish: Option<String>,
        /// Cap what a worker may register (comma-separated task-type patterns).
        #[arg(long, value_name = "PATTERNS")]
        capabilities: Option<String>,
        /// Cap a worker's slots.
        #[arg(long, value_name = "N")]
        max_slots: Option<u32>,
        /// Narrow which methods the token may call (comma-separated patterns).
        #[arg(long, value_name = "PATTERNS")]
        call: Option<String>,
        /// Narrow which methods the token may serve (comma-separated patterns).
        #[arg(long, value_name = "PATTERNS")]
        serve: Option<String>,
        /// PEM private key, for RS256 / ES256 / EdDSA hubs.
        #[arg(long, value_name = "FILE")]
        private_key: Option<PathBuf>,
    },
    /// Subscribe and print events: readable and coloured on a terminal,
    /// one JSON object per line when piped.
    Sub {
        /// Channel patterns, e.g. 'session:*' 'task:**'.
        #[arg(required = true)]
        patterns: Vec<String>,
        /// Print JSON lines even on a terminal.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        conn: ConnArgs,
    },
    /// Publish one event.
    Pub {
        /// Channel name.
        channel: String,
        /// Event data as JSON, e.g. '{"text":"hi"}'.
        data: String,
        #[command(flatten)]
        conn: ConnArgs,
    },
    /// Submit, list, show and cancel tasks (over the HTTP API).
    Tasks {
        #[command(subcommand)]
        command: TasksCommand,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Call a method that a connected worker serves (POST
    /// /api/call/METHOD) and print its result; the exit status is non-zero
    /// when the call fails.
    Call {
        /// Method name, e.g. demo.add.
        method: String,
        /// Params as JSON, e.g. '{"a":1,"b":2}'.
        #[arg(default_value = "null")]
        params: String,
        /// Stop waiting after this long, e.g. 5s (default: the hub's
        /// calls.default_timeout).
        #[arg(long, value_parser = humantime::parse_duration)]
        timeout: Option<Duration>,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// List live workers.
    Workers {
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Show this hub's federation links (GET /api/federation).
    Federation {
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Print the default configuration file, every option commented.
    Config,
}

#[derive(Subcommand)]
enum TasksCommand {
    /// Submit a task; prints its id.
    Submit {
        /// Task type, e.g. embedding:local.
        #[arg(value_name = "TYPE")]
        kind: String,
        /// Payload as JSON.
        #[arg(default_value = "null")]
        payload: String,
        /// 0-9, higher first.
        #[arg(long)]
        priority: Option<u8>,
        /// Lease per attempt, e.g. 30s.
        #[arg(long, value_parser = humantime::parse_duration)]
        timeout: Option<Duration>,
        /// Deliveries before the task is dead-lettered.
        #[arg(long)]
        max_attempts: Option<u32>,
        /// Return the existing task while one with this key is unfinished.
        #[arg(long)]
        dedup_key: Option<String>,
        /// Wait for the task to finish, showing its progress on stderr; the
        /// exit status is 0 only when it completes. Needs a hub token, not an
        /// admin key (it follows the task over WebSocket).
        #[arg(long)]
        wait: bool,
    },
    /// List tasks, oldest first.
    List {
        /// queued, assigned, failed, completed, dead or cancelled.
        #[arg(long)]
        state: Option<String>,
        /// Task-type pattern, e.g. 'embedding:*'.
        #[arg(long = "type", value_name = "PATTERN")]
        kind: Option<String>,
    },
    /// Show one task.
    Show {
        /// Task id.
        id: String,
    },
    /// Cancel a task.
    Cancel {
        /// Task id.
        id: String,
    },
}

#[derive(clap::Args)]
struct ApiArgs {
    /// Hub HTTP URL. Default: http://<listen> from the config.
    #[arg(long, global = true)]
    url: Option<String>,
    /// Hub token or admin key. Default: mint a short-lived hub token with the local secret.
    #[arg(long, global = true)]
    token: Option<String>,
}

#[derive(clap::Args)]
struct ConnArgs {
    /// Hub WebSocket URL. Default: ws://<listen>/ws from the config.
    #[arg(long)]
    url: Option<String>,
    /// Token. Default: mint a short-lived hub token with the local secret.
    #[arg(long)]
    token: Option<String>,
}

fn parse_client_type(s: &str) -> Result<ClientType, String> {
    s.parse()
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    if let Command::Config = cli.command {
        print!("{DEFAULT_CONFIG_TOML}");
        return Ok(());
    }
    let config = Config::load(cli.config.as_deref())?;
    let runtime = runtime().context("starting the tokio runtime")?;
    match cli.command {
        Command::Serve {
            listen,
            json_logs,
            engine,
            redis_url,
        } => {
            let mut config = config;
            if let Some(engine) = engine {
                config.engine = engine;
            }
            if let Some(url) = redis_url {
                config.redis.url = url;
            }
            config.validate()?;
            // Purge freed memory in the background, not only when the hub
            // happens to allocate again (an idle hub would keep it).
            let _ = tikv_jemalloc_ctl::background_thread::write(true);
            runtime.block_on(serve(config, cli.config.as_deref(), listen, json_logs))
        }
        Command::Token {
            client_type,
            sub,
            ttl,
            channels,
            publish,
            capabilities,
            max_slots,
            call,
            serve,
            private_key,
        } => {
            let claims = TokenClaims {
                sub,
                exp: now_ms() / 1000 + ttl.as_secs(),
                iat: Some(now_ms() / 1000),
                client_type,
                channels: channels.as_deref().map(list),
                publish: publish.as_deref().map(list),
                capabilities: capabilities.as_deref().map(list),
                max_slots,
                call: call.as_deref().map(list),
                serve: serve.as_deref().map(list),
            };
            println!("{}", sign(&config, &claims, private_key.as_deref())?);
            Ok(())
        }
        Command::Sub {
            patterns,
            json,
            conn,
        } => {
            init_logs(&config.log, false, "warn");
            runtime.block_on(sub(&config, patterns, json, conn))
        }
        Command::Pub {
            channel,
            data,
            conn,
        } => {
            init_logs(&config.log, false, "warn");
            let data: serde_json::Value = serde_json::from_str(&data)
                .with_context(|| format!("the event data is not valid JSON: {data}"))?;
            runtime.block_on(publish(&config, channel, data, conn))
        }
        Command::Tasks { command, api } => runtime.block_on(tasks(&config, command, api)),
        Command::Call {
            method,
            params,
            timeout,
            api,
        } => {
            let params: serde_json::Value = serde_json::from_str(&params)
                .with_context(|| format!("the params are not valid JSON: {params}"))?;
            runtime.block_on(async {
                let (http, base) = http_client(&config, api)?;
                let mut request = http.post(format!("{base}/api/call/{method}")).json(&params);
                if let Some(timeout) = timeout {
                    request = request.query(&[("timeoutMs", timeout.as_millis() as u64)]);
                }
                print_json(request.send().await?).await
            })
        }
        Command::Workers { api } => runtime.block_on(async {
            let (http, base) = http_client(&config, api)?;
            print_json(http.get(format!("{base}/api/workers")).send().await?).await
        }),
        Command::Federation { api } => runtime.block_on(async {
            let (http, base) = http_client(&config, api)?;
            print_json(http.get(format!("{base}/api/federation")).send().await?).await
        }),
        Command::Config => Ok(()),
    }
}

/// An HTTP client with the caller's bearer token, and the hub's base URL.
fn http_client(config: &Config, api: ApiArgs) -> Result<(reqwest::Client, String)> {
    let base = api
        .url
        .unwrap_or_else(|| format!("http://{}", config.listen))
        .trim_end_matches('/')
        .to_string();
    let token = match api.token {
        Some(token) => token,
        None => sign(config, &cli_claims(), None)
            .context("no --token given and no local secret to mint one")?,
    };
    let mut headers = reqwest::header::HeaderMap::new();
    let value = reqwest::header::HeaderValue::from_str(&format!("Bearer {token}"))
        .context("the token is not a valid header value")?;
    headers.insert(reqwest::header::AUTHORIZATION, value);
    let http = reqwest::Client::builder()
        .default_headers(headers)
        .build()?;
    Ok((http, base))
}

/// Prints a JSON response pretty, or fails with the hub's error message.
async fn print_json(response: reqwest::Response) -> Result<()> {
    let status = response.status();
    let body: serde_json::Value = response.json().await.context("reading the response")?;
    if !status.is_success() {
        let message = body["error"]["message"]
            .as_str()
            .unwrap_or("request failed");
        let code = body["error"]["code"].as_str().unwrap_or("");
        match body["error"].get("detail") {
            Some(detail) => bail!("{status} {code}: {message}\n{detail}"),
            None => bail!("{status} {code}: {message}"),
        }
    }
    println!("{}", serde_json::to_string_pretty(&body)?);
    Ok(())
}

async fn tasks(config: &Config, command: TasksCommand, api: ApiArgs) -> Result<()> {
    if let TasksCommand::Submit { wait: true, .. } = &command {
        return submit_and_wait(config, command, api).await;
    }
    let (http, base) = http_client(config, api)?;
    let request = match command {
        TasksCommand::Submit {
            kind,
            payload,
            priority,
            timeout,
            max_attempts,
            dedup_key,
            wait: _,
        } => {
            let spec = task_spec(kind, &payload, priority, timeout, max_attempts, dedup_key)?;
            http.post(format!("{base}/api/tasks")).json(&spec)
        }
        TasksCommand::List { state, kind } => {
            let mut query = Vec::new();
            if let Some(state) = state {
                query.push(("state", state));
            }
            if let Some(kind) = kind {
                query.push(("type", kind));
            }
            http.get(format!("{base}/api/tasks")).query(&query)
        }
        TasksCommand::Show { id } => http.get(format!("{base}/api/tasks/{id}")),
        TasksCommand::Cancel { id } => http.delete(format!("{base}/api/tasks/{id}")),
    };
    print_json(request.send().await?).await
}

fn task_spec(
    kind: String,
    payload: &str,
    priority: Option<u8>,
    timeout: Option<Duration>,
    max_attempts: Option<u32>,
    dedup_key: Option<String>,
) -> Result<chanhub::protocol::tasks::TaskSpec> {
    let payload: serde_json::Value = serde_json::from_str(payload)
        .with_context(|| format!("the payload is not valid JSON: {payload}"))?;
    Ok(chanhub::protocol::tasks::TaskSpec {
        kind,
        payload,
        priority,
        timeout_ms: timeout.map(|t| t.as_millis() as u64),
        max_attempts,
        dedup_key,
    })
}

/// `tasks submit --wait`: submits over WebSocket, prints each assignment and
/// progress report of the task to stderr as it happens, then its final
/// record to stdout.
async fn submit_and_wait(config: &Config, command: TasksCommand, api: ApiArgs) -> Result<()> {
    let TasksCommand::Submit {
        kind,
        payload,
        priority,
        timeout,
        max_attempts,
        dedup_key,
        ..
    } = command
    else {
        bail!("only tasks submit can wait");
    };
    let spec = task_spec(kind, &payload, priority, timeout, max_attempts, dedup_key)?;
    let base = api
        .url
        .unwrap_or_else(|| format!("http://{}", config.listen));
    let ws_url = format!(
        "{}/ws",
        base.trim_end_matches('/')
            .replacen("https://", "wss://", 1)
            .replacen("http://", "ws://", 1)
    );
    let mut options = options(
        config,
        ConnArgs {
            url: Some(ws_url),
            token: api.token,
        },
    )?;
    options.reconnect = false;
    let (client, mut events) = Client::connect(options).await?;
    let mut results = client
        .task_results()
        .context("task results already taken")?;
    // Subscribed before submitting, so no early change is missed.
    client
        .subscribe(&["task:assigned", "task:progress", "task:failed"])
        .await?;
    let accepted = client.submit(spec).await?;
    let id = accepted.task_id.clone();
    if accepted.deduplicated {
        client.close().await;
        bail!(
            "an unfinished task with this dedup key exists: {id} (follow it with `chanhub tasks show {id}`)"
        );
    }
    eprintln!("task {id} accepted");
    let finished = loop {
        tokio::select! {
            // Events first: the result comes after the task's last events
            // on the socket, so every event read before it is shown before
            // the loop ends (an unbiased select could take the result first).
            biased;
            event = events.next_event() => {
                let Some(event) = event else { bail!("the connection to the hub ended") };
                if event.data["id"] != id.as_str() {
                    continue;
                }
                let data = &event.data;
                match event.channel.as_str() {
                    "task:assigned" => eprintln!(
                        "assigned to worker {} (attempt {})",
                        data["workerId"].as_str().unwrap_or("?"),
                        data["attempt"]
                    ),
                    "task:progress" => eprintln!(
                        "{:>3}% {}",
                        data["progress"].as_u64().unwrap_or(0),
                        data["message"].as_str().unwrap_or("")
                    ),
                    _ => eprintln!("failed: {} (state {})", data["error"], data["state"]),
                }
            }
            result = results.next_result() => match result {
                Some(task) if task.id == id => break task,
                Some(_) => continue,
                None => bail!("the connection to the hub ended"),
            },
            _ = shutdown_signal() => {
                client.close().await;
                bail!("interrupted; the task {id} goes on");
            }
        }
    };
    client.close().await;
    println!("{}", serde_json::to_string_pretty(&finished)?);
    if finished.state != chanhub::protocol::tasks::TaskState::Completed {
        bail!("task {id} ended {}", finished.state.as_str());
    }
    Ok(())
}

/// Claims of the tokens the CLI mints for itself: a hub, for an hour.
fn cli_claims() -> TokenClaims {
    TokenClaims {
        sub: "chanhub-cli".into(),
        exp: now_ms() / 1000 + 3600,
        iat: Some(now_ms() / 1000),
        client_type: ClientType::Hub,
        channels: None,
        publish: None,
        capabilities: None,
        max_slots: None,
        call: None,
        serve: None,
    }
}

fn list(patterns: &str) -> Vec<String> {
    split_list(patterns).into_iter().map(String::from).collect()
}

async fn serve(
    mut config: Config,
    config_path: Option<&Path>,
    listen: Option<std::net::SocketAddr>,
    json_logs: bool,
) -> Result<()> {
    if let Some(addr) = listen {
        config.listen = addr;
    }
    init_logs(&config.log, json_logs, &config.log.level);
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let config_flag = config_path
        .map(|p| format!(" --config {}", p.display()))
        .unwrap_or_default();
    if config.auth.algorithm == "HS256" {
        tracing::info!(
            "mint a token: chanhub token{config_flag} --type browser --sub me   (types: browser, worker, hub)"
        );
    }
    tracing::info!(
        "WebSocket: ws://{addr}/ws   SSE: curl -N 'http://{addr}/api/stream?channels=**&token=...'",
        addr = listener.local_addr()?
    );
    chanhub::run(listener, config, shutdown_signal()).await?;
    Ok(())
}

/// Resolves on ctrl-c or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}

fn init_logs(log: &LogConfig, json: bool, level: &str) {
    let filter = chanhub::logging::filter(level);
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json || log.format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// Signs claims with the hub's configured key.
fn sign(config: &Config, claims: &TokenClaims, private_key: Option<&Path>) -> Result<String> {
    let (algorithm, key) = match config.auth.algorithm.as_str() {
        "HS256" => (
            Algorithm::HS256,
            EncodingKey::from_secret(&config.token_secret()?),
        ),
        name => {
            let Some(path) = private_key else {
                bail!(
                    "this hub verifies {name} tokens: pass --private-key FILE (a PEM private key)"
                );
            };
            let pem = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
            match name {
                "RS256" => (Algorithm::RS256, EncodingKey::from_rsa_pem(&pem)?),
                "ES256" => (Algorithm::ES256, EncodingKey::from_ec_pem(&pem)?),
                _ => (Algorithm::EdDSA, EncodingKey::from_ed_pem(&pem)?),
            }
        }
    };
    Ok(mint(claims, algorithm, &key)?)
}

/// Connection options for `sub` and `pub`: the given token, or one minted
/// afresh on every (re)connect with the local secret.
fn options(config: &Config, conn: ConnArgs) -> Result<ClientOptions> {
    let url = conn
        .url
        .unwrap_or_else(|| format!("ws://{}/ws", config.listen));
    let token = match conn.token {
        Some(token) => TokenSource::Static(token),
        None => {
            if config.auth.algorithm != "HS256" {
                bail!("pass --token: this hub does not use a local HS256 secret");
            }
            let config = config.clone();
            TokenSource::Provider(std::sync::Arc::new(move || {
                sign(&config, &cli_claims(), None).map_err(|e| e.to_string())
            }))
        }
    };
    let mut options = ClientOptions::new(url, String::new());
    options.token = token;
    Ok(options)
}

async fn sub(config: &Config, patterns: Vec<String>, json: bool, conn: ConnArgs) -> Result<()> {
    use std::io::IsTerminal;
    // Pretty on a terminal; JSON lines for pipes and files (and --json).
    // Colours follow the NO_COLOR convention.
    let pretty = !json && std::io::stdout().is_terminal();
    let colour = pretty && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let (client, mut events) = Client::connect(options(config, conn)?).await?;
    let refs: Vec<&str> = patterns.iter().map(String::as_str).collect();
    let subscribed = client.subscribe(&refs).await?;
    for rejected in &subscribed.rejected {
        eprintln!(
            "chanhub: not subscribed to {}: {}",
            rejected.channel, rejected.message
        );
    }
    if subscribed.accepted.is_empty() {
        bail!("no pattern was accepted");
    }
    loop {
        tokio::select! {
            event = events.next_event() => match event {
                Some(event) => {
                    let line = if pretty {
                        render::pretty(&event.channel, &event.data, &event.id, event.ts, colour)
                    } else {
                        render::json_line(&event.channel, &event.data, &event.id, event.ts)
                    };
                    println!("{line}");
                }
                None => break,
            },
            _ = shutdown_signal() => break,
        }
    }
    client.close().await;
    Ok(())
}

async fn publish(
    config: &Config,
    channel: String,
    data: serde_json::Value,
    conn: ConnArgs,
) -> Result<()> {
    let mut options = options(config, conn)?;
    options.reconnect = false;
    let (client, _events) = Client::connect(options).await?;
    let published = client.publish(&channel, data).await?;
    println!(
        "{}",
        serde_json::json!({ "channel": channel, "id": published.event_id, "delivered": published.delivered })
    );
    client.close().await;
    Ok(())
}
