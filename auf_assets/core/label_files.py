"""Reading label files: regular files only, streamed, bounded, and never quoted back.

No Dagster and no store here. `auf_assets.label_inbox` opens the file and checks the records
against the stored pairs (`auf_assets.core.labels.validate_labels`).

Formats. JSON Lines (`.jsonl`/`.ndjson`), CSV (`.csv`, header row, `,` `;` or tab) or JSON
(`.json`: a Label Studio export, or a list of flat label records such as Label Studio's JSON-MIN
export), UTF-8 (a byte-order mark is fine). A record needs `pair_id` and `choice` (`A`, `B` or
`tie`, any case); `annotator`, `comment`, `round_id` and `labelled_at` (ISO 8601) are optional,
other columns are ignored, so an outbox file with its `choice` column filled in is a valid label
file. A record with an empty choice is a pair not labelled yet: it is skipped and counted, not an
error.

Locations. Problems name where they are, counted as a person counts: the physical line of a JSON
Lines file, the line on which a CSV record starts (the header is line 1), the 1-based item (task)
of a JSON file.

Safety. A label file comes from outside (anyone who can write to the inbox), so reading one must
not become a way to read, or to leak, something else:
- only a regular file is read. The caller looks at the entry with `os.lstat`
  (`non_regular_kind`) and opens it with `open_regular`, which neither follows a symbolic link
  nor blocks on a fifo and checks that it opened the entry it looked at: a symbolic link (to
  `/etc/shadow` or to a good label file alike), a device, a fifo or a socket is refused without
  its target being opened;
- the file is read as a stream (`parse_label_stream`): memory grows with the labels kept, not
  with the file, and checking stops once `max_problems` problems are found (`truncated`: there
  are more), so a large junk file costs a few lines of reading;
- no problem message quotes the file: it says where (the line) and what is wrong ("the choice is
  not A, B or tie", "no header with a choice column"), never the text found there, so a wrong
  file (a password file, a key) never reaches a console, a `.reason` file or the store. Only
  values already checked against known ones are named: a stored pair id, a normalised choice.
"""

from __future__ import annotations

import csv
import hashlib
import io
import itertools
import json
import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, BinaryIO

__all__ = [
    "CHOICES",
    "FileChangedError",
    "HashingReader",
    "LabelLine",
    "ParsedLabels",
    "Problem",
    "label_format",
    "non_regular_kind",
    "normalise_choice",
    "open_regular",
    "parse_label_bytes",
    "parse_label_stream",
]

CHOICES = ("A", "B", "tie")
_FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".json": "json"}
_CHUNK = 1 << 16  # bytes read at a time

# -- opening a file safely ----------------------------------------------------------------------


class FileChangedError(OSError):
    """The entry opened is not the regular file that was looked at (it was swapped meanwhile)."""


_NON_REGULAR = (
    (stat.S_ISLNK, "a symbolic link"),
    (stat.S_ISDIR, "a folder"),
    (stat.S_ISFIFO, "a named pipe (fifo)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def non_regular_kind(entry: os.stat_result) -> str | None:
    """What an `os.lstat` result is when it is not a regular file ("a symbolic link"), else None."""
    if stat.S_ISREG(entry.st_mode):
        return None
    for test, kind in _NON_REGULAR:
        if test(entry.st_mode):
            return kind
    return "not a regular file"


def open_regular(path: Path, looked_at: os.stat_result) -> io.FileIO:
    """Open `path` for reading, only if it still is the regular file `looked_at` (from lstat).

    O_NOFOLLOW refuses a symbolic link swapped in after the lstat (without opening its target),
    O_NONBLOCK keeps a fifo swapped in from blocking the open, and the fstat comparison refuses
    anything but the same regular file (FileChangedError).
    """
    flags = os.O_RDONLY
    for name in ("O_NOFOLLOW", "O_NONBLOCK", "O_CLOEXEC"):
        flags |= getattr(os, name, 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        raise FileChangedError(f"{path.name} could not be opened as a regular file") from exc
    try:
        opened = os.fstat(fd)
        same = (opened.st_dev, opened.st_ino) == (looked_at.st_dev, looked_at.st_ino)
        if not stat.S_ISREG(opened.st_mode) or not same:
            raise FileChangedError(f"{path.name} was replaced while it was being checked")
        return io.FileIO(fd, "rb", closefd=True)
    except BaseException:
        os.close(fd)
        raise


class HashingReader(io.RawIOBase):
    """A binary stream that hashes (SHA-256) and counts every byte read through it.

    It ends after `limit` bytes (when given): a file that grows while it is read, endlessly or
    past the size limit, is read no further than that (the caller sees `bytes_read` differ).
    """

    def __init__(self, raw: BinaryIO, limit: int | None = None):
        self._raw = raw
        self._sha = hashlib.sha256()
        self._limit = limit
        self.bytes_read = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        if self._limit is not None:
            buffer = memoryview(buffer)[: max(self._limit - self.bytes_read, 0)]
            if not len(buffer):
                return 0
        n = self._raw.readinto(buffer)
        if n:
            self._sha.update(memoryview(buffer)[:n])
            self.bytes_read += n
        return n or 0

    def drain(self) -> None:
        """Read (and hash) the rest of the stream, a chunk at a time."""
        buffer = bytearray(_CHUNK)
        while self.readinto(buffer):
            pass

    def hexdigest(self) -> str:
        return self._sha.hexdigest()


# -- parsing --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a label file; `line` is None for the file as a whole."""

    line: int | None
    message: str

    def __str__(self) -> str:
        return self.message if self.line is None else f"line {self.line}: {self.message}"


@dataclass(frozen=True)
class LabelLine:
    """One label as written in a file, before it is checked against the stored pairs."""

    line: int
    location: str  # "line 7" or "item 3, annotation 2": unique within its file
    pair_id: str
    raw_choice: str
    choice: str  # "A", "B" or "tie"
    annotator: str | None = None
    comment: str | None = None
    round_id: str | None = None
    labelled_at: datetime | None = None


@dataclass
class ParsedLabels:
    format: str
    labels: list[LabelLine] = field(default_factory=list)
    skipped: list[int] = field(default_factory=list)  # records without a choice (not labelled)
    problems: list[Problem] = field(default_factory=list)
    records: int = 0
    max_problems: int | None = None  # None: collect every problem
    truncated: bool = False  # more problems than max_problems: reading stopped at the next one

    def add_problem(self, line: int | None, message: str) -> None:
        """Record a problem; one beyond `max_problems` only marks the file `truncated`."""
        if self.max_problems is not None and len(self.problems) >= self.max_problems:
            self.truncated = True
        else:
            self.problems.append(Problem(line, message))


def label_format(name: str) -> str | None:
    """`jsonl`, `csv` or `json` from the file name; None for anything else."""
    return _FORMATS.get(Path(name).suffix.lower())


def normalise_choice(value: Any) -> str | None:
    """ "A", "B" or "tie" (case and surrounding space ignored); None when empty; else ValueError.

    The error does not quote the value (module docstring).
    """
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError(f"choice must be A, B or tie (it is {_json_kind(value)}, not text)")
    text = value.strip()
    if not text:
        return None
    for choice in CHOICES:
        if text.lower() == choice.lower():
            return choice
    raise ValueError("choice must be A, B or tie (the line holds something else)")


def parse_label_bytes(data: bytes, name: str, max_problems: int | None = None) -> ParsedLabels:
    """`parse_label_stream` of bytes held in memory."""
    return parse_label_stream(io.BytesIO(data), name, max_problems)


def parse_label_stream(
    stream: BinaryIO, name: str, max_problems: int | None = None
) -> ParsedLabels:
    """Read the records of a label file from a binary stream; problems are collected, not raised.

    JSON Lines and CSV are read a line at a time; a `.json` document is read whole (its size is
    the caller's limit). Reading stops after `max_problems` problems (`truncated`), and at the
    first line that is not UTF-8 (the rest of such a file is not worth listing).
    """
    fmt = label_format(name)
    if fmt is None:
        suffix = Path(name).suffix or "(none)"
        return ParsedLabels(
            "unknown",
            problems=[
                Problem(
                    None,
                    f"unsupported file type {suffix}: use .jsonl, .csv or .json "
                    "(a Label Studio export)",
                )
            ],
        )
    buffered = io.BufferedReader(stream, _CHUNK) if isinstance(stream, io.RawIOBase) else None
    # Undecodable bytes become lone surrogates (`_not_utf8_at`), so each one is found on its own
    # line; a strict decoder would fail on a whole chunk, ahead of the line being read.
    text = io.TextIOWrapper(
        buffered or stream,
        encoding="utf-8-sig",
        errors="surrogateescape",
        newline="\n" if fmt == "jsonl" else "",  # JSON Lines: only "\n" ends a line
    )
    try:
        parsed = {"jsonl": _parse_jsonl, "csv": _parse_csv, "json": _parse_json}[fmt](
            text, ParsedLabels(fmt, max_problems=max_problems)
        )
    finally:
        # The caller owns the stream (it may read the rest to hash it): let go without closing.
        text.detach()
        if buffered is not None:
            buffered.detach()
    if not parsed.problems and not parsed.labels and not parsed.skipped:
        parsed.add_problem(None, "the file holds no label records")
    return parsed


def _not_utf8_at(text: str) -> int | None:
    """The index of the first undecodable byte in `text` (decoded with surrogateescape)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        return exc.start
    return None


def _not_utf8(parsed: ParsedLabels, line: int) -> ParsedLabels:
    parsed.add_problem(line, "the file is not UTF-8 text from this line on; save it as UTF-8")
    return parsed


def _json_kind(value: Any) -> str:
    """The JSON type of a value, in words (what a message may say instead of the value)."""
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return "text" if isinstance(value, str) else "empty"


def _record(parsed: ParsedLabels, line: int, location: str, row: Mapping[str, Any]) -> None:
    """Validate one flat record (JSON object or CSV row) and add it to `parsed`."""
    parsed.records += 1
    pair_id = row.get("pair_id")
    if pair_id is None or (isinstance(pair_id, str) and not pair_id.strip()):
        parsed.add_problem(line, "no pair_id")
        return
    if not isinstance(pair_id, str):
        parsed.add_problem(line, f"pair_id must be text (it is {_json_kind(pair_id)})")
        return
    try:
        choice = normalise_choice(row.get("choice"))
    except ValueError as exc:
        parsed.add_problem(line, str(exc))
        return
    if choice is None:
        parsed.skipped.append(line)
        return
    when = None
    raw_when = row.get("labelled_at")
    if raw_when not in (None, ""):
        try:
            when = _parse_time(raw_when)
        except ValueError:
            parsed.add_problem(
                line, "labelled_at must be an ISO 8601 time such as 2026-03-02T14:05:11Z"
            )
            return
    parsed.labels.append(
        LabelLine(
            line=line,
            location=location,
            pair_id=pair_id.strip(),
            raw_choice=str(row.get("choice")).strip(),
            choice=choice,
            annotator=_text_or_none(row.get("annotator")),
            comment=_text_or_none(row.get("comment")),
            round_id=_text_or_none(row.get("round_id")),
            labelled_at=when,
        )
    )


def _parse_jsonl(text: io.TextIOWrapper, parsed: ParsedLabels) -> ParsedLabels:
    blank = True
    for number, raw in enumerate(text, start=1):
        if parsed.truncated:
            break
        if not raw.strip():
            continue
        blank = False
        if _not_utf8_at(raw) is not None:
            return _not_utf8(parsed, number)
        try:
            row = json.loads(raw)
        except json.JSONDecodeError as exc:
            parsed.add_problem(number, f"not valid JSON ({exc.msg}, column {exc.colno})")
            continue
        if not isinstance(row, dict):
            parsed.add_problem(number, "a line must be a JSON object")
            continue
        _record(parsed, number, f"line {number}", row)
    if blank:
        parsed.add_problem(None, "the file is empty")
    return parsed


def _parse_csv(text: io.TextIOWrapper, parsed: ParsedLabels) -> ParsedLabels:
    first = text.readline()
    delimiter = max(",;\t", key=first.count)
    # itertools.chain, not a generator with `yield from`: closing that would close the stream.
    reader = csv.reader(itertools.chain([first], text), delimiter=delimiter, strict=True)
    try:
        header = [h.strip() for h in next(reader)]
    except StopIteration:
        parsed.add_problem(None, "the file is empty")
        return parsed
    except csv.Error as exc:
        parsed.add_problem(1, f"cannot read the header ({exc})")
        return parsed
    if any(_not_utf8_at(h) is not None for h in header):
        return _not_utf8(parsed, 1)
    if not any(header):
        parsed.add_problem(1, "the first line must be the header (pair_id, choice, ...)")
        return parsed
    missing = [c for c in ("pair_id", "choice") if c not in header]
    if missing:
        parsed.add_problem(
            1, f"no header with a {' and a '.join(missing)} column (the first line is the header)"
        )
        return parsed
    if len(set(header)) != len(header):
        parsed.add_problem(1, "the header names a column twice")
        return parsed
    start = reader.line_num + 1
    while not parsed.truncated:
        try:
            cells = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            parsed.add_problem(start, f"not valid CSV ({exc})")
            break
        line, start = start, reader.line_num + 1
        if not cells or all(not c.strip() for c in cells):
            continue
        if any(_not_utf8_at(c) is not None for c in cells):
            return _not_utf8(parsed, line)
        if len(cells) != len(header):
            parsed.add_problem(line, f"{len(cells)} fields where the header has {len(header)}")
            continue
        _record(parsed, line, f"line {line}", dict(zip(header, cells, strict=True)))
    return parsed


def _parse_json(text: io.TextIOWrapper, parsed: ParsedLabels) -> ParsedLabels:
    whole = text.read()
    bad = _not_utf8_at(whole)
    if bad is not None:
        return _not_utf8(parsed, whole.count("\n", 0, bad) + 1)
    if not whole.strip():
        parsed.add_problem(None, "the file is empty")
        return parsed
    try:
        doc = json.loads(whole)
    except json.JSONDecodeError as exc:
        parsed.add_problem(exc.lineno, f"not valid JSON ({exc.msg}, column {exc.colno})")
        return parsed
    del whole
    if isinstance(doc, dict):
        doc = [doc]
    if not isinstance(doc, list):
        parsed.add_problem(None, "expected a JSON list of tasks")
        return parsed
    if any(isinstance(t, dict) and "annotations" in t for t in doc):
        parsed.format = "labelstudio"
        return _parse_labelstudio(doc, parsed)
    for number, row in enumerate(doc, start=1):
        if parsed.truncated:
            break
        if not isinstance(row, dict):
            parsed.add_problem(number, "an item must be a JSON object")
            continue
        _record(parsed, number, f"item {number}", row)
    return parsed


def _parse_labelstudio(tasks: list, parsed: ParsedLabels) -> ParsedLabels:
    """A Label Studio JSON export: tasks with `data` and `annotations`."""
    for number, task in enumerate(tasks, start=1):
        if parsed.truncated:
            break
        if not isinstance(task, dict) or not isinstance(task.get("data"), dict):
            parsed.add_problem(number, "a task must be an object with a data object")
            continue
        data = task["data"]
        annotations = task.get("annotations") or []
        if not isinstance(annotations, list):
            parsed.add_problem(number, "annotations must be a list")
            continue
        labelled = False
        for k, ann in enumerate(annotations, start=1):
            if not isinstance(ann, dict) or ann.get("was_cancelled"):
                continue
            choice, comment = _labelstudio_result(ann.get("result") or [])
            if choice is None:
                continue
            labelled = True
            _record(
                parsed,
                number,
                f"item {number}, annotation {k}",
                {
                    "pair_id": data.get("pair_id"),
                    "round_id": data.get("round_id"),
                    "choice": choice,
                    "comment": comment,
                    "annotator": _labelstudio_annotator(ann.get("completed_by")),
                    "labelled_at": ann.get("updated_at") or ann.get("created_at"),
                },
            )
        if not labelled:
            parsed.records += 1
            parsed.skipped.append(number)
    return parsed


def _labelstudio_result(result: list) -> tuple[Any, str | None]:
    choices, comment = [], None
    for item in result:
        if not isinstance(item, dict):
            continue
        value = item.get("value") or {}
        if item.get("type") == "choices" and isinstance(value.get("choices"), list):
            named = item.get("from_name") == "choice"
            choices.insert(0 if named else len(choices), value["choices"])
        elif item.get("type") == "textarea" and value.get("text"):
            text = value["text"]
            comment = " ".join(text) if isinstance(text, list) else str(text)
    if not choices:
        return None, comment
    first = choices[0]
    return (first[0] if len(first) == 1 else first), comment


def _labelstudio_annotator(completed_by: Any) -> str | None:
    if isinstance(completed_by, dict):
        completed_by = completed_by.get("email") or completed_by.get("id")
    return _text_or_none(completed_by)


def _text_or_none(value: Any) -> str | None:
    if value is None:
        return None
    text = str(value).strip()
    return text or None


def _parse_time(value: Any) -> datetime:
    if not isinstance(value, str):
        raise ValueError("not text")
    when = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    if when.tzinfo is not None:
        when = when.astimezone(timezone.utc).replace(tzinfo=None)
    return when
