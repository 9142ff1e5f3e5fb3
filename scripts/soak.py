"""Soak test (not in CI): N clients, M minutes of mixed CRUD and chat against the server as production runs it.

    .venv/bin/python scripts/soak.py --clients 16 --minutes 2

Starts its own embedded PostgreSQL (or uses SOAK_DATABASE_URL), the fake
OpenAI upstream (tests/fake_openai.py) and gunicorn with gunicorn.conf.py, all
on loopback; drives the clients for the given time, then stops everything and
reports errors (target 0), p50/p99 latency per operation, and the server's
memory (RSS summed over the gunicorn master and workers) after the warm-up and
at the end (target: no growth beyond warm-up). Exit status 1 if any error.
"""

from __future__ import annotations

import argparse
import collections
import http.client
import json
import os
import random
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path


ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from support.identity import make_token  # noqa: E402
from support.server import ProductionServer  # noqa: E402
from tests.fake_openai import FakeOpenAI  # noqa: E402

JWT_SECRET = "soak-jwt-secret-" + "s" * 32
SECRET_KEY = "soak-secret-key-" + "k" * 32
# Weights of the operations each client picks from.
OPERATIONS = {"create": 12, "list": 22, "get": 18, "get_messages": 6, "rename": 10, "chat": 20, "delete": 12}


def token_for(user_id: str) -> str:
    return make_token(user_id, JWT_SECRET, business_id="soak", lifetime_seconds=24 * 3600)


# --- the server's memory -------------------------------------------------------------------

def process_tree(root_pid: int) -> list[int]:
    """The pid and all its descendants, from /proc."""
    children: dict[int, list[int]] = collections.defaultdict(list)
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children[ppid].append(int(entry.name))
    tree, todo = [], [root_pid]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, []))
    return tree


def rss_kib(pids: list[int]) -> dict[int, int]:
    sizes = {}
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    sizes[pid] = int(line.split()[1])
        except OSError:
            pass
    return sizes


# --- one client ------------------------------------------------------------------------------

class Client:
    def __init__(self, port: int, stats: Stats, rng: random.Random) -> None:
        self.port, self.stats, self.rng = port, stats, rng
        self.user_id = str(uuid.uuid4())
        self.headers = {"Authorization": f"Bearer {token_for(self.user_id)}", "Content-Type": "application/json"}
        self.sessions: list[str] = []
        self.conn: http.client.HTTPConnection | None = None

    def request(self, op: str, method: str, path: str, body=None, expect=(200,)) -> tuple[int, bytes] | None:
        started = time.perf_counter()
        try:
            if self.conn is None:
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
            self.conn.request(method, path, body=None if body is None else json.dumps(body), headers=self.headers)
            response = self.conn.getresponse()
            data = response.read()
            status = response.status
            if response.getheader("Connection", "").lower() == "close":
                self.conn.close()
                self.conn = None
        except (OSError, http.client.HTTPException) as exc:
            if self.conn is not None:
                self.conn.close()
            self.conn = None
            self.stats.error(op, f"{type(exc).__name__}: {exc}")
            return None
        self.stats.timing(op, time.perf_counter() - started)
        if status not in expect:
            self.stats.error(op, f"{method} {path} -> {status} {data[:200]!r}")
            return None
        return status, data

    def step(self) -> None:
        op = self.rng.choices(list(OPERATIONS), weights=list(OPERATIONS.values()))[0]
        if op != "create" and op != "list" and not self.sessions:
            op = "create"
        sid = self.rng.choice(self.sessions) if self.sessions else None
        if op == "create":
            result = self.request(op, "POST", "/api/llm/sessions", {}, expect=(201,))
            if result:
                self.sessions.append(json.loads(result[1])["session_id"])
        elif op == "list":
            self.request(op, "GET", f"/api/llm/sessions?limit={self.rng.choice([10, 50, 200])}")
        elif op == "get":
            self.request(op, "GET", f"/api/llm/sessions/{sid}")
        elif op == "get_messages":
            self.request(op, "GET", f"/api/llm/sessions/{sid}?include_messages=true")
        elif op == "rename":
            self.request(op, "PUT", f"/api/llm/sessions/{sid}", {"session_name": f"Soak {self.rng.randint(0, 10**6)}"})
        elif op == "chat":
            result = self.request(op, "POST", "/api/llm/query/stream",
                                  {"session_id": sid, "query": f"question {self.rng.randint(0, 10**6)} " * 8})
            if result and b"event: done" not in result[1]:
                self.stats.error(op, f"stream ended without done: {result[1][-200:]!r}")
        elif op == "delete" and self.request(op, "DELETE", f"/api/llm/sessions/{sid}"):
            self.sessions.remove(sid)
        if len(self.sessions) > 40:  # keep each user's list bounded, as real users do
            victim = self.sessions.pop(0)
            self.request("delete", "DELETE", f"/api/llm/sessions/{victim}")


class Stats:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.measuring = False
        self.latencies: dict[str, list[float]] = collections.defaultdict(list)
        self.counts: collections.Counter = collections.Counter()
        self.errors: collections.Counter = collections.Counter()
        self.samples: list[str] = []

    def timing(self, op: str, seconds: float) -> None:
        with self.lock:
            self.counts[op] += 1
            if self.measuring:  # latencies after the warm-up only
                self.latencies[op].append(seconds)

    def error(self, op: str, message: str) -> None:
        with self.lock:
            self.errors[op] += 1
            if len(self.samples) < 10:
                self.samples.append(f"{op}: {message}")


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))] if ordered else float("nan")


# --- the run ---------------------------------------------------------------------------------------

def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--minutes", type=float, default=2.0)
    parser.add_argument("--warmup-seconds", type=float, default=None, help="default: a quarter of the run, at most 30")
    parser.add_argument("--workers", type=int, default=2, help="gunicorn WEB_CONCURRENCY")
    parser.add_argument("--token-delay", type=float, default=0.002, help="the fake model's delay between tokens")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    duration = args.minutes * 60
    warmup = args.warmup_seconds if args.warmup_seconds is not None else min(30.0, duration / 4)

    with tempfile.TemporaryDirectory(prefix="soak-") as tmp:
        database_url, pg_server = os.environ.get("SOAK_DATABASE_URL"), None
        if not database_url:
            import pgserver

            # The embedded PostgreSQL the app uses on a laptop; stopped below (not again at exit).
            pg_server = pgserver.get_server(Path(tmp) / "pg", cleanup_mode=None)
            database_url = pg_server.get_uri()
        fake = FakeOpenAI(token_delay=args.token_delay).start()
        server = ProductionServer({
            "APP_ENV": "production", "DATABASE_URL": database_url, "SECRET_KEY": SECRET_KEY,
            "SUPABASE_JWT_SECRET": JWT_SECRET, "OPENAI_BASE_URL": fake.base_url, "OPENAI_API_KEY": "soak-key",
            "RATE_LIMITS_ENABLED": "false", "LOG_LEVEL": "WARNING", "WEB_CONCURRENCY": str(args.workers),
            "TRUSTED_PROXIES": "0",  # clients connect directly
        }, Path(tmp) / "server.log", ready_timeout=60)
        try:
            try:
                server.start()
            except RuntimeError as exc:
                print(exc)
                return 1
            return drive(args, duration, warmup, server.port, server.proc.pid, server.log_path)
        finally:
            server.stop()
            fake.stop()
            if pg_server is not None:
                from pgserver._commands import pg_ctl

                pg_ctl(["-w", "-m", "fast", "stop"], pgdata=pg_server.pgdata, user=pg_server.system_user)


def drive(args, duration: float, warmup: float, port: int, server_pid: int, log_path: Path) -> int:
    stats = Stats()
    stop = threading.Event()
    rng = random.Random(args.seed)
    clients = [Client(port, stats, random.Random(rng.random())) for _ in range(args.clients)]

    def loop(client: Client) -> None:
        while not stop.is_set():
            client.step()

    threads = [threading.Thread(target=loop, args=(c,), daemon=True) for c in clients]
    started = time.monotonic()
    for t in threads:
        t.start()
    print(f"{args.clients} clients for {duration:.0f} s (warm-up {warmup:.0f} s), {args.workers} gunicorn workers, port {port}")
    stop.wait(warmup)
    stats.measuring = True
    rss_start = rss_kib(process_tree(server_pid))
    stop.wait(max(0.0, duration - (time.monotonic() - started)))
    rss_end = rss_kib(process_tree(server_pid))
    stop.set()
    for t in threads:
        t.join(90)

    total_errors = sum(stats.errors.values())
    measured = sum(len(v) for v in stats.latencies.values())
    print(f"\nrequests: {sum(stats.counts.values())} ({measured} after the warm-up)  errors: {total_errors} (target 0)")
    print(f"{'operation':<14}{'measured':>9}{'errors':>8}{'p50 ms':>10}{'p99 ms':>10}{'max ms':>10}")
    for op in OPERATIONS:
        values = stats.latencies.get(op, [])
        print(f"{op:<14}{len(values):>9}{stats.errors[op]:>8}{percentile(values, 50) * 1000:>10.1f}"
              f"{percentile(values, 99) * 1000:>10.1f}{max(values, default=float('nan')) * 1000:>10.1f}")
    for sample in stats.samples:
        print("  error:", sample)
    start_total, end_total = sum(rss_start.values()), sum(rss_end.values())
    print(f"\nserver RSS (gunicorn master + {len(rss_start) - 1} workers): after warm-up {start_total / 1024:.1f} MiB, "
          f"at the end {end_total / 1024:.1f} MiB ({(end_total - start_total) / 1024:+.1f} MiB, "
          f"{(end_total / start_total - 1) * 100 if start_total else 0:+.1f}%)")
    for pid in sorted(rss_end):
        print(f"  pid {pid}: {rss_start.get(pid, 0) / 1024:.1f} -> {rss_end[pid] / 1024:.1f} MiB")
    markers = ('"level": "error"', '"level": "critical"', "[ERROR]", "[CRITICAL]", "Traceback")
    problems = [line for line in log_path.read_text().splitlines() if any(m in line for m in markers)]
    print(f"server log: {len(problems)} error lines" + "".join(f"\n  {p[:300]}" for p in problems[:5]))
    return 1 if total_errors or problems else 0


if __name__ == "__main__":
    sys.exit(main())
