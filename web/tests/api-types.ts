// Compiled (never run) by `npm run typecheck` with tsc --strict: every operation of the API
// through the generated types, with the bodies, parameters and responses a client relies on.
// Each `@ts-expect-error` is a promise that a wrong call does NOT compile; if the types loosen
// (or an optional field turns required), tsc fails here.
import { createApi } from "../src/api/client";
import type { components, operations, paths } from "../src/api/schema";

type Schemas = components["schemas"];
// The app's own client (openapi-fetch, with each operation's options type fixed: see client.ts).
const api = createApi({ baseUrl: "http://127.0.0.1:5000", token: null });

type Equal<A, B> = (<T>() => T extends A ? 1 : 2) extends (<T>() => T extends B ? 1 : 2) ? true : false;
function assertType<T extends true>(): T | void {}

// The error shape, the same for every failure.
function readError(e: Schemas["ErrorResponse"]): string {
  const success: false = e.success;
  const fields: Record<string, string> | null | undefined = e.error.fields;
  return `${success} ${e.error.code}: ${e.error.message} ${fields ? Object.keys(fields).join() : ""}`;
}

export async function everyOperation(): Promise<void> {
  // --- health
  const health = await api.GET("/healthz");
  if (health.data) { const ok: true = health.data.success; void ok; }
  const ready = await api.GET("/readyz");
  void ready.data?.success;

  // --- auth
  const login = await api.POST("/api/auth/login", { body: { email: "a@b.c", password: "pw" } });
  if (login.error) readError(login.error);
  else { const id: string = login.data.data.user_id; const email: string | null = login.data.data.email; void id; void email; }
  // @ts-expect-error password is required
  await api.POST("/api/auth/login", { body: { email: "a@b.c" } });
  await api.POST("/api/auth/logout");
  const all = await api.POST("/api/auth/logout-all");
  if (all.data) { const revoked: number = all.data.revoked; void revoked; }
  const me = await api.GET("/api/auth/me");
  if (me.data) { const method: string = me.data.data.auth_method; void method; }

  // --- create: every body field optional; 201 new, 200 an id the caller already has
  const created = await api.POST("/api/llm/sessions", { body: { session_name: "x" } });
  await api.POST("/api/llm/sessions", { body: { session_id: "chat-1" } });
  await api.POST("/api/llm/sessions", { body: {} });
  await api.POST("/api/llm/sessions", {});
  // @ts-expect-error the name is optional, not nullable
  await api.POST("/api/llm/sessions", { body: { session_name: null } });
  // @ts-expect-error an id is a string
  await api.POST("/api/llm/sessions", { body: { session_id: 5 } });
  if (created.error) readError(created.error);
  else {
    const status: number = created.response.status; // 201 created, 200 already there
    const s: Schemas["SessionOut"] = created.data.data;
    const sid: string = created.data.session_id;
    const tid: string = created.data.thread_id;
    void status; void sid; void tid;
    const when: string | null = s.last_message_at;
    const fields: [string, string, boolean, number, string, string, boolean] =
      [s.session_id, s.session_name, s.is_archived, s.message_count, s.created_at, s.updated_at, s.has_unread];
    void when; void fields;
  }
  type CreateResponses = operations["sessions_create_session_post"]["responses"];
  assertType<Equal<CreateResponses[201]["content"]["application/json"], Schemas["SessionCreatedResponse"]>>();
  assertType<Equal<CreateResponses[200]["content"]["application/json"], Schemas["SessionCreatedResponse"]>>();
  assertType<Equal<CreateResponses[409]["content"]["application/json"], Schemas["ErrorResponse"]>>();

  // --- list: every parameter optional, search with q, cursor paging
  const page = await api.GET("/api/llm/sessions", {
    params: { query: { q: "land", include_archived: true, unread: false, limit: 50, cursor: "abc" } },
  });
  await api.GET("/api/llm/sessions");
  await api.GET("/api/llm/sessions", { params: { query: { offset: 100 } } });
  // @ts-expect-error limit is a number
  await api.GET("/api/llm/sessions", { params: { query: { limit: "50" } } });
  if (page.data) {
    const next: string | null = page.data.next_cursor;
    const counts: number[] = [page.data.count, page.data.total, page.data.limit, page.data.offset];
    const names: string[] = page.data.data.map((s) => s.session_name);
    void next; void counts; void names;
  } else if (page.error) readError(page.error);

  // --- one session, with or without messages (those fields only when asked: optional)
  const one = await api.GET("/api/llm/sessions/{session_id}", {
    params: { path: { session_id: "chat-1" }, query: { include_messages: true, messages_limit: 100, messages_before: 20 } },
  });
  if (one.data) {
    const messages = one.data.messages ?? [];
    const roles: ("user" | "assistant")[] = messages.map((m) => m.role);
    const start: number | null | undefined = one.data.messages_start;
    void roles; void start;
    // @ts-expect-error messages may be absent: check before use
    void one.data.messages.length;
  }
  // @ts-expect-error the path parameter is required
  await api.GET("/api/llm/sessions/{session_id}", {});

  // --- update: either field alone
  await api.PUT("/api/llm/sessions/{session_id}", { params: { path: { session_id: "chat-1" } }, body: { is_archived: true } });
  const renamed = await api.PUT("/api/llm/sessions/{session_id}", {
    params: { path: { session_id: "chat-1" } }, body: { session_name: "New name" },
  });
  if (renamed.data) { const name: string = renamed.data.data.session_name; void name; }
  // @ts-expect-error is_archived is a boolean
  await api.PUT("/api/llm/sessions/{session_id}", { params: { path: { session_id: "chat-1" } }, body: { is_archived: "yes" } });
  // @ts-expect-error a misspelt field is not in the (closed) body
  await api.PUT("/api/llm/sessions/{session_id}", { params: { path: { session_id: "chat-1" } }, body: { session_nam: "x" } });
  // @ts-expect-error nor in a create's
  await api.POST("/api/llm/sessions", { body: { session_nam: "x" } });
  // @ts-expect-error nor in a chat turn's
  await api.POST("/api/llm/query/stream", { body: { session_id: "chat-1", query: "Hi", strategy: "enqueue" } });

  // --- delete (with a recovery point), restore, bulk delete
  const deleted = await api.DELETE("/api/llm/sessions/{session_id}", {
    params: { path: { session_id: "chat-1" }, query: { backup: true, force: false } },
  });
  if (deleted.data) {
    const rows: Record<string, number> = deleted.data.deleted;
    const backupId: string | undefined = deleted.data.backup?.backup_id;
    void rows; void backupId;
  } else if (deleted.error) readError(deleted.error);
  const restored = await api.POST("/api/llm/sessions/restore", { body: { backup_id: "00000000-0000-0000-0000-000000000000" } });
  if (restored.data) void restored.data.data.session_id;
  const bulk = await api.POST("/api/llm/sessions/bulk-delete", { body: { session_ids: ["a", "b"] } });
  await api.POST("/api/llm/sessions/bulk-delete", { body: { filter: { archived: true }, backup: true, force: false } });
  await api.POST("/api/llm/sessions/bulk-delete", { body: { filter: { inactive_days: 30 } } });
  if (bulk.data) {
    const statuses: ("deleted" | "not_found" | "busy")[] = bulk.data.results.map((r) => r.status);
    const more: boolean = bulk.data.more;
    const n: number = bulk.data.deleted_count;
    void statuses; void more; void n;
  }

  // --- read, export, import
  const read = await api.POST("/api/llm/sessions/{session_id}/read", { params: { path: { session_id: "chat-1" } } });
  if (read.data) { const unread: boolean = read.data.data.has_unread; void unread; }
  const exported = await api.GET("/api/llm/sessions/{session_id}/export", { params: { path: { session_id: "chat-1" } } });
  if (exported.data) {
    const format: "chat-session/v1" | "chat-session/v2" = exported.data.format;
    void format;
    const imported = await api.POST("/api/llm/sessions/import", {
      body: { format: "chat-session/v1", messages: exported.data.messages.map((m) => ({ role: m.role, content: m.content })) },
    });
    if (imported.data) void imported.data.data.session_id;
  }
  await api.POST("/api/llm/sessions/import", {
    body: { format: "chat-session/v1", session: { session_name: "Copy" }, session_id: "copy-1",
            messages: [{ role: "user", content: "hi", created_at: null }] },
  });

  // --- streams: their request side is typed too (the reply is read with src/api/sse.ts)
  type StreamBody = NonNullable<operations["chat_query_stream_query_stream_post"]["requestBody"]>["content"]["application/json"];
  const turn: StreamBody = { session_id: "chat-1", query: "Hello" };
  // @ts-expect-error the query is required
  const noQuery: StreamBody = { session_id: "chat-1" };
  void turn; void noQuery;
  type EventsQuery = NonNullable<operations["events_events_events_get"]["parameters"]["query"]>;
  const resume: EventsQuery = { last_event_id: "42" };
  void resume;
  // An edit and a regeneration stream like a turn (their bodies are typed; src/api/sse.ts sends them).
  const edited: Schemas["EditBody"] = { query: "Again", multitask_strategy: "interrupt" };
  // @ts-expect-error an edit cannot be queued
  const queuedEdit: Schemas["EditBody"] = { query: "Again", multitask_strategy: "enqueue" };
  const regenerated: Schemas["RegenerateBody"] = {};
  void edited; void queuedEdit; void regenerated;

  // --- branches and ratings
  const message = { params: { path: { session_id: "chat-1", message_id: "m-1" } } };
  const switched = await api.PUT("/api/llm/sessions/{session_id}/branch", {
    params: { path: { session_id: "chat-1" } }, body: { message_id: "m-2" },
  });
  if (switched.data) {
    const path = switched.data.messages.map((m) => `${m.id} ${m.parent_id ?? "-"} ${m.sibling_index + 1}/${m.sibling_ids.length}`);
    const more: boolean = switched.data.has_more_messages;
    void path; void more;
  }
  // @ts-expect-error the message to switch to is required
  await api.PUT("/api/llm/sessions/{session_id}/branch", { params: { path: { session_id: "chat-1" } }, body: {} });
  const rated = await api.PUT("/api/llm/sessions/{session_id}/messages/{message_id}/feedback", {
    ...message, body: { rating: "up", comment: "Clear" },
  });
  if (rated.data) { const rating: "up" | "down" | undefined = rated.data.data.feedback?.rating; void rating; }
  await api.PUT("/api/llm/sessions/{session_id}/messages/{message_id}/feedback", { ...message, body: { rating: null } });
  // @ts-expect-error a rating is up, down or null
  await api.PUT("/api/llm/sessions/{session_id}/messages/{message_id}/feedback", { ...message, body: { rating: "meh" } });

  // --- usage: a session's cost, the caller's totals and quotas
  const cost = await api.GET("/api/llm/sessions/{session_id}/usage", { params: { path: { session_id: "chat-1" } } });
  if (cost.data) { const micros: number = cost.data.data.cost_micros; const currency: string = cost.data.data.currency; void micros; void currency; }
  const totals = await api.GET("/api/llm/usage", { params: { query: { group_by: "model", limit: 10 } } });
  if (totals.data) {
    const left: (number | null)[] = totals.data.quotas.map((q) => q.tokens_left);
    const spent: number = totals.data.total.cost_micros;
    void left; void spent;
  }
  // @ts-expect-error usage groups by day, model or session
  await api.GET("/api/llm/usage", { params: { query: { group_by: "week" } } });
}
