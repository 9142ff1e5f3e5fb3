"""Who is calling: email/password sign-in for cookie sessions, and Supabase tokens."""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime, timedelta, timezone
from typing import Literal

from flask_login import UserMixin
from werkzeug.security import check_password_hash, generate_password_hash

from backend.auth.store import UserStore
from backend.auth.tokens import TokenVerifier, is_identity_part
from backend.errors import ApiError

MIN_PASSWORD_LENGTH = 8
# Checked when the email is unknown, so a wrong email costs as long as a wrong password.
_DUMMY_HASH = generate_password_hash("timing-equaliser-not-a-password")


@dataclass(frozen=True, eq=False)
class AuthUser(UserMixin):
    id: str
    business_id: str
    email: str | None
    via: Literal["cookie", "token"]
    # Cookie users: the sign-in (auth_sessions row) this request came through.
    session_id: str | None = None

    def get_id(self) -> str:
        return self.id


def normalise_email(email: str) -> str:
    return email.strip().lower()


class AuthService:
    def __init__(
        self, users: UserStore, verifier: TokenVerifier, default_business_id: str, *,
        session_max_age_seconds: float = 14 * 86_400, session_idle_seconds: float = 3 * 86_400,
    ) -> None:
        self._users = users
        self._verifier = verifier
        self._default_business_id = default_business_id
        self._max_age = session_max_age_seconds
        self._idle = session_idle_seconds

    def login(self, email: str, password: str) -> AuthUser:
        row = self._users.find_by_email(normalise_email(email))
        if row is None:
            check_password_hash(_DUMMY_HASH, password)
            raise ApiError(401, "invalid_credentials", "Email or password is wrong")
        if not check_password_hash(row["password_hash"], password):
            raise ApiError(401, "invalid_credentials", "Email or password is wrong")
        return self._from_row(row)

    def open_session(self, user: AuthUser) -> AuthUser:
        """A new sign-in for this user; the returned user carries its id for the cookie."""
        row = self._users.open_session(user.id, self._max_age)
        return replace(user, session_id=row["id"])

    def user_for_cookie(self, user_id: str, session_id: str | None) -> AuthUser | None:
        """The cookie's user, if its sign-in is live: not signed out, not past its
        lifetime, not idle too long. One indexed lookup; activity is written at
        most once a minute."""
        if not session_id:
            return None  # a cookie from before sign-ins were kept, or forged
        row = self._users.user_for_session(user_id, session_id, self._idle)
        if row is None:
            return None
        if row["last_seen_at"] < datetime.now(timezone.utc) - timedelta(seconds=60):
            self._users.touch_session(session_id)
        return replace(self._from_row(row), session_id=session_id)

    def cookie_valid_until(self, user_id: str, session_id: str) -> float | None:
        """When this sign-in lapses (epoch seconds) if it is live now; None if it is not."""
        row = self._users.user_for_session(user_id, session_id, self._idle)
        return row["valid_until"].timestamp() if row else None

    def purge_ended_sign_ins(self) -> int:
        return self._users.purge_ended_sessions()

    def sign_out(self, user: AuthUser) -> None:
        if user.session_id:
            self._users.revoke_session(user.id, user.session_id)

    def sign_out_everywhere(self, user: AuthUser) -> int:
        """End every cookie sign-in of this user, on every device. Returns how many were live."""
        return self._users.revoke_all_sessions(user.id)

    def user_for_token(self, token: str) -> AuthUser:
        """Raises InvalidToken for anything that cannot be trusted."""
        claims = self._verifier.verify(token)
        return AuthUser(
            id=claims.user_id,
            business_id=claims.business_id or self._default_business_id,
            email=claims.email,
            via="token",
        )

    def create_user(self, email: str, password: str, business_id: str) -> AuthUser:
        if not is_identity_part(business_id):
            raise ApiError(400, "validation_error", "Invalid business id",
                           {"business_id": "1-128 of A-Z a-z 0-9 . : @ | + -"})
        email = normalise_email(email)
        if "@" not in email or len(email) > 254:
            raise ApiError(400, "validation_error", "Invalid email", {"email": "not an email address"})
        if len(password) < MIN_PASSWORD_LENGTH:
            raise ApiError(
                400, "validation_error", "Password too short",
                {"password": f"at least {MIN_PASSWORD_LENGTH} characters"},
            )
        # werkzeug's default is scrypt with a random salt.
        row = self._users.create(email, generate_password_hash(password), business_id)
        if row is None:
            raise ApiError(409, "email_taken", "A user with this email already exists")
        return self._from_row(row)

    @staticmethod
    def _from_row(row: dict) -> AuthUser:
        return AuthUser(id=row["id"], business_id=row["business_id"], email=row["email"], via="cookie")
