"""The benchmark run: `python -m bench [--quick]` (or `make bench [QUICK=1]`).

Builds its own data in a scratch database, starts the servers the way
production does (gunicorn with gunicorn.conf.py), runs the six scenarios,
prints a table and writes bench/results/latest.json (a quick run: quick.json;
a partial one: partial.json). Exits 0 whether or not
targets are met (their rows say meets: false); non-zero only if the harness
itself could not run.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
import traceback
import warnings
from datetime import datetime, timezone
from pathlib import Path

from bench import data, runs, scenarios
from bench.lifecycle import lifecycle
from bench.long_replies import long_replies
from bench.subscribers import subscribers
from bench.common import (
    BUSINESS,
    RESULTS,
    AppServer,
    PeerServer,
    Results,
    Upstream,
    connect,
    ensure_peer_venv,
    machine_info,
    say,
    scratch_database,
    server_url,
)


def fmt(value, unit: str) -> str:
    if isinstance(value, float) and math.isnan(value):
        return "n/a"
    if isinstance(value, int):
        return f"{value:,} {unit}".strip()
    return f"{value:,.2f} {unit}".strip()


def markdown(results: Results, machine: dict, meta: dict) -> str:
    lines = [
        f"Run {meta['finished_at']} ({'QUICK sizes' if results.quick else 'full sizes'}, {meta['duration_s']:.0f} s) "
        f"on {machine['cpu']}, {machine['cores']} cores, {machine['memory_gib']} GiB, {machine['os']}, "
        f"Python {machine['python']}, PostgreSQL {machine['postgres']} ({meta['database']}).",
        "",
        "| Measure | Value | Target | Meets |",
        "|---|---|---|---|",
    ]
    for row in results.rows:
        lines.append(f"| {row['name']} | {fmt(row['value'], row['unit'])} | {row['target']} | "
                     f"{'yes' if row['meets'] else '**no**'} |")
    return "\n".join(lines)


def context_table(results: Results) -> str:
    """The numbers behind the targets, side by side with their references."""
    d = results.details
    lines = ["Rows per session are checkpoints/checkpoint_blobs/checkpoint_writes.", "",
             "| Scenario | Ours | Reference | |", "|---|---|---|---|"]
    for key, res in d.get("delete", {}).get("sessions", {}).items():
        rows = "/".join(str(v) for v in res["rows_per_session"].values())
        for side in ("loaded", "empty"):
            r = res.get(side)
            if not r:
                continue
            where = (f"{d['delete']['other_checkpoint_rows']:,} other checkpoint rows" if side == "loaded"
                     else "no other sessions")
            lines.append(f"| delete {key} turns ({rows} rows), {where} | server p50 {r['server_ms']['p50']:.2f} / "
                         f"p95 {r['server_ms']['p95']:.2f} ms | floor p50 {r['floor_ms']['p50']:.2f} / p95 "
                         f"{r['floor_ms']['p95']:.2f} ms | x{r['ratio_p50']:.2f} / x{r['ratio_p95']:.2f} |")
    for name, r in d.get("listing", {}).get("cases", {}).items():
        lines.append(f"| list {name} | server p50 {r['server_ms']['p50']:.2f} / p95 {r['server_ms']['p95']:.2f} ms | "
                     f"raw SQL p50 {r['floor_ms']['p50']:.2f} / p95 {r['floor_ms']['p95']:.2f} ms | x{r['ratio_p50']:.2f} |")
    runs = d.get("crud", {}).get("runs", {})
    for c in (1, 32):
        o, p = runs.get(f"ours c={c}"), runs.get(f"peer c={c}")
        if o:
            ref = (f"peer {p['rps']:.0f} req/s, p50 {p['p50_ms']:.2f} / p99 {p['p99_ms']:.2f} ms" if p else "peer not run")
            ratio = f"x{o['rps'] / p['rps']:.2f}" if p else ""
            lines.append(f"| CRUD mix c={c} | {o['rps']:.0f} req/s, p50 {o['p50_ms']:.2f} / p99 {o['p99_ms']:.2f} ms | "
                         f"{ref} | {ratio} |")
    lat = d.get("streaming", {}).get("latency")
    hist = d.get("streaming", {}).get("latency_with_history")
    if lat:
        lines.append(f"| stream TTFT ({lat['tokens']} tokens / {lat['interval_ms']} ms) | p50 {lat['ours_ttft_ms']['p50']:.2f} / "
                     f"p99 {lat['ours_ttft_ms']['p99']:.2f} ms | upstream p50 {lat['direct_ttft_ms']['p50']:.2f} / p99 "
                     f"{lat['direct_ttft_ms']['p99']:.2f} ms | added p50 {lat['added_ttft_p50_ms']:.2f} / p99 "
                     f"{lat['added_ttft_p99_ms']:.2f} ms |")
        lines.append(f"| of which: backend work before the model is called | p50 {lat['backend_before_model_ms']['p50']:.2f} / "
                     f"p99 {lat['backend_before_model_ms']['p99']:.2f} ms | client to upstream, direct: p50 "
                     f"{lat['client_to_upstream_ms']['p50']:.2f} ms | |")
        lines.append(f"| stream total time | p50 {lat['ours_total_ms']['p50']:.1f} / p99 {lat['ours_total_ms']['p99']:.1f} ms | "
                     f"upstream p50 {lat['direct_total_ms']['p50']:.1f} / p99 {lat['direct_total_ms']['p99']:.1f} ms | "
                     f"added p50 {lat['added_total_p50_ms']:.1f} / p99 {lat['added_total_p99_ms']:.1f} ms |")
    if hist:
        lines.append(f"| stream TTFT, {hist['history_turns']}-turn session ({hist['messages_sent']} messages sent) | "
                     f"p50 {hist['ours_ttft_ms']['p50']:.2f} / p99 {hist['ours_ttft_ms']['p99']:.2f} ms | upstream p50 "
                     f"{hist['direct_ttft_ms']['p50']:.2f} / p99 {hist['direct_ttft_ms']['p99']:.2f} ms | added p50 "
                     f"{hist['added_ttft_p50_ms']:.2f} / p99 {hist['added_ttft_p99_ms']:.2f} ms |")
    for key, r in d.get("streaming", {}).items():
        if key.startswith("concurrent_"):
            lines.append(f"| {r['streams']} streams at once ({r['tokens']} tokens / {r['interval_ms']} ms) | "
                         f"{r['completed']} done, {r['errors']} errors, {r['wall_s']} s; TTFT p50 {r['ttft_ms']['p50']:.0f} / "
                         f"p99 {r['ttft_ms']['p99']:.0f} ms; RSS {r['rss_rest_mb']} -> {r['rss_peak_mb']} MB | "
                         f"upstream alone: {r['direct']['completed']} done in {r['direct']['wall_s']} s | |")
    for key, r in d.get("subscribers", {}).items():
        if "floor_rss_per_stream_kb" in r:
            lines.append(f"| {r['streams']} idle event streams | RSS +{r['rss_per_stream_kb']} KB per stream | "
                         f"a bare gevent stream, same command: +{r['floor_rss_per_stream_kb']} KB "
                         f"({r['floor_streams']} streams, one worker) | |")
    cnt = d.get("counting", {}).get("result")
    if cnt:
        lines.append(f"| counting {cnt['writers']} x {cnt['increments_each']} | {cnt['final_count']:,} counted, "
                     f"{cnt['lost']} lost, {cnt['increments_per_s']:.0f} increments/s | expected {cnt['expected']:,} | |")
    for mode in ("latest", "full"):
        g = d.get("growth", {}).get(mode)
        if g:
            lines.append(f"| growth {g['turns']} turns, CHECKPOINT_HISTORY={mode} | database +{g['database_bytes_delta'] / 1e6:.2f} MB, "
                         f"live rows {g['live_bytes'] / 1e6:.3f} MB ({'/'.join(str(v) for v in g['rows_at_end'].values())} rows) | bytes/turn first tenth "
                         f"{g['bytes_per_turn_first_tenth']:,}, last tenth {g['bytes_per_turn_last_tenth']:,} | "
                         f"turn time (server) p50 {g['turn_ms_p50_first']:.0f} ms first 5%, {g['turn_ms_p50_last']:.0f} ms last 5% |")
    return "\n".join(lines)


SCENARIOS = ("growth", "counting", "delete", "listing", "crud", "streaming", "long_replies", "lifecycle",
             "subscribers", "rejoin", "readers")


def run(quick: bool, only: set[str] | None = None) -> int:
    only = set(only or SCENARIOS)
    started = time.time()
    sizes = scenarios.Sizes(quick)
    results = Results(quick)
    url, description = server_url()
    with connect(url) as conn:
        pg_version = conn.execute("show server_version").fetchone()["server_version"]
    machine = machine_info(pg_version)
    say(f"{'QUICK' if quick else 'FULL'} run on {machine['cpu']} x{machine['cores']}, PostgreSQL {pg_version} "
        f"({description})")
    workdir = Path(tempfile.mkdtemp(prefix="bench-"))
    say(f"logs in {workdir}")
    peer_exe, peer_note = ensure_peer_venv()
    if peer_exe is None:
        say(peer_note)
    results.detail("peer", "install", peer_note)
    servers: list = []
    app_servers: list[AppServer] = []
    try:
        with scratch_database(url, f"bench_run_{os.getpid()}") as db:
            upstream = Upstream(workdir).start()
            servers.append(upstream)

            def start_server(name: str, env: dict[str, str], database: str | None = None) -> AppServer:
                server = AppServer(name, database or db, upstream.base_url, env, workdir).start()
                servers.append(server)
                app_servers.append(server)
                return server

            def settle(before: str) -> None:
                """A timed scenario starts on a quiet database (see data.settle)."""
                info = data.settle(db)
                results.detail("settle", before, info)
                say(f"database settled before {before} in {info['quiet_after_s']}s"
                    f"{' (autovacuum was running)' if info['autovacuum_running'] else ''}")

            # 6. Growth, which also makes the real sessions that deletes and streams copy.
            templates: dict[tuple[str, int], str] = {}
            if only & {"growth", "delete", "lifecycle"}:
                full = start_server("full", {"CHECKPOINT_HISTORY": "full"})
                templates.update({("full", k): v for k, v in scenarios.build_sessions(full, db, "full", sizes, results).items()})
                full.stop()
            latest = start_server("latest", {"CHECKPOINT_HISTORY": "latest"})
            if only & {"growth", "delete", "streaming", "lifecycle"}:
                templates.update({("latest", k): v
                                  for k, v in scenarios.build_sessions(latest, db, "latest", sizes, results).items()})
            if "growth" in only:
                scenarios.growth_targets(results, sizes)

            # 5. Message counting (before the big data: it only needs one row).
            if "counting" in only:
                scenarios.counting(db, sizes, results)

            # 1. Delete, with >= 1,000,000 other checkpoint rows (and, side by side, with almost none).
            list_user = "list-user"
            if only & {"delete", "listing"}:
                with connect(db) as conn:
                    if "delete" in only:
                        template_rows = data.thread_rows(conn, templates[("full", sizes.turns[0])])
                        copies = -(-sizes.background_checkpoints // max(1, template_rows["checkpoints"]))
                        t = time.perf_counter()
                        counts = data.load_background_threads(conn, templates[("full", sizes.turns[0])], copies)
                        say(f"background: {copies:,} sessions of {sizes.turns[0]} turns (full history) copied in "
                            f"{time.perf_counter() - t:.0f}s -> {counts}")
                    t = time.perf_counter()
                    data.load_listing_sessions(conn, list_user, BUSINESS, sizes.list_per_user, sizes.list_others)
                    data.vacuum_analyze(db)
                    counts = data.table_rows(conn)
                    say(f"listing sessions loaded and vacuumed in {time.perf_counter() - t:.0f}s -> {counts}; database "
                        f"{data.database_bytes(conn) / 2**30:.2f} GiB")
                results.detail("data", "rows", counts)
            if "delete" in only:
                settle("delete")
                # A second database with nothing but the same real sessions, and a server of its own,
                # so "flat in the size of the other data" is measured side by side, not one phase after another.
                with scratch_database(url, f"bench_run_{os.getpid()}_empty") as empty_db:
                    empty = start_server("empty", {"CHECKPOINT_HISTORY": "latest"}, empty_db)
                    empty_templates = [t for k, t in templates.items() if k != ("full", sizes.turns[-1])]
                    scenarios.copy_threads(db, empty_db, empty_templates)
                    data.vacuum_analyze(empty_db)
                    out = scenarios.delete_scenario([scenarios.DeleteSide("loaded", latest, db),
                                                     scenarios.DeleteSide("empty", empty, empty_db)], templates, sizes)
                    empty.stop()
                results.detail("delete", "sessions", out)
                results.detail("delete", "other_checkpoint_rows", counts["checkpoints"])
                scenarios.delete_targets(results, out, "loaded", "empty", counts["checkpoints"])

            # 8. Lifecycle: delete with a recovery point, restore, bulk delete.
            if "lifecycle" in only:
                settle("lifecycle")
                lifecycle(latest, db, templates, sizes, results)

            # 2. Listing.
            if "listing" in only:
                settle("listing")
                scenarios.listing(latest, db, sizes, results, list_user)

            # 3. CRUD, ours and the peer side by side.
            if "crud" in only:
                settle("crud")
                peer = None
                if peer_exe is not None:
                    try:
                        peer = PeerServer(peer_exe, workdir).start()
                        servers.append(peer)
                    except RuntimeError as exc:
                        say(f"peer could not start: {exc}")
                        results.detail("peer", "error", str(exc)[-2000:])
                scenarios.crud(latest, peer, sizes, results)
                if peer:
                    peer.stop()
            latest.stop()

            # 4. Streaming and 7. long replies, on the production defaults (nothing sized to the test);
            # long replies with rate limits and upkeep as shipped, every stream its own user.
            if "streaming" in only:  # one user sends every turn here: rate limits off, as for CRUD
                settle("streaming")
                streams = start_server("streams", {})
                scenarios.streaming(streams, upstream, db, sizes, results, templates)
                streams.stop()
            if "long_replies" in only:
                settle("long_replies")
                production = start_server("production", {"RATE_LIMITS_ENABLED": "true", "MAINTENANCE_INTERVAL_SECONDS": "60"})
                long_replies(production, upstream, db, sizes, results)
                production.stop()
            # 10. Runs: clients that drop and rejoin (half on another host), and one run with many readers.
            if only & {"rejoin", "readers"}:
                settle("runs")
                production_env = {"RATE_LIMITS_ENABLED": "true", "MAINTENANCE_INTERVAL_SECONDS": "60"}
                first = start_server("runs", production_env)
                second = start_server("runs-second-host", production_env)
                if "rejoin" in only:
                    runs.rejoin(first, second, db, 50 if quick else 200, results)
                if "readers" in only:
                    runs.readers(first, second, db, 50, results)
                second.stop()
                first.stop()
            # 9. Idle event streams by the thousand, on a fresh production server.
            if "subscribers" in only:
                settle("subscribers")
                production = start_server("subscribers", {"RATE_LIMITS_ENABLED": "true",
                                                          "MAINTENANCE_INTERVAL_SECONDS": "60"})
                subscribers(production, db, sizes, results)
                production.stop()
            for server in app_servers:
                errors = server.errors_logged()
                if errors:
                    results.detail("server_errors", server.name, errors[:20])
                    say(f"server {server.name} logged {len(errors)} errors, e.g. {errors[0][:300]}")
    finally:
        for server in reversed(servers):
            try:
                server.stop()
            except Exception:  # noqa: BLE001
                traceback.print_exc()
    finished = time.time()
    meta = {"finished_at": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "duration_s": finished - started,
            "database": description}
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = {"quick": quick, "scenarios": sorted(only), "machine": machine, **meta, "results": results.rows, "details": results.details}
    # Only a complete full-size run replaces the committed results (the ones the
    # README quotes); a quick or partial run writes a file of its own (not committed).
    name = "quick.json" if quick else "latest.json" if only == set(SCENARIOS) else "partial.json"
    (RESULTS / name).write_text(json.dumps(out, indent=2, default=str))
    print()
    print(markdown(results, machine, meta))
    print()
    print(context_table(results))
    print()
    missed = [r["name"] for r in results.rows if not r["meets"]]
    print(f"{len(results.rows) - len(missed)} of {len(results.rows)} targets met; results in bench/results/{name}")
    say(f"logs kept in {workdir}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, under 3 minutes")
    parser.add_argument("--only", default="", help=f"comma-separated subset of {','.join(SCENARIOS)}")
    args = parser.parse_args(argv)
    only = {s.strip() for s in args.only.split(",") if s.strip()}
    if only - set(SCENARIOS):
        parser.error(f"unknown scenarios: {', '.join(sorted(only - set(SCENARIOS)))}")
    warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR")  # pgserver's lock file falls back to /tmp
    try:
        return run(args.quick, only)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
