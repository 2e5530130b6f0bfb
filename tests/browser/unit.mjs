// Unit checks of chanhub.js's pure parts in Node (no browser needed):
// the pattern matcher against the table of proto-docs/protocol.md, the
// backoff bounds, and URL handling. Run by tests/web.rs; prints "ok".
//
//   node tests/browser/unit.mjs
import assert from "node:assert/strict";
import { backoffDelay, compilePattern, wsUrl } from "../../src/web/client/chanhub.js";

const table = [
  ["session:*", ["session:42"], ["session", "session:42:log"]],
  ["session:**", ["session", "session:42", "session:42:log"], ["sessions:1"]],
  ["**", ["a", "a:b:c"], []],
  ["*:log", ["a:log"], ["log", "a:b:log"]],
  ["a:**:end", ["a:end", "a:x:end", "a:x:y:end"], ["a:x:y"]],
  ["region:{eu,us}:*", ["region:eu:7", "region:us:1"], ["region:ap:1"]],
  ["user-*:inbox", ["user-1:inbox", "user-ana:inbox"], ["user:inbox", "user-1:x:inbox"]],
  ["shard:[0-9]", ["shard:7"], ["shard:10", "shard:x"]],
  ["shard:[!0-9]", ["shard:x"], ["shard:7"]],
  ["log:v?", ["log:v1"], ["log:v10"]],
  ["task:{queued,assigned,completed}", ["task:queued", "task:completed"], ["task:9f1c", "task:queued:x"]],
  ["a.b:c+d", ["a.b:c+d"], ["aXb:c+d", "a.b:cd"]],
];
for (const [pattern, yes, no] of table) {
  const match = compilePattern(pattern);
  for (const channel of yes) assert.ok(match(channel), `${pattern} should match ${channel}`);
  for (const channel of no) assert.ok(!match(channel), `${pattern} should not match ${channel}`);
}

const backoff = { base: 100, cap: 1000 };
for (let attempt = 0; attempt < 20; attempt++) {
  const ceiling = Math.min(1000, 100 * 2 ** attempt);
  assert.equal(backoffDelay(attempt, backoff, () => 0), 0);
  assert.ok(backoffDelay(attempt, backoff, () => 0.999999) <= ceiling);
  assert.ok(backoffDelay(attempt, backoff, () => 0.999999) >= ceiling - 1);
}
assert.equal(backoffDelay(1000, backoff, () => 0.5), 500, "huge attempts stay at the cap");

assert.equal(wsUrl("http://127.0.0.1:7070"), "ws://127.0.0.1:7070/ws");
assert.equal(wsUrl("https://hub.example.com/"), "wss://hub.example.com/ws");
assert.equal(wsUrl("ws://127.0.0.1:9/ws"), "ws://127.0.0.1:9/ws");
assert.equal(wsUrl("http://127.0.0.1:7070/custom/ws"), "ws://127.0.0.1:7070/custom/ws");

console.log("ok");
