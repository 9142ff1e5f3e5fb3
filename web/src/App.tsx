import { useCallback, useEffect, useMemo, useState } from "react";
import { ApiError, createApi, describeError, unwrap, type ApiConfig, type User } from "./api/client";
import type { SessionEvent } from "./api/sse";
import { ChatView } from "./components/ChatView";
import { ConfirmDialog } from "./components/ConfirmDialog";
import { Login } from "./components/Login";
import { SessionList } from "./components/SessionList";
import { useChatStream } from "./hooks/useChatStream";
import { useEvents } from "./hooks/useEvents";
import { useSessions, type DeletedSession } from "./hooks/useSessions";

const TOKEN_KEY = "chats:token";
const API_KEY = "chats:api-base";

/** Where the API is: ?api=<origin> (remembered), else VITE_API_BASE at build time, else this origin. */
function apiBase(): string {
  const fromUrl = new URLSearchParams(window.location.search).get("api");
  if (fromUrl !== null) localStorage.setItem(API_KEY, fromUrl);
  return (fromUrl ?? localStorage.getItem(API_KEY) ?? import.meta.env.VITE_API_BASE ?? "").replace(/\/$/, "");
}

export function App() {
  const [config, setConfig] = useState<ApiConfig>(() => ({ baseUrl: apiBase(), token: localStorage.getItem(TOKEN_KEY) }));
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
    localStorage.removeItem(TOKEN_KEY);
    setConfig({ baseUrl: config.baseUrl, token: null });
    setUser(null);
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

function Chats({ api, config, user, onSignOut, onSignedOut }: ChatsProps) {
  const [search, setSearch] = useState("");
  const [q, setQ] = useState("");
  const [includeArchived, setIncludeArchived] = useState(false);
  const filter = useMemo(() => ({ q, includeArchived }), [q, includeArchived]);
  const list = useSessions(api, user.user_id, filter);
  const [activeId, setActiveId] = useState<string | null>(null);
  const active = activeId ? list.find(activeId) : undefined;
  const chat = useChatStream(api, config, activeId, !!activeId && !active?.local);
  const [selected, setSelected] = useState<ReadonlySet<string>>(new Set());
  const [confirming, setConfirming] = useState<string[] | null>(null);
  const [undo, setUndo] = useState<DeletedSession[] | null>(null);
  const [notice, setNotice] = useState<string | null>(null);
  const [error, setError] = useState<unknown>(null);

  // The search box asks the server (?q=) once typing pauses.
  useEffect(() => {
    const timer = setTimeout(() => setQ(search.trim()), 250);
    return () => clearTimeout(timer);
  }, [search]);

  const onEvent = useCallback((event: SessionEvent) => {
    if (event.type === "auth_expired") return onSignedOut();
    list.applyEvent(event);
    // A reply finished in the chat on screen: it is read (in every tab).
    if ("session" in event && event.session?.has_unread && event.session_id === activeId) {
      void list.markRead(event.session_id).catch(() => undefined);
    }
    if (event.type === "session.deleted" && event.session_id === activeId) {
      setActiveId(null);
      setNotice("This chat was deleted in another tab or device.");
    }
  }, [list, activeId, onSignedOut]);
  const { live } = useEvents(config, true, onEvent);

  async function attempt(action: () => Promise<unknown>) {
    try {
      setError(null);
      await action();
    } catch (e) {
      if (e instanceof ApiError && e.status === 401) onSignedOut();
      setError(e);
    }
  }

  function open(id: string) {
    setActiveId(id);
    setNotice(null);
    const session = list.find(id);
    if (session?.has_unread) void attempt(() => list.markRead(id));
  }

  function newChat() {
    setActiveId(list.createLocal().session_id);
    setNotice(null);
  }

  async function send(text: string) {
    const id = activeId;
    if (!id) return;
    await chat.send(text);
    // The server's session after the turn (the first message made a local chat real), read.
    await list.markRead(id).catch(() => list.refresh(id)).catch(() => undefined);
  }

  async function confirmDelete(ids: string[]) {
    setConfirming(null);
    await attempt(async () => {
      const gone = ids.length === 1 ? [await list.remove(ids[0]!)].filter((d) => d !== null) : await list.removeMany(ids);
      if (activeId && ids.includes(activeId)) setActiveId(null);
      setSelected(new Set());
      setUndo(gone.length ? gone : null);
    });
  }

  const errorText = error ? describeError(error) : chat.error ? describeError(chat.error) : list.error ? describeError(list.error) : null;

  return (
    <div className="app" data-live={live ? "true" : "false"}>
      <aside>
        <header>
          <span className="who">{user.email ?? user.user_id}</span>
          <button type="button" onClick={onSignOut}>Sign out</button>
        </header>
        <button type="button" data-testid="new-chat" onClick={newChat}>New chat</button>
        <label className="search">
          Search
          <input type="search" data-testid="search" value={search} onChange={(e) => setSearch(e.target.value)} maxLength={200} />
        </label>
        <label>
          <input type="checkbox" data-testid="show-archived" checked={includeArchived}
                 onChange={(e) => setIncludeArchived(e.target.checked)} />
          Show archived
        </label>
        {selected.size > 0 && (
          <button type="button" data-testid="bulk-delete" onClick={() => setConfirming([...selected])}>
            Delete {selected.size} selected
          </button>
        )}
        <SessionList
          sessions={list.sessions} busy={list.busy} activeId={activeId} selected={selected} hasMore={list.hasMore}
          onOpen={open}
          onToggleSelect={(id) => setSelected((s) => { const n = new Set(s); if (n.has(id)) n.delete(id); else n.add(id); return n; })}
          onRename={(id, name) => void attempt(() => list.rename(id, name))}
          onArchive={(id, archived) => void attempt(() => list.setArchived(id, archived))}
          onDelete={(id) => setConfirming([id])}
          onLoadMore={() => void list.loadMore()}
        />
      </aside>
      <main>
        {errorText && (
          <div role="alert" className="error" data-testid="error-banner">
            {errorText}
            <button type="button" aria-label="Dismiss" onClick={() => { setError(null); chat.setError(null); }}>×</button>
          </div>
        )}
        {notice && <div role="status" className="notice" data-testid="notice">{notice}</div>}
        {activeId ? (
          <ChatView title={active?.session_name ?? "Chat"} messages={chat.messages} streaming={chat.streaming}
                    onSend={(text) => void send(text)} onStop={chat.stop} />
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
          <button type="button" data-testid="undo-delete"
                  onClick={() => { const items = undo; setUndo(null); void attempt(() => list.restore(items)); }}>Undo</button>
          <button type="button" aria-label="Dismiss" onClick={() => setUndo(null)}>×</button>
        </div>
      )}
    </div>
  );
}
