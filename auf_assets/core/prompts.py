"""Prompt ingestion: read a prompt pool, validate it, and hand back a clean table.

Every reader ends in the same validation path (`_batch_from_records`), so a prompt pool behaves
the same whether it came from JSON Lines, JSON, CSV, Parquet, a Hugging Face dataset saved
with ``save_to_disk``, a dataset on the Hugging Face Hub (:func:`load_hub_prompts`) or a polars
frame. The result is a :class:`PromptBatch` whose ``prompts`` frame has the columns
``prompt_id``, ``prompt`` and ``source``, one row per distinct prompt, in input order.

Where the prompt is (``prompt_column=None``, the default, means "recognise the layout"):

1. a ``prompt`` column (HuggingFaceH4/ultrafeedback_binarized and most prompt files). If it
   holds chat messages instead of text (TRL's conversational layout), the first user turn is used;
2. an ``instruction`` column (openbmb/UltraFeedback, AlpacaEval);
3. a chat column ``messages``, ``conversations`` or ``chosen`` whose values are lists of
   ``{"role", "content"}`` messages (ShareGPT's ``{"from", "value"}`` too): the prompt is the
   content of the first user turn (``role == "user"``, or ``from`` ``human``/``user``).

The first rule whose column is there wins (for rule 3 the column must also hold chat messages;
a ``chosen`` column of plain text, as in Anthropic HH, is not a prompt). A ``prompt_column``
given by name is used as is: text, or chat messages (first user turn). Without a ``source``
column a text ``dataset`` column (AlpacaEval) is the source, when ``source_column`` is the
default ``"source"``.

Rules, in short:

* Row numbers in messages and reports are 1-based, as a person counts them. For JSON Lines the
  row is the line number in the file (blank lines count as lines but hold no prompt); for CSV it
  is the data row (the header line is not counted); otherwise it is the record's position.
* A missing id column means ids are derived from the text (:func:`stable_prompt_id`). A missing
  source column means every prompt gets ``default_source`` or, failing that, the file's stem.
* Empty or whitespace-only prompts are dropped and reported. Repeats (the same id with the same
  text, or the same whitespace-normalised text) are dropped and reported, the first one is kept.
* Prompts longer than ``max_prompt_chars`` characters (default :data:`MAX_PROMPT_CHARS`, about
  4,000 tokens of English; ``None``: no maximum) are dropped and reported with their ids: a
  pasted document of megabytes would otherwise be generated for at the speed of its whole
  context, or cut to it. Where a prompt still exceeds a model's context, generation keeps its
  start and its end (:func:`head_and_tail`), so an instruction at either end survives.
* Anything else that is wrong raises :class:`PromptInputError` and nothing is returned: the file
  is missing or unreadable, it holds no rows, no prompt column is found, a prompt is not text, a
  chat has no user turn, an id is not a string or an integer, or one id names two different
  prompts. Hub errors (bad id, not cached while offline, unknown split or config) are
  :class:`PromptInputError` too.
* ``limit`` keeps the first N valid prompts; rows after the N-th kept prompt are not examined.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import re
import unicodedata
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

__all__ = [
    "DEMO_PROMPTS_PATH",
    "MAX_PROMPT_CHARS",
    "SUPPORTED_SUFFIXES",
    "PromptBatch",
    "PromptInputError",
    "demo_prompts",
    "head_and_tail",
    "keep_head_and_tail",
    "load_hub_prompts",
    "load_prompts",
    "normalise_prompt",
    "prompts_from_frame",
    "stable_prompt_id",
]

DEMO_PROMPTS_PATH = Path(__file__).resolve().parent / "data" / "demo_prompts.jsonl"

SUPPORTED_SUFFIXES = (".jsonl", ".ndjson", ".json", ".parquet", ".csv")

# The longest prompt ingestion accepts, in characters (about 4,000 tokens of English text).
MAX_PROMPT_CHARS = 16_000

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
    ``{"row"}``; ``too_long`` the prompts over ``max_prompt_chars`` as
    ``{"row", "prompt_id", "chars"}``. ``origin`` says where the prompts came from (a path or a
    dataset description).
    """

    prompts: pl.DataFrame
    duplicates: list[dict] = field(default_factory=list)
    empty: list[dict] = field(default_factory=list)
    origin: str = ""
    too_long: list[dict] = field(default_factory=list)
    max_prompt_chars: int | None = MAX_PROMPT_CHARS

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
        if self.too_long:
            dropped.append(f"{len(self.too_long)} over {self.max_prompt_chars:,} characters")
        if dropped:
            line += f" ({', '.join(dropped)} dropped)"
        return line

    def too_long_report(self, shown: int = 10) -> str | None:
        """What was dropped for its length, naming ids and the setting (None: nothing)."""
        if not self.too_long:
            return None
        ids = [entry["prompt_id"] for entry in self.too_long]
        more = f" and {len(ids) - shown} more" if len(ids) > shown else ""
        longest = max(entry["chars"] for entry in self.too_long)
        return (
            f"{len(ids)} prompt{'' if len(ids) == 1 else 's'} longer than "
            f"{self.max_prompt_chars:,} characters dropped (the longest has {longest:,}): "
            f"{', '.join(ids[:shown])}{more}; raise max_prompt_chars to keep them"
        )


def head_and_tail(length: int, limit: int) -> tuple[int, int]:
    """How many leading and trailing units (characters, tokens) of something ``length`` long to
    keep within ``limit``: everything when it fits, else three quarters of ``limit`` from the
    start (where an instruction usually is) and a quarter from the end (a question asked last)."""
    if length <= limit:
        return length, 0
    tail = limit // 4
    return limit - tail, tail


def keep_head_and_tail(text: str, limit: int, marker: str) -> str:
    """``text`` cut to ``limit`` characters by :func:`head_and_tail`, with ``marker`` (formatted
    with ``n``, the characters left out) where the middle was cut."""
    head, tail = head_and_tail(len(text), limit)
    if not tail:
        return text
    return text[:head] + marker.format(n=len(text) - head - tail) + text[len(text) - tail :]


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
    prompt_column: str | None = None,
    id_column: str = "prompt_id",
    source_column: str = "source",
    default_source: str | None = None,
    split: str | None = None,
    limit: int | None = None,
    max_prompt_chars: int | None = MAX_PROMPT_CHARS,
) -> PromptBatch:
    """Read and validate a prompt pool.

    ``path`` is a ``.jsonl``/``.ndjson``, ``.json`` (a list of objects), ``.parquet`` or ``.csv``
    file, or a directory written by ``Dataset.save_to_disk``/``DatasetDict.save_to_disk``. For a
    ``DatasetDict`` ``split`` picks the split (default ``"train"`` when there is one); ``split``
    is an error for every other kind of input, except a saved ``Dataset`` whose own split is the
    one named. ``prompt_column=None`` recognises the layout (see the module docstring, which also
    has the validation rules).
    """
    _check_limit(limit)
    _check_limit(max_prompt_chars, "max_prompt_chars")
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
            table = _read_jsonl(p, origin)
            where = "line"
        elif suffix == ".json":
            table = _read_json(p, origin)
            where = "row"
        elif suffix == ".parquet":
            table = _read_parquet(p, origin)
            where = "row"
        elif suffix == ".csv":
            table = _read_csv(p, origin)
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
    ``prompt_column=None`` recognises the layout (see the module docstring).
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


def load_hub_prompts(
    dataset_id: str,
    *,
    split: str = "train",
    config_name: str | None = None,
    revision: str | None = None,
    prompt_column: str | None = None,
    id_column: str = "prompt_id",
    source_column: str = "source",
    default_source: str | None = None,
    limit: int | None = None,
    max_prompt_chars: int | None = MAX_PROMPT_CHARS,
) -> PromptBatch:
    """Read and validate the prompts of a dataset on the Hugging Face Hub.

    ``dataset_id`` is a Hub id such as ``"HuggingFaceH4/ultrafeedback_binarized"``; it is loaded
    with ``datasets.load_dataset(dataset_id, name=config_name, split=split, revision=revision)``,
    so the local ``datasets`` cache is used and, with ``HF_HUB_OFFLINE=1``, only the cache (which
    then serves the latest cached version whatever ``revision`` says). The rows then go through
    the same validation as files (:func:`prompts_from_frame`); the layout is recognised when
    ``prompt_column`` is ``None``. Without a source column the source is ``default_source`` or
    the dataset id. ``origin`` reads ``hf://datasets/{id}[:{config}] split={split}[@{revision}]``.

    Raises :class:`PromptInputError` for a malformed id, a dataset that is neither reachable nor
    cached (the message says whether offline mode is on and how to fix it), an unknown split or
    config (listing the available ones when ``datasets`` names them), or any other load failure.
    """
    _check_limit(limit)
    _check_limit(max_prompt_chars, "max_prompt_chars")
    origin = f"hf://datasets/{dataset_id}"
    if config_name:
        origin += f":{config_name}"
    origin += f" split={split}"
    if revision:
        origin += f"@{revision}"
    _check_hub_id(dataset_id, origin)

    import datasets  # imported here: slow to import and only needed for this input kind

    try:
        loaded = datasets.load_dataset(dataset_id, name=config_name, split=split, revision=revision)
    except Exception as exc:  # datasets/huggingface_hub raise many kinds; all become one kind
        raise _hub_load_error(exc, dataset_id, origin, split, config_name, datasets) from exc

    if isinstance(loaded, Mapping):  # a DatasetDict: only when split=None slips through
        splits = [str(k) for k in loaded]
        if "train" not in loaded:
            raise PromptInputError(
                origin, f"no split was named; pass split= one of {', '.join(splits)}"
            )
        loaded = loaded["train"]
    try:
        df = loaded.to_polars()
    except Exception as exc:
        raise PromptInputError(origin, f"cannot read the dataset ({_first_line(exc)})") from exc
    return prompts_from_frame(
        df,
        origin=origin,
        prompt_column=prompt_column,
        id_column=id_column,
        source_column=source_column,
        default_source=default_source if default_source is not None else dataset_id,
        limit=limit,
        max_prompt_chars=max_prompt_chars,
    )


def demo_prompts() -> PromptBatch:
    """The built-in demo pool (48 short prompts in several categories) shipped with the package."""
    return load_prompts(DEMO_PROMPTS_PATH, default_source="general")


# ----------------------------------------------------------------------------------------------
# the Hugging Face Hub

# A Hub dataset id: "name" or "namespace/name"; letters, digits, "-", "_", "."; at most 96 each.
_HUB_ID_PART = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9])?")
_TRUE_VALUES = {"1", "ON", "YES", "TRUE"}
_HUB_FIX = (
    "run this once with network access (HF_HUB_OFFLINE unset or HF_HUB_OFFLINE=0) so that "
    "datasets downloads and caches it, or download it first with datasets.load_dataset({call}) "
    "where the Hub is reachable and reuse that datasets cache (HF_DATASETS_CACHE)"
)


def _hub_fix(dataset_id: str, config_name: str | None) -> str:
    call = repr(dataset_id) if not config_name else f"{dataset_id!r}, {config_name!r}"
    return _HUB_FIX.format(call=call)


def _check_hub_id(dataset_id: Any, origin: str) -> None:
    if not isinstance(dataset_id, str) or not dataset_id.strip():
        raise PromptInputError(
            origin,
            f"malformed dataset id {dataset_id!r}: expected a Hub id like 'owner/name'",
        )
    parts = dataset_id.split("/")
    problem = None
    if "://" in dataset_id or dataset_id.startswith(("/", ".", "~")) or "\\" in dataset_id:
        problem = "it looks like a URL or a local path"
    elif len(parts) > 2:
        problem = "it has more than one '/'"
    elif not all(_HUB_ID_PART.fullmatch(part) for part in parts):
        problem = (
            "each part may only hold letters, digits, '-', '_' and '.', must start and end with a "
            "letter or digit and be at most 96 characters"
        )
    elif "--" in dataset_id or ".." in dataset_id:
        problem = "'--' and '..' are not allowed in Hub ids"
    if problem is not None:
        hint = ""
        if Path(dataset_id).expanduser().exists():
            hint = "; for a local file or saved dataset use load_prompts (the path option)"
        raise PromptInputError(
            origin,
            f"malformed dataset id {dataset_id!r}: {problem}; expected a Hub id like "
            f"'owner/name' (e.g. 'HuggingFaceH4/ultrafeedback_binarized'){hint}",
        )
    if len(parts) == 1 and dataset_id.lower() in _packaged_builders():
        raise PromptInputError(
            origin,
            f"{dataset_id!r} names a built-in datasets file reader, not a Hub dataset; "
            "for local files use load_prompts (the path option)",
        )


def _packaged_builders() -> set[str]:
    try:
        from datasets.packaged_modules import _PACKAGED_DATASETS_MODULES
    except Exception:  # a private name; fall back to the usual ones
        return {"arrow", "csv", "json", "parquet", "text", "pandas", "sql", "webdataset"}
    return set(_PACKAGED_DATASETS_MODULES)


def _hub_offline(datasets_module: Any) -> bool:
    """Whether Hub offline mode is on (datasets reads the variable once, at import)."""
    if getattr(getattr(datasets_module, "config", None), "HF_HUB_OFFLINE", False):
        return True
    try:
        from huggingface_hub import constants

        if getattr(constants, "HF_HUB_OFFLINE", False):
            return True
    except Exception:
        pass
    return any(
        os.environ.get(name, "").strip().upper() in _TRUE_VALUES
        for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
    )


def _listed_names(text: str, pattern: str) -> str | None:
    """The ``[...]`` list after ``pattern`` in an error text, as ``a, b, c`` (None: not there)."""
    match = re.search(pattern + r"\s*(\[[^\]]*\])", text)
    if match is None:
        return None
    try:
        names = ast.literal_eval(match.group(1))
    except (ValueError, SyntaxError):
        return match.group(1)
    return ", ".join(str(n) for n in names) if names else "none"


def _hub_load_error(
    exc: Exception,
    dataset_id: str,
    origin: str,
    split: str,
    config_name: str | None,
    datasets_module: Any,
) -> PromptInputError:
    """Turn what ``datasets.load_dataset`` raised into a message a user can act on."""
    text = str(exc)
    said = f" (datasets said: {_first_line(exc)})"
    offline = _hub_offline(datasets_module)
    offline_note = " (offline mode is on: only the local cache is read)" if offline else ""

    if isinstance(exc, ValueError):
        if "Unknown split" in text or "Bad split" in text:
            names = _listed_names(text, r"(?:Should be one of|Available splits:)")
            advice = (
                f"available splits: {names}; pass one of them as split"
                if names
                else "pass an existing split (see the dataset page)"
            )
            return PromptInputError(
                origin, f"no split {split!r} in dataset {dataset_id!r}; {advice}"
            )
        if "Config name is missing" in text:
            names = _listed_names(text, r"available configs:")
            return PromptInputError(
                origin,
                f"dataset {dataset_id!r} has several configs and none was named; pass "
                f"config_name= one of {names or '(see the dataset page)'}",
            )
        if "configurations in the cache" in text:
            match = re.search(r"configurations in the cache:\s*([^\n]*)", text)
            names = match.group(1).strip() if match else "(see the cache)"
            return PromptInputError(
                origin,
                f"the local cache holds several configs of dataset {dataset_id!r} and none was "
                f"named{offline_note}; pass config_name= one of {names}",
            )
        if "BuilderConfig" in text and "not found" in text:
            names = _listed_names(text, r"Available:")
            listing = f"; available configs: {names}" if names else ""
            return PromptInputError(
                origin, f"no config {config_name!r} in dataset {dataset_id!r}{listing}"
            )
        if "Couldn't find cache for" in text:
            names = _listed_names(text, r"Available configs in the cache:")
            listing = f"; configs in the cache: {names}" if names else ""
            fix = _hub_fix(dataset_id, config_name)
            return PromptInputError(
                origin,
                f"config {config_name!r} of dataset {dataset_id!r} is not in the local cache"
                f"{offline_note}{listing}; to get it, {fix}",
            )

    not_found_types: tuple[type[BaseException], ...] = (ConnectionError, FileNotFoundError)
    dataset_not_found = getattr(
        getattr(datasets_module, "exceptions", None), "DatasetNotFoundError", None
    )
    data_files_not_found = getattr(
        getattr(datasets_module, "exceptions", None), "DataFilesNotFoundError", None
    )
    if isinstance(dataset_not_found, type):
        not_found_types += (dataset_not_found,)
    if isinstance(data_files_not_found, type) and isinstance(exc, data_files_not_found):
        return PromptInputError(
            origin, f"dataset {dataset_id!r} holds no data files that datasets can read{said}"
        )
    if isinstance(exc, not_found_types):
        fix = _hub_fix(dataset_id, config_name)
        if offline:
            return PromptInputError(
                origin,
                f"dataset {dataset_id!r} is not cached locally and offline mode is on "
                f"(HF_HUB_OFFLINE=1), so the Hub is not asked; to get it, {fix}{said}",
            )
        if isinstance(exc, ConnectionError):
            return PromptInputError(
                origin,
                f"could not reach the Hugging Face Hub for dataset {dataset_id!r} and it is not "
                f"cached locally; check the network (or a proxy), or {fix}{said}",
            )
        return PromptInputError(
            origin,
            f"dataset {dataset_id!r} was not found on the Hugging Face Hub nor in the local "
            "cache; check the id and revision, and for a private or gated dataset log in "
            f"(`hf auth login` or HF_TOKEN) and accept its terms{said}",
        )
    return PromptInputError(origin, f"cannot load dataset {dataset_id!r}{offline_note}{said}")


# ----------------------------------------------------------------------------------------------
# readers: each returns a _Table (column names, numbered records, a peek at each column)

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


def _read_text(p: Path, origin: str) -> str:
    try:
        return p.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise PromptInputError(
            origin, f"not UTF-8 text ({exc.reason} at byte {exc.start})"
        ) from exc
    except OSError as exc:
        raise PromptInputError(origin, f"cannot read the file ({exc.strerror or exc})") from exc


def _read_jsonl(p: Path, origin: str) -> _Table:
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
    return _records_table(records, list(columns))


def _read_json(p: Path, origin: str) -> _Table:
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
    return _records_table(records, list(columns))


def _frame_records(df: pl.DataFrame, origin: str) -> _Table:
    if df.height == 0:
        raise PromptInputError(origin, "no rows (the input has columns but no data rows)")
    return _frame_table(df)


def _read_parquet(p: Path, origin: str) -> _Table:
    if p.stat().st_size == 0:
        raise PromptInputError(origin, "the file is empty")
    try:
        df = pl.read_parquet(p)
    except Exception as exc:  # polars/arrow raise several error types for corrupt files
        raise PromptInputError(origin, f"cannot read as Parquet ({_first_line(exc)})") from exc
    return _frame_records(df, origin)


def _read_csv(p: Path, origin: str) -> _Table:
    if not _read_text(p, origin).strip():
        raise PromptInputError(origin, "the file is empty")
    try:
        # Everything as text: CSV has no types, so ids stay as written and prompts stay strings.
        df = pl.read_csv(p, infer_schema=False, empty_string_is_null=False)
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


# ----------------------------------------------------------------------------------------------
# the shared validation path


_CHAT_COLUMNS = ("messages", "conversations", "chosen")
_LAYOUTS_TRIED = (
    "a 'prompt' column, an 'instruction' column (UltraFeedback, AlpacaEval), or a chat column "
    "'messages', 'conversations' or 'chosen' holding lists of {role, content} messages (first "
    "user turn)"
)
_USER_ROLES = ("user", "human")


@dataclass(frozen=True)
class _Layout:
    column: str
    chat: bool  # values are lists of chat messages; the prompt is the first user turn


def _is_message(value: Any) -> bool:
    return isinstance(value, Mapping) and (
        ("role" in value and "content" in value) or ("from" in value and "value" in value)
    )


def _is_chat(value: Any) -> bool:
    """A non-empty list of ``{"role", "content"}`` (or ShareGPT ``{"from", "value"}``) objects."""
    return isinstance(value, (list, tuple)) and bool(value) and all(_is_message(m) for m in value)


def _resolve_layout(table: _Table, prompt_column: str | None, origin: str) -> _Layout:
    columns = table.columns
    found = ", ".join(repr(c) for c in columns) if columns else "none"
    if prompt_column is not None:
        if prompt_column not in columns:
            raise PromptInputError(
                origin,
                f"no prompt column {prompt_column!r} (columns found: {found}); "
                "use the prompt_column option to name the column that holds the prompts",
            )
        return _Layout(prompt_column, _is_chat(table.first_value(prompt_column)))

    # a 'prompt' or 'instruction' column wins when present, whatever it holds: a prompt that is
    # not text is then reported on its row rather than another column being read silently
    for name in ("prompt", "instruction"):
        if name in columns:
            return _Layout(name, _is_chat(table.first_value(name)))
    skipped = []
    for name in _CHAT_COLUMNS:
        if name in columns:
            if _is_chat(table.first_value(name)):
                return _Layout(name, True)
            skipped.append(name)
    note = ""
    if skipped:
        listed = ", ".join(repr(c) for c in skipped)
        note = f"; {listed} {'is' if len(skipped) == 1 else 'are'} there but not chat messages"
    raise PromptInputError(
        origin,
        f"no prompt column found (columns found: {found}); looked for {_LAYOUTS_TRIED}{note}; "
        "use the prompt_column option to name the column that holds the prompts",
    )


def _resolve_source_column(table: _Table, source_column: str) -> str | None:
    if source_column in table.columns:
        return source_column
    # AlpacaEval names the origin of each instruction 'dataset'
    if (
        source_column == "source"
        and "dataset" in table.columns
        and isinstance(table.first_value("dataset"), str)
    ):
        return "dataset"
    return None


def _first_user_turn(value: Any, column: str, origin: str, row: int, where: str) -> Any:
    """The content of the first user turn of a chat (not checked for being text here)."""
    if not isinstance(value, (list, tuple)) or not all(_is_message(m) for m in value):
        raise PromptInputError(
            origin,
            f"the {column!r} value must be a list of chat messages ({{role, content}} objects), "
            f"got {_describe_type(value)}",
            row=row,
            where=where,
        )
    roles = []
    for message in value:
        if "role" in message and "content" in message:
            role, content = message.get("role"), message.get("content")
        else:
            role, content = message.get("from"), message.get("value")
        if isinstance(role, str) and role.strip().lower() in _USER_ROLES:
            return content
        roles.append(str(role))
    seen = ", ".join(dict.fromkeys(roles)) if roles else "none"
    raise PromptInputError(
        origin,
        f"no user turn in the {column!r} chat (roles found: {seen})",
        row=row,
        where=where,
    )


def _batch_from_records(
    table: _Table,
    *,
    origin: str,
    where: str,
    prompt_column: str | None,
    id_column: str,
    source_column: str,
    default_source: str,
    limit: int | None,
    max_prompt_chars: int | None,
) -> PromptBatch:
    layout = _resolve_layout(table, prompt_column, origin)
    column = layout.column
    has_ids = id_column in table.columns
    source_name = _resolve_source_column(table, source_column)

    ids: list[str] = []
    texts: list[str] = []
    sources: list[str] = []
    duplicates: list[dict] = []
    empty: list[dict] = []
    too_long: list[dict] = []
    # id -> (row, normalised text); normalised text -> (row, id)
    by_id: dict[str, tuple[int, str]] = {}
    by_text: dict[str, tuple[int, str]] = {}

    wanted = [column] + [c for c in (id_column, source_name) if c in table.columns]
    for row, rec in table.rows(wanted):
        if limit is not None and len(ids) >= limit:
            break
        value = rec.get(column, _MISSING)
        if value is _MISSING:
            raise PromptInputError(origin, f"no {column!r} field", row=row, where=where)
        if layout.chat:
            value = _first_user_turn(value, column, origin, row, where)
            if not isinstance(value, str):
                raise PromptInputError(
                    origin,
                    f"the first user turn in the {column!r} chat must be text, "
                    f"got {_describe_type(value)}",
                    row=row,
                    where=where,
                )
        elif not isinstance(value, str):
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
        if max_prompt_chars is not None and len(value) > max_prompt_chars:
            too_long.append({"row": row, "prompt_id": pid, "chars": len(value)})
            continue

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
        if source_name is not None:
            raw_src = rec.get(source_name)
            if isinstance(raw_src, str):
                if raw_src.strip():
                    src = raw_src.strip()
            elif raw_src is not None:
                raise PromptInputError(
                    origin,
                    f"the {source_name!r} value must be text, got {_describe_type(raw_src)}",
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
        if too_long:
            reasons.append(f"{len(too_long)} over max_prompt_chars={max_prompt_chars:,}")
        detail = f" ({', '.join(reasons)} dropped)" if reasons else ""
        raise PromptInputError(origin, f"no usable prompts: every row was dropped{detail}")

    frame = pl.DataFrame(
        {"prompt_id": ids, "prompt": texts, "source": sources},
        schema={"prompt_id": pl.String, "prompt": pl.String, "source": pl.String},
    )
    return PromptBatch(
        prompts=frame,
        duplicates=duplicates,
        empty=empty,
        origin=origin,
        too_long=too_long,
        max_prompt_chars=max_prompt_chars,
    )


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


def _check_limit(limit: int | None, name: str = "limit") -> None:
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(f"{name} must be a positive integer or None, got {limit!r}")
