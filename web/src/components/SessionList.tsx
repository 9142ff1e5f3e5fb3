import { useEffect, useRef, useState, type KeyboardEvent, type ReactNode } from "react";
import type { ListedSession } from "../hooks/useSessions";

interface Props {
  sessions: ListedSession[];
  busy: ReadonlySet<string>;
  activeId: string | null;
  selected: ReadonlySet<string>;
  hasMore: boolean;
  /** The search in force ("" for none): an empty result says so. */
  query: string;
  loading: boolean;
  onOpen(id: string): void;
  onToggleSelect(id: string): void;
  onRename(id: string, name: string): void;
  onArchive(id: string, archived: boolean): void;
  onDelete(id: string): void;
  onLoadMore(): void;
  /** Under the chats: the messages that match the search. */
  children?: ReactNode;
}

const DAY = 86_400_000;

function activity(s: ListedSession): Date {
  return new Date(s.last_message_at ?? s.created_at);
}

/** Today / Yesterday / Previous 7 days / Previous 30 days / Older, by the local calendar. */
export function groupOf(when: Date, now = new Date()): string {
  const startOfToday = new Date(now.getFullYear(), now.getMonth(), now.getDate()).getTime();
  const t = when.getTime();
  if (t >= startOfToday) return "Today";
  if (t >= startOfToday - DAY) return "Yesterday";
  if (t >= startOfToday - 7 * DAY) return "Previous 7 days";
  if (t >= startOfToday - 30 * DAY) return "Previous 30 days";
  return "Older";
}

function shortTime(when: Date, group: string): string {
  if (group === "Today") return when.toLocaleTimeString([], { hour: "numeric", minute: "2-digit" });
  if (group === "Yesterday") return "Yesterday";
  if (group === "Previous 7 days") return when.toLocaleDateString([], { weekday: "short" });
  return when.toLocaleDateString([], { day: "numeric", month: "short", year: when.getFullYear() === new Date().getFullYear() ? undefined : "numeric" });
}

export function SessionList(props: Props) {
  const sentinel = useRef<HTMLDivElement>(null);
  const { hasMore, onLoadMore, sessions, query, loading } = props;

  // Infinite scroll: the next page when the end of the list comes into view.
  useEffect(() => {
    const element = sentinel.current;
    if (!element || !hasMore) return;
    const observer = new IntersectionObserver((entries) => {
      if (entries.some((e) => e.isIntersecting)) onLoadMore();
    });
    observer.observe(element);
    return () => observer.disconnect();
  }, [hasMore, onLoadMore]);

  const groups: { name: string; items: ListedSession[] }[] = [];
  for (const s of sessions) {
    const name = groupOf(activity(s));
    const last = groups.at(-1);
    if (last && last.name === name) last.items.push(s);
    else groups.push({ name, items: [s] });
  }

  return (
    <nav className="sessions" aria-label="Chats">
      {sessions.length === 0 && !loading && (
        <p className="no-results" data-testid="no-results" role="status">
          {query ? `No chats match “${query}”.` : "No chats yet. Start one with New chat."}
        </p>
      )}
      {groups.map((group) => (
        <section key={group.name} className="session-group" aria-labelledby={`group-${group.name}`}>
          <h3 id={`group-${group.name}`} className="group-name" data-testid="session-group">{group.name}</h3>
          <ul>
            {group.items.map((s) => (
              <SessionItem key={s.session_id} session={s} group={group.name} {...props} />
            ))}
          </ul>
        </section>
      ))}
      {hasMore && <div ref={sentinel} className="more" aria-hidden="true">Loading more…</div>}
      {props.children}
    </nav>
  );
}

function SessionItem({ session, group, busy, activeId, selected, onOpen, onToggleSelect, onRename, onArchive, onDelete }:
  Props & { session: ListedSession; group: string }) {
  const [editing, setEditing] = useState(false);
  const [name, setName] = useState(session.session_name);
  const id = session.session_id;
  const when = activity(session);

  function commit() {
    setEditing(false);
    const trimmed = name.trim();
    if (trimmed && trimmed !== session.session_name) onRename(id, trimmed);
  }

  return (
    <li data-testid="session-item" data-session-id={id} className={`session${activeId === id ? " active" : ""}${session.is_archived ? " archived" : ""}`}>
      <input type="checkbox" aria-label={`Select ${session.session_name}`} data-testid="select-session"
             checked={selected.has(id)} onChange={() => onToggleSelect(id)} />
      {editing ? (
        <input className="rename" aria-label="Chat name" data-testid="rename-input" autoFocus value={name} maxLength={200}
               onChange={(e) => setName(e.target.value)} onBlur={commit}
               onKeyDown={(e) => {
                 if (e.key === "Enter") commit();
                 if (e.key === "Escape") { setName(session.session_name); setEditing(false); }
               }} />
      ) : (
        <button type="button" className="open" onClick={() => onOpen(id)} aria-current={activeId === id ? "page" : undefined}>
          <span className="name" data-testid="session-name" title={session.session_name}>{session.session_name}</span>
          <span className="meta">
            <time dateTime={when.toISOString()} data-testid="session-time">{shortTime(when, group)}</time>
            {busy.has(id) && <span className="busy" data-testid="busy-marker">answering…</span>}
            {session.has_unread && <span className="badge" data-testid="unread-badge" aria-label="unread reply">●</span>}
            {session.is_archived && <span className="tag">archived</span>}
          </span>
        </button>
      )}
      <RowMenu label={session.session_name} archived={session.is_archived}
               onRename={() => { setName(session.session_name); setEditing(true); }}
               onArchive={() => onArchive(id, !session.is_archived)}
               onDelete={() => onDelete(id)} />
    </li>
  );
}

/** A row's actions behind one button (a menu button: arrows move, Escape closes, focus returns). */
function RowMenu({ label, archived, onRename, onArchive, onDelete }:
  { label: string; archived: boolean; onRename(): void; onArchive(): void; onDelete(): void }) {
  const [open, setOpen] = useState(false);
  const button = useRef<HTMLButtonElement>(null);
  const menu = useRef<HTMLDivElement>(null);

  useEffect(() => {
    if (!open) return;
    menu.current?.querySelector<HTMLButtonElement>("[role=menuitem]")?.focus();
    function outside(event: MouseEvent) {
      if (!menu.current?.contains(event.target as Node) && event.target !== button.current) setOpen(false);
    }
    document.addEventListener("mousedown", outside);
    return () => document.removeEventListener("mousedown", outside);
  }, [open]);

  function close(refocus: boolean) {
    setOpen(false);
    if (refocus) button.current?.focus();
  }

  function onKeyDown(event: KeyboardEvent<HTMLDivElement>) {
    const items = [...(menu.current?.querySelectorAll<HTMLButtonElement>("[role=menuitem]") ?? [])];
    const at = items.indexOf(document.activeElement as HTMLButtonElement);
    if (event.key === "Escape") { event.preventDefault(); close(true); }
    else if (event.key === "ArrowDown") { event.preventDefault(); items[(at + 1) % items.length]?.focus(); }
    else if (event.key === "ArrowUp") { event.preventDefault(); items[(at - 1 + items.length) % items.length]?.focus(); }
    else if (event.key === "Tab") setOpen(false);
  }

  function choose(action: () => void) {
    close(false);
    action();
  }

  return (
    <div className="row-menu">
      <button ref={button} type="button" className="menu-button" data-testid="session-menu"
              aria-label={`Actions for ${label}`} aria-haspopup="menu" aria-expanded={open}
              onClick={() => setOpen((o) => !o)}>⋯</button>
      {open && (
        <div ref={menu} role="menu" aria-label={`Actions for ${label}`} className="menu" onKeyDown={onKeyDown}>
          <button type="button" role="menuitem" data-testid="rename-session" onClick={() => choose(onRename)}>Rename</button>
          <button type="button" role="menuitem" data-testid="archive-session" onClick={() => choose(onArchive)}>
            {archived ? "Unarchive" : "Archive"}
          </button>
          <button type="button" role="menuitem" data-testid="delete-session" className="danger-text"
                  onClick={() => choose(onDelete)}>Delete</button>
        </div>
      )}
    </div>
  );
}
