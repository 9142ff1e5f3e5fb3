"""/api/auth: sign in and out with a cookie, and ask who you are."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from flask import Flask, g, request, session
from flask.sessions import SecureCookieSessionInterface
from flask_login import LoginManager, current_user, login_user, logout_user
from flask_openapi3 import APIBlueprint, Tag

from backend.auth.models import LoginBody, LogoutAllResponse, LogoutResponse, UserOut, UserResponse
from backend.auth.service import AuthService, AuthUser
from backend.auth.tokens import AuthUnavailable, InvalidToken
from backend.csrf import csrf_checked_without_cookie
from backend.errors import error_response
from backend.http import error_responses, ok
from backend.rate_limits import LOGIN, rate_limited

if TYPE_CHECKING:
    from itsdangerous import URLSafeTimedSerializer  # Flask's own signer (a Flask dependency)

log = logging.getLogger(__name__)

# Documented on every operation that needs a caller.
SECURITY = [{"bearerAuth": []}, {"cookieAuth": []}]
SECURITY_SCHEMES = {
    "bearerAuth": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT (Supabase access token)"},
    "cookieAuth": {"type": "apiKey", "in": "cookie", "name": "session"},
}


def user_out(user: AuthUser) -> UserOut:
    return UserOut(user_id=user.id, business_id=user.business_id, email=user.email, auth_method=user.via)


def auth_api(auth: AuthService) -> APIBlueprint:
    bp = APIBlueprint("auth", __name__, url_prefix="/api/auth", abp_tags=[Tag(name="auth")])

    @bp.post("/login", responses={200: UserResponse, **error_responses(400, 401, 403, 413, 429, 500, 503)})
    @rate_limited(LOGIN)
    @csrf_checked_without_cookie
    def login(body: LoginBody):
        """Sign in with email and password; sets an HttpOnly session cookie."""
        user = auth.open_session(auth.login(body.email, body.password))
        login_user(user)
        session["sid"] = user.session_id  # the sign-in the server can end (sign-out, lifetime, idle)
        log.info("login", extra={"user_id": user.id})
        return ok(UserResponse(data=user_out(user)))

    @bp.post("/logout", responses={200: LogoutResponse, **error_responses(403, 413, 500)})
    def logout():
        """Sign out: ends this sign-in on the server (a copy of the cookie stops working) and clears the cookie."""
        if current_user.is_authenticated and current_user.via == "cookie":
            auth.sign_out(current_user)
        logout_user()
        session.pop("sid", None)
        return ok(LogoutResponse())

    @bp.post(
        "/logout-all", responses={200: LogoutAllResponse, **error_responses(401, 403, 413, 500, 503)}, security=SECURITY,
    )
    def logout_all():
        """Sign out everywhere: end every cookie sign-in of the caller, on every device."""
        if not current_user.is_authenticated:
            return unauthorized()
        revoked = auth.sign_out_everywhere(current_user)
        if current_user.via == "cookie":
            logout_user()
            session.pop("sid", None)
        log.info("logout everywhere", extra={"user_id": current_user.id if current_user.is_authenticated else None,
                                             "revoked": revoked})
        return ok(LogoutAllResponse(revoked=revoked))

    @bp.get("/me", responses={200: UserResponse, **error_responses(401, 500, 503)}, security=SECURITY)
    def me():
        """Who the request is authenticated as."""
        if not current_user.is_authenticated:
            return unauthorized()
        return ok(UserResponse(data=user_out(current_user)))

    return bp


def unauthorized():
    """401 JSON, never a redirect; says why when a token was refused."""
    if g.get("auth_unavailable"):
        return error_response(503, "auth_unavailable", "Sign-in cannot be checked right now; try again shortly",
                              headers={"Retry-After": "5"})
    reason = g.get("auth_error")
    if reason:
        return error_response(401, "invalid_token", reason, headers={"WWW-Authenticate": 'Bearer error="invalid_token"'})
    return error_response(401, "unauthorized", "Sign in or send a valid access token", headers={"WWW-Authenticate": "Bearer"})


class CookieSessions(SecureCookieSessionInterface):
    """Flask's signed-cookie sessions, with the signer built once per key instead of on
    every request (Flask builds it even for a request without a cookie, such as every
    request sent with a token: 24 us of a CRUD request's 926 in-process)."""

    def __init__(self) -> None:
        self._signer: tuple[tuple, URLSafeTimedSerializer | None] | None = None

    def get_signing_serializer(self, app: Flask) -> URLSafeTimedSerializer | None:
        keys = (app.secret_key, tuple(app.config.get("SECRET_KEY_FALLBACKS") or ()))
        cached = self._signer
        if cached is None or cached[0] != keys:
            cached = self._signer = (keys, super().get_signing_serializer(app))
        return cached[1]


def init_login(app: Flask, auth: AuthService) -> None:
    app.session_interface = CookieSessions()
    manager = LoginManager()
    manager.init_app(app)
    # "basic" marks the session non-fresh when the client's IP/agent changes;
    # "strong" would log React users out on every network change.
    manager.session_protection = "basic"

    @manager.user_loader
    def _load_from_cookie(user_id: str):
        return auth.user_for_cookie(user_id, session.get("sid"))

    @manager.request_loader
    def _load_from_token(req):
        header = req.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            if header:
                g.auth_error = "The Authorization header must be 'Bearer <access token>'"
            return None
        try:
            return auth.user_for_token(token.strip())
        except InvalidToken as exc:
            g.auth_error = str(exc)
            log.info("token refused", extra={"reason": str(exc)})
            return None
        except AuthUnavailable:
            g.auth_unavailable = True
            log.warning("token not checked: the signing keys cannot be fetched")
            return None

    manager.unauthorized_handler(unauthorized)


def require_user() -> None:
    """A before_request hook for blueprints whose every route needs a caller."""
    if request.method == "OPTIONS":
        return None
    if not current_user.is_authenticated:
        return unauthorized()
    return None
