// react.js — `chanhub/react`: React hooks over a chanhub client, for UIs
// that render live events, task lists and call results. `react` (18 or
// later) is a peer dependency, the only import; no JSX, so there is no
// build step. Types: react.d.ts.
//
//   import { connect } from "chanhub";
//   import { HubProvider, useSubscription, useTask, useHubState } from "chanhub/react";
//
//   const hub = connect("/ws", { getToken });
//   root.render(<HubProvider client={hub}><App /></HubProvider>);
//
//   function Status() {
//     return <span>{useHubState()}</span>;        // connecting | open | reconnecting | closed
//   }
//   function Progress({ taskId }) {
//     const task = useTask(taskId);                // the latest record of task:<id>
//     return <progress max={100} value={task?.progress ?? 0} />;
//   }
//
// Each hook subscribes on mount and unsubscribes on unmount (the hub is
// told); subscriptions survive reconnects because the client restores them.
// The client itself is the app's: the provider never connects or closes it.

import * as React from "react";

const { createContext, createElement, useCallback, useContext, useEffect, useRef, useState, useSyncExternalStore } = React;

const HubContext = createContext(null);

/** Makes `client` (from `connect`) the hub of the components below it. */
export function HubProvider({ client, children }) {
  if (!client) throw new TypeError("<HubProvider client={hub}>: pass the client connect() returned");
  return createElement(HubContext.Provider, { value: client }, children);
}

/** The client of the nearest `HubProvider`. */
export function useHub() {
  const hub = useContext(HubContext);
  if (!hub) throw new Error("chanhub/react: this component has no <HubProvider client={hub}> above it");
  return hub;
}

/**
 * Calls `handler(data, event)` for every event on a channel matching
 * `pattern` while the component is mounted (the latest `handler` is called;
 * a new function does not resubscribe, a new `pattern` does; a null pattern
 * subscribes to nothing). Returns `{ status, error }`: `status` is
 * "pending" until the hub has accepted the pattern, then "active", or
 * "refused" with the hub's `error` (forbidden, invalid_channel, …).
 */
export function useSubscription(pattern, handler) {
  const hub = useHub();
  const latest = useRef(handler);
  useEffect(() => {
    latest.current = handler;
  });
  const [result, setResult] = useState({ pattern, status: "pending", error: null });
  useEffect(() => {
    if (!pattern) return undefined;
    let live = true;
    const off = hub.subscribe(pattern, (data, event) => latest.current(data, event));
    off.ready.then(
      () => live && setResult({ pattern, status: "active", error: null }),
      (error) => live && setResult({ pattern, status: "refused", error }),
    );
    return () => {
      live = false;
      off();
    };
  }, [hub, pattern]);
  // Until the effect has reported on a new pattern, it is pending.
  return result.pattern === pattern ? { status: result.status, error: result.error } : PENDING;
}

const PENDING = Object.freeze({ status: "pending", error: null });
const NONE = Object.freeze({});

/**
 * The latest event of each channel matching `pattern`, as an object keyed
 * by channel name (a new object after every event; `{}` until one comes).
 * Only events published while mounted are seen.
 */
export function useChannelState(pattern) {
  const [state, setState] = useState({ pattern, channels: NONE });
  useSubscription(pattern, (_, event) => {
    setState((prev) => ({
      pattern,
      channels: { ...(prev.pattern === pattern ? prev.channels : NONE), [event.channel]: event },
    }));
  });
  return state.pattern === pattern ? state.channels : NONE;
}

/**
 * The live record of task `taskId` (proto-docs/tasks.md, "The task
 * record": `state`, `progress`, `message`, `result`, `error`, …), from its
 * `task:<id>` channel: null until a change made after the subscription took
 * effect arrives. A null `taskId` watches nothing.
 */
export function useTask(taskId) {
  const [state, setState] = useState({ taskId, record: null });
  useSubscription(taskId ? `task:${taskId}` : null, (record) => setState({ taskId, record }));
  return state.taskId === taskId ? state.record : null;
}

/**
 * A stable `call(method, params, options)` bound to the provider's client
 * (see `hub.call`): the same function on every render, so it can go into
 * effect dependencies.
 */
export function useCall() {
  const hub = useHub();
  return useCallback((method, params, options) => hub.call(method, params, options), [hub]);
}

/** The client's connection state: "connecting", "open", "reconnecting" or "closed". */
export function useHubState() {
  const hub = useHub();
  const subscribe = useCallback((onChange) => hub.onState(onChange), [hub]);
  return useSyncExternalStore(subscribe, () => hub.state, () => hub.state);
}
