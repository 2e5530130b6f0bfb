// chanhub.js's connection logic against a scripted fake hub, in Node (no
// browser): token refresh, resubscribe with `since` after a reconnect,
// requests held while disconnected, in-flight requests failed on a drop,
// a refused fixed token, refused subscriptions, the heartbeat, unsubscribe,
// a subscription made again before the hub answered the first;
// calls (cancel, a drop mid-call never resent, a held call's timeout) and
// serving (replies, thrown errors, call:cancelled, serve again after a
// reconnect, close), and the createCaller proxy.
// Run by tests/web.rs; prints "ok".
//
//   node tests/browser/client.mjs
//
// Every wait is for a condition, with a bound (WAIT): the fake sockets wake
// the waiters whenever anything happens, and they look again every 2 ms for
// changes made in promise callbacks.
import assert from "node:assert/strict";

const WAIT = 5000;

// ---- a fake WebSocket, driven by the test as the hub ----
const sockets = [];
const waiters = new Set();
function changed() {
  for (const w of [...waiters]) w();
}
function until(what, predicate) {
  return new Promise((resolve, reject) => {
    const check = () => {
      const value = predicate();
      if (value) {
        waiters.delete(check);
        clearTimeout(timer);
        clearInterval(recheck);
        resolve(value);
      }
    };
    const timer = setTimeout(() => {
      waiters.delete(check);
      clearInterval(recheck);
      reject(new Error(`timed out waiting for ${what}`));
    }, WAIT);
    // Promise callbacks in the client change state without touching a
    // socket; look again after them too.
    const recheck = setInterval(check, 2);
    waiters.add(check);
    check();
  });
}

class FakeWebSocket {
  constructor(url) {
    this.url = url;
    this.readyState = 0;
    this.sent = []; // parsed messages from the client
    this.closedWith = null;
    sockets.push(this);
    queueMicrotask(() => {
      this.readyState = 1;
      this.onopen && this.onopen();
      changed();
    });
  }
  send(text) {
    this.sent.push(JSON.parse(text));
    changed();
  }
  close(code, reason) {
    if (this.readyState >= 2) return;
    this.closedWith = { code, reason };
    this.readyState = 3;
    queueMicrotask(() => {
      this.onclose && this.onclose({ code, reason });
      changed();
    });
  }
  // ---- the hub's side ----
  push(message) {
    this.onmessage && this.onmessage({ data: JSON.stringify(message) });
    changed();
  }
  serverClose(code, reason = "") {
    this.readyState = 3;
    this.onclose && this.onclose({ code, reason });
    changed();
  }
  last(type) {
    return [...this.sent].reverse().find((m) => m.type === type);
  }
  // The next message of `type` not yet taken by the test.
  async next(type) {
    this.taken ??= {};
    const index = this.taken[type] ?? 0;
    const message = await until(`a ${type} message`,
      () => this.sent.filter((m) => m.type === type)[index]);
    this.taken[type] = index + 1;
    return message;
  }
}
globalThis.WebSocket = FakeWebSocket;
globalThis.location = { href: "http://hub.test/" };

const { CallError, connect, createCaller } = await import("../../src/web/client/chanhub.js");

// Answers the auth message of `ws` with auth:success.
async function accept(ws, expiresIn = 3600000) {
  const auth = await until("auth", () => ws.sent.find((m) => m.type === "auth"));
  ws.push({
    type: "auth:success", id: auth.id, clientId: String(sockets.length), clientType: "hub",
    sub: "t", permissions: ["subscribe", "publish"], subscribeChannels: ["**"],
    publishChannels: ["**"], expiresAt: Date.now() + expiresIn,
  });
  return auth;
}

// ---- refresh, resubscribe with since, queued and in-flight requests ----
{
  let issued = 0;
  const states = [];
  const client = connect("http://hub.test", {
    getToken: async () => `token-${++issued}`,
    backoff: { base: 1, cap: 5 },
    heartbeat: false,
  });
  client.onState((s) => states.push(s));
  assert.equal(client.url, "ws://hub.test/ws");
  const first = await until("a socket", () => sockets[0]);
  const auth = await accept(first, 1500); // refresh due about 1 s before expiry
  assert.equal(auth.token, "token-1");
  await until("open", () => client.state === "open");

  const got = [];
  const off = client.subscribe("h:*", (data, event) => got.push([event.channel, data]));
  const sub = await first.next("subscribe");
  assert.deepEqual(sub.channels, ["h:*"]);
  assert.equal(sub.since, undefined);
  first.push({ type: "subscribed", id: sub.id, channels: ["h:*"] });
  await off.ready;
  first.push({ type: "event", channel: "h:1", data: { n: 1 }, id: "e1", ts: 1, offset: 5, epoch: "ep" });
  first.push({ type: "event", channel: "other", data: 0, id: "e2", ts: 1 });
  assert.deepEqual(got, [["h:1", { n: 1 }]]);

  const refresh = await first.next("auth:refresh");
  assert.equal(refresh.token, "token-2");
  first.push({ type: "auth:refreshed", id: refresh.id, expiresAt: Date.now() + 3600000 });

  const inFlight = client.publish("h:2", 2).then(() => "resolved", (e) => e.code);
  await first.next("publish");
  first.serverClose(1012, "service restart");
  assert.equal(await inFlight, "disconnected");
  const queued = client.publish("h:3", 3); // made while reconnecting: held
  const second = await until("a second socket", () => sockets[1]);
  const reauth = await accept(second);
  assert.equal(reauth.token, "token-3", "a fresh token on reconnect");
  const resub = await second.next("subscribe");
  assert.deepEqual(resub.channels, ["h:*"]);
  assert.deepEqual(resub.since, { "h:1": { offset: 5, epoch: "ep" } });
  const held = await second.next("publish");
  assert.equal(held.channel, "h:3");
  assert.ok(second.sent.indexOf(resub) < second.sent.indexOf(held), "resubscribe first");
  second.push({ type: "published", id: held.id, channel: "h:3", eventId: "e3", delivered: 1 });
  assert.deepEqual(await queued, { channel: "h:3", eventId: "e3", delivered: 1 });
  assert.deepEqual(states, ["open", "reconnecting", "connecting", "open"]);

  // A gap that cannot be filled is reported.
  const errors = [];
  client.onError((e) => errors.push(e.code));
  second.push({ type: "subscribed", id: resub.id, channels: ["h:*"], recovered: { "h:1": false } });
  await until("the gap reported", () => errors.length > 0);
  assert.deepEqual(errors, ["recovery_gap"]);

  // Unsubscribing the last handler unsubscribes on the hub.
  off();
  const unsub = await second.next("unsubscribe");
  assert.deepEqual(unsub.channels, ["h:*"]);
  client.close();
  assert.equal(client.state, "closed");
  assert.equal(second.closedWith.code, 1000);
}

// ---- a refused fixed token: no retry ----
{
  sockets.length = 0;
  const client = connect("ws://hub.test/ws", { token: "bad", backoff: { base: 1, cap: 5 } });
  const details = [];
  client.onState((s, d) => details.push([s, d.reason]));
  const ws = await until("a socket", () => sockets[0]);
  const auth = await until("auth", () => ws.sent.find((m) => m.type === "auth"));
  ws.push({ type: "auth:failed", id: auth.id, reason: "expired", message: "the token has expired" });
  ws.serverClose(4001, "authentication failed");
  await until("closed", () => client.state === "closed");
  assert.deepEqual(details, [["closed", "expired"]]);
  assert.equal(sockets.length, 1, "no reconnect");
}

// ---- a refused subscription rejects its ready promise ----
{
  sockets.length = 0;
  const client = connect("ws://hub.test/ws", { token: "t", heartbeat: false });
  const ws = await until("a socket", () => sockets[0]);
  await accept(ws);
  await until("open", () => client.state === "open");
  const off = client.subscribe("secret:*", () => {});
  const sub = await ws.next("subscribe");
  ws.push({ type: "error", id: sub.id, code: "forbidden", message: "no", channel: "secret:*" });
  ws.push({ type: "subscribed", id: sub.id, channels: [] });
  await assert.rejects(off.ready, (e) => e.code === "forbidden");
  // A publish error rejects with the hub's code.
  const pub = client.publish("a", 1);
  const sent = await ws.next("publish");
  ws.push({ type: "error", id: sent.id, code: "forbidden", message: "no publish", channel: "a" });
  await assert.rejects(pub, (e) => e.code === "forbidden" && e.message === "no publish");
  client.close();
}

// ---- unsubscribed and subscribed again before the hub answered (a React
// effect run twice): the new subscription waits for its own answer ----
{
  sockets.length = 0;
  const client = connect("ws://hub.test/ws", { token: "t", heartbeat: false });
  const ws = await until("a socket", () => sockets[0]);
  await accept(ws);
  await until("open", () => client.state === "open");
  const first = client.subscribe("ui:*", () => {});
  first();
  const second = client.subscribe("ui:*", () => {});
  let ready = false;
  second.ready.then(() => (ready = true));
  const [sub1, sub2] = [await ws.next("subscribe"), await ws.next("subscribe")];
  const unsub = await ws.next("unsubscribe");
  assert.ok(sub1.id < unsub.id && unsub.id < sub2.id, "subscribe, unsubscribe, subscribe in order");
  ws.push({ type: "subscribed", id: sub1.id, channels: ["ui:*"] });
  ws.push({ type: "unsubscribed", id: unsub.id, channels: ["ui:*"] });
  await new Promise((resolve) => setImmediate(resolve)); // after every promise callback
  assert.equal(ready, false, "the first subscribe's answer is not the second's");
  ws.push({ type: "subscribed", id: sub2.id, channels: ["ui:*"] });
  await until("the second subscription ready", () => ready);
  client.close();
}

// ---- the heartbeat drops a silent connection and reconnects ----
{
  sockets.length = 0;
  const client = connect("ws://hub.test/ws", {
    token: "t",
    heartbeat: { interval: 30, timeout: 30 },
    backoff: { base: 1, cap: 5 },
  });
  const ws = await until("a socket", () => sockets[0]);
  await accept(ws);
  const ping = await ws.next("ping");
  ws.push({ type: "pong", id: ping.id }); // answered: stays
  await ws.next("ping"); // not answered: dropped
  const again = await until("a new socket", () => sockets[1]);
  assert.equal(ws.closedWith.code, 4000);
  await accept(again);
  await until("open again", () => client.state === "open");
  client.close();
}

// ---- calls: result, call_failed, cancel, a drop mid-call, a held call ----
{
  sockets.length = 0;
  const client = connect("ws://hub.test/ws", { token: "t", heartbeat: false, backoff: { base: 1, cap: 5 } });
  const ws = await until("a socket", () => sockets[0]);
  await accept(ws);
  await until("open", () => client.state === "open");

  const answered = client.call("node.execute", { cmd: "ls" }, { timeoutMs: 5000 });
  const call = await ws.next("call");
  assert.equal(call.method, "node.execute");
  assert.deepEqual(call.params, { cmd: "ls" });
  assert.ok(call.timeoutMs > 4900 && call.timeoutMs <= 5000, `timeoutMs ${call.timeoutMs}`);
  ws.push({ type: "result", id: call.id, result: { code: 0 } });
  assert.deepEqual(await answered, { code: 0 });

  const failed = client.call("node.execute", undefined);
  const second = await ws.next("call");
  assert.equal(second.params, null);
  assert.equal(second.timeoutMs, undefined, "no timeoutMs: the hub's default");
  const detail = { code: "not_found", message: "no node n1", data: { node: "n1" } };
  ws.push({ type: "error", id: second.id, code: "call_failed", message: "failed", detail });
  await assert.rejects(failed, (e) => e instanceof CallError && e.code === "call_failed"
    && e.name === "CallError" && JSON.stringify(e.detail) === JSON.stringify(detail));

  // The proxy joins the path with dots and passes params and options.
  const api = createCaller(client);
  const viaProxy = api.fs.read({ path: "/etc" }, { timeoutMs: 100000 });
  const proxied = await ws.next("call");
  assert.equal(proxied.method, "fs.read");
  assert.deepEqual(proxied.params, { path: "/etc" });
  ws.push({ type: "result", id: proxied.id, result: "text" });
  assert.equal(await viaProxy, "text");
  assert.equal(api.then, undefined, "not thenable: `await api` is the proxy itself");
  assert.equal(await api, api);

  // Aborting a call out cancels it on the hub; its late result is ignored.
  const controller = new AbortController();
  const aborted = client.call("slow.op", {}, { signal: controller.signal });
  const slow = await ws.next("call");
  controller.abort();
  const cancel = await ws.next("call:cancel");
  assert.equal(cancel.id, slow.id);
  await assert.rejects(aborted, (e) => e.code === "cancelled" && e.name === "AbortError");
  ws.push({ type: "result", id: slow.id, result: "late" });
  // Already aborted: rejected without sending anything.
  await assert.rejects(client.call("slow.op", {}, { signal: controller.signal }), (e) => e.code === "cancelled");
  assert.equal(ws.sent.filter((m) => m.type === "call").length, 4);

  // A drop while a call is out rejects it, and it is never sent again.
  const inFlight = client.call("node.execute", { cmd: "rm" });
  const out = await ws.next("call");
  ws.serverClose(1012, "service restart");
  await assert.rejects(inFlight, (e) => e instanceof CallError && e.code === "disconnected");
  // Made while disconnected: held, sent once connected with what is left of
  // its timeout. One whose timeout passes first fails without being sent.
  const held = client.call("node.execute", { cmd: "held" }, { timeoutMs: 60000 });
  const expired = client.call("node.execute", { cmd: "expired" }, { timeoutMs: 1 });
  await assert.rejects(expired, (e) => e.code === "timeout");
  const again = await until("a second socket", () => sockets[1]);
  await accept(again);
  const resent = await again.next("call");
  assert.deepEqual(resent.params, { cmd: "held" });
  assert.ok(resent.timeoutMs <= 60000);
  assert.ok(!again.sent.some((m) => m.type === "call" && m.params.cmd !== "held"),
    `only the held call goes out on the new connection: ${JSON.stringify(again.sent)}`);
  assert.notEqual(resent.id, out.id);
  again.push({ type: "result", id: resent.id, result: 1 });
  assert.equal(await held, 1);
  client.close();
}

// ---- serving: replies, thrown errors, call:cancelled, reconnect, close ----
{
  sockets.length = 0;
  const client = connect("ws://hub.test/ws", { token: "t", heartbeat: false, backoff: { base: 1, cap: 5 } });
  const ws = await until("a socket", () => sockets[0]);
  await accept(ws);
  await until("open", () => client.state === "open");
  const seen = [];
  const signals = new Map();
  const handle = client.serve(["node.*", "fs.read"], async (params, ctx) => {
    seen.push([params, ctx.callId, ctx.method, ctx.caller.sub, ctx.deadline]);
    signals.set(ctx.callId, ctx.signal);
    if (params === "fail") throw { code: "not_found", message: "no such node", data: { n: 1 } };
    if (params === "error-with-code") throw Object.assign(new Error("denied here"), { code: "denied" });
    if (params === "boom") throw new Error("boom");
    if (params === "wait") await new Promise((resolve) => ctx.signal.addEventListener("abort", resolve));
    return { echo: params };
  }, { concurrency: 4 });
  const serve = await ws.next("serve");
  assert.deepEqual(serve.methods, ["node.*", "fs.read"]);
  assert.equal(serve.concurrency, 4);
  ws.push({ type: "serving", id: serve.id, methods: ["node.*", "fs.read"] });
  await handle.ready;

  const caller = { clientId: "9", sub: "ui-1", clientType: "browser" };
  const request = (callId, method, params) =>
    ws.push({ type: "call:request", callId, method, params, caller, deadline: 1796460000000 });
  request("c1", "node.execute", { cmd: "ls" });
  assert.deepEqual(await ws.next("call:reply"), { type: "call:reply", callId: "c1", result: { echo: { cmd: "ls" } } });
  assert.deepEqual(seen[0], [{ cmd: "ls" }, "c1", "node.execute", "ui-1", 1796460000000]);
  request("c2", "fs.read", "fail");
  assert.deepEqual((await ws.next("call:reply")).error, { code: "not_found", message: "no such node", data: { n: 1 } });
  request("c3", "node.x", "error-with-code");
  assert.deepEqual((await ws.next("call:reply")).error, { code: "denied", message: "denied here" });
  request("c4", "node.x", "boom");
  assert.deepEqual((await ws.next("call:reply")).error, { code: "internal", message: "boom" });

  // call:cancelled aborts the handler's signal, and no reply is sent.
  request("c5", "node.x", "wait");
  await until("c5 running", () => signals.has("c5"));
  ws.push({ type: "call:cancelled", callId: "c5" });
  assert.equal(signals.get("c5").aborted, true);
  request("c6", "node.x", 6);
  assert.equal((await ws.next("call:reply")).callId, "c6", "c5 got no reply");

  // A drop aborts running calls; after the reconnect the serve is sent again
  // (with the connection's largest concurrency).
  const other = client.serve("extra.*", () => "extra");
  const otherServe = await ws.next("serve");
  assert.equal(otherServe.concurrency, 4, "the largest concurrency any of the connection's serves names");
  request("c7", "node.x", "wait");
  await until("c7 running", () => signals.has("c7"));
  ws.serverClose(1012, "service restart");
  assert.equal(signals.get("c7").aborted, true);
  const again = await until("a second socket", () => sockets[1]);
  await accept(again);
  const served = [await again.next("serve"), await again.next("serve")].map((m) => m.methods);
  assert.deepEqual(served, [["node.*", "fs.read"], ["extra.*"]]);
  assert.ok(!again.sent.some((m) => m.type === "call:reply"), "c7 is not answered on the new connection");

  // close() unserves the handle's patterns; a call routed meanwhile is refused.
  const closed = other.close();
  const unserve = await again.next("unserve");
  assert.deepEqual(unserve.methods, ["extra.*"]);
  again.push({ type: "call:request", callId: "c8", method: "extra.y", params: null, caller, deadline: 1 });
  assert.equal((await again.next("call:reply")).error.code, "not_served");
  again.push({ type: "unserving", id: unserve.id, methods: ["extra.*"] });
  await closed;

  // A refused serve rejects its ready and is not served again.
  const refused = client.serve("admin.*", () => 1);
  const denied = await again.next("serve");
  again.push({ type: "error", id: denied.id, code: "forbidden", message: "may not serve admin.*" });
  await assert.rejects(refused.ready, (e) => e.code === "forbidden");
  handle.close();
  client.close();
}

console.log("ok");
process.exit(0);
