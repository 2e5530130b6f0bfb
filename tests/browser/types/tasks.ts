// Type checks of the task API in chanhub.d.ts (hub.worker, runTask,
// watchTask, TaskError), compiled (never run) by tests/browser.rs with
// `tsc -p tests/browser/types`. Each `@ts-expect-error` line must fail to
// compile.
import WebSocketFromWs from "./ws-shim.js";
import {
  TaskError,
  TaskFailedError,
  connect,
  type TaskContext,
  type TaskRecord,
  type Worker,
} from "../../../src/web/client/chanhub.js";

type Equal<A, B> = (<T>() => T extends A ? 1 : 2) extends (<T>() => T extends B ? 1 : 2) ? true : false;
type Expect<T extends true> = T;

// Node without a global WebSocket: the constructor comes in the options.
const hub = connect("ws://127.0.0.1:7070/ws", { getToken: async () => "t", WebSocket: WebSocketFromWs });
// @ts-expect-error: not a WebSocket constructor
connect("/ws", { token: "t", WebSocket: 42 });

interface IndexJob { docId: number }

const worker: Worker = hub.worker<IndexJob, { indexed: number }>({
  capabilities: ["index:*"],
  slots: 4,
  handler: async (task, ctx) => {
    type _payload = Expect<Equal<typeof task.payload, IndexJob>>;
    type _ctx = Expect<Equal<typeof ctx, TaskContext>>;
    ctx.progress(50, "halfway");
    ctx.progress(null);
    if (ctx.signal.aborted) throw new TaskError("stopped", { retryable: true });
    if (ctx.attempt > 2) throw new TaskError("giving up", { data: { docId: task.payload.docId } });
    return { indexed: task.payload.docId };
  },
});
// @ts-expect-error: the handler must return the declared result type
hub.worker<IndexJob, { indexed: number }>({ capabilities: "index:*", handler: async () => "nope" });
// @ts-expect-error: capabilities are required
hub.worker({ handler: async () => null });

const drained: Promise<void> = worker.drain();
const id: string | null = worker.workerId;

async function submit(): Promise<void> {
  const controller = new AbortController();
  try {
    const result = await hub.runTask<{ indexed: number }>({ type: "index:doc", payload: { docId: 1 }, maxAttempts: 2 }, {
      signal: controller.signal,
      onProgress: (progress, message, task) => {
        const p: number = progress;
        const m: string | undefined = message;
        const t: TaskRecord = task;
        void p, m, t;
      },
    });
    const n: number = result.indexed;
    void n;
  } catch (err) {
    if (err instanceof TaskFailedError) {
      const state: "dead" | "cancelled" = err.state;
      void state, err.detail, err.task?.attempt;
    }
  }
  // @ts-expect-error: unknown field in the spec
  await hub.runTask({ type: "x", retries: 3 });

  const taskId: string = await hub.submitTask({ type: "index:doc" });
  const watch = hub.watchTask<{ indexed: number }>(taskId);
  await watch.ready;
  for await (const record of watch) {
    const state: TaskRecord["state"] = record.state;
    const r: { indexed: number } | undefined = record.result;
    void state, r;
  }
}

void drained, id, submit;

// The browser's own class is accepted too.
connect("/ws", { token: "t", WebSocket });
