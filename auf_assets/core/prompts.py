"""Prompt ingestion: read a prompt pool from disk, validate it, and hand back a clean table.

Every reader ends in the same validation path (`_batch_from_records`), so a prompt pool behaves
the same whether it came from JSON Lines, JSON, CSV, Parquet, or a Hugging Face dataset saved
with ``save_to_disk``. The result is a :class:`PromptBatch` whose ``prompts`` frame has the
columns ``prompt_id``, ``prompt`` and ``source``, one row per distinct prompt, in input order.

Rules, in short:

* Row numbers in messages and reports are 1-based, as a person counts them. For JSON Lines the
  row is the line number in the file (blank lines count as lines but hold no prompt); for CSV it
  is the data row (the header line is not counted); otherwise it is the record's position.
* A missing id column means ids are derived from the text (:func:`stable_prompt_id`). A missing
  source column means every prompt gets ``default_source`` or, failing that, the file's stem.
* Empty or whitespace-only prompts are dropped and reported. Repeats (the same id with the same
  text, or the same whitespace-normalised text) are dropped and reported, the first one is kept.
* Anything else that is wrong raises :class:`PromptInputError` and nothing is returned: the file
  is missing or unreadable, it holds no rows, the prompt column is missing, a prompt is not text,
  an id is not a string or an integer, or one id names two different prompts.
* ``limit`` keeps the first N valid prompts; rows after the N-th kept prompt are not examined.
"""

from __future__ import annotations

import hashlib
import json
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

__all__ = [
    "DEMO_PROMPTS_PATH",
    "SUPPORTED_SUFFIXES",
    "PromptBatch",
    "PromptInputError",
    "demo_prompts",
    "load_prompts",
    "normalise_prompt",
    "prompts_from_frame",
    "stable_prompt_id",
]

DEMO_PROMPTS_PATH = Path(__file__).resolve().parent / "data" / "demo_prompts.jsonl"

SUPPORTED_SUFFIXES = (".jsonl", ".ndjson", ".json", ".parquet", ".csv")

_MISSING = object()  # a record without the column at all (JSON rows may differ in their keys)


class PromptInputError(ValueError):
    """Bad prompt input.

    The message names the file, the row (1-based, as a user counts lines/rows) where there is one,
    and the problem. ``origin`` and ``row`` are also kept as attributes for callers.
    """

    def __init__(self, origin: str, problem: str, *, row: int | None = None, where: str = "row"):
        self.origin = origin
        self.row = row
        self.problem = problem
        location = f"{origin}: {where} {row}: " if row is not None else f"{origin}: "
        super().__init__(location + problem)


@dataclass
class PromptBatch:
    """A validated prompt pool.

    ``prompts`` has the columns ``prompt_id``, ``prompt`` and ``source`` (all text), unique ids,
    in input order. ``duplicates`` lists the dropped repeats as
    ``{"row", "prompt_id", "duplicate_of_row"}``; ``empty`` lists the dropped empty prompts as
    ``{"row"}``. ``origin`` says where the prompts came from (a path or a dataset description).
    """

    prompts: pl.DataFrame
    duplicates: list[dict] = field(default_factory=list)
    empty: list[dict] = field(default_factory=list)
    origin: str = ""

    def __len__(self) -> int:
        return self.prompts.height

    def summary(self) -> str:
        """One line for logs, e.g. ``48 prompts from X (2 duplicates, 1 empty dropped)``."""
        n = self.prompts.height
        line = f"{n} prompt{'' if n == 1 else 's'} from {self.origin}"
        dropped = []
        if self.duplicates:
            d = len(self.duplicates)
            dropped.append(f"{d} duplicate{'' if d == 1 else 's'}")
        if self.empty:
            dropped.append(f"{len(self.empty)} empty")
        if dropped:
            line += f" ({', '.join(dropped)} dropped)"
        return line


def normalise_prompt(prompt: str) -> str:
    """Canonical form used for ids and duplicate detection: NFC, whitespace runs collapsed."""
    return " ".join(unicodedata.normalize("NFC", prompt).split())


def stable_prompt_id(prompt: str) -> str:
    """A deterministic id from the whitespace-normalised text: ``"p-"`` + 16 hex of its SHA-256.

    Prompts that differ only in spacing or line breaks get the same id.
    """
    digest = hashlib.sha256(normalise_prompt(prompt).encode("utf-8")).hexdigest()
    return "p-" + digest[:16]


# ----------------------------------------------------------------------------------------------
# public entry points


def load_prompts(
    path: str | Path,
    *,
    prompt_column: str = "prompt",
    id_column: str = "prompt_id",
    source_column: str = "source",
    default_source: str | None = None,
    split: str | None = None,
    limit: int | None = None,
) -> PromptBatch:
    """Read and validate a prompt pool.

    ``path`` is a ``.jsonl``/``.ndjson``, ``.json`` (a list of objects), ``.parquet`` or ``.csv``
    file, or a directory written by ``Dataset.save_to_disk``/``DatasetDict.save_to_disk``. For a
    ``DatasetDict`` ``split`` picks the split (default ``"train"`` when there is one); ``split``
    is an error for every other kind of input, except a saved ``Dataset`` whose own split is the
    one named. See the module docstring for the validation rules.
    """
    _check_limit(limit)
    p = Path(path)
    origin = str(path)
    if not p.exists():
        raise PromptInputError(origin, "file not found")
    source = default_source if default_source is not None else p.stem

    if p.is_dir():
        records, columns, origin = _read_saved_dataset(p, origin, split)
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
            records, columns = _read_jsonl(p, origin)
            where = "line"
        elif suffix == ".json":
            records, columns = _read_json(p, origin)
            where = "row"
        elif suffix == ".parquet":
            records, columns = _read_parquet(p, origin)
            where = "row"
        elif suffix == ".csv":
            records, columns = _read_csv(p, origin)
            where = "row"
        else:
            raise PromptInputError(
                origin,
                f"unsupported file type {p.suffix or '(no suffix)'!r}; expected one of "
                f"{', '.join(SUPPORTED_SUFFIXES)} or a dataset directory written by save_to_disk",
            )

    return _batch_from_records(
        records,
        columns,
        origin=origin,
        where=where,
        prompt_column=prompt_column,
        id_column=id_column,
        source_column=source_column,
        default_source=source,
        limit=limit,
    )


def prompts_from_frame(
    df: pl.DataFrame,
    *,
    origin: str,
    prompt_column: str = "prompt",
    id_column: str = "prompt_id",
    source_column: str = "source",
    default_source: str | None = None,
    limit: int | None = None,
) -> PromptBatch:
    """Validate prompts already in a polars frame (row ``i`` of the frame is row ``i + 1``).

    Without a source column and without ``default_source`` the source is ``origin``.
    """
    _check_limit(limit)
    if df.height == 0:
        raise PromptInputError(origin, "no rows (the input holds no prompts)")
    records = enumerate(df.iter_rows(named=True), start=1)
    return _batch_from_records(
        records,
        list(df.columns),
        origin=origin,
        where="row",
        prompt_column=prompt_column,
        id_column=id_column,
        source_column=source_column,
        default_source=default_source if default_source is not None else origin,
        limit=limit,
    )


def demo_prompts() -> PromptBatch:
    """The built-in demo pool (48 short prompts in several categories) shipped with the package."""
    return load_prompts(DEMO_PROMPTS_PATH, default_source="general")


# ----------------------------------------------------------------------------------------------
# readers: each returns (numbered records, column names seen)

Records = Iterable[tuple[int, Mapping[str, Any]]]


def _read_text(p: Path, origin: str) -> str:
    try:
        return p.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise PromptInputError(
            origin, f"not UTF-8 text ({exc.reason} at byte {exc.start})"
        ) from exc
    except OSError as exc:
        raise PromptInputError(origin, f"cannot read the file ({exc.strerror or exc})") from exc


def _read_jsonl(p: Path, origin: str) -> tuple[list[tuple[int, dict]], list[str]]:
    text = _read_text(p, origin)
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
    return records, list(columns)


def _read_json(p: Path, origin: str) -> tuple[list[tuple[int, dict]], list[str]]:
    text = _read_text(p, origin)
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
    return records, list(columns)


def _frame_records(df: pl.DataFrame, origin: str) -> tuple[Records, list[str]]:
    if df.height == 0:
        raise PromptInputError(origin, "no rows (the input has columns but no data rows)")
    return enumerate(df.iter_rows(named=True), start=1), list(df.columns)


def _read_parquet(p: Path, origin: str) -> tuple[Records, list[str]]:
    if p.stat().st_size == 0:
        raise PromptInputError(origin, "the file is empty")
    try:
        df = pl.read_parquet(p)
    except Exception as exc:  # polars/arrow raise several error types for corrupt files
        raise PromptInputError(origin, f"cannot read as Parquet ({_first_line(exc)})") from exc
    return _frame_records(df, origin)


def _read_csv(p: Path, origin: str) -> tuple[Records, list[str]]:
    if not _read_text(p, origin).strip():
        raise PromptInputError(origin, "the file is empty")
    try:
        # Everything as text: CSV has no types, so ids stay as written and prompts stay strings.
        df = pl.read_csv(p, infer_schema=False, empty_string_is_null=False)
    except Exception as exc:  # polars raises ComputeError/NoDataError/... on malformed CSV
        raise PromptInputError(origin, f"cannot read as CSV ({_first_line(exc)})") from exc
    return _frame_records(df, origin)


def _read_saved_dataset(p: Path, origin: str, split: str | None) -> tuple[Records, list[str], str]:
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
    records, columns = _frame_records(df, origin)
    return records, columns, origin


# ----------------------------------------------------------------------------------------------
# the shared validation path


def _batch_from_records(
    records: Records,
    columns: list[str],
    *,
    origin: str,
    where: str,
    prompt_column: str,
    id_column: str,
    source_column: str,
    default_source: str,
    limit: int | None,
) -> PromptBatch:
    if prompt_column not in columns:
        found = ", ".join(repr(c) for c in columns) if columns else "none"
        raise PromptInputError(
            origin,
            f"no prompt column {prompt_column!r} (columns found: {found}); "
            "use the prompt_column option to name the column that holds the prompts",
        )
    has_ids = id_column in columns
    has_source = source_column in columns

    ids: list[str] = []
    texts: list[str] = []
    sources: list[str] = []
    duplicates: list[dict] = []
    empty: list[dict] = []
    # id -> (row, normalised text); normalised text -> (row, id)
    by_id: dict[str, tuple[int, str]] = {}
    by_text: dict[str, tuple[int, str]] = {}

    for row, rec in records:
        if limit is not None and len(ids) >= limit:
            break
        value = rec.get(prompt_column, _MISSING)
        if value is _MISSING:
            raise PromptInputError(origin, f"no {prompt_column!r} field", row=row, where=where)
        if not isinstance(value, str):
            raise PromptInputError(
                origin,
                f"the prompt must be text, got {_describe_type(value)}",
                row=row,
                where=where,
            )
        norm = normalise_prompt(value)
        if not norm:
            empty.append({"row": row})
            continue

        pid = _coerce_id(rec.get(id_column), id_column, origin, row, where) if has_ids else None
        if pid is None:
            pid = stable_prompt_id(value)

        seen_id = by_id.get(pid)
        if seen_id is not None:
            first_row, first_norm = seen_id
            if first_norm != norm:
                raise PromptInputError(
                    origin,
                    f"{id_column} {pid!r} is used for two different prompts "
                    f"({where}s {first_row} and {row})",
                    row=row,
                    where=where,
                )
            duplicates.append({"row": row, "prompt_id": pid, "duplicate_of_row": first_row})
            continue
        seen_text = by_text.get(norm)
        if seen_text is not None:
            duplicates.append({"row": row, "prompt_id": pid, "duplicate_of_row": seen_text[0]})
            continue

        src = default_source
        if has_source:
            raw_src = rec.get(source_column)
            if isinstance(raw_src, str):
                if raw_src.strip():
                    src = raw_src.strip()
            elif raw_src is not None:
                raise PromptInputError(
                    origin,
                    f"the {source_column!r} value must be text, got {_describe_type(raw_src)}",
                    row=row,
                    where=where,
                )

        by_id[pid] = (row, norm)
        by_text[norm] = (row, pid)
        ids.append(pid)
        texts.append(value)
        sources.append(src)

    if not ids:
        reasons = []
        if empty:
            reasons.append(f"{len(empty)} empty")
        if duplicates:
            reasons.append(f"{len(duplicates)} duplicate")
        detail = f" ({', '.join(reasons)} dropped)" if reasons else ""
        raise PromptInputError(origin, f"no usable prompts: every row was dropped{detail}")

    frame = pl.DataFrame(
        {"prompt_id": ids, "prompt": texts, "source": sources},
        schema={"prompt_id": pl.String, "prompt": pl.String, "source": pl.String},
    )
    return PromptBatch(prompts=frame, duplicates=duplicates, empty=empty, origin=origin)


def _coerce_id(value: Any, id_column: str, origin: str, row: int, where: str) -> str | None:
    """A row's id as text; ``None`` (missing) means: derive it from the prompt text."""
    if value is None or value is _MISSING:
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise PromptInputError(
            origin,
            f"the {id_column!r} value must be a string or an integer, got {_describe_type(value)}",
            row=row,
            where=where,
        )
    text = str(value).strip()
    if not text:
        raise PromptInputError(origin, f"the {id_column!r} value is empty", row=row, where=where)
    return text


def _describe_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return f"a number ({value!r})"
    if isinstance(value, (list, tuple)):
        return "a list"
    if isinstance(value, dict):
        return "an object (dict)"
    return f"a {type(value).__name__}"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def _check_limit(limit: int | None) -> None:
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(f"limit must be a positive integer or None, got {limit!r}")
