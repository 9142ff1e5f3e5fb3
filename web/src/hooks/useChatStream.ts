// One chat: its messages, and the replies being written in it (runs), from this tab or any other.
//
// A reply is a run that belongs to the session, not to this page: closing the stream leaves it
// running. So this hook
// - joins a running run when the chat opens (a reload mid-reply resumes it in place; the run this
//   tab started is remembered in sessionStorage with its question),
// - joins a run another tab started (`joinRun`, on the events stream's `run.started`),
// - reconnects a dropped stream from the last event id it saw (never a character twice),
// - stops a run with the cancel endpoint, which works from any tab (the text so far is kept),
// - sends a second message while a reply runs with the strategy the user chose (queue by default),
// - edits a question or regenerates a reply (a new branch, streamed like a turn), switches between
//   branches and rates replies: what the server answers is the path shown.
import { useCallback, useEffect, useRef, useState } from "react";
import { ApiError, apiError, requestHeaders, unwrap, type Api, type ApiConfig, type Message } from "../api/client";
import {
  followRun, streamChat, streamEdit, streamRegenerate, type ChatStreamEvent, type MultitaskStrategy,
} from "../api/sse";

export type MessageStatus = "queued" | "streaming" | "stopped" | "interrupted" | "failed";

export type Feedback = NonNullable<Message["feedback"]>;
export type Rating = Feedback["rating"];

export interface ChatMessage {
  key: string;
  /** The server's id: set once the turn is saved (edit, regenerate, switch and rate need it). */
  id?: string;
  role: Message["role"];
  content: string;
  status?: MessageStatus;
  runId?: string;
  /** This message and its other versions (edits of a question, answers to it), oldest first. */
  siblingIds?: string[];
  siblingIndex?: number;
  feedback?: Feedback | null;
}

/** What a turn asks: a new message, a question asked again with new text, or a reply written again. */
export type TurnRequest =
  | { kind: "send"; query: string; strategy: MultitaskStrategy }
  | { kind: "edit"; messageId: string; query: string }
  | { kind: "regenerate"; messageId: string };

export type SendOutcome = "done" | "stopped" | "failed" | "refused";

/** The run this tab started in a session, so a reload can show its question and resume it. */
interface RememberedRun {
  runId: string;
  query?: string; // none for a regenerated reply
}

const RUN_KEY = (sessionId: string) => `chats:run:${sessionId}`;
const RECONNECTS = 5;
/** Opening a search hit reads older pages of the path until the message is there: at most this many. */
const MAX_OLDER_PAGES = 25;

function remembered(sessionId: string): RememberedRun | null {
  try {
    return JSON.parse(sessionStorage.getItem(RUN_KEY(sessionId)) ?? "null") as RememberedRun | null;
  } catch {
    return null;
  }
}

let keys = 0;
const nextKey = () => `m${++keys}`;

function fromServer(m: Message): ChatMessage {
  return {
    key: `id:${m.id}`, id: m.id, role: m.role, content: m.content, ...(m.status ? { status: m.status } : {}),
    siblingIds: m.sibling_ids, siblingIndex: m.sibling_index, feedback: m.feedback ?? null,
  };
}

export function useChatStream(api: Api, config: ApiConfig, sessionId: string | null, onServer: boolean,
                              onTurnEnd?: (sessionId: string) => void) {
  const [messages, setMessages] = useState<ChatMessage[]>([]);
  const [error, setError] = useState<unknown>(null);
  const [failedQuery, setFailedQuery] = useState<string | null>(null);
  const [loaded, setLoaded] = useState(false);
  const [opened, setOpened] = useState<{ name: string; archived: boolean } | null>(null); // as the server has it
  const readers = useRef(new Map<string, AbortController>()); // run id (or a send's key) -> its stream
  const followed = useRef(new Set<string>()); // run ids this page shows
  const pending = useRef(new Set<Promise<void>>()); // sends whose run id has not come yet
  const reloadRef = useRef<(resume: boolean) => Promise<void>>(async () => undefined);
  const shown = useRef(0); // each history read or branch switch: only the newest one's path is shown
  // The saved path on screen: a contiguous part of it from position `start` (older pages prepend).
  const history = useRef<{ start: number; messages: Message[] }>({ start: 0, messages: [] });
  const opening = useRef<Promise<void>>(Promise.resolve()); // the open chat's first read
  const known = useRef(onServer);
  known.current = onServer;
  const session = useRef(sessionId);
  session.current = sessionId;
  const turnEnd = useRef(onTurnEnd);
  turnEnd.current = onTurnEnd;

  const update = useCallback((match: (m: ChatMessage) => boolean, change: (m: ChatMessage) => ChatMessage | null) => {
    setMessages((list) => {
      const out: ChatMessage[] = [];
      for (const m of list) {
        if (!match(m)) out.push(m);
        else {
          const changed = change(m);
          if (changed) out.push(changed);
        }
      }
      return out;
    });
  }, []);

  /** Show the server's path; keep what this tab is still writing (not in the history until its turn
   *  ends) and a question the model failed to answer (Retry). */
  const showPath = useCallback((path: Message[]) => {
    setMessages((list) => {
      // A message already on screen keeps its key (React keeps its element: no flicker, focus stays).
      const keys = new Map(list.filter((m) => m.id).map((m) => [m.id!, m.key]));
      const history = path.map((m) => {
        const shown = fromServer(m);
        return { ...shown, key: keys.get(m.id) ?? shown.key };
      });
      const live = list.filter((m) => !m.id && ((m.runId !== undefined && readers.current.has(m.runId))
        || readers.current.has(m.key.replace(/:q$/, "")) || (m.role === "user" && m.status === "failed")));
      // A question being answered may already be saved (a full history writes each step): once.
      const first = live[0];
      const last = history.at(-1);
      if (first?.role === "user" && !first.id && last?.role === "user" && last.content === first.content) history.pop();
      return [...history, ...live];
    });
  }, []);

  /** Show a page of the server's path (its newest messages, from position `start`). Older pages read
   *  before (to reach a search hit) stay on screen while the page still follows them. */
  const showPage = useCallback((page: Message[], start: number) => {
    const had = history.current;
    const at = start - had.start;
    const follows = at > 0 && at < had.messages.length && had.messages[at]?.id === page[0]?.id;
    history.current = follows ? { start: had.start, messages: [...had.messages.slice(0, at), ...page] } : { start, messages: page };
    showPath(history.current.messages);
  }, [showPath]);

  /** Read a run's events into the assistant message `key` until its end; reconnect from the last id. */
  const read = useCallback(async (
    sid: string, key: string, first: AsyncGenerator<ChatStreamEvent> | null, runId: string | null,
    controller: AbortController,
  ): Promise<{ outcome: SendOutcome; error?: unknown }> => {
    let lastId: string | null = null;
    let run = runId;
    let stream = first;
    let attempts = 0;
    const inThisChat = () => session.current === sid;
    for (;;) {
      try {
        if (!stream) stream = followRun(config, sid, run!, lastId, controller.signal);
        for await (const event of stream) {
          attempts = 0;
          if (event.id !== null) lastId = event.id;
          if (event.event === "run") {
            run = event.data.run_id;
            followed.current.add(run);
            readers.current.set(run, controller);
            const queued = event.data.status === "queued";
            update((m) => m.key === key || m.key === `${key}:q`, (m) => ({
              ...m, runId: run!, status: m.role === "user" ? (queued ? "queued" : undefined) : queued ? "queued" : "streaming",
            }));
          } else if (event.event === "token") {
            const text = event.data.content;
            update((m) => m.key === key, (m) => ({ ...m, content: m.content + text, status: "streaming" }));
            update((m) => m.key === `${key}:q`, (m) => ({ ...m, status: undefined }));
          } else if (event.event === "done") {
            // Saved: the messages' ids (the path read next keeps these bubbles, by id).
            const { user_message_id: asked, assistant_message_id: answered } = event.data;
            update((m) => m.key === key, (m) => ({ ...m, status: undefined, ...(answered ? { id: answered } : {}) }));
            if (asked) update((m) => m.key === `${key}:q`, (m) => ({ ...m, id: asked }));
            return { outcome: "done" };
          } else {
            const { code, message } = event.data;
            if (code === "cancelled") {
              update((m) => m.key === key, (m) => (m.content ? { ...m, status: "stopped" } : null));
              update((m) => m.key === `${key}:q`, (m) => ({ ...m, status: undefined }));
              return { outcome: "stopped" };
            }
            const failure = new ApiError(200, code, message);
            if (code === "interrupted") {
              update((m) => m.key === key, (m) => (m.content ? { ...m, status: "interrupted" } : null));
              return { outcome: "failed", error: failure };
            }
            // The model failed: no empty bubble; the question stays, marked, with Retry.
            update((m) => m.key === key, (m) => (m.content ? { ...m, status: "failed" } : null));
            update((m) => m.key === `${key}:q`, (m) => ({ ...m, status: "failed" }));
            return { outcome: "failed", error: failure };
          }
        }
        if (controller.signal.aborted) return { outcome: "stopped" };
        throw new TypeError("the stream ended early");
      } catch (e) {
        if (controller.signal.aborted || !inThisChat()) return { outcome: "stopped" };
        if (run === null || e instanceof ApiError || attempts >= RECONNECTS) throw e;
        // The connection dropped (network, sleep): the run goes on; rejoin after the last event seen.
        attempts += 1;
        stream = null;
        await new Promise((resolve) => setTimeout(resolve, 250 * 2 ** attempts));
      }
    }
  }, [config, update]);

  /** Show a run written elsewhere (another tab, or this one before a reload) as it is written. */
  const joinRun = useCallback(async (runId: string, question?: string) => {
    const sid = session.current;
    // A run.started may come before this tab's own send has read its run's id: wait for those first.
    await Promise.all([...pending.current]);
    if (!sid || session.current !== sid || followed.current.has(runId)) return;
    followed.current.add(runId);
    const key = nextKey();
    const controller = new AbortController();
    readers.current.set(runId, controller);
    setMessages((list) => {
      const asked = question !== undefined && !(list.at(-1)?.role === "user" && list.at(-1)?.content === question);
      return [
        ...list,
        ...(asked ? [{ key: `${key}:q`, role: "user" as const, content: question!, runId }] : []),
        { key, role: "assistant" as const, content: "", status: "streaming" as const, runId },
      ];
    });
    try {
      const { error: failure } = await read(sid, key, null, runId, controller);
      if (controller.signal.aborted || session.current !== sid) return;
      if (failure) setError(failure);
      // The turn is saved: its question (which this tab may not have seen) comes with the history.
      if (readers.current.get(runId) === controller) readers.current.delete(runId);
      await reloadRef.current(false).catch(() => undefined);
      turnEnd.current?.(sid);
    } catch (e) {
      if (session.current !== sid) return;
      // Ended past the replay window, or never ours: the saved history says what happened.
      update((m) => m.key === key, () => null);
      if (!(e instanceof ApiError && e.status === 404)) setError(e);
      turnEnd.current?.(sid);
    } finally {
      if (readers.current.get(runId) === controller) readers.current.delete(runId);
      if (remembered(sid)?.runId === runId) sessionStorage.removeItem(RUN_KEY(sid));
    }
  }, [read, update]);

  /** The history, then any run still being written in it (resumed in place). */
  const reload = useCallback(async (resume: boolean) => {
    const sid = session.current;
    if (!sid || !known.current) return;
    const seq = ++shown.current;
    const result = await api.GET("/api/llm/sessions/{session_id}", {
      params: { path: { session_id: sid }, query: { include_messages: true } },
    });
    if (session.current !== sid) return;
    if (result.response.status === 404) {
      setLoaded(true);
      return;
    }
    const body = unwrap(result);
    setOpened({ name: body.data.session_name, archived: body.data.is_archived });
    if (seq === shown.current) showPage(body.messages ?? [], body.messages_start ?? 0);
    setLoaded(true);
    if (!resume) return;
    const runs = unwrap(await api.GET("/api/llm/sessions/{session_id}/runs", { params: { path: { session_id: sid } } })).data;
    if (session.current !== sid) return;
    const mine = remembered(sid);
    for (const run of runs) {
      if (run.status === "running" || run.status === "queued") {
        void joinRun(run.run_id, mine?.runId === run.run_id ? mine.query : undefined);
      }
    }
  }, [api, joinRun, showPage]);

  reloadRef.current = reload;

  // Opening a chat: its history, and its running reply. Leaving it closes this page's streams
  // (the replies go on, on the server).
  useEffect(() => {
    setMessages([]);
    setError(null);
    setFailedQuery(null);
    setOpened(null);
    setLoaded(!known.current);
    followed.current = new Set();
    history.current = { start: 0, messages: [] };
    opening.current = Promise.resolve();
    if (sessionId && known.current) {
      opening.current = reload(true).catch((e: unknown) => {
        if (session.current === sessionId) setError(e);
      });
    }
    const open = readers.current;
    return () => {
      for (const controller of open.values()) controller.abort();
      open.clear();
    };
  }, [sessionId, reload]);

  /** A turn: send a message (while a reply is being written, `strategy` says what happens: queue it,
   *  or stop that reply), or ask a question again with new text (edit), or write a reply again
   *  (regenerate). An edit or a regeneration shows the path up to the message it branches from,
   *  then the new turn as it is written; once saved, the server's path (with its new picker). */
  const turn = useCallback(async (request: TurnRequest): Promise<SendOutcome> => {
    const sid = session.current;
    if (!sid) return "refused";
    const key = nextKey();
    const controller = new AbortController();
    readers.current.set(key, controller);
    setError(null);
    setFailedQuery(null);
    const query = request.kind === "regenerate" ? null : request.query;
    setMessages((list) => {
      let kept = list.filter((m) => m.status !== "failed" || m.role !== "user");
      if (request.kind !== "send") {
        const at = kept.findIndex((m) => m.id === request.messageId);
        if (at >= 0) kept = kept.slice(0, at);
      }
      return [
        ...kept,
        ...(query !== null ? [{ key: `${key}:q`, role: "user" as const, content: query }] : []),
        { key, role: "assistant" as const, content: "", status: "streaming" as const },
      ];
    });
    let runId: string | null = null;
    let outcome: SendOutcome = "refused";
    let identified = () => {};
    const identifying = new Promise<void>((resolve) => { identified = resolve; });
    pending.current.add(identifying);
    identifying.then(() => pending.current.delete(identifying));
    try {
      const stream = request.kind === "send"
        ? streamChat(config, { session_id: sid, query: request.query, multitask_strategy: request.strategy }, controller.signal)
        : request.kind === "edit"
          ? streamEdit(config, sid, request.messageId, { query: request.query }, controller.signal)
          : streamRegenerate(config, sid, request.messageId, {}, controller.signal);
      // Remember the run (with its question) for a reload, as soon as it has an id.
      const remembering = (async function* () {
        for await (const event of stream) {
          if (event.event === "run") {
            runId = event.data.run_id;
            const run: RememberedRun = query !== null ? { runId, query } : { runId };
            sessionStorage.setItem(RUN_KEY(sid), JSON.stringify(run));
            yield event;
            identified();
            continue;
          }
          yield event;
        }
      })();
      const result = await read(sid, key, remembering, null, controller);
      outcome = result.outcome;
      if (result.error && session.current === sid) {
        setError(result.error);
        if (request.kind === "send") setFailedQuery(request.query);
        // An edit or a regeneration that failed left the saved path as it was: it comes back below.
        else update((m) => m.key === key || m.key === `${key}:q`, () => null);
      }
      return outcome;
    } catch (e) {
      if (session.current !== sid) return "stopped";
      // Refused before streaming (busy, archived, 429): the question was not taken; it goes back
      // to the composer.
      update((m) => m.key === key || m.key === `${key}:q`, () => null);
      setError(e);
      outcome = runId ? "failed" : "refused";
      return outcome;
    } finally {
      identified();
      readers.current.delete(key);
      if (runId && readers.current.get(runId) === controller) readers.current.delete(runId);
      if (runId && remembered(sid)?.runId === runId) sessionStorage.removeItem(RUN_KEY(sid));
      // The turn is saved (or stopped with its text): the server's path, with the messages' ids and
      // pickers. A failed send keeps its question here for Retry; a failed branch shows the path again.
      const saved = outcome === "done" || outcome === "stopped";
      if (session.current === sid && !controller.signal.aborted && (saved || request.kind !== "send")) {
        void reloadRef.current(false).catch(() => undefined);
      }
      turnEnd.current?.(sid);
    }
  }, [config, read, update]);

  const send = useCallback((query: string, strategy: MultitaskStrategy = "enqueue") =>
    turn({ kind: "send", query, strategy }), [turn]);
  /** Ask a question again with new text: a new branch beside it (the old one stays). */
  const edit = useCallback((messageId: string, query: string) => turn({ kind: "edit", messageId, query }), [turn]);
  /** Write a reply again: a new answer beside it. */
  const regenerate = useCallback((messageId: string) => turn({ kind: "regenerate", messageId }), [turn]);

  /** Show another version of a message: the path through it (down to its newest reply) becomes the active one. */
  const switchBranch = useCallback(async (messageId: string) => {
    const sid = session.current;
    if (!sid) return;
    try {
      const result = await api.PUT("/api/llm/sessions/{session_id}/branch", {
        params: { path: { session_id: sid } }, body: { message_id: messageId },
      });
      if (session.current !== sid) return;
      const body = unwrap(result);
      shown.current += 1; // a history read still on its way must not undo this
      setOpened({ name: body.data.session_name, archived: body.data.is_archived });
      showPage(body.messages, body.messages_start);
    } catch (e) {
      if (session.current === sid) setError(e);
    }
  }, [api, showPage]);

  /** Bring a saved message on screen (a search hit): its branch becomes the active one if it is not on
   *  it, and older pages of the path are read until it is there (bounded). True once it is shown. */
  const reveal = useCallback(async (messageId: string, onActiveBranch: boolean): Promise<boolean> => {
    const sid = session.current;
    if (!sid) return false;
    await opening.current;
    const has = () => history.current.messages.some((m) => m.id === messageId);
    const readOlder = async () => {
      for (let pages = 0; !has() && history.current.start > 0 && pages < MAX_OLDER_PAGES; pages += 1) {
        const before = history.current.start;
        const result = await api.GET("/api/llm/sessions/{session_id}", {
          params: { path: { session_id: sid }, query: { include_messages: true, messages_before: before } },
        });
        if (session.current !== sid) return;
        const body = unwrap(result);
        const older = body.messages ?? [];
        if (older.length === 0) return;
        if (history.current.start !== before) continue; // the path was read again meanwhile: from its start
        history.current = { start: body.messages_start ?? 0, messages: [...older, ...history.current.messages] };
        showPath(history.current.messages);
      }
    };
    try {
      if (!onActiveBranch && !has()) await switchBranch(messageId);
      await readOlder();
      // Said to be on the path but not found there (the branch changed since the search): its own.
      if (!has() && onActiveBranch && session.current === sid) {
        await switchBranch(messageId);
        await readOlder();
      }
    } catch (e) {
      if (session.current === sid) setError(e);
    }
    return session.current === sid && has();
  }, [api, showPath, switchBranch]);

  /** Rate a reply up or down; null clears the rating. */
  const rate = useCallback(async (messageId: string, rating: Rating | null) => {
    const sid = session.current;
    if (!sid) return;
    try {
      const result = await api.PUT("/api/llm/sessions/{session_id}/messages/{message_id}/feedback", {
        params: { path: { session_id: sid, message_id: messageId } }, body: { rating },
      });
      if (session.current !== sid) return;
      const rated = unwrap(result).data;
      update((m) => m.id === messageId, (m) => ({ ...m, feedback: rated.feedback ?? null }));
    } catch (e) {
      if (session.current === sid) setError(e);
    }
  }, [api, update]);

  /** Stop the reply being written (from any tab: the server stops it; its text so far stays). */
  const stop = useCallback(async () => {
    const sid = session.current;
    const running = messages.find((m) => m.role === "assistant" && m.status === "streaming" && m.runId);
    if (!sid || !running?.runId) return;
    const response = await fetch(
      `${config.baseUrl}/api/llm/sessions/${encodeURIComponent(sid)}/runs/${encodeURIComponent(running.runId)}/cancel`,
      { method: "POST", credentials: "include", headers: requestHeaders(config) },
    );
    // 409 run_finished: it ended meanwhile; its stream says how.
    if (!response.ok && response.status !== 409) setError(apiError(response, await response.json().catch(() => null)));
  }, [config, messages]);

  /** A reply is being written in this chat (the Stop button; a new message follows the user's choice). */
  const streaming = messages.some((m) => m.role === "assistant" && m.status === "streaming");
  const follows = useCallback((runId: string) => followed.current.has(runId), []);
  const refresh = useCallback(() => reload(false), [reload]);
  /** The chat changed elsewhere (a switch, an edit, a rating in another tab): its path again, unless a
   *  reply is being written here (its end reads the path anyway). */
  const refreshIfIdle = useCallback(() => {
    if (readers.current.size > 0 || pending.current.size > 0) return;
    void reload(false).catch(() => undefined);
  }, [reload]);

  /** The open chat as an event or a response says it is now (it may have left the list: archived elsewhere). */
  const noteSession = useCallback((s: { session_name: string; is_archived: boolean }) => {
    setOpened({ name: s.session_name, archived: s.is_archived });
  }, []);

  return {
    messages, streaming, error, setError, failedQuery, loaded, opened, noteSession,
    send, edit, regenerate, switchBranch, rate, stop, joinRun, follows, reload: refresh, refreshIfIdle, reveal,
  };
}
