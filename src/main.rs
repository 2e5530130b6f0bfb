//! The `chanhub` command: run the hub, mint tokens, and talk to a hub from
//! the shell. The only place that uses `anyhow`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use chanhub::Hub;
use chanhub::auth::{ClientType, SigningError, SigningKey, TokenClaims, mint_for};
use chanhub::channels::list::split_list;
use chanhub::client::{Client, ClientOptions, TokenSource, render};
use chanhub::config::{Config, DEFAULT_CONFIG_TOML, LogConfig};
use chanhub::protocol::now_ms;
use chanhub::sidecar::ready::{self, Ready};
use chanhub::sidecar::signals::Signals;
use chanhub::sidecar::{self, Failure, FailureKind};
use clap::{Parser, Subcommand};

/// jemalloc rather than glibc malloc: with its background purging thread
/// (switched on in `main`) it hands freed pages back to the system, where
/// glibc kept a soak run's RSS 16 % above its post-warm-up level with
/// nothing left in the hub (`benches/soak/README.md`).
#[cfg(not(target_env = "msvc"))]
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
    Serve(ServeArgs),
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
        /// PEM private key, for a key verified with a public key (RS256 /
        /// ES256 / EdDSA).
        #[arg(long, value_name = "FILE")]
        private_key: Option<PathBuf>,
        /// Sign with the `[[auth.keys]]` entry of this kid (the token's
        /// header names it). Default: the key that checks tokens without
        /// a kid.
        #[arg(long, value_name = "KID")]
        kid: Option<String>,
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

#[derive(clap::Args)]
struct ServeArgs {
    /// Address to listen on (overrides `listen`); port 0 picks a free one.
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
    /// For a parent process: print one JSON line on stdout once the hub
    /// accepts connections ({"event":"ready","ws":...}), or, when it cannot
    /// start, {"event":"error","code":...} and exit with the status of
    /// that kind (config_invalid 3, bind_failed 4, data_dir 5, other 1).
    /// Logs stay on stderr.
    #[arg(long)]
    ready_json: bool,
    /// Write the ready JSON to this file (atomically: write, then rename).
    #[arg(long, value_name = "PATH")]
    ready_file: Option<PathBuf>,
    /// Stop (gracefully) when the process that started the hub exits,
    /// however it exits (SIGKILL too). Unix only.
    #[arg(long)]
    exit_with_parent: bool,
    /// Stop (gracefully) when process PID exits. Unix only.
    #[arg(long, value_name = "PID")]
    parent_pid: Option<u32>,
    /// Stop (gracefully) when stdin reaches its end: the parent closed the
    /// pipe, or died. Works everywhere.
    #[arg(long)]
    exit_on_stdin_close: bool,
    /// Read the token secret (`auth.secret`) from the first line of stdin,
    /// so it shows neither in `ps` nor in the environment.
    #[arg(long)]
    secret_stdin: bool,
    /// Data directory (overrides `data_dir`).
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Use a fresh temporary data directory, removed when the hub exits.
    #[arg(long, conflicts_with = "data_dir")]
    ephemeral: bool,
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

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => {
            // A parent waiting for the JSON line gets one for bad flags too.
            let args: Vec<String> = std::env::args().collect();
            let is_serve = args.iter().any(|a| a == "serve");
            if is_serve && args.iter().any(|a| a == "--ready-json") && err.use_stderr() {
                let failure = Failure::new(FailureKind::ConfigInvalid, err.to_string().trim());
                let _ = ready::print_line(&failure);
                let _ = err.print();
                return ExitCode::from(FailureKind::ConfigInvalid.exit_status());
            }
            err.exit();
        }
    };
    if let Command::Serve(args) = cli.command {
        return serve_main(cli.config.as_deref(), args);
    }
    match run_command(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("Error: {err:?}");
            ExitCode::FAILURE
        }
    }
}

/// Every command but `serve`.
fn run_command(cli: Cli) -> Result<()> {
    if let Command::Config = cli.command {
        print!("{DEFAULT_CONFIG_TOML}");
        return Ok(());
    }
    let config = Config::load(cli.config.as_deref())?;
    let runtime = runtime().context("starting the tokio runtime")?;
    match cli.command {
        Command::Serve(_) | Command::Config => Ok(()),
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
            kid,
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
            let key = signing_key(&config, kid.as_deref(), private_key.as_deref())?;
            println!("{}", mint_for(&config.auth, &key, &claims)?);
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
        None => signing_key(config, None, None)
            .and_then(|key| Ok(mint_for(&config.auth, &key, &cli_claims())?))
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
            _ = signal() => {
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

/// How `serve` tells its parent about startup: a JSON line on stdout with
/// `--ready-json`, log lines on stderr always.
struct Startup {
    json: bool,
    ready_file: Option<PathBuf>,
}

impl Startup {
    /// Reports a startup failure and gives the exit status of its kind.
    fn fail(&self, kind: FailureKind, err: impl std::fmt::Display) -> ExitCode {
        let message = err.to_string();
        if self.json {
            let _ = ready::print_line(&Failure::new(kind, &message));
        }
        // Not eprintln!, which panics when stderr is a pipe its reader closed.
        let _ = writeln!(std::io::stderr(), "Error: {message}");
        ExitCode::from(kind.exit_status())
    }

    /// Tells the parent that the hub is ready.
    fn ready(&self, ready: &Ready) -> std::io::Result<()> {
        if self.json {
            ready::print_line(ready)?;
        }
        if let Some(path) = &self.ready_file {
            ready::write_file(path, ready)?;
        }
        Ok(())
    }
}

/// `chanhub serve`: the configuration with the flags applied, then the hub
/// until a signal, the parent's exit or stdin's end stops it.
fn serve_main(config_path: Option<&Path>, args: ServeArgs) -> ExitCode {
    let startup = Startup {
        json: args.ready_json,
        ready_file: args.ready_file.clone(),
    };
    // Before anything else reads stdin.
    let secret = if args.secret_stdin {
        match sidecar::stdin::read_secret_line() {
            Ok(secret) => Some(secret),
            Err(err) => return startup.fail(FailureKind::ConfigInvalid, err),
        }
    } else {
        None
    };
    let mut config = match Config::load(config_path) {
        Ok(config) => config,
        Err(err) => return startup.fail(FailureKind::ConfigInvalid, err),
    };
    if let Some(engine) = args.engine {
        config.engine = engine;
    }
    if let Some(url) = args.redis_url.clone() {
        config.redis.url = url;
    }
    if let Some(addr) = args.listen {
        config.listen = addr;
    }
    if let Some(secret) = secret {
        config.auth.secret = Some(secret);
    }
    if let Some(dir) = args.data_dir.clone() {
        config.data_dir = Some(dir);
    }
    // Removed when dropped, at the end of this function.
    let ephemeral = if args.ephemeral {
        match tempfile::Builder::new().prefix("chanhub-").tempdir() {
            Ok(dir) => {
                config.data_dir = Some(dir.path().to_path_buf());
                Some(dir)
            }
            Err(err) => return startup.fail(FailureKind::DataDir, format!("--ephemeral: {err}")),
        }
    } else {
        None
    };
    if let Err(err) = config.validate() {
        return startup.fail(FailureKind::ConfigInvalid, err);
    }
    let parent = match (args.parent_pid, args.exit_with_parent) {
        (Some(pid), _) => Some((pid, false)),
        (None, true) => sidecar::parent::parent_pid().map(|pid| (pid, true)),
        (None, false) => None,
    };
    if (args.parent_pid.is_some() || args.exit_with_parent)
        && (parent.is_none() || !sidecar::parent::SUPPORTED)
    {
        return startup.fail(
            FailureKind::ConfigInvalid,
            "watching the parent process is not available on this platform; use --exit-on-stdin-close",
        );
    }
    let runtime = match runtime() {
        Ok(runtime) => runtime,
        Err(err) => {
            return startup.fail(
                FailureKind::Other,
                format!("starting the tokio runtime: {err}"),
            );
        }
    };
    // Purge freed memory in the background, not only when the hub happens
    // to allocate again (an idle hub would keep it).
    #[cfg(not(target_env = "msvc"))]
    let _ = tikv_jemalloc_ctl::background_thread::write(true);
    let stop = StopWhen {
        parent,
        stdin_closed: args.exit_on_stdin_close,
    };
    let code = runtime.block_on(serve(config, config_path, args.json_logs, &startup, stop));
    // Blocking threads (a stdin reader) must not hold up the exit.
    runtime.shutdown_timeout(Duration::from_secs(1));
    drop(ephemeral);
    code
}

/// What stops the hub besides ctrl-c and SIGTERM.
struct StopWhen {
    /// This process exiting: (pid, whether it is the parent).
    parent: Option<(u32, bool)>,
    /// stdin reaching its end.
    stdin_closed: bool,
}

async fn serve(
    config: Config,
    config_path: Option<&Path>,
    json_logs: bool,
    startup: &Startup,
    stop: StopWhen,
) -> ExitCode {
    // Before anything can be ready: a stop signal from now on is graceful.
    let signals = Signals::listen();
    init_logs(&config.log, json_logs, &config.log.level);
    let listen = config.listen;
    let data_dir = config.data_dir();
    let hub = match Hub::new(config) {
        Ok(hub) => hub,
        Err(err) => return startup.fail(FailureKind::of_config(&err), err),
    };
    let listener = match tokio::net::TcpListener::bind(listen).await {
        Ok(listener) => listener,
        Err(err) => {
            return startup.fail(
                FailureKind::BindFailed,
                format!("cannot listen on {listen}: {err}"),
            );
        }
    };
    let addr = match listener.local_addr() {
        Ok(addr) => addr,
        Err(err) => return startup.fail(FailureKind::BindFailed, err),
    };
    let config_flag = config_path
        .map(|p| format!(" --config {}", p.display()))
        .unwrap_or_default();
    let auth = &hub.config().auth;
    if auth.algorithm == "HS256" && auth.uses_auth_key() {
        tracing::info!(
            "mint a token: chanhub token{config_flag} --type browser --sub me   (types: browser, worker, hub)"
        );
    }
    tracing::info!(
        "WebSocket: ws://{addr}/ws   SSE: curl -N 'http://{addr}/api/stream?channels=**&token=...'"
    );
    let mut server = tokio::spawn(chanhub::serve(
        listener,
        hub.clone(),
        shutdown_signal(signals, stop),
    ));
    if startup.json || startup.ready_file.is_some() {
        // Ready once /readyz would say so (on Redis: once Redis answers).
        while !hub.is_ready() {
            tokio::select! {
                _ = &mut server => return startup.fail(FailureKind::Other, "the hub stopped before it was ready"),
                () = tokio::time::sleep(Duration::from_millis(20)) => {}
            }
        }
        if let Err(err) = startup.ready(&Ready::new(addr, hub.hub_id(), &data_dir)) {
            tracing::error!(error = %err, "could not write the ready signal; stopping");
            hub.shutdown_token().cancel();
        }
    }
    match server.await {
        Ok(Ok(())) => ExitCode::SUCCESS,
        Ok(Err(err)) => {
            tracing::error!(error = %err, "the hub failed");
            ExitCode::FAILURE
        }
        Err(err) => {
            tracing::error!(error = %err, "the hub panicked");
            ExitCode::FAILURE
        }
    }
}

/// Resolves on ctrl-c or SIGTERM, or what `stop` names; a second ctrl-c or
/// SIGTERM after that exits at once (status 1), without waiting for the
/// graceful shutdown.
async fn shutdown_signal(mut signals: Signals, stop: StopWhen) {
    let parent = async {
        match stop.parent {
            Some((pid, is_parent)) => {
                sidecar::parent::exited(pid, is_parent).await;
                tracing::info!(pid, "the parent process exited: shutting down");
            }
            None => std::future::pending().await,
        }
    };
    let stdin = async {
        if stop.stdin_closed {
            sidecar::stdin::closed().await;
            tracing::info!("stdin closed: shutting down");
        } else {
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        () = signals.recv() => {}
        () = parent => {}
        () = stdin => {}
    }
    tokio::spawn(async move {
        signals.recv().await;
        let _ = writeln!(
            std::io::stderr(),
            "second signal: exiting without waiting for the graceful shutdown"
        );
        std::process::exit(1);
    });
}

/// Resolves on ctrl-c or SIGTERM (ctrl-c and ctrl-break on Windows).
async fn signal() {
    Signals::listen().recv().await;
}

fn init_logs(log: &LogConfig, json: bool, level: &str) {
    let filter = chanhub::logging::filter(level);
    // A sidecar's stderr is often a pipe to its parent, closed when the
    // parent dies: a log line must then be lost, not reported with
    // eprintln!, which panics on the broken pipe and turns the graceful
    // shutdown that the parent's death starts into a crash.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .log_internal_errors(false);
    if json || log.format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// The key `chanhub token` and the CLI's own tokens are signed with: the
/// `[[auth.keys]]` entry of `kid`, or the key that checks tokens without
/// one; a public-key algorithm needs `private_key`.
fn signing_key(
    config: &Config,
    kid: Option<&str>,
    private_key: Option<&Path>,
) -> Result<SigningKey> {
    let pem = private_key
        .map(|path| std::fs::read(path).with_context(|| format!("reading {}", path.display())))
        .transpose()?;
    SigningKey::for_config(&config.auth, &config.data_dir(), kid, pem.as_deref()).map_err(|err| {
        match err {
            SigningError::NeedsPrivateKey { .. } => {
                anyhow::anyhow!("{err}: pass --private-key FILE (a PEM private key)")
            }
            SigningError::NoDefaultKey => anyhow::anyhow!("{err} (--kid)"),
            other => other.into(),
        }
    })
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
            let key = signing_key(config, None, None)
                .context("pass --token: this hub has no local secret to mint one")?;
            let auth = config.auth.clone();
            TokenSource::Provider(std::sync::Arc::new(move || {
                mint_for(&auth, &key, &cli_claims()).map_err(|e| e.to_string())
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
            _ = signal() => break,
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
