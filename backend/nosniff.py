"""`X-Content-Type-Options: nosniff` on every response, so a browser never reads one as another type
(a JSON body or an exported conversation as HTML or script). WSGI middleware, outermost, so the
refusals other middlewares answer themselves (503 `overloaded`) carry it too."""

from __future__ import annotations


class NoSniff:
    def __init__(self, app) -> None:
        self.app = app

    def __call__(self, environ, start_response):
        def start(status, headers, exc_info=None):
            headers.append(("X-Content-Type-Options", "nosniff"))
            return start_response(status, headers, exc_info)

        return self.app(environ, start)
