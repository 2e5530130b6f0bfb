// node.js — `chanhub/node`: start a chanhub hub as a child process of a
// Node app (an Electron main process, a CLI, an agent orchestrator) and
// never leave it behind. Node only (it imports node:child_process), so it
// is its own entry point and the browser build never pulls it in; the
// client is chanhub.js (`chanhub`). No dependencies. Types: node.d.ts.
//
//   import { spawnHub } from "chanhub/node";
//   const hub = await spawnHub({ binary: "/path/to/chanhub", readyTimeoutMs: 10000 });
//   hub.onExit((code, signal) => console.error("hub exited", code, signal));
//   const token = hub.mintToken({ type: "browser", sub: "renderer-1", ttlSeconds: 3600 });
//   // ... hand hub.url and token to a renderer or a worker thread ...
//   await hub.stop({ timeoutMs: 15000 }); // SIGTERM, wait, SIGKILL after the timeout
//
// What it runs: `chanhub serve --listen 127.0.0.1:0 --ready-json
// --exit-on-stdin-close --exit-with-parent --secret-stdin --ephemeral`
// (README, "Running chanhub inside a desktop app"):
// - the hub prints one JSON line on stdout once it accepts connections
//   (`{"event":"ready","ws":...}`), or `{"event":"error","code":...}` and
//   exits with a status per kind when it cannot start;
// - it stops when this process exits, however it exits (SIGKILL too): its
//   stdin is a pipe from this process, which the system closes when this
//   process dies, and on Unix it also watches this process's pid;
// - the token secret is random and written as the first stdin line, so it
//   shows neither in `ps` nor in any environment, and this process mints
//   tokens for its renderers and workers itself (HS256, node:crypto);
// - the data directory is a fresh temporary one, removed when the hub exits,
//   so two app instances never share state (`dataDir` for a lasting one).

import { spawn } from "node:child_process";
import { createHmac, randomBytes } from "node:crypto";
import { createInterface } from "node:readline";

/** Client types a token can carry (README, "Channels and permissions"). */
const CLIENT_TYPES = ["browser", "worker", "hub"];

/** Stderr lines kept for error messages and `stderrTail()`. */
const STDERR_TAIL = 50;

/** How long a hub that reported a startup error may take to exit before it is killed. */
const ERROR_EXIT_GRACE_MS = 2000;

/**
 * Why `spawnHub` failed. `code` is the hub's (`config_invalid`,
 * `bind_failed`, `data_dir`, `other`, from its `{"event":"error"}` line) or
 * this helper's: `ready_timeout` (no ready line in time; the child was
 * killed), `exited` (it exited without a ready or error line, e.g. an
 * unknown flag), `spawn_failed` (the binary could not be started),
 * `aborted` (the `signal` aborted; the child was killed).
 */
export class SpawnHubError extends Error {
  constructor(code, message, { exitCode = null, signal = null, pid = null, stderr = [], cause } = {}) {
    super(message, cause === undefined ? undefined : { cause });
    this.name = "SpawnHubError";
    /** See the class comment. */
    this.code = code;
    /** The child's exit status, when it exited (e.g. 4 for bind_failed). */
    this.exitCode = exitCode;
    /** The signal that ended the child, when one did (e.g. "SIGKILL"). */
    this.signal = signal;
    /** The child's pid, when it was started. */
    this.pid = pid;
    /** The child's last stderr lines. */
    this.stderr = stderr;
  }
}

/**
 * An environment for a child process: `base` (default: this process's)
 * with `overrides` applied, every value a string. Strings are kept,
 * numbers, booleans and bigints are turned into strings, and anything else
 * (undefined, null, objects) removes the variable — so `{ RUST_LOG: undefined }`
 * unsets an inherited one.
 * @param {Record<string, unknown> | undefined} overrides
 * @param {Record<string, unknown>} [base]
 * @returns {Record<string, string>}
 */
export function cleanEnv(overrides, base = process.env) {
  const env = {};
  const put = (key, value) => {
    const text = stringValue(value);
    if (text === undefined) delete env[key];
    else env[key] = text;
  };
  for (const [key, value] of Object.entries(base ?? {})) put(key, value);
  for (const [key, value] of Object.entries(overrides ?? {})) put(key, value);
  return env;
}

function stringValue(value) {
  switch (typeof value) {
    case "string":
      return value;
    case "number":
    case "boolean":
    case "bigint":
      return String(value);
    default:
      return undefined;
  }
}

/**
 * Mints an HS256 token for a hub whose secret is `secret`: claims
 * `{ sub, exp, iat, client_type }` plus `claims` (the narrowing claims of
 * the README, e.g. `channels`, `publish`, `capabilities`, `max_slots`,
 * `call`, `serve`), signed with node:crypto.
 * @param {string} secret
 * @param {{ type: "browser" | "worker" | "hub", sub: string, ttlSeconds?: number, [claim: string]: unknown }} options
 * @returns {string}
 */
export function mintToken(secret, { type, sub, ttlSeconds = 3600, ...claims } = {}) {
  if (typeof secret !== "string" || secret === "") {
    throw new TypeError("mintToken: the hub's secret is unknown (spawnHub was given secret: false)");
  }
  if (!CLIENT_TYPES.includes(type)) {
    throw new TypeError(`mintToken: type must be one of ${CLIENT_TYPES.join(", ")}, not ${JSON.stringify(type)}`);
  }
  if (typeof sub !== "string" || sub === "") {
    throw new TypeError("mintToken: sub must be a non-empty string");
  }
  if (!Number.isFinite(ttlSeconds) || ttlSeconds <= 0) {
    throw new TypeError("mintToken: ttlSeconds must be a positive number");
  }
  const now = Math.floor(Date.now() / 1000);
  const payload = { ...claims, sub, client_type: type, iat: now, exp: now + Math.ceil(ttlSeconds) };
  const encode = (value) => Buffer.from(JSON.stringify(value)).toString("base64url");
  const signed = `${encode({ alg: "HS256", typ: "JWT" })}.${encode(payload)}`;
  const signature = createHmac("sha256", secret).update(signed).digest("base64url");
  return `${signed}.${signature}`;
}

/**
 * Starts `binary serve` as a child process and resolves once it prints its
 * ready line; see the file comment and node.d.ts for the options.
 * Rejects with a `SpawnHubError` (and leaves no child running) when it
 * cannot start, reports an error, exits, or stays silent past
 * `readyTimeoutMs`.
 * @param {import("./node.d.ts").SpawnHubOptions} options
 * @returns {Promise<HubProcess>}
 */
export function spawnHub(options = {}) {
  const {
    binary,
    args = [],
    env,
    inheritEnv = true,
    cwd,
    listen = "127.0.0.1:0",
    readyTimeoutMs = 10000,
    dataDir,
    ephemeral = dataDir === undefined,
    exitWithParent = process.platform !== "win32",
    stderr = "forward",
    signal,
  } = options;
  if (typeof binary !== "string" || binary === "") {
    return Promise.reject(new TypeError("spawnHub: binary (the chanhub executable's path) is required"));
  }
  if (dataDir !== undefined && options.ephemeral) {
    return Promise.reject(new TypeError("spawnHub: pass dataDir or ephemeral, not both"));
  }
  const secret = options.secret === undefined ? randomBytes(32).toString("hex") : options.secret;
  if (secret !== false && (typeof secret !== "string" || secret === "" || /[\r\n]/.test(secret))) {
    return Promise.reject(new TypeError("spawnHub: secret must be a non-empty string on one line, or false"));
  }
  if (signal?.aborted) {
    return Promise.reject(new SpawnHubError("aborted", "spawnHub: aborted before the hub was started"));
  }

  const argv = ["serve", "--listen", listen, "--ready-json", "--exit-on-stdin-close"];
  // Windows has no parent watching (the hub refuses the flag there); the
  // stdin pipe closing covers it.
  if (exitWithParent) argv.push("--exit-with-parent");
  if (secret !== false) argv.push("--secret-stdin");
  if (dataDir !== undefined) argv.push("--data-dir", dataDir);
  else if (ephemeral) argv.push("--ephemeral");
  argv.push(...args);

  return new Promise((resolve, reject) => {
    let child;
    try {
      child = spawn(binary, argv, {
        cwd,
        env: cleanEnv(env, inheritEnv ? process.env : {}),
        stdio: ["pipe", "pipe", "pipe"],
        windowsHide: true,
      });
    } catch (err) {
      reject(new SpawnHubError("spawn_failed", `spawnHub: cannot start ${binary}: ${err.message}`, { cause: err }));
      return;
    }
    const hub = new HubProcess(child, secret, stderr);
    let settled = false;
    // Why the start failed, once known (an error line, the timeout, an
    // abort); reported when the child has exited.
    let failure = null;
    let timer;

    const finish = (value, error) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      signal?.removeEventListener("abort", onAbort);
      if (error) reject(error);
      else resolve(value);
    };
    const failAfterExit = ({ code: exitCode, signal: exitSignal }) => {
      const { code, message, cause } = failure ?? exitedFailure(exitCode, exitSignal, hub.stderrTail());
      finish(undefined, new SpawnHubError(code, message, {
        exitCode,
        signal: exitSignal,
        pid: child.pid ?? null,
        stderr: hub.stderrTail(),
        cause,
      }));
    };
    // `failure`, then a kill after `graceMs` (the child never became a hub
    // the caller can stop), then the rejection once it is gone.
    const failing = (code, message, graceMs = 0) => {
      if (settled || failure) return;
      failure = { code, message };
      const kill = setTimeout(() => hub._kill("SIGKILL"), graceMs);
      hub.exited.then((exit) => {
        clearTimeout(kill);
        failAfterExit(exit);
      });
    };
    const onAbort = () => failing("aborted", "spawnHub: aborted before the hub was ready; it was killed");

    child.on("error", (err) => {
      // Without a pid the process never started: no exit event will come.
      if (child.pid === undefined && !settled) {
        hub._noProcess();
        failure = { code: "spawn_failed", message: `spawnHub: cannot start ${binary}: ${err.message}`, cause: err };
        failAfterExit({ code: null, signal: null });
      }
    });
    // EPIPE when the hub is gone before the secret is written, or later.
    child.stdin.on("error", () => {});
    if (secret !== false) child.stdin.write(`${secret}\n`);

    const lines = createInterface({ input: child.stdout, crlfDelay: Infinity });
    lines.on("line", (line) => {
      if (settled || failure) return;
      let message;
      try {
        message = JSON.parse(line);
      } catch {
        return; // not the protocol's: ignored
      }
      if (message?.event === "ready" && typeof message.ws === "string") {
        hub._ready(message);
        finish(hub);
      } else if (message?.event === "error") {
        // The hub exits right after this line, with the status of its kind.
        const code = typeof message.code === "string" ? message.code : "other";
        failing(code, `chanhub could not start (${code}): ${message.message ?? ""}`, ERROR_EXIT_GRACE_MS);
      }
    });
    // `close` comes after the exit and the end of stdout, so a ready or
    // error line still in the pipe has been read by then.
    child.on("close", (code, exitSignal) => {
      if (!settled) failAfterExit({ code, signal: exitSignal });
    });
    timer = setTimeout(
      () => failing("ready_timeout", `chanhub printed no ready line within ${readyTimeoutMs} ms; it was killed`),
      readyTimeoutMs,
    );
    signal?.addEventListener("abort", onAbort, { once: true });
  });
}

/**
 * A running hub started by `spawnHub` (`HubProcess` in node.d.ts).
 * It keeps this process's event loop alive until the hub exits: call
 * `stop()` when the app quits.
 */
class HubProcess {
  #child;
  #secret;
  #listeners = new Set();
  #stderrTail = [];
  #exit = null;
  #stopping = null;
  #resolveExited;

  constructor(child, secret, stderr) {
    this.#child = child;
    this.#secret = secret;
    /** The ready line's fields: pid, listen, ws, http, version, hubId, dataDir. */
    this.ready = null;
    /** The WebSocket URL, e.g. ws://127.0.0.1:43121/ws. */
    this.url = null;
    /** The HTTP base URL, e.g. http://127.0.0.1:43121. */
    this.httpUrl = null;
    /** The hub's process id. */
    this.pid = child.pid ?? null;
    /** Resolves with `{ code, signal }` once the hub has exited. */
    this.exited = new Promise((resolve) => (this.#resolveExited = resolve));

    child.on("exit", (code, signal) => {
      this.#exit = { code, signal };
      this.#resolveExited(this.#exit);
      const requested = this.#stopping !== null;
      for (const listener of [...this.#listeners]) listener(code, signal, { requested });
    });
    const errors = createInterface({ input: child.stderr, crlfDelay: Infinity });
    errors.on("line", (line) => {
      this.#stderrTail.push(stripAnsi(line));
      if (this.#stderrTail.length > STDERR_TAIL) this.#stderrTail.shift();
      if (typeof stderr === "function") stderr(line);
      else if (stderr === "forward") process.stderr.write(`${line}\n`);
    });
    // Stdout carries nothing after the ready line; keep it drained anyway.
    child.stdout.resume();
  }

  /** @internal */
  _ready(ready) {
    this.ready = ready;
    this.url = ready.ws;
    this.httpUrl = ready.http;
    this.pid = ready.pid ?? this.pid;
  }

  /** @internal The process never started. */
  _noProcess() {
    this.#exit = { code: null, signal: null };
    this.#resolveExited(this.#exit);
  }

  /** @internal */
  _kill(signal) {
    if (this.#exit === null) {
      try {
        this.#child.kill(signal);
      } catch {
        // already gone
      }
    }
  }

  /** Whether the hub process is still running. */
  get running() {
    return this.#exit === null;
  }

  /** The hub's last stderr lines (at most 50, colours stripped). */
  stderrTail() {
    return [...this.#stderrTail];
  }

  /**
   * Calls `listener(code, signal, { requested })` when the hub exits: a
   * crash (`requested` false: it exited by itself or something killed it)
   * or after `stop()` (`requested` true). `code` is the exit status,
   * `signal` the signal that ended it (one of the two is null). Called at
   * once (asynchronously) when the hub has already exited. Returns a
   * function that removes the listener.
   */
  onExit(listener) {
    if (this.#exit !== null) {
      const { code, signal } = this.#exit;
      const requested = this.#stopping !== null;
      queueMicrotask(() => listener(code, signal, { requested }));
      return () => {};
    }
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  }

  /**
   * Mints a token for this hub (see `mintToken`); throws when the secret is
   * unknown (`secret: false`).
   */
  mintToken(options) {
    return mintToken(this.#secret, options);
  }

  /**
   * Stops the hub: SIGTERM (on Windows: closes its stdin, which stops it
   * just as gracefully), waits up to `timeoutMs` for it to exit (it closes
   * connections with 1012 and requeues tasks within its
   * `shutdown.grace_period`, 10 s by default), then SIGKILLs it. Resolves
   * with its exit status: 0 after a clean stop, null when a signal ended it.
   * Calling it again returns the same promise.
   * @param {{ timeoutMs?: number }} [options]
   * @returns {Promise<number | null>}
   */
  stop({ timeoutMs = 15000 } = {}) {
    if (this.#stopping) return this.#stopping;
    if (this.#exit !== null) return (this.#stopping = Promise.resolve(this.#exit.code));
    this.#stopping = (async () => {
      // Only one way of asking: the hub treats a second request (a signal
      // after the pipe closed) as "exit at once".
      if (process.platform === "win32") this.#child.stdin.end();
      else this._kill("SIGTERM");
      let timer;
      const timedOut = new Promise((resolve) => (timer = setTimeout(resolve, timeoutMs, "timeout")));
      const first = await Promise.race([this.exited, timedOut]);
      clearTimeout(timer);
      if (first === "timeout") this._kill("SIGKILL");
      return (await this.exited).code;
    })();
    return this.#stopping;
  }
}

/** The failure of a child that exited with neither a ready nor an error line. */
function exitedFailure(exitCode, exitSignal, stderr) {
  const how = exitSignal ? `was killed by ${exitSignal}` : `exited with status ${exitCode}`;
  // The line that says what went wrong, e.g. clap's "error: unexpected argument".
  const said = stderr.findLast((line) => /error/i.test(line)) ?? stderr[stderr.length - 1];
  return { code: "exited", message: `chanhub ${how} before it was ready${said ? `: ${said}` : ""}` };
}

function stripAnsi(text) {
  // eslint-disable-next-line no-control-regex
  return text.replace(/\x1b\[[0-9;]*m/g, "");
}
