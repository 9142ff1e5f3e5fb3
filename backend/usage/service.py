"""Usage: what each model call cost, totals, and the quotas a turn starts under.

The chat area asks for a turn's start parameters (`start_limits`: the quotas that
hold, what the model may be given, its prices) and hands its calls back at the end
(`ledger_rows`), and both ride on the turn's own start and end statements. Naming
calls are recorded on their own (`record_naming`). Routes read totals and quotas.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Callable
from datetime import date, datetime, timedelta, timezone

from backend.auth.service import AuthUser
from backend.errors import ApiError, NotFound
from backend.usage.prices import Price, Prices
from backend.usage.store import UsageStore
from llm.usage import CallUsage, estimate_tokens

log = logging.getLogger(__name__)

PERIODS = ("day", "month")


def micros(amount: float | None) -> int | None:
    """Currency units -> micro-units."""
    return None if amount is None else round(amount * 1_000_000)


class UsageService:
    def __init__(
        self, store: UsageStore, prices: Prices, *, default_quotas: dict | None = None,
        max_output_tokens: int | None = None, context_tokens: int | None = None, reserve_seconds: float = 3600.0,
        retention_days: int | None = None, clock: Callable[[], datetime] | None = None,
    ) -> None:
        self._store = store
        self.prices = prices
        # {"day": {"tokens": n|None, "cost_micros": n|None}, "month": {...}}, only periods with a limit.
        self._defaults = {p: q for p, q in (default_quotas or {}).items()
                          if q.get("tokens") is not None or q.get("cost_micros") is not None} or None
        self._max_output = max_output_tokens or 2**31 - 1
        self._context_tokens = context_tokens
        self._reserve_seconds = reserve_seconds
        self._retention_days = retention_days
        # Injected in tests to cross a period's end without waiting; None: the database's now().
        self.clock = clock

    def now(self) -> datetime | None:
        return self.clock() if self.clock is not None else None

    # --- a turn's start and end -------------------------------------------------------------

    def start_limits(self, model: str) -> dict:
        """start_chat_turn's usage parameters for a turn of `model` (RunStore.start_run_in_session)."""
        price = self.prices.price_of(model)
        return {
            "now": self.now(), "defaults": self._defaults_json(), "want_tokens": min(self._max_output, 2**31 - 1),
            "context_tokens": self._context_tokens, "price_input": price.input if price else 0.0,
            "price_output": price.output if price else 0.0, "reserve_seconds": self._reserve_seconds,
        }

    def _defaults_json(self) -> str | None:
        return json.dumps(self._defaults) if self._defaults else None

    @staticmethod
    def refusal(grant: dict) -> ApiError:
        """The 429 of a turn over quota (start_chat_turn said `blocked`)."""
        return ApiError(
            429, "usage_limit_reached",
            "Your usage limit for this period is reached; it resets at the time Retry-After gives",
            headers={"Retry-After": str(grant.get("retry_after_seconds") or 60),
                     "X-Quota-Remaining": remaining_header(grant)},
        )

    def ledger_rows(
        self, calls: list[CallUsage], *, kind: str, user_id: str, business_id: str, session_id: str,
        session_row_id: int | None, run_id: uuid.UUID | None,
    ) -> list[dict]:
        """Ledger rows for these calls, each priced now (and keeping the price it was charged)."""
        rows = []
        now = self.now()
        for call in calls:
            price: Price | None = self.prices.price_of(call.model)
            rows.append({
                "created_at": now.isoformat() if now else None, "user_id": user_id, "business_id": business_id,
                "session_id": session_id, "session_row_id": session_row_id,
                "run_id": str(run_id) if run_id else None, "kind": kind, "model": call.model,
                "input_tokens": call.input_tokens, "cached_input_tokens": call.cached_input_tokens,
                "output_tokens": call.output_tokens, "reasoning_tokens": call.reasoning_tokens,
                "cost_micros": price.cost_micros(call) if price else 0,
                "currency": price.currency if price else self.prices.currency,
                "price_input": price.input if price else None,
                "price_cached_input": price.cached_input if price else None,
                "price_output": price.output if price else None,
                "price_version": price.version if price else None, "source": call.source,
            })
        return rows

    def interrupted_run_rows(self, run: dict, claimed: dict, model: str) -> list[dict]:
        """The ledger row of a run whose process died (upkeep finishes it): its call, estimated
        from the message and the text that process had written."""
        call = CallUsage(model=model, input_tokens=estimate_tokens(claimed.get("query") or "") + 4,
                         output_tokens=estimate_tokens(claimed.get("reply") or ""), source="estimated")
        return self.ledger_rows([call], kind="chat", user_id=run["user_id"], business_id=claimed["business_id"],
                                session_id=run["session_id"], session_row_id=claimed["session_row_id"],
                                run_id=run["run_id"])

    def record_naming(self, session: dict, calls: list[CallUsage]) -> None:
        """A naming job's calls (each answered attempt)."""
        if calls:
            self._store.record(self.ledger_rows(
                calls, kind="naming", user_id=session["user_id"], business_id=session["business_id"],
                session_id=session["session_id"], session_row_id=session["id"], run_id=None))

    def call_fits(self, session: dict, model: str, input_tokens: int, output_tokens: int) -> bool:
        """Whether a call of `model` this size fits in what every quota of the session's user and business
        leaves (running turns' reservations counted): a naming call is skipped when not. One statement
        (usage_quota_state); without a quota it is one indexed read of usage_quotas."""
        state = self._store.quota_state(session["user_id"], session["business_id"], self.now(), self._defaults)
        if not state:
            return True
        price = self.prices.price_of(model)
        cost = price.cost_micros(CallUsage(model, input_tokens, output_tokens)) if price else 0
        return all((q["tokens_left"] is None or q["tokens_left"] >= input_tokens + output_tokens)
                   and (q["cost_left_micros"] is None or q["cost_left_micros"] >= cost) for q in state)

    # --- what the routes read ------------------------------------------------------------------

    def session_usage(self, user: AuthUser, session_id: str) -> dict:
        row = self._store.session_usage(user.id, session_id)
        if row is None:
            raise NotFound("Session not found")
        return {**row, "currency": self.prices.currency}

    def totals(self, user: AuthUser, group_by: str, since: date | None, until: date | None, limit: int = 400) -> dict:
        today = (self.now() or datetime.now(timezone.utc)).astimezone(timezone.utc).date()
        until = until or today
        # A range after its end is empty (no 400: a document cannot say one day must precede another).
        since = since or max(date.min + timedelta(days=29), until) - timedelta(days=29)
        rows, total = self._store.grouped(user.id, group_by, since, until, limit + 1)
        return {"group_by": group_by, "since": since, "until": until, "currency": self.prices.currency,
                "data": rows[:limit], "more": len(rows) > limit, "total": total, "quotas": self.quotas(user)}

    def usage_of_session(self, session_row: dict) -> dict:
        """A session's totals, for its export (SessionService.export)."""
        return {**self._store.session_row_usage(session_row["id"]), "currency": self.prices.currency}

    def usage_of_sessions(self, rows: list[dict]) -> dict[int, dict]:
        """Each session's totals by its chat_sessions.id (zeros for one that cost nothing), in one read
        for the whole page (SessionService.with_usage: `include_usage`)."""
        ids = [row["id"] for row in rows]
        found = self._store.sessions_totals(ids) if ids else {}
        zero = {"calls": 0, "input_tokens": 0, "output_tokens": 0, "cost_micros": 0}
        return {row_id: {**found.get(row_id, zero), "currency": self.prices.currency} for row_id in ids}

    def quotas(self, user: AuthUser) -> list[dict]:
        return self._store.quota_state(user.id, user.business_id, self.now(), self._defaults)

    # --- operators -------------------------------------------------------------------------------

    def set_quota(self, *, user_id: str | None, business_id: str | None, period: str,
                  max_tokens: int | None, max_cost: float | None) -> dict | None:
        if (user_id is None) == (business_id is None):
            raise ValueError("give exactly one of a user id and a business id")
        if period not in PERIODS:
            raise ValueError("period must be day or month")
        if (max_tokens is not None and max_tokens < 0) or (max_cost is not None and max_cost < 0):
            raise ValueError("a limit must be 0 or more")
        scope, scope_id = ("user", user_id) if user_id is not None else ("business", business_id)
        return self._store.set_quota(scope, scope_id, period, max_tokens, micros(max_cost), self.now())

    def purge(self) -> int:
        return self._store.purge(self._retention_days)


def remaining_header(grant: dict) -> str:
    """X-Quota-Remaining: what the tightest quotas leave, `tokens=N` and/or `cost_micros=N` (never below 0)."""
    parts = []
    if grant.get("tokens_left") is not None:
        parts.append(f"tokens={max(0, grant['tokens_left'])}")
    if grant.get("cost_left_micros") is not None:
        parts.append(f"cost_micros={max(0, grant['cost_left_micros'])}")
    return ", ".join(parts) or "unlimited"
