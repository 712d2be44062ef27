"""What a store takes on disk, on either backend: the database (the DuckDB file, or the Postgres
database as `pg_database_size` counts it), per table, and the feature files next to it."""

from __future__ import annotations

from pathlib import Path


def dir_bytes(folder: Path) -> tuple[int, int]:
    files = [p for p in folder.rglob("*") if p.is_file()] if folder.is_dir() else []
    return sum(p.stat().st_size for p in files), len(files)


def duckdb_table_sizes(store) -> list[dict]:
    """Rows and (approximate) bytes per table: distinct storage blocks x block size."""
    out = []
    with store._connect() as con:
        block = con.execute("SELECT block_size FROM pragma_database_size()").fetchone()[0]
        tables = [r[0] for r in con.execute("SELECT table_name FROM duckdb_tables()").fetchall()]
        for name in tables:
            rows = con.execute(f"SELECT count(*) FROM {name}").fetchone()[0]
            blocks = con.execute(
                "SELECT count(DISTINCT b) FROM (SELECT block_id AS b FROM "
                f"pragma_storage_info('{name}') WHERE block_id >= 0 UNION ALL "
                f"SELECT unnest(additional_block_ids) FROM pragma_storage_info('{name}'))"
            ).fetchone()[0]
            out.append({"table": name, "rows": rows, "approx_bytes": blocks * block})
    return sorted(out, key=lambda r: -r["approx_bytes"])


def postgres_table_sizes(store) -> list[dict]:
    """Rows and bytes per table: `pg_total_relation_size` (heap, TOAST and indexes)."""
    tables = store.sql_for_tests(
        "SELECT c.relname AS name, pg_total_relation_size(c.oid) AS bytes FROM pg_class c "
        "JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE c.relkind = 'r' AND n.nspname = current_schema()"
    )
    out = []
    for name, nbytes in tables.iter_rows():
        rows = store.count_rows(name)
        out.append({"table": name, "rows": rows, "approx_bytes": int(nbytes)})
    return sorted(out, key=lambda r: -r["approx_bytes"])


def database_bytes(store) -> int:
    """The database alone: the DuckDB file (+ its WAL), or the Postgres database."""
    if store.backend == "postgres":
        return int(store.sql_for_tests("SELECT pg_database_size(current_database())").item())
    db = store.database
    wal = db.with_name(db.name + ".wal")
    return db.stat().st_size + (wal.stat().st_size if wal.exists() else 0)


def sizes(store, pgdata: Path | None = None) -> dict:
    """The database, its tables and the feature files under the store's home; with `pgdata`
    (a throwaway server's data folder) also that whole folder (WAL and catalogs included)."""
    feat_bytes, feat_files = dir_bytes(store.root / "features")
    postgres = store.backend == "postgres"
    out = {
        "database_bytes": database_bytes(store),
        "feature_bytes": feat_bytes,
        "feature_files": feat_files,
        "tables": postgres_table_sizes(store) if postgres else duckdb_table_sizes(store),
    }
    if pgdata is not None:
        out["server_folder_bytes"] = dir_bytes(pgdata)[0]
    return out
