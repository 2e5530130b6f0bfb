// Drives the real dashboard and chanhub.js in headless Chromium. Started by
// tests/browser.rs, which owns the hub and the Rust-side clients; the two
// talk over stdio, one line each:
//
//   node → rust:  ASK <n> <what>     (browser-client | publish | worker | token | restart
//                                     | publish-example | worker-token)
//   rust → node:  ANS <n> <payload>
//   node → rust:  PASS <scenario>    after each scenario, DONE at the end
//
// Every wait has a bound (WAIT); nothing sleeps for a fixed time.
//
//   node dashboard.mjs <hub url> <admin key> <hub token> <browser token> <screenshot path>
//                      <examples/browser.html path>

import { setTimeout as sleep } from "node:timers/promises";

import { chromium } from "playwright-core";
import { WebSocket } from "ws";

import { connect } from "../../src/web/client/chanhub.js";
import { WAIT, ask, pass } from "./stdio.mjs";

const [hubUrl, adminKey, hubToken, browserToken, screenshot, examplePage] = process.argv.slice(2);
if (!examplePage) {
  console.error("usage: node dashboard.mjs <hub url> <admin key> <hub token> <browser token> "
    + "<screenshot path> <examples/browser.html path>");
  process.exit(2);
}


const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
  ],
});
const consoleErrors = [];
try {
  const context = await browser.newContext({ viewport: { width: 1280, height: 1000 } });
  const page = await context.newPage();
  page.on("pageerror", (err) => consoleErrors.push(`pageerror: ${err.message}`));
  page.on("console", (msg) => {
    // Expected: the refused sign-in (401 on /api/stats), and requests and
    // sockets refused while the hub restarts. Any other error logged fails
    // the test.
    if (msg.type() !== "error") return;
    const text = msg.text();
    const url = msg.location().url || "";
    const expected = (/status of 401/.test(text) && url.endsWith("/api/stats"))
      || /ERR_CONNECTION_REFUSED/.test(text)
      || /WebSocket connection to .* failed/.test(text);
    if (!expected) consoleErrors.push(`console: ${text} (${url})`);
  });
  page.setDefaultTimeout(WAIT);

  // ---- sign in with the admin key ----
  await page.goto(`${hubUrl}/`);
  await page.fill("#credential", "wrong-key");
  await page.press("#credential", "Enter");
  await page.waitForFunction(() => document.querySelector("#signin-error").textContent.includes("Not accepted"));
  await page.fill("#credential", adminKey);
  await page.press("#credential", "Enter");
  await page.waitForSelector("#board", { state: "visible" });
  await page.waitForSelector('#live-state[data-state="open"]');
  await page.waitForSelector('#federation tr[data-peer="east"][data-state="idle"]');
  pass("sign-in");

  // ---- a client connects: the count goes up ----
  const count = async (id) => Number(await page.textContent(id));
  const before = await count("#conn-ws-browser");
  await ask("browser-client");
  await page.waitForFunction(
    (n) => Number(document.querySelector("#conn-ws-browser").textContent) === n + 1, before);
  pass("connection-count");

  // ---- the tail shows events: one published from the form, one from Rust ----
  await page.fill("#tail-pattern", "demo:**");
  await page.press("#tail-pattern", "Enter");
  await page.waitForFunction(() => document.querySelector("#tail-status").textContent === "watching demo:**");
  await page.fill("#pub-channel", "demo:hello");
  await page.fill("#pub-data", '{"greeting": "from the form"}');
  await page.click("#publish-form button[type=submit]");
  await page.waitForFunction(() => document.querySelector("#publish-status").textContent.includes("delivered to"));
  await page.waitForSelector('#tail li[data-channel="demo:hello"] >> text=from the form');
  await ask("publish");
  await page.waitForSelector('#tail li[data-channel="demo:from-rust"] >> text=over http');
  pass("event-tail");

  // ---- a task submitted from the form completes on a Rust worker ----
  await ask("worker");
  await page.waitForSelector("#workers-body tr[data-worker] >> text=demo:*");
  await page.fill("#task-type", "demo:echo");
  await page.fill("#task-payload", '{"text": "round trip"}');
  await page.click("#task-form button[type=submit]");
  await page.waitForFunction(() => /accepted: task \w+/.test(document.querySelector("#task-status").textContent));
  const taskId = (await page.textContent("#task-status")).match(/accepted: task (\w+)/)[1];
  await page.waitForSelector(`#recent-body tr[data-task-id="${taskId}"][data-state="completed"]`);
  await page.waitForSelector('#tasks-body tr[data-type="demo:echo"] td[data-state="completed"] >> text=1');
  pass("task-completes");

  // ---- the Calls panel: a server and a caller in the page, raw protocol ----
  await page.evaluate(async (token) => {
    const open = () => new Promise((resolve, reject) => {
      const ws = new WebSocket(`${location.origin.replace(/^http/, "ws")}/ws`);
      ws.onopen = () => ws.send(JSON.stringify({ type: "auth", token }));
      ws.onmessage = (e) => { if (JSON.parse(e.data).type === "auth:success") resolve(ws); };
      ws.onerror = reject;
    });
    const server = await open();
    await new Promise((resolve) => {
      server.onmessage = (e) => {
        const msg = JSON.parse(e.data);
        if (msg.type === "serving") resolve();
        if (msg.type !== "call:request") return;
        const reply = msg.params?.fail
          ? { type: "call:reply", callId: msg.callId, error: { code: "nope", message: "asked to fail" } }
          : { type: "call:reply", callId: msg.callId, result: msg.params };
        server.send(JSON.stringify(reply));
      };
      server.send(JSON.stringify({ type: "serve", id: 1, methods: ["dash.*"] }));
    });
    const caller = await open();
    const answers = new Map();
    caller.onmessage = (e) => {
      const msg = JSON.parse(e.data);
      answers.get(msg.id)?.(msg);
    };
    const call = (id, params) => new Promise((resolve) => {
      answers.set(id, resolve);
      caller.send(JSON.stringify({ type: "call", id, method: "dash.echo", params }));
    });
    for (let i = 1; i <= 3; i++) await call(i, { n: i });
    const failed = await call(4, { fail: true });
    if (failed.code !== "call_failed") throw new Error(`expected call_failed: ${JSON.stringify(failed)}`);
    window.callSockets = [server, caller];
  }, hubToken);
  await page.waitForSelector('#calls-body tr[data-method="dash.echo"] td[data-errors="1"] >> text=1 / 4');
  pass("calls-panel");

  // Let the stats catch up with a rate sample, then keep a picture.
  await page.waitForFunction(() => Number(document.querySelector("#rates-chart").dataset.peak) > 0);
  await page.screenshot({ path: screenshot, fullPage: true });
  pass("screenshot");

  // ---- chanhub.js: token refresh before expiry (tokens of a few seconds) ----
  await page.exposeFunction("testToken", () => ask("token"));
  await page.evaluate(async () => {
    const { connect } = await import("/chanhub.js");
    window.r = { states: [], refreshed: 0 };
    window.rc = connect("/ws", { getToken: () => window.testToken(), heartbeat: false });
    rc.onState((s) => r.states.push(s));
    rc.onMessage((m) => { if (m.type === "auth:refreshed") r.refreshed += 1; });
  });
  // Two refreshes: the second comes after the first token's expiry, so the
  // connection outlived it; and it never dropped.
  await page.waitForFunction(() => window.r.refreshed >= 2, null, { timeout: 30000 });
  const refreshStates = await page.evaluate(() => { rc.close(); return r.states; });
  if (refreshStates.join(",") !== "open,closed") {
    throw new Error(`refresh: unexpected states ${refreshStates.join(",")}`);
  }
  pass("token-refresh");

  // ---- examples/browser.html, opened from disk: a published event, a call
  // and a task with progress. A Node client here (chanhub.js with `ws`, a
  // worker token) serves demo.add and runs example:* tasks. The page gets a
  // hub token: submitting needs task:submit, which browsers lack ----
  const backend = connect(hubUrl, { WebSocket, token: await ask("worker-token") });
  let progressShown = false;
  const served = backend.serve("demo.add", ({ a, b }) => ({ sum: a + b }));
  const exampleWorker = backend.worker({
    capabilities: ["example:*"],
    handler: async (task, ctx) => {
      // Report until the page has shown it (its subscription to the task's
      // channel starts after the submit is accepted, so one report could
      // come too early to be seen).
      const deadline = Date.now() + WAIT;
      while (!progressShown && Date.now() < deadline) {
        ctx.progress(50, "halfway");
        await sleep(20);
      }
      return { rendered: task.payload.file };
    },
  });
  await Promise.all([served.ready, exampleWorker.ready]);
  const example = await context.newPage();
  example.on("pageerror", (err) => consoleErrors.push(`example pageerror: ${err.message}`));
  example.setDefaultTimeout(WAIT);
  const query = new URLSearchParams({ hub: hubUrl, pattern: "demo:**", token: hubToken, taskType: "example:render" });
  await example.goto(`file://${examplePage}?${query}`);
  await example.waitForSelector('#state[data-state="open"]');
  await example.waitForSelector('#pattern[data-subscribed="true"]');
  await ask("publish-example");
  await example.waitForSelector('#events li[data-channel="demo:example"]');

  await example.click("#call button");
  await example.waitForSelector('#answer[data-state="answered"]');
  const answer = await example.textContent("#answer");
  if (answer !== '{"sum":5}') throw new Error(`example call answered ${answer}`);

  await example.click("#task button:not([type])");
  await example.waitForFunction(() => document.getElementById("progress").value === 50);
  const halfway = await example.textContent("#task-state");
  if (halfway !== "50% halfway") throw new Error(`example task progress shown as ${halfway}`);
  progressShown = true;
  await example.waitForSelector('#task-state[data-state="completed"]');
  const outcome = await example.textContent("#task-state");
  if (outcome !== 'completed: {"rendered":"report.pdf"}') throw new Error(`example task ended with ${outcome}`);
  await example.close();
  backend.close();
  pass("example-page");

  // ---- chanhub.js: reconnects after the hub restarts and resubscribes ----
  await page.evaluate(async (token) => {
    const { connect } = await import("/chanhub.js");
    window.t = { states: [], got: [] };
    window.tc = connect("/ws", { token, backoff: { base: 100, cap: 1000 } });
    tc.onState((s) => t.states.push(s));
    await tc.subscribe("restart:*", (data) => t.got.push(data)).ready;
  }, hubToken);
  await ask("restart");
  await page.waitForFunction(() => t.states.includes("reconnecting") && tc.state === "open");
  const ack = await page.evaluate(() => tc.publish("restart:1", { after: "restart" }));
  if (ack.delivered < 1) throw new Error(`resubscribe: event delivered to ${ack.delivered}`);
  await page.waitForFunction(() => t.got.some((d) => d.after === "restart"));
  // The dashboard itself came back too (new token from /api/token).
  await page.waitForSelector('#live-state[data-state="open"]');
  pass("reconnect-resubscribe");

  if (consoleErrors.length) throw new Error(`browser errors:\n${consoleErrors.join("\n")}`);
  console.log("DONE");
} catch (err) {
  console.error(err && err.stack ? err.stack : String(err));
  if (consoleErrors.length) console.error(consoleErrors.join("\n"));
  process.exitCode = 1;
} finally {
  await browser.close();
  process.exit();
}
