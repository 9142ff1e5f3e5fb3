"""The built React app (web/dist, made by `make web`) at `/`, so `make run` shows it; the API stays under /api.

The build is looked for on each request, so a `make web` while the server runs shows at the next
reload; without one, `/` says how to make it. The app's own URLs (`/c/<session_id>`, a chat) serve
the same page. Plain URL rules, not OpenAPI operations, so the API document does not list them.
"""

from __future__ import annotations

from html.parser import HTMLParser
from pathlib import Path

from flask import Flask, Response, send_from_directory

from backend.config import PROJECT_ROOT

WEB_DIST = PROJECT_ROOT / "web" / "dist"

# For a build from before web/vite.config.ts wrote its policy into index.html: same-origin only.
_SAME_ORIGIN_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "object-src 'none'; base-uri 'none'; form-action 'self'"
)


def page_headers(dist: Path) -> dict[str, str]:
    """The page's protective headers: the build's own Content-Security-Policy (it names the API
    origin the build calls), with framing refused, which only a header can say; and no Referer
    beyond this origin (`same-origin`, not `no-referrer`: that would make the app's own POSTs
    send `Origin: null`, which the CSRF check refuses)."""
    index_html = dist / "index.html"
    policy = (_policy_in(index_html) if index_html.is_file() else None) or _SAME_ORIGIN_POLICY
    return {
        "Content-Security-Policy": f"{policy}; frame-ancestors 'none'",
        "Referrer-Policy": "same-origin",
    }


NOT_BUILT_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>The web app is not built</title></head>
<body><main><h1>The web app is not built yet</h1>
<p>The API is running (its documentation: <a href="/api/docs/">/api/docs/</a>). To see the React app here,
build it with Node.js 20 and npm, then reload this page (no restart needed):</p>
<pre>make web</pre></main></body></html>
"""


def install_web_app(app: Flask, dist: Path = WEB_DIST) -> bool:
    """Serve the build in `dist` at `/` (and at the app's own paths); True if one is there now."""

    def index(session_id: str | None = None):
        if not (dist / "index.html").is_file():
            response = Response(NOT_BUILT_PAGE, status=404, mimetype="text/html")
            response.headers.update(page_headers(dist))
            return response
        # Always revalidated: it names the current build's hashed assets.
        response = send_from_directory(dist, "index.html", max_age=0)
        response.headers.update(page_headers(dist))
        return response

    def asset(name: str):
        return send_from_directory(dist / "assets", name, max_age=365 * 86_400)  # names carry a content hash

    app.add_url_rule("/", "web_index", index)
    app.add_url_rule("/c/<path:session_id>", "web_chat", index)  # a chat's own URL, reloaded or linked
    app.add_url_rule("/assets/<path:name>", "web_asset", asset)
    return (dist / "index.html").is_file()


class _PolicyMeta(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.policy: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if tag == "meta" and (values.get("http-equiv") or "").lower() == "content-security-policy":
            self.policy = values.get("content")


def _policy_in(index_html: Path) -> str | None:
    parser = _PolicyMeta()
    parser.feed(index_html.read_text(encoding="utf-8"))
    return parser.policy
