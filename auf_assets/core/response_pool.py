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

from auf_assets.core.user_files import UserFileError, check_regular_file, describe_names

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
    if not p.exists():
        raise PoolFileError(f"pool file {p} does not exist")
    try:  # a fifo would block the read, a device never end
        check_regular_file(p)
    except UserFileError as exc:
        raise PoolFileError(f"pool file {p}: {exc.problem}") from None
    reader = _READERS.get(p.suffix.lower())
    if reader is None:
        raise PoolFileError(f"pool file {p}: use .parquet, .jsonl or .csv, not {p.suffix!r}")
    return reader(p)


def _unreadable(path: str | Path, exc: Exception) -> PoolFileError:
    # polars' message can quote the file (a value it could not parse): only its kind is shown
    return PoolFileError(
        f"pool file {path} cannot be read as {Path(path).suffix.lstrip('.')} "
        f"({type(exc).__name__}; is it a pool file, in UTF-8?)"
    )


def _names(lazy: pl.LazyFrame, path: str | Path) -> list[str]:
    try:
        return lazy.collect_schema().names()
    except pl.exceptions.PolarsError as exc:
        raise _unreadable(path, exc) from exc


def _collect(lazy: pl.LazyFrame, path: str | Path) -> pl.DataFrame:
    try:
        return lazy.collect()
    except pl.exceptions.PolarsError as exc:
        raise _unreadable(path, exc) from exc


def read_pool(
    path: str | Path,
    prompt_ids: Sequence[str],
    columns: Sequence[str] = POOL_COLUMNS,
) -> pl.DataFrame:
    """The pool's rows for `prompt_ids` (only `columns`), checked for unique completion ids."""
    lazy = _scan(path)
    names = _names(lazy, path)
    missing = [c for c in columns if c not in names]
    if missing:
        raise PoolFileError(
            f"pool file {path} has no column {', '.join(missing)} (has {describe_names(names)})"
        )
    rows = _collect(
        lazy.select(list(columns))
        .with_columns(pl.col("prompt_id").cast(pl.String), pl.col("completion_id").cast(pl.String))
        .filter(pl.col("prompt_id").is_in(list(prompt_ids))),
        path,
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
    names = _names(lazy, path)
    missing = [c for c in ("completion_id", "oracle_score") if c not in names]
    if missing:
        raise PoolFileError(f"pool file {path} has no column {', '.join(missing)}")
    rows = _collect(
        lazy.select(
            pl.col("completion_id").cast(pl.String), pl.col("oracle_score").cast(pl.Float64)
        )
        .filter(pl.col("completion_id").is_in(list(completion_ids)))
        .filter(pl.col("oracle_score").is_not_null() & pl.col("oracle_score").is_finite()),
        path,
    )
    return dict(zip(rows["completion_id"], rows["oracle_score"], strict=True))
