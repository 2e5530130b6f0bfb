// chanhub.js's connection logic against a scripted fake hub, in Node (no
// browser): token refresh, resubscribe with `since` after a reconnect,
// requests held while disconnected, in-flight requests failed on a drop,
// a refused fixed token, refused subscriptions, the heartbeat, unsubscribe.
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

const { connect } = await import("../../src/web/chanhub.js");

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

console.log("ok");
process.exit(0);
