"""What every area of the store shares: connections, transactions, the generic partition
writes, file paths relative to the home, and the cleanup of files no row refers to.

The SQL helpers here (`_connect`, `_transaction`, `_query`, `_scalar`) are private to the store
package: code outside it calls the intention-named methods of the areas
(tests/test_store_edges.py fails on any other use).
"""

from __future__ import annotations

import contextlib
import os
import re
import time
from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path

import duckdb
import polars as pl

from resources import home
from resources.store.schema import ROUND_TABLES, ensure_schema


def utcnow() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


class StoreError(RuntimeError):
    """A store operation that cannot go ahead; nothing was written."""


# Feature blocks (uuid.npy) and reward-model checkpoints (round-0003.<hex>.safetensors), and
# their temporary names while being written.
_OWN_FILE = re.compile(r"^(round-\d{4,}(\.[0-9a-f]{8,})?\.safetensors|[0-9a-f]{32}\.npy)(\.tmp)?$")


def insert_rows(
    con: duckdb.DuckDBPyConnection, table: str, rows: pl.DataFrame, verb: str = "INSERT"
) -> None:
    """Insert a frame's rows by column name (`verb`: INSERT, INSERT OR IGNORE/REPLACE)."""
    con.register("incoming_rows", rows.to_arrow())
    try:
        con.execute(f"{verb} INTO {table} BY NAME SELECT * FROM incoming_rows")
    finally:
        con.unregister("incoming_rows")


class StoreBase:
    """The shared part of the store resource; the areas build on it (no fields of its own:
    `path` and `lock_timeout_s` are the resource's config)."""

    @property
    def database(self) -> Path:
        return Path(self.path) if self.path else home.database_path()

    @property
    def root(self) -> Path:
        """The directory next to the database that holds feature and checkpoint files."""
        return self.database.parent

    # -- connections -------------------------------------------------------------------------

    @contextlib.contextmanager
    def _connect(self) -> Iterator[duckdb.DuckDBPyConnection]:
        self.database.parent.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + self.lock_timeout_s
        delay = 0.05
        while True:
            try:
                con = duckdb.connect(str(self.database))
                break
            except duckdb.IOException as exc:
                if "lock" not in str(exc).lower() or time.monotonic() > deadline:
                    raise
                time.sleep(delay)
                delay = min(delay * 2, 1.0)
        try:
            ensure_schema(con, utcnow())
            yield con
        finally:
            con.close()

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """A connection inside one transaction: committed at the end, rolled back on error."""
        with self._connect() as con:
            con.execute("BEGIN TRANSACTION")
            try:
                yield con
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise

    def _query(self, sql: str, params: Sequence | Mapping | None = None) -> pl.DataFrame:
        with self._connect() as con:
            return con.execute(sql, params or []).pl()

    def _scalar(self, sql: str, params: Sequence | Mapping | None = None):
        with self._connect() as con:
            row = con.execute(sql, params or []).fetchone()
        return None if row is None else row[0]

    def _with_rounds(self, round_ids: Sequence[str], sql: str) -> pl.DataFrame:
        """Run `sql`, which reads the wanted rounds from a table `wanted` (round_id)."""
        wanted = pl.DataFrame({"round_id": list(round_ids)}, schema={"round_id": pl.String})
        with self._connect() as con:
            con.register("wanted", wanted.to_arrow())
            out = con.execute(sql).pl()
            con.unregister("wanted")
        return out

    def _replace_where(self, table: str, where: str, params: list, rows: pl.DataFrame) -> None:
        with self._transaction() as con:
            con.execute(f"DELETE FROM {table} WHERE {where}", params)
            if rows.height:
                insert_rows(con, table, rows)

    def sql_for_tests(self, sql: str, params: Sequence | Mapping | None = None) -> pl.DataFrame:
        """Ad-hoc SQL for tests and benchmarks only, to look at or set up tables directly.

        The pipeline never calls it: it calls the intention-named methods of the store
        (tests/test_store_edges.py fails on a call from auf_assets/, resources/ or sensors/).
        """
        return self._query(sql, params)

    # -- generic partition writes ------------------------------------------------------------

    def replace_round(self, table: str, round_id: str, rows: pl.DataFrame) -> int:
        """Replace every row of `round_id` in `table` by `rows`, atomically."""
        self.replace_round_tables(round_id, {table: rows})
        return rows.height

    def replace_round_tables(self, round_id: str, tables: Mapping[str, pl.DataFrame]) -> None:
        """Replace the rows of `round_id` in several tables in a single transaction."""
        for table, rows in tables.items():
            if table not in ROUND_TABLES:
                raise StoreError(f"{table!r} is not a per-round table ({', '.join(ROUND_TABLES)})")
            if rows.height and "round_id" in rows.columns:
                other = rows.filter(pl.col("round_id") != round_id)
                if other.height:
                    raise StoreError(
                        f"rows for {table} of {round_id} carry other round ids: "
                        f"{sorted(set(other['round_id']))[:3]}"
                    )
        with self._transaction() as con:
            for table, rows in tables.items():
                con.execute(f"DELETE FROM {table} WHERE round_id = ?", [round_id])
                if rows.height:
                    insert_rows(con, table, rows)

    def round_rows(self, table: str, round_id: str) -> pl.DataFrame:
        if table not in ROUND_TABLES:
            raise StoreError(f"{table!r} is not a per-round table")
        return self._query(f"SELECT * FROM {table} WHERE round_id = ?", [round_id])

    def count_rows(self, table: str, round_id: str | None = None) -> int:
        if round_id is None:
            return int(self._scalar(f"SELECT count(*) FROM {table}"))
        return int(self._scalar(f"SELECT count(*) FROM {table} WHERE round_id = ?", [round_id]))

    # -- files next to the database ------------------------------------------------------------

    def relative(self, path: str | os.PathLike) -> str:
        """How a file path is stored: relative to the home when inside it (the home can move)."""
        path = Path(path).resolve()
        try:
            return str(path.relative_to(self.root.resolve()))
        except ValueError:
            return str(path)

    def resolve(self, stored: str) -> Path:
        """A stored file path as a path on this machine (the inverse of `relative`)."""
        path = Path(stored)
        return path if path.is_absolute() else self.root / path

    def remove_orphan_files(self, folders: Sequence[Path], older_than_s: float = 3600.0) -> int:
        """Delete files under `folders` that no row refers to; returns how many.

        A crash between writing a feature block or checkpoint and committing its row leaves such
        a file behind, as does a replaced checkpoint. Only files older than `older_than_s` go:
        a younger one may belong to a write that is about to commit.
        """
        referenced = set()
        for sql in (
            "SELECT DISTINCT file FROM features",
            "SELECT path FROM reward_models",
        ):
            referenced |= {self.resolve(v).resolve() for v in self._query(sql).to_series()}
        cutoff = time.time() - older_than_s
        removed = 0
        for folder in folders:
            if not folder.is_dir():
                continue
            for path in folder.rglob("*"):
                if not path.is_file() or not _OWN_FILE.match(path.name):
                    continue  # only files this pipeline names (a shared folder keeps the rest)
                if path.resolve() in referenced or path.stat().st_mtime > cutoff:
                    continue
                path.unlink(missing_ok=True)
                removed += 1
        return removed
