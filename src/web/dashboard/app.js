// The chanhub dashboard. Plain ES module, no build step, nothing from a CDN:
// everything it loads is served by the hub itself. Numbers (federation
// links included) come from GET /api/stats every REFRESH_MS; live events (the tail, task changes)
// come over the hub's own WebSocket through chanhub.js.

import { connect } from "/chanhub.js";

const REFRESH_MS = 2000;
const TAIL_MAX = 200; // rows kept in the live tail
const RECENT_MAX = 50; // tasks kept in "recent tasks"
const STORAGE_KEY = "chanhub.dashboard.credential";
const TASK_EVENTS = "task:{queued,assigned,progress,completed,failed,dead,cancelled}";
const STATES = ["queued", "assigned", "failed", "completed", "dead", "cancelled"];

const $ = (id) => document.getElementById(id);

/** Builds an element: h("td", { class: "num" }, "3"). Text is never parsed as HTML. */
function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (name === "class") el.className = value;
    else if (name === "dataset") Object.assign(el.dataset, value);
    else el.setAttribute(name, value);
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null) continue;
    el.append(child instanceof Node ? child : String(child));
  }
  return el;
}

function setRows(tbody, rows, emptyText, columns) {
  tbody.replaceChildren(...(rows.length ? rows
    : [h("tr", {}, h("td", { colspan: columns, class: "muted" }, emptyText))]));
}

function looksLikeJwt(s) {
  return /^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*$/.test(s);
}

function short(value, max = 300) {
  const text = typeof value === "string" ? value : JSON.stringify(value);
  if (text === undefined) return "";
  return text.length > max ? `${text.slice(0, max)}…` : text;
}

function clock(ms) {
  const d = new Date(ms);
  return d.toTimeString().slice(0, 8) + "." + String(d.getMilliseconds()).padStart(3, "0");
}

function duration(seconds) {
  if (seconds < 60) return `${Math.floor(seconds)}s`;
  if (seconds < 3600) return `${Math.floor(seconds / 60)}m ${Math.floor(seconds % 60)}s`;
  const hours = Math.floor(seconds / 3600);
  return hours < 48 ? `${hours}h ${Math.floor((seconds % 3600) / 60)}m` : `${Math.floor(hours / 24)}d`;
}

function seconds(s) {
  if (s === null || s === undefined) return "> max";
  if (s < 0.001) return `${Math.round(s * 1e6)}µs`;
  if (s < 1) return `${+(s * 1000).toPrecision(3)}ms`;
  return `${+s.toPrecision(3)}s`;
}

// An upper bound for quantile q from a histogram snapshot {count, buckets: [[le, cumulative]]}.
function quantile(hist, q) {
  if (!hist || hist.count === 0) return "–";
  const want = q * hist.count;
  for (const [le, cumulative] of hist.buckets) {
    if (cumulative >= want) return `≤ ${seconds(le)}`;
  }
  return "–";
}

function rate(n) {
  return n >= 100 ? Math.round(n).toString() : (+n.toFixed(1)).toString();
}

// ---- session ----

/** The signed-in state: credential, API helper, WebSocket client, timers. */
let session = null;

async function api(path, init = {}) {
  const res = await fetch(path, {
    ...init,
    headers: { Authorization: `Bearer ${session.credential}`, ...(init.headers || {}) },
  });
  let body = null;
  try {
    body = await res.json();
  } catch {
    // not JSON (e.g. a 404 from the router)
  }
  if (!res.ok) {
    const err = new Error((body && body.error && body.error.message) || `HTTP ${res.status}`);
    err.status = res.status;
    throw err;
  }
  return body;
}

async function signIn(credential) {
  $("signin-error").textContent = "";
  session = { credential, isToken: looksLikeJwt(credential), recent: new Map() };
  let stats;
  try {
    stats = await api("/api/stats");
  } catch (err) {
    session = null;
    $("signin-error").textContent = err.status === 401 || err.status === 403
      ? `Not accepted: ${err.message}`
      : `Cannot reach the hub: ${err.message}`;
    sessionStorage.removeItem(STORAGE_KEY);
    return;
  }
  sessionStorage.setItem(STORAGE_KEY, credential);
  $("signin").hidden = true;
  $("board").hidden = false;
  $("sign-out").hidden = false;
  render(stats);

  const s = session;
  const options = s.isToken
    ? { token: credential }
    : { getToken: async () => (await api("/api/token", { method: "POST" })).token };
  s.client = connect("/ws", options);
  s.client.onState((state, detail) => showState(state, detail));
  s.client.onError((err) => status("tail-status", err.message, "bad"));
  s.client.subscribe(TASK_EVENTS, (task, event) => noteTask(task, event.channel));
  s.client.subscribe("worker:*", () => refreshSoon());
  watch($("tail-pattern").value.trim() || "**");
  s.timer = setInterval(refresh, REFRESH_MS);
  $("pub-channel").focus();
}

function signOut(message = "") {
  if (session) {
    clearInterval(session.timer);
    if (session.client) session.client.close();
  }
  session = null;
  sessionStorage.removeItem(STORAGE_KEY);
  $("board").hidden = true;
  $("sign-out").hidden = true;
  $("signin").hidden = false;
  $("signin-error").textContent = message;
  showState("closed", { reason: "signed out" });
  $("credential").value = "";
  $("credential").focus();
}

function showState(state, detail = {}) {
  const el = $("live-state");
  el.dataset.state = state;
  let text = state;
  if (state === "reconnecting" && detail.delay !== undefined) {
    text += ` in ${(detail.delay / 1000).toFixed(1)}s`;
  }
  if (state === "closed" && detail.reason) text += ` (${detail.reason})`;
  el.textContent = text;
}

function status(id, text, kind = "") {
  const el = $(id);
  el.textContent = text;
  el.className = `status ${kind}`;
}

// ---- periodic numbers ----

async function refresh() {
  const s = session;
  if (!s) return;
  try {
    const stats = await api("/api/stats");
    if (session === s) render(stats);
  } catch (err) {
    if (session !== s) return;
    if (err.status === 401 || err.status === 403) signOut(`Signed out: ${err.message}`);
    else $("hub-uptime").textContent = "(hub unreachable)";
  }
}

let soon = null;
function refreshSoon() {
  clearTimeout(soon);
  soon = setTimeout(refresh, 150);
}

// stats.federation, as GET /api/federation: {hubId, name, region?, links}.
function renderFederation(target, view) {
  const links = (view && view.links) || [];
  if (!view || links.length === 0) {
    target.replaceChildren(h("p", { class: "muted" }, "not configured"));
    return;
  }
  const about = [view.name !== view.hubId ? view.hubId : null, view.region].filter(Boolean).join(", ");
  const self = h("p", { class: "muted" }, `this hub: ${view.name}${about ? ` (${about})` : ""}`);
  target.replaceChildren(self, h("table", { class: "list" },
    h("thead", {}, h("tr", {}, ["peer", "state", "rtt", "interest in/out", "events in/out", "tasks in/out"]
      .map((c) => h("th", { scope: "col" }, c)))),
    h("tbody", {}, links.map((l) => h("tr", { dataset: { peer: l.peer, state: l.state } },
      h("td", {}, l.peer, l.direction ? h("span", { class: "muted" }, ` ${l.direction}`) : null),
      h("td", { class: l.state === "up" ? "st-completed" : "st-queued", title: l.lastError || "" },
        l.state, l.attempts ? ` (${l.attempts} tries)` : ""),
      h("td", { class: "num" }, l.rttMs !== undefined ? `${l.rttMs}ms` : "–"),
      h("td", { class: "num" }, `${l.interestIn} / ${l.interestOut}`),
      h("td", { class: "num" }, `${l.counters.eventsIn} / ${l.counters.eventsOut}`),
      h("td", { class: "num" }, `${l.counters.tasksIn} / ${l.counters.tasksOut}`))))));
}

// Calls per method at the previous refresh, for calls/s: method -> [calls, ms].
let callsBefore = new Map();

// stats.calls: {servers, inFlight, lateReplies, methods: [{method, servers,
// inFlight, calls, errors: {code: n}, latency}]}.
function renderCalls(calls) {
  const now = Date.now();
  const before = callsBefore;
  callsBefore = new Map(calls.methods.map((m) => [m.method, [m.calls, now]]));
  $("calls-servers").textContent = calls.servers;
  $("calls-inflight").textContent = calls.inFlight;
  setRows($("calls-body"), calls.methods.map((m) => {
    const [n0, t0] = before.get(m.method) ?? [m.calls, now];
    const perSecond = now > t0 ? (1000 * (m.calls - n0)) / (now - t0) : 0;
    const errors = Object.entries(m.errors);
    const failed = errors.reduce((sum, [, n]) => sum + n, 0);
    return h("tr", { dataset: { method: m.method } },
      h("td", { class: "mono" }, m.method),
      h("td", { class: "num" }, m.servers),
      h("td", { class: "num" }, m.inFlight),
      h("td", { class: "num" }, rate(perSecond)),
      h("td", { class: "num" }, quantile(m.latency, 0.99)),
      h("td", { class: failed ? "num st-dead" : "num", title: errors.map(([c, n]) => `${c}: ${n}`).join(", "),
        dataset: { errors: failed } }, `${failed} / ${m.calls}`));
  }), "none", 6);
}

function render(stats) {
  $("hub-version").textContent = `v${stats.version}`;
  $("hub-uptime").textContent = `up ${duration(stats.uptimeSeconds)}`;

  for (const transport of ["ws", "sse"]) {
    for (const type of ["browser", "worker", "hub"]) {
      $(`conn-${transport}-${type}`).textContent = stats.connections.byType[transport]?.[type] ?? 0;
    }
  }
  $("conn-total").textContent = stats.connections.total;
  $("conn-unauth").textContent = stats.connections.unauthenticated;
  $("subs-total").textContent = stats.subscriptions;
  $("slow-total").textContent = stats.events.slowConsumers;

  $("patterns-total").textContent = stats.patterns;
  setRows($("channels-body"), stats.channels.map((c) =>
    h("tr", { dataset: { pattern: c.pattern } },
      h("td", { class: "mono" }, c.pattern),
      h("td", { class: "num" }, c.subscribers))), "none", 2);

  $("workers-total").textContent = stats.workers.length;
  setRows($("workers-body"), stats.workers.map((w) => {
    const used = w.running.length;
    const bar = h("span", { class: "bar", "aria-hidden": "true" }, h("span"));
    bar.firstChild.style.width = `${w.slots ? (100 * used) / w.slots : 0}%`;
    const labels = Object.entries(w.labels || {}).map(([k, v]) => `${k}=${v}`).join(" ");
    return h("tr", { dataset: { worker: w.workerId } },
      h("td", {}, `#${w.workerId} `, h("span", { class: "muted" }, w.sub),
        w.draining ? h("span", { class: "st-cancelled" }, " draining") : null,
        labels ? h("div", { class: "muted mono" }, labels) : null),
      h("td", { class: "mono" }, w.capabilities.join(", ")),
      h("td", {}, bar, `${used} / ${w.slots}`));
  }), "none", 3);

  $("tasks-waiting").textContent = stats.tasks.waiting;
  $("wait-p50").textContent = quantile(stats.tasks.dispatchWait, 0.5);
  setRows($("tasks-body"), Object.entries(stats.tasks.byType).map(([type, states]) =>
    h("tr", { dataset: { type } }, h("td", { class: "mono" }, type),
      STATES.map((st) => h("td", { class: "num", dataset: { state: st } }, states[st] ?? 0)))),
  "none", 7);
  setRows($("dead-body"), stats.tasks.dead.map((t) =>
    h("tr", { dataset: { taskId: t.id } },
      h("td", { class: "mono" }, t.id), h("td", { class: "mono" }, t.type),
      h("td", { class: "num" }, `${t.attempt}/${t.maxAttempts}`),
      h("td", { class: "mono" }, short(t.error ?? "", 200)),
      h("td", {}, clock(t.updatedAt)))), "none", 5);

  $("lat-p50").textContent = quantile(stats.publishToWrite, 0.5);
  $("lat-p99").textContent = quantile(stats.publishToWrite, 0.99);
  const last = stats.rates[stats.rates.length - 1];
  $("rate-published").textContent = last ? rate(last.published) : "0";
  $("rate-delivered").textContent = last ? rate(last.delivered) : "0";
  drawRates($("rates-chart"), stats.rates);
  renderFederation($("federation"), stats.federation);
  renderCalls(stats.calls);
}

// ---- the rate chart (canvas, drawn by hand) ----

function drawRates(canvas, rates) {
  const dpr = window.devicePixelRatio || 1;
  const width = canvas.clientWidth || 640;
  const height = canvas.clientHeight || 160;
  if (canvas.width !== Math.round(width * dpr)) canvas.width = Math.round(width * dpr);
  if (canvas.height !== Math.round(height * dpr)) canvas.height = Math.round(height * dpr);
  const ctx = canvas.getContext("2d");
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  ctx.clearRect(0, 0, width, height);
  const css = getComputedStyle(document.documentElement);
  const color = (name) => css.getPropertyValue(name).trim();
  const pad = { left: 44, right: 8, top: 8, bottom: 18 };
  const plotW = width - pad.left - pad.right;
  const plotH = height - pad.top - pad.bottom;
  const now = Date.now();
  const span = 300000; // five minutes
  const peak = Math.max(0, ...rates.map((r) => Math.max(r.published, r.delivered)));
  canvas.dataset.peak = peak;
  const max = niceCeiling(Math.max(1, peak));
  const x = (t) => pad.left + plotW * (1 - (now - t) / span);
  const y = (v) => pad.top + plotH * (1 - v / max);

  ctx.font = "11px system-ui, sans-serif";
  ctx.fillStyle = color("--muted");
  ctx.strokeStyle = color("--line");
  ctx.lineWidth = 1;
  for (const v of [0, max / 2, max]) {
    ctx.beginPath();
    ctx.moveTo(pad.left, Math.round(y(v)) + 0.5);
    ctx.lineTo(width - pad.right, Math.round(y(v)) + 0.5);
    ctx.stroke();
    ctx.textAlign = "right";
    ctx.textBaseline = "middle";
    ctx.fillText(rate(v), pad.left - 6, y(v));
  }
  ctx.textBaseline = "top";
  for (const [label, t] of [["-5m", now - span], ["-2.5m", now - span / 2], ["now", now]]) {
    ctx.textAlign = label === "now" ? "right" : label === "-5m" ? "left" : "center";
    ctx.fillText(label, x(t), height - pad.bottom + 4);
  }
  for (const [key, name] of [["delivered", "--delivered"], ["published", "--published"]]) {
    const points = rates.filter((r) => now - r.t <= span);
    if (points.length === 0) continue;
    ctx.strokeStyle = color(name);
    ctx.lineWidth = 2;
    ctx.beginPath();
    points.forEach((r, i) => (i ? ctx.lineTo(x(r.t), y(r[key])) : ctx.moveTo(x(r.t), y(r[key]))));
    ctx.stroke();
  }
}

function niceCeiling(v) {
  const power = 10 ** Math.floor(Math.log10(v));
  for (const step of [1, 2, 5, 10]) {
    if (v <= step * power) return step * power;
  }
  return 10 * power;
}

// ---- tasks seen over the WebSocket ----

function noteTask(task, channel) {
  if (!session || !task || !task.id) return;
  const recent = session.recent;
  recent.delete(task.id);
  recent.set(task.id, task);
  while (recent.size > RECENT_MAX) recent.delete(recent.keys().next().value);
  // At most one render per frame, however many task events arrive.
  if (!session.recentScheduled) {
    session.recentScheduled = true;
    requestAnimationFrame(renderRecent);
  }
  if (channel !== "task:progress") refreshSoon();
}

function renderRecent() {
  if (!session) return;
  session.recentScheduled = false;
  const tasks = [...session.recent.values()].reverse();
  setRows($("recent-body"), tasks.map((t) =>
    h("tr", { dataset: { taskId: t.id, state: t.state } },
      h("td", { class: "mono" }, t.id),
      h("td", { class: "mono" }, t.type),
      h("td", { class: `st-${t.state}` }, t.state + (t.progress !== undefined && t.state === "assigned" ? ` ${t.progress}%` : "")),
      h("td", { class: "num" }, `${t.attempt}/${t.maxAttempts}`),
      h("td", {}, t.workerId ? `#${t.workerId}` : ""),
      h("td", { class: "mono" }, short(t.result ?? t.error ?? "", 200)))),
  "no task events seen yet", 6);
}

// ---- the live tail ----

const tail = { off: null, pattern: "", buffer: [], scheduled: false };

function watch(pattern) {
  if (!session) return;
  if (tail.off) tail.off();
  tail.pattern = pattern;
  tail.off = session.client.subscribe(pattern, (data, event) => {
    if ($("tail-pause").checked) return;
    tail.buffer.push(event);
    if (tail.buffer.length > TAIL_MAX) tail.buffer.splice(0, tail.buffer.length - TAIL_MAX);
    if (!tail.scheduled) {
      tail.scheduled = true;
      requestAnimationFrame(flushTail);
    }
  });
  status("tail-status", `subscribing to ${pattern}…`);
  tail.off.ready.then(
    () => status("tail-status", `watching ${pattern}`, "good"),
    (err) => status("tail-status", `${pattern}: ${err.message}`, "bad"),
  );
}

function flushTail() {
  tail.scheduled = false;
  const list = $("tail");
  const rows = tail.buffer.splice(0).reverse().map((e) =>
    h("li", { dataset: { channel: e.channel } },
      h("span", { class: "t" }, clock(e.ts)),
      h("span", { class: "ch" }, e.channel),
      h("span", { class: "data" }, short(e.data, 500))));
  list.prepend(...rows);
  while (list.childElementCount > TAIL_MAX) list.lastElementChild.remove();
}

// ---- forms ----

function parseJson(text, what) {
  try {
    return JSON.parse(text.trim() === "" ? "null" : text);
  } catch (err) {
    throw new Error(`${what} is not JSON: ${err.message}`);
  }
}

$("signin-form").addEventListener("submit", (e) => {
  e.preventDefault();
  const credential = $("credential").value.trim();
  if (credential) signIn(credential);
});

$("sign-out").addEventListener("click", () => signOut());

$("publish-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  try {
    const channel = $("pub-channel").value.trim();
    const data = parseJson($("pub-data").value, "data");
    status("publish-status", "publishing…");
    const ack = await session.client.publish(channel, data);
    status("publish-status",
      `published ${ack.eventId} to ${ack.channel}: delivered to ${ack.delivered} connection(s)`, "good");
  } catch (err) {
    status("publish-status", err.message, "bad");
  }
});

$("task-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  try {
    const spec = { type: $("task-type").value.trim(), payload: parseJson($("task-payload").value, "payload") };
    const priority = $("task-priority").value;
    if (priority !== "") spec.priority = Number(priority);
    status("task-status", "submitting…");
    const id = await session.client.submitTask(spec);
    status("task-status", `accepted: task ${id}`, "good");
    refreshSoon();
  } catch (err) {
    status("task-status", err.message, "bad");
  }
});

$("tail-form").addEventListener("submit", (e) => {
  e.preventDefault();
  const pattern = $("tail-pattern").value.trim();
  if (pattern && pattern !== tail.pattern) {
    $("tail").replaceChildren();
    watch(pattern);
  }
});

$("tail-clear").addEventListener("click", () => $("tail").replaceChildren());

// Sign in again with what this tab used before (a reload keeps it).
const saved = sessionStorage.getItem(STORAGE_KEY);
if (saved) signIn(saved);
else $("credential").focus();
