"""Callers: Supabase-style access tokens, and the thread id a session of theirs gets."""

from __future__ import annotations

import time

import jwt

from backend.sessions.service import build_thread_id


def make_token(sub: str, secret: str, *, business_id: str | None = None, lifetime_seconds: float = 3600,
               **claims) -> str:
    """An HS256 access token as Supabase issues it (audience `authenticated`), for user `sub`.
    A claim given as None is left out (a token without `exp`, say)."""
    payload = {"sub": sub, "aud": "authenticated", "role": "authenticated",
               "exp": int(time.time() + lifetime_seconds)}
    if business_id is not None:
        payload["app_metadata"] = {"business_id": business_id}
    payload.update(claims)
    return jwt.encode({k: v for k, v in payload.items() if v is not None}, secret, algorithm="HS256")


def thread_id(user_id: str, business_id: str, session_id: str) -> str:
    """The LangGraph thread id of a session: the backend's own formatting."""
    return build_thread_id(user_id, business_id, session_id)
