"""Databases on the test PostgreSQL: a fresh one per test, dropped afterwards."""

from __future__ import annotations

import uuid
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg

from resources.store import postgres


def with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, f"/{name}", parts.query, parts.fragment))


def fresh_database(server_url: str) -> str:
    name = f"auf_test_{uuid.uuid4().hex[:16]}"
    with psycopg.connect(server_url, autocommit=True) as con:
        con.execute(f'CREATE DATABASE "{name}"')
    return with_database(server_url, name)


def drop_database(server_url: str, url: str) -> None:
    postgres.close_pool(url)
    name = urlsplit(url).path.lstrip("/")
    with psycopg.connect(server_url, autocommit=True) as con:
        con.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


class OwnServer:
    """A throwaway PostgreSQL of a test's own (not the session's), which the test may kill and
    start again: `pgserver`'s binaries, its socket in the data directory (so the URL stays)."""

    def __init__(self, pgdata: Path):
        import pgserver

        self.pgdata = pgdata
        self._server = pgserver.get_server(pgdata, cleanup_mode="delete")
        self.url = self._server.get_uri()

    def kill(self) -> None:
        """Stop the server the way a crash does (`pg_ctl stop -m immediate`: no clean shutdown,
        every connection cut)."""
        from pgserver._commands import pg_ctl

        pg_ctl(
            ["-w", "-m", "immediate", "stop"],
            pgdata=self._server.pgdata,
            user=self._server.system_user,
        )

    def start(self) -> None:
        self._server.ensure_postgres_running()

    def close(self) -> None:
        self._server.cleanup()
