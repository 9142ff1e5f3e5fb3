from __future__ import annotations

from pydantic import Field

from backend.http import ApiModel, SuccessModel


class LoginBody(ApiModel):
    email: str = Field(min_length=3, max_length=254)
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
