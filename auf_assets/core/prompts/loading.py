"""The entry points for local prompts: a file or a saved dataset (:func:`load_prompts`), a
polars frame (:func:`prompts_from_frame`) and the built-in demo set (:func:`demo_prompts`)."""

from __future__ import annotations

from pathlib import Path

import polars as pl

from auf_assets.core.prompts.batch import MAX_PROMPT_CHARS, MAX_PROMPT_FILE_BYTES, PromptBatch
from auf_assets.core.prompts.errors import PromptInputError, _check_limit
from auf_assets.core.prompts.readers import (
    _frame_table,
    _read_csv,
    _read_json,
    _read_jsonl,
    _read_parquet,
    _read_saved_dataset,
)
from auf_assets.core.prompts.validation import _batch_from_records

# shipped as package data of auf_assets.core
DEMO_PROMPTS_PATH = Path(__file__).resolve().parents[1] / "data" / "demo_prompts.jsonl"

SUPPORTED_SUFFIXES = (".jsonl", ".ndjson", ".json", ".parquet", ".csv")


def load_prompts(
    path: str | Path,
    *,
    prompt_column: str | None = None,
    id_column: str = "prompt_id",
    source_column: str = "source",
    default_source: str | None = None,
    split: str | None = None,
    limit: int | None = None,
    max_prompt_chars: int | None = MAX_PROMPT_CHARS,
    max_file_bytes: int = MAX_PROMPT_FILE_BYTES,
) -> PromptBatch:
    """Read and validate a prompt pool.

    ``path`` is a ``.jsonl``/``.ndjson``, ``.json`` (a list of objects), ``.parquet`` or ``.csv``
    file, or a directory written by ``Dataset.save_to_disk``/``DatasetDict.save_to_disk``. For a
    ``DatasetDict`` ``split`` picks the split (default ``"train"`` when there is one); ``split``
    is an error for every other kind of input, except a saved ``Dataset`` whose own split is the
    one named. ``prompt_column=None`` recognises the layout (see the package docstring, which also
    has the validation rules). A file must be a regular file (a link to one is followed; a fifo or
    a device is refused); a JSON Lines, JSON or CSV file over ``max_file_bytes`` is refused
    before it is read.
    """
    _check_limit(limit)
    _check_limit(max_prompt_chars, "max_prompt_chars")
    _check_limit(max_file_bytes, "max_file_bytes")
    p = Path(path)
    origin = str(path)
    if not p.exists():
        raise PromptInputError(origin, "file not found")
    source = default_source if default_source is not None else p.stem

    if p.is_dir():
        table, origin = _read_saved_dataset(p, origin, split)
        where = "row"
    else:
        if split is not None:
            raise PromptInputError(
                origin,
                f"split={split!r} was given, but a split only applies to a DatasetDict "
                "directory written by save_to_disk",
            )
        suffix = p.suffix.lower()
        if suffix in (".jsonl", ".ndjson"):
            table = _read_jsonl(p, origin, max_file_bytes)
            where = "line"
        elif suffix == ".json":
            table = _read_json(p, origin, max_file_bytes)
            where = "row"
        elif suffix == ".parquet":
            table = _read_parquet(p, origin)
            where = "row"
        elif suffix == ".csv":
            table = _read_csv(p, origin, max_file_bytes)
            where = "row"
        else:
            raise PromptInputError(
                origin,
                f"unsupported file type {p.suffix or '(no suffix)'!r}; expected one of "
                f"{', '.join(SUPPORTED_SUFFIXES)} or a dataset directory written by save_to_disk",
            )

    return _batch_from_records(
        table,
        origin=origin,
        where=where,
        prompt_column=prompt_column,
        id_column=id_column,
        source_column=source_column,
        default_source=source,
        limit=limit,
        max_prompt_chars=max_prompt_chars,
    )


def prompts_from_frame(
    df: pl.DataFrame,
    *,
    origin: str,
    prompt_column: str | None = None,
    id_column: str = "prompt_id",
    source_column: str = "source",
    default_source: str | None = None,
    limit: int | None = None,
    max_prompt_chars: int | None = MAX_PROMPT_CHARS,
) -> PromptBatch:
    """Validate prompts already in a polars frame (row ``i`` of the frame is row ``i + 1``).

    Without a source column and without ``default_source`` the source is ``origin``.
    ``prompt_column=None`` recognises the layout (see the package docstring).
    """
    _check_limit(limit)
    _check_limit(max_prompt_chars, "max_prompt_chars")
    if df.height == 0:
        raise PromptInputError(origin, "no rows (the input holds no prompts)")
    return _batch_from_records(
        _frame_table(df),
        origin=origin,
        where="row",
        prompt_column=prompt_column,
        id_column=id_column,
        source_column=source_column,
        default_source=default_source if default_source is not None else origin,
        limit=limit,
        max_prompt_chars=max_prompt_chars,
    )


def demo_prompts() -> PromptBatch:
    """The built-in demo pool (48 short prompts in several categories) shipped with the package."""
    return load_prompts(DEMO_PROMPTS_PATH, default_source="general")
