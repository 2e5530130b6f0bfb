// spawnHub (src/web/client/node.js) against the real chanhub binary, with
// node's test runner. tests/spawn_hub.rs runs it:
//
//   CHANHUB_BIN=target/debug/chanhub node --test tests/browser/spawn.test.mjs
//
// (Node 20 needs --experimental-websocket for the global WebSocket.)
// Some tests use small shell scripts as fake hubs: one that never gets
// ready, one that ignores SIGTERM, one that reports its arguments,
// environment and stdin. Every wait is bounded; a passing run waits only
// for processes to start and stop.

import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { createHmac } from "node:crypto";
import { chmodSync, existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { after, describe, test } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";

import { SpawnHubError, cleanEnv, mintToken, spawnHub } from "../../src/web/client/node.js";

const BINARY = process.env.CHANHUB_BIN;
assert.ok(BINARY, "set CHANHUB_BIN to the chanhub binary (tests/spawn_hub.rs does)");
assert.equal(typeof WebSocket, "function", "no global WebSocket: run node with --experimental-websocket");

/** Guard against hangs only: a passing run never waits this long. */
const WAIT_MS = 10_000;

const fakes = mkdtempSync(join(tmpdir(), "chanhub-spawn-test-"));
after(() => rmSync(fakes, { recursive: true, force: true }));

/** An executable shell script in the temp dir. */
function fake(name, body) {
  const path = join(fakes, name);
  writeFileSync(path, `#!/bin/sh\n${body}\n`);
  chmodSync(path, 0o755);
  return path;
}

/** Whether `pid` runs (a zombie nobody has reaped yet counts as gone). */
function alive(pid) {
  try {
    process.kill(pid, 0);
  } catch (err) {
    return err.code === "EPERM";
  }
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    return stat.slice(stat.lastIndexOf(")") + 2)[0] !== "Z";
  } catch {
    return false;
  }
}

/** Polls until `pid` is gone; false when it is still running after `ms`. */
async function goneWithin(pid, ms) {
  const deadline = Date.now() + ms;
  while (alive(pid)) {
    if (Date.now() > deadline) return false;
    await sleep(20);
  }
  return true;
}

/** Rejects after `ms`: bounds a wait that should end much sooner. */
function within(promise, ms, what) {
  let timer;
  const limit = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: not within ${ms} ms`)), ms);
  });
  return Promise.race([promise, limit]).finally(() => clearTimeout(timer));
}

/** A WebSocket client that authenticates and then reads messages by type. */
async function client(url, token) {
  const ws = new WebSocket(url);
  const inbox = [];
  const waiting = [];
  ws.onmessage = (e) => {
    inbox.push(JSON.parse(e.data));
    for (const w of waiting.splice(0)) w();
  };
  const closed = new Promise((resolve) => (ws.onclose = (e) => resolve(e.code)));
  await within(new Promise((resolve, reject) => {
    ws.onopen = resolve;
    ws.onerror = () => reject(new Error(`cannot connect to ${url}`));
  }), WAIT_MS, "open");
  const next = (type) =>
    within((async () => {
      for (;;) {
        const i = inbox.findIndex((m) => m.type === type || m.type === "error" || m.type === "auth:failed");
        if (i >= 0) {
          const [message] = inbox.splice(i, 1);
          assert.equal(message.type, type, JSON.stringify(message));
          return message;
        }
        await new Promise((resolve) => waiting.push(resolve));
      }
    })(), WAIT_MS, `waiting for ${type}`);
  const send = (message) => ws.send(JSON.stringify(message));
  send({ type: "auth", id: 1, token });
  const auth = await next("auth:success");
  return { auth, send, next, closed, close: () => ws.close() };
}

/**
 * Waits until the hub surely handles SIGTERM. The hub starts listening for
 * signals when its server task first runs, which can be just after the
 * ready line; a SIGTERM before that kills it at once (status: signal
 * SIGTERM, no 1012, the ephemeral data dir left behind). Once it has
 * answered an HTTP request, that task has run.
 */
async function signalsHandled(hub) {
  const response = await within(fetch(`${hub.httpUrl}/healthz`), WAIT_MS, "GET /healthz");
  assert.equal(response.status, 200);
  await response.body?.cancel();
}

/** Runs `spawn-parent.mjs` (a Node app using spawnHub) and reads its line. */
async function parentApp(...args) {
  const parent = spawn(process.execPath, [new URL("spawn-parent.mjs", import.meta.url).pathname, BINARY, ...args], {
    stdio: ["ignore", "pipe", "inherit"],
  });
  const lines = createInterface({ input: parent.stdout });
  const [line] = await within(
    new Promise((resolve, reject) => {
      lines.once("line", (l) => resolve([l]));
      parent.once("exit", (code) => reject(new Error(`spawn-parent.mjs exited with ${code}`)));
    }),
    WAIT_MS,
    "spawn-parent.mjs's line",
  );
  const exited = new Promise((resolve) => parent.once("exit", (code, signal) => resolve(signal)));
  return { ...JSON.parse(line), exited };
}

describe("spawnHub against the real binary", () => {
  test("resolves at the ready line with a working ws URL and tokens the parent minted", async () => {
    const hub = await spawnHub({ binary: BINARY, stderr: "collect", readyTimeoutMs: WAIT_MS });
    try {
      assert.equal(hub.ready.event, "ready");
      assert.equal(hub.pid, hub.ready.pid);
      assert.ok(alive(hub.pid));
      assert.match(hub.url, /^ws:\/\/127\.0\.0\.1:\d+\/ws$/);
      assert.equal(hub.url, `ws://${hub.ready.listen}/ws`);
      assert.equal(hub.httpUrl, `http://${hub.ready.listen}`);
      assert.ok(existsSync(hub.ready.dataDir), "ephemeral data dir exists while the hub runs");
      assert.ok(hub.running);

      // A renderer (browser token) subscribes; the main process (hub token)
      // publishes; a worker token is accepted too.
      const renderer = await client(hub.url, hub.mintToken({ type: "browser", sub: "renderer-1" }));
      assert.equal(renderer.auth.clientType, "browser");
      assert.equal(renderer.auth.sub, "renderer-1");
      const main = await client(hub.url, hub.mintToken({ type: "hub", sub: "main", publish: ["app:**"] }));
      assert.deepEqual(main.auth.publishChannels, ["app:**"]);
      const worker = await client(hub.url, hub.mintToken({ type: "worker", sub: "worker-thread-1", ttlSeconds: 60 }));
      assert.equal(worker.auth.clientType, "worker");

      renderer.send({ type: "subscribe", id: 2, channels: ["app:*"] });
      await renderer.next("subscribed");
      main.send({ type: "publish", id: 3, channel: "app:hello", data: { text: "hi" } });
      assert.equal((await main.next("published")).delivered, 1);
      const event = await renderer.next("event");
      assert.equal(event.channel, "app:hello");
      assert.deepEqual(event.data, { text: "hi" });

      assert.equal(await hub.stop({ timeoutMs: WAIT_MS }), 0);
      assert.equal(await within(renderer.closed, WAIT_MS, "close"), 1012, "clients hear 1012 (service restart)");
      assert.ok(!existsSync(hub.ready.dataDir), "the ephemeral data dir is removed");
    } finally {
      await hub.stop({ timeoutMs: WAIT_MS });
    }
  });

  test("two hubs run side by side, each on its own port and secret", async () => {
    const [a, b] = await Promise.all([
      spawnHub({ binary: BINARY, stderr: "collect" }),
      spawnHub({ binary: BINARY, stderr: "collect" }),
    ]);
    try {
      assert.notEqual(a.url, b.url);
      assert.notEqual(a.ready.dataDir, b.ready.dataDir);
      await client(a.url, a.mintToken({ type: "browser", sub: "x" }));
      const ws = new WebSocket(b.url);
      await within(new Promise((resolve) => (ws.onopen = resolve)), WAIT_MS, "open");
      ws.send(JSON.stringify({ type: "auth", id: 1, token: a.mintToken({ type: "browser", sub: "x" }) }));
      const reply = await within(new Promise((resolve) => (ws.onmessage = (e) => resolve(JSON.parse(e.data)))), WAIT_MS, "reply");
      assert.equal(reply.type, "auth:failed", "b refuses a's tokens");
      ws.close();
    } finally {
      assert.deepEqual(await Promise.all([a.stop(), b.stop()]), [0, 0]);
    }
  });

  test("stop() waits for the exit and resolves with 0; onExit says it was requested", async () => {
    const hub = await spawnHub({ binary: BINARY, stderr: "collect" });
    const exit = new Promise((resolve) => hub.onExit((...args) => resolve(args)));
    await signalsHandled(hub);
    const stopping = hub.stop({ timeoutMs: WAIT_MS });
    assert.equal(hub.stop(), stopping, "a second stop() is the same promise");
    assert.equal(await stopping, 0);
    assert.ok(!alive(hub.pid), "the process is gone when stop() resolves");
    assert.equal(hub.running, false);
    assert.deepEqual(await exit, [0, null, { requested: true }]);
    assert.deepEqual(await hub.exited, { code: 0, signal: null });
    // A late listener hears about the exit too.
    assert.deepEqual(await new Promise((resolve) => hub.onExit((...args) => resolve(args))), [0, null, { requested: true }]);
  });

  test("a crash is reported by onExit: killed from outside, or stopped by someone else", async () => {
    const hub = await spawnHub({ binary: BINARY, stderr: "collect" });
    const exit = new Promise((resolve) => hub.onExit((...args) => resolve(args)));
    process.kill(hub.pid, "SIGKILL");
    assert.deepEqual(await within(exit, WAIT_MS, "onExit"), [null, "SIGKILL", { requested: false }]);
    assert.equal(await hub.stop(), null, "stop() after the exit resolves at once");
    // SIGKILL leaves the ephemeral data dir behind.
    rmSync(hub.ready.dataDir, { recursive: true, force: true });

    const other = await spawnHub({ binary: BINARY, stderr: "collect" });
    const otherExit = new Promise((resolve) => other.onExit((...args) => resolve(args)));
    await signalsHandled(other);
    process.kill(other.pid, "SIGTERM");
    assert.deepEqual(await within(otherExit, WAIT_MS, "onExit"), [0, null, { requested: false }]);
  });

  test("a port in use: rejects with bind_failed and exit status 4, no process left", async () => {
    const server = createServer();
    await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
    const { port } = server.address();
    try {
      const err = await spawnHub({ binary: BINARY, listen: `127.0.0.1:${port}`, stderr: "collect" }).then(
        () => assert.fail("spawnHub resolved on a port in use"),
        (e) => e,
      );
      assert.ok(err instanceof SpawnHubError, String(err));
      assert.equal(err.code, "bind_failed", err.message);
      assert.equal(err.exitCode, 4);
      assert.match(err.message, new RegExp(`${port}`));
      assert.ok(!alive(err.pid));
    } finally {
      server.close();
    }
  });

  test("other startup errors: bad config (3), unknown flag (3), missing binary", async () => {
    const config = await spawnHub({ binary: BINARY, args: ["--config", join(fakes, "missing.toml")], stderr: "collect" })
      .catch((e) => e);
    assert.equal(config.code, "config_invalid", config.message);
    assert.equal(config.exitCode, 3);

    const flag = await spawnHub({ binary: BINARY, args: ["--no-such-flag"], stderr: "collect" }).catch((e) => e);
    assert.equal(flag.code, "config_invalid", flag.message);
    assert.equal(flag.exitCode, 3);
    assert.match(flag.message, /no-such-flag/);

    const missing = await spawnHub({ binary: join(fakes, "no-such-binary") }).catch((e) => e);
    assert.equal(missing.code, "spawn_failed", missing.message);
    assert.equal(missing.cause?.code, "ENOENT");
  });

  test("no ready line within readyTimeoutMs: rejects and kills the child", async () => {
    const silent = fake("silent", 'echo "fake hub: starting" >&2\nexec sleep 30');
    const started = Date.now();
    const err = await spawnHub({ binary: silent, readyTimeoutMs: 300, stderr: "collect" }).catch((e) => e);
    const waited = Date.now() - started;
    assert.ok(err instanceof SpawnHubError, String(err));
    assert.equal(err.code, "ready_timeout", err.message);
    assert.equal(err.signal, "SIGKILL");
    assert.deepEqual(err.stderr, ["fake hub: starting"]);
    assert.ok(waited >= 300 && waited < WAIT_MS, `rejected after ${waited} ms`);
    assert.ok(!alive(err.pid), "the silent child is gone when spawnHub rejects");
  });

  test("an AbortSignal cancels the start and kills the child", async () => {
    const silent = fake("silent-abort", "exec sleep 30");
    const controller = new AbortController();
    const pending = spawnHub({ binary: silent, readyTimeoutMs: WAIT_MS, signal: controller.signal });
    controller.abort();
    const err = await within(pending.catch((e) => e), WAIT_MS, "abort");
    assert.equal(err.code, "aborted", err.message);
    assert.ok(!alive(err.pid));
  });

  test("stop() SIGKILLs a hub that does not exit within timeoutMs", async () => {
    const stubborn = fake(
      "stubborn",
      `trap '' TERM
echo '{"event":"ready","pid":'$$',"ws":"ws://127.0.0.1:1/ws","http":"http://127.0.0.1:1"}'
exec sleep 30`,
    );
    const hub = await spawnHub({ binary: stubborn, secret: false, ephemeral: false, readyTimeoutMs: WAIT_MS });
    const exit = new Promise((resolve) => hub.onExit((...args) => resolve(args)));
    assert.equal(await within(hub.stop({ timeoutMs: 200 }), WAIT_MS, "stop"), null);
    assert.deepEqual(await exit, [null, "SIGKILL", { requested: true }]);
    assert.ok(!alive(hub.pid));
  });

  test("the child gets the flags, a string-only environment and the secret on stdin", async () => {
    const echo = fake(
      "echo-hub",
      `read -r secret
printf '{"event":"ready","pid":%s,"ws":"ws://x/ws","http":"http://x","args":"%s","secret":"%s","num":"%s","gone":"%s"}\\n' \\
  $$ "$*" "$secret" "$CHANHUB_TEST_NUM" "\${CHANHUB_TEST_GONE-unset}"
exec sleep 30`,
    );
    process.env.CHANHUB_TEST_GONE = "inherited";
    let hub;
    try {
      hub = await spawnHub({
        binary: echo,
        args: ["--json-logs"],
        env: { CHANHUB_TEST_NUM: 42, CHANHUB_TEST_GONE: undefined },
        readyTimeoutMs: WAIT_MS,
      });
    } finally {
      delete process.env.CHANHUB_TEST_GONE;
    }
    try {
      const flags = "serve --listen 127.0.0.1:0 --ready-json --exit-on-stdin-close --exit-with-parent --secret-stdin --ephemeral --json-logs";
      assert.equal(hub.ready.args, flags);
      assert.equal(hub.ready.num, "42");
      assert.equal(hub.ready.gone, "unset");
      assert.match(hub.ready.secret, /^[0-9a-f]{64}$/, "a random secret by default");
      // The handle signs with the secret it wrote to the child's stdin.
      const [head, body, sig] = hub.mintToken({ type: "hub", sub: "main" }).split(".");
      assert.equal(createHmac("sha256", hub.ready.secret).update(`${head}.${body}`).digest("base64url"), sig);
    } finally {
      await hub.stop({ timeoutMs: WAIT_MS });
    }
  });

  for (const mode of [[], ["--stdin-only"]]) {
    const how = mode.length ? "with only the stdin pipe (the Windows way)" : "with --exit-with-parent";
    test(`the hub exits when its Node parent is killed with SIGKILL, ${how}`, async () => {
      const app = await parentApp(...mode);
      assert.ok(alive(app.hub), "the hub runs");
      const renderer = await client(app.ws, app.token);
      process.kill(app.parent, "SIGKILL");
      assert.equal(await within(app.exited, WAIT_MS, "the parent's exit"), "SIGKILL");
      const gone = await goneWithin(app.hub, 2000);
      if (!gone) process.kill(app.hub, "SIGKILL");
      assert.ok(gone, `hub ${app.hub} still runs 2 s after its parent died`);
      assert.equal(await within(renderer.closed, WAIT_MS, "close"), 1012, "its clients hear 1012");
    });
  }
});

describe("pure parts", () => {
  test("cleanEnv keeps strings, stringifies numbers and booleans, drops the rest", () => {
    const env = cleanEnv(
      { A: "a", N: 3, B: false, U: undefined, Z: null, O: { x: 1 }, KEEP: undefined },
      { KEEP: "base", OTHER: "o", BAD: undefined },
    );
    assert.deepEqual(env, { A: "a", N: "3", B: "false", OTHER: "o" });
    assert.equal(cleanEnv(undefined, { X: "1" }).X, "1");
  });

  test("mintToken signs HS256 claims with exp = iat + ttl", () => {
    const token = mintToken("s3cret", { type: "worker", sub: "w1", ttlSeconds: 90, capabilities: ["thumb:*"] });
    const [head, body, sig] = token.split(".");
    assert.deepEqual(JSON.parse(Buffer.from(head, "base64url")), { alg: "HS256", typ: "JWT" });
    const claims = JSON.parse(Buffer.from(body, "base64url"));
    assert.equal(claims.sub, "w1");
    assert.equal(claims.client_type, "worker");
    assert.deepEqual(claims.capabilities, ["thumb:*"]);
    assert.equal(claims.exp - claims.iat, 90);
    assert.ok(Math.abs(claims.iat - Date.now() / 1000) < 60);
    assert.equal(createHmac("sha256", "s3cret").update(`${head}.${body}`).digest("base64url"), sig);
    assert.throws(() => mintToken("s", { type: "admin", sub: "x" }), /type must be one of/);
    assert.throws(() => mintToken("s", { type: "hub", sub: "" }), /sub/);
    assert.throws(() => mintToken(false, { type: "hub", sub: "x" }), /secret/);
  });
});
