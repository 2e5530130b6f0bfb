// Type checks of node.d.ts (spawnHub, `chanhub/node`), compiled (never run) with
// the other files here by tests/browser.rs (`tsc -p tests/browser/types`).
// Each `@ts-expect-error` line must fail to compile.
import { SpawnHubError, cleanEnv, mintToken, spawnHub, type HubProcess } from "../../../src/web/client/node.js";

async function main(): Promise<void> {
  const hub: HubProcess = await spawnHub({
    binary: "/opt/app/chanhub",
    args: ["--config", "chanhub.toml"],
    env: { RUST_LOG: undefined, CHANHUB_SHUTDOWN__GRACE_PERIOD: "5s", WORKERS: 4 },
    readyTimeoutMs: 10_000,
    stderr: (line) => console.log(line.length),
    signal: AbortSignal.timeout(20_000),
  });
  const url: string = hub.url;
  const port: string = hub.ready.listen.split(":")[1];
  const off: () => void = hub.onExit((code, signal, { requested }) => {
    const status: number | null = code;
    const name: string | null = signal;
    const asked: boolean = requested;
    void [status, name, asked];
  });
  off();
  const token: string = hub.mintToken({ type: "worker", sub: "w1", ttlSeconds: 60, capabilities: ["thumb:*"] });
  // @ts-expect-error: not a client type
  hub.mintToken({ type: "admin", sub: "x" });
  // @ts-expect-error: sub is required
  hub.mintToken({ type: "browser" });
  const status: number | null = await hub.stop({ timeoutMs: 15_000 });
  // @ts-expect-error: binary is required
  await spawnHub({ readyTimeoutMs: 1 });
  // @ts-expect-error: an object is no environment value
  await spawnHub({ binary: "chanhub", env: { X: { y: 1 } } });
  // @ts-expect-error: stderr is "forward", "collect" or a function
  await spawnHub({ binary: "chanhub", stderr: "inherit" });
  void [url, port, token, status, mintToken("s", { type: "hub", sub: "m" }), cleanEnv({ A: 1 })["A"]];
}

try {
  await main();
} catch (err) {
  if (err instanceof SpawnHubError) {
    const code: string = err.code;
    const exit: number | null = err.exitCode;
    const lines: string[] = err.stderr;
    void [code, exit, lines];
  }
}
