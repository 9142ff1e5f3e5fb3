import { useEffect, useRef, useState } from "react";
import type { ListedSession } from "../hooks/useSessions";

interface Props {
  sessions: ListedSession[];
  busy: ReadonlySet<string>;
  activeId: string | null;
  selected: ReadonlySet<string>;
  hasMore: boolean;
  onOpen(id: string): void;
  onToggleSelect(id: string): void;
  onRename(id: string, name: string): void;
  onArchive(id: string, archived: boolean): void;
  onDelete(id: string): void;
  onLoadMore(): void;
}

export function SessionList(props: Props) {
  const sentinel = useRef<HTMLLIElement>(null);
  const { hasMore, onLoadMore } = props;

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

  return (
    <ul className="sessions" aria-label="Chats">
      {props.sessions.map((s) => (
        <SessionItem key={s.session_id} session={s} {...props} />
      ))}
      {hasMore && <li ref={sentinel} className="more" aria-hidden="true">Loading more…</li>}
    </ul>
  );
}

function SessionItem({ session, busy, activeId, selected, onOpen, onToggleSelect, onRename, onArchive, onDelete }:
  Props & { session: ListedSession }) {
  const [editing, setEditing] = useState(false);
  const [name, setName] = useState(session.session_name);
  const id = session.session_id;

  function commit() {
    setEditing(false);
    const trimmed = name.trim();
    if (trimmed && trimmed !== session.session_name) onRename(id, trimmed);
  }

  return (
    <li data-testid="session-item" data-session-id={id} aria-current={activeId === id ? "true" : undefined}
        className={session.is_archived ? "archived" : undefined}>
      <input type="checkbox" aria-label={`Select ${session.session_name}`} data-testid="select-session"
             checked={selected.has(id)} onChange={() => onToggleSelect(id)} />
      {editing ? (
        <input aria-label="Chat name" data-testid="rename-input" autoFocus value={name} maxLength={200}
               onChange={(e) => setName(e.target.value)} onBlur={commit}
               onKeyDown={(e) => {
                 if (e.key === "Enter") commit();
                 if (e.key === "Escape") { setName(session.session_name); setEditing(false); }
               }} />
      ) : (
        <button type="button" className="open" onClick={() => onOpen(id)}>
          <span data-testid="session-name">{session.session_name}</span>
          {busy.has(id) && <span className="busy" data-testid="busy-marker">answering…</span>}
          {session.has_unread && <span className="badge" data-testid="unread-badge" aria-label="unread reply">●</span>}
          {session.is_archived && <span className="tag">archived</span>}
        </button>
      )}
      <span className="item-actions">
        <button type="button" data-testid="rename-session" aria-label={`Rename ${session.session_name}`}
                onClick={() => { setName(session.session_name); setEditing(true); }}>Rename</button>
        <button type="button" data-testid="archive-session" onClick={() => onArchive(id, !session.is_archived)}>
          {session.is_archived ? "Unarchive" : "Archive"}
        </button>
        <button type="button" data-testid="delete-session" aria-label={`Delete ${session.session_name}`}
                onClick={() => onDelete(id)}>Delete</button>
      </span>
    </li>
  );
}
