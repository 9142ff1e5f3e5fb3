// Message hits for the list's search box: GET /api/llm/search with the same (debounced) text as the
// name search, every branch, newest pages by next_cursor ("More").
import { useCallback, useEffect, useRef, useState } from "react";
import { ApiError, unwrap, type Api, type Schemas } from "../api/client";

export type SearchHit = Schemas["SearchHit"];

const PAGE = 10;

export interface MessageSearch {
  hits: SearchHit[];
  /** A page is on its way (the first, or More). */
  loading: boolean;
  hasMore: boolean;
  /** The last request failed (not a 400: a query the server cannot look up has no hits). */
  error: unknown;
  loadMore(): void;
}

export function useMessageSearch(api: Api, q: string, includeArchived: boolean): MessageSearch {
  const [hits, setHits] = useState<SearchHit[]>([]);
  const [cursor, setCursor] = useState<string | null>(null);
  const [loading, setLoading] = useState(false);
  const [error, setError] = useState<unknown>(null);
  const seq = useRef(0); // each new search: answers to an older one are dropped

  const fetchPage = useCallback(async (after: string | null, mine: number) => {
    setLoading(true);
    try {
      const result = await api.GET("/api/llm/search", {
        params: { query: { q, include_archived: includeArchived, limit: PAGE, ...(after ? { cursor: after } : {}) } },
      });
      if (mine !== seq.current) return;
      // 400: nothing to look up (only -excluded words, no terms): no hits, not an error.
      if (result.response.status === 400) {
        setHits((h) => (after ? h : []));
        setCursor(null);
        return;
      }
      const body = unwrap(result);
      setHits((h) => {
        if (!after) return body.data;
        const seen = new Set(h.map((x) => x.message_id));
        return [...h, ...body.data.filter((x) => !seen.has(x.message_id))];
      });
      setCursor(body.next_cursor);
      setError(null);
    } catch (e) {
      if (mine !== seq.current) return;
      setCursor(null);
      setError(e instanceof ApiError || e instanceof Error ? e : new Error(String(e)));
    } finally {
      if (mine === seq.current) setLoading(false);
    }
  }, [api, q, includeArchived]);

  useEffect(() => {
    const mine = ++seq.current;
    setHits([]);
    setCursor(null);
    setError(null);
    if (!q) {
      setLoading(false);
      return;
    }
    void fetchPage(null, mine);
  }, [q, fetchPage]);

  const loadMore = useCallback(() => {
    if (cursor && !loading) void fetchPage(cursor, seq.current);
  }, [cursor, loading, fetchPage]);

  return { hits, loading, hasMore: cursor !== null, error, loadMore };
}
