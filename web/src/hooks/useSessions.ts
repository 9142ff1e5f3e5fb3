// The session list: localStorage first (shown at once), then the server's pages, kept current by
// live events. The server wins for every session it knows (names, counts, flags). A session made
// here lives only in this browser (no request at all) until its first message creates it on the
// server; such local sessions stay listed across reloads and reconciliations.
import { useCallback, useEffect, useRef, useState } from "react";
import { ApiError, unwrap, type Api, type Session } from "../api/client";
import { newerRow } from "../api/freshness";
import type { SessionEvent } from "../api/sse";

export type ListedSession = Session & { local?: boolean };

export interface ListFilter {
  q: string;
  includeArchived: boolean;
}

export interface DeletedSession {
  session: ListedSession;
  backupId: string | null; // null: nothing to restore on the server (a local session)
}

const PAGE = 30;

function activity(s: Session): string {
  return s.last_message_at ?? s.created_at;
}

function byActivity(a: Session, b: Session): number {
  return activity(b).localeCompare(activity(a)) || b.session_id.localeCompare(a.session_id);
}

export function newSessionId(): string {
  const alphabet = "abcdefghijklmnopqrstuvwxyz0123456789";
  const random = Array.from(crypto.getRandomValues(new Uint8Array(10)), (b) => alphabet[b % alphabet.length]).join("");
  return `chat-${Date.now()}-${random}`;
}

export function localSession(sessionId = newSessionId()): ListedSession {
  const now = new Date().toISOString();
  return {
    session_id: sessionId, thread_id: "", session_name: "New Chat", is_archived: false, message_count: 0,
    created_at: now, updated_at: now, last_message_at: null, has_unread: false, local: true,
  };
}

function readCache(key: string): ListedSession[] {
  try {
    const value = JSON.parse(localStorage.getItem(key) ?? "[]") as unknown;
    return Array.isArray(value) ? (value as ListedSession[]) : [];
  } catch {
    return [];
  }
}

function matches(session: Session, filter: ListFilter): boolean {
  if (session.is_archived && !filter.includeArchived) return false;
  return !filter.q || session.session_name.toLowerCase().includes(filter.q.toLowerCase());
}

export function useSessions(api: Api, userKey: string, filter: ListFilter) {
  const cacheKey = `chats:v1:${userKey}`;
  const plainView = !filter.q && !filter.includeArchived; // the view the cache keeps
  const [sessions, setSessions] = useState<ListedSession[]>(() => (plainView ? readCache(cacheKey) : []));
  const [nextCursor, setNextCursor] = useState<string | null>(null);
  const [loading, setLoading] = useState(false);
  const [error, setError] = useState<unknown>(null);
  const [busy, setBusy] = useState<ReadonlySet<string>>(new Set());
  const generation = useRef(0); // a newer load makes older answers stale
  const filterRef = useRef(filter);
  filterRef.current = filter;

  // Keep the cache: the plain view's sessions, local ones included.
  useEffect(() => {
    if (plainView) localStorage.setItem(cacheKey, JSON.stringify(sessions));
  }, [cacheKey, plainView, sessions]);

  const reload = useCallback(async () => {
    const mine = ++generation.current;
    setLoading(true);
    try {
      const page = unwrap(await api.GET("/api/llm/sessions", {
        params: { query: { limit: PAGE, include_archived: filter.includeArchived, ...(filter.q ? { q: filter.q } : {}) } },
      }));
      if (mine !== generation.current) return;
      setSessions((current) => {
        const known = new Set(page.data.map((s) => s.session_id));
        const localOnly = current.filter((s) => s.local && !known.has(s.session_id) && matches(s, filterRef.current));
        const held = new Map(current.map((s) => [s.session_id, s]));
        // A change that an event brought while the page was on its way stays.
        const rows = page.data.map((s) => newerRow(held.get(s.session_id), s)).filter((s) => matches(s, filterRef.current));
        return [...rows, ...localOnly].sort(byActivity);
      });
      setNextCursor(page.next_cursor);
      setError(null);
    } catch (e) {
      if (mine === generation.current) setError(e);
    } finally {
      if (mine === generation.current) setLoading(false);
    }
  }, [api, filter.includeArchived, filter.q]);

  useEffect(() => {
    if (!plainView) setSessions([]);
    else setSessions(readCache(cacheKey));
    void reload();
  }, [reload, cacheKey, plainView]);

  const loadMore = useCallback(async () => {
    if (!nextCursor || loading) return;
    const mine = generation.current;
    setLoading(true);
    try {
      const page = unwrap(await api.GET("/api/llm/sessions", {
        params: { query: { limit: PAGE, cursor: nextCursor, include_archived: filter.includeArchived, ...(filter.q ? { q: filter.q } : {}) } },
      }));
      if (mine !== generation.current) return;
      setSessions((current) => {
        const have = new Set(current.map((s) => s.session_id));
        return [...current, ...page.data.filter((s) => !have.has(s.session_id))].sort(byActivity);
      });
      setNextCursor(page.next_cursor);
    } catch (e) {
      setError(e);
    } finally {
      if (mine === generation.current) setLoading(false);
    }
  }, [api, nextCursor, loading, filter.includeArchived, filter.q]);

  /** Put the server's view of a session in the list (or take it out if it no longer matches), unless
   *  the list already has a newer one (a response overtaken by an event, or the other way round). */
  const upsert = useCallback((incoming: Session) => {
    setSessions((current) => {
      const session = newerRow(current.find((s) => s.session_id === incoming.session_id), incoming);
      const rest = current.filter((s) => s.session_id !== session.session_id);
      return matches(session, filterRef.current) ? [...rest, session].sort(byActivity) : rest;
    });
  }, []);

  const drop = useCallback((sessionId: string) => {
    setSessions((current) => current.filter((s) => s.session_id !== sessionId));
  }, []);

  const applyEvent = useCallback((event: SessionEvent) => {
    switch (event.type) {
      case "reset":
        void reload();
        return;
      case "auth_expired":
        return;
      case "session.deleted":
        drop(event.session_id);
        return;
      case "run.started":
        setBusy((b) => new Set(b).add(event.session_id));
        break;
      case "run.finished":
        setBusy((b) => {
          const next = new Set(b);
          next.delete(event.session_id);
          return next;
        });
        break;
    }
    if ("session" in event && event.session) upsert(event.session);
  }, [drop, reload, upsert]);

  const find = useCallback((id: string) => sessions.find((s) => s.session_id === id), [sessions]);

  /** A new chat, in this browser only until its first message. An empty one already there is reused:
   *  clicking New chat twice makes one draft, not two (`inUse`: a draft whose first message is on its way). */
  const createLocal = useCallback((inUse: string | null = null): ListedSession => {
    const draft = sessions.find((s) => s.local && s.message_count === 0 && s.session_id !== inUse);
    if (draft) return draft;
    const session = localSession();
    setSessions((current) => [session, ...current]);
    return session;
  }, [sessions]);

  /** A local session made real on the server (a rename or archive of one needs a row). */
  const ensureOnServer = useCallback(async (session: ListedSession, name?: string) => {
    const created = unwrap(await api.POST("/api/llm/sessions", {
      body: { session_id: session.session_id, ...(name ? { session_name: name } : {}) },
    }));
    return created.data;
  }, [api]);

  const rename = useCallback(async (id: string, name: string) => {
    const session = find(id);
    if (session?.local) {
      upsert(await ensureOnServer(session, name));
      return;
    }
    upsert(unwrap(await api.PUT("/api/llm/sessions/{session_id}", {
      params: { path: { session_id: id } }, body: { session_name: name },
    })).data);
  }, [api, ensureOnServer, find, upsert]);

  const setArchived = useCallback(async (id: string, archived: boolean): Promise<Session> => {
    const session = find(id);
    if (session?.local) await ensureOnServer(session);
    const updated = unwrap(await api.PUT("/api/llm/sessions/{session_id}", {
      params: { path: { session_id: id } }, body: { is_archived: archived },
    })).data;
    upsert(updated);
    return updated;
  }, [api, ensureOnServer, find, upsert]);

  /** Delete, keeping a recovery point for an undo. A session the server never had just goes. */
  const remove = useCallback(async (id: string): Promise<DeletedSession | null> => {
    const session = find(id) ?? localSession(id);
    const { data, error, response } = await api.DELETE("/api/llm/sessions/{session_id}", {
      params: { path: { session_id: id }, query: { backup: true } },
    });
    if (response.status === 404) {
      drop(id);
      return session.local ? { session, backupId: null } : null;
    }
    if (!data) throw new ApiError(response.status, error?.error.code ?? "error", error?.error.message ?? "Delete failed");
    drop(id);
    return { session, backupId: data.backup?.backup_id ?? null };
  }, [api, drop, find]);

  const removeMany = useCallback(async (ids: string[]): Promise<DeletedSession[]> => {
    const result = unwrap(await api.POST("/api/llm/sessions/bulk-delete", { body: { session_ids: ids, backup: true } }));
    const gone: DeletedSession[] = [];
    for (const r of result.results) {
      const session = find(r.session_id) ?? localSession(r.session_id);
      if (r.status === "deleted" || r.status === "not_found") {
        drop(r.session_id);
        if (r.status === "deleted" || session.local) gone.push({ session, backupId: r.backup?.backup_id ?? null });
      }
    }
    const busyOnes = result.results.filter((r) => r.status === "busy");
    if (busyOnes.length) throw new ApiError(409, "session_busy", `${busyOnes.length} chat(s) still answering were kept`);
    return gone;
  }, [api, drop, find]);

  const restore = useCallback(async (deleted: DeletedSession[]) => {
    for (const d of deleted) {
      if (d.backupId === null) {
        setSessions((current) => [...current, d.session].sort(byActivity));
        continue;
      }
      upsert(unwrap(await api.POST("/api/llm/sessions/restore", { body: { backup_id: d.backupId } })).data);
    }
  }, [api, upsert]);

  const markRead = useCallback(async (id: string) => {
    const { data } = await api.POST("/api/llm/sessions/{session_id}/read", { params: { path: { session_id: id } } });
    if (data) upsert(data.data);
  }, [api, upsert]);

  /** After a turn: the server's session (its first message made it real, with a count and maybe a name). */
  const refresh = useCallback(async (id: string) => {
    const { data } = await api.GET("/api/llm/sessions/{session_id}", { params: { path: { session_id: id } } });
    if (data) upsert(data.data);
  }, [api, upsert]);

  return {
    sessions, busy, loading, error, hasMore: nextCursor !== null,
    reload, loadMore, applyEvent, createLocal, rename, setArchived, remove, removeMany, restore, markRead, refresh, find,
  };
}
