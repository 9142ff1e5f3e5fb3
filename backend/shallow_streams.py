"""Event streams dispatched off their connection's stack, under the gevent worker.

Each connection is a greenlet, and since Python 3.11 a greenlet keeps its
Python frames in a data-stack chunk of its own. The pages a request touches on
its way down (gunicorn, Flask, auth, validation, logging) stay resident for as
long as the greenlet lives, so an event stream idling for hours holds them
all, though it waits only a few frames deep.

For the paths given (the events stream), the app runs in a greenlet of its own
that ends when the app returns its response, and its data stack with it; the
connection's greenlet only iterates that response, a few frames deep. The app
may block in there (a database read): gevent switches back to it as to any
greenlet, and its end resumes the connection's. Nothing changes for other
paths, or outside gevent (a thread's stack is not per connection).
"""

from __future__ import annotations

import sys
from collections.abc import Iterable

from greenlet import greenlet


def under_gevent() -> bool:
    """Whether this process runs under gevent's patched threading (the production worker)."""
    monkey = sys.modules.get("gevent.monkey")
    return monkey is not None and monkey.is_module_patched("threading")


class ShallowStreams:
    """WSGI middleware: for these paths, the app is called in a short-lived greenlet."""

    def __init__(self, app, paths: Iterable[str], *, enabled: bool) -> None:
        self.app = app
        self.paths = frozenset(paths)
        self.enabled = enabled

    def __call__(self, environ, start_response):
        if not self.enabled or environ.get("PATH_INFO") not in self.paths:
            return self.app(environ, start_response)
        # Its return value (or exception) comes back here when it ends: the caller is its parent.
        return greenlet(self.app).switch(environ, start_response)
