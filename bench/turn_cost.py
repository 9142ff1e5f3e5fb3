"""What one chat turn costs: the server's and PostgreSQL's CPU per turn, and its time to first token.

    python -m bench.turn_cost [--turns 200] [--root DIR]

Turns one after another, each in a session of its own (named, so no naming
call), on the production command (`make serve`'s, with its shipped defaults),
against the fake upstream sending the reply at once: 1 token, then 40 tokens.
CPU is read from /proc for the server's processes and PostgreSQL's, over all
the turns of a size. Back to back, the machine never idles between turns, so
the numbers are what the turns cost, not what waking an idle machine costs.
The same requests sent straight to the upstream, back to back, are the
reference for the time to first token ("added" is ours minus theirs, p50).

`--root` runs another checkout's code under the same client, upstream and
database server (`git worktree add /tmp/before <commit>`, then run this from
both), so a change is measured side by side with the code before it.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
import warnings
from pathlib import Path

from bench.common import (
    AppServer,
    Upstream,
    add_root_argument,
    checkout_of,
    cpu_by_pid,
    cpu_delta,
    new_user,
    postgres_pids,
    scratch_database,
    server_url,
    stats,
)
from bench.scenarios import _stream_direct, _stream_ours, chat_query, precreate_sessions

WARM_UP = 20


async def _turns(port: int, user: str, sids: list[str], tokens: int) -> list[dict]:
    return [await _stream_ours(port, user, sid, chat_query(0, tokens, 0, f"t{i}"), 60) for i, sid in enumerate(sids)]


async def _direct(port: int, n: int, tokens: int) -> list[dict]:
    return [await _stream_direct(port, chat_query(0, tokens, 0, f"d{i}"), 60) for i in range(n)]


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.turn_cost", description=__doc__.split("\n\n")[0])
    parser.add_argument("--turns", type=int, default=200, help="turns per reply size (after a warm-up)")
    add_root_argument(parser)
    args = parser.parse_args()
    warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR")
    root = checkout_of(args.root)
    workdir = Path(tempfile.mkdtemp(prefix="bench-turn-cost-"))
    url, _ = server_url()
    with scratch_database(url, f"bench_turn_cost_{os.getpid()}") as db:
        upstream = Upstream(workdir).start()
        server = AppServer("turn-cost", db, upstream.base_url, {}, workdir, root=root).start()
        try:
            user = new_user()
            for tokens in (1, 40):
                sids = precreate_sessions(db, user, f"cost{tokens}-{time.monotonic_ns()}", WARM_UP + args.turns)
                asyncio.run(_turns(server.port, user, sids[:WARM_UP], tokens))
                server_cpu, db_cpu = cpu_by_pid(server.pids()), cpu_by_pid(postgres_pids())
                out = asyncio.run(_turns(server.port, user, sids[WARM_UP:], tokens))
                server_ms = cpu_delta(server_cpu, cpu_by_pid(server.pids())) / len(out) * 1000
                db_ms = cpu_delta(db_cpu, cpu_by_pid(postgres_pids())) / len(out) * 1000
                ok = [o for o in out if o["ok"]]
                ttft = stats([o["ttft_ms"] for o in ok])
                alone = stats([d["ttft_ms"] for d in asyncio.run(_direct(upstream.port, len(out), tokens)) if d["ok"]])
                print(f"{tokens:>2} token(s): server CPU {server_ms:.2f} ms/turn, PostgreSQL {db_ms:.2f} ms/turn; "
                      f"first token p50 {ttft['p50']:.2f} / p99 {ttft['p99']:.2f} ms (upstream alone p50 "
                      f"{alone['p50']:.2f}: added {ttft['p50'] - alone['p50']:.2f}); {len(ok)} of {len(out)} ok")
        finally:
            server.stop()
            upstream.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
