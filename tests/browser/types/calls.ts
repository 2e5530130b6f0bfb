// Type checks of chanhub.d.ts, compiled (never run) by tests/browser.rs with
// `tsc -p tests/browser/types`. Each `@ts-expect-error` line must fail to
// compile: if the types ever accept it, tsc reports the directive as unused
// and the test fails.
import {
  CallError,
  connect,
  createCaller,
  type Caller,
  type ReplyError,
  type ServeContext,
} from "../../../src/web/client/chanhub.js";

// `Expect<Equal<A, B>>` compiles only when A and B are the same type.
type Equal<A, B> = (<T>() => T extends A ? 1 : 2) extends (<T>() => T extends B ? 1 : 2) ? true : false;
type Expect<T extends true> = T;

// An app's own API, as the example has it.
interface API {
  node: {
    execute(p: { cmd: string }): { code: number };
    status(): Promise<{ up: boolean }>;
    logs(p?: { tail: number }): string[];
  };
  ping(): "pong";
}

const hub = connect("/ws", { token: "t" });
const api = createCaller<API>(hub);

export async function typed() {
  const executed = api.node.execute({ cmd: "ls" });
  type _execute = Expect<Equal<typeof executed, Promise<{ code: number }>>>;
  const { code } = await api.node.execute({ cmd: "ls" }, { timeoutMs: 5000 });
  type _code = Expect<Equal<typeof code, number>>;
  // A method returning a promise resolves with what the promise holds.
  const status = await api.node.status();
  type _status = Expect<Equal<typeof status, { up: boolean }>>;
  await api.node.logs();
  await api.node.logs({ tail: 10 }, { signal: new AbortController().signal });
  const pong = await api.ping();
  type _pong = Expect<Equal<typeof pong, "pong">>;

  // @ts-expect-error a wrong params type
  await api.node.execute({ cmd: 42 });
  // @ts-expect-error params missing where the method needs them
  await api.node.execute();
  // @ts-expect-error a method the API does not have
  await api.node.reboot({});
  // @ts-expect-error params for a method that takes none
  await api.ping({ x: 1 });
  // @ts-expect-error a wrong option
  await api.node.execute({ cmd: "ls" }, { timeout: 5 });
  // @ts-expect-error the result's type is kept
  const wrong: string = await api.node.execute({ cmd: "ls" });
  void wrong;
}

// Without an API type, any path and params, an unknown result.
export async function untyped() {
  const anything = createCaller(hub);
  const result = await anything.a.b.c({ x: 1 });
  type _unknown = Expect<Equal<typeof result, unknown>>;
}

// `Caller<API>` is usable on its own, e.g. to pass the proxy around.
export function takesCaller(c: Caller<API>): Promise<{ code: number }> {
  return c.node.execute({ cmd: "ls" });
}

export async function callAndServe() {
  const sum = await hub.call<{ sum: number }>("demo.add", { a: 1, b: 2 }, { timeoutMs: 1000 });
  type _sum = Expect<Equal<typeof sum, { sum: number }>>;
  try {
    await hub.call("demo.fail");
  } catch (err) {
    if (err instanceof CallError) {
      const detail: ReplyError | undefined = err.detail;
      if (err.code === "call_failed" && detail) console.log(detail.code, detail.message, detail.data);
      // @ts-expect-error not a code a call fails with
      if (err.code === "nope") throw err;
    }
  }

  const handle = hub.serve("demo.*", async (params: { a: number; b: number }, ctx: ServeContext) => {
    ctx.signal.addEventListener("abort", () => {});
    const who: string = `${ctx.caller.sub} ${ctx.caller.clientType} ${ctx.callId} ${ctx.method}`;
    const deadline: number = ctx.deadline;
    return { sum: params.a + params.b, who, deadline };
  }, { concurrency: 4 });
  await handle.ready;
  const methods: string[] = handle.methods;
  await handle.close();
  hub.serve(["a.*", "b.*"], (params) => params);
  // @ts-expect-error concurrency is a number
  hub.serve("x.*", () => 1, { concurrency: "4" });
  return methods;
}
