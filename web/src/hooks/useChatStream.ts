// One chat's messages, and sending a message with the reply streamed token by token.
// stop() aborts the fetch: closing the stream is what cancels the reply on the server.
import { useCallback, useEffect, useRef, useState } from "react";
import { ApiError, unwrap, type Api, type ApiConfig, type Message } from "../api/client";
import { streamChat } from "../api/sse";

export interface ChatMessage {
  role: Message["role"];
  content: string;
}

export function useChatStream(api: Api, config: ApiConfig, sessionId: string | null, onServer: boolean) {
  const [messages, setMessages] = useState<ChatMessage[]>([]);
  const [streaming, setStreaming] = useState(false);
  const [error, setError] = useState<unknown>(null);
  const controller = useRef<AbortController | null>(null);
  const known = useRef(onServer);
  known.current = onServer;

  // The history, when a chat is opened. A local chat that becomes real with its first message
  // keeps what this page already shows (no reload mid-stream).
  useEffect(() => {
    setMessages([]);
    setError(null);
    if (!sessionId || !known.current) return;
    let stale = false;
    api.GET("/api/llm/sessions/{session_id}", {
      params: { path: { session_id: sessionId }, query: { include_messages: true } },
    }).then((result) => {
      if (stale) return;
      const body = unwrap(result);
      setMessages((body.messages ?? []).map((m) => ({ role: m.role, content: m.content })));
    }).catch((e: unknown) => {
      if (!stale && !(e instanceof ApiError && e.status === 404)) setError(e);
    });
    return () => {
      stale = true;
    };
  }, [api, sessionId]);

  // Leaving the chat closes its stream (and so cancels a reply being written).
  useEffect(() => () => controller.current?.abort(), [sessionId]);

  const send = useCallback(async (query: string): Promise<"done" | "error" | "stopped"> => {
    if (!sessionId) return "error";
    const mine = new AbortController();
    controller.current = mine;
    setError(null);
    setStreaming(true);
    setMessages((m) => [...m, { role: "user", content: query }, { role: "assistant", content: "" }]);
    const appendToReply = (text: string) =>
      setMessages((m) => {
        const last = m[m.length - 1];
        return last && last.role === "assistant" ? [...m.slice(0, -1), { ...last, content: last.content + text }] : m;
      });
    try {
      for await (const event of streamChat(config, { session_id: sessionId, query }, mine.signal)) {
        if (event.event === "token") appendToReply(event.data.content);
        else if (event.event === "error") {
          setError(new ApiError(200, event.data.code, event.data.message));
          return "error";
        } else return "done";
      }
      return "done";
    } catch (e) {
      if (mine.signal.aborted) return "stopped";
      // Refused before streaming (busy, archived, 429): the question was not taken.
      setMessages((m) => (m.at(-1)?.content === "" ? m.slice(0, -2) : m));
      setError(e);
      return "error";
    } finally {
      if (controller.current === mine) controller.current = null;
      setStreaming(false);
    }
  }, [config, sessionId]);

  const stop = useCallback(() => controller.current?.abort(), []);

  return { messages, streaming, error, setError, send, stop };
}
