import { useCallback, useEffect, useMemo, useRef, useState } from "react";
import { flushSync } from "react-dom";
import { ApiError, createApi, describeError, unwrap, type ApiConfig, type User } from "./api/client";
import type { SessionEvent } from "./api/sse";
import { ChatView } from "./components/ChatView";
import { ConfirmDialog } from "./components/ConfirmDialog";
import { Login } from "./components/Login";
import { MessageHits } from "./components/MessageHits";
import { SessionList } from "./components/SessionList";
import { useChatStream } from "./hooks/useChatStream";
import { useEvents } from "./hooks/useEvents";
import { useMessageSearch, type SearchHit } from "./hooks/useMessageSearch";
import { useSessions, type DeletedSession } from "./hooks/useSessions";
import { describeQuota, formatCost, useUsage } from "./hooks/useUsage";

/** Every key this app keeps in localStorage starts with this (the token, each user's session list). */
const STORAGE_PREFIX = "chats:";
const TOKEN_KEY = `${STORAGE_PREFIX}token`;

/** Where the API is: VITE_API_BASE at build time, else this origin. Never from the URL or storage:
 *  credentials go only where the build says (a link must not be able to send them elsewhere). */
const API_BASE = (import.meta.env.VITE_API_BASE ?? "").replace(/\/$/, "");

// Older builds remembered a `?api=` origin here; it must not outlive them.
localStorage.removeItem(`${STORAGE_PREFIX}api-base`);

/** Sign-out leaves nothing of the user in this browser: the token, every cached session list, the
 *  runs this tab remembers for a reload. */
function forgetStoredData() {
  for (const storage of [localStorage, sessionStorage]) {
    for (const key of Object.keys(storage)) if (key.startsWith(STORAGE_PREFIX)) storage.removeItem(key);
  }
}

export function App() {
  const [config, setConfig] = useState<ApiConfig>(() => ({ baseUrl: API_BASE, token: localStorage.getItem(TOKEN_KEY) }));
  const api = useMemo(() => createApi(config), [config]);
  const [user, setUser] = useState<User | null | undefined>(undefined); // undefined: still asking

  useEffect(() => {
    let stale = false;
    api.GET("/api/auth/me").then(({ data }) => !stale && setUser(data?.data ?? null), () => !stale && setUser(null));
    return () => { stale = true; };
  }, [api]);

  const signInWithPassword = useCallback(async (email: string, password: string) => {
    localStorage.removeItem(TOKEN_KEY);
    const cookieConfig = { baseUrl: config.baseUrl, token: null };
    const result = await createApi(cookieConfig).POST("/api/auth/login", { body: { email, password } });
    setConfig(cookieConfig);
    setUser(unwrap(result).data);
  }, [config.baseUrl]);

  const signInWithToken = useCallback(async (token: string) => {
    const tokenConfig = { baseUrl: config.baseUrl, token };
    const me = unwrap(await createApi(tokenConfig).GET("/api/auth/me"));
    localStorage.setItem(TOKEN_KEY, token);
    setConfig(tokenConfig);
    setUser(me.data);
  }, [config.baseUrl]);

  const signOut = useCallback(async () => {
    if (!config.token) await api.POST("/api/auth/logout");
    // Unmount the chats first (synchronously), so none of their effects writes a cache back afterwards.
    flushSync(() => {
      setConfig({ baseUrl: config.baseUrl, token: null });
      setUser(null);
    });
    forgetStoredData();
  }, [api, config]);

  if (user === undefined) return <p className="loading">Loading…</p>;
  if (user === null) return <Login onPassword={signInWithPassword} onToken={signInWithToken} />;
  return <Chats key={user.user_id} api={api} config={config} user={user} onSignOut={signOut} onSignedOut={() => setUser(null)} />;
}

interface ChatsProps {
  api: ReturnType<typeof createApi>;
  config: ApiConfig;
  user: User;
  onSignOut(): void;
  onSignedOut(): void;
}

/** A chat's own URL: /c/<session_id> (reload keeps it, back and forward move between chats, a link opens it). */
const BASE = import.meta.env.BASE_URL.replace(/\/$/, "");

function chatFromLocation(): string | null {
  const match = /^\/c\/([^/]+)$/.exec(window.location.pathname.slice(BASE.length));
  if (!match) return null;
  try {
    return decodeURIComponent(match[1]!);
  } catch {
    return null;
  }
}

function useChatRoute(): [string | null, (id: string | null, replace?: boolean) => void] {
  const [chatId, setChatId] = useState<string | null>(chatFromLocation);
  useEffect(() => {
    const onPop = () => setChatId(chatFromLocation());
    window.addEventListener("popstate", onPop);
    return () => window.removeEventListener("popstate", onPop);
  }, []);
  const navigate = useCallback((id: string | null, replace = false) => {
    const url = id === null ? `${BASE}/` : `${BASE}/c/${encodeURIComponent(id)}`;
    if (url !== window.location.pathname) {
      if (replace) window.history.replaceState(null, "", url);
      else window.history.pushState(null, "", url);
    }
    setChatId(id);
  }, []);
  return [chatId, navigate];
}

/** A notice belongs to its cause: the chat it is about. It goes when that chat comes back (undo) or
 *  the user moves on (another chat, a new one, a search, a filter). */
interface Notice {
  sessionId: string;
  text: string;
}

function Chats({ api, config, user, onSignOut, onSignedOut }: ChatsProps) {
  const [search, setSearch] = useState("");
  const [q, setQ] = useState("");
  const [includeArchived, setIncludeArchived] = useState(false);
  const filter = useMemo(() => ({ q, includeArchived }), [q, includeArchived]);
  const list = useSessions(api, user.user_id, filter);
  const [activeId, navigate] = useChatRoute();
  const activeRef = useRef(activeId);
  activeRef.current = activeId;
  const active = activeId ? list.find(activeId) : undefined;
  const usage = useUsage(api, activeId, !!activeId && !active?.local);
  const refreshUsage = usage.refresh;
  const afterTurn = useCallback((id: string) => {
    refreshUsage(id); // what the turn cost, and what the quotas leave now
    // The server's session after a turn (a first message made a local chat real), read if on screen.
    const read = id === activeRef.current ? list.markRead(id) : list.refresh(id);
    void read.catch(() => list.refresh(id)).catch(() => undefined);
  }, [list, refreshUsage]);
  const chat = useChatStream(api, config, activeId, !!activeId && !active?.local, afterTurn);
  const [selected, setSelected] = useState<ReadonlySet<string>>(new Set());
  const [confirming, setConfirming] = useState<string[] | null>(null);
  const [undo, setUndo] = useState<DeletedSession[] | null>(null);
  const [notice, setNotice] = useState<Notice | null>(null);
  const [error, setError] = useState<unknown>(null);
  const deletingHere = useRef(new Set<string>()); // this tab's deletes: their events are no news here
  const messageSearch = useMessageSearch(api, q, includeArchived);
  // A search hit opened: its chat, then the message brought on screen (its branch, older pages).
  const [target, setTarget] = useState<{ hit: SearchHit; nonce: number } | null>(null);
  const [reveal, setReveal] = useState<{ sessionId: string; messageId: string; nonce: number } | null>(null);
  const reveals = useRef(0);

  // The search box asks the server (?q=) once typing pauses.
  useEffect(() => {
    const timer = setTimeout(() => setQ(search.trim()), 250);
    return () => clearTimeout(timer);
  }, [search]);

  const onEvent = useCallback((event: SessionEvent) => {
    if (event.type === "auth_expired") return onSignedOut();
    list.applyEvent(event);
    if (event.type === "reset") return;
    // A turn (here or anywhere) was metered: that chat's cost, if open, and the quotas.
    if (event.type === "usage.updated") return refreshUsage(event.session_id);
    // A chat deleted elsewhere came back (an undo, anywhere): the notice about it goes.
    if (event.type === "session.created") setNotice((n) => (n?.sessionId === event.session_id ? null : n));
    const open = event.session_id === activeRef.current;
    // The open chat changed elsewhere (another branch shown, an edit, a rating): its path again.
    if (open && event.type === "session.updated") chat.refreshIfIdle();
    if (open && "session" in event && event.session) {
      chat.noteSession(event.session);
      // A reply finished in the chat on screen: it is read (in every tab).
      if (event.session.has_unread) void list.markRead(event.session_id).catch(() => undefined);
    }
    // Another tab (or device) is answering in the open chat: show the reply as it is written.
    if (open && event.type === "run.started") void chat.joinRun(event.run_id);
    // A turn ended that this tab did not follow: its messages.
    if (open && event.type === "run.finished" && !chat.follows(event.run_id)) {
      void chat.reload().catch(() => undefined);
    }
    if (event.type === "session.deleted" && open) {
      navigate(null, true);
      if (!deletingHere.current.has(event.session_id)) {
        setNotice({ sessionId: event.session_id, text: "This chat was deleted in another tab or device." });
      }
    }
  }, [list, chat, navigate, onSignedOut, refreshUsage]);
  const { live } = useEvents(config, true, onEvent);

  async function attempt(action: () => Promise<unknown>) {
    try {
      setError(null);
      await action();
      chat.setError(null); // an earlier failure's banner no longer applies (Retry stays by its message)
    } catch (e) {
      if (e instanceof ApiError && e.status === 401) onSignedOut();
      setError(e);
    }
  }

  function open(id: string) {
    navigate(id);
    setNotice(null);
    const session = list.find(id);
    if (session?.has_unread) void attempt(() => list.markRead(id));
  }

  function openHit(hit: SearchHit) {
    open(hit.session_id);
    setReveal(null);
    setTarget({ hit, nonce: ++reveals.current });
  }

  const { reveal: revealMessage } = chat;
  useEffect(() => {
    if (!target || target.hit.session_id !== activeId) return;
    setTarget(null);
    const { hit, nonce } = target;
    void revealMessage(hit.message_id, hit.on_active_branch).then((shown) => {
      if (activeRef.current !== hit.session_id || nonce !== reveals.current) return;
      if (shown) setReveal({ sessionId: hit.session_id, messageId: hit.message_id, nonce });
      else setNotice({ sessionId: hit.session_id, text: "That message is no longer in this chat." });
    });
  }, [target, activeId, revealMessage]);

  function newChat() {
    navigate(list.createLocal(chat.messages.length > 0 ? activeId : null).session_id);
    setNotice(null);
  }

  async function confirmDelete(ids: string[]) {
    setConfirming(null);
    for (const id of ids) deletingHere.current.add(id);
    await attempt(async () => {
      const gone = ids.length === 1 ? [await list.remove(ids[0]!)].filter((d) => d !== null) : await list.removeMany(ids);
      if (activeRef.current && ids.includes(activeRef.current)) navigate(null, true);
      setSelected(new Set());
      setUndo(gone.length ? gone : null);
    });
    // Its event may still be on its way (it can come before or after the answer).
    setTimeout(() => { for (const id of ids) deletingHere.current.delete(id); }, 30_000);
  }

  async function restore(items: DeletedSession[]) {
    setUndo(null);
    setNotice((n) => (n && items.some((d) => d.session.session_id === n.sessionId) ? null : n));
    await attempt(() => list.restore(items));
  }

  async function setArchived(id: string, archived: boolean) {
    setNotice(null);
    await attempt(async () => {
      const updated = await list.setArchived(id, archived);
      if (id === activeRef.current) {
        chat.noteSession(updated);
        if (!archived) chat.setError(null); // "archived" no longer applies
      }
    });
  }

  const errorText = error ? describeError(error) : chat.error ? describeError(chat.error) : list.error ? describeError(list.error) : null;

  return (
    <div className="app" data-live={live ? "true" : "false"} data-view={activeId ? "chat" : "list"}>
      <aside aria-label="Chats list">
        <header>
          <span className="who">{user.email ?? user.user_id}</span>
          <button type="button" onClick={onSignOut}>Sign out</button>
        </header>
        <button type="button" className="primary" data-testid="new-chat" onClick={newChat}>New chat</button>
        <label className="search">
          Search
          <input type="search" data-testid="search" value={search} maxLength={200}
                 onChange={(e) => { setSearch(e.target.value); setNotice(null); }} />
        </label>
        <label className="check">
          <input type="checkbox" data-testid="show-archived" checked={includeArchived}
                 onChange={(e) => { setIncludeArchived(e.target.checked); setNotice(null); }} />
          Show archived
        </label>
        {selected.size > 0 && (
          <button type="button" data-testid="bulk-delete" onClick={() => setConfirming([...selected])}>
            Delete {selected.size} selected
          </button>
        )}
        <SessionList
          sessions={list.sessions} busy={list.busy} activeId={activeId} selected={selected} hasMore={list.hasMore}
          query={q} loading={list.loading || search.trim() !== q}
          onOpen={open}
          onToggleSelect={(id) => setSelected((s) => { const n = new Set(s); if (n.has(id)) n.delete(id); else n.add(id); return n; })}
          onRename={(id, name) => void attempt(() => list.rename(id, name))}
          onArchive={(id, archived) => void setArchived(id, archived)}
          onDelete={(id) => setConfirming([id])}
          onLoadMore={() => void list.loadMore()}
        >
          <MessageHits query={q} search={messageSearch} onOpen={openHit} />
        </SessionList>
        {usage.account && usage.account.quotas.length > 0 && (
          <footer className="quota" data-testid="quota">
            <span className="visually-hidden">Your quota: </span>
            {usage.account.quotas.map((quota) => (
              <span key={`${quota.scope}-${quota.period}`} data-testid="quota-left"
                    className={(quota.tokens_left ?? 1) <= 0 || (quota.cost_left_micros ?? 1) <= 0 ? "quota-out" : undefined}>
                {describeQuota(quota, usage.account!.currency)}
              </span>
            ))}
          </footer>
        )}
      </aside>
      <main>
        {errorText && (
          <div role="alert" className="error" data-testid="error-banner">
            <span>{errorText}</span>
            <button type="button" aria-label="Dismiss" onClick={() => { setError(null); chat.setError(null); }}>×</button>
          </div>
        )}
        {notice && (
          <div role="status" className="notice" data-testid="notice">
            <span>{notice.text}</span>
            <button type="button" aria-label="Dismiss" onClick={() => setNotice(null)}>×</button>
          </div>
        )}
        {activeId ? (
          <ChatView title={active?.session_name ?? chat.opened?.name ?? "Chat"} messages={chat.messages}
                    streaming={chat.streaming} archived={chat.opened?.archived ?? active?.is_archived ?? false}
                    failedQuery={chat.failedQuery}
                    onSend={(text, strategy) => chat.send(text, strategy)} onStop={() => void chat.stop()}
                    onRetry={(text) => void chat.send(text)} onUnarchive={() => void setArchived(activeId, false)}
                    onBack={() => navigate(null)}
                    onEdit={(messageId, text) => chat.edit(messageId, text)}
                    onRegenerate={(messageId) => void chat.regenerate(messageId)}
                    onSwitch={chat.switchBranch} onRate={chat.rate}
                    reveal={reveal && reveal.sessionId === activeId ? reveal : null}
                    cost={usage.session && usage.session.session_id === activeId ? (
                      <span className="chat-cost" data-testid="session-cost"
                            title={`${usage.session.input_tokens.toLocaleString()} tokens in, ${usage.session.output_tokens.toLocaleString()} out`}>
                        <span className="visually-hidden">This chat has cost </span>
                        {formatCost(usage.session.cost_micros, usage.session.currency)}
                        {" · "}{(usage.session.input_tokens + usage.session.output_tokens).toLocaleString()} tokens
                      </span>
                    ) : null} />
        ) : (
          <p className="empty">Pick a chat or start a new one.</p>
        )}
      </main>
      {confirming && (
        <ConfirmDialog
          title={confirming.length === 1 ? "Delete this chat? Its messages go too." : `Delete ${confirming.length} chats? Their messages go too.`}
          confirmLabel="Delete" onCancel={() => setConfirming(null)} onConfirm={() => void confirmDelete(confirming)} />
      )}
      {undo && (
        <div role="status" className="toast">
          {undo.length === 1 ? "Chat deleted." : `${undo.length} chats deleted.`}
          <button type="button" data-testid="undo-delete" onClick={() => void restore(undo)}>Undo</button>
          <button type="button" aria-label="Dismiss" onClick={() => setUndo(null)}>×</button>
        </div>
      )}
    </div>
  );
}
