// Types of node.js (`chanhub/node`): start a chanhub hub as a child process of a
// Node app and know when it is ready. The protocol it speaks with the hub
// is in the README ("Running chanhub inside a desktop app").

/** A client type, and so a token's permissions (README, "Channels and permissions"). */
export type ClientType = "browser" | "worker" | "hub";

/** Why `spawnHub` failed (`SpawnHubError.code`). */
export type SpawnHubErrorCode =
  /** The hub's own startup errors, from its `{"event":"error"}` line (exit status 3, 4, 5, 1). */
  | "config_invalid"
  | "bind_failed"
  | "data_dir"
  | "other"
  /** No ready line within `readyTimeoutMs`; the child was killed. */
  | "ready_timeout"
  /** It exited without a ready or error line (an unknown flag: status 2). */
  | "exited"
  /** The binary could not be started (not found, not executable). */
  | "spawn_failed"
  /** `signal` aborted before the hub was ready; the child was killed. */
  | "aborted";

export class SpawnHubError extends Error {
  readonly name: "SpawnHubError";
  readonly code: SpawnHubErrorCode | (string & {});
  /** The child's exit status, when it exited (e.g. 4 for bind_failed). */
  readonly exitCode: number | null;
  /** The signal that ended the child, when one did (e.g. "SIGKILL"). */
  readonly signal: string | null;
  /** The child's pid, when it was started. */
  readonly pid: number | null;
  /** The child's last stderr lines. */
  readonly stderr: string[];
}

/** An environment value: strings stay, numbers and booleans become strings, anything else unsets the variable. */
export type EnvValue = string | number | boolean | bigint | null | undefined;

export interface SpawnHubOptions {
  /** Path of the chanhub executable. */
  binary: string;
  /** More arguments after `serve` and the sidecar flags, e.g. ["--config", "chanhub.toml"]. */
  args?: string[];
  /** Environment overrides on top of this process's environment (see `cleanEnv`). */
  env?: Record<string, EnvValue>;
  /** Start from this process's environment. Default true; false: only `env`. */
  inheritEnv?: boolean;
  /** Working directory of the hub. */
  cwd?: string;
  /** `--listen`. Default "127.0.0.1:0": a free port, read from the ready line. */
  listen?: string;
  /** Milliseconds to wait for the ready line before killing the child. Default 10000. */
  readyTimeoutMs?: number;
  /**
   * The token secret, written as the first stdin line (`--secret-stdin`).
   * Default: 32 random bytes, hex. `false`: the hub's own (configuration or
   * data directory); `mintToken` then throws.
   */
  secret?: string | false;
  /** A lasting data directory (`--data-dir`). */
  dataDir?: string;
  /**
   * A fresh temporary data directory, removed when the hub exits
   * (`--ephemeral`). Default: true unless `dataDir` is given. `false` with
   * no `dataDir`: the configured or default data directory.
   */
  ephemeral?: boolean;
  /** `--exit-with-parent`. Default true except on Windows, where the hub has no parent watching (the stdin pipe covers it). */
  exitWithParent?: boolean;
  /**
   * The hub's log lines (stderr): "forward" (default) writes them to this
   * process's stderr, "collect" only keeps the last ones (`stderrTail()`,
   * `SpawnHubError.stderr`), a function is called with each line.
   */
  stderr?: "forward" | "collect" | ((line: string) => void);
  /** Aborting it before the hub is ready kills the child; `spawnHub` rejects with code "aborted". */
  signal?: AbortSignal;
}

/** The ready line (`{"event":"ready",...}`). */
export interface ReadyInfo {
  event: "ready";
  pid: number;
  /** The bound address, e.g. "127.0.0.1:43121". */
  listen: string;
  /** WebSocket URL, e.g. "ws://127.0.0.1:43121/ws". */
  ws: string;
  /** HTTP base URL, e.g. "http://127.0.0.1:43121". */
  http: string;
  version: string;
  hubId: string;
  dataDir: string;
}

export interface TokenOptions {
  type: ClientType;
  /** Who the client is. */
  sub: string;
  /** Lifetime in seconds. Default 3600. */
  ttlSeconds?: number;
  /** Narrowing claims: channels, publish, permissions, capabilities, max_slots, call, serve. */
  [claim: string]: unknown;
}

export interface HubProcess {
  /** The WebSocket URL, e.g. "ws://127.0.0.1:43121/ws". */
  readonly url: string;
  /** The HTTP base URL, e.g. "http://127.0.0.1:43121". */
  readonly httpUrl: string;
  /** The hub's process id. */
  readonly pid: number;
  /** The ready line. */
  readonly ready: ReadyInfo;
  /** Whether the hub process is still running. */
  readonly running: boolean;
  /** Resolves once the hub has exited. */
  readonly exited: Promise<{ code: number | null; signal: string | null }>;
  /**
   * Called when the hub exits: by itself or killed (`requested` false: a
   * crash), or after `stop()` (`requested` true). One of `code` and
   * `signal` is null. Called at once when it has already exited. Returns a
   * function that removes the listener.
   */
  onExit(
    listener: (code: number | null, signal: string | null, info: { requested: boolean }) => void,
  ): () => void;
  /** A token for this hub, signed with its secret (throws with `secret: false`). */
  mintToken(options: TokenOptions): string;
  /**
   * SIGTERM (Windows: close its stdin), wait up to `timeoutMs` (default
   * 15000) for the exit, then SIGKILL. Resolves with the exit status: 0
   * after a clean stop, null when a signal ended it.
   */
  stop(options?: { timeoutMs?: number }): Promise<number | null>;
  /** The hub's last stderr lines (at most 50). */
  stderrTail(): string[];
}

/**
 * Starts `binary serve --listen 127.0.0.1:0 --ready-json
 * --exit-on-stdin-close --exit-with-parent --secret-stdin --ephemeral` and
 * resolves once the hub prints its ready line. Rejects with a
 * `SpawnHubError`, leaving no child behind, when it cannot start.
 */
export function spawnHub(options: SpawnHubOptions): Promise<HubProcess>;

/** An HS256 token for a hub whose token secret is `secret`. */
export function mintToken(secret: string, options: TokenOptions): string;

/** `base` (default: process.env) with `overrides` applied, every value a string. */
export function cleanEnv(
  overrides: Record<string, EnvValue> | undefined,
  base?: Record<string, EnvValue>,
): Record<string, string>;
