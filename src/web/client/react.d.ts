// Types of react.js (`chanhub/react`): React hooks over a chanhub client.
// Needs React 18 or later (and its types, @types/react, in TypeScript).

import type { ReactElement, ReactNode } from "react";
import type {
  CallOptions,
  ChanhubClient,
  ChanhubError,
  ConnectionState,
  HubEvent,
  TaskRecord,
} from "./chanhub.js";

export interface HubProviderProps {
  /** The client `connect` returned; the provider never connects or closes it. */
  client: ChanhubClient;
  children?: ReactNode;
}

/** Makes `client` the hub of the components below it. */
export function HubProvider(props: HubProviderProps): ReactElement;

/** The client of the nearest `HubProvider` (throws without one). */
export function useHub(): ChanhubClient;

/** Where a `useSubscription` is. */
export interface SubscriptionStatus {
  /** "pending" until the hub has answered, then "active" or "refused". */
  status: "pending" | "active" | "refused";
  /** Why it was refused (forbidden, invalid_channel, …). */
  error: ChanhubError | null;
}

/**
 * Calls `handler` for every event on a channel matching `pattern` while
 * mounted (the latest handler; a new `pattern` resubscribes, `null`
 * subscribes to nothing). Unsubscribes on unmount; survives reconnects.
 */
export function useSubscription<T = unknown>(
  pattern: string | null | undefined,
  handler: (data: T, event: HubEvent<T>) => void,
): SubscriptionStatus;

/** The latest event of each channel matching `pattern`, keyed by channel name. */
export function useChannelState<T = unknown>(pattern: string | null | undefined): Readonly<Record<string, HubEvent<T>>>;

/**
 * The live record of task `taskId` (state, progress, message, result,
 * error, …) from `task:<id>`: null until a change arrives after the
 * subscription took effect.
 */
export function useTask<R = unknown>(taskId: string | null | undefined): TaskRecord<R> | null;

/** A `call` bound to the provider's client: the same function on every render. */
export function useCall(): <R = unknown>(method: string, params?: unknown, options?: CallOptions) => Promise<R>;

/** The client's connection state, re-rendering on every change. */
export function useHubState(): ConnectionState;
