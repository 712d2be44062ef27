"""`auf export` and `auf publish`: the finished dataset, on disk or on the Hugging Face Hub.

Both run the `release` assets through Dagster on the local instance (the runs and their lineage
show in the UI like any other), so the folder `auf export` writes is byte for byte what
`auf publish` pushes.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

from auf_assets.cli.common import number
from auf_assets.core.settings import TEST_FRACTION


def _dataset_config(args: argparse.Namespace) -> dict:
    config: dict = {}
    if args.test_fraction is not None:
        config["test_fraction"] = args.test_fraction
    if args.rounds:
        config["rounds"] = args.rounds
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
    return config


def _run(job_name: str, run_config: dict):
    """Run a release job on the local instance; returns (result, metadata by asset)."""
    from auf_assets.cli.common import failure_message, prepare_home

    prepare_home()
    import dagster as dg

    from auf_assets.definitions import defs

    run_config = {"loggers": {"console": {"config": {"log_level": "INFO"}}}, **run_config}
    result = defs.resolve_job_def(job_name).execute_in_process(
        instance=dg.DagsterInstance.get(), run_config=run_config, raise_on_error=False
    )
    if not result.success:
        print(f"\n{job_name} failed: {failure_message(result)}", file=sys.stderr)
        return None
    return result


def _built_folder() -> Path:
    from resources.store import DuckDBStore

    store = DuckDBStore()
    release = store.latest_release()
    return store.root / release["path"]


def _copy_release(folder: Path, out: Path) -> None:
    """Copy a built version to `out`, replacing an earlier export there but nothing else."""
    if out.exists() and any(out.iterdir()) and not (out / "manifest.json").is_file():
        raise FileExistsError(
            f"{out} exists and is not an earlier export (no manifest.json): choose an empty or "
            "new folder"
        )
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
    ops = {"preference_dataset": {"config": _dataset_config(args)}}
    if _run("dataset_build", {"ops": ops}) is None:
        return 1
    folder = _built_folder()
    out = Path(args.out).resolve()
    try:
        _copy_release(folder, out)
    except OSError as exc:
        print(f"--out {args.out}: {exc}", file=sys.stderr)
        return 1
    _print_summary(out)
    print(f"\nLoad it with: datasets.load_dataset({str(out)!r})")
    return 0


def _print_summary(folder: Path) -> None:
    from auf_assets.core.release import read_manifest

    manifest = read_manifest(folder)
    rows = manifest["rows"]
    print(f"\n{manifest['version']} in {folder}")
    for config, splits in rows.items():
        print(f"  {config:<12} " + ", ".join(f"{s}: {n}" for s, n in splits.items()))
    left = manifest["left_out"]
    print(
        f"  left out: {left['tie']} tie(s), {left['failed']} failed, "
        f"{left['unlabelled']} unlabelled"
    )


def _hub_config(args: argparse.Namespace) -> dict:
    config: dict = {"repo_id": args.repo, "private": args.private}
    for key in ("endpoint", "revision"):
        if getattr(args, key):
            config[key] = getattr(args, key)
    return config


def _publish(args: argparse.Namespace) -> int:
    from resources.hub import HubDataset, HubError

    hub_config = _hub_config(args)
    try:  # a malformed repo id stops here, before anything is built
        HubDataset(**hub_config).checked_repo_id()
    except HubError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    ops = {"preference_dataset": {"config": _dataset_config(args)}}
    if args.dry_run:
        if _run("dataset_build", {"ops": ops}) is None:
            return 1
        folder = _built_folder()
        try:
            plan = HubDataset(**hub_config).plan(folder)
        except HubError as exc:
            print(str(exc), file=sys.stderr)
            return 1
        _print_summary(folder)
        print(
            f"\ndry run: would push {plan['version']} to {plan['endpoint']}/datasets/"
            f"{plan['repo_id']} ({'private' if plan['private'] else 'public'} if new), branch "
            f"{plan['revision']}, as ONE commit: {plan['commit_message']!r}"
        )
        for path, size in plan["files"].items():
            print(f"  {size:>12,}  {path}")
        print(f"  {plan['bytes']:>12,}  bytes in all; nothing was sent")
        return 0
    if not HubDataset(**hub_config).resolved_token():
        print(
            "no Hugging Face token: set HF_TOKEN to a token with write access "
            "(huggingface.co/settings/tokens); nothing was built or pushed",
            file=sys.stderr,
        )
        return 2
    result = _run("dataset_release", {"ops": ops, "resources": {"hub": {"config": hub_config}}})
    if result is None:
        print(
            "Nothing local was lost: fix the cause and run the same command again.", file=sys.stderr
        )
        return 1
    mat = result.asset_materializations_for_node("hub_dataset")[0].metadata
    what = "pushed" if mat["new_commit"].value else "already on the Hub (no new commit)"
    print(f"\n{mat['version'].value}: {what}")
    print(f"  {mat['url'].value}  (commit {mat['commit'].value[:12]}, tag {mat['tag'].value})")
    return 0


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--rounds", nargs="+", default=[], help="round keys to include (default: every round)"
    )
    parser.add_argument(
        "--test-fraction",
        type=number(ge=0, lt=1),
        default=None,
        help=f"share of prompts in test (default {TEST_FRACTION:g})",
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


def add_commands(sub) -> None:
    """Add `export` and `publish` to the `auf` sub-command parser."""
    export = sub.add_parser(
        "export",
        help="write the preference dataset (parquet, card, manifest) to a folder",
        description="Build the dataset of every completed round (or --rounds) and copy it to "
        "OUT: exactly the files `auf publish` would push.",
    )
    export.add_argument("--out", required=True, help="folder to write (replaced if an export)")
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
    publish.add_argument("--endpoint", default="", help="a self-hosted or mirrored Hub's URL")
    publish.add_argument("--revision", default="", help="branch to commit to (default main)")
    _common(publish)
    publish.set_defaults(func=_publish)
