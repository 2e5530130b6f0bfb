// chanhub.js — the client for a chanhub hub: the main entry of the
// `chanhub` npm package (this folder), and the file every hub serves at
// /chanhub.js (types: chanhub.d.ts, served at /chanhub.d.ts).
//
// An ES module with no dependencies and no Node-only imports (spawnHub is in
// node.js, the package's `chanhub/node`). It speaks the WebSocket protocol
// of proto-docs/protocol.md:
//
//   import { connect } from "chanhub";             // or "/chanhub.js" from a hub

//   const hub = connect("/ws", { getToken: () => fetchToken() });
//   const off = hub.subscribe("session:*", (data, event) => render(event.channel, data));
//   hub.onState((state) => (statusLine.textContent = state));
//   const ack = await hub.publish("session:42", { text: "hi" }); // needs the publish permission
//
// Calls (proto-docs/calls.md): one connection serves methods, any other
// calls them and waits for the answer:
//
//   const { sum } = await hub.call("demo.add", { a: 1, b: 2 }, { timeoutMs: 5000 });
//   const api = createCaller(hub);               // typed: createCaller<API>(hub)
//   await api.node.execute({ cmd: "ls" });       // calls "node.execute"
//   worker.serve("demo.*", async (params, ctx) => ({ sum: params.a + params.b })); // needs `serve`
//
// Tasks (proto-docs/tasks.md): a worker connection runs them, a submitter
// waits for their outcome:
//
//   const worker = hub.worker({ capabilities: ["index:*"], slots: 4,
//     handler: async (task, ctx) => { ctx.progress(50); return { ok: true }; } });
//   const result = await hub.runTask({ type: "index:doc", payload }, { onProgress, signal });
//   for await (const record of hub.watchTask(taskId)) show(record.state);
//
// It runs in browsers, Web Workers, Node, Bun and Deno: where there is no
// global WebSocket (Node 20), pass one: connect(url, { WebSocket }) with `ws`'s.
//
// What it does for you:
// - authenticates with the first message (never a token in the URL);
// - reconnects after any drop with exponential backoff and full jitter
//   (delay = random(0, min(cap, base * 2^attempt))), and never gives up
//   unless told to (`maxRetries`) or the token itself is refused and there
//   is no `getToken` to ask for another;
// - asks `getToken` for a fresh token on every reconnect, and sends
//   `auth:refresh` before the token's `expiresAt`;
// - resubscribes every pattern after a reconnect and, on history channels,
//   asks for the events it missed (`since`, by offset and epoch);
// - sends an application-level `ping` when the socket has been silent, and
//   drops a connection that does not answer (browsers answer the hub's
//   WebSocket pings by themselves);
// - holds requests made while disconnected and sends them once connected;
// - serves its `serve` methods again after a reconnect. A call, though, is
//   at most once: one already sent when the connection drops fails with
//   `disconnected` and is never sent again (the server may have run it).
// - registers its worker again after a reconnect (a new worker to the hub:
//   the tasks it held were requeued, and their handlers' signals aborted).

/** Default options; see `ConnectOptions` in chanhub.d.ts. */
const DEFAULTS = {
  backoff: { base: 500, cap: 30000 },
  maxRetries: Infinity,
  connectTimeout: 15000,
  heartbeat: { interval: 20000, timeout: 10000 },
  requestTimeout: 30000,
  maxQueued: 1000,
  recover: true,
};

/** An error reported by the hub (`code` from proto-docs) or by this client. */
export class ChanhubError extends Error {
  constructor(code, message, detail) {
    super(message || code);
    this.name = "ChanhubError";
    /** e.g. "forbidden", "invalid_channel", "disconnected", "timeout". */
    this.code = code;
    /** The hub's message, when there was one. */
    this.detail = detail;
  }
}

/**
 * Why a `call` failed. `code` is the hub's (`call_failed`, `no_server`,
 * `timeout`, `server_gone`, `busy`, `forbidden`, …) or this client's
 * (`cancelled` when the call's signal aborted, `disconnected` when the
 * connection dropped while the call was out, `closed`, `queue_full`). For
 * `call_failed`, `detail` is the server's error: `{ code, message, data }`.
 */
export class CallError extends ChanhubError {
  constructor(code, message, detail) {
    super(code, message, detail);
    this.name = code === "cancelled" ? "AbortError" : "CallError";
  }
}

/**
 * A proxy that turns a property path into a method name:
 * `createCaller(hub).node.execute(params, options)` is
 * `hub.call("node.execute", params, options)`. Typed from the app's own API
 * interface with `createCaller<API>(hub)` (chanhub.d.ts). A segment named
 * `then` cannot be reached this way (the proxy must not look like a
 * promise to `await`); call such a method with `hub.call`.
 */
export function createCaller(hub) {
  const at = (path) => new Proxy(() => {}, {
    get: (_, key) => (typeof key === "string" && key !== "then" ? at([...path, key]) : undefined),
    apply: (_, __, [params, options]) => hub.call(path.join("."), params, options),
  });
  return at([]);
}

/**
 * Opens a client. `url` is a ws:// or wss:// URL, an http(s):// URL of the
 * hub (its /ws is used), or a path such as "/ws" resolved against the page.
 */
export function connect(url, options = {}) {
  return new Client(url, options);
}

/** The WebSocket URL for `url` (see `connect`). */
export function wsUrl(url) {
  const base = typeof location !== "undefined" ? location.href : "http://127.0.0.1:7070/";
  const u = new URL(url, base);
  if (u.protocol === "http:") u.protocol = "ws:";
  if (u.protocol === "https:") u.protocol = "wss:";
  if (u.pathname === "/" || u.pathname === "") u.pathname = "/ws";
  return u.href;
}

/** The reconnect delay before attempt `attempt` (0-based): full jitter. */
export function backoffDelay(attempt, { base, cap }, random = Math.random) {
  const ceiling = Math.min(cap, base * 2 ** Math.min(attempt, 30));
  return Math.floor(random() * ceiling);
}

/**
 * Compiles a channel pattern (proto-docs/protocol.md, "Channels and
 * patterns") into a function that tests a channel name: `*` is one segment,
 * `**` any number of segments, and `?`, `[a-z]`, `[!0-9]`, `{eu,us}` work
 * inside a segment.
 */
export function compilePattern(pattern) {
  const segments = pattern.split(":").map((s) =>
    s === "**" ? DOUBLE : s === "*" ? ANY : globRegExp(s));
  return (channel) => matchSegments(segments, 0, channel.split(":"), 0);
}

const DOUBLE = { double: true };
const ANY = { test: () => true };

function matchSegments(pat, i, parts, j) {
  for (; i < pat.length; i++, j++) {
    const seg = pat[i];
    if (seg === DOUBLE) {
      for (let k = j; k <= parts.length; k++) {
        if (matchSegments(pat, i + 1, parts, k)) return true;
      }
      return false;
    }
    if (j >= parts.length || !seg.test(parts[j])) return false;
  }
  return j === parts.length;
}

function globRegExp(segment) {
  return new RegExp(`^${globSource(segment)}$`);
}

// The regular-expression source of one glob segment.
function globSource(glob) {
  let out = "";
  for (let i = 0; i < glob.length; i++) {
    const c = glob[i];
    if (c === "*") out += ".*";
    else if (c === "?") out += ".";
    else if (c === "[") {
      const end = glob.indexOf("]", i + 2);
      if (end < 0) { out += "\\["; continue; }
      let body = glob.slice(i + 1, end);
      if (body[0] === "!") body = "^" + body.slice(1);
      out += `[${body.replace(/\\/g, "\\\\")}]`;
      i = end;
    } else if (c === "{") {
      let depth = 0;
      let end = i;
      for (; end < glob.length; end++) {
        if (glob[end] === "{") depth++;
        else if (glob[end] === "}" && --depth === 0) break;
      }
      const alternatives = splitTop(glob.slice(i + 1, end));
      out += `(?:${alternatives.map(globSource).join("|")})`;
      i = end;
    } else out += c.replace(/[.+^$()|\\/=@-]/g, "\\$&");
  }
  return out;
}

// Splits "a,b{c,d}" at top-level commas.
function splitTop(text) {
  const parts = [];
  let depth = 0;
  let start = 0;
  for (let i = 0; i < text.length; i++) {
    if (text[i] === "{") depth++;
    else if (text[i] === "}") depth--;
    else if (text[i] === "," && depth === 0) {
      parts.push(text.slice(start, i));
      start = i + 1;
    }
  }
  parts.push(text.slice(start));
  return parts;
}

function deferred() {
  let resolve, reject;
  const promise = new Promise((res, rej) => { resolve = res; reject = rej; });
  // A rejection nobody awaits is reported through onError, not as an
  // unhandled rejection.
  promise.catch(() => {});
  return { promise, resolve, reject };
}

// Longest delay setTimeout accepts.
const MAX_TIMER = 2 ** 31 - 1;

// Calls a connection runs at once when no `serve` names a concurrency (the
// hub's default too).
const DEFAULT_CONCURRENCY = 16;

// The rejection of a call whose signal aborted.
function cancelledError(signal) {
  const err = new CallError("cancelled", "the call was cancelled");
  err.cause = signal.reason;
  return err;
}

// The `error` of a call:reply for what a serve handler threw: an object
// with a string `code` keeps its code, message and data; anything else is
// "internal" with its message.
function replyError(thrown) {
  if (thrown && typeof thrown === "object" && typeof thrown.code === "string" && thrown.code) {
    const error = {
      code: thrown.code,
      message: typeof thrown.message === "string" && thrown.message ? thrown.message : thrown.code,
    };
    if (thrown.data !== undefined) error.data = thrown.data;
    return error;
  }
  return { code: "internal", message: thrown instanceof Error ? thrown.message : String(thrown) };
}

// The task states after which nothing changes.
const TERMINAL = new Set(["completed", "dead", "cancelled"]);

// task:results kept while a submit waits for task:accepted (a fast worker's
// result may come first); more than this and the oldest go.
const MAX_EARLY_RESULTS = 1000;

/**
 * Thrown by a worker's handler to fail its task: `retryable` (default
 * false) says whether another attempt may succeed; `data`, when given, is
 * sent with the message as the task's `error` (`{ message, data }`). Any
 * other throw fails the task as retryable, with its message.
 */
export class TaskError extends Error {
  constructor(message, { retryable = false, data } = {}) {
    super(message);
    this.name = "TaskError";
    this.retryable = retryable;
    this.data = data;
  }
}

/**
 * Why `runTask` did not resolve: `state` (also `code`) is `dead` — `detail`
 * is the task's `error` — or `cancelled`; `task` is the task record, when
 * the hub reported one, and `taskId` the task's id once it had one.
 */
export class TaskFailedError extends ChanhubError {
  constructor(record, message) {
    const error = record.error;
    const text = typeof error === "string" ? error : error && typeof error.message === "string" ? error.message : "";
    super(record.state, message || `task ${record.id} is ${record.state}${text ? `: ${text}` : ""}`, error);
    this.name = record.state === "cancelled" ? "AbortError" : "TaskFailedError";
    this.state = record.state;
    this.taskId = record.id;
    this.task = record.type !== undefined ? record : undefined;
  }
}

// The rejection of a runTask whose signal aborted.
function taskCancelled(taskId, signal) {
  const err = new TaskFailedError({ id: taskId, state: "cancelled" }, "the task was cancelled");
  err.cause = signal.reason;
  return err;
}

// The `error` of a task:error for what a task handler threw.
function taskErrorValue(thrown) {
  if (thrown instanceof TaskError) {
    return thrown.data === undefined ? thrown.message : { message: thrown.message, data: thrown.data };
  }
  return thrown instanceof Error ? thrown.message : String(thrown);
}

// A progress value the hub accepts: an integer 0–100 (anything else would be
// a bad frame).
function progressValue(value) {
  const n = Math.round(Number(value));
  return Number.isFinite(n) ? Math.max(0, Math.min(100, n)) : undefined;
}

/** The handle `hub.worker(...)` returns; see `Client.worker`. */
class TaskWorker {
  constructor(client, { capabilities, slots, labels, handler }) {
    this._client = client;
    this.capabilities = capabilities;
    this.slots = slots;
    this.labels = labels;
    this._handler = handler;
    /** The hub's id for this worker on the current connection (new after every reconnect). */
    this.workerId = null;
    /** True once `drain()` was called: no new assignments, not registered again. */
    this.draining = false;
    this._ready = deferred();
    /** Settles when the first `register` is answered. */
    this.ready = this._ready.promise;
    this._held = new Map(); // taskId -> AbortController, the assignments this connection holds
    this._inFlight = 0; // handlers running, or reports not yet answered
    this._idle = null; // deferred, resolved when _inFlight drops to 0 while draining
    this._drained = null;
    this._refused = false;
  }

  /** Handlers running now (with reports not yet acknowledged). */
  get running() {
    return this._inFlight;
  }

  /**
   * Sends `drain` (no new tasks come), waits until every running handler
   * has returned and its report was answered, and resolves. The worker is
   * not registered again after a reconnect.
   */
  drain() {
    if (this._drained) return this._drained;
    this.draining = true;
    const c = this._client;
    const sent = c.state === "open" && this.workerId !== null
      ? c._request({ type: "drain" }, { immediate: true }).catch(() => {}) // gone: nothing to drain
      : Promise.resolve();
    this._idle = deferred();
    if (this._inFlight === 0) this._idle.resolve();
    this._drained = Promise.all([sent, this._idle.promise]).then(() => {});
    return this._drained;
  }

  // Registers on the current connection (after auth:success, and again
  // after every reconnect).
  _register() {
    if (this.draining || this._refused) return;
    const c = this._client;
    const message = { type: "register", capabilities: this.capabilities, slots: this.slots };
    if (this.labels) message.labels = this.labels;
    this.workerId = null;
    c._request(message, { immediate: true }).then(
      (reply) => {
        this.workerId = reply.workerId;
        this._ready.resolve(reply);
      },
      (err) => {
        // Disconnected meanwhile: registered again on the next connection.
        if (err.code === "disconnected" || err.code === "closed") return;
        // Refused (forbidden, bad capabilities): this worker takes nothing.
        this._refused = true;
        this._ready.reject(err);
        c._emitError(err);
      },
    );
  }

  // A task:assign on socket `ws`: runs the handler and reports its outcome
  // on that socket, unless the task was taken away meanwhile.
  async _run(ws, task) {
    const c = this._client;
    const controller = new AbortController();
    // A repeat assignment of a task we still run (lease lost, then given
    // back): the old run stops.
    this._held.get(task.id)?.abort(new ChanhubError("lease_expired", "the task was assigned again"));
    this._held.set(task.id, controller);
    this._inFlight += 1;
    const ctx = {
      taskId: task.id,
      type: task.type,
      attempt: task.attempt,
      deadline: task.deadline,
      signal: controller.signal,
      progress: (value, message) => {
        if (controller.signal.aborted || c._ws !== ws) return;
        const report = { type: "task:progress", taskId: task.id };
        const progress = value === undefined || value === null ? undefined : progressValue(value);
        if (progress !== undefined) report.progress = progress;
        if (message !== undefined) report.message = String(message);
        c._send(report);
      },
    };
    let report;
    try {
      const result = await this._handler(task, ctx);
      report = { type: "task:complete", taskId: task.id, result: result === undefined ? null : result };
      JSON.stringify(report);
    } catch (thrown) {
      if (report) {
        // The result is not JSON: retrying will not help.
        report = { type: "task:error", taskId: task.id,
          error: `the result is not JSON: ${thrown && thrown.message}`, retryable: false };
      } else {
        report = { type: "task:error", taskId: task.id, error: taskErrorValue(thrown),
          retryable: thrown instanceof TaskError ? thrown.retryable : true };
      }
    }
    if (this._held.get(task.id) === controller) this._held.delete(task.id);
    if (!controller.signal.aborted && c._ws === ws && ws.readyState === 1) {
      await c._request(report, { immediate: true }).catch((err) => {
        // not_assigned: the task is no longer ours (see tasks.md); gone: requeued.
        if (!["not_assigned", "disconnected", "closed"].includes(err.code)) c._emitError(err);
      });
    }
    this._inFlight -= 1;
    if (this._inFlight === 0 && this._idle) this._idle.resolve();
  }

  // task:cancel from the hub: the task is no longer ours.
  _cancel(msg) {
    const controller = this._held.get(msg.taskId);
    if (!controller) return;
    this._held.delete(msg.taskId);
    const why = msg.reason === "lease_expired" ? "the task's lease expired" : "the task was cancelled";
    controller.abort(new ChanhubError(msg.reason || "cancelled", why));
  }

  // The connection dropped: the hub requeues every task it held.
  _lost(error) {
    this.workerId = null;
    for (const controller of this._held.values()) controller.abort(error);
    this._held.clear();
  }
}

class Client {
  constructor(url, options) {
    this.url = wsUrl(url);
    this.options = {
      ...DEFAULTS,
      ...options,
      backoff: { ...DEFAULTS.backoff, ...(options.backoff || {}) },
      heartbeat: options.heartbeat === false
        ? false
        : { ...DEFAULTS.heartbeat, ...(options.heartbeat || {}) },
    };
    if (!this.options.token && !this.options.getToken) {
      throw new TypeError("connect() needs { token } or { getToken }");
    }
    /** The WebSocket constructor: `options.WebSocket`, else the global one. */
    this._WebSocket = this.options.WebSocket || globalThis.WebSocket;
    if (typeof this._WebSocket !== "function") {
      throw new TypeError("connect(): this runtime has no global WebSocket; pass one as " +
        "connect(url, { WebSocket }), e.g. `import { WebSocket } from \"ws\"` in Node " +
        "(Node 20 has a global WebSocket only with --experimental-websocket)");
    }
    /** "connecting" | "open" | "reconnecting" | "closed". */
    this.state = "connecting";
    /** The hub's auth:success (clientId, clientType, sub, permissions, expiresAt). */
    this.info = null;
    this._ws = null;
    this._attempt = 0;
    this._nextId = 1;
    this._pending = new Map(); // id -> { message, resolve, reject, collect, call?, errors, timer }
    this._queue = []; // requests waiting for a connection
    this._served = new Set(); // serve handles: { methods, match, handler, concurrency, ready }
    this._running = new Map(); // callId -> AbortController, calls this connection is answering
    this._subs = new Map(); // pattern -> { match, handlers, ready, confirmed }
    this._positions = new Map(); // channel -> { offset, epoch } (history channels)
    this._worker = null; // the TaskWorker of hub.worker(), if any
    this._results = new Map(); // taskId -> callback(record), runTask waiting for task:result
    this._earlyResults = new Map(); // taskId -> record, task:results that came before task:accepted
    this._submitting = 0; // runTask submits waiting for task:accepted
    this._stateListeners = new Set();
    this._messageListeners = new Set();
    this._errorListeners = new Set();
    this._timers = { retry: null, refresh: null, heartbeat: null, connect: null };
    this._lastHeard = Date.now();
    this._closed = false;
    this._open();
  }

  // ---- public API ----

  /**
   * Calls `handler(data, event)` for every event on a channel matching
   * `pattern`. Returns a function that unsubscribes; its `ready` promise
   * settles when the hub has accepted (or refused) the pattern.
   */
  subscribe(pattern, handler) {
    if (typeof handler !== "function") throw new TypeError("subscribe(pattern, handler)");
    let sub = this._subs.get(pattern);
    if (!sub) {
      sub = { match: compilePattern(pattern), handlers: new Set(), ready: deferred(), confirmed: false };
      this._subs.set(pattern, sub);
      if (this.state === "open") this._sendSubscribe([pattern]);
    }
    sub.handlers.add(handler);
    let active = true;
    const unsubscribe = () => {
      if (!active) return;
      active = false;
      sub.handlers.delete(handler);
      if (sub.handlers.size === 0 && this._subs.get(pattern) === sub) {
        this._subs.delete(pattern);
        if (this.state === "open") {
          this._request({ type: "unsubscribe", channels: [pattern] }, { collect: true }).catch(() => {});
        }
      }
    };
    unsubscribe.ready = sub.ready.promise;
    return unsubscribe;
  }

  /** Publishes `data` on `channel`; resolves with the hub's `published` ack. */
  async publish(channel, data) {
    const ack = await this._request({ type: "publish", channel, data: data === undefined ? null : data });
    return { channel: ack.channel, eventId: ack.eventId, delivered: ack.delivered };
  }

  /** Submits a task (proto-docs/tasks.md); resolves with its id once it is durable. */
  async submitTask(spec) {
    const accepted = await this._request({ type: "task:submit", task: spec });
    return accepted.taskId;
  }

  /** Cancels a task this connection's `sub` submitted; resolves with its state. */
  async cancelTask(taskId) {
    const ack = await this._request({ type: "task:cancel", taskId });
    return ack.state;
  }

  /**
   * Submits a task and waits for its outcome: resolves with its `result`
   * once it is `completed`; rejects with a TaskFailedError whose `state` is
   * `dead` (its `detail` is the task's `error`) or `cancelled`. Watches
   * `task:<id>` as well as `task:result`, so the outcome arrives after a
   * reconnect too (the hub sends `task:result` only to the submitting
   * connection). `onProgress(progress, message, task)` is called for each
   * `task:progress` seen after the subscription took effect. Aborting
   * `signal` cancels the task (`task:cancel`) and rejects at once with
   * state `cancelled`.
   */
  runTask(spec, { onProgress, signal } = {}) {
    return new Promise((resolve, reject) => {
      if (signal && signal.aborted) return reject(taskCancelled(null, signal));
      let taskId = null;
      let off = null;
      let settled = false;
      const finish = (record) => {
        if (settled || !record || !TERMINAL.has(record.state)) return;
        settled = true;
        cleanup();
        if (record.state === "completed") resolve(record.result === undefined ? null : record.result);
        else reject(new TaskFailedError(record));
      };
      const onAbort = () => {
        if (settled) return;
        settled = true;
        cleanup();
        reject(taskCancelled(taskId, signal));
        if (taskId) this.cancelTask(taskId).catch(() => {}); // already finished: nothing to cancel
      };
      const cleanup = () => {
        if (off) off();
        if (taskId) this._results.delete(taskId);
        if (signal) signal.removeEventListener("abort", onAbort);
      };
      if (signal) signal.addEventListener("abort", onAbort, { once: true });
      // task:result (and for a fast worker, the events) may come before
      // task:accepted: results are kept while a submit is out.
      this._submitting += 1;
      this.submitTask(spec).then(
        (id) => {
          this._submitting -= 1;
          taskId = id;
          if (settled) return void this.cancelTask(id).catch(() => {});
          const early = this._earlyResults.get(id);
          if (this._submitting === 0) this._earlyResults.clear();
          if (early) return finish(early);
          this._results.set(id, finish);
          off = this.subscribe(`task:${id}`, (record) => {
            if (record.state === "assigned" && record.progress !== undefined && onProgress) {
              safely(onProgress, record.progress, record.message, record);
            }
            finish(record);
          });
          // A refused subscription leaves task:result, which is enough
          // while the connection lasts.
          off.ready.catch(() => {});
        },
        (err) => {
          this._submitting -= 1;
          if (this._submitting === 0) this._earlyResults.clear();
          if (settled) return;
          settled = true;
          cleanup();
          reject(err);
        },
      );
    });
  }

  /**
   * The changes of task `taskId` as an async iterator of task records
   * (proto-docs/tasks.md, "The task record"), read from `task:<id>`: one per
   * change made after the subscription took effect, ending after a
   * terminal one (`completed`, `dead`, `cancelled`). `break` (or
   * `return()`) unsubscribes.
   */
  watchTask(taskId) {
    const queue = [];
    let wake = null;
    let done = false;
    const off = this.subscribe(`task:${taskId}`, (record) => {
      queue.push(record);
      if (wake) wake();
    });
    const stop = () => {
      done = true;
      off();
      if (wake) wake();
    };
    off.ready.catch((err) => {
      queue.push(err);
      if (wake) wake();
    });
    return {
      ready: off.ready,
      [Symbol.asyncIterator]() { return this; },
      next: async () => {
        while (queue.length === 0 && !done) await new Promise((res) => (wake = res));
        wake = null;
        if (queue.length === 0) return { value: undefined, done: true };
        const value = queue.shift();
        if (value instanceof Error) {
          stop();
          throw value;
        }
        if (TERMINAL.has(value.state)) stop();
        return { value, done: false };
      },
      return: async () => {
        stop();
        queue.length = 0;
        return { value: undefined, done: true };
      },
    };
  }

  /**
   * Makes this connection a task worker (proto-docs/tasks.md; needs
   * `task:receive` and `task:complete`): registers `capabilities` with
   * `slots`, and runs `await handler(task, ctx)` for every `task:assign`.
   * `task` is `{ id, type, payload, attempt, deadline }`; `ctx` has
   * `taskId`, `attempt`, `deadline`, `progress(value, message?)` (which also
   * renews the lease) and `signal`, which aborts on `task:cancel` (the
   * submitter cancelled, or the lease expired) and when the connection
   * drops (the hub requeues the task); nothing is reported then. The
   * returned value is the result. A thrown TaskError fails the task with
   * its `retryable`; anything else thrown fails it as retryable.
   *
   * One worker per connection. Registered again after every reconnect
   * (the hub knows it as a new worker). `drain()` stops new assignments
   * and resolves when the running handlers have returned.
   */
  worker({ capabilities, slots = 1, labels, handler } = {}) {
    const caps = typeof capabilities === "string" ? [capabilities] : [...(capabilities || [])];
    if (caps.length === 0 || typeof handler !== "function") {
      throw new TypeError("worker({ capabilities, handler })");
    }
    if (this._worker) throw new TypeError("this connection is a worker already (one per connection)");
    const worker = new TaskWorker(this, { capabilities: caps, slots, labels, handler });
    this._worker = worker;
    if (this.state === "open") worker._register();
    return worker;
  }

  /**
   * Calls `method` (proto-docs/calls.md) on a connection that serves it and
   * resolves with its result. Rejects with a CallError: the hub's code
   * (`call_failed` with the server's `{ code, message, data }` as `detail`,
   * `no_server`, `timeout`, `server_gone`, `busy`, `forbidden`), or
   * `cancelled` when `signal` aborts (the hub is sent `call:cancel`).
   *
   * At most once: a call made while disconnected waits and goes out once
   * connected, but one already sent when the connection drops rejects with
   * `disconnected` and is never sent again. `timeoutMs` counts from this
   * call, waiting included; without it the hub's default deadline applies.
   */
  call(method, params, { timeoutMs, signal } = {}) {
    return new Promise((resolve, reject) => {
      if (typeof method !== "string" || !method) throw new TypeError("call(method, params, options)");
      if (signal && signal.aborted) return reject(cancelledError(signal));
      let expire = null;
      const onAbort = () => this._abandon(item, cancelledError(signal));
      const done = () => {
        clearTimeout(expire);
        if (signal) signal.removeEventListener("abort", onAbort);
      };
      const item = {
        message: { type: "call", method, params: params === undefined ? null : params },
        call: { timeoutMs, started: Date.now() },
        resolve: (reply) => { done(); resolve(reply.result); },
        reject: (err) => {
          done();
          reject(err instanceof CallError ? err : new CallError(err.code, err.message));
        },
      };
      if (signal) signal.addEventListener("abort", onAbort, { once: true });
      if (timeoutMs !== undefined) {
        expire = setTimeout(() => this._callExpired(item), Math.min(MAX_TIMER, timeoutMs));
      }
      this._submit(item);
    });
  }

  /**
   * Answers calls of the methods matching `patterns` (one or an array;
   * `node.*` matches `node.execute`) with `await handler(params, ctx)`;
   * needs the `serve` permission. `ctx` has `callId`, `method`, `caller`
   * (`{ clientId, sub, clientType }` as the hub verified them), `deadline`
   * (ms since the Unix epoch) and `signal`, which aborts when the hub
   * cancels the call (its caller gave up or left, or the deadline passed) or
   * the connection drops; the reply is then not sent. A thrown object with a
   * string `code` (`{ code, message, data }`, or an Error with `.code`) is
   * the caller's `call_failed` detail; anything else thrown is sent as code
   * "internal" with its message.
   *
   * `concurrency` is per connection (the hub counts a connection's calls,
   * not a pattern's): the connection asks for the largest of its serves',
   * 16 when none names one. Served again after every reconnect. The handle's
   * `ready` settles when the hub has accepted (or refused) the patterns;
   * `close()` stops serving them (calls already running still finish) and
   * resolves when the hub has confirmed.
   */
  serve(patterns, handler, { concurrency } = {}) {
    const methods = typeof patterns === "string" ? [patterns] : [...patterns];
    if (methods.length === 0 || typeof handler !== "function") {
      throw new TypeError("serve(patterns, handler)");
    }
    const matchers = methods.map(compilePattern);
    const served = {
      methods,
      match: (method) => matchers.some((match) => match(method)),
      handler,
      concurrency,
      ready: deferred(),
    };
    this._served.add(served);
    if (this.state === "open") this._sendServe(served);
    let active = true;
    const close = () => {
      if (!active) return Promise.resolve();
      active = false;
      this._served.delete(served);
      // A pattern another serve still names stays served.
      const still = new Set([...this._served].flatMap((s) => s.methods));
      const dropped = methods.filter((m) => !still.has(m));
      if (dropped.length === 0 || this.state !== "open") return Promise.resolve();
      const unserve = this._request({ type: "unserve", methods: dropped }, { immediate: true });
      return unserve.then(() => {}, () => {});
    };
    return { methods, ready: served.ready.promise, close };
  }

  /**
   * Sends any protocol message with a fresh `id` and resolves with the reply
   * (rejects with a ChanhubError on an `error` or `auth:failed` reply).
   */
  request(message) {
    return this._request(message);
  }

  /** `cb(state, detail)` on every state change; returns a function that stops it. */
  onState(cb) {
    this._stateListeners.add(cb);
    return () => this._stateListeners.delete(cb);
  }

  /** `cb(message)` for every message from the hub (task:result, join, …). */
  onMessage(cb) {
    this._messageListeners.add(cb);
    return () => this._messageListeners.delete(cb);
  }

  /** `cb(error)` for errors not tied to a pending request (a refused resubscribe, a failed refresh). */
  onError(cb) {
    this._errorListeners.add(cb);
    return () => this._errorListeners.delete(cb);
  }

  /** Closes for good: no reconnect; pending requests are rejected. */
  close() {
    if (this._closed) return;
    this._closed = true;
    this._drop(new ChanhubError("closed", "the client was closed"), 1000);
    this._setState("closed", { reason: "closed by the client" });
  }

  // ---- connection lifecycle ----

  async _open() {
    this._clearTimer("retry");
    this._setState("connecting", { attempt: this._attempt });
    let token;
    try {
      token = this.options.getToken ? await this.options.getToken() : this.options.token;
      if (!token) throw new Error("no token");
    } catch (err) {
      this._emitError(new ChanhubError("token_unavailable", `getToken failed: ${err && err.message}`));
      return this._retry({ reason: "token_unavailable" });
    }
    if (this._closed) return;
    let ws;
    try {
      ws = new this._WebSocket(this.url);
    } catch (err) {
      return this._retry({ reason: String(err && err.message) });
    }
    this._ws = ws;
    const authId = this._nextId++;
    this._timers.connect = setTimeout(() => {
      if (this._ws === ws) this._lost(ws, { code: 4000, reason: "connect timeout" });
    }, this.options.connectTimeout);
    ws.onopen = () => ws.send(JSON.stringify({ type: "auth", id: authId, token }));
    ws.onmessage = (m) => this._onFrame(ws, m, authId);
    ws.onclose = (e) => this._lost(ws, { code: e.code, reason: e.reason });
    ws.onerror = () => {}; // a close event always follows
  }

  _onFrame(ws, m, authId) {
    if (this._ws !== ws) return;
    this._lastHeard = Date.now();
    let msg;
    try {
      msg = JSON.parse(m.data);
    } catch {
      return;
    }
    if (msg.type === "auth:success" && msg.id === authId) return this._authenticated(msg);
    if (msg.type === "auth:failed" && msg.id === authId) {
      this._authFailure = msg.reason;
      return; // the hub closes with 4001 next
    }
    if (msg.type === "event") this._dispatch(msg);
    else if (msg.type === "ping") this._send({ type: "pong", id: msg.id });
    else if (msg.type === "call:request") this._answer(ws, msg);
    else if (msg.type === "call:cancelled") {
      this._stopAnswering(msg.callId, new ChanhubError("cancelled",
        "the hub cancelled the call (its caller gave up or left, or its deadline passed)"));
    }
    else if (msg.type === "task:assign") this._worker?._run(ws, msg.task);
    else if (msg.type === "task:cancel" && msg.id === undefined) this._worker?._cancel(msg);
    else if (msg.type === "task:result") this._taskResult(msg.task);
    else if (msg.id !== undefined && this._pending.has(msg.id)) this._settle(msg);
    for (const cb of this._messageListeners) safely(cb, msg);
  }

  _authenticated(msg) {
    this._clearTimer("connect");
    this.info = msg;
    this._attempt = 0;
    this._authFailure = null;
    this._setState("open", { clientId: msg.clientId });
    this._scheduleRefresh(msg.expiresAt);
    this._startHeartbeat();
    if (this._subs.size > 0) this._sendSubscribe([...this._subs.keys()]);
    for (const served of this._served) this._sendServe(served);
    if (this._worker) this._worker._register();
    const queued = this._queue.splice(0);
    for (const item of queued) this._transmit(item);
  }

  // The socket `ws` is gone (closed by either side, or given up on).
  _lost(ws, { code, reason }) {
    if (this._ws !== ws) return;
    const authFailure = this._authFailure;
    this._drop(new ChanhubError("disconnected", `connection lost (${code}${reason ? ` ${reason}` : ""})`));
    if (this._closed) return;
    if (code === 4001 && !this.options.getToken) {
      // The only token we have was refused: retrying cannot help.
      this._closed = true;
      this._setState("closed", { code, reason: authFailure || reason });
      return;
    }
    this._retry({ code, reason: authFailure || reason });
  }

  // Detaches the current socket (closing it with `code`) and fails what
  // was in flight.
  _drop(error, code = 4000) {
    const ws = this._ws;
    this._ws = null;
    for (const name of ["connect", "refresh", "heartbeat"]) this._clearTimer(name);
    if (ws) {
      ws.onopen = ws.onmessage = ws.onclose = null;
      if (ws.readyState <= 1) {
        try { ws.close(code, code === 1000 ? "client closed" : "client dropped the connection"); } catch { /* already closing */ }
      }
    }
    for (const [, p] of this._pending) {
      clearTimeout(p.timer);
      p.reject(error);
    }
    this._pending.clear();
    // Calls being answered here now end with server_gone for their callers.
    for (const callId of [...this._running.keys()]) this._stopAnswering(callId, error);
    if (this._worker) this._worker._lost(error);
    for (const sub of this._subs.values()) sub.confirmed = false;
    if (this._closed) {
      for (const item of this._queue.splice(0)) item.reject(error);
    }
  }

  _retry(detail) {
    if (this._closed) return;
    if (this._attempt >= this.options.maxRetries) {
      this._closed = true;
      this._setState("closed", { ...detail, reason: "gave up reconnecting" });
      return;
    }
    const delay = backoffDelay(this._attempt, this.options.backoff);
    this._attempt += 1;
    this._setState("reconnecting", { ...detail, attempt: this._attempt, delay });
    this._timers.retry = setTimeout(() => this._open(), delay);
  }

  _scheduleRefresh(expiresAt) {
    this._clearTimer("refresh");
    if (!this.options.getToken || !expiresAt) return;
    const left = expiresAt - Date.now();
    // Refresh when a fifth of the lifetime (at most a minute) is left.
    const margin = Math.min(60000, Math.max(1000, left * 0.2));
    const delay = Math.min(MAX_TIMER, Math.max(0, left - margin));
    this._timers.refresh = setTimeout(() => this._refresh(expiresAt), delay);
  }

  async _refresh(expiresAt) {
    const ws = this._ws;
    try {
      const token = await this.options.getToken();
      if (this._ws !== ws) return;
      const reply = await this._request({ type: "auth:refresh", token }, { immediate: true });
      this._scheduleRefresh(reply.expiresAt);
    } catch (err) {
      if (this._ws !== ws) return;
      this._emitError(err instanceof ChanhubError ? err : new ChanhubError("refresh_failed", String(err)));
      // Try again while the old token lasts; at expiry the hub closes (4003)
      // and the reconnect asks getToken again.
      const left = expiresAt - Date.now();
      if (left > 2000) {
        this._timers.refresh = setTimeout(() => this._refresh(expiresAt), Math.min(30000, left / 2));
      }
    }
  }

  _startHeartbeat() {
    const hb = this.options.heartbeat;
    if (!hb) return;
    const ws = this._ws;
    const tick = () => {
      if (this._ws !== ws) return;
      const idle = Date.now() - this._lastHeard;
      if (idle < hb.interval) {
        this._timers.heartbeat = setTimeout(tick, hb.interval - idle);
        return;
      }
      const timeout = setTimeout(() => {
        if (this._ws === ws) this._lost(ws, { code: 4000, reason: "heartbeat timeout" });
      }, hb.timeout);
      this._request({ type: "ping" }, { immediate: true }).then(
        () => { clearTimeout(timeout); tick(); },
        () => clearTimeout(timeout),
      );
    };
    this._timers.heartbeat = setTimeout(tick, hb.interval);
  }

  // ---- requests ----

  // Sends `message` with a fresh id; the promise settles with the reply.
  // `collect`: gather per-pattern `error`s until the final reply.
  // `immediate`: fail at once instead of waiting for a connection.
  _request(message, { collect = false, immediate = false } = {}) {
    return new Promise((resolve, reject) => {
      this._submit({ message, collect, resolve, reject }, immediate);
    });
  }

  // Sends `item` ({ message, resolve, reject, collect?, call? }) now, or
  // holds it until connected.
  _submit(item, immediate = false) {
    if (this._closed) return item.reject(new ChanhubError("closed", "the client is closed"));
    if (this.state === "open") return this._transmit(item);
    if (immediate) return item.reject(new ChanhubError("disconnected", "not connected"));
    if (this._queue.length >= this.options.maxQueued) {
      return item.reject(new ChanhubError("queue_full", "too many requests waiting for a connection"));
    }
    this._queue.push(item);
  }

  _transmit(item) {
    const id = this._nextId++;
    const message = { ...item.message, id };
    item.id = id;
    item.errors = [];
    item.timer = null;
    if (item.call) {
      // The hub answers every call by its deadline (the call's timeout, sent
      // as what is left of it, or the hub's default): no timer of our own.
      const { timeoutMs, started } = item.call;
      if (timeoutMs !== undefined) {
        message.timeoutMs = Math.max(1, Math.ceil(timeoutMs - (Date.now() - started)));
      }
    } else {
      item.timer = setTimeout(() => this._abandon(item, new ChanhubError("timeout", "no reply from the hub")),
        this.options.requestTimeout);
    }
    let text;
    try {
      text = JSON.stringify(message);
    } catch (err) {
      clearTimeout(item.timer);
      return item.reject(new ChanhubError("bad_request", `not JSON: ${err && err.message}`));
    }
    this._pending.set(id, item);
    if (this._ws && this._ws.readyState === 1) this._ws.send(text);
  }

  // Gives up `item` (waiting for a connection, or sent and unanswered) with
  // `error`; a call that was sent is cancelled on the hub.
  _abandon(item, error) {
    const queued = this._queue.indexOf(item);
    if (queued >= 0) {
      this._queue.splice(queued, 1);
    } else if (item.id !== undefined && this._pending.get(item.id) === item) {
      this._pending.delete(item.id);
      clearTimeout(item.timer);
      if (item.call) this._send({ type: "call:cancel", id: item.id });
    } else {
      return; // already settled
    }
    item.reject(error);
  }

  // A call's timeout has passed. Not sent yet: it fails here. Sent: the hub
  // answers `timeout` now; should that answer not come, give up after
  // `requestTimeout` more.
  _callExpired(item) {
    if (this._queue.includes(item)) {
      const error = new CallError("timeout", "the call's timeout passed before the client was connected");
      return this._abandon(item, error);
    }
    if (this._pending.get(item.id) !== item) return;
    item.timer = setTimeout(() => this._abandon(item, new CallError("timeout", "no answer from the hub")),
      this.options.requestTimeout);
  }

  _settle(msg) {
    const p = this._pending.get(msg.id);
    if (p.collect && msg.type === "error") {
      p.errors.push(msg);
      return;
    }
    this._pending.delete(msg.id);
    clearTimeout(p.timer);
    if (msg.type === "error" && p.call) {
      p.reject(new CallError(msg.code, msg.message, msg.detail));
    } else if (msg.type === "error" || msg.type === "auth:failed") {
      p.reject(new ChanhubError(msg.code || msg.reason, msg.message, msg));
    } else {
      p.resolve(p.collect ? { ...msg, errors: p.errors } : msg);
    }
  }

  _send(message) {
    if (this._ws && this._ws.readyState === 1) this._ws.send(JSON.stringify(message));
  }

  _sendSubscribe(patterns) {
    const message = { type: "subscribe", channels: patterns };
    const since = this.options.recover ? this._since(patterns) : null;
    if (since) message.since = since;
    // The subscriptions this request is for: one unsubscribed and made again
    // meanwhile (a React effect run twice) waits for its own request's answer.
    const sent = patterns.map((pattern) => this._subs.get(pattern));
    this._request(message, { collect: true, immediate: true }).then(
      (reply) => {
        for (const [channel, position] of Object.entries(reply.positions || {})) {
          this._positions.set(channel, position);
        }
        for (const [channel, ok] of Object.entries(reply.recovered || {})) {
          if (!ok) {
            this._emitError(new ChanhubError("recovery_gap",
              `events on ${channel} were missed and could not be replayed`, { channel }));
          }
        }
        const accepted = new Set(reply.channels);
        patterns.forEach((pattern, i) => {
          const sub = sent[i];
          if (!sub || this._subs.get(pattern) !== sub) return;
          if (accepted.has(pattern)) {
            sub.confirmed = true;
            sub.ready.resolve();
            return;
          }
          const refusal = reply.errors.find((e) => e.channel === pattern) || {};
          const err = new ChanhubError(refusal.code || "refused",
            refusal.message || `subscribing to ${pattern} was refused`, refusal);
          sub.ready.reject(err);
          this._emitError(err);
        });
      },
      () => {}, // disconnected meanwhile: resubscribed on the next connection
    );
  }

  // Sends `serve` for one serve handle, with the connection's concurrency:
  // the largest any serve names.
  _sendServe(served) {
    const named = [...this._served].map((s) => s.concurrency).filter((c) => c !== undefined);
    const concurrency = named.length > 0 ? Math.max(...named) : DEFAULT_CONCURRENCY;
    this._request({ type: "serve", methods: served.methods, concurrency }, { immediate: true }).then(
      () => served.ready.resolve(),
      (err) => {
        // Disconnected meanwhile: served again on the next connection.
        if (err.code === "disconnected" || err.code === "closed" || !this._served.has(served)) return;
        // Refused (e.g. forbidden): the handle serves nothing, now or later.
        this._served.delete(served);
        served.ready.reject(err);
        this._emitError(err);
      },
    );
  }

  // A call:request from the hub: the first serve whose patterns match runs
  // it, and the reply goes back on the connection that asked, unless the
  // call was cancelled meanwhile.
  async _answer(ws, msg) {
    const { callId, method } = msg;
    const served = [...this._served].find((s) => s.match(method));
    const controller = new AbortController();
    this._running.set(callId, controller);
    let reply;
    if (!served) {
      // Its serve was closed while the hub routed the call here.
      const error = { code: "not_served", message: `${method} is no longer served here` };
      reply = { type: "call:reply", callId, error };
    } else {
      const ctx = { callId, method, caller: msg.caller, deadline: msg.deadline, signal: controller.signal };
      try {
        const result = await served.handler(msg.params, ctx);
        reply = { type: "call:reply", callId, result: result === undefined ? null : result };
      } catch (thrown) {
        reply = { type: "call:reply", callId, error: replyError(thrown) };
      }
    }
    if (this._running.get(callId) === controller) this._running.delete(callId);
    if (controller.signal.aborted || this._ws !== ws || ws.readyState !== 1) return;
    let text;
    try {
      text = JSON.stringify(reply);
    } catch (err) {
      text = JSON.stringify({ type: "call:reply", callId,
        error: { code: "internal", message: `the result is not JSON: ${err && err.message}` } });
    }
    ws.send(text);
  }

  // A task:result: to the runTask waiting for it, or kept while a submit
  // waits for its task:accepted.
  _taskResult(record) {
    if (!record) return;
    const waiting = this._results.get(record.id);
    if (waiting) return waiting(record);
    if (this._submitting === 0) return;
    this._earlyResults.set(record.id, record);
    if (this._earlyResults.size > MAX_EARLY_RESULTS) {
      this._earlyResults.delete(this._earlyResults.keys().next().value);
    }
  }

  // Aborts the signal of a call this connection is answering.
  _stopAnswering(callId, reason) {
    const controller = this._running.get(callId);
    if (!controller) return;
    this._running.delete(callId);
    controller.abort(reason);
  }

  // `since` for the history channels seen under `patterns`, or null.
  _since(patterns) {
    const since = {};
    let any = false;
    for (const [channel, position] of this._positions) {
      if (patterns.some((p) => this._subs.get(p)?.match(channel))) {
        since[channel] = position;
        any = true;
      }
    }
    return any ? since : null;
  }

  _dispatch(event) {
    if (event.offset !== undefined && event.epoch !== undefined) {
      this._positions.set(event.channel, { offset: event.offset, epoch: event.epoch });
    }
    for (const sub of this._subs.values()) {
      if (!sub.match(event.channel)) continue;
      for (const handler of sub.handlers) safely(handler, event.data, event);
    }
  }

  // ---- helpers ----

  _setState(state, detail = {}) {
    if (this.state === state) return;
    this.state = state;
    for (const cb of this._stateListeners) safely(cb, state, detail);
  }

  _emitError(err) {
    for (const cb of this._errorListeners) safely(cb, err);
  }

  _clearTimer(name) {
    clearTimeout(this._timers[name]);
    this._timers[name] = null;
  }
}

// Calls a user callback; its exceptions must not break the client.
function safely(fn, ...args) {
  try {
    fn(...args);
  } catch (err) {
    setTimeout(() => { throw err; });
  }
}
