"""The DuckDB backend of the store: the embedded file under the home, one short-lived
connection per operation (DuckDB lets one process hold the file at a time, so opening retries
while another process holds it).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import duckdb
import polars as pl


class DuckDBConnection:
    """A DuckDB connection with the same few methods as `PostgresConnection`."""

    dialect = "duckdb"

    def __init__(self, raw: duckdb.DuckDBPyConnection):
        self.raw = raw

    def execute(self, sql: str, params: Sequence | Mapping | None = None):
        return self.raw.execute(sql, params or [])

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        self.raw.execute("BEGIN TRANSACTION")
        try:
            yield
            self.raw.execute("COMMIT")
        except BaseException:
            self.raw.execute("ROLLBACK")
            raise

    def serialize(self, name: str) -> None:
        """Nothing to do: one process holds the file at a time."""

    def register(self, name: str, rows: pl.DataFrame) -> None:
        self.raw.register(name, rows.to_arrow())

    def unregister(self, name: str) -> None:
        self.raw.unregister(name)

    def has_table(self, table: str) -> bool:
        return bool(
            self.raw.execute(
                "SELECT count(*) FROM duckdb_tables() WHERE table_name = ?", [table]
            ).fetchone()[0]
        )


@contextlib.contextmanager
def open_file(
    database: Path, lock_timeout_s: float, *, read_only: bool = False
) -> Iterator[DuckDBConnection]:
    """A connection to the file, retrying while another process holds it."""
    if not read_only:
        database.parent.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + lock_timeout_s
    delay = 0.05
    while True:
        try:
            raw = duckdb.connect(str(database), read_only=read_only)
            break
        except duckdb.IOException as exc:
            if "lock" not in str(exc).lower() or time.monotonic() > deadline:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 1.0)
    try:
        yield DuckDBConnection(raw)
    finally:
        raw.close()
