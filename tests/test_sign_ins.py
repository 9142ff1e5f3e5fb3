"""Cookie sign-ins the server can end: sign-out, sign-out everywhere, lifetime, idle timeout; on every process."""

from __future__ import annotations

import queue
import threading

from tests.test_auth import BROWSER, signup


def sign_in(app, email, password):
    client = app.test_client()
    r = client.post("/api/auth/login", json={"email": email, "password": password}, headers=BROWSER)
    assert r.status_code == 200, r.get_json()
    return client


def copy_of(client, app):
    """Another client (another device, or a thief) holding the same session cookie, on `app`."""
    other = app.test_client()
    other.set_cookie("session", client.get_cookie("session").value)
    return other


def me(client):
    return client.get("/api/auth/me").status_code


def test_a_copied_cookie_stops_working_on_every_process_after_sign_out(app, make_app):
    second_process = make_app()
    email, password = signup(app)
    browser = sign_in(app, email, password)
    stolen = copy_of(browser, second_process)
    assert me(stolen) == 200
    assert browser.post("/api/auth/logout", headers=BROWSER).status_code == 200
    assert me(browser) == 401
    assert me(stolen) == 401  # the other process asks the database, not its memory
    assert stolen.get("/api/llm/sessions").status_code == 401


def test_sign_out_everywhere_ends_every_device(app, pool):
    email, password = signup(app)
    laptop, phone = sign_in(app, email, password), sign_in(app, email, password)
    r = phone.post("/api/auth/logout-all", headers=BROWSER)
    assert r.status_code == 200 and r.get_json() == {"success": True, "revoked": 2}
    assert me(laptop) == 401 and me(phone) == 401
    again = sign_in(app, email, password)  # signing in again works
    assert me(again) == 200


def test_lifetime_and_idle_timeout_are_enforced_by_the_server(app, pool):
    email, password = signup(app)
    for column, value in (("expires_at", "now() - interval '1 second'"),
                          ("last_seen_at", "now() - interval '4 days'")):  # idle default: 3 days
        client = sign_in(app, email, password)
        assert me(client) == 200
        with pool.connection() as conn:
            conn.execute(f"update auth_sessions set {column} = {value} where user_id = "
                         "(select id from app_users where email = %s) and revoked_at is null", (email,))
        assert me(client) == 401


def test_a_cookie_without_a_server_side_sign_in_is_refused(app):
    email, password = signup(app)
    client = sign_in(app, email, password)
    user_id = client.get("/api/auth/me").get_json()["data"]["user_id"]
    serializer = app.session_interface.get_signing_serializer(app)
    forged = app.test_client()  # correctly signed, but no sign-in row behind it (as before sign-ins were kept)
    forged.set_cookie("session", serializer.dumps({"_user_id": user_id, "_fresh": True}))
    assert me(forged) == 401


def test_activity_is_written_at_most_once_a_minute(app, pool):
    email, password = signup(app)
    client = sign_in(app, email, password)
    with pool.connection() as conn:
        before = conn.execute("select last_seen_at from auth_sessions where user_id = "
                              "(select id from app_users where email = %s)", (email,)).fetchone()["last_seen_at"]
    for _ in range(5):
        assert me(client) == 200
    with pool.connection() as conn:
        after = conn.execute("select last_seen_at from auth_sessions where user_id = "
                             "(select id from app_users where email = %s)", (email,)).fetchone()["last_seen_at"]
    assert after == before


def test_signing_out_ends_that_sign_ins_event_streams(app):
    email, password = signup(app)
    tab = sign_in(app, email, password)
    other_tab = copy_of(tab, app)
    stream = other_tab.get("/api/llm/events", buffered=False)
    chunks: queue.Queue = queue.Queue()

    def read() -> None:
        for chunk in stream.response:
            chunks.put(chunk.decode() if isinstance(chunk, bytes) else chunk)
        chunks.put(None)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    assert ": stream open" in chunks.get(timeout=10)
    assert tab.post("/api/auth/logout", headers=BROWSER).status_code == 200
    seen = ""
    while (chunk := chunks.get(timeout=10)) is not None:
        seen += chunk
    assert "event: auth_expired" in seen  # then the stream ended
    reader.join(5)
    stream.close()
