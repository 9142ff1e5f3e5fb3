"""Hostile input on every endpoint that takes it: a clear 4xx in the JSON error shape, nothing changed, nothing secret logged.

Complements test_errors.py (malformed bodies on create), test_sessions_crud.py
(create's ids and names, list parameters) and test_auth.py (bad tokens on the
list): here the same kinds of input go to every other endpoint, and each case
also proves, in the database, that nothing changed.
"""

from __future__ import annotations

import json
import time

import jwt
import pytest

from backend.http import ErrorResponse
from tests.chat_support import turn
from tests.checkpoints import rows_digest
from tests.helpers import User, client_for, make_token

SECRET_QUERY = "my bank password is hunter2-and-more"
PASSWORD = "correct horse battery staple"


@pytest.fixture(scope="module")
def target() -> User:
    """The user every hostile request here is sent as, or forged for (one per module: setup is a chat turn)."""
    return User()


@pytest.fixture(scope="module")
def victim(chat_app, fake_model, target) -> str:
    """The target's session, with a turn: something for hostile input to damage."""
    client = client_for(chat_app, target)
    sid = client.post("/api/llm/sessions", json={"session_name": "Private notes"}).get_json()["session_id"]
    assert turn(client, sid, "a private question")[-1].event == "done"
    return sid


def db_state(pool, user) -> dict:
    """Every row this user has (full contents, hashed per table), and how many users exist."""
    like = f"user\\_{user.id}\\_%"
    with pool.connection() as conn:
        def table(sql, *params):
            return rows_digest(conn, sql, *params)

        return {
            "chat_sessions": table("select * from chat_sessions where user_id = %s", user.id),
            **{name: table(f"select * from {name} where thread_id like %s", like)
               for name in ("checkpoints", "checkpoint_blobs", "checkpoint_writes")},
            "session_deletions": table("select * from session_deletions where user_id = %s", user.id),
            "runs": table("select user_id, session_id from chat_session_runs where user_id = %s", user.id),
            "ended_runs": table("select * from chat_runs where user_id = %s", user.id),
            "app_users": table("select id, email, business_id from app_users"),
        }


class Guard:
    """Refused requests: 4xx, JSON error shape, no row changed, no upstream call, no secret in the logs."""

    def __init__(self, pool, user, fake, caplog) -> None:
        self.pool, self.user, self.fake, self.caplog = pool, user, fake, caplog
        self.secrets = [user.token, SECRET_QUERY, PASSWORD]
        self.before = db_state(pool, user)
        self.upstream_calls = len(fake.requests)

    def refused(self, response, status: int | None = None, code: str | None = None) -> dict:
        assert 400 <= response.status_code < 500, (response.status_code, response.get_data(as_text=True)[:300])
        assert status is None or response.status_code == status, response.get_data(as_text=True)[:300]
        assert response.mimetype == "application/json"
        body = ErrorResponse.model_validate(response.get_json())
        assert code is None or body.error.code == code, body
        return response.get_json()["error"]

    def check(self) -> None:
        assert db_state(self.pool, self.user) == self.before
        assert len(self.fake.requests) == self.upstream_calls
        records = self.caplog.get_records("call")  # check() runs at teardown, whose own records are few
        logged = "\n".join(f"{r.getMessage()} {r.__dict__}" for r in records)
        assert "request finished" in logged  # the check below saw the app's logs
        for secret in self.secrets:
            assert secret not in logged


@pytest.fixture
def guard(pool, target, fake, caplog, victim):
    guard = Guard(pool, target, fake, caplog)
    yield guard
    guard.check()


@pytest.fixture
def hostile(chat_app, target):
    """The target's own client; X-Requested-With so sign-in gets as far as reading the body."""
    client = client_for(chat_app, target)
    client.environ_base["HTTP_X_REQUESTED_WITH"] = "fetch"
    return client


# Every endpoint that reads a body, with a body it would accept (to build wrong ones from).
BODY_ENDPOINTS = {
    "create": ("post", "/api/llm/sessions", {"session_id": "s-1", "session_name": "n"}),
    "rename": ("put", "/api/llm/sessions/{sid}", {"session_name": "n", "is_archived": False}),
    "stream": ("post", "/api/llm/query/stream", {"session_id": "{sid}", "query": SECRET_QUERY}),
    "login": ("post", "/api/auth/login", {"email": "a@example.com", "password": PASSWORD}),
}


def call(client, endpoint: str, sid: str, **kwargs):
    method, path, _ = BODY_ENDPOINTS[endpoint]
    return getattr(client, method)(path.format(sid=sid), **kwargs)


# --- bodies: malformed, wrong shapes, wrong types, too big -----------------------------------

MALFORMED = ['{"session_name": ', "{'single': 'quotes'}", '{"a": 1}}', '{"a": 1', "{\"a\": 1,}", "nul\x00"]
NOT_OBJECTS = ["[]", '"a string"', "null", "42", "true", '[{"session_id": "x"}]']


@pytest.mark.parametrize("endpoint", ["rename", "stream", "login"])  # create: test_errors.py
@pytest.mark.parametrize("raw", MALFORMED + ["\xff\xfe"], ids=range(len(MALFORMED) + 1))
def test_malformed_json(hostile, guard, victim, endpoint, raw):
    response = call(hostile, endpoint, victim, data=raw.encode("latin-1" if raw == "\xff\xfe" else "utf-8"),
                    content_type="application/json")
    assert guard.refused(response, 400, "invalid_json")["message"] == "The request body is not valid JSON"


@pytest.mark.parametrize("endpoint", ["stream", "login"])  # create and rename: test_errors.py
@pytest.mark.parametrize("raw", NOT_OBJECTS)
def test_json_that_is_not_an_object(hostile, guard, victim, endpoint, raw):
    guard.refused(call(hostile, endpoint, victim, data=raw, content_type="application/json"), 400, "invalid_body")


WRONG_VALUES = [None, 5, 1.5, True, ["a"], {"a": 1}, ""]
STRING_FIELDS = [("create", "session_id"), ("rename", "session_name"),
                 ("stream", "session_id"), ("stream", "query"), ("login", "email"), ("login", "password")]


@pytest.mark.parametrize("endpoint, field", STRING_FIELDS)
@pytest.mark.parametrize("value", WRONG_VALUES, ids=repr)
def test_wrong_types_for_string_fields(hostile, guard, victim, endpoint, field, value):
    body = {**BODY_ENDPOINTS[endpoint][2], field: value}
    body = {k: (v.format(sid=victim) if isinstance(v, str) else v) for k, v in body.items()}
    error = guard.refused(call(hostile, endpoint, victim, json=body), 400, "validation_error")
    assert field in error["fields"]


@pytest.mark.parametrize("value", [None, "true", "yes", 1, 0, [], {}], ids=repr)
def test_wrong_types_for_is_archived(hostile, guard, victim, value):
    error = guard.refused(call(hostile, "rename", victim, json={"is_archived": value}), 400, "validation_error")
    assert "is_archived" in error["fields"]


@pytest.mark.parametrize("endpoint", ["rename", "stream", "login"])  # create: test_errors.py
def test_body_over_the_limit(chat_app, hostile, guard, victim, endpoint):
    limit = chat_app.config["MAX_CONTENT_LENGTH"]
    field = {"rename": "session_name", "stream": "query", "login": "password"}[endpoint]
    raw = json.dumps({**BODY_ENDPOINTS[endpoint][2], field: "x" * limit}).replace("{sid}", victim)
    guard.refused(call(hostile, endpoint, victim, data=raw, content_type="application/json"), 413, "payload_too_large")


# --- names: refused characters and sizes, on create and rename --------------------------------

BIDI_CONTROLS = [chr(c) for c in [*range(0x202A, 0x202F), *range(0x2066, 0x206A)]]
BAD_NAMES = [f"a{c}b" for c in BIDI_CONTROLS] + [
    "a\x00b", "\x00", "a\x01b", "esc\x1b[31mred", "del\x7f", "a\x85b", "a\x9fb", "line\nbreak", "x" * 10_000,
]


@pytest.mark.parametrize("endpoint", ["create", "rename"])
@pytest.mark.parametrize("name", BAD_NAMES, ids=lambda n: repr(n[:12]))
def test_names_with_refused_characters_or_sizes(hostile, guard, victim, endpoint, name):
    body = {"session_name": name} if endpoint == "rename" else {"session_id": "named-x", "session_name": name}
    error = guard.refused(call(hostile, endpoint, victim, json=body), 400, "validation_error")
    assert set(error["fields"]) == {"session_name"}


GOOD_NAMES = ["Évaluation du bien", "日本語のチャット", "Rocket 🚀 plans", "\u200fשלום עולם", "مرحبا بالعالم",
              "\u200eleft-to-right mark", "\u061carabic letter mark", "👩\u200d👩\u200d👧 family", "e\u0301te",
              "Ω≈ç√∫ ¡™£¢∞", "x" * 200, "zero\u200bwidth space", "🏳️\u200d🌈"]


@pytest.mark.parametrize("name", GOOD_NAMES, ids=lambda n: repr(n[:12]))
def test_real_text_in_names_is_accepted_everywhere(api, name):
    created = api.post("/api/llm/sessions", json={"session_name": name})
    assert created.status_code == 201 and created.get_json()["data"]["session_name"] == name
    sid = created.get_json()["session_id"]
    other = api.post("/api/llm/sessions").get_json()["session_id"]
    renamed = api.put(f"/api/llm/sessions/{other}", json={"session_name": f"  {name}  "})
    assert renamed.status_code == 200 and renamed.get_json()["data"]["session_name"] == name
    for s in (sid, other):
        assert api.get(f"/api/llm/sessions/{s}").get_json()["data"]["session_name"] == name
    assert [s["session_name"] for s in api.get("/api/llm/sessions").get_json()["data"]] == [name, name]


# --- ids: huge, SQL metacharacters, path tricks -------------------------------------------------

BAD_IDS = ["x" * 10_000, "x' OR '1'='1", "x'; drop table chat_sessions; --", 'x" --', "%", "a%b", "a*", "$1",
           "a\\b", "a b", "\u202echat", "chat-１", "", "a\x00b"]


@pytest.mark.parametrize("endpoint", ["create", "stream"])
@pytest.mark.parametrize("sid", BAD_IDS, ids=lambda s: repr(s[:14]))
def test_bad_ids_in_bodies(hostile, guard, victim, endpoint, sid):
    body = {"session_id": sid} if endpoint == "create" else {"session_id": sid, "query": SECRET_QUERY}
    error = guard.refused(call(hostile, endpoint, victim, json=body), 400, "validation_error")
    assert set(error["fields"]) == {"session_id"}


PATH_OPERATIONS = [("get", ""), ("get", "?include_messages=true"), ("put", ""), ("delete", ""), ("delete", "?force=true")]
# How the id reaches the server, percent-encoded; and what each must answer.
HOSTILE_PATHS = [
    ("x" * 10_000, 400), ("x'%20OR%20'1'%3D'1", 400), ("x%3B%20drop%20table%20chat_sessions", 400), ("%25", 400),
    ("a%00b", 400), ("a%0D%0ASet-Cookie:%20x=1", 400), ("%252e%252e", 400), ("%C0%AE%C0%AE", 400), ("%FF", 400),
    ("..%2F..%2Fhealthz", 404), ("{sid}%2F..%2F{sid}", 404), ("{sid}%2F", 404), ("%2e%2e%2f%2e%2e%2fauth%2fme", 404),
    ("{sid}/..", 404), ("{sid}/x", 404), ("_", 404), ("{sid_prefix}_", 404), ("{sid}%20", 400),
]


@pytest.mark.parametrize("method, query", PATH_OPERATIONS)
@pytest.mark.parametrize("raw, status", HOSTILE_PATHS, ids=lambda v: repr(v)[:24] if isinstance(v, str) else str(v))
def test_hostile_ids_and_paths(hostile, guard, victim, method, query, raw, status):
    path = "/api/llm/sessions/" + raw.format(sid=victim, sid_prefix=victim[:-1]) + query
    kwargs = {"json": {"session_name": "Renamed by a trick"}} if method == "put" else {}
    error = guard.refused(getattr(hostile, method)(path, **kwargs), status)
    assert error["code"] == ("validation_error" if status == 400 else "not_found")


@pytest.mark.parametrize("query, field", [
    ("include_messages=2", "include_messages"), ("include_messages=%00", "include_messages"),
    ("force=maybe", "force"), ("force=1%3Bdrop", "force"), ("force=" + "t" * 10_000, "force"),
])
def test_hostile_query_parameters(hostile, guard, victim, query, field):
    method = "delete" if field == "force" else "get"
    error = guard.refused(getattr(hostile, method)(f"/api/llm/sessions/{victim}?{query}"), 400, "validation_error")
    assert field in error["fields"]


# --- control characters and lone surrogates -----------------------------------------------------

# The fuzzer's find: a NUL in the sign-in email reached the database (which refuses it) as a 500.
CONTROL_EMAILS = ["\x00a@example.com", "a@exa\x00mple.com", "a\x01@example.com", "a@example.com\x7f",
                  "a\x85b@example.com", "\x1b[31m@example.com", "a@example.com\n"]


@pytest.mark.parametrize("email", CONTROL_EMAILS, ids=repr)
def test_control_characters_in_the_sign_in_email_are_400(hostile, guard, victim, email):
    error = guard.refused(call(hostile, "login", victim, json={"email": email, "password": PASSWORD}),
                          400, "validation_error")
    assert error["fields"] == {"email": "must not contain control characters"}


def test_the_document_says_the_sign_in_email_takes_no_control_characters(chat_app):
    import jsonschema_rs

    schema = chat_app.test_client().get("/api/openapi.json").get_json()["components"]["schemas"]["LoginBody"]
    email = jsonschema_rs.validator_for(schema["properties"]["email"])
    assert email.is_valid("a@example.com") and email.is_valid("Évaluation@exemple.fr")
    assert not any(email.is_valid(e) for e in CONTROL_EMAILS)


# Fields of every kind (constrained or not, on every body endpoint) where JSON can smuggle half
# of a UTF-16 pair, which is not text: no database stores it.
SURROGATE_FIELDS = [("create", "session_name"), ("create", "session_id"), ("rename", "session_name"),
                    ("stream", "query"), ("login", "email"), ("login", "password")]


@pytest.mark.parametrize("endpoint, field", SURROGATE_FIELDS)
@pytest.mark.parametrize("escape", ["\\ud800", "\\udfff", "x\\ud83d", "\\ude00x", "\\ud83d\\ud83d"])
def test_lone_surrogates_in_any_field_are_400(hostile, guard, victim, endpoint, field, escape):
    body = {k: (v.format(sid=victim) if isinstance(v, str) else v) for k, v in BODY_ENDPOINTS[endpoint][2].items()}
    raw = json.dumps({**body, field: "@@"}).replace('"@@"', f'"{escape}"')
    error = guard.refused(call(hostile, endpoint, victim, data=raw, content_type="application/json"), 400, "invalid_json")
    assert "surrogate" in error["message"]


def test_a_surrogate_pair_is_text(api):
    raw = '{"session_name": "rocket \\ud83d\\ude80"}'
    created = api.post("/api/llm/sessions", data=raw, content_type="application/json")
    assert created.status_code == 201 and created.get_json()["data"]["session_name"] == "rocket \U0001f680"


# --- forged tokens, carrying the victim's own user id, on every protected endpoint ---------------

def _alg_none(sub: str) -> str:
    header = jwt.utils.base64url_encode(json.dumps({"alg": "none", "typ": "JWT"}).encode()).decode()
    claims = {"sub": sub, "aud": "authenticated", "exp": int(time.time()) + 600, "role": "authenticated"}
    return f"{header}.{jwt.utils.base64url_encode(json.dumps(claims).encode()).decode()}."


FORGERIES = {
    "alg none": _alg_none,
    "wrong key": lambda sub: make_token(sub, secret="not-the-secret-but-long-enough-" + "z" * 16),
    "expired": lambda sub: make_token(sub, exp=int(time.time()) - 60),
    "wrong audience": lambda sub: make_token(sub, aud="anon"),
    "no sub": lambda sub: make_token(None),
    "payload swapped": lambda sub: _swap_payload(make_token("someone-else"), sub),
}


def _swap_payload(token: str, sub: str) -> str:
    """A valid signature over someone else's claims, with the victim's claims pasted in."""
    header, _, signature = token.split(".")
    claims = {"sub": sub, "aud": "authenticated", "exp": int(time.time()) + 600}
    return f"{header}.{jwt.utils.base64url_encode(json.dumps(claims).encode()).decode()}.{signature}"


PROTECTED = [
    ("get", "/api/llm/sessions", None), ("post", "/api/llm/sessions", {"session_id": "forged"}),
    ("get", "/api/llm/sessions/{sid}?include_messages=true", None),
    ("put", "/api/llm/sessions/{sid}", {"session_name": "Forged"}), ("delete", "/api/llm/sessions/{sid}", None),
    ("delete", "/api/llm/sessions/{sid}?force=true", None),
    ("post", "/api/llm/query/stream", {"session_id": "{sid}", "query": SECRET_QUERY}), ("get", "/api/auth/me", None),
    ("get", "/api/llm/usage", None), ("get", "/api/llm/sessions/{sid}/usage", None),
]


@pytest.mark.parametrize("forgery", list(FORGERIES))
def test_forged_tokens_are_401_on_every_endpoint(chat_app, guard, target, victim, forgery):
    token = FORGERIES[forgery](target.id)
    assert jwt.decode(token, options={"verify_signature": False}).get("sub") in (target.id, None)
    guard.secrets.append(token)
    client = chat_app.test_client()
    for method, path, body in PROTECTED:
        body = json.loads(json.dumps(body).replace("{sid}", victim)) if body else None
        response = getattr(client, method)(path.format(sid=victim), json=body,
                                           headers={"Authorization": f"Bearer {token}"})
        error = guard.refused(response, 401, "invalid_token")
        assert token not in error["message"], path


@pytest.mark.parametrize("path", ["/api/llm/sessions//{sid}", "/api/llm//sessions", "/api//auth/me"])
def test_double_slashes_get_a_json_answer(hostile, guard, victim, path):
    guard.refused(hostile.delete(path.format(sid=victim)) if "{sid}" in path else hostile.get(path))


@pytest.mark.parametrize("sid", [".", ".."])
def test_every_valid_id_can_be_used_in_a_url(api, sid):
    assert api.post("/api/llm/sessions", json={"session_id": sid}).status_code == 400
