// Compiled (never run) by tests/js_package.rs inside the project the packed
// tarball was installed into, with `moduleResolution: nodenext`: the
// package's `exports` must lead TypeScript to its types, as in a user's
// project. Each `@ts-expect-error` line must fail to compile.
import { TaskError, connect, createCaller, type ChanhubClient, type TaskRecord } from "chanhub";
import { spawnHub, type HubProcess } from "chanhub/node";
import type { ServerMessageOf, TaskView } from "chanhub/wire";

async function main(): Promise<void> {
  const sidecar: HubProcess = await spawnHub({ binary: "/opt/app/chanhub" });
  const hub: ChanhubClient = connect(sidecar.url, { token: sidecar.mintToken({ type: "worker", sub: "w" }) });
  hub.worker<{ path: string }, { lines: number }>({
    capabilities: ["index:file"],
    handler: async (task, ctx) => {
      ctx.progress(10);
      if (!task.payload.path) throw new TaskError("no path", { retryable: false });
      return { lines: task.payload.path.length };
    },
  });
  const record: TaskRecord | undefined = undefined;
  const view: TaskView | undefined = record;
  hub.onMessage((message) => {
    if (message.type === "task:result") {
      const result: ServerMessageOf<"task:result"> = message;
      void result;
    }
  });
  void view;
  interface API { add(p: { a: number; b: number }): { sum: number } }
  const api = createCaller<API>(hub);
  const { sum }: { sum: number } = await api.add({ a: 1, b: 2 });
  // @ts-expect-error: the API's params are checked
  await api.add({ a: "1" });
  void sum;
}
void main;
