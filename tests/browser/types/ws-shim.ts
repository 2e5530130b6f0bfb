// Stands for `import { WebSocket } from "ws"` (tsconfig has no @types): a
// class with the shape chanhub.js uses.
export default class WebSocket {
  readonly readyState: number = 0;
  constructor(readonly url: string) {}
  send(_data: string): void {}
  close(_code?: number, _reason?: string): void {}
  onopen: ((event: unknown) => void) | null = null;
  onmessage: ((event: { data: unknown }) => void) | null = null;
  onclose: ((event: { code: number; reason: string }) => void) | null = null;
  onerror: ((event: unknown) => void) | null = null;
}
