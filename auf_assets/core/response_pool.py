"""Precomputed response pools: responses (and oracle scores) read from a file.

A pool file has one row per response: `prompt_id`, `prompt`, `completion_id`, `model`,
`response` and, for the simulated oracle, `oracle_score` (e.g. `sim_pool_dev.parquet`). The
`completions` asset reads a round's responses from it instead of generating them, and the oracle
label source reads the scores of the selected pairs from it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import polars as pl

__all__ = ["POOL_COLUMNS", "PoolFileError", "oracle_scores", "read_pool"]

POOL_COLUMNS = ("prompt_id", "prompt", "completion_id", "model", "response")
_READERS = {
    ".parquet": pl.scan_parquet,
    ".jsonl": pl.scan_ndjson,
    ".ndjson": pl.scan_ndjson,
    ".csv": pl.scan_csv,
}


class PoolFileError(ValueError):
    """A pool file that is missing, of an unknown type, or lacks columns."""


def _scan(path: str | Path) -> pl.LazyFrame:
    p = Path(path)
    if not p.is_file():
        raise PoolFileError(f"pool file {p} does not exist")
    reader = _READERS.get(p.suffix.lower())
    if reader is None:
        raise PoolFileError(f"pool file {p}: use .parquet, .jsonl or .csv, not {p.suffix!r}")
    return reader(p)


def read_pool(
    path: str | Path,
    prompt_ids: Sequence[str],
    columns: Sequence[str] = POOL_COLUMNS,
) -> pl.DataFrame:
    """The pool's rows for `prompt_ids` (only `columns`), checked for unique completion ids."""
    lazy = _scan(path)
    names = lazy.collect_schema().names()
    missing = [c for c in columns if c not in names]
    if missing:
        raise PoolFileError(f"pool file {path} has no column {', '.join(missing)} (has {names})")
    rows = (
        lazy.select(list(columns))
        .with_columns(pl.col("prompt_id").cast(pl.String), pl.col("completion_id").cast(pl.String))
        .filter(pl.col("prompt_id").is_in(list(prompt_ids)))
        .collect()
    )
    dupes = rows.filter(pl.col("completion_id").is_duplicated())["completion_id"].unique()
    if dupes.len():
        raise PoolFileError(
            f"pool file {path}: completion ids are not unique, e.g. {dupes.to_list()[:3]}"
        )
    return rows


def oracle_scores(path: str | Path, completion_ids: Sequence[str]) -> dict[str, float]:
    """completion_id -> oracle_score for the ids found in the pool (missing ids are left out)."""
    lazy = _scan(path)
    names = lazy.collect_schema().names()
    missing = [c for c in ("completion_id", "oracle_score") if c not in names]
    if missing:
        raise PoolFileError(f"pool file {path} has no column {', '.join(missing)}")
    rows = (
        lazy.select(
            pl.col("completion_id").cast(pl.String), pl.col("oracle_score").cast(pl.Float64)
        )
        .filter(pl.col("completion_id").is_in(list(completion_ids)))
        .filter(pl.col("oracle_score").is_not_null() & pl.col("oracle_score").is_finite())
        .collect()
    )
    return dict(zip(rows["completion_id"], rows["oracle_score"], strict=True))
