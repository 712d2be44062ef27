"""The `release` group: the finished preference dataset, and its version on the Hugging Face Hub.

preference_dataset reads every completed round (or a configured set) from the store and writes
one dataset version under `$AUF_HOME/datasets/<version>` (parquet shards, card, manifest; see
`auf_assets.core.release`). hub_dataset pushes that version to the Hub as one commit and tags
it. Both depend on all partitions of the round assets, so the UI shows which rounds fed a
version, and the metadata names the runs that made each round's labels and reward model.
"""

import importlib.metadata
import shutil
import tempfile
import time
from collections import Counter
from pathlib import Path

import dagster as dg
import polars as pl
from pydantic import Field

from auf_assets.core.costs import PriceTable
from auf_assets.core.release import (
    CONFIG_DIRS,
    MAX_SHARD_MB,
    ReleaseError,
    ReleaseOptions,
    completion_rows,
    finish_release,
    preference_rows,
    split_configs,
    trl_rows,
    verify_release,
    version_name,
    write_tables,
)
from auf_assets.core.release_card import cost_facts, release_facts, render_card
from auf_assets.core.settings import TEST_FRACTION
from auf_assets.partitions import round_index
from auf_assets.release_report import GROUP, dataset_report
from auf_assets.reporting import figure_png, markdown_preview, png_markdown
from auf_assets.round import (
    completions,
    judgements,
    reward_model,
    reward_scores,
    selected_pairs,
)
from resources import home
from resources.hub import HubDataset, HubError
from resources.ledger import ledger_from_env
from resources.store import DuckDBStore, utcnow

CODE_VERSION = "1"


def software_version() -> str:
    try:
        version = importlib.metadata.version("active-ultrafeedback")
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    return f"active-ultrafeedback {version} (release code version {CODE_VERSION})"


class PreferenceDatasetConfig(dg.Config):
    rounds: list[str] = Field(
        default_factory=list,
        description="round keys to include (e.g. ['round-0001', 'round-0002']); empty: every "
        "round that has judgements",
    )
    test_fraction: float = Field(
        default=TEST_FRACTION,
        ge=0.0,
        lt=1.0,
        description="share of prompts (by a hash of prompt_id) in test",
    )
    train_split: str = Field(default="train", description="e.g. train_prefs (the H4 names)")
    test_split: str = Field(default="test", description="e.g. test_prefs")
    max_shard_mb: float = Field(default=MAX_SHARD_MB, gt=0, description="largest parquet shard")
    license: str = Field(default="", description="license id for the card (e.g. mit, cc-by-4.0)")
    language: list[str] = Field(default_factory=list, description="language codes for the card")
    pretty_name: str = Field(default="", description="the card's title")
    repo_id: str = Field(
        default="", description="Hub repo the card's loading snippet names (auf publish sets it)"
    )

    def options(self) -> ReleaseOptions:
        return ReleaseOptions(
            test_fraction=self.test_fraction,
            train_split=self.train_split,
            test_split=self.test_split,
            max_shard_bytes=int(self.max_shard_mb * 2**20),
            license=self.license,
            language=tuple(self.language),
            pretty_name=self.pretty_name,
            repo_id=self.repo_id,
        )


def _price_table(warn) -> PriceTable | None:
    """The price table for the card, or None when there is none or it cannot be read (the card
    then says nothing about dollars)."""
    ledger = ledger_from_env()
    try:
        prices = ledger.prices()
    except (ValueError, OSError) as exc:  # PriceTableError, a file that is not UTF-8, ...
        where = ledger.prices_path or "$AUF_HOME/prices.yaml"
        warn(
            f"the price table {where} cannot be read ({type(exc).__name__}: {exc}): the card "
            "says nothing about dollars"
        )
        return None
    return None if prices.source == PriceTable().source else prices


def released_rounds(store: DuckDBStore, requested: list[str]) -> list[str]:
    """The rounds a version holds, in order: `requested`, or every round with judgements."""
    available = store.rounds_with_judgements()
    rounds = list(requested) or available
    if not rounds:
        raise ReleaseError(
            "no round has judgements yet: run at least one round (auf demo, or the active_round "
            "job) before building the dataset"
        )
    if missing := [r for r in rounds if r not in available]:
        raise ReleaseError(
            f"rounds without judgements cannot be released: {missing}; rounds with judgements: "
            f"{available or 'none'}"
        )
    return sorted(set(rounds), key=round_index)


def build_release(
    store: DuckDBStore, config: PreferenceDatasetConfig, log=print, warn=print
) -> dict:
    """Build the dataset version of the configured rounds; returns what the asset reports.

    Pure wiring between the store and `core.release`, shared by the asset and its tests.
    `warn` gets what a person should know about the version (an empty split left out).
    """
    options = config.options()
    rounds = released_rounds(store, config.rounds)
    version = version_name(rounds, [round_index(r) for r in rounds])
    log(f"building {version} from {len(rounds)} round(s)")
    pairs = store.release_pairs(rounds)
    responses = store.release_completions(rounds)
    prefs, left_out = preference_rows(pairs, store.release_judge_scores(rounds))
    if prefs.height == 0:
        raise ReleaseError(
            f"{version} has no labelled pair ({pairs.height} pairs: {left_out}); nothing to release"
        )
    per_prompt = completion_rows(responses, pairs)
    splits = split_configs(
        {"default": prefs, "trl": trl_rows(prefs), "completions": per_prompt}, options
    )
    rows = splits.rows
    for warning in splits.warnings:
        warn(f"{version}: {warning}")
    facts = release_facts(pairs, responses, store.release_reward_models(rounds), rows, left_out)
    facts["warnings"] = splits.warnings
    facts["cost"] = cost_facts(store.usage(rounds), _price_table(warn))
    software = software_version()
    target = home.datasets_dir(store.root) / version
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{version}.", dir=target.parent))
    try:
        write_tables(staging, splits.frames, options.max_shard_bytes)
        files = finish_release(
            staging,
            target,
            card_text=render_card(facts, options, software=software),
            manifest={
                "format": "auf-release/1",
                "version": version,
                "rounds": rounds,
                "rows": rows,
                "left_out": left_out,
                "software": software,
                "splits": {"train": options.train_split, "test": options.test_split},
                "test_fraction": options.test_fraction,
                "warnings": splits.warnings,
            },
        )
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    store.record_release(
        {
            "version": version,
            "path": str(target.relative_to(store.root)),
            "rounds": ",".join(rounds),
            "manifest_sha256": files.manifest_sha256,
            "pairs": prefs.height,
            "card_repo_id": options.repo_id or None,
            "built_at": utcnow(),
        }
    )
    log(f"wrote {version} to {target}: {rows['default']} pairs, {rows['completions']} prompts")
    return {
        "version": version,
        "folder": target,
        "rounds": rounds,
        "rows": rows,
        "left_out": left_out,
        "warnings": splits.warnings,
        "pairs": pairs,
        "preferences": prefs,
        "manifest_sha256": files.manifest_sha256,
        "bytes": sum(f["bytes"] for f in files.manifest["files"].values()),
    }


def _round_plot(pairs: pl.DataFrame) -> bytes:
    """Per round: labelled pairs (bars) and the mean judge-score gap of those pairs (line)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    per_round = (
        pairs.filter(pl.col("preference").is_in(["a", "b"]))
        .group_by("round_index", "round_id")
        .agg(
            pl.len().alias("pairs"),
            (pl.col("score_a") - pl.col("score_b")).abs().mean().alias("gap"),
        )
        .sort("round_index")
    )
    fig, ax = plt.subplots(figsize=(6, 3), dpi=100)
    ax.bar(per_round["round_id"], per_round["pairs"], color="#9ab")
    ax.set_ylabel("labelled pairs")
    ax.tick_params(axis="x", labelrotation=45)
    if per_round["gap"].drop_nulls().len():
        twin = ax.twinx()
        twin.plot(per_round["round_id"], per_round["gap"], color="#c44", marker="o")
        twin.set_ylabel("mean |score gap|", color="#c44")
    return figure_png(fig)


def _lineage(instance: dg.DagsterInstance, rounds: list[str]) -> dict[str, dict[str, str]]:
    """Per round, the run that last materialised its judgements and its reward model."""
    out: dict[str, dict[str, str]] = {r: {} for r in rounds}
    for asset in (judgements, reward_model):
        records = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=asset.key, asset_partitions=rounds),
            limit=len(rounds) * 20,
        ).records
        for record in sorted(records, key=lambda r: r.storage_id):  # newest wins
            if record.partition_key in out:
                out[record.partition_key][asset.key.to_user_string()] = record.run_id
    return out


@dg.asset(
    group_name=GROUP,
    deps=[completions, reward_scores, selected_pairs, judgements, reward_model],
    kinds={"parquet", "huggingface"},
    code_version=CODE_VERSION,
    description="The finished preference dataset of every completed round (or a configured "
    "set): parquet shards in the Hugging Face preference layout (+ a TRL-ready config and an "
    "all-responses config), a dataset card made from the lineage and a manifest.",
)
def preference_dataset(
    context: dg.AssetExecutionContext, config: PreferenceDatasetConfig, store: DuckDBStore
) -> dg.MaterializeResult:
    started = time.perf_counter()
    try:
        built = build_release(store, config, log=context.log.info, warn=context.log.warning)
    except ReleaseError as exc:
        raise dg.Failure(str(exc)) from None
    prefs, pairs = built["preferences"], built["pairs"]
    split_rows = built["rows"]["default"]
    return dg.MaterializeResult(
        metadata={
            "version": built["version"],
            "path": dg.MetadataValue.path(str(built["folder"])),
            "dagster/row_count": prefs.height,
            "rounds": dg.MetadataValue.json(built["rounds"]),
            "rows_per_split": dg.MetadataValue.json(split_rows),
            "rows_per_config": dg.MetadataValue.json(built["rows"]),
            "left_out": dg.MetadataValue.json(built["left_out"]),
            "warnings": dg.MetadataValue.json(built["warnings"]),
            "label_sources": dg.MetadataValue.json(dict(Counter(prefs["label_source"]))),
            "methods": dg.MetadataValue.json(dict(Counter(prefs["method"]))),
            "manifest_sha256": built["manifest_sha256"],
            "bytes": built["bytes"],
            "build_seconds": round(time.perf_counter() - started, 2),
            "round_lineage": dg.MetadataValue.json(_lineage(context.instance, built["rounds"])),
            "preview": markdown_preview(
                prefs.select(
                    "round",
                    "prompt",
                    pl.col("chosen").list.last().struct.field("content").alias("chosen"),
                    pl.col("rejected").list.last().struct.field("content").alias("rejected"),
                    "score_chosen",
                    "score_rejected",
                )
            ),
            "per_round": png_markdown(_round_plot(pairs), "pairs and score gap per round"),
        }
    )


@dg.asset_check(
    asset=preference_dataset,
    blocking=True,
    description="The built version is intact (every file matches the manifest), no split is "
    "empty (one would make the dataset unloadable), no prompt is in both splits, and no pair has "
    "the same response as chosen and rejected.",
)
def preference_dataset_valid(store: DuckDBStore) -> dg.AssetCheckResult:
    release = store.latest_release()
    if release is None:
        return dg.AssetCheckResult(passed=False, metadata={"problem": "no version built"})
    folder = store.root / release["path"]
    problems = []
    try:
        manifest = verify_release(folder)
    except ReleaseError as exc:
        return dg.AssetCheckResult(passed=False, metadata={"problem": str(exc)})
    frames = {}
    for config, splits in manifest["rows"].items():
        for split, rows in splits.items():
            shards = sorted(folder.glob(f"{CONFIG_DIRS[config]}/{split}-*.parquet"))
            if not shards or rows == 0:  # `datasets` cannot load a config with an empty split
                problems.append(f"{config}/{split} is empty: an empty split must be left out")
                continue
            frame = pl.read_parquet(shards)
            if frame.height != rows:
                problems.append(f"{config}/{split}: {frame.height} rows, the manifest says {rows}")
            if config == "default":
                frames[split] = frame
    if len(frames) == 2:
        train, test = frames.values()
        overlap = set(train["prompt_id"]) & set(test["prompt_id"])
        if overlap:
            problems.append(f"{len(overlap)} prompts in both splits")
    for split, frame in frames.items():
        same = frame.filter(pl.col("chosen_completion_id") == pl.col("rejected_completion_id"))
        if same.height:
            problems.append(f"{split}: {same.height} pairs with one response on both sides")
    return dg.AssetCheckResult(
        passed=not problems,
        metadata={"version": release["version"], "problems": dg.MetadataValue.json(problems)},
    )


@dg.asset(
    group_name=GROUP,
    deps=[preference_dataset, dataset_report],
    kinds={"huggingface"},
    code_version=CODE_VERSION,
    description="The newest dataset version on the Hugging Face Hub: all its files in one "
    "commit, tagged with the version name; unchanged content makes no new commit.",
)
def hub_dataset(
    context: dg.AssetExecutionContext, hub: HubDataset, store: DuckDBStore
) -> dg.MaterializeResult:
    release = store.latest_release()
    if release is None:
        raise dg.Failure("no dataset version is built yet: materialise preference_dataset first")
    folder = store.root / release["path"]
    card_repo = release["card_repo_id"]
    if card_repo and card_repo != hub.repo_id:
        context.log.warning(
            f"the card's loading snippet names {card_repo}, but the push goes to {hub.repo_id}"
        )
    started = time.perf_counter()
    try:
        pushed = hub.publish(folder, log=context.log.info)
    except (HubError, ReleaseError) as exc:
        raise dg.Failure(str(exc)) from None
    store.record_push(
        {
            "push_id": f"{pushed.commit_oid}:{release['version']}:{utcnow().isoformat()}",
            "version": release["version"],
            "manifest_sha256": release["manifest_sha256"],
            "endpoint": pushed.endpoint,
            "repo_id": pushed.repo_id,
            "revision": pushed.revision,
            "commit_oid": pushed.commit_oid,
            "new_commit": pushed.new_commit,
            "tag": pushed.tag,
            "url": pushed.url,
            "pushed_at": utcnow(),
        }
    )
    return dg.MaterializeResult(
        metadata={
            "version": release["version"],
            "repo_id": pushed.repo_id,
            "revision": pushed.revision,
            "commit": pushed.commit_oid,
            "new_commit": pushed.new_commit,
            "tag": pushed.tag or "",
            "url": dg.MetadataValue.url(pushed.url),
            "files_added": len(pushed.files_added),
            "files_deleted": len(pushed.files_deleted),
            "push_seconds": round(time.perf_counter() - started, 2),
        }
    )


RELEASE_ASSETS = [preference_dataset, dataset_report, hub_dataset]
RELEASE_CHECKS = [preference_dataset_valid]

dataset_build_job = dg.define_asset_job(
    "dataset_build",
    selection=dg.AssetSelection.assets(preference_dataset, dataset_report),
    description="Build the preference dataset of the completed rounds and its report (auf export).",
)
dataset_release_job = dg.define_asset_job(
    "dataset_release",
    selection=dg.AssetSelection.assets(*RELEASE_ASSETS),
    description="Build the preference dataset of the completed rounds and its report, and "
    "push it to the Hub.",
)
