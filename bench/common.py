"""Shared pieces of the harness: the database, the servers it starts, tokens, statistics, output."""

from __future__ import annotations

import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
from psycopg.rows import dict_row

from support import identity
from support.databases import scratch_database  # noqa: F401 - the harness's scratch databases
from support.net import free_port, wait_http
from support.server import BACKEND_APP, ProductionServer

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
RESULTS = BENCH / "results"
JWT_SECRET = "bench-jwt-secret-" + "j" * 32
SECRET_KEY = "bench-secret-key-" + "s" * 32
BUSINESS = "bench-biz"

_T0 = time.monotonic()


def add_root_argument(parser) -> None:
    """--root: another checkout's code to run under the same client, upstream and database (a side-by-side)."""
    parser.add_argument("--root", type=Path, default=ROOT, help="the checkout whose code runs (default: this one)")


def checkout_of(root: Path) -> Path:
    """The checkout to run, resolved, after printing which code it holds."""
    root = root.resolve()
    commit = subprocess.run(["git", "log", "-1", "--format=%h %s"], cwd=root, capture_output=True, text=True)
    print(f"code: {root} ({commit.stdout.strip()[:80] or 'not a git checkout'})")
    return root


def say(message: str) -> None:
    print(f"[{time.monotonic() - _T0:7.1f}s] {message}", file=sys.stderr, flush=True)


# --- statistics -----------------------------------------------------------------


def pct(values: list[float], p: float) -> float:
    """Percentile with linear interpolation (p in 0..100); nan for no values."""
    if not values:
        return float("nan")
    s = sorted(values)
    k = (len(s) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def stats(values: list[float]) -> dict:
    return {"n": len(values), "p50": pct(values, 50), "p95": pct(values, 95), "p99": pct(values, 99),
            "max": max(values) if values else float("nan")}


# --- results ----------------------------------------------------------------------


@dataclass
class Results:
    quick: bool
    rows: list[dict] = field(default_factory=list)  # one per target: name, value, unit, target, meets
    details: dict = field(default_factory=dict)  # every other number, per scenario

    def target(self, name: str, value: float, unit: str, target: str, meets: bool | None) -> None:
        row = {"name": name, "value": round(value, 3) if isinstance(value, float) else value,
               "unit": unit, "target": target, "meets": bool(meets) if meets is not None else False}
        self.rows.append(row)
        say(f"TARGET {name}: {row['value']} {unit} (target {target}) -> {'MEETS' if row['meets'] else 'MISSED'}")

    def detail(self, scenario: str, key: str, value) -> None:
        self.details.setdefault(scenario, {})[key] = value


def machine_info(db_version: str) -> dict:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return {
        "cpu": cpu, "cores": os.cpu_count(), "memory_gib": round(mem_gib, 1),
        "os": f"{platform.system()} {platform.release()}", "python": platform.python_version(),
        "postgres": db_version, "load_avg_at_start": os.getloadavg(),
    }


# --- the database -------------------------------------------------------------------


def server_url() -> tuple[str, str]:
    """The PostgreSQL server to use (its maintenance database), and a description."""
    url = os.environ.get("BENCH_DATABASE_URL")
    if url:
        return url, "BENCH_DATABASE_URL"
    from backend.db import start_embedded_postgres

    data = BENCH / ".data" / "pg"
    return start_embedded_postgres(data), f"embedded PostgreSQL (pgserver) in {data.relative_to(ROOT)}"


def connect(url: str, **kwargs) -> psycopg.Connection:
    return psycopg.connect(url, autocommit=True, row_factory=dict_row, **kwargs)


# --- tokens and ids ---------------------------------------------------------------------


def make_token(user_id: str, business_id: str = BUSINESS) -> str:
    return identity.make_token(user_id, JWT_SECRET, business_id=business_id, lifetime_seconds=6 * 3600)


def thread_id(user_id: str, session_id: str, business_id: str = BUSINESS) -> str:
    return identity.thread_id(user_id, business_id, session_id)


def new_user() -> str:
    return str(uuid.uuid4())


# --- processes: memory --------------------------------------------------------------------


def children(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                if int(fields[1]) == pid:
                    out.append(int(entry.name))
            except (OSError, IndexError, ValueError):
                continue
    return out


def cpu_by_pid(pids: list[int]) -> dict[int, float]:
    """User + system CPU seconds of each of these processes so far."""
    tick = os.sysconf("SC_CLK_TCK")
    out = {}
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            out[pid] = (int(fields[11]) + int(fields[12])) / tick
        except (OSError, IndexError, ValueError):
            continue
    return out


def cpu_delta(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU used between two cpu_by_pid() readings by the processes alive at both."""
    return sum(after[p] - before[p] for p in before if p in after)


def postgres_pids() -> list[int]:
    """Every PostgreSQL server process on the machine (backends included)."""
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "comm").read_text().strip() == "postgres":
                    out.append(int(entry.name))
            except OSError:
                continue
    return out


def own_cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system


def rss_bytes(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
        except OSError:
            continue
    return total


# --- the servers ------------------------------------------------------------------------------


class AppServer(ProductionServer):
    """`make serve`'s command with its shipped defaults (support.server), on the bench's database and upstream."""

    def __init__(self, name: str, database_url: str, upstream_url: str, env: dict[str, str], logdir: Path,
                 app: str = BACKEND_APP, root: Path = ROOT) -> None:
        self.name = name
        super().__init__({
            "APP_ENV": "test",
            "DATABASE_URL": database_url,
            "SECRET_KEY": SECRET_KEY,
            "SUPABASE_JWT_SECRET": JWT_SECRET,
            "OPENAI_BASE_URL": upstream_url,
            "OPENAI_API_KEY": "bench-key",
            "OPENAI_MODEL": "bench-model",
            "NAMING_MODEL": "bench-naming",
            "MAINTENANCE_INTERVAL_SECONDS": "0",
            "RATE_LIMITS_ENABLED": "false",
            "LOG_LEVEL": "INFO",
            "LOG_FORMAT": "json",
            "WEB_CONCURRENCY": "2",
            "DB_POOL_MAX_SIZE": "10",
            **env,
        }, logdir / f"server-{name}.log", app=app, root=root)

    def start(self) -> AppServer:
        super().start()
        # Both workers must be up before timing starts (gunicorn boots them in turn).
        deadline = time.monotonic() + 60
        workers = int(self.env["WEB_CONCURRENCY"])
        while time.monotonic() < deadline and self._booted() < workers:
            time.sleep(0.2)
        say(f"server {self.name} up on :{self.port} ({self.env['WEB_CONCURRENCY']} workers x "
            f"{self.env.get('GUNICORN_WORKER_CLASS', 'gevent')}, pool {self.env['DB_POOL_MAX_SIZE']}/worker)")
        return self

    def _booted(self) -> int:
        return sum(1 for line in self.log_path.read_text(errors="replace").splitlines() if "Booting worker" in line)

    def pids(self) -> list[int]:
        if self.proc is None:
            return []
        return [self.proc.pid, *children(self.proc.pid)]

    def rss(self) -> int:
        return rss_bytes(self.pids())

    def request_log(self) -> dict[str, dict]:
        """request_id -> the server's own `request finished` record (duration_ms measured inside)."""
        out = {}
        for line in self.log_path.read_text(errors="replace").splitlines():
            if not line.startswith("{") or '"backend.request"' not in line:
                continue
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if "request_id" in entry:
                out[entry["request_id"]] = entry
        return out

    def errors_logged(self) -> list[str]:
        return [line for line in self.log_path.read_text(errors="replace").splitlines()
                if '"level": "error"' in line or "Traceback" in line or "[CRITICAL]" in line]


class Upstream:
    """The lean asyncio fake OpenAI upstream (bench/fake_upstream.py), in its own process."""

    def __init__(self, logdir: Path) -> None:
        self.port = free_port()
        self.log_path = logdir / "upstream.log"
        self.proc: subprocess.Popen | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> Upstream:
        log = open(self.log_path, "wb")  # noqa: SIM115 - the child's stdout/stderr for its whole life
        self.proc = subprocess.Popen([sys.executable, "-m", "bench.fake_upstream", "--port", str(self.port)],
                                     cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        if not wait_http(self.port, "/v1/models", 20, self.proc):
            raise RuntimeError("fake upstream did not start:\n" + self.log_path.read_text()[-2000:])
        return self

    def arrivals(self) -> dict[str, float]:
        """tag -> when the upstream received that tagged chat request (epoch seconds)."""
        out = {}
        for line in self.log_path.read_text(errors="replace").splitlines():
            parts = line.split()
            if len(parts) == 3 and parts[0] == "recv":
                out[parts[1]] = float(parts[2])
        return out

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


PEER_VENV = BENCH / ".peer-venv"


def ensure_peer_venv() -> tuple[Path | None, str]:
    """langgraph-cli[inmem] in a virtual environment of its own. Returns (langgraph executable, note)."""
    exe = PEER_VENV / "bin" / "langgraph"
    if exe.exists():
        return exe, "installed"
    say("installing the peer (langgraph-cli[inmem]) into bench/.peer-venv (once)")
    try:
        subprocess.run([sys.executable, "-m", "venv", str(PEER_VENV)], check=True, capture_output=True)
        subprocess.run([str(PEER_VENV / "bin" / "pip"), "install", "--quiet", "langgraph-cli[inmem]"],
                       check=True, capture_output=True, timeout=600)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
        out = getattr(exc, "stderr", b"") or b""
        return None, f"peer install failed: {exc}: {out.decode(errors='replace')[-1000:]}"
    return (exe if exe.exists() else None), "installed now"


class PeerServer:
    """The LangGraph dev server (in-memory runtime), from a scratch copy of bench/peer/."""

    def __init__(self, exe: Path, workdir: Path) -> None:
        self.exe = exe
        self.port = free_port()
        self.workdir = workdir / "peer"
        self.log_path = workdir / "peer.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> PeerServer:
        shutil.rmtree(self.workdir, ignore_errors=True)
        shutil.copytree(BENCH / "peer", self.workdir, ignore=shutil.ignore_patterns(".langgraph_api", "__pycache__"))
        env = {**os.environ, "LANGGRAPH_CLI_NO_ANALYTICS": "1", "LANGSMITH_TRACING": "false",
               "LANGCHAIN_TRACING_V2": "false", "PYTHONUNBUFFERED": "1"}
        env.pop("VIRTUAL_ENV", None)
        log = open(self.log_path, "wb")  # noqa: SIM115 - the child's stdout/stderr for its whole life
        self.proc = subprocess.Popen(
            [str(self.exe), "dev", "--no-browser", "--no-reload", "--host", "127.0.0.1", "--port", str(self.port),
             "--server-log-level", "warning"],
            cwd=self.workdir, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        if not wait_http(self.port, "/ok", 90, self.proc):
            raise RuntimeError("peer did not start:\n" + self.log_path.read_text(errors="replace")[-3000:])
        say(f"peer (langgraph dev, in-memory) up on :{self.port}")
        return self

    def pids(self) -> list[int]:
        if self.proc is None:
            return []
        return [self.proc.pid, *children(self.proc.pid)]

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(20)
            except (subprocess.TimeoutExpired, ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
