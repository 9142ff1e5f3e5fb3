"""Rate limits on sign-in, chat turns and session writes (flask-limiter).

A route opts in with a decorator that names its limit, `@rate_limited(CHAT)`;
init_rate_limits applies the configured limit to every route so marked.

Counters live in memory by default, which is per process: with several
gunicorn workers or hosts each has its own. Point RATE_LIMIT_STORAGE_URL at
Redis for limits shared by every process.

In memory, expired counters are swept at most once a second (SweptMemoryStorage),
not 10 ms after every limited request as limits' own MemoryStorage does: its
sweep visits every key, and with 3,000 users served in the last hour a session
write cost the server 7.9-8.7 ms of CPU, against 2.6 ms with none
(`python -m bench.limiter_cost`; now 2.0-3.1 ms either way).
"""

from __future__ import annotations

import logging
import math
import os
import sys
import time
from collections.abc import Callable
from typing import TypeVar

from flask import Flask
from flask_limiter import Limiter, RequestLimit
from flask_limiter.util import get_remote_address
from flask_login import current_user
from limits.errors import StorageError
from limits.storage import MemoryStorage

from backend.config import Settings
from backend.errors import error_response


log = logging.getLogger(__name__)

# The limits a route can name.
LOGIN = "login"  # per client address: sign-in guessing comes before anyone is signed in
CHAT = "chat"  # per user: chat turns
SESSION_WRITES = "session_writes"  # per user: one budget shared by every way of writing sessions

View = TypeVar("View", bound=Callable)


class SweptMemoryStorage(MemoryStorage):
    """limits' in-memory storage, with its sweep of expired counters at most once every
    `sweep_seconds`.

    The library starts a sweep (a timer thread, then a pass over every key with
    its lock) 10 ms after any limited request, so under steady traffic it sweeps
    a hundred times a second whatever the number of keys; moving-window keys
    stay for their whole window (an hour for the session-write limit). The sweep
    only frees memory: every check compares timestamps itself, so counts are
    the same; expired entries just stay up to `sweep_seconds` longer.
    """

    STORAGE_SCHEME = ["swept-memory"]
    sweep_seconds = 1.0

    def __init__(self, uri: str | None = None, **options) -> None:
        self._next_sweep = 0.0
        super().__init__(uri, **options)

    # Overrides the library's private scheduler (the name MemoryStorage's
    # `self.__schedule_expiry()` calls resolve to); tests/test_web_security.py
    # checks that it still takes effect.
    def _MemoryStorage__schedule_expiry(self) -> None:
        now = time.monotonic()
        if now >= self._next_sweep:
            self._next_sweep = now + self.sweep_seconds
            super()._MemoryStorage__schedule_expiry()  # type: ignore[misc]


def storage_uri(configured: str) -> str:
    """memory:// is served by SweptMemoryStorage; any other storage as configured."""
    if configured.startswith("memory://"):
        return SweptMemoryStorage.STORAGE_SCHEME[0] + configured[len("memory"):]
    return configured


def rate_limited(limit: str) -> Callable[[View], View]:
    """Put the route under one of the app's rate limits (LOGIN, CHAT or SESSION_WRITES)."""
    if limit not in (LOGIN, CHAT, SESSION_WRITES):
        raise ValueError(f"unknown rate limit {limit!r}")

    def mark(view: View) -> View:
        view.rate_limit = limit  # flask-openapi3's wrapper copies it (functools.wraps)
        return view

    return mark


def _multi_process() -> bool:
    """Under gunicorn (several workers by default), or told so."""
    return "gunicorn" in sys.modules or int(os.environ.get("WEB_CONCURRENCY", "1") or 1) > 1


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
        storage_uri=storage_uri(settings.rate_limit_storage_url),
        enabled=settings.rate_limits_enabled,
        on_breach=too_many_requests,
        strategy="moving-window",
        # Fail closed by default: with the counters unreachable, a limited
        # endpoint (sign-in, chat) answers 503 rather than run unlimited
        # (unlimited password guessing). RATE_LIMIT_FAIL_OPEN=true lets them
        # through instead, with a logged error, for those who prefer that.
        swallow_errors=settings.rate_limit_fail_open,
        # Every failure of the counters' storage reaches the app as limits' own StorageError, and
        # only that is an outage: a storage's native errors can be as broad as ValueError (the
        # in-memory storage's), and registering those would answer any bug 503 rate_limit_unavailable.
        storage_options={"wrap_exceptions": True},
    )
    if settings.rate_limits_enabled and settings.rate_limit_storage_url.startswith("memory://") and _multi_process():
        log.warning(
            "rate limits count in memory, per server process: each worker allows the full limit; "
            "set RATE_LIMIT_STORAGE_URL=redis://... to share the counts",
        )

    def _counters_unavailable(exc: StorageError):  # only reached when failing closed
        cause = getattr(exc, "storage_error", exc)  # what the storage raised (redis' ConnectionError, ...)
        log.error("rate limit counters unreachable", extra={"error_class": type(cause).__name__})
        return error_response(503, "rate_limit_unavailable", "The service cannot check rate limits right now; "
                              "try again shortly", headers={"Retry-After": "5"})

    app.register_error_handler(StorageError, _counters_unavailable)

    # The limits are checked by the decorator's wrapper, so the registered
    # views themselves are wrapped (this limiter belongs to this app only).
    limits = {
        LOGIN: limiter.limit(settings.login_rate_limit, key_func=get_remote_address),
        CHAT: limiter.limit(settings.chat_rate_limit, key_func=caller_key),
        SESSION_WRITES: limiter.shared_limit(settings.session_write_rate_limit, scope="session-writes",
                                             key_func=caller_key),
    }
    views = app.view_functions
    for endpoint, view in list(views.items()):
        limit = getattr(view, "rate_limit", None)
        if limit is not None:
            views[endpoint] = limits[limit](view)
    # The wrappers hold the limiter only weakly: the app must keep it alive.
    app.extensions["rate_limiter"] = limiter
    return limiter
