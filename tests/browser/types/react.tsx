// Type checks of react.d.ts (`chanhub/react`) in a TSX component tree,
// compiled (never run) with the other files here by tests/browser.rs. Each
// `@ts-expect-error` line must fail to compile.
import { useState } from "react";
import { connect, type ConnectionState, type TaskRecord } from "../../../src/web/client/chanhub.js";
import {
  HubProvider,
  useCall,
  useChannelState,
  useHub,
  useHubState,
  useSubscription,
  useTask,
  type SubscriptionStatus,
} from "../../../src/web/client/react.js";

interface Line { text: string }

function Feed() {
  const [lines, setLines] = useState<string[]>([]);
  const status: SubscriptionStatus = useSubscription<Line>("feed:*", (data, event) => {
    setLines((prev) => [...prev, `${event.channel}: ${data.text}`]);
  });
  // @ts-expect-error: the handler's data is a Line
  useSubscription<Line>("feed:*", (data: { n: number }) => void data);
  return <ul data-status={status.status}>{lines.map((l) => <li key={l}>{l}</li>)}</ul>;
}

function Rooms() {
  const rooms = useChannelState<{ users: number }>("room:*");
  return <dl>{Object.entries(rooms).map(([channel, event]) => <dd key={channel}>{event.data.users}</dd>)}</dl>;
}

function Task({ id }: { id: string | null }) {
  const task: TaskRecord<{ pages: number }> | null = useTask<{ pages: number }>(id);
  const pages: number | undefined = task?.result?.pages;
  return <progress max={100} value={task?.progress ?? 0} data-state={task?.state} data-pages={pages} />;
}

function Caller() {
  const call = useCall();
  const hub = useHub();
  const state: ConnectionState = useHubState();
  const add = async () => {
    const { sum } = await call<{ sum: number }>("demo.add", { a: 1, b: 2 }, { timeoutMs: 1000 });
    return sum + (hub.info ? 0 : 1);
  };
  return <button onClick={() => void add()}>{state}</button>;
}

const hub = connect("/ws", { token: "t" });
export const app = (
  <HubProvider client={hub}>
    <Feed />
    <Rooms />
    <Task id="0123456789abcdef" />
    <Caller />
  </HubProvider>
);
// @ts-expect-error: the provider needs a client
export const missing = <HubProvider><Feed /></HubProvider>;
