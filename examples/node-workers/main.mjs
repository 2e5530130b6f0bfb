// Four worker_threads index files for the main thread, through a chanhub
// hub that the main thread runs as a sidecar — the pattern for Node apps
// moving their worker pools onto the hub:
//
// 1. spawnHub starts the chanhub binary (a random token secret, a temporary
//    data directory, gone when this process goes);
// 2. four worker_threads (worker.mjs) connect as workers with capability
//    `index:file` (two slots each) and count the lines and words of files;
// 3. this thread writes 100 files, submits one `index:file` task per file,
//    and prints progress from the lifecycle events (`task:progress`,
//    `task:completed`, `task:dead`), which any client may watch;
// 4. everything stops cleanly: the workers drain and disconnect, then the
//    hub stops.
//
//   cargo build                                  # the hub binary
//   cd examples/node-workers && npm install
//   CHANHUB_BIN=../../target/debug/chanhub node main.mjs
//
// tests/spawn_hub.rs runs it.

import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { Worker } from "node:worker_threads";

import { connect } from "chanhub";
import { spawnHub } from "chanhub/node";
import { WebSocket } from "ws";

const THREADS = 4;
const FILES = 100;

const binary = process.env.CHANHUB_BIN ?? fileURLToPath(new URL("../../target/release/chanhub", import.meta.url));

// Files to index: file-001.txt has 1 × 40 lines, file-002.txt 2 × 40, …
const dir = mkdtempSync(join(tmpdir(), "chanhub-node-workers-"));
const files = [];
for (let i = 1; i <= FILES; i++) {
  const path = join(dir, `file-${String(i).padStart(3, "0")}.txt`);
  const lines = Array.from({ length: 40 * i }, (_, n) => `line ${n + 1} of file ${i}: the quick brown fox`);
  writeFileSync(path, `${lines.join("\n")}\n`);
  files.push(path);
}

const hub = await spawnHub({ binary, readyTimeoutMs: 10_000, stderr: "collect" });
hub.onExit((code, signal, { requested }) => {
  if (!requested) {
    console.error(`the hub stopped unexpectedly (${signal ?? `status ${code}`})`);
    process.exit(1);
  }
});
console.log(`hub ready at ${hub.url}`);

// The worker threads, each with its own worker token.
const threads = [];
const ready = [];
for (let i = 1; i <= THREADS; i++) {
  const name = `indexer-${i}`;
  const token = hub.mintToken({ type: "worker", sub: name, ttlSeconds: 3600 });
  const thread = new Worker(new URL("./worker.mjs", import.meta.url), {
    workerData: { url: hub.url, token, name, slots: 2 },
  });
  thread.on("error", (err) => {
    console.error(`${name} failed: ${err.stack ?? err}`);
    process.exit(1);
  });
  ready.push(new Promise((resolve) => thread.once("message", resolve)));
  threads.push(thread);
}
await Promise.all(ready);
console.log(`${THREADS} workers ready`);

// This thread's connection: a hub token may submit tasks.
const main = connect(hub.url, { WebSocket, token: hub.mintToken({ type: "hub", sub: "indexer-main" }) });
const ours = new Set();
const early = new Map(); // task id -> lifecycle events that came before its submit was answered
const running = new Map(); // task id -> last progress, while it runs
let reports = 0;
let completed = 0;
let lines = 0;
let words = 0;
let done;
const finished = new Promise((resolve, reject) => (done = { resolve, reject }));

function onLifecycle(task, event) {
  if (!ours.has(task.id)) {
    early.set(task.id, [...(early.get(task.id) ?? []), event]);
    return;
  }
  if (event.channel === "task:progress") {
    reports += 1;
    running.set(task.id, task.progress);
  } else if (event.channel === "task:completed") {
    running.delete(task.id);
    completed += 1;
    lines += task.result.lines;
    words += task.result.words;
    if (completed % 10 === 0) {
      const at = [...running.values()].map((p) => `${p}%`).join(" ") || "none";
      console.log(`progress: ${String(completed).padStart(3)}/${FILES} indexed; running now: ${at}; ${reports} progress reports so far`);
    }
    if (completed === FILES) done.resolve();
  } else if (event.channel === "task:dead") {
    done.reject(new Error(`task ${task.id} died: ${JSON.stringify(task.error)}`));
  }
}

// Watch the lifecycle channels before submitting: there is no replay.
const watching = main.subscribe("task:{progress,completed,dead}", onLifecycle);
await watching.ready;

await Promise.all(files.map(async (path) => {
  const id = await main.submitTask({ type: "index:file", payload: { path } });
  ours.add(id);
  for (const event of early.get(id) ?? []) onLifecycle(event.data, event);
  early.delete(id);
}));
console.log(`submitted ${ours.size} tasks`);

await finished;
console.log(`indexed ${FILES} files: ${lines} lines, ${words} words`);

// Stop: the workers drain and disconnect, then the hub. Their exits are
// awaited from before the stop is sent: a thread may be gone by the time
// its "stopped" message is read, and a listener added then never fires.
const exited = threads.map((thread) => new Promise((resolve) => thread.once("exit", resolve)));
const stopped = await Promise.all(threads.map((thread) => new Promise((resolve) => {
  thread.on("message", (m) => m.stopped && resolve(m));
  thread.postMessage("stop");
})));
await Promise.all(exited);
const byWorker = stopped.map((s) => s.indexed).reduce((a, b) => a + b, 0);
console.log(`workers stopped (${byWorker} tasks run in all)`);
watching();
main.close();
const status = await hub.stop({ timeoutMs: 15_000 });
rmSync(dir, { recursive: true, force: true });
console.log(`hub stopped with status ${status}`);
