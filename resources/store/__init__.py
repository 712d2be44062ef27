"""The store: every table of the pipeline, and the only place that writes SQL.

Two backends behind one resource, chosen by one setting: the embedded DuckDB file under
`AUF_HOME` (the default), or a Postgres server when the resource's `url` or `AUF_STORE_URL` is a
`postgresql://` URL (the password from PGPASSWORD, a passfile or `AUF_STORE_PASSWORD_FILE`).
Files (feature blocks, checkpoints, datasets, the label inbox) stay under the home either way.

Writes are idempotent per round partition: `replace_round` deletes a round's rows and inserts the
new ones in one transaction, so re-materialising a partition replaces it and never duplicates
rows, and a failure half-way leaves the previous rows in place.

DuckDB lets one process hold the file at a time, so every operation opens a short-lived
connection and retries while another process (a run, the sensor daemon) holds the lock. On
Postgres each process keeps a small connection pool, and many processes write at once.

One resource, one module per area (each area a mixin over `base.StoreBase`; no area calls
another):

- `schema`: the tables, their version, the forward migration of an older database
- `base`: the backend, connections, transactions, the generic per-round writes, paths, orphans
- `duck`, `postgres`: the two backends' connections (Postgres: pools, COPY, parameter style)
- `prompts_rounds`: prompts, rounds, the prompts each round took
- `responses`: completions and their feature vectors
- `pairs`: reward scores, selected pairs, how pairs are shown to people
- `labels`: human labels and label files, judge scores, verdicts, annotation batches
- `releases`: dataset releases, hub pushes, reward models, trained checkpoints, evaluations,
  reference log-probs
- `ledger`: the usage ledger and the call cache
"""

from __future__ import annotations

import dagster as dg
from pydantic import Field

from resources.store.base import STORE_URL_ENV, StoreError, insert_rows, utcnow
from resources.store.labels import LabelsAndJudgements
from resources.store.ledger import CallCache, LedgerAndCallCache
from resources.store.migrate import TableCopy, copy_duckdb_to_postgres
from resources.store.pairs import ScoresAndPairs
from resources.store.prompts_rounds import PromptsAndRounds, TakenPrompts
from resources.store.releases import ReleasesAndCheckpoints
from resources.store.responses import ResponsesAndFeatures
from resources.store.schema import ROUND_TABLES, SCHEMA, SCHEMA_VERSION

# The name benchmarks/bench_store_scale.py bulk-loads a synthetic history with.
_insert = insert_rows

__all__ = [
    "ROUND_TABLES",
    "SCHEMA",
    "SCHEMA_VERSION",
    "STORE_URL_ENV",
    "CallCache",
    "DuckDBStore",
    "Store",
    "StoreError",
    "TableCopy",
    "TakenPrompts",
    "copy_duckdb_to_postgres",
    "utcnow",
]


class Store(
    PromptsAndRounds,
    ResponsesAndFeatures,
    ScoresAndPairs,
    LabelsAndJudgements,
    ReleasesAndCheckpoints,
    LedgerAndCallCache,
    dg.ConfigurableResource,
):
    """All tables of the pipeline: a DuckDB file (default: `$AUF_HOME/auf.duckdb`) or, with a
    `postgresql://` URL, a Postgres database."""

    url: str = Field(
        default="",
        description=(
            "postgresql:// URL of the store's database, without the password; empty means "
            f"${STORE_URL_ENV}, and when that is empty too, the DuckDB file"
        ),
    )
    path: str = Field(default="", description="DuckDB file; empty means $AUF_HOME/auf.duckdb")
    lock_timeout_s: float = Field(
        default=120.0, description="How long to wait for another process holding the file"
    )


# The name every asset signature and caller uses: the one store resource, whichever backend.
DuckDBStore = Store
