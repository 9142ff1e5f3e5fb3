"""Who is calling: email/password sign-in for cookie sessions, and Supabase tokens."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from flask_login import UserMixin
from werkzeug.security import check_password_hash, generate_password_hash

from backend.auth.store import UserStore
from backend.auth.tokens import TokenVerifier
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

    def get_id(self) -> str:
        return self.id


def normalise_email(email: str) -> str:
    return email.strip().lower()


class AuthService:
    def __init__(self, users: UserStore, verifier: TokenVerifier, default_business_id: str) -> None:
        self._users = users
        self._verifier = verifier
        self._default_business_id = default_business_id

    def login(self, email: str, password: str) -> AuthUser:
        row = self._users.find_by_email(normalise_email(email))
        if row is None:
            check_password_hash(_DUMMY_HASH, password)
            raise ApiError(401, "invalid_credentials", "Email or password is wrong")
        if not check_password_hash(row["password_hash"], password):
            raise ApiError(401, "invalid_credentials", "Email or password is wrong")
        return self._from_row(row)

    def user_for_cookie(self, user_id: str) -> AuthUser | None:
        row = self._users.find_by_id(user_id)
        return self._from_row(row) if row else None

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
