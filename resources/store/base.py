"""What every area of the store shares: the backend (a DuckDB file or a Postgres server),
connections, transactions, the generic partition writes, file paths relative to the home, and
the cleanup of files no row refers to.

The SQL helpers here (`_connect`, `_transaction`, `_query`, `_scalar`) are private to the store
package: code outside it calls the intention-named methods of the areas
(tests/test_store_edges.py fails on any other use). The SQL they take is the portable subset of
both backends, with `?` and `$name` parameters; a connection's `dialect` tells the few places
that differ.
"""

from __future__ import annotations

import contextlib
import os
import re
import time
from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path

import polars as pl

from resources import chain_lock, home
from resources.store import postgres, schema
from resources.store.chain import postgres_round_chain
from resources.store.duck import open_file
from resources.store.schema import ROUND_TABLES, StoreError, ensure_schema

STORE_URL_ENV = "AUF_STORE_URL"

__all__ = ["STORE_URL_ENV", "StoreBase", "StoreError", "insert_rows", "utcnow"]


def utcnow() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


# Feature blocks (uuid.npy) and reward-model checkpoints (round-0003.<hex>.safetensors), and
# their temporary names while being written.
_OWN_FILE = re.compile(r"^(round-\d{4,}(\.[0-9a-f]{8,})?\.safetensors|[0-9a-f]{32}\.npy)(\.tmp)?$")

# Postgres databases whose schema this process brought up to date (by URL and version).
_schema_ready: set[tuple[int, str, int]] = set()
_primary_keys: dict[str, list[str]] = {}  # the same tables on every server


def insert_rows(con, table: str, rows: pl.DataFrame, on_conflict: str | None = None) -> int:
    """Insert a frame's rows by column name; returns how many rows went in.

    `on_conflict`: None (a clash is an error), "ignore" (a row whose key is stored is left out)
    or "replace" (it replaces the stored row). Postgres writes through COPY.
    """
    if rows.height == 0:
        return 0
    if con.dialect == "duckdb":
        verb = {None: "INSERT", "ignore": "INSERT OR IGNORE", "replace": "INSERT OR REPLACE"}
        con.register("incoming_rows", rows)
        try:
            result = con.execute(
                f"{verb[on_conflict]} INTO {table} BY NAME SELECT * FROM incoming_rows"
            ).fetchone()
        finally:
            con.unregister("incoming_rows")
        return int(result[0]) if result else rows.height
    if on_conflict is None:
        con.copy_in(table, rows)
        return rows.height
    columns = ", ".join(postgres.quote(c) for c in rows.columns)
    if on_conflict == "ignore":
        action = "DO NOTHING"
    else:
        keys = _primary_key(con, table)
        updates = ", ".join(
            f"{postgres.quote(c)} = EXCLUDED.{postgres.quote(c)}"
            for c in rows.columns
            if c not in keys
        )
        action = f"({', '.join(keys)}) DO " + (f"UPDATE SET {updates}" if updates else "NOTHING")
    con.register("incoming_rows", rows)
    try:
        result = con.execute(
            f"INSERT INTO {table} ({columns}) SELECT {columns} FROM incoming_rows "
            f"ON CONFLICT {action}"
        )
    finally:
        con.unregister("incoming_rows")
    return result.rowcount


def _primary_key(con, table: str) -> list[str]:
    if table not in _primary_keys:
        rows = con.execute(
            "SELECT a.attname FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid "
            "AND a.attnum = ANY(i.indkey) WHERE i.indrelid = to_regclass(?) AND i.indisprimary",
            [table],
        ).fetchall()
        _primary_keys[table] = [r[0] for r in rows]
    return _primary_keys[table]


class StoreBase:
    """The shared part of the store resource; the areas build on it (no fields of its own:
    `url`, `path` and `lock_timeout_s` are the resource's config)."""

    # -- which backend -----------------------------------------------------------------------

    @property
    def store_url(self) -> str:
        """The Postgres URL in use ("" for the DuckDB file): the `url` setting, else
        `AUF_STORE_URL`. A password belongs in PGPASSWORD or a file, never in the config."""
        if self.url and postgres.has_password(self.url):
            raise StoreError(
                f"the store's url setting carries a password ({postgres.redact(self.url)}); "
                "config is shown in the UI and run records: give the password through "
                f"PGPASSWORD, a passfile or {postgres.PASSWORD_FILE_ENV} instead"
            )
        url = self.url or os.environ.get(STORE_URL_ENV, "")
        if url and not postgres.is_postgres_url(url):
            raise StoreError(
                f"the store URL {postgres.redact(url)} is not a postgresql:// URL (leave "
                f"{STORE_URL_ENV} empty for the DuckDB file under the home)"
            )
        return url

    @property
    def backend(self) -> str:
        return "postgres" if self.store_url else "duckdb"

    def describe(self) -> str:
        """Where the tables live, safe to show (no password)."""
        url = self.store_url
        return f"Postgres at {postgres.redact(url)}" if url else f"DuckDB file {self.database}"

    @contextlib.contextmanager
    def round_chain(self, what: str, *, wait_s: float = 0.0) -> Iterator[None]:
        """Hold this store's round-chain lock while the block runs (one writer per chain):
        the file lock in the home for DuckDB, an advisory lock on the server for Postgres.
        Raises `resources.chain_lock.ChainBusy` naming the holder."""
        url = self.store_url
        if url:
            with postgres_round_chain(url, what, wait_s=wait_s):
                yield
        else:
            with chain_lock.round_chain(self.root, what, wait_s=wait_s):
                yield

    @property
    def database(self) -> Path:
        return Path(self.path) if self.path else home.database_path()

    @property
    def root(self) -> Path:
        """The directory next to the database that holds feature and checkpoint files (the
        home; on Postgres the tables live on the server and the files stay here)."""
        return self.database.parent

    # -- connections -------------------------------------------------------------------------

    @contextlib.contextmanager
    def _connect(self) -> Iterator:
        url = self.store_url
        if not url:
            with open_file(self.database, self.lock_timeout_s) as con:
                ensure_schema(con, utcnow(), f"file {self.database}")
                yield con
            return
        with postgres.pooled(url) as con:
            ready = (os.getpid(), url, schema.SCHEMA_VERSION)
            if ready not in _schema_ready:
                ensure_schema(con, utcnow(), f"at {postgres.redact(url)}")
                _schema_ready.add(ready)
            yield con

    @contextlib.contextmanager
    def _transaction(self) -> Iterator:
        """A connection inside one transaction: committed at the end, rolled back on error."""
        with self._connect() as con, con.transaction():
            yield con

    def _query(self, sql: str, params: Sequence | Mapping | None = None) -> pl.DataFrame:
        with self._connect() as con:
            return con.execute(sql, params).pl()

    def _scalar(self, sql: str, params: Sequence | Mapping | None = None):
        with self._connect() as con:
            row = con.execute(sql, params).fetchone()
        return None if row is None else row[0]

    def _with_frame(self, name: str, frame: pl.DataFrame, sql: str, params=None) -> pl.DataFrame:
        """Run `sql`, which reads `frame` as a table `name`."""
        with self._connect() as con:
            con.register(name, frame)
            try:
                return con.execute(sql, params).pl()
            finally:
                con.unregister(name)

    def _with_rounds(self, round_ids: Sequence[str], sql: str) -> pl.DataFrame:
        """Run `sql`, which reads the wanted rounds from a table `wanted` (round_id)."""
        wanted = pl.DataFrame({"round_id": list(round_ids)}, schema={"round_id": pl.String})
        return self._with_frame("wanted", wanted, sql)

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
