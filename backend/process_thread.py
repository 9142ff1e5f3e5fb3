"""A background thread each server process runs once: the lease keeper, the events listener."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable


class ProcessThread:
    """A daemon thread running `target`, started by the first ensure_running() in each process
    (one started before a fork does not run in the child) and again by the next one if it ended.

    Checked by process id, never Thread.is_alive(): under gevent that check yields to the
    event loop (a failed non-blocking acquire of the thread's state lock sleeps), and
    ensure_running() is on hot paths (every turn's start, every events stream's start).
    """

    def __init__(self, target: Callable[[], None], name: str) -> None:
        self._target = target
        self._name = name
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._pid: int | None = None  # the process whose thread is running, if one is

    def ensure_running(self) -> None:
        with self._lock:
            if self._pid == os.getpid():
                return
            self._pid = os.getpid()
            self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
            self._thread.start()

    def _run(self) -> None:
        try:
            self._target()
        finally:
            with self._lock:
                if self._thread is threading.current_thread():
                    self._pid = None  # the next ensure_running() starts another
