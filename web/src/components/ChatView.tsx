import { useEffect, useRef, useState } from "react";
import type { MultitaskStrategy } from "../api/sse";
import type { ChatMessage, SendOutcome } from "../hooks/useChatStream";
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
  const [strategy, setStrategy] = useState<MultitaskStrategy>("enqueue"); // while a reply runs: queue by default
  const end = useRef<HTMLDivElement>(null);
  useEffect(() => {
    end.current?.scrollIntoView?.({ block: "end" });
  }, [messages]);

  async function submit() {
    const query = text.trim();
    if (!query || archived) return;
    setText("");
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
      </header>
      <div className="messages" role="log" aria-label="Messages" aria-live="polite" tabIndex={0}>
        {messages.map((m) => (
          <div key={m.key} className={`message ${m.role}${m.status ? ` ${m.status}` : ""}`}
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
