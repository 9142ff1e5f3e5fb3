"""What a rate-limited request costs once the limiter remembers many users.

    python -m bench.limiter_cost [--users 3000] [--seconds 6] [--rate 100] [--root DIR]

The production command with its shipped defaults, rate limits on (counters in
memory, per worker). First no other users, then `--users` users who each
created a session (each leaves its counters for the limits' whole window: an
hour for session writes). Each time, a steady stream of session writes from 50
other users at `--rate` per second for `--seconds`: the server's CPU per
request (from /proc, all its processes) and the client's latency. Without other
users the two should match; a limiter whose upkeep grows with the users it
remembers shows here, not in the CRUD scenario (its rate limits are off).

`--root` runs another checkout's code under the same client and database server
(`git worktree add /tmp/before <commit>`), for a side-by-side.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
import warnings
from pathlib import Path

from bench import scenarios
from bench.aioclient import Connection
from bench.common import (
    AppServer,
    Upstream,
    add_root_argument,
    checkout_of,
    cpu_by_pid,
    cpu_delta,
    new_user,
    scratch_database,
    server_url,
    stats,
)

HOST = "127.0.0.1"


async def _remembered_users(port: int, n: int) -> None:
    """n users, each with one session written (so the limiter keeps counters for each)."""
    slots = asyncio.Semaphore(32)

    async def one() -> None:
        async with slots:
            conn = Connection(HOST, port, scenarios.auth(new_user()))
            try:
                r = await conn.request("POST", "/api/llm/sessions", body={"session_name": "x"})
                assert r.status == 201, r.status
            finally:
                await conn.close()

    await asyncio.gather(*(one() for _ in range(n)))


async def _steady_writes(port: int, seconds: float, rate: float) -> list[float]:
    """Session writes from 50 users, one every 1/rate s; each request's time in ms."""
    conns = [Connection(HOST, port, scenarios.auth(new_user())) for _ in range(50)]
    times: list[float] = []
    started = time.perf_counter()
    try:
        while time.perf_counter() - started < seconds:
            t = time.perf_counter()
            r = await conns[len(times) % len(conns)].request("POST", "/api/llm/sessions", body={"session_name": "y"})
            assert r.status == 201, r.status
            times.append((time.perf_counter() - t) * 1000)
            await asyncio.sleep(max(0.0, started + len(times) / rate - time.perf_counter()))
    finally:
        for conn in conns:
            await conn.close()
    return times


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.limiter_cost", description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=3000, help="users the limiter remembers in the second run")
    parser.add_argument("--seconds", type=float, default=6)
    parser.add_argument("--rate", type=float, default=100, help="session writes per second")
    add_root_argument(parser)
    args = parser.parse_args()
    warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR")
    root = checkout_of(args.root)
    workdir = Path(tempfile.mkdtemp(prefix="bench-limiter-cost-"))
    url, _ = server_url()
    with scratch_database(url, f"bench_limiter_cost_{os.getpid()}") as db:
        upstream = Upstream(workdir).start()  # unused by session writes; the server wants a model
        try:
            for users in (0, args.users):
                server = AppServer(f"limiter-{users}", db, upstream.base_url, {"RATE_LIMITS_ENABLED": "true"},
                                   workdir, root=root).start()
                try:
                    asyncio.run(_remembered_users(server.port, users))
                    before = cpu_by_pid(server.pids())
                    times = asyncio.run(_steady_writes(server.port, args.seconds, args.rate))
                    cpu_ms = cpu_delta(before, cpu_by_pid(server.pids())) / len(times) * 1000
                finally:
                    server.stop()
                latency = stats(times)
                print(f"{users:>6} other users: server CPU {cpu_ms:.2f} ms per session write; "
                      f"{len(times) / args.seconds:.0f} writes/s; request p50 {latency['p50']:.2f} / "
                      f"p99 {latency['p99']:.2f} ms")
        finally:
            upstream.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
