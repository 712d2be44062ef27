"""The pool of a simulated run: loading and validating a pool file, the sampled responses per
prompt and the held-out split of the prompts.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from auf_assets.core.user_files import UserFileError, check_regular_file, describe_names

from .streams import _STREAM_SAMPLE, _STREAM_SPLIT

#: Columns a pool file must have (``source`` is optional).
POOL_COLUMNS = ("prompt_id", "prompt", "completion_id", "model", "response", "oracle_score")


class PoolError(ValueError):
    """A pool file or frame that cannot be simulated; the message names the file and the problem."""


# --------------------------------------------------------------------------------------------------
# the pool


@dataclass
class SimPool:
    """A validated pool.

    ``frame`` holds the rows sorted by (prompt_id, completion_id) with an extra ``feature_row``
    column: the row's index in the full validated pool, i.e. in the feature matrix computed for it
    (:func:`sample_responses` keeps it, so a sub-sampled pool still indexes the same features).
    ``index`` is ``[P, N]``: row numbers of ``frame`` per prompt, ``-1`` as padding.
    """

    frame: pl.DataFrame
    index: np.ndarray
    prompt_ids: list[str]
    name: str = "<frame>"
    dropped_prompts: list[str] = field(default_factory=list)

    @property
    def n_prompts(self) -> int:
        return len(self.prompt_ids)

    @property
    def n_responses(self) -> int:
        return self.frame.height

    @property
    def mask(self) -> np.ndarray:
        return self.index >= 0

    @property
    def scores(self) -> np.ndarray:
        return self.frame["oracle_score"].to_numpy().astype(np.float64)

    @property
    def feature_rows(self) -> np.ndarray:
        return self.frame["feature_row"].to_numpy().astype(np.int64)

    def content_hash(self) -> str:
        """sha256 of the (prompt_id, completion_id, prompt, response) rows in order.

        Features depend on exactly these, so this (with the encoder's key) keys the feature cache.
        Oracle scores, models and sources are not part of it.
        """
        h = hashlib.sha256()
        cols = [
            self.frame[c].to_list() for c in ("prompt_id", "completion_id", "prompt", "response")
        ]
        for row in zip(*cols, strict=True):
            for value in row:
                h.update(value.encode("utf-8"))
                h.update(b"\x1f")
            h.update(b"\x1e")
        return h.hexdigest()

    def summary(self) -> dict[str, Any]:
        """Counts and the oracle-score distribution (for logs and metadata)."""
        counts = self.mask.sum(axis=1)
        s = self.scores
        q = np.quantile(s, [0.1, 0.25, 0.5, 0.75, 0.9]) if s.size else [math.nan] * 5
        return {
            "pool": self.name,
            "prompts": self.n_prompts,
            "responses": self.n_responses,
            "models": int(self.frame["model"].n_unique()),
            "responses_per_prompt": {
                "min": int(counts.min()) if counts.size else 0,
                "median": float(np.median(counts)) if counts.size else 0.0,
                "max": int(counts.max()) if counts.size else 0,
            },
            "oracle_score": {
                "min": float(s.min()) if s.size else math.nan,
                "p10": float(q[0]),
                "p25": float(q[1]),
                "median": float(q[2]),
                "p75": float(q[3]),
                "p90": float(q[4]),
                "max": float(s.max()) if s.size else math.nan,
                "mean": float(s.mean()) if s.size else math.nan,
            },
            "dropped_prompts": len(self.dropped_prompts),
        }


def _read_table(path: Path) -> pl.DataFrame:
    suffix = path.suffix.lower()
    readers = {
        ".parquet": pl.read_parquet,
        ".pq": pl.read_parquet,
        ".csv": pl.read_csv,
        ".jsonl": pl.read_ndjson,
        ".ndjson": pl.read_ndjson,
        ".json": pl.read_json,
    }
    if suffix not in readers:
        raise PoolError(f"{path}: unsupported pool format {suffix!r} (use parquet, csv or jsonl)")
    try:
        return readers[suffix](path)
    except Exception as exc:  # the reader's message can quote the file: only its kind is shown
        raise PoolError(
            f"{path}: cannot read the pool as {suffix.lstrip('.')} ({type(exc).__name__}; is it "
            "a pool file, in UTF-8?)"
        ) from exc


def load_pool(path: str | Path) -> SimPool:
    """Read and validate a pool file (parquet, csv or jsonl); see :func:`validate_pool`."""
    p = Path(path)
    if not p.exists():
        raise PoolError(f"{p}: pool file not found")
    try:  # a fifo would block the read, a device never end
        check_regular_file(p)
    except UserFileError as exc:
        raise PoolError(str(exc)) from None
    return validate_pool(_read_table(p), name=str(p))


def _examples(values: Sequence[Any], k: int = 3) -> str:
    shown = ", ".join(repr(v) for v in list(values)[:k])
    return shown + (f" (and {len(values) - k} more)" if len(values) > k else "")


def validate_pool(frame: pl.DataFrame, name: str = "<frame>") -> SimPool:
    """Check a pool frame and build a :class:`SimPool`.

    Errors (:class:`PoolError`, naming ``name``): missing columns; null ids or texts; an
    ``oracle_score`` that is not numeric, or null / NaN / infinite; duplicate ``completion_id``;
    a ``prompt_id`` with more than one prompt text; no prompt left with two responses.
    Prompts with fewer than 2 responses are dropped and listed in ``dropped_prompts``.
    """
    missing = [c for c in POOL_COLUMNS if c not in frame.columns]
    if missing:
        raise PoolError(
            f"{name}: missing column(s) {missing}; a pool needs {list(POOL_COLUMNS)} "
            f"(optional: source); found {describe_names(frame.columns)}"
        )
    df = frame.select(*POOL_COLUMNS, *(["source"] if "source" in frame.columns else []))
    if "source" not in df.columns:
        df = df.with_columns(source=pl.lit("", dtype=pl.String))
    for col in ("prompt_id", "completion_id", "model", "prompt", "response", "source"):
        nulls = int(df[col].null_count())
        if nulls and col != "source":
            raise PoolError(f"{name}: column {col!r} has {nulls} null value(s)")
        df = df.with_columns(pl.col(col).cast(pl.String).fill_null(""))

    score = df["oracle_score"]
    if score.dtype == pl.String:
        cast = score.cast(pl.Float64, strict=False)
        bad = df.filter(cast.is_null() & score.is_not_null())
        if bad.height:
            raise PoolError(  # the ids, not the values: the file may not be a pool at all
                f"{name}: oracle_score must be numeric; {bad.height} value(s) are not, e.g. "
                f"completion {_examples(bad['completion_id'].to_list())}"
            )
        score = cast
    elif not score.dtype.is_numeric():
        raise PoolError(f"{name}: oracle_score must be numeric, got column type {score.dtype}")
    df = df.with_columns(oracle_score=score.cast(pl.Float64))
    bad = df.filter(
        pl.col("oracle_score").is_null()
        | pl.col("oracle_score").is_nan()
        | pl.col("oracle_score").is_infinite()
    )
    if bad.height:
        raise PoolError(
            f"{name}: oracle_score is missing, NaN or infinite in {bad.height} row(s), e.g. "
            f"completion {_examples(bad['completion_id'].to_list())}"
        )
    dup = df.group_by("completion_id").len().filter(pl.col("len") > 1)
    if dup.height:
        raise PoolError(
            f"{name}: {dup.height} duplicate completion_id value(s), e.g. "
            f"{_examples(sorted(dup['completion_id'].to_list()))}"
        )
    texts = df.group_by("prompt_id").agg(pl.col("prompt").n_unique().alias("n"))
    texts = texts.filter(pl.col("n") > 1)
    if texts.height:
        raise PoolError(
            f"{name}: {texts.height} prompt_id value(s) carry more than one prompt text, e.g. "
            f"{_examples(sorted(texts['prompt_id'].to_list()))}"
        )

    counts = df.group_by("prompt_id").len()
    small = sorted(counts.filter(pl.col("len") < 2)["prompt_id"].to_list())
    if small:
        df = df.filter(~pl.col("prompt_id").is_in(small))
    if df.height == 0:
        raise PoolError(f"{name}: no prompt has at least 2 responses")
    return _build_pool(df.sort("prompt_id", "completion_id"), name, small, fresh_rows=True)


def _build_pool(df: pl.DataFrame, name: str, dropped: list[str], *, fresh_rows: bool) -> SimPool:
    """``df`` sorted by (prompt_id, completion_id); ``fresh_rows`` numbers the feature rows."""
    if fresh_rows:
        df = df.with_columns(feature_row=pl.int_range(0, df.height, dtype=pl.Int64))
    groups = df.group_by("prompt_id", maintain_order=True).len()
    lengths = groups["len"].to_numpy()
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    width = int(lengths.max())
    cols = np.arange(width)[None, :]
    index = np.where(cols < lengths[:, None], starts[:, None] + cols, -1).astype(np.int64)
    return SimPool(df, index, groups["prompt_id"].to_list(), name, list(dropped))


def sample_responses(pool: SimPool, k: int | None, seed: int) -> SimPool:
    """Keep ``k`` responses per prompt, drawn uniformly by ``seed`` (all of a prompt's responses
    when it has ``k`` or fewer; ``None`` or 0 keeps everything). ``k`` must be at least 2."""
    if k is None or k == 0:
        return pool
    if k < 2:
        raise ValueError(f"responses per prompt must be at least 2 (or 0 for all), got {k}")
    counts = pool.mask.sum(axis=1)
    if int(counts.max()) <= k:
        return pool
    rng = np.random.default_rng([int(seed), _STREAM_SAMPLE])
    keys = np.where(pool.mask, rng.random(pool.index.shape), 2.0)
    keep_cols = np.argsort(keys, axis=1, kind="stable")[:, :k]
    keep = np.take_along_axis(pool.index, keep_cols, axis=1)
    rows = np.sort(keep[keep >= 0])
    df = pool.frame[rows]
    return _build_pool(df, pool.name, pool.dropped_prompts, fresh_rows=False)


def split_prompts(
    n_prompts: int, heldout_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """``(train, heldout)`` prompt row indices: train in a seeded random visiting order, held-out
    sorted. ``round(fraction * n)`` prompts are held out, at least 1 when the fraction is > 0 and
    at least 1 prompt always stays for training."""
    if not (0.0 <= heldout_fraction < 1.0):
        raise ValueError(f"heldout_fraction must be in [0, 1), got {heldout_fraction}")
    if n_prompts < 1:
        raise ValueError("the pool has no prompts")
    n_held = int(round(heldout_fraction * n_prompts))
    if heldout_fraction > 0:
        n_held = max(n_held, 1)
    n_held = min(n_held, n_prompts - 1)
    rng = np.random.default_rng([int(seed), _STREAM_SPLIT])
    order = rng.permutation(n_prompts)
    return order[n_held:].astype(np.int64), np.sort(order[:n_held]).astype(np.int64)
