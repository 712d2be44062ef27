"""The readers of each input kind (JSON Lines, JSON, Parquet, CSV, a saved ``datasets``
directory, a polars frame). Each returns a :class:`_Table` (column names, numbered records, a
peek at each column) for the shared validation path."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from auf_assets.core.prompts.errors import PromptInputError, _describe_type, _first_line
from auf_assets.core.user_files import (
    UserFileError,
    check_regular_file,
    decode_utf8,
    read_limited,
)

_MISSING = object()  # a record without the column at all (JSON rows may differ in their keys)


Records = Iterable[tuple[int, Mapping[str, Any]]]


@dataclass
class _Table:
    """What a reader hands to the validation path.

    ``rows(names)`` yields ``(row number, record)`` with at least the named columns (frames only
    convert those, which keeps wide datasets cheap); ``first_value(name)`` is the column's first
    non-null value, or ``_MISSING`` when it has none (used to recognise the layout).
    """

    columns: list[str]
    rows: Callable[[list[str]], Records]
    first_value: Callable[[str], Any]


def _records_table(records: Sequence[tuple[int, Mapping[str, Any]]], columns: list[str]) -> _Table:
    def first_value(name: str) -> Any:
        for _, rec in records:
            value = rec.get(name)
            if value is not None:
                return value
        return _MISSING

    return _Table(columns=columns, rows=lambda _names: iter(records), first_value=first_value)


def _frame_table(df: pl.DataFrame) -> _Table:
    def rows(names: list[str]) -> Records:
        wanted = [c for c in dict.fromkeys(names) if c in df.columns]
        frame = df.select(wanted) if wanted else df
        return enumerate(frame.iter_rows(named=True), start=1)

    def first_value(name: str) -> Any:
        values = df.get_column(name).drop_nulls().head(1).to_list()
        return values[0] if values else _MISSING

    return _Table(columns=list(df.columns), rows=rows, first_value=first_value)


def _read_text(p: Path, origin: str, max_bytes: int) -> str:
    """The whole text of a regular file of at most `max_bytes` (user_files: no fifo, no device)."""
    try:
        return decode_utf8(read_limited(p, max_bytes=max_bytes), p)
    except UserFileError as exc:
        raise PromptInputError(origin, _with_hint(exc.problem)) from exc


def _with_hint(problem: str) -> str:
    if problem.startswith("the file is"):  # too large to read whole
        return problem + " (max_file_bytes): split it, or save it as Parquet, which is not"
    return problem


def _read_jsonl(p: Path, origin: str, max_bytes: int) -> _Table:
    text = _read_text(p, origin, max_bytes)
    records: list[tuple[int, dict]] = []
    columns: dict[str, None] = {}
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise PromptInputError(
                origin, f"bad JSON ({exc.msg} at column {exc.colno})", row=lineno, where="line"
            ) from exc
        if not isinstance(obj, dict):
            raise PromptInputError(
                origin,
                f"expected a JSON object per line, got {_describe_type(obj)}",
                row=lineno,
                where="line",
            )
        records.append((lineno, obj))
        columns.update(dict.fromkeys(obj))
    if not records:
        raise PromptInputError(origin, "the file is empty (no JSON objects)")
    return _records_table(records, list(columns))


def _read_json(p: Path, origin: str, max_bytes: int) -> _Table:
    text = _read_text(p, origin, max_bytes)
    if not text.strip():
        raise PromptInputError(origin, "the file is empty")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise PromptInputError(
            origin, f"bad JSON ({exc.msg} at column {exc.colno})", row=exc.lineno, where="line"
        ) from exc
    if not isinstance(data, list):
        raise PromptInputError(
            origin, f"expected a JSON list of objects, got {_describe_type(data)} at the top level"
        )
    if not data:
        raise PromptInputError(origin, "no rows (the JSON list is empty)")
    records: list[tuple[int, dict]] = []
    columns: dict[str, None] = {}
    for i, obj in enumerate(data, start=1):
        if not isinstance(obj, dict):
            raise PromptInputError(
                origin, f"expected a JSON object, got {_describe_type(obj)}", row=i
            )
        records.append((i, obj))
        columns.update(dict.fromkeys(obj))
    return _records_table(records, list(columns))


def _frame_records(df: pl.DataFrame, origin: str) -> _Table:
    if df.height == 0:
        raise PromptInputError(origin, "no rows (the input has columns but no data rows)")
    return _frame_table(df)


def _read_parquet(p: Path, origin: str) -> _Table:
    try:  # read by columns, not whole: no size limit, but a regular file (a fifo would block)
        entry = check_regular_file(p)
    except UserFileError as exc:
        raise PromptInputError(origin, exc.problem) from exc
    if entry.st_size == 0:
        raise PromptInputError(origin, "the file is empty")
    try:
        df = pl.read_parquet(p)
    except Exception as exc:  # polars/arrow raise several error types for corrupt files
        raise PromptInputError(origin, f"cannot read as Parquet ({_first_line(exc)})") from exc
    return _frame_records(df, origin)


def _read_csv(p: Path, origin: str, max_bytes: int) -> _Table:
    text = _read_text(p, origin, max_bytes)
    if not text.strip():
        raise PromptInputError(origin, "the file is empty")
    try:
        # Everything as text: CSV has no types, so ids stay as written and prompts stay strings.
        # The text already read is parsed: the file is opened once.
        df = pl.read_csv(text.encode("utf-8"), infer_schema=False, empty_string_is_null=False)
    except Exception as exc:  # polars raises ComputeError/NoDataError/... on malformed CSV
        raise PromptInputError(origin, f"cannot read as CSV ({_first_line(exc)})") from exc
    return _frame_records(df, origin)


def _read_saved_dataset(p: Path, origin: str, split: str | None) -> tuple[_Table, str]:
    is_dict = (p / "dataset_dict.json").is_file()
    is_single = (p / "state.json").is_file() or (p / "dataset_info.json").is_file()
    if not (is_dict or is_single):
        raise PromptInputError(
            origin,
            "is a directory but not a dataset written by save_to_disk "
            "(no dataset_dict.json or state.json inside)",
        )
    import datasets  # imported here: slow to import and only needed for this input kind

    try:
        loaded = datasets.load_from_disk(str(p))
    except Exception as exc:
        raise PromptInputError(
            origin, f"cannot load the saved dataset ({_first_line(exc)})"
        ) from exc

    if isinstance(loaded, datasets.DatasetDict):
        splits = list(loaded.keys())
        if split is None:
            if "train" not in loaded:
                raise PromptInputError(
                    origin,
                    f"the DatasetDict has no 'train' split; pass split= one of {', '.join(splits)}",
                )
            split = "train"
        elif split not in loaded:
            raise PromptInputError(
                origin, f"no split {split!r} in the DatasetDict; splits found: {', '.join(splits)}"
            )
        ds = loaded[split]
        origin = f"{origin} [split={split}]"
    else:
        ds = loaded
        if split is not None and str(ds.split) != split:
            raise PromptInputError(
                origin,
                f"split={split!r} was given, but the directory holds a single Dataset "
                f"(its split: {ds.split}), not a DatasetDict",
            )
    try:
        df = ds.to_polars()
    except Exception as exc:
        raise PromptInputError(
            origin, f"cannot read the saved dataset ({_first_line(exc)})"
        ) from exc
    return _frame_records(df, origin), origin
