"""Profile one scenario with py-spy: where a request's time goes, inside a gunicorn worker.

    .venv/bin/pip install py-spy        # not a project dependency
    python -m bench.profile crud   [--seconds 15] [--idle]
    python -m bench.profile delete
    python -m bench.profile stream [--idle]

Starts a scratch database, the fake upstream and one gunicorn worker (so one
process holds every request), drives the scenario in a loop at concurrency 1,
records the worker with `py-spy record --format raw` (with --idle: wall time,
waits included, which is what latency is made of) and prints the heaviest
frames, inclusive, as a share of the samples of request-serving threads.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

from bench import data, scenarios
from bench.aioclient import Connection
from bench.common import (
    BUSINESS,
    AppServer,
    Upstream,
    connect,
    new_user,
    say,
    scratch_database,
    server_url,
    thread_id,
)


async def drive(kind: str, server: AppServer, db: str, seconds: float, templates: dict) -> int:
    user = new_user()
    conn = Connection("127.0.0.1", server.port, scenarios.auth(user))
    stop_at = time.perf_counter() + seconds
    n = 0
    with connect(db) as sql:
        while time.perf_counter() < stop_at:
            if kind == "crud":
                r = await conn.request("POST", "/api/llm/sessions", body={"session_name": "x"})
                sid = r.json()["session_id"]
                await conn.request("GET", f"/api/llm/sessions/{sid}")
                await conn.request("PUT", f"/api/llm/sessions/{sid}", body={"session_name": "y"})
                await conn.request("DELETE", f"/api/llm/sessions/{sid}")
            elif kind == "delete":
                sid = f"p-{n}"
                data.clone_thread(sql, templates[10], user, sid, thread_id(user, sid), BUSINESS)
                await conn.request("DELETE", f"/api/llm/sessions/{sid}")
            elif kind == "list":
                await conn.request("GET", "/api/llm/sessions?limit=50")
            elif kind == "stream":
                sid = f"s-{n}"
                await conn.request("POST", "/api/llm/sessions", body={"session_id": sid, "session_name": "x"})
                r = await conn.request("POST", scenarios.STREAM_PATH,
                                       body={"session_id": sid, "query": scenarios.chat_query(n, 1, 0)})
            n += 1
    await conn.close()
    return n


def summarize(raw: Path, top: int, skip_idle_threads: bool) -> str:
    inclusive: collections.Counter = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        frames = stack.split(";")
        # Threads that only wait for work (gunicorn's poller, pool and lease threads) are not requests.
        if skip_idle_threads and not any(("wsgi" in f or "_run_turn" in f or "handle_request" in f) for f in frames):
            continue
        c = int(count)
        total += c
        for f in set(frames):
            inclusive[f] += c
    lines = [f"{total} samples of request threads; inclusive share:"]
    for frame, c in inclusive.most_common(top):
        lines.append(f"{100 * c / total:6.1f}%  {frame}")
    return "\n".join(lines)


def main() -> int:
    warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR")
    parser = argparse.ArgumentParser()
    parser.add_argument("scenario", choices=["crud", "delete", "list", "stream"])
    parser.add_argument("--seconds", type=float, default=15)
    parser.add_argument("--idle", action="store_true", help="wall time: include samples of waiting threads")
    parser.add_argument("--rate", type=int, default=500)
    parser.add_argument("--top", type=int, default=60)
    parser.add_argument("--history", default="latest")
    args = parser.parse_args()
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(spy).exists():
        print("py-spy is not installed: .venv/bin/pip install py-spy", file=sys.stderr)
        return 2
    workdir = Path(tempfile.mkdtemp(prefix="bench-profile-"))
    url, _ = server_url()
    with scratch_database(url, "bench_profile") as db:
        upstream = Upstream(workdir).start()
        server = AppServer("profile", db, upstream.base_url, {"WEB_CONCURRENCY": "1",
                                                              "CHECKPOINT_HISTORY": args.history}, workdir).start()
        try:
            templates = {}
            if args.scenario == "delete":
                sizes = scenarios.Sizes(True)
                sizes.turns = (10,)
                templates = scenarios.build_sessions(server, db, "latest", sizes, scenarios.Results(True))
            if args.scenario == "list":
                with connect(db) as conn:
                    data.load_listing_sessions(conn, "list-user", BUSINESS, 2000, 10000)
            asyncio.run(drive(args.scenario, server, db, 2, templates))  # warm up
            worker = next(p for p in server.pids() if p != server.proc.pid)
            out = workdir / "profile.raw"
            cmd = [spy, "record", "--format", "raw", "-o", str(out), "-p", str(worker), "-r", str(args.rate),
                   "-d", str(int(args.seconds)), "--nonblocking"] + (["--idle"] if args.idle else [])
            proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            time.sleep(1)
            n = asyncio.run(drive(args.scenario, server, db, args.seconds - 1.5, templates))
            proc.wait(60)
            say(f"{n} iterations of {args.scenario}; raw profile in {out}")
            print(summarize(out, args.top, True))
        finally:
            server.stop()
            upstream.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
