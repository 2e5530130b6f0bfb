// The `chanhub` package as users install it: tests/js_package.rs packs
// src/web/client with `npm pack`, installs the tarball (and `ws`) into an
// empty project, copies this file there and runs it with node's test
// runner. So every import below resolves through the installed package's
// `exports`, never through this repository:
//
//   CHANHUB_BIN=target/debug/chanhub node --test tarball.test.mjs   # in that project
//
// A Node worker (which also serves a method) and a caller (a call and two
// tasks) against a real hub started with the package's own spawnHub.

import assert from "node:assert/strict";
import { after, before, test } from "node:test";

import { WebSocket } from "ws";

import { CallError, TaskError, TaskFailedError, connect, createCaller } from "chanhub";
import { spawnHub } from "chanhub/node";

const BINARY = process.env.CHANHUB_BIN;
assert.ok(BINARY, "set CHANHUB_BIN to the chanhub binary (tests/js_package.rs does)");

/** Guard against hangs only: a passing run never waits this long. */
const WAIT_MS = 10_000;

function within(promise, what) {
  let timer;
  const limit = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: not within ${WAIT_MS} ms`)), WAIT_MS);
  });
  return Promise.race([promise, limit]).finally(() => clearTimeout(timer));
}

let hub;
let workerClient;
let caller;

before(async () => {
  hub = await spawnHub({ binary: BINARY, stderr: "collect", readyTimeoutMs: WAIT_MS });
  const open = (type, sub) => connect(hub.url, { WebSocket, getToken: () => hub.mintToken({ type, sub }) });
  workerClient = open("worker", "package-worker");
  caller = open("hub", "package-caller");
});

after(async () => {
  workerClient?.close();
  caller?.close();
  await hub?.stop();
});

test("the installed package resolves its entry points", async () => {
  const pkg = await import("chanhub/package.json", { with: { type: "json" } });
  assert.equal(pkg.default.name, "chanhub");
  assert.deepEqual(pkg.default.dependencies ?? {}, {}, "no runtime dependencies");
  assert.equal(typeof connect, "function");
  assert.equal(typeof spawnHub, "function");
  // chanhub/react needs the app's react (a peer dependency): resolved, not loaded.
  assert.match(import.meta.resolve("chanhub/react"), /\/node_modules\/chanhub\/react\.js$/);
});

test("a Node worker runs tasks a caller submits; a call reaches the method it serves", async () => {
  const worker = workerClient.worker({
    capabilities: ["package:*"],
    slots: 2,
    handler: async (task, ctx) => {
      ctx.progress(50, "halfway");
      if (task.type === "package:fail") throw new TaskError("refused", { retryable: false });
      return { upper: task.payload.text.toUpperCase(), attempt: ctx.attempt };
    },
  });
  const served = workerClient.serve("package.*", async (params, ctx) => {
    if (ctx.method === "package.add") return { sum: params.a + params.b };
    throw { code: "not_found", message: `no ${ctx.method}` };
  });
  await within(Promise.all([worker.ready, served.ready]), "worker registered and method served");

  assert.deepEqual(await within(caller.call("package.add", { a: 2, b: 3 }), "call"), { sum: 5 });
  const api = createCaller(caller);
  assert.deepEqual(await within(api.package.add({ a: 20, b: 22 }), "createCaller"), { sum: 42 });
  const missing = await within(caller.call("package.nope").then(() => assert.fail("resolved"), (e) => e), "failing call");
  assert.ok(missing instanceof CallError);
  assert.equal(missing.code, "call_failed");
  assert.equal(missing.detail.code, "not_found");

  const result = await within(caller.runTask({ type: "package:upper", payload: { text: "hi" } }), "runTask");
  assert.deepEqual(result, { upper: "HI", attempt: 1 });
  const failed = await within(caller.runTask({ type: "package:fail", maxAttempts: 3 }).then(
    () => assert.fail("resolved"), (e) => e), "failing task");
  assert.ok(failed instanceof TaskFailedError);
  assert.equal(failed.state, "dead");
  assert.equal(failed.task.attempt, 1);

  await within(worker.drain(), "drain");
});
