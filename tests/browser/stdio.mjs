// The stdio protocol between a browser script and tests/browser.rs, which
// owns the hub and the Rust-side clients (one line each):
//
//   node → rust:  ASK <n> <what>     answered with   rust → node:  ANS <n> <payload>
//   node → rust:  PASS <scenario>    after each scenario, DONE at the end

import { createInterface } from "node:readline";

/** The bound on every wait of a browser script, ms. */
export const WAIT = 20000;

const answers = new Map();
let next = 1;
createInterface({ input: process.stdin }).on("line", (line) => {
  const m = /^ANS (\d+) ?(.*)$/.exec(line);
  if (m && answers.has(+m[1])) {
    answers.get(+m[1])(m[2]);
    answers.delete(+m[1]);
  }
});

/** Asks the Rust side for `what`; resolves with its answer's payload. */
export function ask(what) {
  const n = next++;
  const answered = new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no answer to ${what}`)), WAIT);
    answers.set(n, (payload) => { clearTimeout(timer); resolve(payload); });
  });
  console.log(`ASK ${n} ${what}`);
  return answered;
}

/** Reports scenario `name` as passed. */
export const pass = (name) => console.log(`PASS ${name}`);
