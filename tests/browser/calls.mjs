// Calls between two pages in headless Chromium, each with its own chanhub.js
// connection: a "server" page (a worker token) serves `test.*`, a "caller"
// page (a browser token) calls. Started by tests/browser.rs, which owns the
// hub; the two talk over stdio like dashboard.mjs:
//
//   node → rust:  ASK <n> restart     (stop the hub and start it again on its address)
//   node → rust:  ASK <n> demo-worker (start examples/demo_worker; answered once it serves)
//   node → rust:  ASK <n> stop-demo-worker (stop it; answered once it is gone)
//   rust → node:  ANS <n>
//   node → rust:  PASS <scenario>    after each scenario, DONE at the end
//
// Every wait has a bound (WAIT); nothing sleeps for a fixed time.
//
//   node calls.mjs <hub url> <worker token> <browser token> <examples/calls.html path>

import { chromium } from "playwright-core";
import { WAIT, ask, pass } from "./stdio.mjs";

const [hubUrl, serverToken, callerToken, callsPage] = process.argv.slice(2);
if (!callsPage) {
  console.error("usage: node calls.mjs <hub url> <worker token> <browser token> <examples/calls.html path>");
  process.exit(2);
}


function check(condition, what, value) {
  if (!condition) throw new Error(`${what}: ${JSON.stringify(value)}`);
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
  const context = await browser.newContext();
  // A page on the hub's origin (its client is enough; no dashboard sign-in).
  const open = async (name) => {
    const page = await context.newPage();
    page.setDefaultTimeout(WAIT);
    page.on("pageerror", (err) => consoleErrors.push(`${name} pageerror: ${err.message}`));
    page.on("console", (msg) => {
      // Expected: sockets refused while the hub restarts, and the hub has
      // no favicon.
      if (msg.type() !== "error") return;
      const text = msg.text();
      const favicon = (msg.location().url || "").endsWith("/favicon.ico");
      if (!favicon && !/ERR_CONNECTION_REFUSED|WebSocket connection to .* failed/.test(text)) {
        consoleErrors.push(`${name} console: ${text}`);
      }
    });
    await page.goto(`${hubUrl}/chanhub.js`);
    return page;
  };
  const server = await open("server");
  const caller = await open("caller");

  // ---- the server page serves test.* with a worker token ----
  await server.evaluate(async (token) => {
    const { connect } = await import("/chanhub.js");
    window.log = { calls: [], aborted: [], serving: 0 };
    window.hub = connect("/ws", { token, backoff: { base: 100, cap: 1000 } });
    hub.onMessage((m) => { if (m.type === "serving") log.serving += 1; });
    window.handle = hub.serve("test.*", async (params, ctx) => {
      const { callId, method, caller, deadline } = ctx;
      log.calls.push({ callId, method, caller, deadline, params });
      if (method === "test.echo") return { echo: params, caller };
      if (method === "test.add") return { sum: params.a + params.b };
      if (method === "test.fail") {
        throw { code: "not_found", message: `no node ${params.node}`, data: { node: params.node } };
      }
      if (method === "test.crash") throw new TypeError("handler crashed");
      if (method === "test.wait") {
        // Runs until the hub cancels it (or the connection drops).
        await new Promise((resolve) => ctx.signal.addEventListener("abort", resolve));
        log.aborted.push(params.tag);
        return "too late";
      }
      throw { code: "unknown_method", message: method };
    }, { concurrency: 8 });
    await handle.ready;
  }, serverToken);

  // ---- the caller page, with a browser token ----
  await caller.evaluate(async (token) => {
    const { connect, createCaller, CallError } = await import("/chanhub.js");
    window.hub = connect("/ws", { token, backoff: { base: 100, cap: 1000 } });
    window.api = createCaller(hub);
    window.states = [];
    hub.onState((s) => states.push(s));
    // A call's outcome as plain data for the test.
    window.settle = (promise) => promise.then(
      (result) => ({ ok: true, result }),
      (e) => ({ ok: false, code: e.code, name: e.name, detail: e.detail, callError: e instanceof CallError }),
    );
    await new Promise((resolve) => hub.onState((s) => s === "open" && resolve()));
  }, callerToken);

  // ---- a call crosses from one page to the other and back ----
  const echo = await caller.evaluate(() => settle(hub.call("test.echo", { n: 1 }, { timeoutMs: 5000 })));
  check(echo.ok && echo.result.echo.n === 1, "echo result", echo);
  const callerId = await caller.evaluate(() => hub.info.clientId);
  const who = echo.result.caller;
  check(who.clientId === callerId && who.sub === "calls-caller" && who.clientType === "browser",
    "the server sees the caller as the hub verified it", who);
  const seen = await server.evaluate(() => log.calls[0]);
  check(seen.method === "test.echo" && seen.deadline > Date.now(), "the server's context", seen);
  pass("call-result");

  // ---- what a handler throws reaches the caller ----
  const failed = await caller.evaluate(() => settle(hub.call("test.fail", { node: "n1" })));
  check(!failed.ok && failed.callError && failed.code === "call_failed", "call_failed", failed);
  const { code, message, data } = failed.detail;
  check(code === "not_found" && message === "no node n1" && data.node === "n1",
    "the server's error as detail", failed);
  const crashed = await caller.evaluate(() => settle(hub.call("test.crash")));
  check(crashed.code === "call_failed" && crashed.detail.code === "internal"
    && crashed.detail.message === "handler crashed", "an uncoded throw is internal", crashed);
  pass("call-failed");

  // ---- nobody serves the method ----
  const nobody = await caller.evaluate(() => settle(hub.call("nobody.home", {})));
  check(!nobody.ok && nobody.code === "no_server", "no_server", nobody);
  pass("no-server");

  // ---- the deadline passes: the caller gets timeout, the server's signal aborts ----
  const timedOut = await caller.evaluate(() => settle(hub.call("test.wait", { tag: "timeout" }, { timeoutMs: 500 })));
  check(!timedOut.ok && timedOut.code === "timeout", "timeout", timedOut);
  await server.waitForFunction(() => log.aborted.includes("timeout"));
  pass("timeout");

  // ---- the caller aborts: its promise rejects, the server's signal aborts ----
  await caller.evaluate(() => {
    window.controller = new AbortController();
    window.aborted = settle(hub.call("test.wait", { tag: "abort" }, { signal: controller.signal }));
  });
  await server.waitForFunction(() => log.calls.some((c) => c.params && c.params.tag === "abort"));
  const abort = await caller.evaluate(() => { controller.abort(); return aborted; });
  check(!abort.ok && abort.code === "cancelled" && abort.name === "AbortError", "the caller's rejection", abort);
  await server.waitForFunction(() => log.aborted.includes("abort"));
  pass("abort");

  // ---- createCaller: a property path is the method ----
  const added = await caller.evaluate(() => api.test.add({ a: 2, b: 3 }));
  check(added.sum === 5, "api.test.add", added);
  check(await server.evaluate(() => log.calls.at(-1).method) === "test.add", "method called", "");
  pass("caller-proxy");

  // ---- examples/calls.html, opened from disk, calls demo.* served by ----
  // ---- examples/demo_worker.rs (a Rust process the test starts)       ----
  await ask("demo-worker");
  const example = await context.newPage();
  example.setDefaultTimeout(WAIT);
  example.on("pageerror", (err) => consoleErrors.push(`example pageerror: ${err.message}`));
  const query = new URLSearchParams({ hub: hubUrl, token: callerToken });
  await example.goto(`file://${callsPage}?${query}`);
  await example.waitForSelector('#state[data-state="open"]');
  await example.fill("#echo-text", "round trip");
  await example.click("#echo button");
  await example.waitForSelector('#echo-result[data-ok="true"]');
  check(await example.textContent("#echo-result") === "round trip", "echo shown", "");
  await example.fill("#add-a", "40");
  await example.fill("#add-b", "2");
  await example.click("#add button");
  await example.waitForSelector('#add-result[data-ok="true"]');
  check(await example.textContent("#add-result") === "= 42", "sum shown", await example.textContent("#add-result"));
  // With nobody serving demo.*, the page says so.
  await ask("stop-demo-worker");
  await example.click("#add button");
  await example.waitForSelector('#add-result[data-ok="false"]');
  const refused = await example.textContent("#add-result");
  check(refused.startsWith("no_server:"), "no_server shown", refused);
  await example.close();
  pass("example-page");

  // ---- the hub restarts: a call out fails and is not sent again; serve is restored ----
  await caller.evaluate(() => {
    window.inFlight = settle(hub.call("test.wait", { tag: "restart" }));
  });
  await server.waitForFunction(() => log.calls.some((c) => c.params && c.params.tag === "restart"));
  const servingBefore = await server.evaluate(() => log.serving);
  await ask("restart");
  const lost = await caller.evaluate(() => inFlight);
  // The caller's socket closed first ("disconnected") or the server's did
  // and the hub said so before closing the caller's ("server_gone").
  check(!lost.ok && ["disconnected", "server_gone"].includes(lost.code), "the call out at the restart", lost);
  await server.waitForFunction(() => log.aborted.includes("restart"));
  // Both pages reconnect; the server page serves test.* again by itself.
  await server.waitForFunction((before) => hub.state === "open" && log.serving > before, servingBefore);
  await caller.waitForFunction(() => states.includes("reconnecting") && hub.state === "open");
  const after = await caller.evaluate(() => settle(api.test.add({ a: 1, b: 1 })));
  check(after.ok && after.result.sum === 2, "a call after the restart", after);
  const restartRuns = await server.evaluate(() => log.calls.filter((c) => c.params && c.params.tag === "restart").length);
  check(restartRuns === 1, "at most once: the call out at the restart ran once", restartRuns);
  pass("serve-restored");

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
