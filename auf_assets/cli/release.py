"""`auf export` and `auf publish`: the finished dataset, on disk or on the Hugging Face Hub.

Both run the `release` assets through Dagster on the local instance (the runs and their lineage
show in the UI under their jobs, like any other), so the folder `auf export` writes is byte for
byte what `auf publish` pushes. Every argument is checked before anything is built: a bad one
is refused in one line (exit 2). The console shows one line per stage and the outcome; the full
Dagster log, traces included, goes to `$AUF_HOME/logs/<command>-<time>.log`.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
from pathlib import Path

from auf_assets.cli.common import (
    number,
    prepare_home,
    round_arg,
    run_job,
)
from auf_assets.cli.console import RunConsole, job_console
from auf_assets.core.settings import TEST_FRACTION

# The options of `preference_dataset` the command line sets, as a person typed them.
FLAGS = {
    "rounds": "--rounds",
    "test_fraction": "--test-fraction",
    "train_split": "--split-names",
    "test_split": "--split-names",
    "license": "--license",
    "language": "--language",
    "pretty_name": "--pretty-name",
    "repo_id": "--repo",
}


class UsageError(ValueError):
    """An argument that cannot work; the message names it. Nothing was built or sent."""


def _dataset_config(args: argparse.Namespace) -> dict:
    """The run config of `preference_dataset`, checked: every value must work."""
    from pydantic import ValidationError

    from auf_assets.core.release import ReleaseError
    from auf_assets.release import PreferenceDatasetConfig, released_rounds
    from resources.store import DuckDBStore

    config: dict = {}
    if args.test_fraction is not None:
        config["test_fraction"] = args.test_fraction
    if args.rounds:
        config["rounds"] = list(args.rounds)
    if args.split_names == "h4":
        config.update(train_split="train_prefs", test_split="test_prefs")
    for key in ("license", "pretty_name"):
        if getattr(args, key):
            config[key] = getattr(args, key)
    if args.language:
        config["language"] = args.language
    repo = getattr(args, "repo", "")
    if not repo:
        from resources.environment import hub_from_env

        repo = hub_from_env().repo_id  # AUF_HUB_REPO
    if repo:
        config["repo_id"] = repo
    try:
        PreferenceDatasetConfig(**config).options()
    except ValidationError as exc:
        problem = exc.errors()[0]
        field = str(problem["loc"][0]) if problem["loc"] else ""
        given = config.get(field, "")
        raise UsageError(f"{FLAGS.get(field, field)} {given}: {problem['msg']}") from None
    except ReleaseError as exc:
        raise UsageError(str(exc)) from None
    try:
        released_rounds(DuckDBStore(), config.get("rounds", []))
    except ReleaseError as exc:
        raise UsageError(f"{exc}; nothing was built") from None
    return config


def _checked_out(value: str, root: Path) -> Path:
    """The export folder: new, empty or an earlier export, outside the home's versions."""
    from resources import home

    out = Path(value).expanduser().resolve()
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {value} is a file: give a new or empty folder")
    if out.is_dir() and any(out.iterdir()) and not (out / "manifest.json").is_file():
        raise UsageError(
            f"--out {value} is not empty and is not an earlier export (no manifest.json): give "
            "a new or empty folder; nothing was built"
        )
    versions = home.datasets_dir(root).resolve()
    if out == versions or versions in out.parents:
        raise UsageError(
            f"--out {value} is where the home keeps its versions ({versions}): give a folder "
            "outside it"
        )
    existing = next(p for p in (out, *out.parents) if p.exists())
    if not existing.is_dir():
        raise UsageError(f"--out {value}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UsageError(f"--out {value}: {existing} is not writable")
    return out


def _built_folder() -> Path:
    from resources.store import DuckDBStore

    store = DuckDBStore()
    release = store.latest_release()
    return store.root / release["path"]


def _copy_release(folder: Path, out: Path, root: Path) -> None:
    """Copy a built version to `out`, replacing an earlier export there but nothing else."""
    _checked_out(str(out), root)  # again: the folder may have changed while the build ran
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        shutil.copytree(folder, staging / "v")
        (staging / "v").chmod(0o755)
        if out.exists():
            shutil.rmtree(out)
        os.replace(staging / "v", out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _export(args: argparse.Namespace) -> int:
    root = prepare_home()
    with job_console(root, "export", verbose=args.verbose) as console:
        try:
            out = _checked_out(args.out, root)
            config = _dataset_config(args)
        except UsageError as exc:
            console.error(str(exc))
            return 2
        ops = {"preference_dataset": {"config": config}}
        result, status = run_job(console, "dataset_build", {"ops": ops})
        if result is None:
            return status
        try:
            _copy_release(_built_folder(), out, root)
        except (UsageError, OSError) as exc:
            console.error(f"--out {args.out}: {exc}")
            return 1
        _print_summary(console, out)
        console.say(f"\nLoad it with: datasets.load_dataset({str(out)!r})")
        return 0


def _print_summary(console: RunConsole, folder: Path) -> None:
    from auf_assets.core.release import read_manifest

    manifest = read_manifest(folder)
    console.say(f"\n{manifest['version']} in {folder}")
    for config, splits in manifest["rows"].items():
        console.say(f"  {config:<12} " + ", ".join(f"{s}: {n}" for s, n in splits.items()))
    left = manifest["left_out"]
    console.say(
        f"  left out: {left['tie']} tie(s), {left['failed']} failed, "
        f"{left['unlabelled']} unlabelled"
    )
    for warning in manifest.get("warnings", []):
        console.say(f"  warning: {warning}")


def _hub_config(args: argparse.Namespace) -> dict:
    config: dict = {"repo_id": args.repo, "private": args.private}
    for key in ("endpoint", "revision"):
        if getattr(args, key):
            config[key] = getattr(args, key)
    return config


def _publish(args: argparse.Namespace) -> int:
    root = prepare_home()
    with job_console(root, "publish", verbose=args.verbose) as console:
        return _publish_with(console, args)


def _publish_with(console: RunConsole, args: argparse.Namespace) -> int:
    from resources.hub import HubDataset, HubError

    hub_config = _hub_config(args)
    try:  # a malformed repo id or endpoint, or no token, stops here, before anything is built
        hub = HubDataset(**hub_config)
        hub.checked_repo_id()
        hub.endpoint_url()
        if not args.dry_run and not hub.resolved_token():
            raise UsageError(
                "no Hugging Face token: set HF_TOKEN to a token with write access "
                "(huggingface.co/settings/tokens); nothing was built or sent"
            )
        ops = {"preference_dataset": {"config": _dataset_config(args)}}
    except (HubError, UsageError) as exc:
        console.error(str(exc))
        return 2
    if args.dry_run:
        result, status = run_job(console, "dataset_build", {"ops": ops})
        if result is None:
            return status
        folder = _built_folder()
        try:
            plan = hub.plan(folder)
        except HubError as exc:
            console.error(str(exc))
            return 1
        _print_summary(console, folder)
        console.say(
            f"\ndry run: would push {plan['version']} to {plan['endpoint']}/datasets/"
            f"{plan['repo_id']} ({'private' if plan['private'] else 'public'} if new), branch "
            f"{plan['revision']}, as ONE commit: {plan['commit_message']!r}"
        )
        for path, size in plan["files"].items():
            console.say(f"  {size:>12,}  {path}")
        console.say(f"  {plan['bytes']:>12,}  bytes in all; nothing was sent")
        return 0
    run_config = {"ops": ops, "resources": {"hub": {"config": hub_config}}}
    result, status = run_job(console, "dataset_release", run_config)
    if result is None:
        return status
    mat = result.asset_materializations_for_node("hub_dataset")[0].metadata
    what = "pushed" if mat["new_commit"].value else "already on the Hub (no new commit)"
    console.say(f"\n{mat['version'].value}: {what}")
    console.say(
        f"  {mat['url'].value}  (commit {mat['commit'].value[:12]}, tag {mat['tag'].value})"
    )
    return 0


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--rounds",
        nargs="+",
        type=round_arg,
        default=[],
        help="rounds to include, as 1 or round-0001 (default: every round with judgements)",
    )
    parser.add_argument(
        "--test-fraction",
        type=number(ge=0, lt=1),
        default=None,
        help=f"share of prompts in test, in [0, 1) (default {TEST_FRACTION:g}); a split that "
        "would be empty is left out, with a warning",
    )
    parser.add_argument(
        "--split-names",
        choices=["plain", "h4"],
        default="plain",
        help="train/test (plain) or train_prefs/test_prefs (h4, as HuggingFaceH4 sets)",
    )
    parser.add_argument("--license", default="", help="license id for the card, e.g. mit")
    parser.add_argument("--language", nargs="+", default=[], help="language codes, e.g. en")
    parser.add_argument("--pretty-name", default="", help="the card's title")
    parser.add_argument(
        "--verbose", action="store_true", help="print the full Dagster log here too"
    )


def add_commands(sub) -> None:
    """Add `export` and `publish` to the `auf` sub-command parser."""
    export = sub.add_parser(
        "export",
        help="write the preference dataset (parquet, card, manifest) to a folder",
        description="Build the dataset of every completed round (or --rounds) and copy it to "
        "OUT: exactly the files `auf publish` would push.",
    )
    export.add_argument(
        "--out", required=True, help="folder to write: new, empty, or an earlier export"
    )
    export.add_argument("--repo", default="", help="Hub repo id the card's snippet names")
    _common(export)
    export.set_defaults(func=_export)

    publish = sub.add_parser(
        "publish",
        help="push the preference dataset to the Hugging Face Hub (one commit, tagged)",
        description="Build the dataset and push it to a Hub dataset repository as one commit, "
        "tagged with the version name (rounds-0001-0012). The token comes from HF_TOKEN.",
    )
    publish.add_argument("--repo", required=True, help="namespace/name of the dataset repo")
    visibility = publish.add_mutually_exclusive_group()
    visibility.add_argument(
        "--private", dest="private", action="store_true", default=True, help="(default)"
    )
    visibility.add_argument("--public", dest="private", action="store_false")
    publish.add_argument("--dry-run", action="store_true", help="build and list; send nothing")
    publish.add_argument(
        "--endpoint", default="", help="a self-hosted or mirrored Hub's URL, http(s)://host[:port]"
    )
    publish.add_argument("--revision", default="", help="branch to commit to (default main)")
    _common(publish)
    publish.set_defaults(func=_publish)
