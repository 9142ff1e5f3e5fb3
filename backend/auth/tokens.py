"""Verifying Supabase access tokens.

Supabase signs with HS256 (the project's JWT secret) or, with asymmetric keys,
RS256/ES256 published at {SUPABASE_URL}/auth/v1/.well-known/jwks.json. The
algorithm is taken from the token header only to choose the key; PyJWT then
accepts only that algorithm for that key, so `alg: none`, an HS256 token
signed with a public key, or an unknown `kid` are all refused.
"""

from __future__ import annotations

import hashlib
import re
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass

import jwt
from jwt import PyJWKClient

ASYMMETRIC_ALGORITHMS = ("RS256", "ES256", "EdDSA")
# A frontend sends the same access token with every request for up to an hour;
# checking it once is enough. Entries end at the token's own expiry.
VERIFIED_CACHE_SIZE = 4096
LEEWAY_SECONDS = 10


# User and business ids become parts of LangGraph thread ids,
# user_{user}_business_{business}_session_{session}: with no "_" in the first
# two, that mapping is one-to-one (the session id, last, may hold "_"). UUIDs
# (Supabase), emails and ids like "auth0|123" all fit.
IDENTITY_PART = re.compile(r"[A-Za-z0-9.:@|+-]{1,128}")


def is_identity_part(value: object) -> bool:
    return isinstance(value, str) and IDENTITY_PART.fullmatch(value) is not None


class InvalidToken(Exception):
    """The token cannot be trusted; the message is safe to show the client."""


class AuthUnavailable(Exception):
    """The token cannot be checked right now (the signing keys cannot be fetched): a 503, not a 401,
    so a frontend does not drop its user's session over the provider's outage."""


@dataclass(frozen=True, slots=True)
class TokenClaims:
    user_id: str
    business_id: str | None
    email: str | None


class TokenVerifier:
    def __init__(
        self,
        *,
        jwt_secret: str | None,
        supabase_url: str | None,
        audience: str,
        jwks_cache_seconds: int = 600,
        jwks_timeout_seconds: float = 5.0,
    ) -> None:
        self._secret = jwt_secret
        self._audience = audience
        # Keyed by the token's digest: a Supabase access token is about 1 KB, and
        # the cache need not hold credentials, only recognise them.
        self._verified: OrderedDict[bytes, tuple[TokenClaims, float]] = OrderedDict()
        self._lock = threading.Lock()
        self._jwks: SigningKeys | None = None
        if supabase_url:
            self._jwks = SigningKeys(
                PyJWKClient(
                    supabase_url.rstrip("/") + "/auth/v1/.well-known/jwks.json",
                    cache_jwk_set=False, cache_keys=False, timeout=jwks_timeout_seconds,
                ),
                fresh_seconds=max(jwks_cache_seconds, 1),
            )

    @property
    def enabled(self) -> bool:
        return bool(self._secret or self._jwks)

    def verify(self, token: str) -> TokenClaims:
        key = hashlib.sha256(token.encode()).digest()
        with self._lock:
            cached = self._verified.get(key)
            if cached is not None:
                if time.time() < cached[1] + LEEWAY_SECONDS:
                    self._verified.move_to_end(key)
                    return cached[0]
                del self._verified[key]
        claims, expires_at = self._verify_uncached(token)
        with self._lock:
            self._verified[key] = (claims, expires_at)
            if len(self._verified) > VERIFIED_CACHE_SIZE:
                self._verified.popitem(last=False)
        return claims

    def _verify_uncached(self, token: str) -> tuple[TokenClaims, float]:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise InvalidToken("The access token is malformed") from None
        alg = header.get("alg")
        key = self._key_for(alg, token)
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[alg],
                audience=self._audience,
                options={"require": ["exp", "sub", "aud"]},
                leeway=LEEWAY_SECONDS,
            )
        except jwt.ExpiredSignatureError:
            raise InvalidToken("The access token has expired") from None
        except jwt.InvalidAudienceError:
            raise InvalidToken("The access token is not for this audience") from None
        except jwt.MissingRequiredClaimError as exc:
            raise InvalidToken(f"The access token has no {exc.claim} claim") from None
        except jwt.PyJWTError:
            raise InvalidToken("The access token signature or claims are invalid") from None
        sub = claims.get("sub")
        if not is_identity_part(sub):
            raise InvalidToken("The access token's sub claim must be 1-128 of A-Z a-z 0-9 . : @ | + -")
        app_metadata = claims.get("app_metadata")
        business_id = app_metadata.get("business_id") if isinstance(app_metadata, dict) else None
        if business_id is not None and not is_identity_part(business_id):
            raise InvalidToken("The access token's app_metadata.business_id must be 1-128 of A-Z a-z 0-9 . : @ | + -")
        email = claims.get("email") if isinstance(claims.get("email"), str) else None
        return TokenClaims(user_id=sub, business_id=business_id or None, email=email), float(claims["exp"])

    def _key_for(self, alg: object, token: str):
        if alg == "HS256":
            if not self._secret:
                raise InvalidToken("HS256 access tokens are not accepted by this server")
            return self._secret
        if alg in ASYMMETRIC_ALGORITHMS:
            if self._jwks is None:
                raise InvalidToken("Asymmetric access tokens are not accepted by this server")
            try:
                kid = jwt.get_unverified_header(token).get("kid")
            except jwt.PyJWTError:
                raise InvalidToken("The access token is malformed") from None
            return self._jwks.key(kid)
        raise InvalidToken("The access token's algorithm is not accepted")


class SigningKeys:
    """The provider's public keys, served stale while they are fetched again.

    A known key is answered at once from memory; past `fresh_seconds` one
    background fetch refreshes the set, and if it fails the old keys keep
    serving. Only a key id not seen yet waits for a fetch, and the set is
    fetched for that at most once per COOLDOWN_SECONDS, so forged ids cannot
    make every request call the provider. When the keys cannot be had at all,
    the caller gets AuthUnavailable (503), not a 401.
    """

    COOLDOWN_SECONDS = 30

    def __init__(self, client: PyJWKClient, *, fresh_seconds: float) -> None:
        self._client = client
        self._fresh = fresh_seconds
        self._keys: dict[str, object] = {}
        self._fetched_at = float("-inf")
        self._last_attempt = float("-inf")
        self._failing = False  # the last fetch failed
        self._fetch_lock = threading.Lock()  # held through a fetch: only requests for unknown ids wait on it
        self._refresh_lock = threading.Lock()  # never held long
        self._refreshing = False

    def key(self, kid: object):
        if not isinstance(kid, str):
            raise InvalidToken("The access token names no signing key")
        known = self._keys.get(kid)
        if known is not None:
            if time.monotonic() - self._fetched_at > self._fresh:
                self._refresh_in_background()
            return known
        with self._fetch_lock:
            if kid not in self._keys and time.monotonic() - self._last_attempt >= self.COOLDOWN_SECONDS:
                self._fetch()
        known = self._keys.get(kid)
        if known is not None:
            return known
        if self._failing:
            raise AuthUnavailable("The signing keys cannot be fetched right now")
        raise InvalidToken("The access token's signing key is unknown")

    def _fetch(self) -> None:
        self._last_attempt = time.monotonic()
        try:
            keys = {k.key_id: k.key for k in self._client.get_jwk_set(refresh=True).keys if k.key_id}
        except jwt.PyJWTError:
            self._failing = True
            return
        self._keys, self._fetched_at, self._failing = keys, time.monotonic(), False

    def _refresh_in_background(self) -> None:
        with self._refresh_lock:
            if self._refreshing or time.monotonic() - self._last_attempt < self.COOLDOWN_SECONDS:
                return
            self._refreshing = True

        def refresh() -> None:
            try:
                with self._fetch_lock:
                    self._fetch()
            finally:
                self._refreshing = False

        threading.Thread(target=refresh, name="jwks-refresh", daemon=True).start()
