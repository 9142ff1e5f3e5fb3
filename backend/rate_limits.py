"""Rate limits on sign-in and on chat turns (flask-limiter).

Counters live in memory by default, which is per process: with several
gunicorn workers or hosts each has its own. Point RATE_LIMIT_STORAGE_URL at
Redis for limits shared by every process.
"""

from __future__ import annotations

import math
import time

from flask import Flask
from flask_limiter import Limiter, RequestLimit
from flask_limiter.util import get_remote_address
from flask_login import current_user

from backend.config import Settings
from backend.errors import error_response


def caller_key() -> str:
    """Per user when signed in (one user, many IPs), else per client address."""
    if current_user.is_authenticated:
        return f"user:{current_user.get_id()}"
    return f"ip:{get_remote_address()}"


def too_many_requests(limit: RequestLimit):
    """429 in the API's error shape, with Retry-After (and only then)."""
    retry_after = max(1, math.ceil(limit.reset_at - time.time()))
    return error_response(
        429, "rate_limited", f"Too many requests (limit: {limit.limit}); try again in {retry_after} s",
        headers={"Retry-After": str(retry_after)},
    )


def init_rate_limits(app: Flask, settings: Settings) -> Limiter:
    limiter = Limiter(
        key_func=get_remote_address,
        app=app,
        storage_uri=settings.rate_limit_storage_url,
        enabled=settings.rate_limits_enabled,
        on_breach=too_many_requests,
        strategy="moving-window",
        # An unreachable Redis must not take the API down with it.
        swallow_errors=True,
    )
    # The limits are checked by the decorator's wrapper, so the registered
    # views themselves are wrapped (this limiter belongs to this app only).
    views = app.view_functions
    # By address: sign-in guessing comes before anyone is signed in.
    views["auth.login"] = limiter.limit(settings.login_rate_limit, key_func=get_remote_address)(views["auth.login"])
    views["chat.query_stream"] = limiter.limit(settings.chat_rate_limit, key_func=caller_key)(views["chat.query_stream"])
    # The wrappers hold the limiter only weakly: the app must keep it alive.
    app.extensions["rate_limiter"] = limiter
    return limiter
