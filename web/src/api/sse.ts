// A small Server-Sent Events reader over fetch (EventSource cannot POST, nor send Authorization).
//
// parseSse(body) yields each event as the spec frames it: fields split on any line ending, even
// when a chunk ends mid-line or mid-character; `data:` lines joined with "\n"; comment lines
// (":" heartbeats) yielded as comments; `id:` kept as the last event id; `retry:` read.
import { ApiError, apiError, requestHeaders, type ApiConfig } from "./client";
import type { components } from "./schema";

export interface SseEvent {
  kind: "event";
  event: string; // "message" when the event has no `event:` line
  data: string;
  id: string | null; // the last event id seen so far in the stream (SSE's lastEventId)
}
export interface SseComment {
  kind: "comment";
  text: string;
}
export interface SseRetry {
  kind: "retry";
  milliseconds: number;
}
export type SseItem = SseEvent | SseComment | SseRetry;

export async function* parseSse(body: ReadableStream<Uint8Array>, lastEventId: string | null = null): AsyncGenerator<SseItem> {
  const reader = body.getReader();
  const decoder = new TextDecoder(); // stream mode: a character split across chunks waits for its rest
  let buffer = "";
  let event = "";
  let data: string[] = [];
  let id = lastEventId;
  let first = true;
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      if (first && buffer.length > 0) {
        if (buffer.charCodeAt(0) === 0xfeff) buffer = buffer.slice(1); // a BOM at the very start
        first = false;
      }
      // Complete lines only; a trailing "\r" may be the first half of "\r\n", so it waits too.
      let start = 0;
      for (let i = 0; i < buffer.length; i++) {
        const ch = buffer[i];
        if (ch !== "\n" && ch !== "\r") continue;
        if (ch === "\r" && i === buffer.length - 1) break;
        const line = buffer.slice(start, i);
        if (ch === "\r" && buffer[i + 1] === "\n") i++;
        start = i + 1;
        if (line === "") {
          if (data.length > 0) yield { kind: "event", event: event || "message", data: data.join("\n"), id };
          event = "";
          data = [];
          continue;
        }
        const colon = line.indexOf(":");
        if (colon === 0) {
          yield { kind: "comment", text: line.slice(1).trimStart() };
          continue;
        }
        const field = colon < 0 ? line : line.slice(0, colon);
        let fieldValue = colon < 0 ? "" : line.slice(colon + 1);
        if (fieldValue.startsWith(" ")) fieldValue = fieldValue.slice(1);
        if (field === "event") event = fieldValue;
        else if (field === "data") data.push(fieldValue);
        else if (field === "id" && !fieldValue.includes("\0")) id = fieldValue;
        else if (field === "retry" && /^\d+$/.test(fieldValue)) yield { kind: "retry", milliseconds: Number(fieldValue) };
      }
      buffer = buffer.slice(start);
    }
    // An event not terminated by a blank line when the stream ends is dropped (as the spec says).
  } finally {
    reader.releaseLock();
  }
}

// --- a chat turn's stream (POST /api/llm/query/stream) and a run's (GET .../runs/<run_id>/stream) ---
// Each event's data is a type generated from the server's OpenAPI document (its components).

type Schemas = components["schemas"];
export type ChatStreamEvent = (
  | { event: "run"; data: Schemas["ChatStreamRunEvent"] }
  | { event: "token"; data: Schemas["ChatStreamTokenEvent"] }
  | { event: "done"; data: Schemas["ChatStreamDoneEvent"] }
  | { event: "error"; data: Schemas["ChatStreamErrorEvent"] }
) & { id: string | null }; // the event's cursor: resume after it with Last-Event-ID

export type QueryBody = Schemas["QueryBody"];
export type MultitaskStrategy = NonNullable<QueryBody["multitask_strategy"]>;
export type EditBody = Schemas["EditBody"];
export type RegenerateBody = Schemas["RegenerateBody"];

const CHAT_EVENTS = new Set(["run", "token", "done", "error"]);

async function* chatEvents(response: Response, lastEventId: string | null = null): AsyncGenerator<ChatStreamEvent> {
  if (!response.ok || !response.body) throw apiError(response, await response.json().catch(() => null));
  for await (const item of parseSse(response.body, lastEventId)) {
    if (item.kind === "event" && CHAT_EVENTS.has(item.event)) {
      yield { event: item.event, data: JSON.parse(item.data), id: item.id } as ChatStreamEvent;
    }
  }
}

async function* postStream(config: ApiConfig, path: string, body: unknown, signal?: AbortSignal): AsyncGenerator<ChatStreamEvent> {
  const response = await fetch(`${config.baseUrl}${path}`, {
    method: "POST",
    credentials: "include",
    headers: { ...requestHeaders(config), "Content-Type": "application/json", Accept: "text/event-stream" },
    body: JSON.stringify(body),
    signal,
  });
  yield* chatEvents(response);
}

/**
 * Send a message and read the reply as it is written: first `run` (its run_id: join it again,
 * stop it), then `token`s, then `done` or `error`. Closing the stream (aborting `signal`) leaves
 * the reply running on the server; stop it with `cancelRun`. With `multitask_strategy: "enqueue"`
 * a message sent while a reply runs waits its turn (`run` with status `queued` comes first).
 * Errors before the stream (bad input, 409 session_busy / session_archived, 429 with
 * Retry-After) throw ApiError.
 */
export function streamChat(config: ApiConfig, body: QueryBody, signal?: AbortSignal): AsyncGenerator<ChatStreamEvent> {
  return postStream(config, "/api/llm/query/stream", body, signal);
}

const messagePath = (sessionId: string, messageId: string, action: "edit" | "regenerate") =>
  `/api/llm/sessions/${encodeURIComponent(sessionId)}/messages/${encodeURIComponent(messageId)}/${action}`;

/** Ask a user message again with new text: a new branch beside it, streamed as a chat turn (the same events). */
export function streamEdit(
  config: ApiConfig, sessionId: string, messageId: string, body: EditBody, signal?: AbortSignal,
): AsyncGenerator<ChatStreamEvent> {
  return postStream(config, messagePath(sessionId, messageId, "edit"), body, signal);
}

/** Answer a reply's question again: a new reply beside it, streamed as a chat turn (the same events). */
export function streamRegenerate(
  config: ApiConfig, sessionId: string, messageId: string, body: RegenerateBody, signal?: AbortSignal,
): AsyncGenerator<ChatStreamEvent> {
  return postStream(config, messagePath(sessionId, messageId, "regenerate"), body, signal);
}

/**
 * Join a run from any tab: without `lastEventId`, the reply so far then live text; with one, exactly
 * the events after it (a reconnect). A run ended past the server's replay window: ApiError 404
 * `run_not_found`.
 */
export async function* followRun(
  config: ApiConfig, sessionId: string, runId: string, lastEventId: string | null, signal?: AbortSignal,
): AsyncGenerator<ChatStreamEvent> {
  const headers: Record<string, string> = { ...requestHeaders(config), Accept: "text/event-stream" };
  if (lastEventId !== null) headers["Last-Event-ID"] = lastEventId;
  const url = `${config.baseUrl}/api/llm/sessions/${encodeURIComponent(sessionId)}/runs/${encodeURIComponent(runId)}/stream`;
  const response = await fetch(url, { credentials: "include", headers, signal });
  yield* chatEvents(response, lastEventId);
}

// --- live events: GET /api/llm/events --------------------------------------------------------------

export type SessionEvent =
  | Schemas["SessionCreatedEvent"]
  | Schemas["SessionUpdatedEvent"]
  | Schemas["SessionDeletedEvent"]
  | Schemas["RunStartedEvent"]
  | Schemas["RunQueuedEvent"]
  | Schemas["RunFinishedEvent"]
  | Schemas["UsageUpdatedEvent"]
  | Schemas["ResetEvent"]
  | Schemas["AuthExpiredEvent"];

export interface EventsHandlers {
  onEvent(event: SessionEvent): void;
  /** The stream is (re)connected; `resumed` when it continues from a Last-Event-ID. */
  onOpen?(resumed: boolean): void;
  onError?(error: unknown): void;
}

/**
 * Follow the caller's session events until `signal` aborts: reconnects by itself (backing off,
 * or after the server's `retry:`), resuming with Last-Event-ID so nothing is missed. Stops on
 * 401/403 and on `auth_expired` (sign in again).
 */
export async function followEvents(config: ApiConfig, handlers: EventsHandlers, signal: AbortSignal): Promise<void> {
  let lastEventId: string | null = null;
  let delay = 500;
  let retryMs: number | null = null;
  while (!signal.aborted) {
    try {
      const headers: Record<string, string> = { ...requestHeaders(config), Accept: "text/event-stream" };
      if (lastEventId !== null) headers["Last-Event-ID"] = lastEventId;
      const response = await fetch(`${config.baseUrl}/api/llm/events`, { credentials: "include", headers, signal });
      if (!response.ok || !response.body) {
        const error = apiError(response, await response.json().catch(() => null));
        if (response.status === 401 || response.status === 403) {
          handlers.onEvent({ type: "auth_expired" });
          return;
        }
        throw error;
      }
      handlers.onOpen?.(lastEventId !== null);
      delay = 500;
      for await (const item of parseSse(response.body, lastEventId)) {
        if (item.kind === "retry") retryMs = item.milliseconds;
        if (item.kind !== "event") continue;
        lastEventId = item.id;
        const data = JSON.parse(item.data) as Record<string, unknown>;
        const event = { ...data, type: (data.type as string | undefined) ?? item.event } as SessionEvent;
        handlers.onEvent(event);
        if (event.type === "auth_expired") return;
      }
    } catch (error) {
      if (signal.aborted) return;
      if (!(error instanceof ApiError) || error.status >= 500) handlers.onError?.(error);
    }
    if (signal.aborted) return;
    await pause(retryMs ?? delay, signal);
    delay = Math.min(delay * 2, 10_000);
  }
}

function pause(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    const timer = setTimeout(done, ms);
    signal.addEventListener("abort", done, { once: true });
    function done() {
      clearTimeout(timer);
      signal.removeEventListener("abort", done);
      resolve();
    }
  });
}
