// The React hooks of `chanhub/react` (src/web/client/react.js) on a page in
// headless Chromium. A static server here on 127.0.0.1 plays the app's dev
// server: it serves the page, React 18's UMD builds from this folder's
// node_modules (test-only packages), a module re-exporting the UMD global
// as "react", and the package's files; the page's import map resolves
// "chanhub", "chanhub/react" and "react" like a bundler would, and its
// clients connect to the hub on its own port. The tree renders in
// StrictMode (every effect runs twice, as in development).
//
// Started by tests/browser.rs, which owns the hub (stdio protocol:
// stdio.mjs):
//
//   node → rust:  ASK <n> restart    (stop the hub and start it again on its address)
//   rust → node:  ANS <n>
//   node → rust:  PASS <scenario>    after each scenario, DONE at the end
//
//   node react.mjs <hub url> <browser token> <worker token> <hub token>
//
// Every wait has a bound (WAIT); nothing sleeps for a fixed time.

import { readFileSync } from "node:fs";
import { createServer } from "node:http";
import { createRequire } from "node:module";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

import { chromium } from "playwright-core";
import { WAIT, ask, pass } from "./stdio.mjs";

const [hubUrl, browserToken, workerToken, hubToken] = process.argv.slice(2);
if (!hubToken) {
  console.error("usage: node react.mjs <hub url> <browser token> <worker token> <hub token>");
  process.exit(2);
}

const here = dirname(fileURLToPath(import.meta.url));
const require = createRequire(import.meta.url);
const React = require("react");

function check(condition, what, value) {
  if (!condition) throw new Error(`${what}: ${JSON.stringify(value)}`);
}

// The files of the test page, by path.
const IDENTIFIER = /^[A-Za-z_$][A-Za-z0-9_$]*$/;
const pkg = (name) => readFileSync(join(here, "../../src/web/client", name));
const files = {
  "chanhub.js": ["text/javascript", pkg("chanhub.js")],
  "chanhub-react.js": ["text/javascript", pkg("react.js")],
  "react.js": ["text/javascript", readFileSync(join(here, "node_modules/react/umd/react.development.js"))],
  "react-dom.js": ["text/javascript", readFileSync(join(here, "node_modules/react-dom/umd/react-dom.development.js"))],
  // "react" as an ES module: the UMD global's exports.
  "react-module.js": ["text/javascript", `const React = window.React;
export default React;
export const { ${Object.keys(React).filter((k) => IDENTIFIER.test(k)).join(", ")} } = React;
`],
  "index.html": ["text/html", `<!doctype html>
<html><head><meta charset="utf-8"><title>chanhub/react</title><link rel="icon" href="data:,">
<script src="/react.js"></script>
<script src="/react-dom.js"></script>
<script type="importmap">{ "imports": {
  "react": "/react-module.js", "chanhub": "/chanhub.js", "chanhub/react": "/chanhub-react.js"
} }</script>
</head><body><div id="root"></div></body></html>
`],
};

const server = createServer((req, res) => {
  const file = files[new URL(req.url, "http://x").pathname.slice(1)];
  if (!file) {
    res.writeHead(404).end("not found");
    return;
  }
  res.writeHead(200, { "content-type": `${file[0]}; charset=utf-8` }).end(file[1]);
});
await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
const appUrl = `http://127.0.0.1:${server.address().port}`;
const wsUrl = `${hubUrl.replace(/^http/, "ws")}/ws`;

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
  ],
});
const consoleErrors = [];
try {
  const page = await browser.newPage();
  page.setDefaultTimeout(WAIT);
  page.on("pageerror", (err) => consoleErrors.push(`pageerror: ${err.message}`));
  page.on("console", (msg) => {
    if (msg.type() !== "error") return;
    const text = msg.text();
    // Expected: sockets refused while the hub restarts.
    if (!/ERR_CONNECTION_REFUSED|WebSocket connection to .* failed/.test(text)) consoleErrors.push(`console: ${text}`);
  });
  await page.goto(`${appUrl}/index.html`);

  // ---- the app: a UI client (browser token) renders with the hooks; a
  // worker page-side client serves ui.* and runs ui:* tasks; a hub client
  // publishes and submits ----
  await page.evaluate(async ([wsUrl, browserToken, workerToken, hubToken]) => {
    const { connect } = await import("chanhub");
    const React = await import("react");
    const { HubProvider, useCall, useChannelState, useHubState, useSubscription, useTask } = await import("chanhub/react");
    const h = React.createElement;
    const options = { backoff: { base: 50, cap: 500 } };

    window.ui = connect(wsUrl, { ...options, token: browserToken });
    window.publisher = connect(wsUrl, { ...options, token: hubToken });
    window.workerHub = connect(wsUrl, { ...options, token: workerToken });
    // Every message the UI client gets, for the test to wait on.
    window.uiMessages = [];
    ui.onMessage((m) => uiMessages.push(m));

    // The worker: a task reports progress when told to, and completes when told to.
    const gate = () => {
      let open;
      const promise = new Promise((resolve) => (open = resolve));
      return { promise, open };
    };
    window.gates = { progress: gate(), finish: gate() };
    window.worker = workerHub.worker({
      capabilities: ["ui:*"],
      handler: async (task, ctx) => {
        await gates.progress.promise;
        ctx.progress(30, "a third");
        await gates.finish.promise;
        return { pages: task.payload.pages };
      },
    });
    window.served = workerHub.serve("ui.*", async (params) => ({ sum: params.a + params.b }));

    function Status() {
      return h("span", { id: "state" }, useHubState());
    }
    function Feed() {
      const [lines, setLines] = React.useState([]);
      const { status } = useSubscription("feed:*", (data, event) => {
        setLines((prev) => [...prev, `${event.channel} ${data.n}`]);
      });
      return h("ul", { id: "feed", "data-status": status }, lines.map((l) => h("li", { key: l }, l)));
    }
    function Rooms() {
      const rooms = useChannelState("room:*");
      return h("dl", { id: "rooms" }, Object.keys(rooms).sort().map((channel) =>
        h("dd", { key: channel, "data-channel": channel }, JSON.stringify(rooms[channel].data))));
    }
    function Task({ id }) {
      const task = useTask(id);
      return h("p", { id: "task", "data-state": task?.state ?? "none", "data-progress": task?.progress ?? "" },
        task ? `${task.state} ${task.progress ?? ""} ${task.message ?? ""} ${JSON.stringify(task.result ?? null)}` : "no change yet");
    }
    function Caller() {
      const call = useCall();
      const [answer, setAnswer] = React.useState("");
      // A stable function: one identity over every committed render.
      React.useEffect(() => {
        (window.callIdentity ??= new Set()).add(call);
      });
      return h("button", { id: "call", onClick: async () => setAnswer(JSON.stringify(await call("ui.add", { a: 2, b: 3 }))) },
        answer || "call");
    }
    function App() {
      const [taskId, setTaskId] = React.useState(null);
      window.showTask = setTaskId;
      return h(HubProvider, { client: ui }, h(Status), h(Feed), h(Rooms), h(Caller), taskId && h(Task, { id: taskId }));
    }
    window.root = ReactDOM.createRoot(document.getElementById("root"));
    root.render(h(React.StrictMode, null, h(App)));

    // Waits until the UI client's subscription to `pattern` is confirmed by
    // the hub (a handler added and removed here shares it: the hooks' own stays).
    window.subscribed = async (pattern) => {
      const off = ui.subscribe(pattern, () => {});
      await off.ready;
      off();
    };
    await Promise.all([worker.ready, served.ready]);
  }, [wsUrl, browserToken, workerToken, hubToken]);

  // ---- useHubState: the connection state, live ----
  await page.waitForFunction(() => document.getElementById("state")?.textContent === "open");
  pass("hub-state");

  // ---- useSubscription: live events while mounted ----
  await page.waitForSelector("#feed[data-status=active]", { state: "attached" });
  await page.evaluate(async () => {
    await publisher.publish("feed:a", { n: 1 });
    await publisher.publish("feed:b", { n: 2 });
    await publisher.publish("other:c", { n: 3 });
  });
  await page.waitForFunction(() => document.querySelectorAll("#feed li").length >= 2);
  const feed = await page.$$eval("#feed li", (items) => items.map((li) => li.textContent));
  check(JSON.stringify(feed) === JSON.stringify(["feed:a 1", "feed:b 2"]), "feed events in order, once each (StrictMode)", feed);
  pass("subscription-live");

  // ---- useChannelState: the latest event per channel ----
  await page.evaluate(async () => {
    await subscribed("room:*");
    await publisher.publish("room:1", { users: 1 });
    await publisher.publish("room:2", { users: 5 });
    await publisher.publish("room:1", { users: 2 });
  });
  await page.waitForFunction(() => document.querySelector("#rooms [data-channel='room:1']")?.textContent === '{"users":2}');
  const rooms = await page.$$eval("#rooms dd", (dds) => dds.map((dd) => [dd.dataset.channel, dd.textContent]));
  check(JSON.stringify(rooms) === JSON.stringify([["room:1", '{"users":2}'], ["room:2", '{"users":5}']]), "rooms", rooms);
  pass("channel-state");

  // ---- useTask: a task's live state and progress ----
  const taskId = await page.evaluate(async () => {
    const id = await publisher.submitTask({ type: "ui:render", payload: { pages: 12 } });
    showTask(id);
    await subscribed(`task:${id}`);
    gates.progress.open();
    return id;
  });
  await page.waitForSelector("#task[data-progress='30']", { state: "attached" });
  check(await page.$eval("#task", (p) => p.dataset.state) === "assigned", "assigned while running", taskId);
  await page.evaluate(() => gates.finish.open());
  await page.waitForSelector("#task[data-state=completed]", { state: "attached" });
  const done = await page.$eval("#task", (p) => p.textContent);
  check(done.includes('{"pages":12}'), "the result is in the record", done);
  pass("task-progress");

  // ---- useCall: a call from a component, one stable function ----
  await page.click("#call");
  await page.waitForFunction(() => document.getElementById("call").textContent === '{"sum":5}');
  check(await page.evaluate(() => callIdentity.size) === 1, "useCall returns one function", null);
  pass("call");

  // ---- the hub restarts: useHubState follows, the subscriptions come back ----
  await page.evaluate(() => {
    window.seenStates = [];
    ui.onState((s) => seenStates.push(s));
  });
  await ask("restart");
  await page.waitForFunction(() => seenStates.includes("reconnecting") && ui.state === "open");
  await page.waitForFunction(() => document.getElementById("state").textContent === "open");
  await page.evaluate(async () => {
    await subscribed("feed:*");
    await publisher.publish("feed:after", { n: 4 });
  });
  await page.waitForFunction(() => [...document.querySelectorAll("#feed li")].some((li) => li.textContent === "feed:after 4"));
  pass("reconnect");

  // ---- unmounting unsubscribes: the hub delivers to nobody ----
  const before = await page.evaluate(() => publisher.publish("feed:a", { n: 5 }));
  check(before.delivered === 1, "the mounted tree's subscription receives", before);
  await page.evaluate(() => {
    window.unsubscribedFrom = [];
    ui.onMessage((m) => m.type === "unsubscribed" && unsubscribedFrom.push(...m.channels));
    root.unmount();
  });
  await page.waitForFunction(() => ["feed:*", "room:*"].every((p) => unsubscribedFrom.includes(p)));
  const after = await page.evaluate(async () => [
    await publisher.publish("feed:a", { n: 6 }),
    await publisher.publish("room:1", { users: 0 }),
  ]);
  check(after.every((ack) => ack.delivered === 0), "no subscriber left after unmount", after);
  check(await page.evaluate(() => ui.state) === "open", "the client stays connected", null);
  pass("unmount-unsubscribes");

  check(consoleErrors.length === 0, "no page errors", consoleErrors);
  await page.evaluate(() => [ui, publisher, workerHub].forEach((c) => c.close()));
  console.log("DONE");
} catch (err) {
  console.error(err && err.stack ? err.stack : String(err));
  if (consoleErrors.length) console.error(consoleErrors.join("\n"));
  process.exitCode = 1;
} finally {
  await browser.close();
  server.close();
  process.exit(); // stdin (the stdio protocol) would keep node running
}
