"""The diagnostic tools in bench/ still run against the code they diagnose (one broke unnoticed once).

The benchmarks themselves are scripts that report numbers (`make bench`), never tests; here only
that a tool starts, drives a few turns through the real chat service and prints its table."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_first_token_breakdown_runs_and_reports_each_step(server_url):
    env = {**os.environ, "BENCH_DATABASE_URL": server_url}
    out = subprocess.run([sys.executable, "-m", "bench.ttft_breakdown", "--turns", "3"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr[-3000:]
    for step in ("leases.start_in_session", "checkpointer.get_tuple", "model.stream called",
                 "first token yielded by chat.stream()"):
        assert step in out.stdout, out.stdout


def test_the_turn_cost_tool_runs_the_production_server_and_reports_each_size(server_url):
    env = {**os.environ, "BENCH_DATABASE_URL": server_url}
    out = subprocess.run([sys.executable, "-m", "bench.turn_cost", "--turns", "3"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"code: {ROOT}" in out.stdout, out.stdout
    for size in (" 1 token(s): server CPU ", "40 token(s): server CPU "):
        line = next(line for line in out.stdout.splitlines() if line.startswith(size))
        assert "upstream alone" in line and line.endswith("3 of 3 ok"), line


def test_the_limiter_cost_tool_runs_with_and_without_remembered_users(server_url):
    env = {**os.environ, "BENCH_DATABASE_URL": server_url}
    out = subprocess.run([sys.executable, "-m", "bench.limiter_cost", "--users", "20", "--seconds", "1", "--rate", "20"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = [line for line in out.stdout.splitlines() if "other users: server CPU" in line]
    assert [line.split()[0] for line in lines] == ["0", "20"], out.stdout
    assert all("writes/s; request p50" in line for line in lines), lines


def test_the_upkeep_cost_tool_times_each_step_against_the_full_comparison(server_url):
    env = {**os.environ, "BENCH_DATABASE_URL": server_url}
    out = subprocess.run([sys.executable, "-m", "bench.upkeep_cost", "--sessions", "300", "--orphans", "5"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "300 sessions, 5 orphaned" in out.stdout, out.stdout
    for step in ("reconcile_runs", "name_unnamed", "purge_expired_recovery_points", "retention: one look for due",
                 "apply_retention (upkeep's step)", "orphan search ", "orphan search, full comparison"):
        assert sum(line.startswith(f"pass 2: {step}") for line in out.stdout.splitlines()) == 1, (step, out.stdout)


def test_the_runs_tool_rejoins_and_reads_one_run_many_times(server_url):
    env = {**os.environ, "BENCH_DATABASE_URL": server_url}
    out = subprocess.run([sys.executable, "-m", "bench.runs", "--only", "rejoin,readers", "--rejoins", "4",
                          "--readers", "4"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    rows = {row["name"]: row for row in json.loads(out.stdout[out.stdout.index("{"):])["rows"]}
    assert rows["rejoin x4: characters lost or doubled"]["value"] == 0, out.stderr[-3000:]
    assert rows["one run, 4 readers: complete"]["value"] == 4


def test_the_usage_cost_tool_compares_turns_and_times_the_usage_reads(server_url):
    env = {**os.environ, "BENCH_DATABASE_URL": server_url}
    out = subprocess.run([sys.executable, "-m", "bench.usage_cost", "--before", str(ROOT), "--turns", "3",
                          "--rounds", "1", "--ledger", "500"], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    for name in ("before", "usage", "usage+quota"):
        assert f"round 1 {name:>12}: server " in out.stdout and "(3 of 3 ok)" in out.stdout, out.stdout
    assert "quota check (user day + month, business month): p50" in out.stdout, out.stdout
    for group_by in ("day", "model", "session"):
        assert f"GET /api/llm/usage?group_by={group_by} over a year (500 turns): p50" in out.stdout, out.stdout


def test_the_usage_cost_tool_measures_the_quota_check_in_the_database(server_url):
    env = {**os.environ, "BENCH_DATABASE_URL": server_url}
    out = subprocess.run([sys.executable, "-m", "bench.usage_cost", "--quota-check", "--turns", "3", "--rounds", "1",
                          "--business-users", "3"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    for name in ("none", "quota 024", "quota 026", "quota+business 024", "quota+business 026"):
        assert f"  {name:>20}: " in out.stdout and "ms of backend CPU per turn" in out.stdout, out.stdout


def _branches(server_url, *args: str) -> dict:
    env = {**os.environ, "BENCH_DATABASE_URL": server_url}
    out = subprocess.run([sys.executable, "-m", "bench.branches", *args], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout[out.stdout.index("\n{") + 1:])


def test_the_branches_tool_measures_what_a_branch_stores(server_url):
    report = _branches(server_url, "--only", "storage", "--turns", "4", "--edits", "2", "--edit-at", "2")
    for mode in ("latest", "full"):
        sessions = report["details"]["storage"][mode]
        assert list(sessions) == ["linear 4", "linear 6", "4 + 2 edits at 2"], sessions.keys()
        # Every message of every branch has its row: the branched session stores as many as the longer one.
        assert [s["chat_messages"]["rows"] for s in sessions.values()] == [8, 12, 12]
        # The model's memory is the active path: the edited branch, two turns.
        assert sessions["4 + 2 edits at 2"]["checkpoint"]["messages"] == 4
    assert [row["name"].split(":")[0] for row in report["rows"]] == ["storage (latest)"]


def test_the_branches_tool_times_the_active_path_and_turns_side_by_side(server_url):
    report = _branches(server_url, "--only", "path,turns", "--path-turns", "6", "--branches", "2", "--samples", "3",
                       "--turn-history", "2", "--turn-count", "2")
    page = report["details"]["path"]["messages_limit=12"]
    assert page["path_messages"] == 12 and page["stored_messages"] == 15 and page["with_siblings"] == 2
    assert report["details"]["path"]["without_messages_server_ms"]["n"] == 3
    turns = report["details"]["turns"]["per_kind"]
    assert {kind: (t["ok"], t["turns"]) for kind, t in turns.items()} == {
        kind: (2, 2) for kind in ("linear", "branched", "edit")}
    assert [row["name"].split(":")[0] for row in report["rows"]] == ["path", "turns"]
