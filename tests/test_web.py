"""The React reference app (web/) against the real server, in a real browser (Debian's Chromium).

The API runs in this process on a real PostgreSQL with the fake model on loopback; the app, built
here with VITE_API_BASE naming the API, is served from another origin (http://localhost:<web port>,
the API on http://localhost:<api port>), so every request is a cross-origin fetch with credentials:
CORS preflights, the session cookie (SameSite=Lax: same site, other origin) and the CSRF header all
take part; `make web`'s own build is served by Flask at `/` (one origin). Every page runs under the
build's Content-Security-Policy, and a test fails if Chromium reports a violation. Also here: the
TypeScript compile test of the generated types and the check that they match the server's document.

Needs `make web` (npm ci + vite build) and /usr/bin/chromium; without them these tests are
skipped, saying so. CI (.ci/run) installs both. Screenshots of failed tests go to test-results/web/.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import threading
from functools import partial
from http.server import BaseHTTPRequestHandler, SimpleHTTPRequestHandler, ThreadingHTTPServer
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
VITE = WEB / "node_modules" / ".bin" / "vite"
needs_browser = pytest.mark.skipif(
    CHROMIUM is None or not (DIST / "index.html").exists() or not VITE.exists(),
    reason="no Chromium (apt-get install chromium) or no built app (make web): browser tests skipped",
)


class _Quiet(SimpleHTTPRequestHandler):
    """A static host as the app needs one: a chat's own URL (/c/<id>) serves the app's page."""

    def send_head(self):
        if self.path.split("?")[0].startswith("/c/"):
            self.path = "/index.html"
        return super().send_head()

    def log_message(self, format, *args):  # noqa: A002 - the base class's name
        pass


@pytest.fixture(scope="module")
def web_server(tmp_path_factory):
    """An origin of its own for the app's static files (built by `web_origin` once the API's origin is known)."""
    root = tmp_path_factory.mktemp("web-dist")
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(_Quiet, directory=str(root)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://localhost:{server.server_address[1]}", root
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def web_origin(web_server, live):
    """The app as deployed apart from the API: built with VITE_API_BASE, the only way to point it elsewhere."""
    origin, root = web_server
    _, api_url = live
    result = subprocess.run([str(VITE), "build", "--outDir", str(root), "--emptyOutDir", "--logLevel", "warn"], cwd=WEB,
                            env={**os.environ, "VITE_API_BASE": api_url}, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    return origin


@pytest.fixture(scope="module")
def live(module_make_app, fake_model, web_server, tmp_path_factory):
    """The API on a real HTTP server (threads: streams and event streams stay open), with model prices and
    a monthly token quota for every user (the app shows a chat's cost and what the quota leaves)."""
    prices = tmp_path_factory.mktemp("prices") / "prices.json"
    prices.write_text(json.dumps({"currency": "USD", "models": {
        "fake-chat": {"input": 1000, "output": 2000}, "fake-naming": {"input": 100, "output": 200}}}))
    app = module_make_app(
        openai_base_url=fake_model.base_url, openai_api_key="test-key", openai_model="fake-chat",
        naming_model="fake-naming", openai_timeout_seconds=5, openai_max_retries=0, naming_timeout_seconds=5,
        cors_origins=web_server[0],
        # Plain http on localhost in the test; production keeps Secure cookies (docs/web.md).
        session_cookie_secure=False,
        rate_limits_enabled=True, chat_rate_limit="8 per minute", login_rate_limit="100 per minute",
        events_heartbeat_seconds=1, sse_heartbeat_seconds=1,
        model_prices_file=prices, default_user_quota_month_tokens=10_000_000,
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
def csp_violations() -> list[str]:
    """What the page's Content-Security-Policy refused, as Chromium reports it: every browser test expects none."""
    return []


@pytest.fixture
def context(browser, request, csp_violations):
    """A fresh browser profile (cookies, localStorage); its pages are photographed if the test fails."""
    context = browser.new_context()
    context.set_default_timeout(TIMEOUT_MS)
    console: list[str] = []
    context.on("weberror", lambda error: console.append(f"page error: {error.error.stack or error.error}"))
    context.on("console", lambda message: message.type in ("error", "warning") and console.append(
        f"console {message.type}: {message.text}"))
    # Chromium logs each violation (and each directive it ignores) to the console, across navigations.
    context.on("console", lambda message: "Content Security Policy" in message.text and csp_violations.append(
        message.text))
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
    assert csp_violations == [], "the page's Content-Security-Policy refused something the app does"


def expect():
    from playwright.sync_api import expect as playwright_expect

    playwright_expect.set_options(timeout=TIMEOUT_MS)
    return playwright_expect


def open_app(context, app_url):
    page = context.new_page()
    page.goto(f"{app_url}/")
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


def row_action(page, session_id, action):
    """A row's action, from its menu (`rename-session`, `archive-session`, `delete-session`)."""
    item(page, session_id).get_by_test_id("session-menu").click()
    item(page, session_id).get_by_test_id(action).click()


def rename(page, session_id, name):
    row_action(page, session_id, "rename-session")
    field = item(page, session_id).get_by_test_id("rename-input")
    field.fill(name)
    field.press("Enter")


def delete(page, session_id):
    row_action(page, session_id, "delete-session")
    page.get_by_test_id("confirm-delete").click()


def reply_finished(page):
    """No reply is being written in the open chat (its `done` came: the turn is committed)."""
    expect()(page.get_by_test_id("stop")).to_have_count(0)
    expect()(page.locator('[data-testid="assistant-message"][data-status="streaming"]')).to_have_count(0)


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
    tab1 = open_app(context, web_origin)
    sign_in_with_password(tab1, email, password)
    tab2 = open_app(context, web_origin)  # the same browser: the cookie signs it in
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
    reply_finished(tab1)
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
    row_action(tab1, sid, "archive-session")
    see(item(tab1, sid)).to_have_count(0)
    see(item(tab2, sid)).to_have_count(0)
    tab2.get_by_test_id("show-archived").check()
    see(item(tab2, sid)).to_contain_text("archived")
    row_action(tab2, sid, "archive-session")  # now "Unarchive"
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
    page = open_app(context, web_origin)
    sign_in_with_token(page, user.token)

    # A chat that only lives in localStorage: a reload keeps it; New chat again reuses that empty draft.
    local_a = new_chat(page)
    page.get_by_test_id("new-chat").click()
    see(page.get_by_test_id("session-item")).to_have_count(1)
    page.reload()
    wait_live(page)
    see(item(page, local_a)).to_be_visible()
    assert api.get(f"/api/llm/sessions/{local_a}").status_code == 404  # the server never heard of it

    # Deleting it is clean: no error, and it stays gone after a reload.
    delete(page, local_a)
    see(item(page, local_a)).to_have_count(0)
    see(page.get_by_test_id("error-banner")).to_have_count(0)
    page.reload()
    wait_live(page)
    see(item(page, local_a)).to_have_count(0)
    local_b = new_chat(page)
    page.reload()
    wait_live(page)
    see(item(page, local_b)).to_be_visible()

    # The first message makes the other real.
    item(page, local_b).locator("button.open").click()
    send_message(page, "Hello there")
    see(page.get_by_test_id("assistant-message").last).to_have_text("Echo: Hello there")
    reply_finished(page)
    see(item(page, local_b).get_by_test_id("session-name")).to_have_text("Highland Property Valuation")
    assert api.get(f"/api/llm/sessions/{local_b}").get_json()["data"]["message_count"] == 2

    # Changes made while the page is closed: the cached list shows first, then the server's wins.
    page.close()
    assert api.put(f"/api/llm/sessions/{local_b}", json={"session_name": "Renamed elsewhere"}).status_code == 200
    made_elsewhere = api.post("/api/llm/sessions", json={"session_name": "Made elsewhere"}).get_json()["session_id"]
    page = open_app(context, web_origin)
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
def test_stop_retry_archived_and_readable_errors(context, live, web_origin, fake):
    app, api_url = live
    user = User()
    api = client_for(app, user)
    see = expect()
    page = open_app(context, web_origin)
    sign_in_with_token(page, user.token)
    sid = new_chat(page)
    rename(page, sid, "Errors")  # named by the user: no naming request to take a scripted fault
    see(item(page, sid).get_by_test_id("session-name")).to_have_text("Errors")
    item(page, sid).locator("button.open").click()

    # Stop names its run (the cancel endpoint): the text so far stays, marked stopped, here and on the server.
    with fake.hold_streams() as gate:
        send_message(page, "Tell me a long story")
        see(page.get_by_test_id("assistant-message").last).to_have_text("Echo: ")
        assert gate.wait_for_held(1)
        see(item(page, sid).get_by_test_id("busy-marker")).to_be_visible()  # run.started arrived
        page.get_by_test_id("stop").click()
        see(page.get_by_test_id("assistant-message").last).to_have_attribute("data-status", "stopped")
        see(item(page, sid).get_by_test_id("busy-marker")).to_have_count(0)  # run.finished arrived
    reply_finished(page)
    saved = api.get(f"/api/llm/sessions/{sid}?include_messages=true").get_json()["messages"]
    assert [(m["role"], m.get("status")) for m in saved] == [("user", None), ("assistant", "stopped")]
    assert saved[1]["content"] == "Echo: "
    see(page.get_by_test_id("error-banner")).to_have_count(0)  # a Stop is not an error

    # The model fails: no empty bubble; the question stays (marked), its text is back in the composer,
    # and Retry sends it again; the banner goes once that succeeds.
    fake.fail_next(status=500)
    send_message(page, "Fail please")
    see(page.get_by_test_id("error-banner")).to_contain_text("The model failed to answer")
    see(page.get_by_test_id("message-input")).to_have_value("Fail please")
    see(page.get_by_test_id("assistant-message")).to_have_count(1)  # the stopped one only
    see(page.get_by_test_id("user-message").last).to_have_text(re.compile("Fail please"))
    rename(page, sid, "Errors, renamed")  # an unrelated success: the banner goes, Retry stays by its message
    see(page.get_by_test_id("error-banner")).to_have_count(0)
    see(page.get_by_test_id("retry")).to_be_visible()
    page.get_by_test_id("message-input").fill("")
    page.get_by_test_id("retry").click()
    see(page.get_by_test_id("assistant-message").last).to_have_text("Echo: Fail please")
    reply_finished(page)
    see(page.get_by_test_id("error-banner")).to_have_count(0)
    see(page.get_by_test_id("retry")).to_have_count(0)

    # Archived (in another tab): the composer is disabled, with Unarchive in the chat view.
    assert api.put(f"/api/llm/sessions/{sid}", json={"is_archived": True}).status_code == 200
    page.get_by_test_id("show-archived").check()
    item(page, sid).locator("button.open").click()
    see(page.get_by_test_id("message-input")).to_be_disabled()
    see(page.get_by_test_id("send")).to_be_disabled()
    page.get_by_test_id("unarchive-session").click()
    see(page.get_by_test_id("message-input")).to_be_enabled()
    assert api.get(f"/api/llm/sessions/{sid}").get_json()["data"]["is_archived"] is False
    page.get_by_test_id("show-archived").uncheck()

    # 429 with Retry-After (CHAT_RATE_LIMIT is 8 per minute here): the message says when to retry,
    # and the text is kept.
    while True:
        r = api.post("/api/llm/query/stream", json={"session_id": sid, "query": "fill the limit"})
        if r.status_code == 429:
            break
        assert r.status_code == 200
    send_message(page, "One more")
    see(page.get_by_test_id("error-banner")).to_contain_text(re.compile(r"try again in \d+ s", re.I))
    see(page.get_by_test_id("message-input")).to_have_value("One more")


@needs_browser
def test_served_by_flask_at_the_root_same_origin(context, live, fake):
    """`make web` then `make run`: the app at http://host:5000/ and the API under /api, one origin."""
    app, api_url = live
    assert app.test_client().get("/api/llm/sessions").status_code == 401  # the API is still the API
    email, password = signup(app)
    page = open_app(context, api_url)
    sign_in_with_password(page, email, password)
    sid = new_chat(page)
    send_message(page, "Same origin?")
    expect()(page.get_by_test_id("assistant-message").last).to_have_text("Echo: Same origin?")
    expect()(item(page, sid).get_by_test_id("session-name")).to_have_text("Highland Property Valuation")
    asset = page.evaluate("() => document.querySelector('script[type=module]').src")
    assert asset.startswith(f"{api_url}/assets/")


class _Recorder(BaseHTTPRequestHandler):
    """A stranger's server: answers anything from anyone (CORS with credentials), and keeps what it was sent."""

    def _answer(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.server.seen.append(f"{self.command} {self.path} {dict(self.headers)} {body!r}")
        self.send_response(404)
        if origin := self.headers.get("Origin"):
            self.send_header("Access-Control-Allow-Origin", origin)
            self.send_header("Access-Control-Allow-Credentials", "true")
            self.send_header("Access-Control-Allow-Methods", "GET, POST, PUT, DELETE")
            self.send_header("Access-Control-Allow-Headers", self.headers.get("Access-Control-Request-Headers") or "*")
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_GET = do_POST = do_PUT = do_DELETE = do_OPTIONS = do_HEAD = _answer

    def log_message(self, format, *args):  # noqa: A002 - the base class's name
        pass


@pytest.fixture
def stranger():
    """Another server on loopback (same site as the app, so even a Lax cookie would go): its URL, what it got."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    server.seen = []
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://localhost:{server.server_address[1]}", server.seen
    server.shutdown()
    server.server_close()


def stored(page) -> list[list[str]]:
    """Every localStorage and sessionStorage entry of the page's origin, as [key, value]."""
    return page.evaluate("() => [localStorage, sessionStorage].flatMap((s) => Object.entries(s))")


def sign_out(page):
    page.get_by_role("button", name="Sign out").click()
    expect()(page.get_by_test_id("login-email")).to_be_visible()


@needs_browser
@pytest.mark.parametrize("served_by", ["another-origin", "flask"])
def test_an_api_origin_in_the_url_gets_nothing_and_is_not_kept(context, live, web_origin, stranger, served_by):
    """`?api=<origin>` in a link, and one an older build stored, are ignored: the server they name gets no
    request (no token, no password, no cookie), before or after sign-in, by password or by token, on a
    later plain visit too; nothing of it is kept in storage."""
    app, api_url = live
    app_url = web_origin if served_by == "another-origin" else api_url
    stranger_url, seen = stranger
    email, password = signup(app)
    see = expect()
    page = open_app(context, app_url)
    page.evaluate("url => localStorage.setItem('chats:api-base', url)", stranger_url)  # what an older build kept
    page.goto(f"{app_url}/?api={stranger_url}")
    see(page.get_by_test_id("login-email")).to_be_visible()
    assert seen == []

    sign_in_with_password(page, email, password)
    new_chat(page)
    send_message(page, "Where does this go?")
    see(page.get_by_test_id("assistant-message").last).to_have_text("Echo: Where does this go?")
    page.goto(f"{app_url}/")  # a later plain visit: the cookie signs it in
    wait_live(page)
    sign_out(page)

    page.goto(f"{app_url}/?api={stranger_url}")
    sign_in_with_token(page, User().token)
    new_chat(page)
    send_message(page, "And this?")
    see(page.get_by_test_id("assistant-message").last).to_have_text("Echo: And this?")
    assert seen == []
    host = stranger_url.split("//")[1]
    assert [entry for entry in stored(page) if "api-base" in entry[0] or any(host in part for part in entry)] == []


@needs_browser
def test_the_page_runs_under_its_policy_and_sign_out_leaves_no_data(context, live, fake, csp_violations):
    """Flask's `/` sends a CSP (no inline scripts, no framing), nosniff and a Referrer-Policy; the app does its
    work under it with no violation; Sign out, by cookie or by token, leaves none of the user's data stored."""
    app, api_url = live
    see = expect()
    page = context.new_page()
    headers = page.goto(f"{api_url}/").headers
    policy = [part.strip() for part in headers["content-security-policy"].split(";")]
    assert "frame-ancestors 'none'" in policy and "script-src 'self'" in policy and "connect-src 'self'" in policy
    assert not any("unsafe" in part for part in policy)
    assert headers["x-content-type-options"] == "nosniff" and headers["referrer-policy"] == "same-origin"

    email, password = signup(app)
    for sign_in in (lambda: sign_in_with_password(page, email, password), lambda: sign_in_with_token(page, User().token)):
        sign_in()
        sid = new_chat(page)
        send_message(page, "Keep this private")
        see(page.get_by_test_id("assistant-message").last).to_have_text("Echo: Keep this private")
        rename(page, sid, "Private notes")
        see(item(page, sid).get_by_test_id("session-name")).to_have_text("Private notes")
        assert any(sid in value for _, value in stored(page))  # kept while signed in (the list shows at once)
        sign_out(page)
        assert stored(page) == []
    page.reload()
    see(page.get_by_test_id("login-email")).to_be_visible()
    assert stored(page) == [] and csp_violations == []

    # The policy is live: an inline script, what an injection would add, is refused and reported.
    with page.expect_console_message(lambda message: "Content Security Policy" in message.text) as refused:
        page.evaluate("""() => {
            const script = document.createElement("script");
            script.textContent = "window.injected = true";
            document.body.append(script);
        }""")
    assert "script-src" in refused.value.text and page.evaluate("() => window.injected") is None
    csp_violations.clear()  # the one this test caused


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
    page = open_app(context, web_origin)
    sign_in_with_token(page, user.token)
    see(page.get_by_test_id("session-item")).to_have_count(30)  # the first page
    see(page.get_by_test_id("session-name").first).to_have_text("Chat 39")  # newest activity first
    page.get_by_test_id("session-item").last.scroll_into_view_if_needed()
    see(page.get_by_test_id("session-item")).to_have_count(40)  # the next, by next_cursor, once in view
    see(page.get_by_test_id("session-name").last).to_have_text("Chat 00")
    see(item(page, archived)).to_have_count(0)
    page.get_by_test_id("show-archived").check()  # the newest of all: on the first page
    see(item(page, archived)).to_contain_text("archived")


# --- replies that outlive their connection (runs): reload, a second tab, Stop anywhere, a second message ---


def open_chat(page, session_id):
    item(page, session_id).locator("button.open").click()
    expect()(page).to_have_url(re.compile(f"/c/{re.escape(session_id)}$"))


@needs_browser
def test_a_reload_mid_reply_resumes_it_in_place_without_repeating_text(context, live, web_origin, fake):
    app, api_url = live
    user = User()
    api = client_for(app, user)
    see = expect()
    page = open_app(context, web_origin)
    sign_in_with_token(page, user.token)
    sid = new_chat(page)
    with fake.hold_streams() as gate:
        send_message(page, "Resume me after a reload")
        see(page.get_by_test_id("assistant-message").last).to_have_text("Echo: ")
        assert gate.wait_for_held(1)
        page.reload()  # the page's stream closes; the run goes on
        wait_live(page)
        # The same chat (its URL), the question, and the reply so far, joined from the server.
        see(page.get_by_test_id("chat-title")).to_be_visible()
        see(page.get_by_test_id("user-message")).to_have_text(["Resume me after a reload"])
        see(page.get_by_test_id("assistant-message")).to_have_text(["Echo:"])
        see(page.get_by_test_id("stop")).to_be_visible()
        gate.release()
    see(page.get_by_test_id("assistant-message")).to_have_text(["Echo: Resume me after a reload"])  # once, not twice
    reply_finished(page)
    saved = api.get(f"/api/llm/sessions/{sid}?include_messages=true").get_json()["messages"]
    assert [m["content"] for m in saved] == ["Resume me after a reload", "Echo: Resume me after a reload"]
    page.reload()
    wait_live(page)
    see(page.get_by_test_id("assistant-message")).to_have_text(["Echo: Resume me after a reload"])
    see(page.get_by_test_id("user-message")).to_have_count(1)


@needs_browser
def test_a_second_tab_shows_the_reply_as_written_and_stop_works_from_either_tab(context, live, web_origin, fake):
    app, api_url = live
    email, password = signup(app)
    see = expect()
    tab1 = open_app(context, web_origin)
    sign_in_with_password(tab1, email, password)
    sid = new_chat(tab1)
    send_message(tab1, "First turn")
    see(tab1.get_by_test_id("assistant-message").last).to_have_text("Echo: First turn")
    reply_finished(tab1)
    tab2 = context.new_page()
    tab2.goto(tab1.url)  # the chat's own link opens it in another tab
    wait_live(tab2)
    see(tab2.get_by_test_id("assistant-message")).to_have_text(["Echo: First turn"])

    # Tab 1 asks; tab 2 shows the reply as it is written (parked after its first token), then whole,
    # and the question once the turn is saved.
    with fake.hold_streams() as gate:
        send_message(tab1, "Second turn")
        assert gate.wait_for_held(1)
        see(tab2.get_by_test_id("assistant-message").last).to_have_text("Echo:")
        see(tab2.get_by_test_id("stop")).to_be_visible()
        gate.release()
    see(tab2.get_by_test_id("assistant-message").last).to_have_text("Echo: Second turn")
    see(tab2.get_by_test_id("user-message")).to_have_text(["First turn", "Second turn"])
    reply_finished(tab2)

    # Stop in tab 2 stops the reply tab 1 asked for: both show it stopped, with its text so far.
    with fake.hold_streams() as gate:
        send_message(tab1, "Third turn")
        assert gate.wait_for_held(1)
        see(tab2.get_by_test_id("assistant-message").last).to_have_text("Echo:")
        tab2.get_by_test_id("stop").click()
        for tab in (tab1, tab2):
            see(tab.get_by_test_id("assistant-message").last).to_have_attribute("data-status", "stopped")
    for tab in (tab1, tab2):
        reply_finished(tab)
        see(tab.get_by_test_id("error-banner")).to_have_count(0)
    reader = app.test_client()
    assert reader.post("/api/auth/login", json={"email": email, "password": password},
                       headers={"X-Requested-With": "test"}).status_code == 200
    saved = reader.get(f"/api/llm/sessions/{sid}?include_messages=true").get_json()["messages"]
    assert (saved[-1]["content"], saved[-1].get("status")) == ("Echo: ", "stopped")


@needs_browser
def test_a_second_message_while_a_reply_runs_is_queued_by_default_or_stops_it_by_choice(context, live, web_origin, fake):
    app, api_url = live
    user = User()
    api = client_for(app, user)
    see = expect()
    page = open_app(context, web_origin)
    sign_in_with_token(page, user.token)
    sid = new_chat(page)

    # Queue (the default): the second message waits, marked, and is answered after the first.
    with fake.hold_streams() as gate:
        send_message(page, "One")
        assert gate.wait_for_held(1)
        see(page.get_by_test_id("busy-choice")).to_be_visible()
        see(page.get_by_test_id("choice-queue")).to_be_checked()
        see(page.get_by_test_id("send")).to_have_text("Queue")
        send_message(page, "Two")
        see(page.get_by_test_id("queued-marker")).to_be_visible()
        see(page.get_by_test_id("user-message")).to_have_text(["One", re.compile("^Two")])
        gate.release()
    see(page.get_by_test_id("assistant-message")).to_have_text(["Echo: One", "Echo: Two"])
    see(page.get_by_test_id("queued-marker")).to_have_count(0)
    reply_finished(page)
    saved = api.get(f"/api/llm/sessions/{sid}?include_messages=true").get_json()["messages"]
    assert [m["content"] for m in saved] == ["One", "Echo: One", "Two", "Echo: Two"]

    # The other choice: stop the reply being written, then send.
    with fake.hold_streams() as gate:
        send_message(page, "Three")
        assert gate.wait_for_held(1)
        page.get_by_test_id("choice-interrupt").check()
        see(page.get_by_test_id("send")).to_have_text("Send")
        send_message(page, "Four")
        see(page.get_by_test_id("assistant-message").nth(2)).to_have_attribute("data-status", "stopped")
        gate.release()
    see(page.get_by_test_id("assistant-message").last).to_have_text("Echo: Four")
    reply_finished(page)
    saved = api.get(f"/api/llm/sessions/{sid}?include_messages=true").get_json()["messages"]
    assert [(m["content"], m.get("status")) for m in saved][4:] == [
        ("Three", None), ("Echo: ", "stopped"), ("Four", None), ("Echo: Four", None)]
    see(page.get_by_test_id("error-banner")).to_have_count(0)


# --- the app as a chat product: phones, URLs, markdown, notices, the list, accessibility ---

AXE = WEB / "node_modules" / "axe-core" / "axe.min.js"


def serious_axe_violations(page) -> list[dict]:
    """axe-core (the npm package's own build, injected: no network) on the page as it is: its serious and
    critical violations, each with where it is."""
    if not page.evaluate("() => typeof window.axe === 'object'"):
        page.evaluate("(source) => { (0, eval)(source); }", AXE.read_text())
    return page.evaluate("""async () => {
        const result = await window.axe.run(document, { resultTypes: ["violations"] });
        return result.violations.filter((v) => v.impact === "serious" || v.impact === "critical")
            .map((v) => ({ id: v.id, impact: v.impact, help: v.help, where: v.nodes.slice(0, 4).map((n) => n.target.join(" ")) }));
    }""")


def assert_accessible(page, screen: str):
    found = serious_axe_violations(page)
    assert found == [], f"{screen}: {found}"


def no_sideways_scroll(page) -> bool:
    return page.evaluate("() => document.scrollingElement.scrollWidth <= window.innerWidth")


@needs_browser
def test_on_a_phone_the_list_and_the_chat_are_separate_views_with_a_way_back(browser, live, web_origin, fake, csp_violations):
    app, api_url = live
    user = User()
    see = expect()
    context = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True)
    context.set_default_timeout(TIMEOUT_MS)
    try:
        page = open_app(context, web_origin)
        sign_in_with_token(page, user.token)
        assert no_sideways_scroll(page)
        sid = new_chat(page)  # the chat fills the screen; the list is out of the way
        see(page.get_by_test_id("new-chat")).to_be_hidden()
        box = page.get_by_test_id("message-input").bounding_box()
        assert box is not None and box["width"] >= 200 and box["x"] >= 0 and box["x"] + box["width"] <= 390
        send_message(page, "A long question that would wrap " + "word " * 40)
        see(page.get_by_test_id("assistant-message").last).to_contain_text("Echo: A long question")
        reply_finished(page)
        assert no_sideways_scroll(page)
        message = page.get_by_test_id("assistant-message").last.bounding_box()
        assert message is not None and message["x"] + message["width"] <= 390
        assert_accessible(page, "phone chat")
        # A question edited in place, its picker and the reply's buttons fit the phone too.
        page.get_by_test_id("edit-message").click()
        page.get_by_test_id("edit-input").fill("A shorter question")
        page.get_by_test_id("edit-save").click()
        see(page.get_by_test_id("assistant-message").last).to_have_text("Echo: A shorter question")
        reply_finished(page)
        see(page.get_by_test_id("branch-position")).to_have_text(["2/2"])
        for control in ("branch-prev", "edit-message", "regenerate", "rate-up", "rate-down"):
            box = page.get_by_test_id(control).bounding_box()
            assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= 390, control
        assert no_sideways_scroll(page)
        assert_accessible(page, "phone chat with versions")
        page.get_by_test_id("back-to-list").click()
        see(item(page, sid)).to_be_visible()
        see(page.get_by_test_id("message-input")).to_be_hidden()
        assert no_sideways_scroll(page)
        assert_accessible(page, "phone list")
        page.go_back()  # the browser's back returns to the chat
        see(page.get_by_test_id("message-input")).to_be_visible()
    finally:
        context.close()
    assert csp_violations == []


@needs_browser
def test_each_chat_has_a_url_reload_back_forward_and_links_work(context, live, web_origin, fake):
    app, api_url = live
    user = User()
    api = client_for(app, user)
    first = api.post("/api/llm/sessions", json={"session_name": "First chat"}).get_json()["session_id"]
    second = api.post("/api/llm/sessions", json={"session_name": "Second chat"}).get_json()["session_id"]
    assert api.post("/api/llm/query/stream", json={"session_id": first, "query": "In the first"}).status_code == 200
    see = expect()
    page = open_app(context, web_origin)
    sign_in_with_token(page, user.token)
    open_chat(page, first)
    see(page.get_by_test_id("assistant-message")).to_have_text(["Echo: In the first"])
    open_chat(page, second)
    see(page.get_by_test_id("chat-title")).to_have_text("Second chat")
    page.reload()  # the open chat stays open
    wait_live(page)
    see(page.get_by_test_id("chat-title")).to_have_text("Second chat")
    page.go_back()
    see(page).to_have_url(re.compile(f"/c/{first}$"))
    see(page.get_by_test_id("assistant-message")).to_have_text(["Echo: In the first"])
    page.go_forward()
    see(page.get_by_test_id("chat-title")).to_have_text("Second chat")
    see(page.get_by_test_id("assistant-message")).to_have_count(0)
    linked = context.new_page()  # a link opens the chat
    linked.goto(f"{web_origin}/c/{first}")
    see(linked.get_by_test_id("chat-title")).to_have_text("First chat")
    see(linked.get_by_test_id("assistant-message")).to_have_text(["Echo: In the first"])


@needs_browser
def test_replies_render_markdown_safely_also_while_streaming(context, live, web_origin, fake):
    app, api_url = live
    see = expect()
    page = open_app(context, web_origin)
    sign_in_with_token(page, User().token)
    new_chat(page)
    reply = page.get_by_test_id("assistant-message").last
    with fake.hold_streams() as gate:
        # The fake model echoes: the reply is this markdown, with raw HTML a model might send.
        send_message(page, "**Bold** and `code` [a link](https://example.com/x) <img src=x onerror=\"window.pwned=1\">"
                           "<script>window.pwned=2</script>\n\n```\nprint('hi')\n```")
        assert gate.wait_for_held(1)
        see(reply).to_have_text("Echo:")
        gate.release()
    see(reply.locator("strong")).to_have_text("Bold")
    see(reply.locator("p code")).to_have_text("code")
    link = reply.get_by_role("link", name="a link")
    see(link).to_have_attribute("href", "https://example.com/x")
    see(link).to_have_attribute("rel", "noopener noreferrer")
    see(link).to_have_attribute("target", "_blank")
    see(reply.locator("pre code")).to_have_text("print('hi')")
    see(reply.get_by_test_id("copy-code")).to_be_visible()
    assert reply.locator("img, script").count() == 0  # no raw HTML from the model
    assert page.evaluate("() => window.pwned") is None
    see(reply).not_to_contain_text("**")
    # Copy puts the code block's text on the clipboard.
    context.grant_permissions(["clipboard-read", "clipboard-write"], origin=web_origin)
    reply.get_by_test_id("copy-code").click()
    see(reply.get_by_test_id("copy-code")).to_have_text("Copied")
    assert page.evaluate("() => navigator.clipboard.readText()") == "print('hi')"


@needs_browser
def test_deleting_the_open_chat_here_raises_no_alarm_and_notices_go_with_their_cause(context, live, web_origin, fake):
    app, api_url = live
    email, password = signup(app)
    see = expect()
    tab1 = open_app(context, web_origin)
    sign_in_with_password(tab1, email, password)
    tab2 = open_app(context, web_origin)
    wait_live(tab2)
    for attempt in range(5):  # the delete's answer and its event race: never a false alarm here
        sid = new_chat(tab1)
        send_message(tab1, f"Delete me {attempt}")
        reply_finished(tab1)
        see(item(tab2, sid)).to_be_visible()
        open_chat(tab2, sid)
        delete(tab1, sid)
        see(item(tab1, sid)).to_have_count(0)
        see(tab2.get_by_test_id("notice")).to_contain_text("deleted in another tab")
        see(tab1.get_by_test_id("notice")).to_have_count(0)
        # Undo brings the chat back: the notice about it goes, in the tab that showed it.
        tab1.get_by_test_id("undo-delete").click()
        see(item(tab1, sid)).to_be_visible()
        see(item(tab2, sid)).to_be_visible()
        see(tab2.get_by_test_id("notice")).to_have_count(0)
    # A notice also goes when the user moves on: a search, another chat.
    other = new_chat(tab1)
    send_message(tab1, "Another")
    reply_finished(tab1)
    open_chat(tab2, other)
    row_action(tab1, other, "delete-session")
    tab1.get_by_test_id("confirm-delete").click()
    see(tab2.get_by_test_id("notice")).to_be_visible()
    tab2.get_by_test_id("search").fill("x")
    see(tab2.get_by_test_id("notice")).to_have_count(0)
    see(tab1.get_by_test_id("notice")).to_have_count(0)


@needs_browser
def test_the_list_groups_by_activity_says_when_nothing_matches_and_keeps_actions_in_a_menu(context, live, web_origin):
    app, api_url = live
    user = User()
    api = client_for(app, user)
    long_name = "Averyveryverylongnamewithoutanyspaces" * 5
    long_id = api.post("/api/llm/sessions", json={"session_name": long_name[:200]}).get_json()["session_id"]
    api.post("/api/llm/sessions", json={"session_name": "Garden plans"})
    see = expect()
    page = open_app(context, web_origin)
    sign_in_with_token(page, user.token)
    see(page.get_by_test_id("session-item")).to_have_count(2)
    see(page.get_by_test_id("session-group")).to_have_text(["Today"])
    see(page.get_by_test_id("session-time").first).to_have_text(re.compile(r"\d"))
    # One menu button per row, not three buttons.
    see(page.get_by_test_id("rename-session")).to_have_count(0)
    see(page.get_by_test_id("session-menu")).to_have_count(2)
    # A long name never widens the list (the name is cut with an ellipsis).
    aside = page.locator("aside").bounding_box()
    row = item(page, long_id).bounding_box()
    assert aside and row and row["x"] + row["width"] <= aside["x"] + aside["width"] + 0.5
    assert no_sideways_scroll(page)
    assert page.locator("aside").evaluate("e => e.scrollWidth <= e.clientWidth")
    # A search with no results says so.
    page.get_by_test_id("search").fill("zzz-nothing")
    see(page.get_by_test_id("no-results")).to_have_text("No chats match “zzz-nothing”.")
    page.get_by_test_id("search").fill("garden")
    see(page.get_by_test_id("session-item")).to_have_count(1)
    see(page.get_by_test_id("no-results")).to_have_count(0)


@needs_browser
@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_every_screen_passes_axe_and_works_by_keyboard(browser, live, web_origin, fake, csp_violations, scheme):
    app, api_url = live
    user = User()
    api = client_for(app, user)
    see = expect()
    context = browser.new_context(color_scheme=scheme)
    context.set_default_timeout(TIMEOUT_MS)
    try:
        page = open_app(context, web_origin)
        see(page.get_by_test_id("login-email")).to_be_visible()
        background = page.evaluate("() => getComputedStyle(document.body).backgroundColor")
        dark = [int(v) for v in re.findall(r"\d+", background)[:3]]
        assert (sum(dark) < 120) == (scheme == "dark"), background  # prefers-color-scheme respected
        assert_accessible(page, "sign-in")
        # The check can fail: a button with no name is a critical violation.
        page.evaluate("() => document.body.append(Object.assign(document.createElement('button'), {id: 'axe-probe'}))")
        assert [v["id"] for v in serious_axe_violations(page)] == ["button-name"]
        page.evaluate("() => document.getElementById('axe-probe').remove()")
        sign_in_with_token(page, user.token)
        assert_accessible(page, "empty list")
        sid = api.post("/api/llm/sessions", json={"session_name": "Keyboard chat"}).get_json()["session_id"]
        assert api.post("/api/llm/query/stream", json={"session_id": sid, "query": "**Hi** `x`\n\n```\ncode\n```"}).status_code == 200
        see(item(page, sid)).to_be_visible()

        # By keyboard alone: Tab reaches each control; the row's menu opens, moves and closes with keys.
        page.locator("body").focus()
        reached = []
        for _ in range(12):
            page.keyboard.press("Tab")
            reached.append(page.evaluate("() => document.activeElement.dataset.testid || document.activeElement.className"))
        for control in ("new-chat", "search", "show-archived", "select-session", "open", "session-menu"):
            assert any(control in (r or "") for r in reached), (control, reached)
        item(page, sid).get_by_test_id("session-menu").focus()
        page.keyboard.press("Enter")
        see(item(page, sid).get_by_test_id("rename-session")).to_be_focused()
        assert_accessible(page, "row menu")
        page.keyboard.press("ArrowDown")
        see(item(page, sid).get_by_test_id("archive-session")).to_be_focused()
        page.keyboard.press("Escape")
        see(item(page, sid).get_by_test_id("archive-session")).to_have_count(0)
        see(item(page, sid).get_by_test_id("session-menu")).to_be_focused()
        item(page, sid).locator("button.open").focus()
        page.keyboard.press("Enter")
        see(page.get_by_test_id("assistant-message")).to_have_count(1)
        page.get_by_test_id("message-input").focus()
        page.keyboard.type("Typed by keyboard")
        page.keyboard.press("Enter")
        see(page.get_by_test_id("assistant-message").last).to_have_text("Echo: Typed by keyboard")
        reply_finished(page)
        assert_accessible(page, "chat with markdown")

        # The delete dialog, an archived chat, an error and a notice.
        item(page, sid).get_by_test_id("session-menu").click()
        item(page, sid).get_by_test_id("delete-session").click()
        see(page.get_by_test_id("confirm-delete")).to_be_visible()
        assert_accessible(page, "confirm dialog")
        page.keyboard.press("Escape")
        see(page.get_by_test_id("confirm-delete")).to_have_count(0)
        assert api.put(f"/api/llm/sessions/{sid}", json={"is_archived": True}).status_code == 200
        see(page.get_by_test_id("unarchive-session")).to_be_visible()
        assert_accessible(page, "archived chat")
        page.get_by_test_id("unarchive-session").click()
        fake.fail_next(status=500)
        send_message(page, "Fail")
        see(page.get_by_test_id("error-banner")).to_be_visible()
        see(page.get_by_test_id("retry")).to_be_visible()
        assert_accessible(page, "model failure")
        page.get_by_test_id("search").fill("nothing at all")
        see(page.get_by_test_id("no-results")).to_be_visible()
        assert_accessible(page, "no results")
    finally:
        context.close()
    assert csp_violations == []


# --- branches (edit a question, regenerate a reply, switch between them), ratings, cost and quota ---


def picker_positions(page):
    return page.get_by_test_id("branch-position")


@needs_browser
def test_edit_regenerate_switch_branches_rate_replies_and_show_the_cost(context, live, web_origin, fake):
    from tests.chat_support import model_reply  # a plugin module (conftest): imported here, not rewritten twice

    app, api_url = live
    user = User()
    api = client_for(app, user)
    see = expect()
    page = open_app(context, web_origin)
    sign_in_with_token(page, user.token)
    sid = new_chat(page)
    send_message(page, "First question")
    see(page.get_by_test_id("assistant-message")).to_have_text(["Echo: First question"])
    reply_finished(page)
    # What the chat has cost (model prices are set here) and what the monthly quota leaves.
    see(page.get_by_test_id("session-cost")).to_contain_text(re.compile(r"\$\d[\d.,]* · [1-9][\d,]* tokens"))
    see(page.get_by_test_id("quota-left")).to_contain_text(re.compile(r"^[\d,]+ tokens left this month$"))
    cost_after_one = page.get_by_test_id("session-cost").text_content()
    send_message(page, "Second question")
    see(page.get_by_test_id("assistant-message")).to_have_text(["Echo: First question", "Echo: Second question"])
    reply_finished(page)
    see(page.get_by_test_id("session-cost")).not_to_have_text(cost_after_one)  # read again after the turn
    see(picker_positions(page)).to_have_count(0)  # one version of everything: no picker

    # Edit a question in place, by keyboard: Enter opens the editor (focused, with the text), Escape
    # leaves it and gives the focus back to Edit.
    second_question = page.get_by_test_id("turn").nth(2)
    second_question.get_by_test_id("edit-message").focus()
    page.keyboard.press("Enter")
    field = page.get_by_test_id("edit-input")
    see(field).to_be_focused()
    see(field).to_have_value("Second question")
    assert_accessible(page, "editing a question")
    page.keyboard.press("Escape")
    see(page.get_by_test_id("edit-form")).to_have_count(0)
    see(second_question.get_by_test_id("edit-message")).to_be_focused()
    second_question.get_by_test_id("edit-message").click()
    field.fill("Second question, edited")
    # Saved: the reply streams in place of the old branch; nothing else branches while it is written.
    with fake.hold_streams() as gate:
        page.get_by_test_id("edit-save").click()
        see(page.get_by_test_id("user-message")).to_have_text(["First question", "Second question, edited"])
        see(page.get_by_test_id("assistant-message")).to_have_text(["Echo: First question", "Echo:"])
        assert gate.wait_for_held(1)
        see(page.get_by_test_id("edit-message").first).to_be_disabled()
        see(page.get_by_test_id("regenerate").first).to_be_disabled()
        see(page.get_by_test_id("rate-up").first).to_be_disabled()
        gate.release()
    see(page.get_by_test_id("assistant-message")).to_have_text(["Echo: First question", "Echo: Second question, edited"])
    reply_finished(page)
    see(picker_positions(page)).to_have_text(["2/2"])  # on the edited question
    assert_accessible(page, "a question with two versions")

    # The picker shows the old branch (its answer too), and a reload keeps the branch shown.
    page.get_by_test_id("branch-prev").click()
    see(picker_positions(page)).to_have_text(["1/2"])
    see(page.get_by_test_id("user-message")).to_have_text(["First question", "Second question"])
    see(page.get_by_test_id("assistant-message")).to_have_text(["Echo: First question", "Echo: Second question"])
    see(page.get_by_test_id("branch-prev")).to_be_disabled()
    page.reload()
    wait_live(page)
    see(page.get_by_test_id("user-message")).to_have_text(["First question", "Second question"])
    see(picker_positions(page)).to_have_text(["1/2"])
    saved = api.get(f"/api/llm/sessions/{sid}?include_messages=true").get_json()["messages"]
    assert [m["content"] for m in saved] == ["First question", "Echo: First question", "Second question",
                                             "Echo: Second question"]

    # Another tab with the chat open follows a switch (the session.updated event).
    tab2 = context.new_page()
    tab2.goto(page.url)
    wait_live(tab2)
    see(picker_positions(tab2)).to_have_text(["1/2"])
    page.get_by_test_id("branch-next").click()
    see(picker_positions(page)).to_have_text(["2/2"])
    see(page.get_by_test_id("assistant-message").last).to_have_text("Echo: Second question, edited")
    see(picker_positions(tab2)).to_have_text(["2/2"])
    see(tab2.get_by_test_id("assistant-message").last).to_have_text("Echo: Second question, edited")
    tab2.close()

    # Regenerate the last reply: a second answer beside it, with its own picker.
    fake.reply = lambda body: "Another answer" if body.get("stream") else model_reply(body)
    with fake.hold_streams() as gate:
        page.get_by_test_id("turn").last.get_by_test_id("regenerate").click()
        see(page.get_by_test_id("assistant-message")).to_have_count(2)
        see(page.get_by_test_id("assistant-message").last).to_have_attribute("data-status", "streaming")
        assert gate.wait_for_held(1)
        see(page.get_by_test_id("branch-prev")).to_be_disabled()  # the question's picker, while it is written
        gate.release()
    see(page.get_by_test_id("assistant-message").last).to_have_text("Another answer")
    reply_finished(page)
    see(picker_positions(page)).to_have_text(["2/2", "2/2"])  # the question's and the reply's
    reply = page.get_by_test_id("turn").last
    reply.get_by_test_id("branch-prev").click()
    see(picker_positions(page)).to_have_text(["2/2", "1/2"])
    see(page.get_by_test_id("assistant-message").last).to_have_text("Echo: Second question, edited")
    reply.get_by_test_id("branch-next").click()
    see(page.get_by_test_id("assistant-message").last).to_have_text("Another answer")

    # Thumbs up: shown pressed, kept across a reload; clicking it again clears it; thumbs down.
    up, down = reply.get_by_test_id("rate-up"), reply.get_by_test_id("rate-down")
    see(up).to_have_attribute("aria-pressed", "false")
    up.click()
    see(up).to_have_attribute("aria-pressed", "true")
    page.reload()
    wait_live(page)
    see(page.get_by_test_id("assistant-message").last).to_have_text("Another answer")
    see(up).to_have_attribute("aria-pressed", "true")
    see(down).to_have_attribute("aria-pressed", "false")
    assert api.get(f"/api/llm/sessions/{sid}?include_messages=true").get_json()["messages"][-1]["feedback"]["rating"] == "up"
    assert_accessible(page, "a rated reply")
    up.click()
    see(up).to_have_attribute("aria-pressed", "false")
    page.reload()
    wait_live(page)
    see(page.get_by_test_id("assistant-message").last).to_have_text("Another answer")
    see(up).to_have_attribute("aria-pressed", "false")
    assert api.get(f"/api/llm/sessions/{sid}?include_messages=true").get_json()["messages"][-1]["feedback"] is None
    down.click()
    see(down).to_have_attribute("aria-pressed", "true")
    see(up).to_have_attribute("aria-pressed", "false")
    see(page.get_by_test_id("error-banner")).to_have_count(0)

    # An edit the model fails: the error says so; the chat shows what the server kept (the new question,
    # unanswered, as a failed turn keeps it), and the picker goes back to the branch before it.
    fake.fail_next(status=500)
    page.get_by_test_id("turn").first.get_by_test_id("edit-message").click()
    page.get_by_test_id("edit-input").fill("This one fails")
    page.get_by_test_id("edit-save").click()
    see(page.get_by_test_id("error-banner")).to_contain_text("The model failed to answer")
    see(page.get_by_test_id("user-message")).to_have_text(["This one fails"])
    see(page.get_by_test_id("assistant-message")).to_have_count(0)
    see(picker_positions(page)).to_have_text(["2/2"])
    page.get_by_test_id("branch-prev").click()
    see(page.get_by_test_id("user-message")).to_have_text(["First question", "Second question, edited"])
    see(page.get_by_test_id("assistant-message")).to_have_text(["Echo: First question", "Another answer"])
    see(picker_positions(page)).to_have_text(["1/2", "2/2", "2/2"])


# --- message search: hits under the chats, snippets marked, a hit opens its chat at the message ---


def message_turn(page, message_id):
    return page.locator(f'[data-testid="turn"][data-message-id="{message_id}"]')


def search_hit(page, message_id):
    return page.locator(f'[data-testid="message-hit"][data-message-id="{message_id}"]')


@needs_browser
def test_search_finds_messages_marks_the_words_and_opens_the_chat_at_the_message(context, live, web_origin, fake):
    app, api_url = live
    user = User()
    api = client_for(app, user)
    see = expect()
    # A long chat (imported: 240 messages, more than the first page of 200): its oldest question holds a
    # word of its own, and every message "filler" (more hits than one page of them).
    # (An emoji before the word: the server's offsets count code points, JavaScript's strings UTF-16 units.)
    lines = [{"role": "user", "content": "Where did I put 🦊🦊 the quokkaspecial receipt? filler"},
             {"role": "assistant", "content": "In the drawer, filler."}]
    for i in range(1, 120):
        lines += [{"role": "user", "content": f"Filler question {i}"}, {"role": "assistant", "content": f"Filler answer {i}"}]
    doc = {"format": "chat-session/v1", "session": {"session_name": "Long ledger"}, "messages": lines}
    response = api.post("/api/llm/sessions/import", json=doc)
    assert response.status_code == 201, response.get_json()
    long_chat = response.get_json()["data"]["session_id"]
    first_page = api.get(f"/api/llm/sessions/{long_chat}?include_messages=true").get_json()
    assert first_page["has_more_messages"] and "quokkaspecial" not in first_page["messages"][0]["content"]
    (old_hit,) = api.get("/api/llm/search?q=quokkaspecial").get_json()["data"]
    assert old_hit["session_id"] == long_chat and old_hit["role"] == "user"
    assert "🦊🦊 the quokkaspecial" in old_hit["snippet"], old_hit  # the emoji comes before the marked word
    # A short chat whose question is edited: the first version (and its reply) is on a branch no longer shown.
    response = api.post("/api/llm/sessions/import", json={"format": "chat-session/v1", "session": {"session_name": "Trip notes"},
                        "messages": [{"role": "user", "content": "Plan the marmotvariant hike"},
                                     {"role": "assistant", "content": "Echo: Plan the marmotvariant hike"}]})
    trip = response.get_json()["data"]["session_id"]
    question = api.get(f"/api/llm/sessions/{trip}?include_messages=true").get_json()["messages"][0]["id"]
    edited = api.post(f"/api/llm/sessions/{trip}/messages/{question}/edit", json={"query": "Plan a beach day"})
    assert edited.status_code == 200 and "event: done" in edited.get_data(as_text=True)
    branch_hits = api.get("/api/llm/search?q=marmotvariant&role=user").get_json()["data"]
    assert [(h["message_id"], h["on_active_branch"]) for h in branch_hits] == [(question, False)]

    page = open_app(context, web_origin)
    sign_in_with_token(page, user.token)
    # The old question: a hit under the chats (none of whose names match), its word marked.
    page.get_by_test_id("search").fill("quokkaspecial")
    see(page.get_by_test_id("no-results")).to_be_visible()  # no chat's name has it
    hit = search_hit(page, old_hit["message_id"])
    see(hit.get_by_test_id("hit-session")).to_have_text("Long ledger")
    see(hit).to_contain_text("You")
    see(hit.locator("mark")).to_have_text(["quokkaspecial"])
    see(hit.get_by_test_id("hit-snippet")).to_contain_text("Where did I put 🦊🦊 the quokkaspecial receipt?")
    assert_accessible(page, "message hits")
    # Opened by keyboard: the chat, its older page read, the question in view, marked and focused.
    hit.focus()
    page.keyboard.press("Enter")
    see(page).to_have_url(re.compile(f"/c/{re.escape(long_chat)}$"))
    target = message_turn(page, old_hit["message_id"])
    see(target).to_be_in_viewport()
    see(target).to_be_focused()
    see(target).to_have_class(re.compile(r"\bfound\b"))
    see(target).not_to_have_class(re.compile(r"\bfound\b"))  # only for a moment
    see(page.get_by_test_id("turn")).to_have_count(240)
    see(target.get_by_test_id("user-message")).to_contain_text("quokkaspecial")
    assert_accessible(page, "a chat opened at a hit")

    # More hits by next_cursor.
    page.get_by_test_id("search").fill("filler")
    see(page.get_by_test_id("message-hit")).to_have_count(10)
    page.get_by_test_id("more-hits").click()
    see(page.get_by_test_id("message-hit")).to_have_count(20)
    # Only excluded words: the server answers 400; no hits, no error.
    page.get_by_test_id("search").fill("-filler")
    see(page.get_by_test_id("no-message-hits")).to_be_visible()
    see(page.get_by_test_id("message-hit")).to_have_count(0)
    see(page.get_by_test_id("error-banner")).to_have_count(0)

    # A hit on a branch no longer shown, on a phone: the chat switches to it and shows the message.
    page.set_viewport_size({"width": 390, "height": 700})
    page.get_by_test_id("back-to-list").click()
    page.get_by_test_id("search").fill("marmotvariant")
    hit = search_hit(page, question)
    see(hit.get_by_test_id("hit-other-branch")).to_be_visible()
    see(hit.locator("mark")).to_have_text(["marmotvariant"])
    assert no_sideways_scroll(page)
    assert_accessible(page, "phone message hits")
    page.emulate_media(reduced_motion="reduce")  # the mark holds still for those who ask for less motion
    hit.click()
    see(page).to_have_url(re.compile(f"/c/{re.escape(trip)}$"))
    target = message_turn(page, question)
    see(target).to_be_in_viewport()
    see(target).to_have_class(re.compile(r"\bfound\b"))
    assert target.locator(".message").evaluate("el => getComputedStyle(el).animationName") == "none"
    see(target.get_by_test_id("user-message")).to_have_text("Plan the marmotvariant hike")
    see(target.get_by_test_id("branch-position")).to_have_text("1/2")
    see(page.get_by_test_id("assistant-message")).to_have_text(["Echo: Plan the marmotvariant hike"])
    assert no_sideways_scroll(page)
    # The server keeps that branch as the one shown (a reload shows it too).
    path = api.get(f"/api/llm/sessions/{trip}?include_messages=true").get_json()["messages"]
    assert [m["id"] for m in path][0] == question
    see(page.get_by_test_id("error-banner")).to_have_count(0)
