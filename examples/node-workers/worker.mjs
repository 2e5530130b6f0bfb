// One indexing worker, run in a worker_thread by main.mjs: connects to the
// hub as a chanhub worker with capability `index:file`, counts the lines
// and words of each file it is given, and reports progress as it reads.
// On "stop" from the main thread it drains (finishes what it runs, takes
// nothing new), closes its connection and ends.

import { createReadStream } from "node:fs";
import { stat } from "node:fs/promises";
import { createInterface } from "node:readline";
import { parentPort, workerData } from "node:worker_threads";

import { TaskError, connect } from "chanhub";
import { WebSocket } from "ws"; // Node 20 has no global WebSocket

const { url, token, name, slots } = workerData;

const hub = connect(url, { WebSocket, token });
let indexed = 0;

const worker = hub.worker({
  capabilities: ["index:file"],
  slots,
  labels: { thread: name },
  handler: async (task, ctx) => {
    const { path } = task.payload;
    const size = await stat(path).then((s) => s.size, () => {
      throw new TaskError(`no such file: ${path}`, { retryable: false });
    });
    let lines = 0;
    let words = 0;
    let read = 0;
    let reported = 0;
    const input = createReadStream(path, { encoding: "utf8", signal: ctx.signal });
    for await (const line of createInterface({ input, crlfDelay: Infinity })) {
      lines += 1;
      words += line.split(/\s+/).filter(Boolean).length;
      read += Buffer.byteLength(line) + 1;
      // Progress on every quarter read (it also renews the task's lease).
      const quarter = Math.floor((4 * read) / Math.max(size, 1));
      if (quarter > reported && quarter < 4) {
        reported = quarter;
        ctx.progress(25 * quarter, `${name}: ${lines} lines`);
      }
    }
    indexed += 1;
    return { path, lines, words, by: name };
  },
});

worker.ready.then(
  () => parentPort.postMessage({ ready: name }),
  (err) => {
    console.error(`${name}: registering failed: ${err.message}`);
    process.exit(1);
  },
);

parentPort.on("message", async (message) => {
  if (message !== "stop") return;
  await worker.drain();
  hub.close();
  parentPort.postMessage({ stopped: name, indexed });
  parentPort.close();
});
