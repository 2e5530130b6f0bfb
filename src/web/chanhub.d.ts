// Types of chanhub.js, the browser client served by a chanhub hub at
// /chanhub.js. The wire protocol is proto-docs/protocol.md.

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
}

/** An event as delivered (proto-docs/protocol.md, `event`). */
export interface HubEvent<T = unknown> {
  type: "event";
  channel: string;
  data: T;
  /** Opaque event id. */
  id: string;
  /** Publish time, ms since the Unix epoch. */
  ts: number;
  /** History channels only. */
  offset?: number;
  epoch?: string;
}

/** The hub's `published` acknowledgement. */
export interface PublishAck {
  channel: string;
  eventId: string;
  /** Connections the event was queued for. */
  delivered: number;
}

/** A task (proto-docs/tasks.md, "The task spec"). */
export interface TaskSpec {
  type: string;
  payload?: unknown;
  /** 0–9, higher first. Default 5. */
  priority?: number;
  timeoutMs?: number;
  maxAttempts?: number;
  dedupKey?: string;
}

/** The hub's auth:success. */
export interface AuthInfo {
  clientId: string;
  clientType: "browser" | "worker" | "hub";
  sub: string;
  permissions: string[];
  subscribeChannels: string[];
  publishChannels: string[];
  /** ms since the Unix epoch. */
  expiresAt: number;
}

/** An unsubscribe function; `ready` settles once the hub has answered. */
export interface Unsubscribe {
  (): void;
  readonly ready: Promise<void>;
}

export class ChanhubError extends Error {
  /** e.g. "forbidden", "invalid_channel", "disconnected", "timeout", "closed". */
  readonly code: string;
  /** The hub's message, when there was one. */
  readonly detail?: unknown;
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
  /** Any protocol message; resolves with the reply. */
  request(message: Record<string, unknown>): Promise<Record<string, unknown>>;
  onState(cb: (state: ConnectionState, detail: StateDetail) => void): () => void;
  onMessage(cb: (message: Record<string, unknown>) => void): () => void;
  onError(cb: (error: ChanhubError) => void): () => void;
  close(): void;
}

/** `url`: ws(s)://…, http(s)://host (its /ws), or a path such as "/ws". */
export function connect(url: string, options: ConnectOptions): ChanhubClient;
export function wsUrl(url: string): string;
export function backoffDelay(attempt: number, backoff: { base: number; cap: number }, random?: () => number): number;
export function compilePattern(pattern: string): (channel: string) => boolean;
