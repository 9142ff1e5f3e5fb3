// One chat: its messages, and the replies being written in it (runs), from this tab or any other.
//
// A reply is a run that belongs to the session, not to this page: closing the stream leaves it
// running. So this hook
// - joins a running run when the chat opens (a reload mid-reply resumes it in place; the run this
//   tab started is remembered in sessionStorage with its question),
// - joins a run another tab started (`joinRun`, on the events stream's `run.started`),
// - reconnects a dropped stream from the last event id it saw (never a character twice),
// - stops a run with the cancel endpoint, which works from any tab (the text so far is kept),
// - sends a second message while a reply runs with the strategy the user chose (queue by default).
import { useCallback, useEffect, useRef, useState } from "react";
import { ApiError, apiError, requestHeaders, unwrap, type Api, type ApiConfig, type Message } from "../api/client";
import { followRun, streamChat, type ChatStreamEvent, type MultitaskStrategy } from "../api/sse";

export type MessageStatus = "queued" | "streaming" | "stopped" | "interrupted" | "failed";

export interface ChatMessage {
  key: string;
  role: Message["role"];
  content: string;
  status?: MessageStatus;
  runId?: string;
}

export type SendOutcome = "done" | "stopped" | "failed" | "refused";

/** The run this tab started in a session, so a reload can show its question and resume it. */
interface RememberedRun {
  runId: string;
  query: string;
}

const RUN_KEY = (sessionId: string) => `chats:run:${sessionId}`;
const RECONNECTS = 5;

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
  return { key: nextKey(), role: m.role, content: m.content, ...(m.status ? { status: m.status } : {}) };
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
            update((m) => m.key === key, (m) => ({ ...m, status: undefined }));
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
    const history = (body.messages ?? []).map(fromServer);
    // Keep the runs this tab is still showing (they are not in the history until they end).
    setMessages((list) => [...history, ...list.filter((m) => m.runId && readers.current.has(m.runId))]);
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
  }, [api, joinRun]);

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
    if (sessionId && known.current) {
      reload(true).catch((e: unknown) => {
        if (session.current === sessionId) setError(e);
      });
    }
    const open = readers.current;
    return () => {
      for (const controller of open.values()) controller.abort();
      open.clear();
    };
  }, [sessionId, reload]);

  /** Send a message. While a reply is being written: `strategy` says what happens (queue it, or stop that reply). */
  const send = useCallback(async (query: string, strategy: MultitaskStrategy = "enqueue"): Promise<SendOutcome> => {
    const sid = session.current;
    if (!sid) return "refused";
    const key = nextKey();
    const controller = new AbortController();
    readers.current.set(key, controller);
    setError(null);
    setFailedQuery(null);
    setMessages((list) => [
      ...list.filter((m) => m.status !== "failed" || m.role !== "user"),
      { key: `${key}:q`, role: "user", content: query },
      { key, role: "assistant", content: "", status: "streaming" },
    ]);
    let runId: string | null = null;
    let identified = () => {};
    const identifying = new Promise<void>((resolve) => { identified = resolve; });
    pending.current.add(identifying);
    identifying.then(() => pending.current.delete(identifying));
    try {
      const stream = streamChat(config, { session_id: sid, query, multitask_strategy: strategy }, controller.signal);
      // Remember the run (with its question) for a reload, as soon as it has an id.
      const remembering = (async function* () {
        for await (const event of stream) {
          if (event.event === "run") {
            runId = event.data.run_id;
            sessionStorage.setItem(RUN_KEY(sid), JSON.stringify({ runId, query } satisfies RememberedRun));
            yield event;
            identified();
            continue;
          }
          yield event;
        }
      })();
      const { outcome, error: failure } = await read(sid, key, remembering, null, controller);
      if (failure && session.current === sid) {
        setError(failure);
        setFailedQuery(query);
      }
      return outcome;
    } catch (e) {
      if (session.current !== sid) return "stopped";
      // Refused before streaming (busy, archived, 429): the question was not taken; it goes back
      // to the composer.
      update((m) => m.key === key || m.key === `${key}:q`, () => null);
      setError(e);
      return runId ? "failed" : "refused";
    } finally {
      identified();
      readers.current.delete(key);
      if (runId && readers.current.get(runId) === controller) readers.current.delete(runId);
      if (runId && remembered(sid)?.runId === runId) sessionStorage.removeItem(RUN_KEY(sid));
      turnEnd.current?.(sid);
    }
  }, [config, read, update]);

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

  /** The open chat as an event or a response says it is now (it may have left the list: archived elsewhere). */
  const noteSession = useCallback((s: { session_name: string; is_archived: boolean }) => {
    setOpened({ name: s.session_name, archived: s.is_archived });
  }, []);

  return {
    messages, streaming, error, setError, failedQuery, loaded, opened, noteSession,
    send, stop, joinRun, follows, reload: refresh,
  };
}
