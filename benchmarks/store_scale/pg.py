"""The benchmark's Postgres: a throwaway server from `pgserver` (PostgreSQL 16 binaries, its data
folder under /tmp, stopped and deleted at the end), or a server the caller names; a fresh
database for each run, dropped at the end."""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit


@dataclass
class BenchDatabase:
    url: str  # the fresh database
    server: str  # how the server was found: "pgserver (throwaway)" or the redacted URL
    pgdata: Path | None  # the throwaway server's data folder
    version: str


def _with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, f"/{name}", parts.query, parts.fragment))


@contextlib.contextmanager
def bench_database(server_url: str = "", keep: bool = False) -> Iterator[BenchDatabase]:
    """A fresh database on `server_url`, or on a throwaway server when it is empty."""
    import psycopg

    from resources.store import postgres

    folder = server = None
    if not server_url:
        import pgserver

        folder = Path(tempfile.mkdtemp(prefix="auf-pg-bench-"))  # short: the socket lives here
        server = pgserver.get_server(folder, cleanup_mode="stop")
        server_url = server.get_uri()
    name = f"auf_bench_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server_url, autocommit=True) as con:
        version = con.execute("SHOW server_version").fetchone()[0]
        con.execute(f'CREATE DATABASE "{name}"')
    url = _with_database(server_url, name)
    where = "pgserver (throwaway)" if server else postgres.redact(server_url)
    try:
        yield BenchDatabase(url, where, folder, version)
    finally:
        postgres.close_pool(url)
        if not (keep and server is None):
            with psycopg.connect(server_url, autocommit=True) as con:
                con.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        if server is not None:
            server.cleanup()
            shutil.rmtree(folder, ignore_errors=True)
