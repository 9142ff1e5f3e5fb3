"""The production server, as `make serve` runs it, started for a test, a benchmark or a soak."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from support.net import free_port, wait_http

ROOT = Path(__file__).resolve().parent.parent
# The command `make serve` runs, with the shipped gunicorn.conf.py.
BACKEND_APP = "backend:create_app()"
PRODUCTION_COMMAND = [sys.executable, "-m", "gunicorn", "--config", "gunicorn.conf.py", BACKEND_APP]
# Settings a caller's shell may carry that would change the shipped server model.
SERVER_MODEL_SETTINGS = (
    "GUNICORN_WORKER_CLASS", "GUNICORN_THREADS", "MAX_CONNECTIONS_PER_WORKER",
    # the workers' memory settings (gunicorn.conf.py); bench/subscribers.py's settle time assumes the trim's default
    "PYTHON_GC_THRESHOLD", "MALLOC_TRIM_SECONDS", "GEVENT_TRACK_GREENLET_TREE",
)


class ProductionServer:
    """gunicorn on a free loopback port with `env` on top of this process's environment
    (minus SERVER_MODEL_SETTINGS unless `env` sets them), logging to `log_path`."""

    def __init__(self, env: dict[str, str], log_path: Path, *, ready_timeout: float = 90,
                 app: str = BACKEND_APP, root: Path = ROOT) -> None:
        """`app`: another WSGI app under the same command and config (a benchmark's floor).
        `root`: the checkout whose code and gunicorn.conf.py run (another one: its code, side by side)."""
        self.command = [*PRODUCTION_COMMAND[:-1], app]
        self.root = root
        self.port = free_port()
        self.log_path = log_path
        self.ready_timeout = ready_timeout
        base = {k: v for k, v in os.environ.items() if k not in SERVER_MODEL_SETTINGS}
        self.env = {**base, "BIND": f"127.0.0.1:{self.port}", **{k: str(v) for k, v in env.items()}}
        self.proc: subprocess.Popen | None = None
        self._log = None

    def start(self) -> ProductionServer:
        """Start it and wait until /readyz answers; RuntimeError with the log's tail if it does not."""
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - the server's output for its whole life
        self.proc = subprocess.Popen(self.command, cwd=self.root, env=self.env, stdout=self._log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        if not wait_http(self.port, "/readyz", self.ready_timeout, self.proc):
            self.stop()
            raise RuntimeError(f"the server did not start; {self.log_path}:\n" + self.log_tail())
        return self

    def log_tail(self, chars: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:]

    def stop(self, timeout: float = 30) -> None:
        """SIGTERM (gunicorn's graceful stop), then SIGKILL to the whole group if it hangs."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        if self._log:
            self._log.close()
            self._log = None

    def __enter__(self) -> ProductionServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
