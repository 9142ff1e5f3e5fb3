"""The React reference app (web/) against the real server, in a real browser (Debian's Chromium).

The API runs in this process on a real PostgreSQL with the fake model on loopback; the built app
is served from another origin (http://localhost:<web port>, the API on http://localhost:<api
port>), so every request is a cross-origin fetch with credentials: CORS preflights, the session
cookie (SameSite=Lax: same site, other origin) and the CSRF header all take part. Also here: the
TypeScript compile test of the generated types and the check that they match the server's document.

Needs `make web` (npm ci + vite build) and /usr/bin/chromium; without them these tests are
skipped, saying so. CI (.ci/run) installs both. Screenshots of failed tests go to test-results/web/.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from support.net import served_on_loopback
from tests.helpers import User, client_for
from tests.test_auth import signup

ROOT = Path(__file__).resolve().parent.parent
WEB = ROOT / "web"
DIST = WEB / "dist"
ARTIFACTS = ROOT / "test-results" / "web"
CHROMIUM = os.environ.get("CHROMIUM_PATH") or shutil.which("chromium") or shutil.which("chromium-browser")
TIMEOUT_MS = 15_000

needs_node = pytest.mark.skipif(
    not (WEB / "node_modules" / ".bin" / "tsc").exists() or shutil.which("node") is None,
    reason="web/node_modules is missing: run `make web` (npm ci) to run the web checks",
)
needs_browser = pytest.mark.skipif(
    CHROMIUM is None or not (DIST / "index.html").exists(),
    reason="no Chromium (apt-get install chromium) or no built app (make web): browser tests skipped",
)


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 - the base class's name
        pass


@pytest.fixture(scope="module")
def web_origin():
    """The built app, served as static files on an origin of its own."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(_Quiet, directory=str(DIST)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://localhost:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def live(module_make_app, fake_model, web_origin):
    """The API on a real HTTP server (threads: streams and event streams stay open)."""
    app = module_make_app(
        openai_base_url=fake_model.base_url, openai_api_key="test-key", openai_model="fake-chat",
        naming_model="fake-naming", openai_timeout_seconds=5, openai_max_retries=0, naming_timeout_seconds=5,
        cors_origins=web_origin,
        # Plain http on localhost in the test; production keeps Secure cookies (README).
        session_cookie_secure=False,
        rate_limits_enabled=True, chat_rate_limit="8 per minute", login_rate_limit="100 per minute",
        events_heartbeat_seconds=1, sse_heartbeat_seconds=1,
    )
    with served_on_loopback(app) as port:
        yield app, f"http://localhost:{port}"


@pytest.fixture(scope="module")
def browser():
    if CHROMIUM is None or not (DIST / "index.html").exists():
        pytest.skip("no Chromium or no built app")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-dev-shm-usage"])
        yield browser
        browser.close()


@pytest.fixture
def context(browser, request):
    """A fresh browser profile (cookies, localStorage); its pages are photographed if the test fails."""
    context = browser.new_context()
    context.set_default_timeout(TIMEOUT_MS)
    console: list[str] = []
    context.on("weberror", lambda error: console.append(f"page error: {error.error.stack or error.error}"))
    context.on("console", lambda message: message.type in ("error", "warning") and console.append(
        f"console {message.type}: {message.text}"))
    failed_before = request.session.testsfailed
    yield context
    if request.session.testsfailed > failed_before:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        name = re.sub(r"[^A-Za-z0-9_.-]", "_", request.node.name)
        (ARTIFACTS / f"{name}-console.txt").write_text("\n".join(console) + "\n")
        for i, page in enumerate(context.pages):
            try:
                page.screenshot(path=str(ARTIFACTS / f"{name}-page{i}.png"), full_page=True)
            except Exception:  # a page that crashed: nothing to keep
                pass
    context.close()


def expect():
    from playwright.sync_api import expect as playwright_expect

    playwright_expect.set_options(timeout=TIMEOUT_MS)
    return playwright_expect


def open_app(context, web_origin, api_url):
    page = context.new_page()
    page.goto(f"{web_origin}/?api={api_url}")
    return page


def sign_in_with_password(page, email, password):
    page.get_by_test_id("login-email").fill(email)
    page.get_by_test_id("login-password").fill(password)
    page.get_by_test_id("login-submit").click()
    wait_live(page)


def sign_in_with_token(page, token):
    page.get_by_test_id("login-token").fill(token)
    page.get_by_test_id("login-token-submit").click()
    wait_live(page)


def wait_live(page):
    """Signed in, and the live events stream is connected (changes from now on arrive)."""
    expect()(page.locator(".app")).to_have_attribute("data-live", "true")


def item(page, session_id):
    return page.locator(f'[data-testid="session-item"][data-session-id="{session_id}"]')


def new_chat(page) -> str:
    before = set(page.get_by_test_id("session-item").evaluate_all("els => els.map(e => e.dataset.sessionId)"))
    page.get_by_test_id("new-chat").click()
    expect()(page.get_by_test_id("message-input")).to_be_visible()
    ids = page.get_by_test_id("session-item").evaluate_all("els => els.map(e => e.dataset.sessionId)")
    (new,) = set(ids) - before
    return new


def send_message(page, text):
    page.get_by_test_id("message-input").fill(text)
    page.get_by_test_id("message-input").press("Enter")


def rename(page, session_id, name):
    item(page, session_id).get_by_test_id("rename-session").click()
    field = item(page, session_id).get_by_test_id("rename-input")
    field.fill(name)
    field.press("Enter")


def delete(page, session_id):
    item(page, session_id).get_by_test_id("delete-session").click()
    page.get_by_test_id("confirm-delete").click()


# --- the typed client ------------------------------------------------------------------------------


@needs_node
def test_typescript_compiles_every_operation_against_the_generated_types():
    """tsc --strict over the app and web/tests/api-types.ts (every operation; wrong calls must not compile)."""
    result = subprocess.run(["npm", "run", "--silent", "typecheck"], cwd=WEB, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr


@needs_node
def test_sse_reader_handles_chunk_boundaries_comments_ids_and_reconnects():
    """web/tests/sse.test.mjs under Node's test runner (the reader as the app uses it, through Vite)."""
    result = subprocess.run(["npm", "run", "--silent", "test:unit"], cwd=WEB, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "# fail 0" in result.stdout


@needs_node
def test_generated_types_match_the_servers_document(live):
    _, api_url = live
    result = subprocess.run(["node", "scripts/gen-types.mjs", "--check"], cwd=WEB, capture_output=True, text=True,
                            timeout=120, env={**os.environ, "API_URL": api_url.replace("localhost", "127.0.0.1")})
    assert result.returncode == 0, result.stdout + result.stderr


# --- the app in a browser ------------------------------------------------------------------------------


@needs_browser
def test_cookie_sign_in_chat_name_rename_archive_delete_undo_search_live_in_two_tabs(context, live, web_origin, fake):
    app, api_url = live
    email, password = signup(app)
    see = expect()
    tab1 = open_app(context, web_origin, api_url)
    sign_in_with_password(tab1, email, password)
    tab2 = open_app(context, web_origin, api_url)  # the same browser: the cookie signs it in
    wait_live(tab2)

    # A new chat lives in this browser only, until its first message.
    sid = new_chat(tab1)
    see(item(tab1, sid).get_by_test_id("session-name")).to_have_text("New Chat")

    # The reply streams token by token: parked after its first token, the page shows it, then the rest.
    with fake.hold_streams() as gate:
        send_message(tab1, "What's the value of the Highland property?")
        see(tab1.get_by_test_id("stop")).to_be_visible()
        see(tab1.get_by_test_id("assistant-message").last).to_have_text("Echo: ")
        see(item(tab2, sid).get_by_test_id("busy-marker")).to_have_text("answering…")  # the other tab knows
        gate.release()
    see(tab1.get_by_test_id("assistant-message").last).to_have_text("Echo: What's the value of the Highland property?")
    see(tab1.get_by_test_id("send")).to_be_visible()
    see(item(tab2, sid).get_by_test_id("busy-marker")).to_have_count(0)

    # The auto name arrives by the events stream, in both tabs, without a reload.
    for tab in (tab1, tab2):
        see(item(tab, sid).get_by_test_id("session-name")).to_have_text("Highland Property Valuation")
    # The reply was read where it was written: no unread badge, in either tab, nor on the server.
    see(item(tab2, sid).get_by_test_id("unread-badge")).to_have_count(0)
    see(item(tab1, sid).get_by_test_id("unread-badge")).to_have_count(0)

    # Rename: the other tab follows.
    rename(tab1, sid, "Valuation notes")
    see(item(tab2, sid).get_by_test_id("session-name")).to_have_text("Valuation notes")

    # Archive: gone from the default lists; the archived filter shows it; unarchive brings it back.
    item(tab1, sid).get_by_test_id("archive-session").click()
    see(item(tab1, sid)).to_have_count(0)
    see(item(tab2, sid)).to_have_count(0)
    tab2.get_by_test_id("show-archived").check()
    see(item(tab2, sid)).to_contain_text("archived")
    item(tab2, sid).get_by_test_id("archive-session").click()  # now "Unarchive"
    see(item(tab1, sid).get_by_test_id("session-name")).to_have_text("Valuation notes")
    tab2.get_by_test_id("show-archived").uncheck()

    # Delete in tab 1 while tab 2 has the chat open: tab 2 leaves it and says why.
    item(tab2, sid).locator("button.open").click()
    see(tab2.get_by_test_id("assistant-message")).to_have_text("Echo: What's the value of the Highland property?")
    delete(tab1, sid)
    see(item(tab1, sid)).to_have_count(0)
    see(item(tab2, sid)).to_have_count(0)
    see(tab2.get_by_test_id("notice")).to_contain_text("deleted in another tab")
    see(tab2.get_by_test_id("message-input")).to_have_count(0)

    # Undo: the same chat, its name and its messages, back in both tabs.
    tab1.get_by_test_id("undo-delete").click()
    see(item(tab2, sid).get_by_test_id("session-name")).to_have_text("Valuation notes")
    item(tab1, sid).locator("button.open").click()
    see(tab1.get_by_test_id("assistant-message")).to_have_text("Echo: What's the value of the Highland property?")

    # Search asks the server (?q=): case-insensitive, a substring of the name.
    other = new_chat(tab1)
    rename(tab1, other, "Tax return 2025")
    see(item(tab2, other).get_by_test_id("session-name")).to_have_text("Tax return 2025")
    tab2.get_by_test_id("search").fill("TAX RET")
    see(tab2.get_by_test_id("session-item")).to_have_count(1)
    see(item(tab2, other)).to_be_visible()
    tab2.get_by_test_id("search").fill("notes")
    see(tab2.get_by_test_id("session-item")).to_have_count(1)
    see(item(tab2, sid)).to_be_visible()
    tab2.get_by_test_id("search").fill("")
    see(tab2.get_by_test_id("session-item")).to_have_count(2)
    see(tab1.get_by_test_id("error-banner")).to_have_count(0)
    see(tab2.get_by_test_id("error-banner")).to_have_count(0)


@needs_browser
def test_token_sign_in_local_sessions_reload_reconcile_and_bulk_delete(context, live, web_origin, fake):
    app, api_url = live
    user = User()
    api = client_for(app, user)
    see = expect()
    page = open_app(context, web_origin, api_url)
    sign_in_with_token(page, user.token)

    # Two chats that only ever live in localStorage: a reload keeps them.
    local_a, local_b = new_chat(page), new_chat(page)
    page.reload()
    wait_live(page)
    see(item(page, local_a)).to_be_visible()
    see(item(page, local_b)).to_be_visible()
    assert api.get(f"/api/llm/sessions/{local_a}").status_code == 404  # the server never heard of them

    # Deleting one is clean: no error, and it stays gone after a reload.
    delete(page, local_a)
    see(item(page, local_a)).to_have_count(0)
    see(page.get_by_test_id("error-banner")).to_have_count(0)
    page.reload()
    wait_live(page)
    see(item(page, local_b)).to_be_visible()
    see(item(page, local_a)).to_have_count(0)

    # The first message makes the other real.
    item(page, local_b).locator("button.open").click()
    send_message(page, "Hello there")
    see(page.get_by_test_id("assistant-message").last).to_have_text("Echo: Hello there")
    see(page.get_by_test_id("send")).to_be_visible()  # `done` came: the turn is committed
    see(item(page, local_b).get_by_test_id("session-name")).to_have_text("Highland Property Valuation")
    assert api.get(f"/api/llm/sessions/{local_b}").get_json()["data"]["message_count"] == 2

    # Changes made while the page is closed: the cached list shows first, then the server's wins.
    page.close()
    assert api.put(f"/api/llm/sessions/{local_b}", json={"session_name": "Renamed elsewhere"}).status_code == 200
    made_elsewhere = api.post("/api/llm/sessions", json={"session_name": "Made elsewhere"}).get_json()["session_id"]
    page = open_app(context, web_origin, api_url)
    see(item(page, local_b).get_by_test_id("session-name")).to_have_text("Renamed elsewhere")
    see(item(page, made_elsewhere)).to_be_visible()
    wait_live(page)

    # An unread reply (finished elsewhere) shows a badge; opening the chat clears it.
    assert api.post("/api/llm/query/stream", json={"session_id": made_elsewhere, "query": "Ping"}).status_code == 200
    see(item(page, made_elsewhere).get_by_test_id("unread-badge")).to_be_visible()
    item(page, made_elsewhere).locator("button.open").click()
    see(item(page, made_elsewhere).get_by_test_id("unread-badge")).to_have_count(0)
    assert api.get(f"/api/llm/sessions/{made_elsewhere}").get_json()["data"]["has_unread"] is False

    # Bulk delete with one confirmation, then undo both.
    for sid in (local_b, made_elsewhere):
        item(page, sid).get_by_test_id("select-session").check()
    page.get_by_test_id("bulk-delete").click()
    page.get_by_test_id("confirm-delete").click()
    see(page.get_by_test_id("session-item")).to_have_count(0)
    assert api.get(f"/api/llm/sessions/{local_b}").status_code == 404
    page.get_by_test_id("undo-delete").click()
    see(page.get_by_test_id("session-item")).to_have_count(2)
    see(item(page, local_b).get_by_test_id("session-name")).to_have_text("Renamed elsewhere")
    assert api.get(f"/api/llm/sessions/{made_elsewhere}").get_json()["data"]["message_count"] == 2


@needs_browser
def test_stop_and_readable_errors(context, live, web_origin, fake):
    app, api_url = live
    user = User()
    api = client_for(app, user)
    see = expect()
    page = open_app(context, web_origin, api_url)
    sign_in_with_token(page, user.token)
    sid = new_chat(page)
    rename(page, sid, "Errors")  # named by the user: no naming request to take a scripted fault
    see(item(page, sid).get_by_test_id("session-name")).to_have_text("Errors")
    item(page, sid).locator("button.open").click()

    # Stop: aborting the fetch cancels the reply on the server.
    with fake.hold_streams() as gate:
        send_message(page, "Tell me a long story")
        see(page.get_by_test_id("assistant-message").last).to_have_text("Echo: ")
        assert gate.wait_for_held(1)
        see(item(page, sid).get_by_test_id("busy-marker")).to_be_visible()  # run.started arrived
        page.get_by_test_id("stop").click()
        see(page.get_by_test_id("send")).to_be_visible()
        see(item(page, sid).get_by_test_id("busy-marker")).to_have_count(0)  # run.finished arrived
    runs = api.get(f"/api/llm/sessions/{sid}?include_messages=true").get_json()
    assert [m["role"] for m in runs["messages"]][:1] == ["user"]

    # session_busy: the chat answers in another tab (here: another client) while this one sends.
    with fake.hold_streams() as gate:
        other = threading.Thread(target=lambda: api.post("/api/llm/query/stream", json={"session_id": sid, "query": "x"}))
        other.start()
        assert gate.wait_for_held(1)
        see(item(page, sid).get_by_test_id("busy-marker")).to_be_visible()
        send_message(page, "Are you there?")
        see(page.get_by_test_id("error-banner")).to_contain_text("still answering")
        gate.release()
        other.join(10)
    page.get_by_test_id("error-banner").get_by_role("button", name="Dismiss").click()

    # An upstream failure after the stream began: said in words.
    fake.fail_next(status=500)
    send_message(page, "Fail please")
    see(page.get_by_test_id("error-banner")).to_contain_text("The model failed to answer")
    page.get_by_test_id("error-banner").get_by_role("button", name="Dismiss").click()

    # session_archived.
    assert api.put(f"/api/llm/sessions/{sid}", json={"is_archived": True}).status_code == 200
    page.get_by_test_id("show-archived").check()
    item(page, sid).locator("button.open").click()
    send_message(page, "Still there?")
    see(page.get_by_test_id("error-banner")).to_contain_text("archived")
    assert api.put(f"/api/llm/sessions/{sid}", json={"is_archived": False}).status_code == 200
    page.get_by_test_id("error-banner").get_by_role("button", name="Dismiss").click()

    # 429 with Retry-After (CHAT_RATE_LIMIT is 8 per minute here): the message says when to retry.
    while True:
        r = api.post("/api/llm/query/stream", json={"session_id": sid, "query": "fill the limit"})
        if r.status_code == 429:
            break
        assert r.status_code == 200
    send_message(page, "One more")
    see(page.get_by_test_id("error-banner")).to_contain_text(re.compile(r"try again in \d+ s", re.I))


@needs_browser
def test_served_by_flask_at_the_root_same_origin(context, live, fake):
    """`make web` then `make run`: the app at http://host:5000/ and the API under /api, one origin."""
    app, api_url = live
    assert app.test_client().get("/api/llm/sessions").status_code == 401  # the API is still the API
    email, password = signup(app)
    page = context.new_page()
    page.goto(f"{api_url}/?api=")  # this origin
    sign_in_with_password(page, email, password)
    sid = new_chat(page)
    send_message(page, "Same origin?")
    expect()(page.get_by_test_id("assistant-message").last).to_have_text("Echo: Same origin?")
    expect()(item(page, sid).get_by_test_id("session-name")).to_have_text("Highland Property Valuation")
    asset = page.evaluate("() => document.querySelector('script[type=module]').src")
    assert asset.startswith(f"{api_url}/assets/")


@needs_browser
def test_infinite_scroll_pages_by_cursor_and_archived_filter(context, live, web_origin):
    app, api_url = live
    user = User()
    api = client_for(app, user)
    for i in range(40):
        assert api.post("/api/llm/sessions", json={"session_name": f"Chat {i:02d}"}).status_code == 201
    archived = api.post("/api/llm/sessions", json={"session_name": "Old archived"}).get_json()["session_id"]
    assert api.put(f"/api/llm/sessions/{archived}", json={"is_archived": True}).status_code == 200
    see = expect()
    page = open_app(context, web_origin, api_url)
    sign_in_with_token(page, user.token)
    see(page.get_by_test_id("session-item")).to_have_count(30)  # the first page
    see(page.get_by_test_id("session-name").first).to_have_text("Chat 39")  # newest activity first
    page.get_by_test_id("session-item").last.scroll_into_view_if_needed()
    see(page.get_by_test_id("session-item")).to_have_count(40)  # the next, by next_cursor, once in view
    see(page.get_by_test_id("session-name").last).to_have_text("Chat 00")
    see(item(page, archived)).to_have_count(0)
    page.get_by_test_id("show-archived").check()  # the newest of all: on the first page
    see(item(page, archived)).to_contain_text("archived")
