"""Human labels: annotation batches out, label files in, and how several labels become one verdict.

No Dagster and no store here: this module formats, validates and resolves; the callers
(the `annotation_batch` asset, the inbox import, the `judgements` asset) do the I/O around it.

Presentation. Each pair is shown as "A" and "B". Which of the pair's two responses is shown as A
is drawn per round with a seeded, balanced shuffle (half of the pairs swapped, rounded down), so
position bias can neither favour one side of the selection nor stay hidden: the mapping is kept
and every choice is mapped back to the pair's own `a`/`b` when it is imported.

Label files are read by `auf_assets.core.label_files` (formats, locations, and why no message
quotes a file); `validate_labels` checks what was read against the stored pairs.

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
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from auf_assets.core.label_files import LabelLine, ParsedLabels, Problem

__all__ = [
    "LABEL_STUDIO_CONFIG",
    "OUTBOX_COLUMNS",
    "RESOLUTION_RULES",
    "LabelCheck",
    "PairInfo",
    "Resolution",
    "Vote",
    "atomic_write_text",
    "balanced_swaps",
    "batch_records",
    "label_id",
    "map_choice",
    "resolve_votes",
    "to_csv",
    "to_jsonl",
    "to_labelstudio",
    "validate_labels",
    "voter_of",
]

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


@dataclass
class LabelCheck:
    """What `validate_labels` found: the labels to store, or the problems that reject the file."""

    kept: list[LabelLine] = field(default_factory=list)
    repeats: list[int] = field(default_factory=list)  # lines dropped as identical repeats
    problems: list[Problem] = field(default_factory=list)
    truncated: bool = False  # more problems than the file's max_problems: the list stops there


def validate_labels(
    parsed: ParsedLabels,
    pairs: Mapping[str, PairInfo],
    *,
    file_name: str,
    expected_round: str | None = None,
) -> LabelCheck:
    """Check parsed labels against the stored pairs.

    Keeps the labels to store (a repeated identical label of one voter in one file is kept
    once) and lists the lines dropped as such repeats, and the problems: unknown pair, a pair
    never sent out for labelling, a pair of another round than the line or `expected_round`
    says, and one voter giving one pair two different choices in the same file. Problems stop
    at `parsed.max_problems` (then `truncated`), and, like the parser's, never quote the file:
    only a stored pair id, a round id the store or the caller gave and normalised choices.
    """
    check = LabelCheck(problems=list(parsed.problems), truncated=parsed.truncated)
    cap = parsed.max_problems

    def problem(line: int, message: str) -> None:
        if cap is not None and len(check.problems) >= cap:
            check.truncated = True
        else:
            check.problems.append(Problem(line, message))

    seen: dict[tuple[str, str], LabelLine] = {}
    for label in parsed.labels:
        if check.truncated:
            break
        info = pairs.get(label.pair_id)
        if info is None:
            problem(label.line, "unknown pair_id: no pair of any round has it")
            continue
        if info.shown_as_a is None:
            problem(
                label.line,
                f"pair {label.pair_id} of {info.round_id} was never sent out for labelling "
                "(no annotation batch), so A and B mean nothing for it",
            )
            continue
        if label.round_id and label.round_id != info.round_id:
            problem(
                label.line,
                f"pair {label.pair_id} belongs to {info.round_id}, not to the round_id the line "
                "gives",
            )
            continue
        if expected_round and info.round_id != expected_round:
            problem(
                label.line,
                f"pair {label.pair_id} belongs to {info.round_id}, not to {expected_round}",
            )
            continue
        key = (label.pair_id, voter_of(label.annotator, file_name))
        first = seen.get(key)
        if first is None:
            seen[key] = label
            check.kept.append(label)
        elif first.choice == label.choice:
            check.repeats.append(label.line)
        else:
            who = "the same annotator" if label.annotator else "an unnamed annotator"
            problem(
                label.line,
                f"conflicting duplicate: {who} chose {label.choice} for pair "
                f"{label.pair_id}, but {first.choice} at {first.location}",
            )
    return check


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
