from __future__ import annotations

from pydantic import Field

from backend.http import NO_CONTROL_CHARS_PATTERN, ApiModel, SuccessModel


class LoginBody(ApiModel):
    # No control characters: a NUL cannot even be looked up (PostgreSQL text refuses it).
    email: str = Field(min_length=3, max_length=254, pattern=NO_CONTROL_CHARS_PATTERN,
                       description="No control characters")
    password: str = Field(min_length=1, max_length=1024)


class UserOut(ApiModel):
    user_id: str
    business_id: str
    email: str | None
    auth_method: str = Field(description="'cookie' or 'token'")


class UserResponse(SuccessModel):
    data: UserOut


class LogoutResponse(SuccessModel):
    pass


class LogoutAllResponse(SuccessModel):
    revoked: int = Field(description="Cookie sign-ins ended (every device's)")
