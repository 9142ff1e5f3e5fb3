"""The usage routes' paths, query and responses."""

from __future__ import annotations

from datetime import date
from typing import Literal

from pydantic import BaseModel, Field

from backend.http import QueryModel, SuccessModel, UtcDatetime
from backend.sessions.models import SessionId


DAY_PATTERN = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$"


class SessionUsagePath(BaseModel):
    session_id: SessionId


class UsageQuery(QueryModel):
    group_by: Literal["day", "model", "session"] = Field(default="day", description="How totals are grouped")
    # Strings, not dates: pydantic would take `until=0` for a Unix time.
    since: str | None = Field(default=None, pattern=DAY_PATTERN, json_schema_extra={"format": "date"},
                              description="First UTC day (YYYY-MM-DD), inclusive; default 29 days before until")
    until: str | None = Field(default=None, pattern=DAY_PATTERN, json_schema_extra={"format": "date"},
                              description="Last UTC day (YYYY-MM-DD), inclusive; default today")
    limit: int = Field(default=400, ge=1, le=4000,
                       description="The most groups returned: days in order; models and sessions most costly first")


class UsageTotals(BaseModel):
    calls: int = Field(description="Model calls (chat turns and naming calls)")
    input_tokens: int
    cached_input_tokens: int
    output_tokens: int
    reasoning_tokens: int
    cost_micros: int = Field(description="Cost in micro-units of `currency` (1,000,000 = 1 unit)")


class SessionUsage(UsageTotals):
    session_id: str
    currency: str


class SessionUsageResponse(SuccessModel):
    data: SessionUsage


class UsageGroup(UsageTotals):
    key: str = Field(description="The day (YYYY-MM-DD), model or session id")


class QuotaState(BaseModel):
    scope: Literal["user", "business"]
    period: Literal["day", "month"]
    max_tokens: int | None
    max_cost_micros: int | None
    tokens_left: int | None = Field(description="Negative when a turn went past the limit")
    cost_left_micros: int | None
    resets_at: UtcDatetime


class UsageResponse(SuccessModel):
    group_by: Literal["day", "model", "session"]
    since: date
    until: date
    currency: str
    data: list[UsageGroup]
    more: bool = Field(description="More groups than `limit`: `total` still counts them all")
    total: UsageTotals
    quotas: list[QuotaState] = Field(description="The quotas that hold for the caller, with what each leaves now")
