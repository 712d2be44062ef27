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

Refused before reading (`auf_assets.core.label_files`, "Safety"): an entry that is not a regular
file (a symbolic link, a device, a fifo, a socket) and a file larger than `max_file_mb`. Nothing
of it is read: the inbox moves the entry itself into quarantine (a rename: a link stays a link,
a large file is not copied) with a `.reason`; `auf labels import` only prints why. Such a file
has no content hash, so the store keeps no row for it. A file checked and rejected lists at most
`max_problems` problems, then says there are more.

`auf labels import` applies the inbox's settle rule to its file (`settle`): a file modified less
than `settle_seconds` ago is read only if it did not change over that time, else refused (it is
still being written). A file whose size or time changed while it was read is read again later
(the inbox) or refused (the command): never stored half.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

import polars as pl

from auf_assets.core.label_files import (
    FileChangedError,
    HashingReader,
    Problem,
    label_format,
    non_regular_kind,
    open_regular,
    parse_label_stream,
)
from auf_assets.core.labels import (
    PairInfo,
    Vote,
    atomic_write_text,
    label_id,
    map_choice,
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
    "in_this_home",
    "settle",
    "label_status",
    "scan_inbox",
]

# Names a writer uses while a file is incomplete, and files this module writes itself.
_IGNORED_SUFFIXES = (".tmp", ".part", ".partial", ".crdownload", ".swp", ".reason")


@dataclass
class ImportOutcome:
    file: str
    path: Path
    # imported, already_imported, quarantined (checked and rejected), refused (not read: not a
    # regular file, too large), error (left in place, retried)
    status: str
    sha256: str = ""
    format: str = ""
    labels: int = 0
    new_labels: int = 0
    skipped: int = 0
    repeated: int = 0
    rounds: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    more_problems: bool = False  # checking stopped at max_problems: the file has more
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
        where = f"; see {self.reason_file}" if self.reason_file else ""
        if self.status == "quarantined":
            first = self.problems[0] if self.problems else "?"
            more = f" (+{len(self.problems) - 1} more)" if len(self.problems) > 1 else ""
            more += " (and more)" if self.more_problems else ""
            return f"{self.file}: rejected, nothing stored: {first}{more}{where}"
        if self.status == "refused":
            return f"{self.file}: refused, not read: {'; '.join(self.problems)}{where}"
        return f"{self.file}: could not be read now, will retry: {'; '.join(self.problems)}"


def _free_name(folder: Path, name: str, tag: str) -> Path:
    target = folder / name
    if not target.exists() and not target.is_symlink():
        return target
    p = Path(name)
    return folder / f"{p.stem}.{tag[:10]}{p.suffix}"


def _place(path: Path, folder: Path, sha256: str, *, keep_original: bool) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    target = _free_name(folder, path.name, sha256)
    if keep_original:
        shutil.copy2(path, target, follow_symlinks=False)  # a link swapped in is not followed
    else:
        shutil.move(str(path), target)
    return target


def _problem_lines(problems: Sequence[Problem], more: bool) -> str:
    listed = "\n".join(str(p) for p in problems)
    if more:
        return (
            f"the first {len(problems)} problem(s) (checking stopped there; the file has "
            f"more):\n{listed}\n... and more"
        )
    return f"{len(problems)} problem(s):\n{listed}"


def _reason_text(
    name: str, sha256: str, problems: Sequence[Problem], more: bool, inbox: Path
) -> str:
    return (
        f"{name} was rejected: nothing from this file was stored.\n"
        f"sha256: {sha256}\nchecked at: {utcnow().isoformat(timespec='seconds')} UTC\n\n"
        + _problem_lines(problems, more)
        + f"\n\nFix these lines and drop the whole file into {inbox} again.\n"
    )


def _refuse(path: Path, settings: LabellingSettings, why: str, *, in_place: bool) -> ImportOutcome:
    """Refuse a file without reading it (module docstring).

    From the inbox the entry itself is renamed into quarantine (a link stays a link, nothing is
    copied) with a `.reason`; `in_place` (the CLI) leaves it where it is and writes nothing.
    """
    outcome = ImportOutcome(path.name, path, "refused", format=label_format(path.name) or "")
    outcome.problems = [why]
    if in_place:
        return outcome
    folder = settings.quarantine_dir
    folder.mkdir(parents=True, exist_ok=True)
    target = _free_name(folder, path.name, utcnow().strftime("%Y%m%d%H%M%S%f"))
    try:
        os.rename(path, target)  # never opens the entry; fails across file systems
    except OSError as exc:
        outcome.status = "error"
        outcome.problems.append(
            f"it could not be moved to {folder} ({exc.strerror}) and stays in the inbox"
        )
        return outcome
    reason = target.with_name(target.name + ".reason")
    atomic_write_text(
        reason,
        f"{path.name} was refused: nothing of it was read or stored.\n"
        f"checked at: {utcnow().isoformat(timespec='seconds')} UTC\n\n{why}\n",
    )
    outcome.moved_to, outcome.reason_file = target, reason
    return outcome


def _refusal(entry: os.stat_result, settings: LabellingSettings) -> str | None:
    """Why a directory entry is not read at all (not a regular file, too large), or None."""
    kind = non_regular_kind(entry)
    if kind is not None:
        return (
            f"it is {kind}, not a regular file: label files are read only from regular files "
            "(a link is not followed). Put the file itself there"
        )
    if entry.st_size > settings.max_file_bytes:
        return (
            f"the file is {entry.st_size / 1e6:.1f} MB, above the limit of "
            f"{settings.max_file_mb:g} MB (AUF_LABEL_MAX_FILE_MB): split it into smaller files, "
            "or raise the limit"
        )
    return None


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
    entry = os.lstat(path)
    why = _refusal(entry, settings)
    if why is not None:
        return _refuse(path, settings, why, in_place=keep_original)
    try:
        with open_regular(path, entry) as handle:
            reader = HashingReader(handle, limit=entry.st_size + 1)  # one more: it grew
            parsed = parse_label_stream(reader, path.name, settings.max_problems)
            reader.drain()  # the hash covers the whole file even when checking stopped early
            after = os.fstat(handle.fileno())
    except FileChangedError as exc:
        return ImportOutcome(path.name, path, "error", problems=[str(exc)])
    if (after.st_size, after.st_mtime_ns) != (entry.st_size, entry.st_mtime_ns) or (
        reader.bytes_read != after.st_size
    ):
        return ImportOutcome(
            path.name,
            path,
            "error",
            problems=["it changed while it was read (still being written?): nothing stored"],
        )
    sha = reader.hexdigest()
    outcome = ImportOutcome(path.name, path, "imported", sha, parsed.format)
    known = store.imported_file(sha)
    if known is not None and known["status"] == "imported":
        outcome.status = "already_imported"
        outcome.rounds = [r for r in (known["rounds"] or "").split(",") if r]
        if not keep_original:
            outcome.moved_to = _place(path, settings.archive_dir, sha, keep_original=False)
        return outcome

    pairs: dict[str, PairInfo] = {}
    if not parsed.truncated:  # rejected anyway: no need to look its pairs up
        infos = store.pair_infos([label.pair_id for label in parsed.labels])
        pairs = {row["pair_id"]: PairInfo(**row) for row in infos.iter_rows(named=True)}
    check = validate_labels(parsed, pairs, file_name=path.name, expected_round=expected_round)
    kept, repeats, problems = check.kept, check.repeats, check.problems
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
        outcome.more_problems = check.truncated
        atomic_write_text(
            reason, _reason_text(path.name, sha, problems, check.truncated, settings.inbox_dir)
        )
        outcome.moved_to, outcome.reason_file = target, reason
        more = ["and more"] if check.truncated else []
        store.record_rejected_file({**file_row, "reason": "; ".join(outcome.problems + more)})
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


def settle(path: Path, settings: LabellingSettings, say=None) -> str | None:
    """The inbox's settle rule for one file: why it is not read yet, or None to read it now.

    A file modified less than `settle_seconds` ago may still be being written: wait until it is
    that old (at most `settle_seconds`), and read it only if its size and time did not change
    meanwhile. `say` is told about the wait.
    """
    first = path.lstat()
    wait = min(settings.settle_seconds - (time.time() - first.st_mtime), settings.settle_seconds)
    if wait <= 0 or not stat.S_ISREG(first.st_mode):
        return None
    if say is not None:
        say(
            f"{path.name} was modified moments ago: checking for {wait:.1f}s that it is complete "
            f"(AUF_LABEL_SETTLE_SECONDS={settings.settle_seconds:g})"
        )
    time.sleep(wait)
    later = path.lstat()
    if (later.st_size, later.st_mtime_ns) == (first.st_size, first.st_mtime_ns):
        return None
    return (
        f"it changed within the last {settings.settle_seconds:g}s and may still be being "
        "written: nothing was read. Import it once it is complete (AUF_LABEL_SETTLE_SECONDS)"
    )


def _ignored(path: Path) -> bool:
    name = path.name
    return name.startswith((".", "~")) or name.lower().endswith(_IGNORED_SUFFIXES)


def scan_inbox(
    store: DuckDBStore, settings: LabellingSettings, cursor: str | None, now: float
) -> tuple[list[ImportOutcome], str, list[str]]:
    """Import every settled file of the inbox; returns (outcomes, new cursor, files waiting).

    The cursor remembers each young file's size and modification time. A file is read once it
    is older than `settle_seconds`, or unchanged since the previous tick: a file still being
    copied in is not read half-way. Processed files leave the inbox. Entries are looked at with
    lstat: a folder is left alone, any other entry that is not a regular file is refused at
    once, unread (`import_label_file`).
    """
    try:
        seen = json.loads(cursor)["seen"] if cursor else {}
    except (ValueError, KeyError, TypeError):
        seen = {}
    inbox = settings.inbox_dir
    inbox.mkdir(parents=True, exist_ok=True)
    outcomes, waiting, next_seen = [], [], {}
    for path in sorted(inbox.iterdir()):
        if _ignored(path):
            continue
        try:
            entry = path.lstat()
        except FileNotFoundError:
            continue
        if stat.S_ISDIR(entry.st_mode):
            continue
        fingerprint = f"{entry.st_size}:{entry.st_mtime_ns}"
        young = now - entry.st_mtime < settings.settle_seconds
        if stat.S_ISREG(entry.st_mode) and young and seen.get(path.name) != fingerprint:
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


def in_this_home(store: DuckDBStore, stored: str) -> Path:
    """Where a stored file path is in this home (the home may have been copied or moved).

    Paths inside the home are stored relative to it (`DuckDBStore.relative`). Rows written
    before that hold absolute paths: one outside this home whose tail (two parts or more, such
    as `labels/outbox/round-0001.jsonl`) exists inside it was written in the home this one was
    copied or moved from, and means that file here. Any other path is shown as stored.
    """
    path = Path(stored)
    root = store.root.resolve()
    if not path.is_absolute() or path.is_relative_to(root):
        return store.resolve(stored)
    for start in range(1, len(path.parts) - 1):  # the longest tail first
        here = root.joinpath(*path.parts[start:])
        if here.exists():
            return here
    return path


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
        elif pairs == 0:
            state, ready, why = "ready", True, "the judge's screening sent no pair to people"
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
                    k: str(in_this_home(store, row[f"{k}_path"]))
                    for k in ("jsonl", "csv", "labelstudio")
                    if row[f"{k}_path"]
                },
                late_labels=len(late),
                late_pairs=late_pairs,
                superseded_by=later,
            )
        )
    return out
