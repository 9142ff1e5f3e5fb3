"""Structured logs for operators: one JSON object per line, with a request id.

Logs carry ids, counts, timings and error classes, never secrets, tokens,
passwords or message content.
"""

from __future__ import annotations

import json
import logging
import sys
import random
import time

from flask import Flask, g, has_request_context, request

_RESERVED = set(vars(logging.makeLogRecord({})).keys()) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if has_request_context() and "request_id" in g:
            entry["request_id"] = g.request_id
        for key, value in record.__dict__.items():
            if key not in _RESERVED and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure_logging(level: str, fmt: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler._chat_backend = True  # type: ignore[attr-defined]
    root = logging.getLogger()
    # Replace only our own handler (create_app may run more than once); leave
    # handlers other code installed alone.
    root.handlers[:] = [h for h in root.handlers if not getattr(h, "_chat_backend", False)] + [handler]
    root.setLevel(level.upper())
    # No format here shows a record's thread or process name, so they are not
    # collected (Python's logging HOWTO, "Optimization"): under gevent, naming
    # the thread made an object for every request's greenlet. The process id
    # stays: gunicorn's own log lines show it.
    logging.logThreads = False
    logging.logMultiprocessing = False
    # werkzeug's access log repeats what `request finished` says, without ids: only its warnings
    # are kept, and the development server's own start lines (`flask run`, `make run`: where it
    # listens), printed as werkzeug prints them.
    werkzeug = logging.getLogger("werkzeug")
    werkzeug.setLevel(logging.INFO)
    werkzeug.propagate = False
    warnings = logging.StreamHandler(sys.stderr)
    warnings.setFormatter(handler.formatter)
    warnings.setLevel(logging.WARNING)
    start_lines = logging.StreamHandler(sys.stderr)
    start_lines.addFilter(lambda record: record.levelno < logging.WARNING and "Running on" in record.getMessage())
    werkzeug.handlers[:] = [warnings, start_lines]
    # pgserver logs every command it runs at INFO, stdout included.
    logging.getLogger("pgserver").setLevel(logging.WARNING)
    # The model client's HTTP library logs each request at INFO: a second line
    # per turn, saying less than `turn finished`.
    for name in ("httpx", "httpx2"):
        logging.getLogger(name).setLevel(logging.WARNING)


def install_request_logging(app: Flask) -> None:
    log = logging.getLogger("backend.request")

    @app.before_request
    def _start() -> None:
        incoming = request.headers.get("X-Request-ID", "")
        # Accept a caller's id only if it is short and plain, so logs stay clean.
        # Request ids need to be unique, not unguessable: os.urandom (uuid4) costs
        # tens of microseconds on some VMs, on every request.
        g.request_id = incoming if 0 < len(incoming) <= 64 and incoming.isprintable() else f"{random.getrandbits(128):032x}"
        g.request_started = time.perf_counter()

    @app.after_request
    def _finish(response):
        response.headers["X-Request-ID"] = g.get("request_id", "")
        started = g.get("request_started")
        log.info(
            "request finished",
            extra={
                "method": request.method,
                "path": request.path,  # ids in paths are not secrets; query strings are not logged
                "status": response.status_code,
                "duration_ms": round((time.perf_counter() - started) * 1000, 2) if started else None,
            },
        )
        return response
