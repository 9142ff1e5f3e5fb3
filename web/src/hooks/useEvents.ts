import { useEffect, useRef, useState } from "react";
import type { ApiConfig } from "../api/client";
import { followEvents, type SessionEvent } from "../api/sse";

/** Follow the caller's live session events while `enabled`; `live` says the stream is connected. */
export function useEvents(config: ApiConfig, enabled: boolean, onEvent: (event: SessionEvent) => void): { live: boolean } {
  const [live, setLive] = useState(false);
  const handler = useRef(onEvent);
  handler.current = onEvent;

  useEffect(() => {
    if (!enabled) return;
    const controller = new AbortController();
    void followEvents(
      config,
      {
        onOpen: () => setLive(true),
        onEvent: (event) => handler.current(event),
        onError: () => setLive(false),
      },
      controller.signal,
    ).finally(() => setLive(false));
    return () => controller.abort();
  }, [config, enabled]);

  return { live };
}
