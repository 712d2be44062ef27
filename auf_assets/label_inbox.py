"""Importing label files and reporting label progress: one code path for the sensor and the CLI.

A label file is accepted whole or rejected whole. When any line has a problem, nothing of the file
is stored: the file goes to the quarantine folder with a `.reason` file that lists every problem
line, and the person fixes those lines and drops the whole file again. (Keeping the good lines
would make the corrected file a second copy of them: its new content hash gives its labels new
ids, and unnamed annotators would be counted twice.)

Idempotence: a file is known by the SHA-256 of its content. A file already imported adds nothing
when it comes back, and every label id is a hash of (pair, voter, file hash, location), so even a
crash between storing the labels and moving the file cannot duplicate a label.

Where files go: the sensor moves an imported inbox file to the archive folder (`imported/`) and a
rejected one to `quarantine/`; `auf labels import FILE` leaves the user's file where it is and
copies it to quarantine when it is rejected.
"""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

import polars as pl

from auf_assets.core.labels import (
    PairInfo,
    Problem,
    Vote,
    atomic_write_text,
    file_sha256,
    label_format,
    label_id,
    map_choice,
    parse_label_bytes,
    resolve_votes,
    validate_labels,
    voter_of,
)
from auf_assets.partitions import round_index
from resources.labelling import LabellingSettings
from resources.store import DuckDBStore, utcnow

__all__ = [
    "ImportOutcome",
    "RoundLabelStatus",
    "import_label_file",
    "label_status",
    "scan_inbox",
]

# Names a writer uses while a file is incomplete, and files this module writes itself.
_IGNORED_SUFFIXES = (".tmp", ".part", ".partial", ".crdownload", ".swp", ".reason")
MAX_LISTED_PROBLEMS = 200


@dataclass
class ImportOutcome:
    file: str
    path: Path
    status: str  # imported, already_imported, quarantined, error (left in place, retried)
    sha256: str = ""
    format: str = ""
    labels: int = 0
    new_labels: int = 0
    skipped: int = 0
    repeated: int = 0
    rounds: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    moved_to: Path | None = None
    reason_file: Path | None = None

    def summary(self) -> str:
        if self.status == "imported":
            extra = f", {self.skipped} without a choice" if self.skipped else ""
            extra += f", {self.repeated} repeated lines ignored" if self.repeated else ""
            return (
                f"{self.file}: imported {self.new_labels} new labels of {self.labels} for "
                f"{', '.join(self.rounds) or 'no round'}{extra}"
            )
        if self.status == "already_imported":
            return f"{self.file}: already imported (same content), nothing added"
        if self.status == "quarantined":
            first = self.problems[0] if self.problems else "?"
            more = f" (+{len(self.problems) - 1} more)" if len(self.problems) > 1 else ""
            return f"{self.file}: rejected, nothing stored: {first}{more}; see {self.reason_file}"
        return f"{self.file}: could not be read now, will retry: {'; '.join(self.problems)}"


def _free_name(folder: Path, name: str, sha256: str) -> Path:
    target = folder / name
    if not target.exists():
        return target
    p = Path(name)
    return folder / f"{p.stem}.{sha256[:10]}{p.suffix}"


def _place(path: Path, folder: Path, sha256: str, *, keep_original: bool) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    target = _free_name(folder, path.name, sha256)
    if keep_original:
        shutil.copy2(path, target)
    else:
        shutil.move(str(path), target)
    return target


def _reason_text(name: str, sha256: str, problems: Sequence[Problem], inbox: Path) -> str:
    listed = [str(p) for p in problems[:MAX_LISTED_PROBLEMS]]
    if len(problems) > MAX_LISTED_PROBLEMS:
        listed.append(f"... and {len(problems) - MAX_LISTED_PROBLEMS} more problems")
    return (
        f"{name} was rejected: nothing from this file was stored.\n"
        f"sha256: {sha256}\nchecked at: {utcnow().isoformat(timespec='seconds')} UTC\n\n"
        f"{len(problems)} problem(s):\n"
        + "\n".join(listed)
        + f"\n\nFix these lines and drop the whole file into {inbox} again.\n"
    )


def import_label_file(
    path: Path,
    store: DuckDBStore,
    settings: LabellingSettings,
    *,
    expected_round: str | None = None,
    keep_original: bool = False,
) -> ImportOutcome:
    """Validate one label file and store its labels, or quarantine it (module docstring)."""
    path = Path(path)
    data = path.read_bytes()
    sha = file_sha256(data)
    outcome = ImportOutcome(path.name, path, "imported", sha, label_format(path.name) or "")
    known = store.imported_file(sha)
    if known is not None and known["status"] == "imported":
        outcome.status = "already_imported"
        outcome.rounds = [r for r in (known["rounds"] or "").split(",") if r]
        if not keep_original:
            outcome.moved_to = _place(path, settings.archive_dir, sha, keep_original=False)
        return outcome

    parsed = parse_label_bytes(data, path.name)
    outcome.format = parsed.format
    infos = store.pair_infos([label.pair_id for label in parsed.labels])
    pairs = {row["pair_id"]: PairInfo(**row) for row in infos.iter_rows(named=True)}
    kept, repeats, problems = validate_labels(
        parsed, pairs, file_name=path.name, expected_round=expected_round
    )
    now = utcnow()
    file_row = {
        "file_sha256": sha,
        "file": path.name,
        "format": parsed.format,
        "records": parsed.records,
        "labels": len(kept),
        "skipped_records": len(parsed.skipped),
        "repeated_records": len(repeats),
        "rounds": ",".join(sorted({pairs[k.pair_id].round_id for k in kept}, key=_round_order)),
        "reason": None,
        "imported_at": now,
    }
    outcome.skipped, outcome.repeated = len(parsed.skipped), len(repeats)
    if problems:
        problems = sorted(problems, key=lambda p: (p.line is not None, p.line or 0))
        outcome.status = "quarantined"
        outcome.problems = [str(p) for p in problems]
        target = _place(path, settings.quarantine_dir, sha, keep_original=keep_original)
        reason = target.with_name(target.name + ".reason")
        atomic_write_text(reason, _reason_text(path.name, sha, problems, settings.inbox_dir))
        outcome.moved_to, outcome.reason_file = target, reason
        store.record_rejected_file({**file_row, "reason": "; ".join(outcome.problems[:20])})
        return outcome

    rows = []
    for label in kept:
        info = pairs[label.pair_id]
        voter = voter_of(label.annotator, path.name)
        rows.append(
            {
                "label_id": label_id(label.pair_id, voter, sha, label.location),
                "pair_id": label.pair_id,
                "round_id": info.round_id,
                "source": "people",
                "labeller": voter,
                "annotator": label.annotator,
                "raw_choice": label.raw_choice,
                "shown_as_a": info.shown_as_a,
                "choice": map_choice(label.choice, swapped=info.shown_as_a != info.completion_a),
                "comment": label.comment,
                "file": path.name,
                "file_sha256": sha,
                "line": label.line,
                "location": label.location,
                "labelled_at": label.labelled_at or now,
                "imported_at": now,
            }
        )
    frame = pl.DataFrame(
        rows,
        schema={
            "label_id": pl.String,
            "pair_id": pl.String,
            "round_id": pl.String,
            "source": pl.String,
            "labeller": pl.String,
            "annotator": pl.String,
            "raw_choice": pl.String,
            "shown_as_a": pl.String,
            "choice": pl.String,
            "comment": pl.String,
            "file": pl.String,
            "file_sha256": pl.String,
            "line": pl.Int32,
            "location": pl.String,
            "labelled_at": pl.Datetime("us"),
            "imported_at": pl.Datetime("us"),
        },
    )
    outcome.new_labels = store.record_label_file(file_row, frame)
    outcome.labels = frame.height
    outcome.rounds = sorted(set(frame["round_id"]), key=_round_order) if frame.height else []
    if not keep_original:
        outcome.moved_to = _place(path, settings.archive_dir, sha, keep_original=False)
    return outcome


def _ignored(path: Path) -> bool:
    name = path.name
    return name.startswith((".", "~")) or name.lower().endswith(_IGNORED_SUFFIXES)


def scan_inbox(
    store: DuckDBStore, settings: LabellingSettings, cursor: str | None, now: float
) -> tuple[list[ImportOutcome], str, list[str]]:
    """Import every settled file of the inbox; returns (outcomes, new cursor, files waiting).

    The cursor remembers each young file's size and modification time. A file is read once it
    is older than `settle_seconds`, or unchanged since the previous tick: a file still being
    copied in is not read half-way. Processed files leave the inbox.
    """
    try:
        seen = json.loads(cursor)["seen"] if cursor else {}
    except (ValueError, KeyError, TypeError):
        seen = {}
    inbox = settings.inbox_dir
    inbox.mkdir(parents=True, exist_ok=True)
    outcomes, waiting, next_seen = [], [], {}
    for path in sorted(inbox.iterdir()):
        if not path.is_file() or _ignored(path):
            continue
        stat = path.stat()
        fingerprint = f"{stat.st_size}:{stat.st_mtime_ns}"
        if now - stat.st_mtime < settings.settle_seconds and seen.get(path.name) != fingerprint:
            next_seen[path.name] = fingerprint
            waiting.append(path.name)
            continue
        try:
            outcomes.append(import_label_file(path, store, settings))
        except Exception as exc:  # a locked store, a vanished file: leave it, retry next tick
            outcomes.append(
                ImportOutcome(path.name, path, "error", problems=[f"{type(exc).__name__}: {exc}"])
            )
    return outcomes, json.dumps({"seen": next_seen}, sort_keys=True), waiting


@dataclass
class RoundLabelStatus:
    round_id: str
    pairs: int
    labelled_pairs: int
    labels: int
    ties: int
    written_at: datetime | None
    trained_at: datetime | None
    ready: bool  # labelled enough to train on (all pairs, or the partial rule)
    state: str  # not_sent, waiting, ready, trained, retrain
    why: str
    outbox: dict[str, str]
    # Labels imported after the round's reward model was trained (imported_at > its created_at),
    # and the pairs they label. The newest round is trained again on them (state "retrain");
    # once a later round exists they are not used (`superseded_by` names it, `why` says so).
    late_labels: int = 0
    late_pairs: int = 0
    superseded_by: str | None = None


def _round_order(key: str) -> tuple[int, str]:
    """Sort key of round ids by round index (a key outside the pattern goes last)."""
    try:
        return round_index(key), key
    except ValueError:
        return sys.maxsize, key


def _later_round(round_id: str, known: Iterable[str]) -> str | None:
    """The first round after `round_id` among `known`, if any."""
    later = [k for k in known if _round_order(k) > _round_order(round_id)]
    return min(later, key=_round_order) if later else None


def label_status(
    store: DuckDBStore,
    settings: LabellingSettings,
    now: datetime | None = None,
    *,
    registered: Iterable[str] = (),
) -> list[RoundLabelStatus]:
    """Label progress of every round sent out for labelling (or holding labels).

    Two queries whatever the number of rounds (a third when a round has late labels). A trained
    round with labels imported after its reward model was trained is `retrain` while it is the
    newest round: no later round in the store (it took prompts) or in `registered` (the Dagster
    partitions a sensor passes). Training it again once a later round exists would fork the
    chain (the later round started from its old checkpoint), so then the labels are reported as
    not used instead.
    """
    now = now or utcnow()
    progress = store.label_progress()
    labels = store.labels_of_rounds(progress["round_id"].to_list())
    by_round: dict[str, list[dict]] = {}
    for lab in labels.iter_rows(named=True):
        by_round.setdefault(lab["round_id"], []).append(lab)
    registered = list(registered)
    known_rounds: list[str] | None = None  # read from the store only when needed
    out = []
    for row in progress.iter_rows(named=True):
        round_id, pairs, done = row["round_id"], row["pairs"], row["labelled_pairs"]
        rows = by_round.get(round_id, [])
        per_pair: dict[str, list[Vote]] = {}
        for k, lab in enumerate(rows):
            per_pair.setdefault(lab["pair_id"], []).append(
                Vote(lab["labeller"], lab["choice"], lab["labelled_at"], k)
            )
        ties = sum(
            resolve_votes(v, settings.resolution).preference == "tie" for v in per_pair.values()
        )
        written, trained = row["written_at"], row["trained_at"]
        late = [lab for lab in rows if trained is not None and lab["imported_at"] > trained]
        late_pairs = len({lab["pair_id"] for lab in late})
        later = None
        if late:
            if known_rounds is None:
                known_rounds = store.rounds()["round_id"].to_list() + registered
            later = _later_round(round_id, known_rounds)
        waited = now - written if written is not None else timedelta(0)
        enough = pairs > 0 and done / pairs >= settings.min_fraction
        if trained is not None and late and later is None:
            state, ready = "retrain", True
            why = (
                f"{len(late)} labels ({late_pairs} pairs) arrived after its reward model was "
                f"trained: training it again on all {row['labels']} labels ({done}/{pairs} pairs "
                "labelled)"
            )
        elif trained is not None and late:
            state, ready = "trained", True
            why = (
                f"trained; {len(late)} labels ({late_pairs} pairs) arrived after its reward "
                f"model was trained and are NOT used: {later} already started from this "
                f"round's model. Re-running labelled_round for {round_id} would use them, and "
                f"make {later} and every later round stale (they would need re-running too)"
            )
        elif trained is not None:
            state, ready, why = "trained", True, "labels trained on (reward model saved)"
        elif written is None:
            state, ready, why = "not_sent", False, "no annotation batch was written"
        elif pairs and done >= pairs:
            state, ready, why = "ready", True, f"all {pairs} pairs labelled"
        elif enough and waited >= timedelta(hours=settings.wait_hours):
            state, ready = "ready", True
            why = (
                f"{done}/{pairs} pairs labelled (>= {settings.min_fraction:.0%}) and "
                f"{settings.wait_hours:g}h have passed since the batch was written"
            )
        else:
            state, ready = "waiting", False
            need = (
                f"all {pairs} pairs"
                if settings.min_fraction >= 1
                else f"all {pairs} pairs, or {settings.min_fraction:.0%} after "
                f"{settings.wait_hours:g}h"
            )
            why = f"{done}/{pairs} pairs labelled; needs {need}"
        out.append(
            RoundLabelStatus(
                round_id=round_id,
                pairs=pairs,
                labelled_pairs=done,
                labels=row["labels"],
                ties=ties,
                written_at=written,
                trained_at=trained,
                ready=ready,
                state=state,
                why=why,
                outbox={
                    k: row[f"{k}_path"] for k in ("jsonl", "csv", "labelstudio") if row[f"{k}_path"]
                },
                late_labels=len(late),
                late_pairs=late_pairs,
                superseded_by=later,
            )
        )
    return out
