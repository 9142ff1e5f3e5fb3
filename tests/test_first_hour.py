"""The first hour with the project, as a new user meets it: the commands the README names.

`make run` is `flask --app backend run`: it says where it listens, and stopping it stops the embedded
PostgreSQL it started; `flask --help` starts no database; `create-user` prints the user id that the
MCP server's `--user-id` takes, and `list-users` shows it again; `/` serves the app once built,
without a restart, and says how to build it before.
"""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import psutil
from flask import Flask

from backend.web import install_web_app
from support.net import free_port

ROOT = Path(__file__).resolve().parent.parent
FLASK = [sys.executable, "-m", "flask", "--app", "backend"]


def cli_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "TEST_DATABASE_URL")}
    env.update(APP_ENV="development", LOG_FORMAT="json", MAINTENANCE_INTERVAL_SECONDS="0", **extra)
    return env


def read_until(process: subprocess.Popen, text: str, timeout: float = 60) -> str:
    """What the process wrote to stderr until `text` appears in it (or it exits, or time is up)."""
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in process.stderr], daemon=True).start()
    seen = ""
    deadline = time.monotonic() + timeout
    while text not in seen and time.monotonic() < deadline:
        try:
            seen += lines.get(timeout=0.5)
        except queue.Empty:
            if process.poll() is not None:
                break
    return seen


def postgres_serving(data_dir: Path) -> list[int]:
    """Pids of postgres processes whose data directory is `data_dir`."""
    found = []
    for proc in psutil.process_iter(["name", "cmdline"]):
        cmdline = proc.info["cmdline"] or []
        if proc.info["name"] == "postgres" and str(data_dir) in cmdline:
            found.append(proc.pid)
    return found


def test_help_starts_no_database(tmp_path):
    data_dir = tmp_path / "pg"
    result = subprocess.run([*FLASK, "--help"], cwd=ROOT, env=cli_env(EMBEDDED_DB_DIR=str(data_dir)),
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    for command in ("create-user", "list-users", "mcp", "db-migrate"):
        assert command in result.stdout
    assert not data_dir.exists() and postgres_serving(data_dir) == []
    one = subprocess.run([*FLASK, "create-user", "--help"], cwd=ROOT, env=cli_env(EMBEDDED_DB_DIR=str(data_dir)),
                         capture_output=True, text=True, timeout=120)
    assert one.returncode == 0 and "--password" in one.stdout and "prompt" not in one.stderr
    assert not data_dir.exists()


def test_create_user_prints_the_id_that_list_users_shows_again(database_url):
    email = f"first-hour-{uuid.uuid4().hex[:8]}@example.com"
    env = cli_env(DATABASE_URL=database_url)
    created = subprocess.run([*FLASK, "create-user", "--email", email, "--business-id", "acme",
                              "--password", "correct horse battery staple"],
                             cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert created.returncode == 0, created.stderr
    user_id = created.stdout.split("created user ", 1)[1].split()[0]
    uuid.UUID(user_id)
    listed = subprocess.run([*FLASK, "list-users"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert listed.returncode == 0, listed.stderr
    assert f"{user_id}  acme  {email}" in listed.stdout.splitlines()


def test_run_says_where_it_listens(database_url):
    port = free_port()
    process = subprocess.Popen([*FLASK, "run", "--port", str(port)], cwd=ROOT, env=cli_env(DATABASE_URL=database_url),
                               stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    try:
        assert f"Running on http://127.0.0.1:{port}" in read_until(process, "Running on")
    finally:
        process.terminate()
        process.wait(30)


def test_stopping_run_stops_the_embedded_postgresql_it_started(tmp_path):
    """SIGTERM (an IDE's stop button, `kill`, a container's stop) as well as Ctrl-C; and a run that was
    killed outright before (its pid still listed by pgserver) does not keep the server up for ever."""
    data_dir = tmp_path / "pg"
    env = cli_env(EMBEDDED_DB_DIR=str(data_dir))

    def start() -> subprocess.Popen:
        process = subprocess.Popen([*FLASK, "run", "--port", str(free_port())], cwd=ROOT, env=env,
                                   stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
        assert "Running on" in read_until(process, "Running on", timeout=120)
        assert postgres_serving(data_dir) != []
        return process

    killed = start()
    killed.kill()  # no exit handlers: its pid stays in pgserver's list, the server stays up
    killed.wait(30)
    assert postgres_serving(data_dir) != []
    process = start()
    process.send_signal(signal.SIGTERM)
    process.wait(60)
    deadline = time.monotonic() + 30
    while postgres_serving(data_dir) and time.monotonic() < deadline:
        time.sleep(0.2)  # the exiting process waited for pg_ctl stop; this only lets the process table catch up
    assert postgres_serving(data_dir) == []


def test_root_says_how_to_build_the_app_then_serves_it_once_built_without_a_restart(tmp_path):
    dist = tmp_path / "dist"
    app = Flask(__name__)
    assert install_web_app(app, dist) is False
    client = app.test_client()
    before = client.get("/")
    assert before.status_code == 404 and before.mimetype == "text/html"
    assert "make web" in before.get_data(as_text=True) and "frame-ancestors 'none'" in before.headers["Content-Security-Policy"]
    (dist / "assets").mkdir(parents=True)
    (dist / "index.html").write_text('<!doctype html><html><head><script type="module" src="/assets/a.js"></script>'
                                     "</head><body><div id=root></div></body></html>")
    (dist / "assets" / "a.js").write_text("console.log('app')")
    after = client.get("/")
    assert after.status_code == 200 and "<div id=root>" in after.get_data(as_text=True)
    assert client.get("/c/some-chat").get_data(as_text=True) == after.get_data(as_text=True)  # a chat's own URL
    assert client.get("/assets/a.js").status_code == 200
