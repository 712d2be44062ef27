"""Moving a home's tables from its DuckDB file to a Postgres database (`auf store migrate`).

Only the tables move: feature blocks, checkpoints, datasets and the label inbox stay files under
the home, and the rows keep pointing at them by their paths relative to the home. The DuckDB file
is opened read-only and left as it was. Each table's rows are counted and hashed on both sides
(every value as text, the rows sorted), and a difference stops the move with the table named.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from resources.store.base import StoreError, insert_rows, utcnow
from resources.store.duck import open_file
from resources.store.postgres import pooled, redact
from resources.store.schema import ensure_schema


@dataclass(frozen=True)
class TableCopy:
    table: str
    rows: int
    sha256: str


def content_hash(rows: pl.DataFrame) -> str:
    """The rows' content, independent of row order and of the backend's integer widths."""
    text = rows.select(pl.all().cast(pl.String)).sort(pl.all(), nulls_last=True)
    return hashlib.sha256(text.write_csv(null_value="\\N").encode()).hexdigest()


def copy_duckdb_to_postgres(database: Path, url: str) -> list[TableCopy]:
    """Copy every table of the DuckDB file `database` into the Postgres database at `url`,
    in one transaction, and check each table's row count and content hash."""
    if not database.exists():
        raise StoreError(f"no DuckDB file at {database}: nothing to migrate")
    with open_file(database, lock_timeout_s=120.0, read_only=True) as src:
        tables = [
            r[0]
            for r in src.execute(
                "SELECT table_name FROM duckdb_tables() WHERE table_name <> 'auf_schema' "
                "ORDER BY table_name"
            ).fetchall()
        ]
        frames = {t: src.execute(f"SELECT * FROM {t}").pl() for t in tables}
    copies = []
    with pooled(url) as dst:
        ensure_schema(dst, utcnow(), f"at {redact(url)}")
        with dst.transaction():
            dst.serialize("round_chain_migrate")
            held = dst.execute(
                "SELECT (SELECT count(*) FROM rounds) + (SELECT count(*) FROM round_prompts)"
            ).fetchone()[0]
            if held:
                raise StoreError(
                    f"the Postgres store at {redact(url)} already holds a round chain; "
                    "migrate into an empty database (nothing was copied)"
                )
            for table, rows in frames.items():
                dst.execute(f"DELETE FROM {table}")  # e.g. prompts ingested there already
                insert_rows(dst, table, rows)
            for table, rows in frames.items():
                copied = dst.execute(f"SELECT * FROM {table}").pl()
                want, got = content_hash(rows), content_hash(copied.select(rows.columns))
                if copied.height != rows.height or want != got:
                    raise StoreError(
                        f"{table}: {rows.height} rows in the file, {copied.height} copied, "
                        "contents differ; nothing was copied"
                    )
                copies.append(TableCopy(table, rows.height, want))
    return copies
