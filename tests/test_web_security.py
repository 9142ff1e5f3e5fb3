"""Web security: CSRF for cookie sessions, CORS, cookie flags, body limit, rate limits."""

from __future__ import annotations

import gc

import pytest
from flask import Flask

from backend.rate_limits import SweptMemoryStorage
from backend.services import services_of
from backend.web import install_web_app
from tests.chat_support import turn
from tests.helpers import User, client_for, unique_session_id
from tests.test_auth import BROWSER, signup


@pytest.fixture
def signed_in(app):
    """A browser-like client holding a session cookie."""
    email, password = signup(app)
    client = app.test_client()
    assert client.post("/api/auth/login", json={"email": email, "password": password}, headers=BROWSER).status_code == 200
    return client


def test_cookie_requests_that_change_state_need_the_header(signed_in, pool):
    sid = unique_session_id()
    forged = [
        ("post", "/api/llm/sessions", {"session_id": sid}),
        ("put", f"/api/llm/sessions/{sid}", {"session_name": "forged"}),
        ("delete", f"/api/llm/sessions/{sid}", None),
        ("post", "/api/llm/query/stream", {"session_id": sid, "query": "forged"}),
        ("post", "/api/auth/logout", None),
    ]
    for method, url, body in forged:  # what a cross-site form can send: the cookie, no custom header
        r = getattr(signed_in, method)(url, json=body)
        assert r.status_code == 403, (method, url)
        assert r.get_json()["error"]["code"] == "csrf_failed"
    with pool.connection() as conn:
        assert conn.execute("select count(*) as n from chat_sessions where session_id = %s", (sid,)).fetchone()["n"] == 0
    assert signed_in.get("/api/auth/me").status_code == 200  # still signed in: logout was refused
    # reads need nothing extra
    assert signed_in.get("/api/llm/sessions").status_code == 200
    # the frontend's own requests pass
    assert signed_in.post("/api/llm/sessions", json={"session_id": sid}, headers=BROWSER).status_code == 201


def test_login_itself_needs_the_header(app):
    email, password = signup(app)
    r = app.test_client().post("/api/auth/login", json={"email": email, "password": password})
    assert r.status_code == 403 and "Set-Cookie" not in r.headers
    message = r.get_json()["error"]["message"]  # says what to send; no cookie is involved in a login
    assert "X-Requested-With" in message and "cookie" not in message.lower()


def test_foreign_origin_is_refused_even_with_the_header(signed_in):
    r = signed_in.post("/api/llm/sessions", json={}, headers={**BROWSER, "Origin": "https://evil.example"})
    assert r.status_code == 403 and "origin" in r.get_json()["error"]["message"]
    ok = signed_in.post("/api/llm/sessions", json={}, headers={**BROWSER, "Origin": "http://localhost:5173"})
    assert ok.status_code == 201
    same_site = signed_in.post("/api/llm/sessions", json={}, headers={**BROWSER, "Origin": "http://localhost"})
    assert same_site.status_code == 201


def test_bearer_requests_need_no_csrf_header(api):
    assert api.post("/api/llm/sessions", json={}, headers={"Origin": "https://anywhere.example"}).status_code == 201


def test_anonymous_requests_still_get_401_not_403(anon):
    assert anon.post("/api/llm/sessions", json={}).status_code == 401


def test_cors_preflight_allows_the_csrf_header_for_allowed_origins_only(app):
    asked = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "X-Requested-With, Content-Type"}
    ok = app.test_client().options("/api/llm/sessions", headers={"Origin": "http://localhost:3000", **asked})
    assert "x-requested-with" in ok.headers["Access-Control-Allow-Headers"].lower()
    assert ok.headers["Access-Control-Allow-Credentials"] == "true"
    evil = app.test_client().options("/api/llm/sessions", headers={"Origin": "https://evil.example", **asked})
    assert "Access-Control-Allow-Origin" not in evil.headers


# --- rate limits --------------------------------------------------------------

@pytest.fixture(scope="module")
def limited_app(module_make_app, fake_model):
    return module_make_app(
        rate_limits_enabled=True, login_rate_limit="3 per minute", chat_rate_limit="2 per minute",
        openai_base_url=fake_model.base_url, openai_api_key="k",
    )


def test_login_is_rate_limited_per_address(limited_app):
    gc.collect()  # the limiter must survive garbage collection (its wrappers hold it weakly)
    statuses = []
    for _ in range(4):
        r = limited_app.test_client().post(
            "/api/auth/login", json={"email": "guess@example.com", "password": "guess"}, headers=BROWSER,
            environ_base={"REMOTE_ADDR": "10.9.8.7"},
        )
        statuses.append(r.status_code)
    assert statuses == [401, 401, 401, 429]
    assert int(r.headers["Retry-After"]) >= 1
    assert r.get_json()["error"]["code"] == "rate_limited"
    # another address is not affected
    other = limited_app.test_client().post(
        "/api/auth/login", json={"email": "guess@example.com", "password": "guess"}, headers=BROWSER,
        environ_base={"REMOTE_ADDR": "10.9.8.8"},
    )
    assert other.status_code == 401


def test_chat_is_rate_limited_per_user(limited_app, fake, alice, bob):
    client = client_for(limited_app, alice)
    turn(client, unique_session_id(), "one")
    turn(client, unique_session_id(), "two")
    r = client.post("/api/llm/query/stream", json={"session_id": unique_session_id(), "query": "three"})
    assert r.status_code == 429 and r.mimetype == "application/json"
    assert int(r.headers["Retry-After"]) >= 1
    assert turn(client_for(limited_app, bob), unique_session_id(), "bob is fine")[-1].event == "done"


def test_successful_responses_carry_no_retry_after(limited_app, alice):
    r = client_for(limited_app, alice).get("/api/llm/sessions")
    assert r.status_code == 200 and "Retry-After" not in r.headers


@pytest.mark.parametrize("fail_open, status", [(False, 503), (True, 401)])
def test_unreachable_rate_limit_counters_fail_closed_unless_told(make_app, fail_open, status):
    # Port 9 (discard) on loopback: nothing answers, the connection is refused at once.
    app = make_app(rate_limits_enabled=True, rate_limit_storage_url="redis://127.0.0.1:9/0",
                   rate_limit_fail_open=fail_open)
    r = app.test_client().post("/api/auth/login", json={"email": "x@example.com", "password": "wrong"},
                               headers={"X-Requested-With": "fetch"})
    assert r.status_code == status, r.get_json()
    if status == 503:
        assert r.get_json()["error"]["code"] == "rate_limit_unavailable" and r.headers["Retry-After"] == "5"


def test_session_writes_share_a_per_user_budget(make_app, alice, bob):
    app = make_app(rate_limits_enabled=True, session_write_rate_limit="3 per minute")
    client = client_for(app, alice)
    statuses = [client.post("/api/llm/sessions", json={"session_id": "w1"}).status_code,
                client.put("/api/llm/sessions/w1", json={"session_name": "x"}).status_code,
                client.post("/api/llm/sessions/w1/read").status_code,
                client.delete("/api/llm/sessions/w1").status_code]
    assert statuses == [201, 200, 200, 429]
    assert client.get("/api/llm/sessions").status_code == 200  # reads are not counted
    assert client_for(app, bob).post("/api/llm/sessions", json={}).status_code == 201  # per user


def test_in_memory_counters_are_swept_on_a_schedule_not_after_every_request(make_app, alice):
    """limits' MemoryStorage sweeps every key 10 ms after any limited request; ours at most once
    per sweep_seconds (the override of its private scheduler must still take effect)."""
    app = make_app(rate_limits_enabled=True, session_write_rate_limit="100 per minute")
    storage = app.extensions["rate_limiter"].storage
    assert isinstance(storage, SweptMemoryStorage)
    storage.sweep_seconds = 3600
    client = client_for(app, alice)
    assert client.post("/api/llm/sessions", json={}).status_code == 201
    swept = storage.timer
    swept.join(10)  # the sweep that request scheduled has run
    assert not swept.is_alive()
    for _ in range(3):
        assert client.post("/api/llm/sessions", json={}).status_code == 201
    assert storage.timer is swept  # no sweep scheduled again within the hour


# Every way of writing sessions, each as the request it takes.
SESSION_WRITES = {
    "create": ("post", "/api/llm/sessions", {"session_id": "w2"}),
    "update": ("put", "/api/llm/sessions/w2", {"session_name": "x"}),
    "read": ("post", "/api/llm/sessions/w2/read", None),
    "delete": ("delete", "/api/llm/sessions/w2", None),
    "bulk-delete": ("post", "/api/llm/sessions/bulk-delete", {"session_ids": ["w2"]}),
    "restore": ("post", "/api/llm/sessions/restore", {"backup_id": "00000000-0000-4000-8000-000000000000"}),
    "import": ("post", "/api/llm/sessions/import", {"format": "chat-session/v1", "messages": []}),
}


def test_every_session_write_counts_against_the_budget(make_app):
    """Each write operation is under the shared limit: once the budget is spent, every one is 429."""
    app = make_app(rate_limits_enabled=True, session_write_rate_limit="1 per minute")
    for name, (method, path, body) in SESSION_WRITES.items():
        client = client_for(app, User())  # a fresh budget for each operation
        assert client.post("/api/llm/sessions", json={}).status_code == 201, name
        r = getattr(client, method)(path, json=body) if body is not None else getattr(client, method)(path)
        assert r.status_code == 429, (name, r.status_code, r.get_json())


def test_event_streams_per_user_are_capped(make_app, alice):
    app = make_app(events_max_streams_per_user=1, events_max_stream_seconds=5)
    client = client_for(app, alice)
    first = client.get("/api/llm/events", buffered=False)
    assert first.status_code == 200
    second = client.get("/api/llm/events")
    assert second.status_code == 429 and second.get_json()["error"]["code"] == "too_many_streams"
    services_of(app).event_hub.drain()  # ends the first stream
    first.get_data()
    first.close()


# --- headers: CORS only for allowed origins, nosniff everywhere, the page's own policy ---------------


def _cors_headers(response) -> list[str]:
    return [name for name in response.headers.keys() if name.lower().startswith("access-control-")]


def test_cors_headers_answer_only_an_allowed_origin(app, alice):
    """No Access-Control-* at all without an Origin or with one not allowed; the full set for an allowed one."""
    signed_in, anonymous = client_for(app, alice), app.test_client()
    preflight = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "Content-Type"}
    for origin in ({}, {"Origin": "https://evil.example"}, {"Origin": "null"}):
        answers = {
            "list": signed_in.get("/api/llm/sessions", headers=origin),
            "401": anonymous.get("/api/auth/me", headers=origin),
            "404": signed_in.get("/api/llm/sessions/no-such-session", headers=origin),
            "preflight": anonymous.options("/api/llm/sessions", headers={**origin, **preflight}),
        }
        for name, r in answers.items():
            assert _cors_headers(r) == [], (origin, name, dict(r.headers))
    allowed = {"Origin": "http://localhost:3000"}
    r = signed_in.get("/api/llm/sessions", headers=allowed)
    assert r.headers["Access-Control-Allow-Origin"] == "http://localhost:3000"
    assert r.headers["Access-Control-Allow-Credentials"] == "true"
    ok = anonymous.options("/api/llm/sessions", headers={**allowed, **preflight})
    assert ok.headers["Access-Control-Allow-Origin"] == "http://localhost:3000"
    assert "POST" in ok.headers["Access-Control-Allow-Methods"]


def test_every_response_says_nosniff(make_app, alice):
    """Successes, errors, the document, a stream, and the 503 the connection cap answers before Flask."""
    app = make_app(max_connections_per_worker=1, events_max_stream_seconds=5)
    client, anonymous = client_for(app, alice), app.test_client()
    sid = client.post("/api/llm/sessions", json={}).get_json()["session_id"]
    answers = {
        "201": client.post("/api/llm/sessions", json={}),
        "200": client.get("/api/llm/sessions"),
        "export": client.get(f"/api/llm/sessions/{sid}/export"),
        "400": client.get("/api/llm/sessions?limit=-1"),
        "401": anonymous.get("/api/llm/sessions"),
        "404": client.get("/api/no-such-route"),
        "405": client.patch("/api/llm/sessions"),
        "document": anonymous.get("/api/openapi.json"),
        "health": anonymous.get("/healthz"),
    }
    stream = client.get("/api/llm/events", buffered=False)  # holds the only connection slot
    answers["stream"] = stream
    answers["503"] = anonymous.get("/api/llm/sessions")
    assert answers["503"].status_code == 503 and answers["stream"].status_code == 200
    for name, r in answers.items():
        assert r.headers.get_all("X-Content-Type-Options") == ["nosniff"], (name, r.status_code, dict(r.headers))
    services_of(app).event_hub.drain()  # ends the stream
    stream.get_data()
    stream.close()


PAGE = """<!doctype html><html><head><meta charset="UTF-8" />{meta}<title>Chats</title>
<script type="module" crossorigin src="/assets/index-1.js"></script></head><body><div id="root"></div></body></html>"""


@pytest.mark.parametrize(("meta", "connect_src"), [
    ("""<meta http-equiv="Content-Security-Policy" content="default-src 'self'; script-src 'self'; """
     """style-src 'self'; connect-src 'self' https://api.example.com; object-src 'none'">""",
     "connect-src 'self' https://api.example.com"),
    ("", "connect-src 'self'"),  # a build from before the policy was in index.html: same origin only
], ids=["build-names-an-api-origin", "older-build"])
def test_the_page_ships_the_builds_policy_refusing_frames(tmp_path, meta, connect_src):
    """`/` sends the policy the build wrote (web/vite.config.ts), plus frame-ancestors, and no Referer off-site."""
    (tmp_path / "assets").mkdir()
    (tmp_path / "index.html").write_text(PAGE.format(meta=meta))
    (tmp_path / "assets" / "index-1.js").write_text("console.log('app')")
    page = Flask(__name__)
    assert install_web_app(page, tmp_path)
    r = page.test_client().get("/")
    policy = [part.strip() for part in r.headers["Content-Security-Policy"].split(";")]
    assert "frame-ancestors 'none'" in policy and connect_src in policy
    assert "script-src 'self'" in policy and "object-src 'none'" in policy
    assert not any("unsafe" in part for part in policy)
    assert r.headers["Referrer-Policy"] == "same-origin"
