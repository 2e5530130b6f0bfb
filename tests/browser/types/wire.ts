// Type checks of the wire types (wire.d.ts, generated from
// proto-docs/schemas/) as chanhub.d.ts uses them, compiled (never run) with
// the other files here by tests/browser.rs. Each `@ts-expect-error` line
// must fail to compile.
import {
  ChanhubError,
  connect,
  type AuthInfo,
  type ClientType,
  type ErrorCode,
  type HubEvent,
  type ServerMessage,
  type ServerMessageOf,
  type TaskRecord,
  type TaskState,
} from "../../../src/web/client/chanhub.js";
import type { ClientMessageOf, TaskView } from "../../../src/web/client/wire.js";

type Equal<A, B> = (<T>() => T extends A ? 1 : 2) extends (<T>() => T extends B ? 1 : 2) ? true : false;
type Expect<T extends true> = T;

const hub = connect("/ws", { token: "t" });

// Messages from the hub narrow on `type`.
hub.onMessage((message: ServerMessage) => {
  if (message.type === "task:result") {
    const state: TaskState = message.task.state;
    void state;
  } else if (message.type === "event") {
    const channel: string = message.channel;
    void channel;
  } else if (message.type === "error") {
    const code: ErrorCode = message.code;
    void code;
    // @ts-expect-error: not a code the hub sends
    const wrong: typeof message.code = "no_such_code";
    void wrong;
  }
});

async function requests(): Promise<void> {
  // The client adds the id; the fields are the wire's.
  const reply = await hub.request({ type: "presence", channel: "room:1" });
  if (reply.type === "presence") {
    const clientType: ClientType = reply.clients[0].clientType;
    void clientType;
  }
  // @ts-expect-error: subscribe needs its channels
  await hub.request({ type: "subscribe" });
  // @ts-expect-error: not a message type
  await hub.request({ type: "subscribe:all" });
}

// The public types are the wire's.
type _record = Expect<Equal<TaskRecord["state"], TaskView["state"]>>;
type _event = Expect<Equal<HubEvent<{ n: number }>["data"], { n: number }>>;
type _auth = Expect<Equal<AuthInfo, ServerMessageOf<"auth:success">>>;
type _submit = Expect<Equal<ClientMessageOf<"task:submit">["task"]["type"], string>>;
// @ts-expect-error: not a task state
const state: TaskState = "running";

// Error codes: the hub's plus the client's own.
function explain(err: unknown): string {
  if (err instanceof ChanhubError) {
    if (err.code === "forbidden" || err.code === "disconnected") return err.code;
  }
  return "other";
}

void requests, state, explain;
