"""gunicorn settings for production (`make serve`); every value can be overridden by env.

The gevent worker: each connection is a greenlet, not a thread, so one worker
holds a thousand streamed replies or idle event streams at once (a thread per
connection capped a 2-worker host at 32). psycopg 3, the openai SDK's httpx
and LangGraph's sync API run unchanged under it; gevent patches the standard
library in each worker before the app is imported (gunicorn does it when the
worker starts, and the app is loaded in the worker, not the master).

Capacity: WEB_CONCURRENCY workers x MAX_CONNECTIONS_PER_WORKER requests in
flight. Past that the app answers 503 with Retry-After at once
(backend/overload.py); gunicorn's own `worker_connections` sits a little above
so those 503s can still be accepted and answered instead of queueing.
"""

import gc
import os
import resource

bind = os.environ.get("BIND", "0.0.0.0:" + os.environ.get("PORT", "8000"))
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
worker_class = os.environ.get("GUNICORN_WORKER_CLASS", "gevent")
_per_worker = int(os.environ.get("MAX_CONNECTIONS_PER_WORKER", "1500"))
worker_connections = _per_worker + int(os.environ.get("GUNICORN_SPARE_CONNECTIONS", "200"))
# Only the thread worker (GUNICORN_WORKER_CLASS=gthread) uses threads.
threads = int(os.environ.get("GUNICORN_THREADS", "16"))
# Streams take the backlog in bursts: thousands of clients connecting at once.
backlog = int(os.environ.get("GUNICORN_BACKLOG", "4096"))
timeout = int(os.environ.get("GUNICORN_TIMEOUT", "120"))
graceful_timeout = int(os.environ.get("GUNICORN_GRACEFUL_TIMEOUT", "30"))
keepalive = 5
accesslog = None  # the app logs each request itself, as JSON with a request id

# Python's cyclic garbage collector, tuned for a worker that holds thousands of
# live replies: with the default thresholds (700, 10, 10) a burst of 1,000 turns
# made 500 collections per worker, four of them full ones scanning every live
# object, about 1.2 s of CPU (12% of the burst's) for 5,000 objects freed;
# reference counting frees nearly everything else. After the app is loaded the
# objects made at start are frozen (never scanned again), and the young
# generation is collected every 50,000 net allocations instead of 700.
_gc_threshold = tuple(int(v) for v in os.environ.get("PYTHON_GC_THRESHOLD", "50000,20,20").split(","))

# Freed memory goes back to the system every MALLOC_TRIM_SECONDS (0: never).
# glibc's malloc gives back only the top of its heap by itself: the pages freed
# inside it, what handling a burst of requests left behind, stay resident for
# good. Measured with one worker holding 1,000 idle event streams: 24.1 KB per
# stream, 19.5 once trimmed; the trim took 0.9 ms.
_trim_seconds = float(os.environ.get("MALLOC_TRIM_SECONDS", "10"))

# gevent records, for every greenlet it spawns (one per connection, and more per
# reply), the stack and greenlet that spawned it, for debugging tools this
# server does not use: a few hundred bytes each, held for the greenlet's life.
os.environ.setdefault("GEVENT_TRACK_GREENLET_TREE", "false")

# Every connection is a file descriptor, and a streamed reply takes two (the
# client's and the model's). Many systems start processes at a soft limit of
# 1,024: raise it to the hard limit the system allows.
_soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
_wanted = 4 * worker_connections + 256
if _soft != resource.RLIM_INFINITY and _soft < _wanted:
    resource.setrlimit(resource.RLIMIT_NOFILE, (_wanted if _hard == resource.RLIM_INFINITY else min(_wanted, _hard), _hard))


def _services(worker):
    """What create_app built in this worker (backend.services.services_of), or None before it ran."""
    return getattr(getattr(worker, "wsgi", None), "extensions", {}).get("services")


def post_worker_init(worker):
    """On SIGTERM, also end this worker's event streams at once: they never end
    by themselves, so graceful shutdown would otherwise wait its whole timeout.
    Replies being written still finish; event clients reconnect elsewhere."""
    import signal
    import threading

    def handle_exit(sig, frame):
        worker.alive = False
        services = _services(worker)
        if services is None or services.event_hub is None:
            return
        # Not in the signal handler itself: draining takes a lock. Under gevent
        # the handler runs in the event loop, where nothing may block (not even
        # a thread's start), so a greenlet is spawned there instead.
        if worker_class == "gevent":
            import gevent

            gevent.spawn(services.event_hub.drain)
        else:
            threading.Thread(target=services.event_hub.drain, daemon=True).start()

    signal.signal(signal.SIGTERM, handle_exit)
    gc.freeze()
    gc.set_threshold(*_gc_threshold)
    _start_memory_trim(_trim_seconds)
    services = _services(worker)
    if services is not None and services.event_hub is not None:
        services.event_hub.start()  # LISTEN before the first stream, not on its way


def _start_memory_trim(seconds):
    """A daemon thread (a greenlet under gevent) calling malloc_trim(0) every `seconds`;
    None where there is no glibc (musl, macOS) or the setting is 0."""
    import ctypes
    import threading
    import time

    trim = getattr(ctypes.CDLL(None), "malloc_trim", None)
    if trim is None or seconds <= 0:
        return None

    def keep_trimming():
        while True:
            time.sleep(seconds)
            trim(0)

    thread = threading.Thread(target=keep_trimming, name="malloc-trim", daemon=True)
    thread.start()
    return thread


def worker_exit(server, worker):
    """Stop this worker's background jobs and close its pool before it exits."""
    services = _services(worker)
    if services is not None:
        services.close()
