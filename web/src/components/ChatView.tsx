import { useEffect, useRef, useState, type ReactNode } from "react";
import type { MultitaskStrategy } from "../api/sse";
import type { ChatMessage, Rating, SendOutcome } from "../hooks/useChatStream";
import { Markdown } from "./Markdown";

interface Props {
  title: string;
  messages: ChatMessage[];
  /** A reply is being written (here, another tab, or before a reload). */
  streaming: boolean;
  archived: boolean;
  /** The question of a turn the model failed: offer to send it again. */
  failedQuery: string | null;
  onSend(text: string, strategy: MultitaskStrategy): Promise<SendOutcome>;
  onStop(): void;
  onRetry(text: string): void;
  onUnarchive(): void;
  onBack(): void;
  /** Ask a user message again with new text (a new branch). */
  onEdit(messageId: string, text: string): Promise<SendOutcome>;
  /** Write a reply again (a new answer beside it). */
  onRegenerate(messageId: string): void;
  /** Show another version of a message (its branch becomes the active path). */
  onSwitch(messageId: string): Promise<void>;
  onRate(messageId: string, rating: Rating | null): Promise<void>;
  /** What the chat has cost so far (shown in the header). */
  cost?: ReactNode;
  /** A message to bring into view and mark for a moment (a search hit), once it is on screen; a new
   *  `nonce` does it again. */
  reveal?: { messageId: string; nonce: number } | null;
}

const STATUS_TEXT: Record<string, string> = {
  queued: "Queued: sent when the reply above ends",
  stopped: "Stopped",
  interrupted: "Interrupted: the server writing it stopped",
  failed: "Not answered",
};

export function ChatView(props: Props) {
  const { title, messages, streaming, archived, failedQuery, onSend, onStop, onRetry, onUnarchive, onBack } = props;
  const [text, setText] = useState("");
  const [editing, setEditing] = useState<{ id: string; text: string } | null>(null);
  const [acting, setActing] = useState(false); // a switch or a rating on its way
  const [refocus, setRefocus] = useState<string | null>(null); // an edit left: its Edit button gets the focus back
  const [strategy, setStrategy] = useState<MultitaskStrategy>("enqueue"); // while a reply runs: queue by default
  const end = useRef<HTMLDivElement>(null);
  const log = useRef<HTMLDivElement>(null);
  const revealed = useRef<number | null>(null); // the last reveal done
  const pinned = useRef(false); // the view stays on a revealed message until the user writes
  const [found, setFound] = useState<string | null>(null); // the message just revealed (marked briefly)
  const { reveal } = props;
  useEffect(() => {
    if (!editing && !pinned.current) end.current?.scrollIntoView?.({ block: "end" });
  }, [messages]); // new text scrolls to the end, unless a question is being edited or a hit was opened
  useEffect(() => {
    if (!reveal) {
      pinned.current = false;
      return;
    }
    if (revealed.current === reveal.nonce) return;
    const element = log.current?.querySelector<HTMLElement>(`[data-message-id="${CSS.escape(reveal.messageId)}"]`);
    if (!element) return; // not on screen yet: the next messages
    revealed.current = reveal.nonce;
    pinned.current = true;
    const still = window.matchMedia?.("(prefers-reduced-motion: reduce)").matches;
    element.scrollIntoView({ block: "center", behavior: still ? "auto" : "smooth" });
    element.focus({ preventScroll: true }); // a keyboard or screen reader user lands on it too
    setFound(reveal.messageId);
  }, [reveal, messages]);
  useEffect(() => {
    if (found === null) return;
    const timer = setTimeout(() => setFound(null), 2500);
    return () => clearTimeout(timer);
  }, [found]);
  // Once its Edit button has the focus back (the child's effect runs first), no later mount takes it.
  useEffect(() => {
    if (refocus !== null) setRefocus(null);
  }, [refocus]);
  // A reply being written (here or elsewhere) or a request on its way: no branching, rating or switching.
  const locked = streaming || acting;

  async function act(action: () => Promise<void>) {
    setActing(true);
    try {
      await action();
    } finally {
      setActing(false);
    }
  }

  async function saveEdit() {
    if (!editing) return;
    const query = editing.text.trim();
    if (!query || locked || archived) return;
    const { id } = editing;
    setEditing(null);
    pinned.current = false;
    const outcome = await props.onEdit(id, query);
    // Not taken (busy, rate limited): the editor opens again with the text.
    if (outcome === "refused") setEditing({ id, text: query });
  }

  async function submit() {
    const query = text.trim();
    if (!query || archived) return;
    setText("");
    pinned.current = false; // the conversation moves on: follow it again
    const outcome = await onSend(query, streaming ? strategy : "enqueue");
    // Not taken (busy, archived, rate limited, model failure): the text comes back, unless retyped.
    if (outcome === "refused" || outcome === "failed") setText((current) => current || query);
  }

  return (
    <section className="chat" aria-labelledby="chat-title">
      <header className="chat-header">
        <button type="button" className="back" data-testid="back-to-list" onClick={onBack} aria-label="Back to chats">
          ‹ Chats
        </button>
        <h2 id="chat-title" data-testid="chat-title">{title}</h2>
        {props.cost}
      </header>
      <div className="messages" role="log" aria-label="Messages" aria-live="polite" tabIndex={0} ref={log}>
        {messages.map((m) => (
          <div key={m.key} className={`turn ${m.role}${editing && editing.id === m.id ? " editing" : ""}${found !== null && found === m.id ? " found" : ""}`}
               data-testid="turn" data-message-id={m.id} tabIndex={reveal && reveal.messageId === m.id ? -1 : undefined}>
            {editing && editing.id === m.id ? (
              <EditForm text={editing.text} disabled={locked || archived}
                        onChange={(value) => setEditing({ id: editing.id, text: value })}
                        onSave={() => void saveEdit()} onCancel={() => { setRefocus(editing.id); setEditing(null); }} />
            ) : (
              <div className={`message ${m.role}${m.status ? ` ${m.status}` : ""}`}
                   data-testid={m.role === "assistant" ? "assistant-message" : "user-message"}
                   data-status={m.status ?? "done"}>
                {m.role === "assistant"
                  ? (m.content ? <Markdown text={m.content} /> : <span className="typing" aria-label="Writing">…</span>)
                  : <p className="plain">{m.content}</p>}
                {m.status && m.status !== "streaming" && (m.role === "user" || m.status !== "queued") && (
                  <span className="message-status" data-testid={m.status === "queued" ? "queued-marker" : "message-status"}>
                    {STATUS_TEXT[m.status]}
                  </span>
                )}
              </div>
            )}
            {m.id && !(editing && editing.id === m.id) && (
              <MessageActions message={m} locked={locked} archived={archived} focusEdit={refocus === m.id}
                              onEdit={() => { setRefocus(null); setEditing({ id: m.id!, text: m.content }); }}
                              onRegenerate={() => { pinned.current = false; props.onRegenerate(m.id!); }}
                              onSwitch={(id) => void act(() => props.onSwitch(id))}
                              onRate={(rating) => void act(() => props.onRate(m.id!, rating))} />
            )}
          </div>
        ))}
        {failedQuery !== null && !streaming && (
          <div className="retry-row">
            <button type="button" data-testid="retry" onClick={() => onRetry(failedQuery)}>Retry</button>
          </div>
        )}
        <div ref={end} />
      </div>
      {archived ? (
        <div className="archived-bar" role="status">
          <span>This chat is archived. Unarchive it to continue the conversation.</span>
          <button type="button" data-testid="unarchive-session" onClick={onUnarchive}>Unarchive</button>
        </div>
      ) : null}
      <form className="composer" onSubmit={(e) => { e.preventDefault(); void submit(); }}>
        {streaming && !archived && (
          <fieldset className="busy-choice" data-testid="busy-choice">
            <legend>A reply is being written. A new message:</legend>
            <label>
              <input type="radio" name="strategy" value="enqueue" data-testid="choice-queue"
                     checked={strategy === "enqueue"} onChange={() => setStrategy("enqueue")} />
              waits its turn
            </label>
            <label>
              <input type="radio" name="strategy" value="interrupt" data-testid="choice-interrupt"
                     checked={strategy === "interrupt"} onChange={() => setStrategy("interrupt")} />
              stops the reply
            </label>
          </fieldset>
        )}
        <div className="composer-row">
          <label className="visually-hidden" htmlFor="message-input">Message</label>
          <textarea id="message-input" data-testid="message-input" rows={2} value={text} disabled={archived}
                    placeholder={archived ? "Archived: unarchive to write" : "Ask something…"}
                    onChange={(e) => setText(e.target.value)}
                    onKeyDown={(e) => {
                      if (e.key === "Enter" && !e.shiftKey && !e.nativeEvent.isComposing) {
                        e.preventDefault(); // Enter sends, Shift+Enter: a new line
                        void submit();
                      }
                    }} />
          {streaming && <button type="button" className="stop" data-testid="stop" onClick={onStop}>Stop</button>}
          <button type="submit" data-testid="send" disabled={archived || !text.trim()}>
            {streaming && strategy === "enqueue" ? "Queue" : "Send"}
          </button>
        </div>
      </form>
    </section>
  );
}

const ICON = { width: 16, height: 16, viewBox: "0 0 24 24", fill: "none", stroke: "currentColor", strokeWidth: 2,
  strokeLinecap: "round", strokeLinejoin: "round", "aria-hidden": true, focusable: false } as const;

function ThumbUp({ on }: { on: boolean }) {
  return (
    <svg {...ICON} fill={on ? "currentColor" : "none"}>
      <path d="M14 9V5a3 3 0 0 0-3-3l-4 9v11h11.28a2 2 0 0 0 2-1.7l1.38-9a2 2 0 0 0-2-2.3zM7 22H4a2 2 0 0 1-2-2v-7a2 2 0 0 1 2-2h3" />
    </svg>
  );
}

function ThumbDown({ on }: { on: boolean }) {
  return (
    <svg {...ICON} fill={on ? "currentColor" : "none"}>
      <path d="M10 15v4a3 3 0 0 0 3 3l4-9V2H5.72a2 2 0 0 0-2 1.7l-1.38 9a2 2 0 0 0 2 2.3zm7-13h2.67A2.31 2.31 0 0 1 22 4v7a2.31 2.31 0 0 1-2.33 2H17" />
    </svg>
  );
}

interface ActionsProps {
  message: ChatMessage;
  locked: boolean;
  archived: boolean;
  focusEdit: boolean;
  onEdit(): void;
  onRegenerate(): void;
  onSwitch(messageId: string): void;
  onRate(rating: Rating | null): void;
}

/** Under a saved message: its versions (‹ 2/3 ›), Edit (a question) or Regenerate and the thumbs (a reply). */
function MessageActions({ message: m, locked, archived, focusEdit, onEdit, onRegenerate, onSwitch, onRate }: ActionsProps) {
  const editButton = useRef<HTMLButtonElement>(null);
  useEffect(() => {
    if (focusEdit) editButton.current?.focus();
  }, [focusEdit]);
  const siblings = m.siblingIds ?? [];
  const index = m.siblingIndex ?? 0;
  const rating = m.feedback?.rating ?? null;
  const what = m.role === "user" ? "question" : "reply";
  return (
    <div className="message-actions" data-testid="message-actions">
      {siblings.length > 1 && (
        <div className="picker" role="group" aria-label={`Version ${index + 1} of ${siblings.length} of this ${what}`}
             data-testid="branch-picker">
          <button type="button" data-testid="branch-prev" aria-label={`Previous version of this ${what}`}
                  disabled={locked || index === 0} onClick={() => onSwitch(siblings[index - 1]!)}>‹</button>
          <span data-testid="branch-position">{index + 1}/{siblings.length}</span>
          <button type="button" data-testid="branch-next" aria-label={`Next version of this ${what}`}
                  disabled={locked || index >= siblings.length - 1} onClick={() => onSwitch(siblings[index + 1]!)}>›</button>
        </div>
      )}
      {m.role === "user" ? (
        <button type="button" ref={editButton} className="icon" data-testid="edit-message" aria-label="Edit this question" title="Edit"
                disabled={locked || archived} onClick={onEdit}>
          <svg {...ICON}><path d="M17 3a2.83 2.83 0 1 1 4 4L7.5 20.5 2 22l1.5-5.5L17 3z" /></svg>
        </button>
      ) : (
        <>
          <button type="button" className="icon" data-testid="regenerate" aria-label="Regenerate this reply"
                  title="Regenerate" disabled={locked || archived} onClick={onRegenerate}>
            <svg {...ICON}><path d="M1 4v6h6" /><path d="M3.51 15a9 9 0 1 0 2.13-9.36L1 10" /></svg>
          </button>
          <button type="button" className={`icon${rating === "up" ? " on" : ""}`} data-testid="rate-up"
                  aria-label="Good reply" aria-pressed={rating === "up"} title={rating === "up" ? "Clear rating" : "Good reply"}
                  disabled={locked} onClick={() => onRate(rating === "up" ? null : "up")}>
            <ThumbUp on={rating === "up"} />
          </button>
          <button type="button" className={`icon${rating === "down" ? " on" : ""}`} data-testid="rate-down"
                  aria-label="Bad reply" aria-pressed={rating === "down"} title={rating === "down" ? "Clear rating" : "Bad reply"}
                  disabled={locked} onClick={() => onRate(rating === "down" ? null : "down")}>
            <ThumbDown on={rating === "down"} />
          </button>
        </>
      )}
    </div>
  );
}

interface EditProps {
  text: string;
  disabled: boolean;
  onChange(text: string): void;
  onSave(): void;
  onCancel(): void;
}

/** A question edited in place: Enter (or Save) asks it again as a new branch; Escape (or Cancel) leaves it. */
function EditForm({ text, disabled, onChange, onSave, onCancel }: EditProps) {
  const field = useRef<HTMLTextAreaElement>(null);
  useEffect(() => {
    const el = field.current;
    if (!el) return;
    el.focus();
    el.setSelectionRange(el.value.length, el.value.length);
  }, []);
  return (
    <form className="edit-form" data-testid="edit-form" onSubmit={(e) => { e.preventDefault(); onSave(); }}>
      <label className="visually-hidden" htmlFor="edit-input">Edit your question</label>
      <textarea id="edit-input" ref={field} data-testid="edit-input" rows={3} value={text}
                onChange={(e) => onChange(e.target.value)}
                onKeyDown={(e) => {
                  if (e.key === "Escape") {
                    e.preventDefault();
                    onCancel();
                  } else if (e.key === "Enter" && !e.shiftKey && !e.nativeEvent.isComposing) {
                    e.preventDefault();
                    onSave();
                  }
                }} />
      <div className="edit-actions">
        <button type="button" data-testid="edit-cancel" onClick={onCancel}>Cancel</button>
        <button type="submit" className="primary" data-testid="edit-save" disabled={disabled || !text.trim()}>
          Save
        </button>
      </div>
    </form>
  );
}
