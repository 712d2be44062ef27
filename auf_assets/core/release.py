"""A released preference dataset: rows, split, shards, manifest and dataset card. No Dagster.

The inputs are the frames the store returns for a set of rounds (`release_pairs`,
`release_completions`, `release_judge_scores`, `release_reward_models`); the output is a folder
laid out as a Hugging Face dataset repository:

    README.md                        the dataset card (YAML header with `configs`, then the body)
    manifest.json                    rows per config and split, sha256 of every file, the rounds
    data/{split}-00000-of-0000N.parquet         config `default`: one row per labelled pair
    trl/{split}-...parquet           config `trl`: the same pairs as TRL's DPOTrainer wants them
    completions/{split}-...parquet   config `completions`: every prompt with all its responses
    report/*.png                     the dataset report's figures, which the card shows (written
                                     by `add_report` after the build; no config reads them)

Everything is deterministic: the same stored rounds give byte-identical files (stable row order,
a split by a hash of `prompt_id`, no timestamps of the build in any file). A split with no rows
is left out of the files and of the card's `configs` (a 0-row parquet file makes
`datasets.load_dataset` fail for every split of its config), with a warning that says why.
The card itself is written by `auf_assets.core.release_card`.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from auf_assets.core.judging import ASPECTS
from auf_assets.core.settings import TEST_FRACTION

MANIFEST = "manifest.json"
CARD = "README.md"
FORMAT = "auf-release/1"
# config name -> folder in the repo (the Hub's convention: the default config lives in data/)
CONFIG_DIRS = {"default": "data", "trl": "trl", "completions": "completions"}
REPORT_DIR = "report"
LABELLED = ("a", "b")
NOT_RELEASED = ("tie", "failed", "unlabelled")


MAX_SHARD_MB = 500  # the largest parquet shard of a release, before compression


class ReleaseError(ValueError):
    """The dataset cannot be built from what is stored (the message says why)."""


@dataclass(frozen=True)
class ReleaseOptions:
    test_fraction: float = TEST_FRACTION
    train_split: str = "train"
    test_split: str = "test"
    max_shard_bytes: int = MAX_SHARD_MB * 2**20
    license: str = ""
    language: tuple[str, ...] = ()
    pretty_name: str = ""
    repo_id: str = ""

    def __post_init__(self) -> None:
        if not 0.0 <= self.test_fraction < 1.0:
            raise ReleaseError(f"test_fraction must be in [0, 1), got {self.test_fraction}")
        for name in (self.train_split, self.test_split):
            if not name or not all(c.isalnum() or c == "_" for c in name):
                raise ReleaseError(f"split names are letters, digits and '_', got {name!r}")
        if self.train_split == self.test_split:
            raise ReleaseError(f"the two splits need different names, got {self.train_split!r}")
        if self.max_shard_bytes < 1:
            raise ReleaseError("max_shard_bytes must be positive")

    @property
    def splits(self) -> tuple[str, str]:
        return (self.train_split, self.test_split)


def version_name(round_ids: Sequence[str], round_indices: Sequence[int]) -> str:
    """`rounds-0001-0012` for a contiguous run of rounds; a hash suffix marks a gap."""
    if not round_ids:
        raise ReleaseError("no rounds to release")
    first, last = min(round_indices), max(round_indices)
    name = f"rounds-{first:04d}-{last:04d}"
    if sorted(round_indices) != list(range(first, last + 1)):
        digest = hashlib.sha256(",".join(sorted(round_ids)).encode()).hexdigest()[:8]
        name += f"-n{len(round_ids)}-{digest}"
    return name


def in_test_split(prompt_ids: pl.Series, test_fraction: float) -> pl.Series:
    """True for the prompts of the test split: a sha256 of the id, so a prompt never moves."""
    if test_fraction <= 0:
        return pl.Series([False] * len(prompt_ids), dtype=pl.Boolean)
    values = [
        int.from_bytes(hashlib.sha256(f"auf-split|{pid}".encode()).digest()[:8], "big") / 2**64
        for pid in prompt_ids
    ]
    return pl.Series(values, dtype=pl.Float64) < test_fraction  # typed: an empty input too


@dataclass(frozen=True)
class Splits:
    """Each config's rows by split, without the empty splits, and why a split is missing."""

    frames: dict[str, dict[str, pl.DataFrame]]
    warnings: list[str]

    @property
    def rows(self) -> dict[str, dict[str, int]]:
        return {c: {s: f.height for s, f in splits.items()} for c, splits in self.frames.items()}


def split_configs(tables: Mapping[str, pl.DataFrame], options: ReleaseOptions) -> Splits:
    """Split every config's rows by prompt; an empty split is left out, with a warning."""
    frames: dict[str, dict[str, pl.DataFrame]] = {}
    empty: dict[str, list[str]] = {}
    for config, frame in tables.items():
        test = in_test_split(frame["prompt_id"], options.test_fraction)
        parts = {options.train_split: frame.filter(~test), options.test_split: frame.filter(test)}
        frames[config] = {split: part for split, part in parts.items() if part.height}
        for split, part in parts.items():
            if part.height == 0:
                empty.setdefault(split, []).append(config)
    warnings = [
        _empty_split_warning(split, configs, tables[configs[0]]["prompt_id"].n_unique(), options)
        for split, configs in empty.items()
    ]
    return Splits({c: s for c, s in frames.items() if s}, warnings)


def _empty_split_warning(
    split: str, configs: Sequence[str], prompts: int, options: ReleaseOptions
) -> str:
    where = "" if set(configs) == set(CONFIG_DIRS) else f" of {', '.join(configs)}"
    fraction = f"test_fraction {options.test_fraction:g} (a hash of prompt_id decides)"
    if split == options.test_split and options.test_fraction == 0:
        return f"no {split} split (test_fraction 0), so there are no held-out pairs"
    if split == options.train_split:
        who = "its one prompt falls" if prompts == 1 else f"all its {prompts} prompts fall"
        return (
            f"the {split} split{where} is empty: {who} under {fraction}. It is left out of the "
            "files and the card; a smaller test_fraction or more prompts gives one"
        )
    who = "its one prompt does not fall" if prompts == 1 else f"none of its {prompts} prompts falls"
    return (
        f"the {split} split{where} is empty: {who} under {fraction}. It is left out of the files "
        "and the card, so there are no held-out pairs; a larger test_fraction or more prompts "
        "gives one"
    )


def _turn(role: str, content: pl.Expr) -> pl.Expr:
    # Field order as in the Hugging Face preference sets: {"content", "role"}.
    return pl.struct(content.alias("content"), pl.lit(role).alias("role"))


def _side(a_wins: pl.Expr, col: str) -> tuple[pl.Expr, pl.Expr]:
    """(chosen, rejected) values of a per-response column stored as `<col>_a` / `<col>_b`."""
    a, b = pl.col(f"{col}_a"), pl.col(f"{col}_b")
    return pl.when(a_wins).then(a).otherwise(b), pl.when(a_wins).then(b).otherwise(a)


def aspect_scores(judge_scores: pl.DataFrame) -> pl.DataFrame:
    """completion_id -> struct of the rubric's aspect scores (null where not judged or failed)."""
    ok = judge_scores.filter(~pl.col("failed") & pl.col("aspect").is_in(list(ASPECTS)))
    wide = pl.DataFrame({"completion_id": ok["completion_id"].unique().sort()})
    for aspect in ASPECTS:
        per = (
            ok.filter(pl.col("aspect") == aspect)
            .group_by("completion_id")
            .agg(pl.col("score").mean().alias(aspect))
        )
        wide = wide.join(per, on="completion_id", how="left")
    return wide.select("completion_id", pl.struct(*ASPECTS).alias("aspects"))


def preference_rows(
    pairs: pl.DataFrame, judge_scores: pl.DataFrame
) -> tuple[pl.DataFrame, dict[str, int]]:
    """The `default` config: one row per labelled pair, and the count of pairs left out."""
    counts = Counter(pairs["preference"].to_list())
    left_out = {k: int(counts.get(k, 0)) for k in NOT_RELEASED}
    unknown = sorted(set(counts) - set(LABELLED) - set(NOT_RELEASED))
    if unknown:
        raise ReleaseError(f"verdicts with unknown preference values: {unknown}")
    rows = pairs.filter(pl.col("preference").is_in(list(LABELLED)))
    aspects = aspect_scores(judge_scores)
    rows = rows.join(
        aspects.rename({"completion_id": "completion_a", "aspects": "aspects_a"}),
        on="completion_a",
        how="left",
    ).join(
        aspects.rename({"completion_id": "completion_b", "aspects": "aspects_b"}),
        on="completion_b",
        how="left",
    )
    a_wins = pl.col("preference") == "a"
    sides = {
        col: _side(a_wins, col)
        for col in (
            "completion",
            "response",
            "score",
            "member",
            "model",
            "sampling",
            "principle",
            "aspects",
            "mu",
            "sigma",
        )
    }
    user = _turn("user", pl.col("prompt"))
    out = rows.select(
        "prompt_id",
        "prompt",
        pl.concat_list(user, _turn("assistant", sides["response"][0])).alias("chosen"),
        pl.concat_list(user, _turn("assistant", sides["response"][1])).alias("rejected"),
        pl.concat_list(user, _turn("assistant", sides["response"][0])).alias("messages"),
        sides["score"][0].cast(pl.Float64).alias("score_chosen"),
        sides["score"][1].cast(pl.Float64).alias("score_rejected"),
        "pair_id",
        pl.col("round_id").alias("round"),
        "method",
        # The rule that picked the pair when the method could not (a policy method's first
        # round: random); null when the method picked it.
        pl.col("fallback").cast(pl.String).alias("method_fallback"),
        pl.col("beta").cast(pl.Float64),
        sides["completion"][0].alias("chosen_completion_id"),
        sides["completion"][1].alias("rejected_completion_id"),
        sides["member"][0].alias("chosen_member"),
        sides["model"][0].alias("chosen_model"),
        sides["sampling"][0].alias("chosen_sampling"),
        sides["principle"][0].alias("chosen_principle"),
        sides["member"][1].alias("rejected_member"),
        sides["model"][1].alias("rejected_model"),
        sides["sampling"][1].alias("rejected_sampling"),
        sides["principle"][1].alias("rejected_principle"),
        "label_source",
        "labeller",
        pl.col("n_labels").cast(pl.Int32),
        sides["aspects"][0].alias("chosen_aspect_scores"),
        sides["aspects"][1].alias("rejected_aspect_scores"),
        sides["mu"][0].cast(pl.Float64).alias("chosen_reward_mean"),
        sides["sigma"][0].cast(pl.Float64).alias("chosen_reward_std"),
        sides["mu"][1].cast(pl.Float64).alias("rejected_reward_mean"),
        sides["sigma"][1].cast(pl.Float64).alias("rejected_reward_std"),
        "reward_model_round",
        "labelled_at",
    )
    return out, left_out


def trl_rows(preferences: pl.DataFrame) -> pl.DataFrame:
    """The `trl` config: `prompt` as the user turn(s), `chosen`/`rejected` as the assistant turn.

    This is the explicit-prompt conversational form TRL's DPOTrainer and RewardTrainer take (the
    Hugging Face layout, with a string `prompt` next to whole conversations, does not load into
    TRL 1.16 as it is). `to_trl_example` does the same for one row of the default config.
    """
    return preferences.select(
        "prompt_id",
        pl.col("chosen").list.head(pl.col("chosen").list.len() - 1).alias("prompt"),
        pl.col("chosen").list.tail(1).alias("chosen"),
        pl.col("rejected").list.tail(1).alias("rejected"),
        "score_chosen",
        "score_rejected",
        "pair_id",
        "round",
    )


def to_trl_example(example: Mapping[str, Any]) -> dict[str, Any]:
    """One row of the Hugging Face layout as TRL wants it; use with `Dataset.map`.

    `load_dataset(repo)["train"].map(to_trl_example, remove_columns=["messages"])` gives what
    `load_dataset(repo, "trl")` gives (plus the provenance columns).
    """
    chosen, rejected = list(example["chosen"]), list(example["rejected"])
    return {"prompt": chosen[:-1], "chosen": chosen[-1:], "rejected": rejected[-1:]}


def completion_rows(completions: pl.DataFrame, pairs: pl.DataFrame) -> pl.DataFrame:
    """The `completions` config: one row per prompt with every response (UltraFeedback's layout).

    Each response carries the system prompt it was generated under (and its principle). Only
    the two responses of the selected pair were judged; the others carry the reward model's
    mean and spread alone. `preference` says what became of the pair (a, b, tie, failed, ...).
    """
    judged = pl.concat(
        [
            pairs.select(
                pl.col(f"completion_{side}").alias("completion_id"),
                pl.col(f"score_{side}").cast(pl.Float64).alias("judge_score"),
            )
            for side in ("a", "b")
        ]
    )
    per_pair = pairs.select(
        "prompt_id",
        "round_id",
        "pair_id",
        "preference",
        pl.concat_list("completion_a", "completion_b").alias("selected"),
        pl.when(pl.col("preference") == "a")
        .then("completion_a")
        .when(pl.col("preference") == "b")
        .then("completion_b")
        .alias("chosen_completion_id"),
        pl.when(pl.col("preference") == "a")
        .then("completion_b")
        .when(pl.col("preference") == "b")
        .then("completion_a")
        .alias("rejected_completion_id"),
    )
    responses = completions.join(judged, on="completion_id", how="left").select(
        "round_id",
        "round_index",
        "prompt_id",
        "prompt",
        "source",
        pl.struct(
            "completion_id",
            "member",
            "model",
            "sampling",
            "principle",
            "system_prompt",
            "response",
            pl.col("mu").cast(pl.Float64).alias("reward_mean"),
            pl.col("sigma").cast(pl.Float64).alias("reward_std"),
            pl.col("judge_score").cast(pl.Float64),
        ).alias("completion"),
    )
    grouped = responses.group_by(
        "round_id", "round_index", "prompt_id", "prompt", "source", maintain_order=True
    ).agg(pl.col("completion").alias("completions"))
    return (
        grouped.join(per_pair, on=["prompt_id", "round_id"], how="left")
        .sort("round_index", "prompt_id")
        .select(
            "prompt_id",
            "prompt",
            "source",
            pl.col("round_id").alias("round"),
            "completions",
            "pair_id",
            "selected",
            "preference",
            "chosen_completion_id",
            "rejected_completion_id",
        )
    )


# -- files ------------------------------------------------------------------------------------


def _standard_type(t: pa.DataType) -> pa.DataType:
    """polars writes large strings and lists; the Hugging Face sets use the standard ones."""
    if pa.types.is_large_string(t):
        return pa.string()
    if pa.types.is_large_list(t) or pa.types.is_list(t):
        return pa.list_(_standard_type(t.value_type))
    if pa.types.is_struct(t):
        return pa.struct([pa.field(f.name, _standard_type(f.type), f.nullable) for f in t])
    return t


def standard_table(table: pa.Table) -> pa.Table:
    schema = pa.schema([pa.field(f.name, _standard_type(f.type), f.nullable) for f in table.schema])
    return table.cast(schema)


def standard_shards(frame: pl.DataFrame, max_bytes: int) -> list[pa.Table]:
    """The frame in shards of about `max_bytes`, each in the standard Arrow types. Each shard's
    rows are copied out (`take`) before the cast: a standard string column holds at most 2 GiB, a
    release's responses at UltraFeedback's size are more (3 GB of text at 2M responses), and a
    slice (in Arrow or polars) keeps the whole buffer, which the cast checks, nested lists too."""
    table = frame.to_arrow()
    n = max(1, math.ceil(table.nbytes / max_bytes))
    per = math.ceil(table.num_rows / n)
    return [
        standard_table(table.take(np.arange(start, min(start + per, table.num_rows))))
        for start in range(0, table.num_rows, per)
    ]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass
class ReleaseFiles:
    """What `write_release` wrote: the folder, the manifest and its hash."""

    folder: Path
    manifest: dict
    manifest_sha256: str
    rows: dict[str, dict[str, int]] = field(default_factory=dict)


def write_tables(
    folder: Path, configs: Mapping[str, Mapping[str, pl.DataFrame]], max_shard_bytes: int
) -> dict[str, dict[str, list[str]]]:
    """Write every (config, split) frame as parquet shards; returns their paths in the repo."""
    written: dict[str, dict[str, list[str]]] = {}
    for config, splits in configs.items():
        sub = CONFIG_DIRS[config]
        (folder / sub).mkdir(parents=True, exist_ok=True)
        written[config] = {}
        for split, frame in splits.items():
            if frame.height == 0:  # `datasets` cannot read a 0-row shard: see split_configs
                raise ReleaseError(f"refusing to write the empty {split} split of {config}")
            shards = standard_shards(frame, max_shard_bytes)
            names = []
            for i, shard in enumerate(shards):
                name = f"{sub}/{split}-{i:05d}-of-{len(shards):05d}.parquet"
                # No statistics/page index settings that vary; the writer records only its own
                # version, so the same rows give the same bytes.
                pq.write_table(shard, folder / name, compression="zstd", row_group_size=10_000)
                names.append(name)
            written[config][split] = names
    return written


def config_entries(rows: Mapping[str, Mapping[str, int]]) -> list[dict]:
    """The card's `configs` YAML: where each config's written splits live (what `load_dataset`
    reads); a split that was not written is not declared."""
    return [
        {
            "config_name": config,
            **({"default": True} if config == "default" else {}),
            "data_files": [{"split": split, "path": f"{sub}/{split}-*"} for split in rows[config]],
        }
        for config, sub in CONFIG_DIRS.items()
        if rows.get(config)
    ]


def finish_release(
    staging: Path,
    target: Path,
    *,
    card_text: str,
    manifest: dict,
) -> ReleaseFiles:
    """Write the card and the manifest into `staging`, then move it to `target` atomically.

    The manifest lists the sha256 and size of every other file. A target that exists is
    replaced only after the new folder is complete, so a failure leaves the old version intact.
    """
    staging.chmod(0o755)  # made by mkdtemp (0700): a release is meant to be read by others
    (staging / CARD).write_text(card_text, encoding="utf-8")
    files = sorted(p for p in staging.rglob("*") if p.is_file() and p.name != MANIFEST)
    manifest = {
        **manifest,
        "files": {
            str(p.relative_to(staging)): {"sha256": _sha256(p), "bytes": p.stat().st_size}
            for p in files
        },
    }
    text = json.dumps(manifest, indent=2, sort_keys=True) + "\n"
    (staging / MANIFEST).write_text(text, encoding="utf-8")
    target.parent.mkdir(parents=True, exist_ok=True)
    old = None
    if target.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
        os.replace(target, old / "v")
    os.replace(staging, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return ReleaseFiles(
        folder=target,
        manifest=manifest,
        manifest_sha256=hashlib.sha256(text.encode()).hexdigest(),
        rows=manifest["rows"],
    )


def add_report(folder: Path, figures: Mapping[str, bytes], card_text: str) -> ReleaseFiles:
    """Put the report's files into a built version under `report/`, with the card that shows
    them; returns the version's new manifest.

    The version is checked against its manifest first (a damaged one is left as it is), then
    rebuilt beside itself: the data files are hard links (a copy where links are not possible),
    earlier report files are dropped, and `finish_release` swaps the new folder in whole and
    lists every file in the manifest again (with `report`: the report's file names).
    """
    folder = Path(folder)
    manifest = verify_release(folder)
    for name in figures:
        if not name or "/" in name or "\\" in name or name.startswith("."):
            raise ReleaseError(f"a report file is a plain file name, got {name!r}")
    keep = {CARD, MANIFEST, REPORT_DIR}
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        shutil.copytree(
            folder,
            staging,
            dirs_exist_ok=True,
            copy_function=_link_or_copy,
            ignore=lambda where, names: keep & set(names) if Path(where) == folder else set(),
        )
        (staging / REPORT_DIR).mkdir()
        for name, data in sorted(figures.items()):
            (staging / REPORT_DIR / name).write_bytes(data)
        fields = {k: v for k, v in manifest.items() if k != "files"}
        fields["report"] = [f"{REPORT_DIR}/{name}" for name in sorted(figures)]
        return finish_release(staging, folder, card_text=card_text, manifest=fields)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def _link_or_copy(source: str, target: str) -> None:
    """A hard link (a version's files are never written in place), else a copy."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def read_manifest(folder: Path) -> dict:
    path = Path(folder) / MANIFEST
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ReleaseError(f"{folder} is not a released dataset (no {MANIFEST})") from exc
    except json.JSONDecodeError as exc:
        raise ReleaseError(f"{path} is not valid JSON: {exc}") from exc


def verify_release(folder: Path) -> dict:
    """Check every file against the manifest; returns the manifest. Raises ReleaseError."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    listed = manifest.get("files", {})
    present = {
        str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST
    }
    if missing := sorted(set(listed) - present):
        raise ReleaseError(f"{folder}: files listed in the manifest are missing: {missing[:5]}")
    if extra := sorted(present - set(listed)):
        raise ReleaseError(f"{folder}: files not in the manifest: {extra[:5]}")
    for name, info in listed.items():
        if _sha256(folder / name) != info["sha256"]:
            raise ReleaseError(f"{folder / name} changed since the dataset was built")
    return manifest
