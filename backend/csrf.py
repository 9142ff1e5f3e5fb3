"""Cross-site request forgery protection for cookie sessions.

A browser sends the session cookie with any request to this site, including
a form another site submits. So a state-changing request that a cookie would
authenticate (and sign-in itself, against login CSRF) must carry a custom
header, X-Requested-With, which a cross-site form cannot send and a cross-site
fetch can only send after a CORS preflight that only allowed origins pass; and
an Origin header, when the browser sends one, must be an allowed origin or
this site. Bearer-token requests need neither: browsers never attach tokens
by themselves.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar
from urllib.parse import urlsplit

from flask import Flask, request

from backend.errors import ApiError

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
CSRF_HEADER = "X-Requested-With"

View = TypeVar("View", bound=Callable)


def csrf_checked_without_cookie(view: View) -> View:
    """Check this route even when the request has no cookie yet (sign-in: login CSRF)."""
    view.csrf_without_cookie = True  # flask-openapi3's wrapper copies it (functools.wraps)
    return view


def _origin_of(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}".lower()


def install_csrf_protection(app: Flask, allowed_origins: list[str]) -> None:
    allowed = {_origin_of(o) for o in allowed_origins}
    cookie_names = (app.config["SESSION_COOKIE_NAME"], app.config.get("REMEMBER_COOKIE_NAME", "remember_token"))

    @app.before_request
    def _check_csrf() -> None:
        if request.method in SAFE_METHODS or not request.path.startswith("/api/"):
            return
        if request.headers.get("Authorization", "").lower().startswith("bearer "):
            return
        always = getattr(app.view_functions.get(request.endpoint), "csrf_without_cookie", False)
        if not always and not any(name in request.cookies for name in cookie_names):
            return  # nothing for a forged request to ride on; auth answers 401
        origin = request.headers.get("Origin")
        if origin and _origin_of(origin) not in allowed | {_origin_of(request.host_url)}:
            raise ApiError(403, "csrf_failed", "Requests from this origin are not allowed")
        if not request.headers.get(CSRF_HEADER):
            raise ApiError(
                403, "csrf_failed",
                f"Send the {CSRF_HEADER} header (any value) with this request; a cross-site form cannot",
            )
