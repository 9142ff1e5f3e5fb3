// What the open chat has cost, and what the user's quotas leave: GET .../sessions/<id>/usage and
// GET /api/llm/usage, read again after a turn and on `usage.updated` events (any tab, any device).
import { useCallback, useEffect, useRef, useState } from "react";
import { ApiError, unwrap, type Api, type Schemas } from "../api/client";

export type SessionUsage = Schemas["SessionUsage"];
export type Quota = Schemas["QuotaState"];

export interface AccountUsage {
  currency: string;
  quotas: Quota[];
}

export function useUsage(api: Api, sessionId: string | null, onServer: boolean) {
  const [session, setSession] = useState<SessionUsage | null>(null);
  const [account, setAccount] = useState<AccountUsage | null>(null);
  const current = useRef(sessionId);
  current.current = sessionId;
  const known = useRef(onServer);
  known.current = onServer;

  const refreshSession = useCallback(async () => {
    const sid = current.current;
    if (!sid || !known.current) return;
    try {
      const result = await api.GET("/api/llm/sessions/{session_id}/usage", { params: { path: { session_id: sid } } });
      if (current.current !== sid) return;
      setSession(result.response.status === 404 ? null : unwrap(result).data);
    } catch {
      // The cost is a detail: a failure to read it leaves the last one shown.
    }
  }, [api]);

  const refreshAccount = useCallback(async () => {
    try {
      // Only the totals and the quotas are shown: one group is enough.
      const body = unwrap(await api.GET("/api/llm/usage", { params: { query: { limit: 1 } } }));
      setAccount({ currency: body.currency, quotas: body.quotas });
    } catch (e) {
      if (e instanceof ApiError && e.status === 401) setAccount(null);
    }
  }, [api]);

  useEffect(() => {
    setSession(null);
    if (sessionId && onServer) void refreshSession();
  }, [sessionId, onServer, refreshSession]);

  useEffect(() => {
    void refreshAccount();
  }, [refreshAccount]);

  /** After a turn (or a `usage.updated` event) in `id`: that chat's cost if open, and the quotas. */
  const refresh = useCallback((id: string) => {
    if (id === current.current) void refreshSession();
    void refreshAccount();
  }, [refreshSession, refreshAccount]);

  return { session, account, refresh };
}

/** An amount in micro-units of `currency` (1,000,000 = 1): cents, or two significant digits below a cent. */
export function formatCost(micros: number, currency: string): string {
  const value = micros / 1_000_000;
  const small = value !== 0 && Math.abs(value) < 0.01;
  const options: Intl.NumberFormatOptions = small
    ? { maximumSignificantDigits: 2 }
    : { minimumFractionDigits: 2, maximumFractionDigits: 2 };
  try {
    return new Intl.NumberFormat(undefined, { style: "currency", currency, ...options }).format(value);
  } catch {
    return `${new Intl.NumberFormat(undefined, options).format(value)} ${currency}`; // not an ISO 4217 code
  }
}

const PERIOD: Record<Quota["period"], string> = { day: "today", month: "this month" };

/** A quota in words: what it leaves this period (the smaller of its tokens and its cost, each shown). */
export function describeQuota(quota: Quota, currency: string): string {
  const parts: string[] = [];
  if (quota.tokens_left !== null) parts.push(`${Math.max(0, quota.tokens_left).toLocaleString()} tokens`);
  if (quota.cost_left_micros !== null) parts.push(formatCost(Math.max(0, quota.cost_left_micros), currency));
  const who = quota.scope === "business" ? " (your organisation)" : "";
  return `${parts.join(" · ")} left ${PERIOD[quota.period]}${who}`;
}
