"""`auf labels import FILE` and `auf labels status`: human labelling without the UI.

Both read the same settings as the sensor (`AUF_LABEL_*`, see `resources.labelling`) and the same
store (`$AUF_HOME/auf.duckdb`). `import` runs the sensor's own import code on one file.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from auf_assets.cli.common import round_arg


def _settings():
    """The settings from the environment; ValueError naming every rejected variable."""
    from resources.labelling import labelling_from_env

    settings = labelling_from_env()
    settings.check()
    return settings


def _import(args: argparse.Namespace) -> int:
    from auf_assets.label_inbox import import_label_file, settle
    from resources.store import DuckDBStore

    path = Path(args.file)
    if not path.exists() and not path.is_symlink():
        print(f"{path}: no such file", file=sys.stderr)
        return 1
    try:
        settings = _settings()
    except ValueError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    unsettled = settle(path, settings, say=lambda note: print(note, file=sys.stderr))
    if unsettled:
        print(f"{path}: {unsettled}", file=sys.stderr)
        return 1
    store = DuckDBStore()
    outcome = import_label_file(
        path, store, settings, expected_round=args.round or None, keep_original=True
    )
    if outcome.status == "quarantined":
        print(f"{path}: rejected, nothing was stored.", file=sys.stderr)
        for problem in outcome.problems:
            print(f"  {problem}", file=sys.stderr)
        if outcome.more_problems:
            print("  ... and more (checking stopped there)", file=sys.stderr)
        print(f"A copy and the reason are in {outcome.reason_file.parent}.", file=sys.stderr)
        return 1
    if outcome.status not in ("imported", "already_imported"):
        print(outcome.summary(), file=sys.stderr)
        return 1
    print(outcome.summary())
    if not settings.people:
        print(
            f"note: the label source is {settings.source!r}; set AUF_LABEL_SOURCE=people for the "
            "rounds to train on these labels"
        )
    _print_status(store, settings, only=set(outcome.rounds))
    if settings.people:
        _next_step_hint(store, settings, set(outcome.rounds))
    return 0


def _next_step_hint(store, settings, rounds: set[str]) -> None:
    """Say what trains the rounds these labels completed (the sensor, or `auf demo`)."""
    from auf_assets.label_inbox import label_status

    ready = [
        s.round_id
        for s in label_status(store, settings)
        if s.round_id in rounds and s.state in ("ready", "retrain")
    ]
    if ready:
        print(
            f"{', '.join(ready)} can be trained now: run `auf demo` (it trains on these labels "
            "and writes the next round's batch), or let the labels_landed sensor do it while the "
            "Dagster daemon runs."
        )


def _print_status(store, settings, only: set[str] | None = None) -> None:
    from auf_assets.label_inbox import label_status

    rows = [s for s in label_status(store, settings) if not only or s.round_id in only]
    if not rows:
        print("no round has been sent out for labelling yet")
        return
    print(f"{'round':<12} {'labelled':>9} {'labels':>7} {'ties':>5}  state     why")
    for s in rows:
        print(
            f"{s.round_id:<12} {f'{s.labelled_pairs}/{s.pairs}':>9} {s.labels:>7} {s.ties:>5}  "
            f"{s.state:<9} {s.why}"
        )
        for kind, path in s.outbox.items():
            print(f"{'':<14}{kind}: {path}")
    unused = [s for s in rows if s.late_labels and s.superseded_by]
    if unused:
        total = sum(s.late_labels for s in unused)
        print(
            f"{total} label(s) arrived after their round was trained and are not used: "
            + ", ".join(f"{s.round_id} ({s.late_labels})" for s in unused)
            + ". Re-running labelled_round for such a round uses them but makes every later "
            "round stale."
        )


def _status(args: argparse.Namespace) -> int:
    from resources.store import DuckDBStore

    try:
        settings = _settings()
    except ValueError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    store = DuckDBStore()
    print(
        f"label source: {settings.source}; rule: {settings.resolution}, min_fraction "
        f"{settings.min_fraction:g} after {settings.wait_hours:g}h"
    )
    if settings.mixed:
        rule = settings.routing_rule
        if rule.threshold and rule.budget:
            unsure = f"confidence under {rule.threshold:g}, at most {rule.budget} a round"
        elif rule.threshold:
            unsure = f"confidence under {rule.threshold:g}"
        else:
            unsure = f"the {rule.budget} least confident a round" if rule.budget else "none"
        print(
            f"judge+people: {settings.screening_judge} screens every pair; to people: {unsure}, "
            f"and {rule.calibration_share:.0%} of the rest for calibration"
        )
    _print_status(store, settings)
    _print_agreement(store, settings)
    inbox = settings.inbox_dir
    pending = sorted(p.name for p in inbox.iterdir() if not p.is_dir()) if inbox.is_dir() else []
    quarantined = settings.quarantine_dir
    rejected = sorted(p.name for p in quarantined.glob("*.reason")) if quarantined.is_dir() else []
    listed = f": {', '.join(pending[:5])}" + (" ..." if len(pending) > 5 else "") if pending else ""
    print(f"inbox {inbox}: {len(pending)} file(s) not read yet{listed}")
    print(f"quarantine {quarantined}: {len(rejected)} rejected file(s)")
    return 0


def _print_agreement(store, settings) -> None:
    """Per round and in total: how often the screening judge agrees with people."""
    from auf_assets.core.judge_vs_people import agreement_by_round, agreement_summary
    from auf_assets.judge_agreement import aspect_agreement, comparisons

    frame = comparisons(store, settings.resolution)
    per_round = agreement_by_round(frame)
    if frame.height == 0 or per_round["pairs"].sum() == 0:
        return

    def pct(value: float) -> str:
        return "-" if value != value else f"{value:.0%}"

    def kappa(value: float) -> str:
        return "-" if value != value else f"{value:+.2f}"

    print(f"\njudge vs people (min_agreement {settings.min_agreement:.0%})")
    print(f"{'round':<12} {'pairs':>6} {'agree':>6} {'kappa':>6}  calibration pairs")
    for row in per_round.iter_rows(named=True):
        low = "  < min_agreement" if row["accuracy"] < settings.min_agreement else ""
        print(
            f"{row['round_id']:<12} {row['pairs']:>6} {pct(row['accuracy']):>6} "
            f"{kappa(row['kappa']):>6}  {row['calibration_pairs']} agree "
            f"{pct(row['calibration_accuracy'])}{low}"
        )
    total = agreement_summary(frame)
    parts = ", ".join(
        f"{name} {pct(part['accuracy'])} of {part['pairs']}"
        for name, part in total.items()
        if part["pairs"]
    )
    print(f"all rounds: {parts}; kappa {kappa(total['all']['kappa'])}")
    aspects = aspect_agreement(store, frame)
    if aspects:
        print(
            "per aspect: "
            + ", ".join(f"{a} {pct(v['accuracy'])}" for a, v in aspects.items() if v["pairs"])
        )


def add_commands(sub) -> None:
    """Add `labels import` and `labels status` to the `auf` sub-command parser."""
    labels = sub.add_parser("labels", help="import human labels and see labelling progress")
    commands = labels.add_subparsers(dest="labels_command", required=True)
    imp = commands.add_parser(
        "import",
        help="validate a label file and store its labels (the sensor's own import)",
        description="Validate FILE (jsonl, csv or a Label Studio JSON export) and store its "
        "labels. A file with any bad line is rejected whole: nothing is stored, a copy and a "
        ".reason file go to the quarantine folder, and the exit code is 1. Not read at all (exit "
        "code 1): a symbolic link or anything else that is not a regular file, a file larger "
        "than AUF_LABEL_MAX_FILE_MB, and a file that changes during AUF_LABEL_SETTLE_SECONDS "
        "after it was last modified (it is still being written; a file saved moments ago is "
        "read after that wait).",
    )
    imp.add_argument("file", help="label file")
    imp.add_argument(
        "--round",
        type=round_arg,
        default=None,
        help="reject labels of pairs of any other round (a number or key: 3, round-0003)",
    )
    imp.set_defaults(func=_import)
    status = commands.add_parser("status", help="per round: pairs, labelled, ties, state")
    status.set_defaults(func=_status)
