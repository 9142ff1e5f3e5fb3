"""Auth: cookie sessions with email/password, Supabase bearer tokens (HS256 and JWKS), CORS."""

from __future__ import annotations

import json
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm

from tests.helpers import JWT_SECRET, client_for, make_token

# What the React frontend sends with every fetch (see backend/csrf.py).
BROWSER = {"X-Requested-With": "fetch"}


def signup(app, email=None, password="correct horse battery", business_id="biz-cookie"):
    email = email or f"user-{uuid.uuid4().hex[:8]}@example.com"
    runner = app.test_cli_runner()
    result = runner.invoke(
        args=["create-user", "--email", email, "--business-id", business_id], input=f"{password}\n{password}\n"
    )
    assert result.exit_code == 0, result.output
    return email, password


# --- cookie sessions --------------------------------------------------------

def test_login_me_logout_with_cookie(app, anon):
    email, password = signup(app)
    r = anon.post("/api/auth/login", json={"email": email.upper(), "password": password}, headers=BROWSER)
    assert r.status_code == 200
    user = r.get_json()["data"]
    assert user["email"] == email and user["business_id"] == "biz-cookie" and user["auth_method"] == "cookie"

    cookie = r.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie
    assert "Secure" in cookie  # not development

    me = anon.get("/api/auth/me")
    assert me.status_code == 200 and me.get_json()["data"]["user_id"] == user["user_id"]

    created = anon.post("/api/llm/sessions", json={"session_id": "cookie-chat"}, headers=BROWSER)
    assert created.status_code == 201
    assert created.get_json()["thread_id"] == f"user_{user['user_id']}_business_biz-cookie_session_cookie-chat"

    assert anon.post("/api/auth/logout", headers=BROWSER).status_code == 200
    assert anon.get("/api/auth/me").status_code == 401
    assert anon.get("/api/llm/sessions").status_code == 401


def test_development_cookie_is_not_secure(make_app):
    app = make_app(app_env="development")
    email, password = signup(app)
    r = app.test_client().post("/api/auth/login", json={"email": email, "password": password}, headers=BROWSER)
    assert r.status_code == 200 and "Secure" not in r.headers["Set-Cookie"]


def test_login_wrong_password_or_unknown_email(app, anon):
    email, _ = signup(app)
    for body in ({"email": email, "password": "wrong password"}, {"email": "nobody@example.com", "password": "x"}):
        r = anon.post("/api/auth/login", json=body, headers=BROWSER)
        assert r.status_code == 401
        assert r.get_json()["error"] == {"code": "invalid_credentials", "message": "Email or password is wrong"}
        assert "Set-Cookie" not in r.headers


@pytest.mark.parametrize("body", [{}, {"email": "a@b.c"}, {"email": 5, "password": "x"}, {"email": "a@b.c", "password": None}])
def test_login_bad_bodies(anon, body):
    r = anon.post("/api/auth/login", json=body, headers=BROWSER)
    assert r.status_code == 400 and r.get_json()["error"]["code"] == "validation_error"


def test_create_user_cli_refuses_duplicates_and_short_passwords(app):
    email, _ = signup(app)
    runner = app.test_cli_runner()
    dup = runner.invoke(args=["create-user", "--email", email, "--business-id", "b"], input="longenough1\nlongenough1\n")
    assert dup.exit_code != 0 and "already exists" in dup.output
    short = runner.invoke(args=["create-user", "--email", "s@example.com", "--business-id", "b"], input="short\nshort\n")
    assert short.exit_code != 0 and "8 characters" in short.output


def test_passwords_are_stored_hashed(app, pool):
    email, password = signup(app)
    with pool.connection() as conn:
        stored = conn.execute("select password_hash from app_users where email = %s", (email,)).fetchone()["password_hash"]
    assert password not in stored and stored.startswith("scrypt:")


def test_session_cookies_follow_a_changed_secret_key(make_app):
    # The cookie signer is built once per key (auth.routes.CookieSessions), not per request.
    app = make_app()
    email, password = signup(app)
    client = app.test_client()
    assert client.post("/api/auth/login", json={"email": email, "password": password}, headers=BROWSER).status_code == 200
    assert client.get("/api/auth/me").status_code == 200
    assert client.get("/api/auth/me").status_code == 200  # the same signer, used again

    old_key = app.secret_key
    app.secret_key = old_key + "-rotated"
    assert client.get("/api/auth/me").status_code == 401  # signed with a key no longer in use
    app.config["SECRET_KEY_FALLBACKS"] = [old_key]
    assert client.get("/api/auth/me").status_code == 200  # still accepted while the old key is a fallback


def test_forged_session_cookie_is_ignored(app):
    client = app.test_client()
    client.set_cookie("session", "eyJfdXNlcl9pZCI6IjEyMyJ9.forged.signature")
    assert client.get("/api/auth/me").status_code == 401


# --- bearer tokens (HS256) --------------------------------------------------

def test_bearer_token_identifies_user_and_business(app):
    sub = str(uuid.uuid4())
    client = app.test_client()
    r = client.get("/api/auth/me", headers={"Authorization": f"Bearer {make_token(sub, business_id='acme')}"})
    assert r.status_code == 200
    assert r.get_json()["data"] == {"user_id": sub, "business_id": "acme", "email": None, "auth_method": "token"}


def test_bearer_token_without_business_uses_default(app):
    sub = str(uuid.uuid4())
    r = app.test_client().get("/api/auth/me", headers={"Authorization": f"Bearer {make_token(sub, business_id=None)}"})
    assert r.get_json()["data"]["business_id"] == "default"


def _none_alg_token(sub):
    header = jwt.utils.base64url_encode(json.dumps({"alg": "none", "typ": "JWT"}).encode()).decode()
    body = jwt.utils.base64url_encode(
        json.dumps({"sub": sub, "aud": "authenticated", "exp": int(time.time()) + 60}).encode()
    ).decode()
    return f"{header}.{body}."


@pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")  # the HS512 case, on purpose
@pytest.mark.parametrize(
    "token, message",
    [
        (lambda s: make_token(s, exp=int(time.time()) - 3600), "expired"),
        (lambda s: make_token(s, aud="anon"), "audience"),
        (lambda s: make_token(s, secret="another-secret-that-is-long-enough-xx"), "invalid"),
        (lambda s: make_token(None), "sub"),
        (lambda s: make_token(s, exp=None), "exp"),
        (lambda s: make_token("   "), "sub"),
        (_none_alg_token, "algorithm"),
        (lambda s: "not.a.jwt", "malformed"),
        (lambda s: "garbage", "malformed"),
        (lambda s: jwt.encode({"sub": s, "aud": "authenticated", "exp": int(time.time()) + 60}, JWT_SECRET, algorithm="HS512"), "algorithm"),
    ],
)
def test_bad_tokens_are_refused_with_401_json(app, token, message):
    r = app.test_client().get("/api/llm/sessions", headers={"Authorization": f"Bearer {token(str(uuid.uuid4()))}"})
    assert r.status_code == 401
    err = r.get_json()["error"]
    assert err["code"] == "invalid_token" and message in err["message"]
    assert "Location" not in r.headers


def test_wrong_authorization_scheme(app):
    r = app.test_client().get("/api/llm/sessions", headers={"Authorization": "Basic dXNlcjpwYXNz"})
    assert r.status_code == 401 and "Bearer" in r.get_json()["error"]["message"]


def test_no_auth_is_401_json_never_redirect(anon):
    for method, url in [("get", "/api/llm/sessions"), ("post", "/api/llm/sessions"), ("get", "/api/llm/sessions/x"),
                        ("put", "/api/llm/sessions/x"), ("delete", "/api/llm/sessions/x"), ("get", "/api/auth/me")]:
        r = getattr(anon, method)(url, json={})
        assert r.status_code == 401, (method, url)
        assert r.get_json()["error"]["code"] == "unauthorized"
        assert r.headers.get("WWW-Authenticate", "").startswith("Bearer")


# --- bearer tokens signed with the project's asymmetric keys (JWKS) ------------

class JwksServer:
    """Serves a JWKS document on loopback, like {SUPABASE_URL}/auth/v1/.well-known/jwks.json."""

    def __init__(self, keys: dict[str, ec.EllipticCurvePrivateKey]) -> None:
        jwks = {"keys": []}
        for kid, key in keys.items():
            jwk = json.loads(ECAlgorithm.to_jwk(key.public_key()))
            jwks["keys"].append({**jwk, "kid": kid, "alg": "ES256", "use": "sig"})
        self.fetches = 0
        self.down = False  # answer 503, as a provider in an outage
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                if self.path != "/auth/v1/.well-known/jwks.json":
                    self.send_error(404)
                    return
                outer.fetches += 1
                if outer.down:
                    self.send_error(503)
                    return
                body = json.dumps(jwks).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def signing_key():
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture(scope="module")
def jwks(signing_key):
    server = JwksServer({"key-1": signing_key})
    yield server
    server.close()


@pytest.fixture(scope="module")
def jwks_app(module_make_app, jwks):
    return module_make_app(supabase_url=jwks.url, supabase_jwt_secret=None)


def es256_token(key, sub, kid="key-1", **claims):
    payload = {"sub": sub, "aud": "authenticated", "exp": int(time.time()) + 600,
               "app_metadata": {"business_id": "jwks-biz"}, **claims}
    return jwt.encode(payload, key, algorithm="ES256", headers={"kid": kid})


def test_es256_token_from_jwks(jwks_app, jwks, signing_key):
    sub = str(uuid.uuid4())
    client = jwks_app.test_client()
    for _ in range(3):
        r = client.get("/api/auth/me", headers={"Authorization": f"Bearer {es256_token(signing_key, sub)}"})
        assert r.status_code == 200 and r.get_json()["data"]["business_id"] == "jwks-biz"
    assert jwks.fetches == 1  # cached


def test_jwks_refuses_unknown_key_and_foreign_signature(jwks_app, signing_key):
    client = jwks_app.test_client()
    other = ec.generate_private_key(ec.SECP256R1())
    for token in (es256_token(signing_key, "u", kid="unknown-kid"), es256_token(other, "u")):
        r = client.get("/api/auth/me", headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 401 and r.get_json()["error"]["code"] == "invalid_token"


def test_jwks_app_refuses_hs256_when_no_secret(jwks_app):
    r = jwks_app.test_client().get("/api/auth/me", headers={"Authorization": f"Bearer {make_token('u')}"})
    assert r.status_code == 401 and "HS256" in r.get_json()["error"]["message"]


def test_hs256_token_signed_with_the_public_key_is_refused(jwks_app, signing_key):
    # The classic algorithm-confusion forgery: HS256 keyed with the published public key.
    from cryptography.hazmat.primitives import serialization

    public_pem = signing_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    header = jwt.utils.base64url_encode(json.dumps({"alg": "HS256", "typ": "JWT", "kid": "key-1"}).encode())
    body = jwt.utils.base64url_encode(json.dumps({"sub": "x", "aud": "authenticated", "exp": int(time.time()) + 60}).encode())
    import hashlib
    import hmac

    signature = jwt.utils.base64url_encode(hmac.new(public_pem, header + b"." + body, hashlib.sha256).digest())
    token = b".".join([header, body, signature]).decode()
    r = jwks_app.test_client().get("/api/auth/me", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 401


# --- CORS -------------------------------------------------------------------

def test_cors_allows_configured_origin_with_credentials(app, alice):
    client = client_for(app, alice)
    r = client.get("/api/llm/sessions", headers={"Origin": "http://localhost:5173"})
    assert r.headers["Access-Control-Allow-Origin"] == "http://localhost:5173"
    assert r.headers["Access-Control-Allow-Credentials"] == "true"

    preflight = app.test_client().options(
        "/api/llm/sessions/abc",
        headers={"Origin": "http://localhost:5173", "Access-Control-Request-Method": "DELETE",
                 "Access-Control-Request-Headers": "Authorization, Content-Type"},
    )
    assert preflight.status_code == 200
    assert "DELETE" in preflight.headers["Access-Control-Allow-Methods"]
    assert "authorization" in preflight.headers["Access-Control-Allow-Headers"].lower()


def test_cors_ignores_other_origins(app, alice):
    r = client_for(app, alice).get("/api/llm/sessions", headers={"Origin": "https://evil.example"})
    assert "Access-Control-Allow-Origin" not in r.headers


def test_verified_tokens_are_cached_until_they_expire(monkeypatch):
    from backend.auth import tokens

    decoded = []
    real_decode = tokens.jwt.decode
    monkeypatch.setattr(tokens.jwt, "decode", lambda *a, **k: decoded.append(1) or real_decode(*a, **k))
    verifier = tokens.TokenVerifier(jwt_secret=JWT_SECRET, supabase_url=None, audience="authenticated")
    token = make_token("u1", exp=int(time.time()) + 3600)
    assert verifier.verify(token).user_id == "u1"
    assert verifier.verify(token).user_id == "u1"
    assert len(decoded) == 1  # the second answer came from the cache: the signature was checked once
    # Past the token's expiry its entry is never served: the token is checked afresh. (Only the
    # cache's clock moves; PyJWT's own check reads the real time, so the token still verifies.)
    later = time.time() + 7200
    monkeypatch.setattr(tokens.time, "time", lambda: later)
    assert verifier.verify(token).user_id == "u1"
    assert len(decoded) == 2


def test_a_jwks_outage_keeps_serving_known_keys_and_is_503_not_401(make_app, signing_key):
    server = JwksServer({"key-1": signing_key})
    try:
        app = make_app(supabase_url=server.url, supabase_jwt_secret=None, jwks_cache_seconds=1)
        client = app.test_client()

        def me() -> int:  # a new token each time, so the key is looked up each time
            token = es256_token(signing_key, str(uuid.uuid4()))
            return client.get("/api/auth/me", headers={"Authorization": f"Bearer {token}"})

        assert me().status_code == 200
        server.down = True
        time.sleep(1.2)  # the cached keys are now stale (JWKS_CACHE_SECONDS=1): time is the subject here
        for _ in range(3):
            assert me().status_code == 200  # served stale while the refresh fails in the background

        cold = make_app(supabase_url=server.url, supabase_jwt_secret=None)  # no keys yet, provider down
        token = es256_token(signing_key, str(uuid.uuid4()))
        r = cold.test_client().get("/api/auth/me", headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 503 and r.get_json()["error"]["code"] == "auth_unavailable"
        assert r.headers["Retry-After"] == "5"
    finally:
        server.close()
