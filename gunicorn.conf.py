"""gunicorn settings for production (`make serve`); every value can be overridden by env."""

import os

bind = os.environ.get("BIND", "0.0.0.0:" + os.environ.get("PORT", "8000"))
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
# Threads let one worker hold long-lived streamed replies while serving CRUD.
worker_class = "gthread"
threads = int(os.environ.get("GUNICORN_THREADS", "16"))
timeout = int(os.environ.get("GUNICORN_TIMEOUT", "120"))
graceful_timeout = 30
keepalive = 5
accesslog = None  # the app logs each request itself, as JSON with a request id
