// The task API of chanhub.js (hub.worker, hub.submitTask, hub.runTask,
// hub.watchTask) against the real chanhub binary, with node's test runner.
// tests/spawn_hub.rs runs it:
//
//   CHANHUB_BIN=target/debug/chanhub node --test tests/browser/tasks.test.mjs
//
// Every client here is given the `ws` package's WebSocket (the option Node
// 20 needs), except the test of the global one's absence. Every wait is
// bounded; a passing run waits only for the hub and its messages.

import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";

import { WebSocket } from "ws";

import { TaskError, TaskFailedError, connect } from "../../src/web/client/chanhub.js";
import { mintToken, spawnHub } from "../../src/web/client/node.js";

const BINARY = process.env.CHANHUB_BIN;
assert.ok(BINARY, "set CHANHUB_BIN to the chanhub binary (tests/spawn_hub.rs does)");

/** Guard against hangs only: a passing run never waits this long. */
const WAIT_MS = 10_000;

/** Fast retries, so a retryable failure is retried within the test. */
const HUB_ENV = { CHANHUB_TASKS__RETRY__INITIAL: "20ms", CHANHUB_TASKS__RETRY__MAX: "50ms" };

/** Rejects after `ms`: bounds a wait that should end much sooner. */
function within(promise, ms, what) {
  let timer;
  const limit = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: not within ${ms} ms`)), ms);
  });
  return Promise.race([promise, limit]).finally(() => clearTimeout(timer));
}

/** Polls `check` until it is true; fails after `ms`. */
async function until(check, what, ms = WAIT_MS) {
  const deadline = Date.now() + ms;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`${what}: not within ${ms} ms`);
    await sleep(10);
  }
}

function signalled() {
  let resolve;
  const promise = new Promise((r) => (resolve = r));
  return { promise, resolve };
}

/** A unique task type per test, so tests never take each other's tasks. */
let types = 0;
const taskType = () => `test:t${++types}`;

describe("tasks from chanhub.js", () => {
  let hub;
  const clients = [];
  const open = (type, sub, options = {}) => {
    const client = connect(hub.url, {
      WebSocket,
      getToken: () => hub.mintToken({ type, sub }),
      backoff: { base: 20, cap: 200 },
      ...options,
    });
    clients.push(client);
    return client;
  };

  before(async () => {
    hub = await spawnHub({ binary: BINARY, env: HUB_ENV, stderr: "collect", readyTimeoutMs: WAIT_MS });
  });
  after(async () => {
    for (const c of clients) c.close();
    await hub?.stop();
  });

  test("a worker runs a task: runTask resolves with its result, progress reaches onProgress", async () => {
    const type = taskType();
    const seen = signalled();
    const worker = open("worker", "w1").worker({
      capabilities: [type],
      slots: 2,
      handler: async (task, ctx) => {
        assert.equal(task.type, type);
        assert.equal(ctx.attempt, 1);
        // Report until the submitter saw it (its subscription to task:<id>
        // starts after task:accepted, so an early report may go unseen).
        while (!seen.done) {
          ctx.progress(40, "halfway");
          await Promise.race([seen.promise, sleep(20)]);
        }
        return { doubled: task.payload.n * 2 };
      },
    });
    await within(worker.ready, WAIT_MS, "registered");
    assert.ok(worker.workerId);
    const progress = [];
    const result = await within(open("hub", "s1").runTask({ type, payload: { n: 21 } }, {
      onProgress: (value, message) => {
        progress.push([value, message]);
        seen.done = true;
        seen.resolve();
      },
    }), WAIT_MS, "runTask");
    assert.deepEqual(result, { doubled: 42 });
    assert.deepEqual(progress[0], [40, "halfway"]);
  });

  test("a retryable TaskError is retried; a fatal one (or the last attempt) makes the task dead", async () => {
    const type = taskType();
    const attempts = [];
    await open("worker", "w2").worker({
      capabilities: [type],
      handler: async (task, ctx) => {
        attempts.push([task.payload.kind, ctx.attempt]);
        if (task.payload.kind === "fatal") throw new TaskError("bad input", { retryable: false, data: { field: "n" } });
        if (task.payload.kind === "flaky" && ctx.attempt < 2) throw new TaskError("try again", { retryable: true });
        if (task.payload.kind === "plain") throw new Error("crashed"); // retryable
        return "ok";
      },
    }).ready;
    const submitter = open("hub", "s2");

    assert.equal(await within(submitter.runTask({ type, payload: { kind: "flaky" }, maxAttempts: 3 }), WAIT_MS, "flaky"), "ok");

    const fatal = await within(submitter.runTask({ type, payload: { kind: "fatal" }, maxAttempts: 3 }).then(
      () => assert.fail("resolved"), (e) => e), WAIT_MS, "fatal");
    assert.ok(fatal instanceof TaskFailedError);
    assert.equal(fatal.state, "dead");
    assert.deepEqual(fatal.detail, { message: "bad input", data: { field: "n" } });
    assert.equal(fatal.task.attempt, 1);

    const exhausted = await within(submitter.runTask({ type, payload: { kind: "plain" }, maxAttempts: 2 }).then(
      () => assert.fail("resolved"), (e) => e), WAIT_MS, "exhausted");
    assert.equal(exhausted.state, "dead");
    assert.equal(exhausted.detail, "crashed");
    assert.equal(exhausted.task.attempt, 2);
    assert.deepEqual(attempts.filter(([k]) => k !== "flaky").map(([k, a]) => `${k}${a}`), ["fatal1", "plain1", "plain2"]);
  });

  test("aborting runTask's signal cancels the task and aborts the worker's ctx.signal", async () => {
    const type = taskType();
    const started = signalled();
    const aborted = signalled();
    await open("worker", "w3").worker({
      capabilities: [type],
      handler: (task, ctx) => new Promise((_, reject) => {
        ctx.signal.addEventListener("abort", () => {
          aborted.resolve(ctx.signal.reason);
          reject(ctx.signal.reason);
        });
        started.resolve();
      }),
    }).ready;
    const controller = new AbortController();
    const run = open("hub", "s3").runTask({ type }, { signal: controller.signal }).then(
      () => assert.fail("resolved"), (e) => e);
    await within(started.promise, WAIT_MS, "handler started");
    controller.abort();
    const err = await within(run, WAIT_MS, "runTask rejected");
    assert.equal(err.state, "cancelled");
    assert.equal(err.name, "AbortError");
    const reason = await within(aborted.promise, WAIT_MS, "ctx.signal aborted");
    assert.equal(reason.code, "cancelled");
  });

  test("a lost lease aborts ctx.signal (lease_expired); progress keeps the lease", async () => {
    const type = taskType();
    const reasons = [];
    await open("worker", "w6").worker({
      capabilities: [type],
      slots: 2,
      handler: async (task, ctx) => {
        if (task.payload === "silent") {
          // No progress: the 150 ms lease runs out.
          return new Promise((_, reject) => ctx.signal.addEventListener("abort", () => {
            reasons.push(ctx.signal.reason.code);
            reject(ctx.signal.reason);
          }));
        }
        // Work for four leases' time, renewing it all along.
        const end = Date.now() + 600;
        while (Date.now() < end) {
          ctx.progress(Math.round((100 * (600 - (end - Date.now()))) / 600));
          await sleep(30);
        }
        assert.equal(ctx.signal.aborted, false);
        return "kept";
      },
    }).ready;
    const submitter = open("hub", "s6");
    const silent = submitter.runTask({ type, payload: "silent", timeoutMs: 150, maxAttempts: 1 }).then(
      () => assert.fail("resolved"), (e) => e);
    assert.equal(await within(submitter.runTask({ type, payload: "busy", timeoutMs: 150 }), WAIT_MS, "busy"), "kept");
    const err = await within(silent, WAIT_MS, "silent");
    assert.equal(err.state, "dead");
    await until(() => reasons.length === 1, "ctx.signal aborted");
    assert.deepEqual(reasons, ["lease_expired"]);
  });

  test("submitTask + watchTask follow a task's lifecycle", async () => {
    const type = taskType();
    const go = signalled();
    await open("worker", "w4").worker({ capabilities: [type], handler: async () => { await go.promise; return 7; } }).ready;
    const submitter = open("hub", "s4");
    const id = await within(submitter.submitTask({ type }), WAIT_MS, "submitTask");
    assert.match(id, /^[0-9a-f]{16}$/);
    const watch = submitter.watchTask(id);
    await within(watch.ready, WAIT_MS, "watching");
    go.resolve();
    const states = [];
    for await (const record of watch) states.push(record.state);
    assert.equal(states.at(-1), "completed");
  });

  test("drain resolves once the running handler has finished", async () => {
    const type = taskType();
    const started = signalled();
    const finish = signalled();
    let finished = false;
    const worker = open("worker", "w5").worker({
      capabilities: [type],
      handler: async () => {
        started.resolve();
        await finish.promise;
        finished = true;
        return "done";
      },
    });
    await worker.ready;
    const run = open("hub", "s5").runTask({ type });
    await within(started.promise, WAIT_MS, "handler started");
    let drained = false;
    const drain = worker.drain().then(() => (drained = true));
    assert.equal(worker.running, 1);
    await sleep(50); // drain must still wait (not what the test relies on to pass)
    assert.equal(drained, false);
    finish.resolve();
    await within(drain, WAIT_MS, "drain");
    assert.ok(finished);
    assert.equal(worker.running, 0);
    assert.equal(await within(run, WAIT_MS, "runTask"), "done");
  });

  test("connect() without a WebSocket fails clearly; the option is used", () => {
    const had = globalThis.WebSocket;
    try {
      delete globalThis.WebSocket;
      assert.throws(() => connect(hub.url, { token: "t" }), /no global WebSocket.*connect\(url, \{ WebSocket \}\)/s);
      let built = 0;
      class Counting extends WebSocket {
        constructor(url) { super(url); built += 1; }
      }
      const c = connect(hub.url, { token: "t", WebSocket: Counting, maxRetries: 0 });
      c.close();
      assert.ok(built <= 1);
    } finally {
      if (had) globalThis.WebSocket = had;
    }
  });
});

/** A free TCP port on 127.0.0.1, for a hub that restarts on the same address. */
function freePort() {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.on("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}

test("a worker registers again after the hub restarts, and runs tasks", async () => {
  const dataDir = mkdtempSync(join(tmpdir(), "chanhub-tasks-test-"));
  const secret = "tasks-test-secret-0123456789abcdef";
  const listen = `127.0.0.1:${await freePort()}`;
  const start = () => spawnHub({ binary: BINARY, secret, listen, dataDir, env: HUB_ENV, stderr: "collect", readyTimeoutMs: WAIT_MS });
  let hub = await start();
  const token = (type, sub) => () => mintToken(secret, { type, sub });
  const options = { WebSocket, backoff: { base: 20, cap: 200 } };
  const workerClient = connect(hub.url, { ...options, getToken: token("worker", "rw") });
  const submitter = connect(hub.url, { ...options, getToken: token("hub", "rs") });
  try {
    const registered = [];
    workerClient.onMessage((m) => m.type === "registered" && registered.push(m.workerId));
    const held = signalled();
    const aborted = signalled();
    const again = signalled();
    const worker = workerClient.worker({
      capabilities: ["restart:*"],
      handler: async (task, ctx) => {
        if (task.type !== "restart:hold") return task.payload;
        if (ctx.attempt > 1) {
          again.resolve(ctx.attempt);
          return "held";
        }
        held.resolve();
        return new Promise((_, reject) => ctx.signal.addEventListener("abort", () => {
          aborted.resolve(ctx.signal.reason);
          reject(ctx.signal.reason);
        }));
      },
    });
    await within(worker.ready, WAIT_MS, "registered");
    assert.equal(await within(submitter.runTask({ type: "restart:a", payload: 1 }), WAIT_MS, "before"), 1);
    await within(submitter.submitTask({ type: "restart:hold" }), WAIT_MS, "submit hold");
    await within(held.promise, WAIT_MS, "hold started");

    await hub.stop();
    // The dropped connection aborts the running handler's signal.
    assert.equal((await within(aborted.promise, WAIT_MS, "ctx.signal aborted")).code, "disconnected");
    await until(() => workerClient.state !== "open", "worker saw the hub go");
    hub = await start();
    // Connection ids start again with the hub, so the new workerId may equal the old one.
    await until(() => registered.length === 2, "registered again");
    assert.equal(worker.workerId, registered[1]);
    assert.equal(await within(submitter.runTask({ type: "restart:b", payload: 2 }), WAIT_MS, "after"), 2);
    // The held task was requeued (it is durable) and comes back as attempt 2.
    assert.equal(await within(again.promise, WAIT_MS, "hold assigned again"), 2);
  } finally {
    workerClient.close();
    submitter.close();
    await hub.stop();
    rmSync(dataDir, { recursive: true, force: true });
  }
});
