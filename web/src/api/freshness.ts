// Which of two rows of one session to keep. A response and an event can arrive in either order: the
// answer to "mark read" may land after the event for the name the namer wrote just after it. The
// server stamps updated_at when it writes a row version (sql/019), so the later committed version is
// the newer one, and keeping the newest never undoes a change. A row only this browser has (local)
// always gives way to the server's.
import type { Session } from "./client";

/** updated_at as [whole seconds in ms, microseconds], so rows written within a millisecond still order. */
function stamp(iso: string): [number, number] {
  const fraction = /\.(\d+)/.exec(iso);
  const micros = fraction ? Number((fraction[1] ?? "").padEnd(6, "0").slice(0, 6)) : 0;
  return [Date.parse(fraction ? iso.replace(fraction[0], "") : iso), micros];
}

/** The row to keep: `incoming` unless `current` is a server row written later. Equal times: `incoming`. */
export function newerRow<T extends Session & { local?: boolean }>(current: T | undefined, incoming: T): T {
  if (!current || current.local) return incoming;
  const [a, b] = [stamp(current.updated_at), stamp(incoming.updated_at)];
  return a[0] > b[0] || (a[0] === b[0] && a[1] > b[1]) ? current : incoming;
}
