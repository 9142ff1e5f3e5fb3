"""The suite's own embedded PostgreSQL keeps out of pytest's temporary folder, which other runs reset."""

from __future__ import annotations

import getpass
import os
import tempfile
from pathlib import Path

import psycopg
import pytest


@pytest.mark.skipif(bool(os.environ.get("TEST_DATABASE_URL")), reason="a server of the caller's: not ours to place")
def test_the_embedded_server_lives_outside_pytests_temporary_folder(server_url, tmp_path_factory):
    """Another pytest on the machine cleans pytest's per-user folder and, as root, sets it to 0700: a
    server inside it (running as its own system user) panics. Ours lives beside it, not in it."""
    with psycopg.connect(server_url, autocommit=True) as conn:
        data_directory = Path(conn.execute("show data_directory").fetchone()[0]).resolve()
    pytest_root = (Path(tempfile.gettempdir()) / f"pytest-of-{getpass.getuser()}").resolve()
    assert data_directory.exists()
    for folder in (pytest_root, tmp_path_factory.getbasetemp().resolve()):
        assert folder not in data_directory.parents
