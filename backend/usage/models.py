"""The usage routes' paths, query and responses."""

from __future__ import annotations

from datetime import date
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, Field

from backend.http import QueryModel, SuccessModel, UtcDatetime
from backend.sessions.models import SessionId


DAY_PATTERN = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$"


def _a_real_day(value: str) -> str:
    date.fromisoformat(value)  # ValueError (2026-02-30): a 400 naming the field
    return value


# What GET /api/llm/usage and the MCP tool get_usage both take (backend/mcp_server/tools.py).
UsageGroupBy = Literal["day", "model", "session"]
# Strings, not dates: pydantic would take `until=0` for a Unix time.
UsageDay = Annotated[str, Field(pattern=DAY_PATTERN, json_schema_extra={"format": "date"}),
                     AfterValidator(_a_real_day)]
UsageLimit = Annotated[int, Field(ge=1, le=4000)]
GROUP_BY_DESCRIPTION = "How totals are grouped"
SINCE_DESCRIPTION = "First UTC day (YYYY-MM-DD), inclusive; default 29 days before until"
UNTIL_DESCRIPTION = "Last UTC day (YYYY-MM-DD), inclusive; default today"
LIMIT_DESCRIPTION = "The most groups returned: days in order; models and sessions most costly first"


class SessionUsagePath(BaseModel):
    session_id: SessionId


class UsageQuery(QueryModel):
    group_by: UsageGroupBy = Field(default="day", description=GROUP_BY_DESCRIPTION)
    since: UsageDay | None = Field(default=None, description=SINCE_DESCRIPTION)
    until: UsageDay | None = Field(default=None, description=UNTIL_DESCRIPTION)
    limit: UsageLimit = Field(default=400, description=LIMIT_DESCRIPTION)


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


class UsageReport(BaseModel):
    """The caller's usage between two days, grouped (GET /api/llm/usage; the MCP tool get_usage)."""

    group_by: UsageGroupBy
    since: date
    until: date
    currency: str
    data: list[UsageGroup]
    more: bool = Field(description="More groups than `limit`: `total` still counts them all")
    total: UsageTotals
    quotas: list[QuotaState] = Field(description="The quotas that hold for the caller, with what each leaves now")


class UsageResponse(UsageReport, SuccessModel):  # SuccessModel last: `success` is the first field
    pass
