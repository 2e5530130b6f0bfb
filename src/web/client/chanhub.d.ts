// Types of chanhub.js: the `chanhub` package's main entry, also served by
// every hub at /chanhub.js (these types at /chanhub.d.ts). The wire
// protocol is proto-docs/protocol.md.
//
// Written by hand: the client's API. The wire messages it carries (task
// records, events, the hub's error codes) are the types of wire.d.ts,
// generated from proto-docs/schemas/ (scripts/gen-types.mjs), so they
// cannot drift from the hub.

import type {
  Assignment,
  CallError as WireCallError,
  CallerInfo,
  ClientMessage,
  ErrorCode,
  ServerMessage,
  ServerMessageOf,
  TaskSpec,
  TaskView,
} from "./wire.js";

export type {
  CallerInfo,
  ClientMessage,
  ClientMessageOf,
  ClientType,
  ErrorCode,
  ServerMessage,
  ServerMessageOf,
  TaskSpec,
  TaskState,
  TaskView,
} from "./wire.js";

/** Where the client is. */
export type ConnectionState = "connecting" | "open" | "reconnecting" | "closed";

/** Sent with every state change. */
export interface StateDetail {
  /** Reconnect attempt (1 for the first retry). */
  attempt?: number;
  /** Milliseconds until the next attempt (state "reconnecting"). */
  delay?: number;
  /** Close code of the connection that was lost (proto-docs close codes). */
  code?: number;
  /** Close reason, or the auth:failed reason. */
  reason?: string;
  /** This connection's id (state "open"). */
  clientId?: string;
}

export interface ConnectOptions {
  /** A JWT. Without `getToken` it is used for every connection. */
  token?: string;
  /**
   * Called before every connection attempt and before the token expires
   * (then sent as auth:refresh). Return a fresh JWT.
   */
  getToken?: () => string | Promise<string>;
  /**
   * Reconnect delays: attempt n waits random(0, min(cap, base * 2^n)) ms
   * ("full jitter"). Defaults: base 500, cap 30000.
   */
  backoff?: { base?: number; cap?: number };
  /** Reconnect attempts in a row before giving up. Default: Infinity. */
  maxRetries?: number;
  /** Milliseconds for the socket to open and authenticate. Default 15000. */
  connectTimeout?: number;
  /**
   * After `interval` ms without a message the client sends a `ping`; with
   * no answer within `timeout` ms it drops the connection and reconnects.
   * `false` turns this off. Defaults: 20000 and 10000.
   */
  heartbeat?: { interval?: number; timeout?: number } | false;
  /** Milliseconds to wait for a reply. Default 30000. */
  requestTimeout?: number;
  /** Requests held while disconnected before new ones fail. Default 1000. */
  maxQueued?: number;
  /** Ask for missed events of history channels after a reconnect. Default true. */
  recover?: boolean;
  /**
   * The WebSocket constructor, where the runtime has no global one (Node 20
   * without --experimental-websocket): e.g. `WebSocket` from the `ws`
   * package. Default: the global `WebSocket`; `connect` throws a TypeError
   * when there is neither.
   */
  WebSocket?: WebSocketConstructor;
}

/** What `connect` needs of a WebSocket class (the browser's, Node 22's, or `ws`). */
export type WebSocketConstructor = new (url: string) => {
  readonly readyState: number;
  send(data: string): void;
  close(code?: number, reason?: string): void;
  onopen: ((event: any) => void) | null;
  // `any` events: the DOM's handlers take MessageEvent/CloseEvent, ws's its own.
  onmessage: ((event: any) => void) | null;
  onclose: ((event: any) => void) | null;
  onerror: ((event: any) => void) | null;
};

/** An event as delivered (proto-docs/protocol.md, `event`), its `data` typed `T`. */
export type HubEvent<T = unknown> = Omit<ServerMessageOf<"event">, "data"> & { data: T };

/** The hub's `published` acknowledgement: `delivered` counts the connections it was queued for. */
export type PublishAck = Pick<ServerMessageOf<"published">, "channel" | "eventId" | "delivered">;

/**
 * The task record (proto-docs/tasks.md, "The task record"), as events and
 * task:result carry it, its `result` typed `R`.
 */
export type TaskRecord<R = unknown> = Omit<TaskView, "result"> & { result?: R };

/**
 * A task as a worker receives it (`task:assign`), its `payload` typed `P`;
 * `deadline` (ms since the Unix epoch) is renewed by `ctx.progress`.
 */
export type AssignedTask<P = unknown> = Omit<Assignment, "payload"> & { payload: P };

/** A message the client sends: the wire message without the `id`, which the client assigns. */
export type ClientRequest = ClientMessage extends infer M ? (M extends unknown ? Omit<M, "id"> : never) : never;

/** The second argument of a worker's handler. */
export interface TaskContext {
  taskId: string;
  type: string;
  attempt: number;
  deadline: number;
  /**
   * Aborts on `task:cancel` (the submitter cancelled, or the lease expired)
   * and when the connection drops; the task's outcome is then not reported.
   * `signal.reason` is a ChanhubError (`cancelled`, `lease_expired`, `disconnected`, `closed`).
   */
  signal: AbortSignal;
  /** Reports progress (0–100, rounded and clamped) and renews the lease. */
  progress(value?: number | null, message?: string): void;
}

export interface WorkerOptions<P = any, R = unknown> {
  /** Task-type patterns, e.g. "index:*" (the channel pattern grammar). */
  capabilities: string | string[];
  /** Tasks run at once. Default 1. */
  slots?: number;
  labels?: Record<string, string>;
  /**
   * Runs one task; its return value is the result. Throw a TaskError to
   * fail it (`retryable` as given); anything else thrown fails it as retryable.
   */
  handler: (task: AssignedTask<P>, ctx: TaskContext) => R | Promise<R>;
}

/** The handle of `hub.worker(...)`. */
export interface Worker {
  readonly capabilities: string[];
  readonly slots: number;
  /** The hub's id for this worker on the current connection; null while unregistered. */
  readonly workerId: string | null;
  readonly draining: boolean;
  /** Handlers running now (with reports not yet acknowledged). */
  readonly running: number;
  /** Settles with the hub's `registered` when the first `register` is answered (rejects when refused). */
  readonly ready: Promise<ServerMessageOf<"registered">>;
  /** Stops new assignments and resolves when the running handlers have finished. */
  drain(): Promise<void>;
}

/** Fails a task from a worker's handler. */
export class TaskError extends Error {
  constructor(message: string, options?: { retryable?: boolean; data?: unknown });
  readonly retryable: boolean;
  readonly data: unknown;
}

export interface RunTaskOptions {
  /** Called for each progress report seen (after the task:<id> subscription took effect). */
  onProgress?: (progress: number, message: string | undefined, task: TaskRecord) => void;
  /** Aborting cancels the task and rejects with state "cancelled". */
  signal?: AbortSignal;
}

/** An async iterator of a task's records, ending after a terminal state. */
export interface TaskWatch<R = unknown> extends AsyncIterableIterator<TaskRecord<R>> {
  /** Settles when the subscription to task:<id> took effect (or was refused). */
  readonly ready: Promise<void>;
}

/** The hub's auth:success (`expiresAt` in ms since the Unix epoch). */
export type AuthInfo = ServerMessageOf<"auth:success">;

/** An unsubscribe function; `ready` settles once the hub has answered. */
export interface Unsubscribe {
  (): void;
  readonly ready: Promise<void>;
}

/**
 * The codes this client fails requests with on its own (the others are the
 * hub's `ErrorCode`s): the connection dropped with the request out, the
 * client was closed, too many requests wait for a connection, no reply in
 * time, the call's signal aborted.
 */
export type ClientErrorCode = "disconnected" | "closed" | "queue_full" | "timeout" | "cancelled";

export class ChanhubError extends Error {
  /**
   * The hub's `ErrorCode` ("forbidden", "invalid_channel", …), an
   * `auth:failed` reason, or a `ClientErrorCode`.
   */
  readonly code: ErrorCode | ClientErrorCode | (string & {});
  /** The hub's message, when there was one. */
  readonly detail?: unknown;
}

/** Options of `call` (proto-docs/calls.md). */
export interface CallOptions {
  /**
   * How long to wait, counted from the call (time waiting for a connection
   * included). Default: the hub's `calls.default_timeout`; capped by its
   * `calls.max_timeout`.
   */
  timeoutMs?: number;
  /** Aborting it cancels the call: the hub is told, the call rejects with code "cancelled". */
  signal?: AbortSignal;
}

/**
 * A server's error for a call: what a serve handler throws, and the
 * `detail` of the caller's `call_failed` (`code` is the server's own, e.g.
 * "not_found").
 */
export type ReplyError = WireCallError;

/**
 * The codes a call fails with: the hub's, then this client's
 * ("cancelled": the signal aborted; "disconnected": the connection dropped
 * while the call was out — it is never sent again).
 */
export type CallErrorCode =
  | Extract<ErrorCode, "call_failed" | "no_server" | "timeout" | "server_gone" | "busy" | "forbidden" | "invalid_channel" | "bad_request">
  | "cancelled" | "disconnected" | "closed" | "queue_full";

/** Why a call failed. Its `name` is "AbortError" for code "cancelled". */
export class CallError extends ChanhubError {
  readonly code: CallErrorCode;
  /** For `call_failed`: the server's error. */
  readonly detail?: ReplyError;
}

/** The second argument of a serve handler. */
export interface ServeContext {
  /** The hub's id of this call. */
  callId: string;
  /** The method called (matching one of the served patterns). */
  method: string;
  caller: CallerInfo;
  /** When the caller stops waiting, ms since the Unix epoch. */
  deadline: number;
  /**
   * Aborts when the hub cancels the call (the caller gave up or left, or the
   * deadline passed) or the connection drops; the reply is then not sent.
   */
  signal: AbortSignal;
}

export interface ServeOptions {
  /**
   * Calls the connection runs at once. Per connection, not per serve: the
   * connection asks for the largest its serves name; 16 when none names one.
   */
  concurrency?: number;
}

/** What `serve` returns. */
export interface ServeHandle {
  /** The patterns served. */
  readonly methods: string[];
  /** Settles when the hub has accepted (or refused, e.g. "forbidden") the patterns. */
  readonly ready: Promise<void>;
  /** Stops serving (running calls still finish); resolves once the hub has confirmed. */
  close(): Promise<void>;
}

/**
 * One method of a `Caller`: called with the API method's parameter (and
 * call options), resolving with its result.
 */
export type CallerMethod<F> = F extends (...args: infer A) => infer R
  ? A extends []
    ? (params?: undefined, options?: CallOptions) => Promise<Awaited<R>>
    : A extends [infer P]
      ? (params: P, options?: CallOptions) => Promise<Awaited<R>>
      : A extends [(infer P)?]
        ? (params?: P, options?: CallOptions) => Promise<Awaited<R>>
        : never // a method takes at most one parameter: the call's params
  : never;

/**
 * `createCaller<API>(hub)`: every method of `API`, reached by its path —
 * `api.node.execute(params)` calls "node.execute".
 *
 *   interface API { node: { execute(p: { cmd: string }): { code: number } } }
 *   const api = createCaller<API>(hub);
 *   const { code } = await api.node.execute({ cmd: "ls" });
 */
export type Caller<API> = {
  readonly [K in keyof API & string]: NonNullable<API[K]> extends (...args: never[]) => unknown
    ? CallerMethod<NonNullable<API[K]>>
    : NonNullable<API[K]> extends object
      ? Caller<NonNullable<API[K]>>
      : never;
};

/** `createCaller(hub)` without an API type: any path, any params. */
export interface UntypedCaller {
  readonly [segment: string]: UntypedCaller;
  (params?: unknown, options?: CallOptions): Promise<unknown>;
}

/** Why `runTask` rejected: `state` "dead" (`detail` is the task's error) or "cancelled". */
export class TaskFailedError extends ChanhubError {
  readonly state: "dead" | "cancelled";
  readonly taskId: string | null;
  /** The task record, when the hub reported one. */
  readonly task?: TaskRecord;
}

export interface ChanhubClient {
  readonly state: ConnectionState;
  readonly info: AuthInfo | null;
  /** The WebSocket URL in use. */
  readonly url: string;
  subscribe<T = unknown>(pattern: string, handler: (data: T, event: HubEvent<T>) => void): Unsubscribe;
  publish(channel: string, data: unknown): Promise<PublishAck>;
  /** Resolves with the task id once the task is durable. */
  submitTask(spec: TaskSpec): Promise<string>;
  /** Resolves with the task's state after the cancel. */
  cancelTask(taskId: string): Promise<string>;
  /** Submits a task and resolves with its result; rejects with a TaskFailedError (or the submit's ChanhubError). */
  runTask<R = unknown>(spec: TaskSpec, options?: RunTaskOptions): Promise<R>;
  /** The records of a task's changes from now on, until a terminal state. */
  watchTask<R = unknown>(taskId: string): TaskWatch<R>;
  /** Makes this connection a worker (one per connection); registered again after every reconnect. */
  worker<P = any, R = unknown>(options: WorkerOptions<P, R>): Worker;
  /**
   * Calls `method` and resolves with its result; rejects with a CallError.
   * At most once: a call out when the connection drops rejects with
   * "disconnected" and is not sent again.
   */
  call<R = unknown>(method: string, params?: unknown, options?: CallOptions): Promise<R>;
  /**
   * Answers calls of methods matching `patterns` (permission `serve`); a
   * thrown `{ code, message, data }` (or Error with `code`) is the caller's
   * `call_failed` detail, anything else is code "internal". Served again
   * after every reconnect. `params` is whatever the caller sent, unchecked.
   */
  serve<P = any, R = unknown>(
    patterns: string | readonly string[],
    handler: (params: P, ctx: ServeContext) => R | Promise<R>,
    options?: ServeOptions,
  ): ServeHandle;
  /**
   * Sends any protocol message (the client adds its `id`) and resolves with
   * the reply; rejects with a ChanhubError on an `error` reply.
   */
  request(message: ClientRequest): Promise<ServerMessage>;
  onState(cb: (state: ConnectionState, detail: StateDetail) => void): () => void;
  /** Every message from the hub (`task:result`, `join`, `registered`, …). */
  onMessage(cb: (message: ServerMessage) => void): () => void;
  onError(cb: (error: ChanhubError) => void): () => void;
  close(): void;
}

/** `url`: ws(s)://…, http(s)://host (its /ws), or a path such as "/ws". */
export function connect(url: string, options: ConnectOptions): ChanhubClient;
export function wsUrl(url: string): string;
export function backoffDelay(attempt: number, backoff: { base: number; cap: number }, random?: () => number): number;
export function compilePattern(pattern: string): (channel: string) => boolean;
/** A proxy calling methods by path: `createCaller<API>(hub).node.execute(p)` calls "node.execute". */
export function createCaller(hub: ChanhubClient): UntypedCaller;
export function createCaller<API>(hub: ChanhubClient): Caller<API>;
