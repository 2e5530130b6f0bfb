// A Node app that starts a hub with spawnHub, prints one JSON line
// `{"parent":<its pid>,"hub":<the hub's pid>,"ws":...,"token":...}` (a
// browser token it minted) and then waits
// forever, for spawn.test.mjs to kill it with SIGKILL and check that the
// hub goes too.
//
//   node spawn-parent.mjs <chanhub binary> [--stdin-only]
//
// --stdin-only: without --exit-with-parent (the Windows way): only the
// stdin pipe, which the system closes when this process dies, stops the hub.

import { spawnHub } from "../../src/web/client/node.js";

const [binary, mode] = process.argv.slice(2);
const hub = await spawnHub({
  binary,
  stderr: "collect",
  exitWithParent: mode !== "--stdin-only",
});
const token = hub.mintToken({ type: "browser", sub: "renderer" });
process.stdout.write(`${JSON.stringify({ parent: process.pid, hub: hub.pid, ws: hub.url, token })}\n`);
setInterval(() => {}, 60_000);
