"""The built React app (web/dist, made by `make web`) at `/`, so `make run` shows it; the API stays under /api.

Only when a build exists: without one, `/` is the API's usual JSON 404. Plain URL rules, not
OpenAPI operations, so the API document does not list them.
"""

from __future__ import annotations

from pathlib import Path

from flask import Flask, send_from_directory

from backend.config import PROJECT_ROOT

WEB_DIST = PROJECT_ROOT / "web" / "dist"


def install_web_app(app: Flask, dist: Path = WEB_DIST) -> bool:
    if not (dist / "index.html").is_file():
        return False

    def index():
        # Always revalidated: it names the current build's hashed assets.
        return send_from_directory(dist, "index.html", max_age=0)

    def asset(name: str):
        return send_from_directory(dist / "assets", name, max_age=365 * 86_400)  # names carry a content hash

    app.add_url_rule("/", "web_index", index)
    app.add_url_rule("/assets/<path:name>", "web_asset", asset)
    return True
