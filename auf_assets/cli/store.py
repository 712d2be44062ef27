"""`auf store migrate --to postgresql://...`: move this home's tables to a Postgres store."""

from __future__ import annotations

import argparse

from auf_assets.cli.common import prepare_home


def _migrate(args: argparse.Namespace) -> int:
    prepare_home()
    from resources import home
    from resources.store import STORE_URL_ENV, StoreError, copy_duckdb_to_postgres
    from resources.store.postgres import PostgresUnavailable, is_postgres_url, redact

    if not is_postgres_url(args.to):
        print(f"--to must be a postgresql:// URL, not {redact(args.to)}")
        return 2
    database = home.database_path()
    try:
        copies = copy_duckdb_to_postgres(database, args.to)
    except (StoreError, PostgresUnavailable) as exc:
        print(exc)
        return 1
    for copy in copies:
        print(f"{copy.table:24} {copy.rows:>10} rows  sha256 {copy.sha256[:16]}")
    print(
        f"copied {len(copies)} tables from {database} (left as it was) to {redact(args.to)}; "
        f"set {STORE_URL_ENV} to that URL to continue the round chain there (files stay under "
        f"{database.parent})"
    )
    return 0


def add_commands(sub) -> None:
    store = sub.add_parser("store", help="the store's database")
    actions = store.add_subparsers(dest="store_command", required=True)
    migrate = actions.add_parser(
        "migrate", help="copy this home's DuckDB tables to an empty Postgres database"
    )
    migrate.add_argument("--to", required=True, help="postgresql:// URL (password: PGPASSWORD)")
    migrate.set_defaults(func=_migrate)
