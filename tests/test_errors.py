"""One JSON error shape everywhere, no internals, and a clean 503 when the database is gone."""

from __future__ import annotations

import socket

import pytest

from tests.helpers import failing_trigger, unique_session_id


@pytest.mark.parametrize("raw", ['{"session_name": ', "{'single': 'quotes'}", "nul\x00", "\xff\xfe"])
def test_malformed_json(api, raw):
    r = api.post("/api/llm/sessions", data=raw.encode("latin-1"), content_type="application/json")
    assert r.status_code == 400
    assert r.get_json()["error"] == {"code": "invalid_json", "message": "The request body is not valid JSON"}


@pytest.mark.parametrize("raw", ["[]", '"a string"', "null", "42", "true", '["session_name"]'])
def test_json_that_is_not_an_object(api, raw):
    r = api.post("/api/llm/sessions", data=raw, content_type="application/json")
    assert r.status_code == 400 and r.get_json()["error"]["code"] == "invalid_body"
    r = api.put(f"/api/llm/sessions/{unique_session_id()}", data=raw, content_type="application/json")
    assert r.status_code == 400 and r.get_json()["error"]["code"] == "invalid_body"


def test_body_over_the_limit_is_413(api, app):
    limit = app.config["MAX_CONTENT_LENGTH"]
    r = api.post("/api/llm/sessions", data=b'{"session_name": "' + b"x" * limit + b'"}', content_type="application/json")
    assert r.status_code == 413
    assert r.get_json()["error"]["code"] == "payload_too_large"
    assert api.get("/api/llm/sessions").get_json()["total"] == 0


def test_unknown_route_and_method_are_json(api):
    r = api.get("/api/llm/nothing-here")
    assert r.status_code == 404 and r.get_json()["error"]["code"] == "not_found"
    r = api.patch("/api/llm/sessions")
    assert r.status_code == 405 and r.get_json()["error"]["code"] == "method_not_allowed"
    assert "GET" in r.headers["Allow"]


def test_unexpected_error_is_500_without_internals(api, pool, alice, caplog):
    sid = "boom-" + unique_session_id()
    api.post("/api/llm/sessions", json={"session_id": sid})
    with failing_trigger(pool, "chat_sessions", "update", "boom-"):
        r = api.put(f"/api/llm/sessions/{sid}", json={"session_name": "x"})
    assert r.status_code == 500
    assert r.get_json() == {"success": False, "error": {"code": "internal_error", "message": "Something went wrong on our side"}}
    assert "injected failure" not in r.get_data(as_text=True)
    assert "Traceback" not in r.get_data(as_text=True)
    # operators get the class and a request id in the log
    record = next(rec for rec in caplog.records if rec.getMessage() == "unhandled error")
    assert record.error_class == "RaiseException"
    assert r.headers["X-Request-ID"]


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_database_unreachable_is_503_with_retry_after(make_app):
    app = make_app(
        database_url=f"postgresql://nobody@127.0.0.1:{_closed_port()}/none?connect_timeout=1",
        run_migrations_on_start=False,
        db_pool_timeout_seconds=0.5,
    )
    client = app.test_client()
    client.environ_base["HTTP_AUTHORIZATION"] = "Bearer " + __import__("tests.helpers", fromlist=["x"]).make_token("u")
    r = client.get("/api/llm/sessions")
    assert r.status_code == 503
    assert r.headers["Retry-After"] == "5"
    assert r.get_json()["error"]["code"] == "database_unavailable"
    ready = client.get("/readyz")
    assert ready.status_code == 503 and ready.get_json()["success"] is False
    assert client.get("/healthz").status_code == 200


def test_health_and_readiness(anon):
    assert anon.get("/healthz").get_json() == {"success": True, "data": {"status": "alive"}}
    assert anon.get("/readyz").get_json() == {"success": True, "data": {"status": "ready"}}


def test_request_id_is_echoed_or_made(anon):
    assert anon.get("/healthz", headers={"X-Request-ID": "abc-123"}).headers["X-Request-ID"] == "abc-123"
    made = anon.get("/healthz", headers={"X-Request-ID": "x" * 500}).headers["X-Request-ID"]
    assert len(made) == 32


def test_logs_carry_no_tokens_or_passwords(app, alice, caplog):
    from tests.helpers import client_for

    client = client_for(app, alice)
    client.post("/api/llm/sessions", json={"session_name": "Private thoughts about Highland"})
    app.test_client().post(
        "/api/auth/login", json={"email": "who@example.com", "password": "hunter2-password"},
        headers={"X-Requested-With": "fetch"},
    )
    app.test_client().get("/api/llm/sessions", headers={"Authorization": "Bearer forged.token.value"})
    text = "\n".join(f"{r.getMessage()} {r.__dict__}" for r in caplog.records)
    assert alice.token not in text
    assert "hunter2-password" not in text
    assert "forged.token.value" not in text
    assert "Private thoughts" not in text


def test_json_nested_past_the_parsers_limit_is_a_clean_400(api):
    r = api.post("/api/llm/sessions", data="[" * 100_000 + "]" * 100_000, content_type="application/json")
    assert r.status_code == 400
    assert r.get_json()["error"]["code"] == "invalid_json"


def test_a_plain_value_error_is_a_500_with_a_traceback_not_a_rate_limiter_outage(make_app, alice, caplog):
    # The in-memory limiter's storage errors were ValueError, registered as limiter outages: any
    # ValueError from any code was a 503 rate_limit_unavailable, logged without a traceback.
    from tests.helpers import client_for

    app = make_app(rate_limits_enabled=True)  # memory://, as in production by default
    rule = next(r for r in app.url_map.iter_rules() if r.rule == "/api/llm/sessions" and "GET" in r.methods)

    def raises(**_):
        raise ValueError("a bug somewhere: year 10000 is out of range")

    app.view_functions[rule.endpoint] = raises
    r = client_for(app, alice).get("/api/llm/sessions")
    assert r.status_code == 500, r.get_json()
    assert r.get_json() == {"success": False, "error": {"code": "internal_error", "message": "Something went wrong on our side"}}
    assert "Retry-After" not in r.headers and "year 10000" not in r.get_data(as_text=True)
    record = next(rec for rec in caplog.records if rec.getMessage() == "unhandled error")
    assert record.error_class == "ValueError" and record.exc_info and record.exc_info[0] is ValueError  # the traceback
    assert not any(rec.getMessage() == "rate limit counters unreachable" for rec in caplog.records)


def test_a_real_rate_limiter_storage_outage_is_still_503(make_app, caplog):
    # Port 9 (discard) on loopback: nothing answers, the connection is refused at once.
    app = make_app(rate_limits_enabled=True, rate_limit_storage_url=f"redis://127.0.0.1:{_closed_port()}/0")
    r = app.test_client().post("/api/auth/login", json={"email": "x@example.com", "password": "wrong"},
                               headers={"X-Requested-With": "fetch"})
    assert r.status_code == 503 and r.headers["Retry-After"] == "5"
    assert r.get_json()["error"]["code"] == "rate_limit_unavailable"
    record = next(rec for rec in caplog.records if rec.getMessage() == "rate limit counters unreachable")
    assert record.error_class == "ConnectionError"
    assert not any(rec.getMessage() == "unhandled error" for rec in caplog.records)
