"""Where a chat turn's time to first token goes, step by step (a diagnostic, not a benchmark).

    python -m bench.ttft_breakdown [--turns 40] [--history latest|full] [--prior-turns 0]

Builds the app in this process (create_app, the real services, pool and graph)
against a scratch database and the fake upstream, wraps a few of the app's
methods with timers (in this process only; no backend file changes), and runs
turns the way the SSE route does: start_turn(), then read chat.stream(turn)
until the first token. Prints the median time at which each step starts and
ends, relative to the request arriving, and the share of the time to first
token before the model is called.
"""

from __future__ import annotations

import argparse
import collections
import functools
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path

from backend.services import services_of
from bench.common import (
    BUSINESS,
    JWT_SECRET,
    SECRET_KEY,
    Upstream,
    new_user,
    scratch_database,
    server_url,
)
from bench.scenarios import chat_query, precreate_sessions

_marks: list[tuple[str, float, float]] = []
_lock = threading.Lock()


def timed(label: str, fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            with _lock:
                _marks.append((label, start, time.perf_counter()))
    return wrapper


def main() -> int:
    warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR")
    parser = argparse.ArgumentParser()
    parser.add_argument("--turns", type=int, default=40)
    parser.add_argument("--history", default="latest")
    parser.add_argument("--prior-turns", type=int, default=0, help="history each session has before the timed turn")
    parser.add_argument("--durability", choices=["sync", "async", "exit"], default=None,
                        help="what-if: pass this durability to graph.stream (LangGraph's default is async)")
    args = parser.parse_args()

    from backend import create_app
    from backend.auth.service import AuthUser
    from backend.config import Settings

    workdir = Path(tempfile.mkdtemp(prefix="bench-ttft-"))
    url, _ = server_url()
    with scratch_database(url, "bench_ttft") as db:
        upstream = Upstream(workdir).start()
        settings = Settings(
            _env_file=None, app_env="test", database_url=db, secret_key=SECRET_KEY, supabase_jwt_secret=JWT_SECRET,
            openai_base_url=upstream.base_url, openai_api_key="k", openai_model="bench-model",
            naming_model="bench-naming", maintenance_interval_seconds=0, log_level="WARNING",
            checkpoint_history=args.history,
        )
        app = create_app(settings)
        state = services_of(app)
        chat = state.chat
        sessions = state.sessions
        for name in ("get_or_create", "create"):
            if hasattr(sessions, name):
                setattr(sessions, name, timed(f"sessions.{name}", getattr(sessions, name)))
        state.leases.start_in_session = timed("leases.start_in_session (session and lease)", state.leases.start_in_session)
        state.leases.track = timed("leases.track", state.leases.track)
        cp = chat._graph.checkpointer
        for name in ("get_tuple", "put", "put_writes"):
            setattr(cp, name, timed(f"checkpointer.{name}", getattr(cp, name)))
        model = chat._model
        # A turn's calls go through stream_metered (llm/usage.py's MeteredModel) when the model has it.
        metered = hasattr(model, "stream_metered")
        original_stream = model.stream_metered if metered else model.stream

        def model_stream(messages, cancel, **kwargs):
            with _lock:
                _marks.append(("model.stream called", time.perf_counter(), time.perf_counter()))
            first = True
            for piece in original_stream(messages, cancel, **kwargs):
                if first:
                    with _lock:
                        _marks.append(("model: first token back from upstream", time.perf_counter(), time.perf_counter()))
                    first = False
                yield piece

        if metered:
            model.stream_metered = model_stream
        else:
            model.stream = model_stream
        if args.durability:  # a what-if for the diagnostic only: the graph's stream() with another durability
            graph_stream = chat._graph.stream
            chat._graph.stream = functools.partial(graph_stream, durability=args.durability)
        user = AuthUser(id=new_user(), business_id=BUSINESS, email=None, via="token")
        sids = precreate_sessions(db, user.id, "ttft", args.turns + 5)
        rows = collections.defaultdict(list)
        for i, sid in enumerate(sids):
            for k in range(args.prior_turns):  # history, untimed
                turn = chat.start_turn(user, sid, chat_query(k, 12, 0))
                for _ in chat.stream(turn):
                    pass
                time.sleep(0.01)
            with _lock:
                _marks.clear()
            tag = f"t{i}"
            t0, wall0 = time.perf_counter(), time.time()
            turn = chat.start_turn(user, sid, chat_query(0, 20, 20, tag))
            t_started = time.perf_counter()
            for chunk in chat.stream(turn):
                if b"event: token" in chunk:
                    break
            t_first = time.perf_counter()
            for _ in chat.stream(turn):
                pass
            time.sleep(0.05)  # let the turn's last writes land before the next one
            if i < 5:
                continue  # warm-up
            with _lock:
                marks = list(_marks)
            rows["start_turn() returns (response can start)"].append(((t_started - t0) * 1000, None))
            rows["first token yielded by chat.stream()"].append(((t_first - t0) * 1000, None))
            arrived = upstream.arrivals().get(tag)
            if arrived:
                rows["upstream receives the chat request"].append(((arrived - wall0) * 1000, None))
            seen = collections.Counter()
            for label, s, e in marks:
                if s - t0 > (t_first - t0) + 0.001:
                    continue  # after the first token: not part of TTFT
                seen[label] += 1
                rows[f"{label} #{seen[label]}"].append(((s - t0) * 1000, (e - t0) * 1000))
        state.close()
        upstream.stop()

    def median(v):
        v = sorted(v)
        return v[len(v) // 2] if v else float("nan")

    print(f"{args.turns} turns, CHECKPOINT_HISTORY={args.history}, durability={args.durability or 'default'}, "
          f"{args.prior_turns} prior turns each; "
          "median ms from the request arriving:")
    order = sorted(rows.items(), key=lambda kv: median([a for a, _ in kv[1]]))
    for label, values in order:
        starts = [a for a, _ in values]
        ends = [b for _, b in values if b is not None]
        span = f"-> {median(ends):7.2f}  ({median([b - a for a, b in values if b is not None]):5.2f} ms)" if ends else ""
        print(f"  {median(starts):7.2f} {span:24s} {label}  [n={len(values)}]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
