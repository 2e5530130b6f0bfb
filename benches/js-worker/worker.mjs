// The JavaScript package's task worker for benches/js_worker.sh: one
// connection (Node, `ws`) registers `bench:task` with `slots` slots and
// completes every task with its payload (an echo handler), as
// `loadgen worker` does with the Rust client. Prints "registered" once the
// hub has accepted it, then runs until killed.
//
//   node benches/js-worker/worker.mjs <ws url> <token secret> [slots]

import { connect } from "chanhub";
import { mintToken } from "chanhub/node";
import { WebSocket } from "ws";

const [url, secret, slots = "64"] = process.argv.slice(2);
if (!secret) {
  console.error("usage: node worker.mjs <ws url> <token secret> [slots]");
  process.exit(2);
}

const hub = connect(url, {
  WebSocket,
  token: mintToken(secret, { type: "worker", sub: "js-bench-worker", ttlSeconds: 3600 }),
  maxRetries: 0,
});
hub.onError((err) => console.error(`worker: ${err.code}: ${err.message}`));
hub.onState((state) => {
  if (state === "closed") process.exit(0);
});
const worker = hub.worker({
  capabilities: ["bench:task"],
  slots: Number(slots),
  handler: (task) => task.payload,
});
await worker.ready;
console.log("registered");
