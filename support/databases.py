"""Databases of their own for a test run, a benchmark or a soak, dropped afterwards."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo


@contextmanager
def scratch_database(server_url: str, name: str | None = None, *, prefix: str = "scratch") -> Iterator[str]:
    """A new, empty database on the server (`name`, or prefix_<random>), dropped afterwards; yields its URL.
    A leftover database of the same name (an interrupted run) is dropped first."""
    name = name or f"{prefix}_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'drop database if exists "{name}" with (force)')
        conn.execute(f'create database "{name}"')
    params = conninfo_to_dict(server_url)
    params["dbname"] = name
    try:
        yield make_conninfo(**params)
    finally:
        with psycopg.connect(server_url, autocommit=True) as conn:
            conn.execute(f'drop database if exists "{name}" with (force)')
