// A desktop app's main process in miniature: start the hub as a sidecar
// with spawnHub, mint tokens for a renderer and for itself, pass one event
// from the main process to the renderer, and stop the hub on quit.
//
//   cargo build --release
//   node examples/sidecar.mjs          # Node 22+; Node 20: node --experimental-websocket examples/sidecar.mjs
//   CHANHUB_BIN=target/debug/chanhub node examples/sidecar.mjs
//
// In an Electron app the renderer would run chanhub.js in its page and get
// its URL and token from the main process over IPC (a preload script's
// contextBridge); a worker thread or utility process would get a worker
// token the same way. Here both ends run in this one process.
// tests/spawn_hub.rs runs it.

import { fileURLToPath } from "node:url";

import { connect } from "../src/web/client/chanhub.js";
import { spawnHub } from "../src/web/client/node.js";

if (typeof WebSocket !== "function") {
  console.error("this example needs a global WebSocket: Node 22+, or node --experimental-websocket examples/sidecar.mjs");
  process.exit(2);
}

const binary = process.env.CHANHUB_BIN ?? fileURLToPath(new URL("../target/release/chanhub", import.meta.url));

// Starts `chanhub serve --listen 127.0.0.1:0 --ready-json ...` and waits for
// its ready line; a random token secret goes to the hub over its stdin, and
// its data directory is temporary. The hub's logs are kept, not printed.
const hub = await spawnHub({ binary, readyTimeoutMs: 10_000, stderr: "collect" });
hub.onExit((code, signal, { requested }) => {
  if (!requested) console.error(`the hub stopped unexpectedly (${signal ?? `status ${code}`}); an app would restart it`);
});
console.log(`hub ready at ${hub.url} (pid ${hub.pid})`);

// The renderer's connection: a browser token (subscribe and call, no
// publish), asked for again on every reconnect.
const renderer = connect(hub.url, {
  getToken: () => hub.mintToken({ type: "browser", sub: "renderer-1", ttlSeconds: 600 }),
});
let published;
const received = new Promise((resolve) => {
  const off = renderer.subscribe("app:*", (data, event) => resolve({ channel: event.channel, data }));
  published = off.ready.then(publish);
});

// The main process's own connection: a hub token may publish.
const main = connect(hub.url, { token: hub.mintToken({ type: "hub", sub: "main", publish: ["app:**"] }) });
async function publish() {
  await main.publish("app:greeting", { text: "hello from the main process" });
}

const { channel, data } = await received;
// The event can arrive before the publisher's ack: wait for both before closing.
await published;
console.log(`renderer got ${channel}: ${JSON.stringify(data)}`);

// On quit: close the connections, then stop the hub (SIGTERM, wait, SIGKILL
// after the timeout).
renderer.close();
main.close();
const status = await hub.stop({ timeoutMs: 15_000 });
console.log(`hub stopped with status ${status}`);
process.exitCode = status === 0 ? 0 : 1;
