import { useEffect, useRef, useState } from "react";
import type { ChatMessage } from "../hooks/useChatStream";

interface Props {
  title: string;
  messages: ChatMessage[];
  streaming: boolean;
  onSend(text: string): void;
  onStop(): void;
}

export function ChatView({ title, messages, streaming, onSend, onStop }: Props) {
  const [text, setText] = useState("");
  const end = useRef<HTMLDivElement>(null);
  useEffect(() => {
    end.current?.scrollIntoView?.({ block: "end" });
  }, [messages]);

  function submit() {
    const query = text.trim();
    if (!query || streaming) return;
    setText("");
    onSend(query);
  }

  return (
    <section className="chat" aria-label={title}>
      <h2 data-testid="chat-title">{title}</h2>
      <div className="messages" aria-live="polite">
        {messages.map((m, i) => (
          <div key={i} className={`message ${m.role}`} data-testid={m.role === "assistant" ? "assistant-message" : "user-message"}>
            {m.content || (streaming && i === messages.length - 1 ? "…" : "")}
          </div>
        ))}
        <div ref={end} />
      </div>
      <form className="composer" onSubmit={(e) => { e.preventDefault(); submit(); }}>
        <label className="visually-hidden" htmlFor="message-input">Message</label>
        <textarea id="message-input" data-testid="message-input" rows={2} value={text} placeholder="Ask something…"
                  onChange={(e) => setText(e.target.value)}
                  onKeyDown={(e) => {
                    if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); submit(); } // Enter sends, Shift+Enter: new line
                  }} />
        {streaming
          ? <button type="button" data-testid="stop" onClick={onStop}>Stop</button>
          : <button type="submit" data-testid="send" disabled={!text.trim()}>Send</button>}
      </form>
    </section>
  );
}
