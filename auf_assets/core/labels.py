"""Human labels: annotation batches out, label files in, and how several labels become one verdict.

No Dagster and no store here: this module formats, parses, validates and resolves; the callers
(the `annotation_batch` asset, the inbox import, the `judgements` asset) do the I/O around it.

Presentation. Each pair is shown as "A" and "B". Which of the pair's two responses is shown as A
is drawn per round with a seeded, balanced shuffle (half of the pairs swapped, rounded down), so
position bias can neither favour one side of the selection nor stay hidden: the mapping is kept
and every choice is mapped back to the pair's own `a`/`b` when it is imported.

Label files. JSON Lines (`.jsonl`/`.ndjson`), CSV (`.csv`, header row, `,` `;` or tab) or JSON
(`.json`: a Label Studio export, or a list of flat label records such as Label Studio's JSON-MIN
export). A record needs `pair_id` and `choice` (`A`, `B` or `tie`, any case); `annotator`,
`comment`, `round_id` and `labelled_at` (ISO 8601) are optional, other columns are ignored, so an
outbox file with its `choice` column filled in is a valid label file. A record with an empty
choice is a pair not labelled yet: it is skipped and counted, not an error.

Locations. Problems name where they are, counted as a person counts: the physical line of a JSON
Lines file, the line on which a CSV record starts (the header is line 1), the 1-based item (task)
of a JSON file.

Resolution. A pair labelled more than once keeps every label; `resolve_votes` turns them into one
verdict. One voter, one vote: a voter is the annotator id, or, for a label without one, the file
it came from (`file:<name>`); when one voter labelled a pair more than once only their latest
label counts (a correction). Rule "majority" (the default): the side with more votes among the
votes that prefer a side wins; equal counts, or only tie votes, give "tie". Rule "unanimous":
a side wins only when every counted vote names it; anything else is "tie".
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import random
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

__all__ = [
    "CHOICES",
    "LABEL_STUDIO_CONFIG",
    "OUTBOX_COLUMNS",
    "RESOLUTION_RULES",
    "LabelLine",
    "PairInfo",
    "ParsedLabels",
    "Problem",
    "Resolution",
    "Vote",
    "atomic_write_text",
    "balanced_swaps",
    "batch_records",
    "file_sha256",
    "label_format",
    "label_id",
    "map_choice",
    "normalise_choice",
    "parse_label_bytes",
    "resolve_votes",
    "to_csv",
    "to_jsonl",
    "to_labelstudio",
    "validate_labels",
    "voter_of",
]

CHOICES = ("A", "B", "tie")
RESOLUTION_RULES = ("majority", "unanimous")
Rule = Literal["majority", "unanimous"]
Side = Literal["a", "b", "tie"]

OUTBOX_COLUMNS = (
    "pair_id",
    "round_id",
    "prompt_id",
    "prompt",
    "response_A",
    "response_B",
    "choice",
    "annotator",
    "comment",
)
_FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".json": "json"}

# The Label Studio labelling interface that matches the import files (project settings -> code).
LABEL_STUDIO_CONFIG = """<View>
  <Header value="Which response answers the request better?"/>
  <Text name="prompt" value="$prompt"/>
  <Header value="Response A"/>
  <Text name="response_A" value="$response_A"/>
  <Header value="Response B"/>
  <Text name="response_B" value="$response_B"/>
  <Choices name="choice" toName="prompt" choice="single" required="true" showInline="true">
    <Choice value="A"/>
    <Choice value="B"/>
    <Choice value="tie"/>
  </Choices>
  <TextArea name="comment" toName="prompt" placeholder="optional comment" maxSubmissions="1"/>
</View>
"""


# -- presentation and annotation batches ------------------------------------------------------


def balanced_swaps(pair_ids: Sequence[str], seed: int) -> dict[str, bool]:
    """Which pairs show their `b` response as "A": exactly half of them (rounded down).

    Deterministic in (set of pair ids, seed); the order of `pair_ids` does not matter.
    """
    ordered = sorted(set(pair_ids))
    rng = random.Random(f"{seed}|{'|'.join(ordered)}")
    shuffled = ordered[:]
    rng.shuffle(shuffled)
    swapped = set(shuffled[: len(shuffled) // 2])
    return {pid: pid in swapped for pid in ordered}


def batch_records(pairs: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Rows of an annotation batch from pair rows with the presentation already decided.

    Each input row needs `pair_id`, `round_id`, `prompt_id`, `prompt`, `response_a`,
    `response_b` and `swapped`. The output has `OUTBOX_COLUMNS`, choice/annotator/comment empty.
    """
    records = []
    for p in pairs:
        shown_a, shown_b = (
            (p["response_b"], p["response_a"])
            if p["swapped"]
            else (p["response_a"], p["response_b"])
        )
        records.append(
            {
                "pair_id": p["pair_id"],
                "round_id": p["round_id"],
                "prompt_id": p["prompt_id"],
                "prompt": p["prompt"],
                "response_A": shown_a,
                "response_B": shown_b,
                "choice": "",
                "annotator": "",
                "comment": "",
            }
        )
    return records


def to_jsonl(records: Sequence[Mapping[str, Any]]) -> str:
    return "".join(json.dumps(dict(r), ensure_ascii=False) + "\n" for r in records)


def to_csv(records: Sequence[Mapping[str, Any]]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(OUTBOX_COLUMNS), lineterminator="\n")
    writer.writeheader()
    for r in records:
        writer.writerow({k: r.get(k, "") for k in OUTBOX_COLUMNS})
    return out.getvalue()


def to_labelstudio(records: Sequence[Mapping[str, Any]]) -> str:
    """Label Studio import tasks: one task per pair, the choice left to the annotator."""
    keep = ("pair_id", "round_id", "prompt_id", "prompt", "response_A", "response_B")
    tasks = [{"data": {k: r[k] for k in keep}} for r in records]
    return json.dumps(tasks, ensure_ascii=False, indent=1) + "\n"


def atomic_write_text(path: Path, text: str) -> None:
    """Write `text` to `path` through a temporary file in the same folder and a rename.

    Readers see the old file or the new one, never half of it; a crash leaves at most a hidden
    temporary file behind.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# -- reading label files ----------------------------------------------------------------------


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


def file_sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def label_format(name: str) -> str | None:
    """`jsonl`, `csv` or `json` from the file name; None for anything else."""
    return _FORMATS.get(Path(name).suffix.lower())


def normalise_choice(value: Any) -> str | None:
    """ "A", "B" or "tie" (case and surrounding space ignored); None when empty; else ValueError."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError(f"choice must be A, B or tie, got {value!r}")
    text = value.strip()
    if not text:
        return None
    for choice in CHOICES:
        if text.lower() == choice.lower():
            return choice
    raise ValueError(f"choice must be A, B or tie, got {value!r}")


def parse_label_bytes(data: bytes, name: str) -> ParsedLabels:
    """Read every record of a label file. Problems are collected, not raised."""
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
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        return ParsedLabels(
            fmt,
            problems=[
                Problem(
                    line,
                    f"the file is not UTF-8 text (byte 0x{data[exc.start]:02x} at offset "
                    f"{exc.start}); save it as UTF-8",
                )
            ],
        )
    if not text.strip():
        return ParsedLabels(fmt, problems=[Problem(None, "the file is empty")])
    parsed = {"jsonl": _parse_jsonl, "csv": _parse_csv, "json": _parse_json}[fmt](text)
    if not parsed.problems and not parsed.labels and not parsed.skipped:
        parsed.problems.append(Problem(None, "the file holds no label records"))
    return parsed


def _record(parsed: ParsedLabels, line: int, location: str, row: Mapping[str, Any]) -> None:
    """Validate one flat record (JSON object or CSV row) and add it to `parsed`."""
    parsed.records += 1
    pair_id = row.get("pair_id")
    if pair_id is None or (isinstance(pair_id, str) and not pair_id.strip()):
        parsed.problems.append(Problem(line, "no pair_id"))
        return
    if not isinstance(pair_id, str):
        parsed.problems.append(Problem(line, f"pair_id must be text, got {pair_id!r}"))
        return
    try:
        choice = normalise_choice(row.get("choice"))
    except ValueError as exc:
        parsed.problems.append(Problem(line, str(exc)))
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
            parsed.problems.append(
                Problem(line, f"labelled_at must be an ISO 8601 time, got {raw_when!r}")
            )
            return
    round_id = row.get("round_id")
    parsed.labels.append(
        LabelLine(
            line=line,
            location=location,
            pair_id=pair_id.strip(),
            raw_choice=str(row.get("choice")).strip(),
            choice=choice,
            annotator=_text_or_none(row.get("annotator")),
            comment=_text_or_none(row.get("comment")),
            round_id=_text_or_none(round_id),
            labelled_at=when,
        )
    )


def _parse_jsonl(text: str) -> ParsedLabels:
    parsed = ParsedLabels("jsonl")
    # Only "\n" ends a line: str.splitlines() would also split on U+2028, U+0085 and others,
    # which JSON writers leave unescaped inside strings.
    for number, raw in enumerate(text.split("\n"), start=1):
        if not raw.strip():
            continue
        try:
            row = json.loads(raw)
        except json.JSONDecodeError as exc:
            parsed.problems.append(
                Problem(number, f"not valid JSON ({exc.msg}, column {exc.colno})")
            )
            continue
        if not isinstance(row, dict):
            parsed.problems.append(Problem(number, "a line must be a JSON object"))
            continue
        _record(parsed, number, f"line {number}", row)
    return parsed


def _parse_csv(text: str) -> ParsedLabels:
    parsed = ParsedLabels("csv")
    header_line = text.split("\n", 1)[0]
    delimiter = max(",;\t", key=header_line.count)
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
    try:
        header = [h.strip() for h in next(reader)]
    except (csv.Error, StopIteration) as exc:
        return ParsedLabels("csv", problems=[Problem(1, f"cannot read the header ({exc})")])
    missing = [c for c in ("pair_id", "choice") if c not in header]
    if missing:
        return ParsedLabels(
            "csv",
            problems=[
                Problem(
                    1,
                    f"the header has no {' and no '.join(missing)} column (found: "
                    f"{', '.join(header) or 'nothing'})",
                )
            ],
        )
    if len(set(header)) != len(header):
        dupes = sorted({h for h in header if header.count(h) > 1})
        return ParsedLabels("csv", problems=[Problem(1, f"repeated columns: {', '.join(dupes)}")])
    start = reader.line_num + 1
    while True:
        try:
            cells = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            parsed.problems.append(Problem(start, f"not valid CSV ({exc})"))
            break
        line, start = start, reader.line_num + 1
        if not cells or all(not c.strip() for c in cells):
            continue
        if len(cells) != len(header):
            parsed.problems.append(
                Problem(line, f"{len(cells)} fields where the header has {len(header)}")
            )
            continue
        _record(parsed, line, f"line {line}", dict(zip(header, cells, strict=True)))
    return parsed


def _parse_json(text: str) -> ParsedLabels:
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        return ParsedLabels(
            "json",
            problems=[Problem(exc.lineno, f"not valid JSON ({exc.msg}, column {exc.colno})")],
        )
    if isinstance(doc, dict):
        doc = [doc]
    if not isinstance(doc, list):
        return ParsedLabels("json", problems=[Problem(None, "expected a JSON list of tasks")])
    if any(isinstance(t, dict) and "annotations" in t for t in doc):
        return _parse_labelstudio(doc)
    parsed = ParsedLabels("json")
    for number, row in enumerate(doc, start=1):
        if not isinstance(row, dict):
            parsed.problems.append(Problem(number, "an item must be a JSON object"))
            continue
        _record(parsed, number, f"item {number}", row)
    return parsed


def _parse_labelstudio(tasks: list) -> ParsedLabels:
    """A Label Studio JSON export: tasks with `data` and `annotations`."""
    parsed = ParsedLabels("labelstudio")
    for number, task in enumerate(tasks, start=1):
        if not isinstance(task, dict) or not isinstance(task.get("data"), dict):
            parsed.problems.append(Problem(number, "a task must be an object with a data object"))
            continue
        data = task["data"]
        annotations = task.get("annotations") or []
        if not isinstance(annotations, list):
            parsed.problems.append(Problem(number, "annotations must be a list"))
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
        raise ValueError(value)
    when = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    if when.tzinfo is not None:
        when = when.astimezone(timezone.utc).replace(tzinfo=None)
    return when


# -- checking labels against the stored pairs -------------------------------------------------


@dataclass(frozen=True)
class PairInfo:
    """What the store knows about a pair: its round, and which response was shown as A."""

    pair_id: str
    round_id: str
    completion_a: str
    completion_b: str
    shown_as_a: str | None  # None: never sent out for labelling


def map_choice(choice: str, swapped: bool) -> Side:
    """A presented choice ("A"/"B"/"tie") in the pair's own order ("a"/"b"/"tie")."""
    if choice == "tie":
        return "tie"
    if choice not in ("A", "B"):
        raise ValueError(f"choice must be A, B or tie, got {choice!r}")
    first = choice == "A"
    return "a" if first != swapped else "b"


def voter_of(annotator: str | None, file_name: str) -> str:
    """Who a label counts for: the annotator, or the file for a label without one."""
    return f"annotator:{annotator}" if annotator else f"file:{file_name}"


def label_id(pair_id: str, voter: str, file_hash: str, location: str) -> str:
    """Deterministic id: importing the same file again yields the same ids (adds nothing)."""
    text = "\x1f".join((pair_id, voter, file_hash, location))
    return "lb-" + hashlib.sha256(text.encode("utf-8")).hexdigest()[:20]


def validate_labels(
    parsed: ParsedLabels,
    pairs: Mapping[str, PairInfo],
    *,
    file_name: str,
    expected_round: str | None = None,
) -> tuple[list[LabelLine], list[int], list[Problem]]:
    """Check parsed labels against the stored pairs.

    Returns the labels to keep (a repeated identical label of one voter in one file is kept
    once), the lines dropped as such repeats, and the problems: unknown pair, a pair never sent
    out for labelling, a pair of another round than the line or `expected_round` says, and one
    voter giving one pair two different choices in the same file.
    """
    problems = list(parsed.problems)
    kept: list[LabelLine] = []
    repeats: list[int] = []
    seen: dict[tuple[str, str], LabelLine] = {}
    for label in parsed.labels:
        info = pairs.get(label.pair_id)
        if info is None:
            problems.append(Problem(label.line, f"unknown pair_id {label.pair_id!r}"))
            continue
        if info.shown_as_a is None:
            problems.append(
                Problem(
                    label.line,
                    f"pair {label.pair_id} of {info.round_id} was never sent out for labelling "
                    "(no annotation batch), so A and B mean nothing for it",
                )
            )
            continue
        if label.round_id and label.round_id != info.round_id:
            problems.append(
                Problem(
                    label.line,
                    f"pair {label.pair_id} belongs to {info.round_id}, the line says "
                    f"{label.round_id}",
                )
            )
            continue
        if expected_round and info.round_id != expected_round:
            problems.append(
                Problem(
                    label.line,
                    f"pair {label.pair_id} belongs to {info.round_id}, not to {expected_round}",
                )
            )
            continue
        key = (label.pair_id, voter_of(label.annotator, file_name))
        first = seen.get(key)
        if first is None:
            seen[key] = label
            kept.append(label)
        elif first.choice == label.choice:
            repeats.append(label.line)
        else:
            who = f"annotator {label.annotator!r}" if label.annotator else "an unnamed annotator"
            problems.append(
                Problem(
                    label.line,
                    f"conflicting duplicate: {who} chose {label.choice} for pair "
                    f"{label.pair_id}, but {first.choice} at {first.location}",
                )
            )
    return kept, repeats, problems


# -- resolving several labels into one verdict ------------------------------------------------


@dataclass(frozen=True)
class Vote:
    voter: str
    choice: Side
    labelled_at: datetime
    order: int = 0  # breaks ties in time: later imports / later lines count as later


@dataclass(frozen=True)
class Resolution:
    preference: Literal["a", "b", "tie", "unlabelled"]
    counts: dict[str, int]  # counted votes per side
    n_labels: int  # every label given, corrections included
    voters: tuple[str, ...]


def resolve_votes(votes: Sequence[Vote], rule: Rule = "majority") -> Resolution:
    """One verdict from all labels of one pair (module docstring: the rule in words)."""
    if rule not in RESOLUTION_RULES:
        raise ValueError(f"resolution rule must be one of {RESOLUTION_RULES}, got {rule!r}")
    latest: dict[str, Vote] = {}
    for vote in votes:
        if vote.choice not in ("a", "b", "tie"):
            raise ValueError(f"a vote must be a, b or tie, got {vote.choice!r}")
        held = latest.get(vote.voter)
        if held is None or (vote.labelled_at, vote.order) >= (held.labelled_at, held.order):
            latest[vote.voter] = vote
    counts = {"a": 0, "b": 0, "tie": 0}
    for vote in latest.values():
        counts[vote.choice] += 1
    voters = tuple(sorted(latest))
    if not latest:
        return Resolution("unlabelled", counts, 0, voters)
    if rule == "unanimous":
        sides = {v.choice for v in latest.values()}
        pref = next(iter(sides)) if len(sides) == 1 else "tie"
    elif counts["a"] > counts["b"]:
        pref = "a"
    elif counts["b"] > counts["a"]:
        pref = "b"
    else:
        pref = "tie"
    return Resolution(pref, counts, len(votes), voters)
