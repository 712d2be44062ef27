"""Known biases of an AI judge, measured on its verdicts (polars only, no Dagster).

Length bias: how often the chosen response of a decided pair is the longer one, against a base
rate. The base rate is the share of the same pairs where the longer response is the better one
by a reference label (people's, or the oracle's) when the rows carry one, else even odds (0.5).
A judge with no length bias chooses the longer response as often as the reference does. Pairs
whose two responses have the same length say nothing about length and are counted apart.

Self-preference: a judge tends to prefer answers written by its own model family. Where a pair
has both the judge's verdict and people's, each pool member's win rate as the judge saw it is
set against its win rate as people saw it, on the same pairs, and the members of the judge's
family are marked (`model_family` says what a family is).

Lengths are in characters of the response text: every pool has them (a precomputed pool file
may have no token counts), and the bias is about visible length.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import PurePosixPath

import polars as pl

DECIDED = ("a", "b")
EVEN_ODDS = 0.5
BASE_FROM_REFERENCE = "reference"
BASE_FROM_EVEN_ODDS = "even odds"

# A name token that ends a family stem: a size (135m, 7b, 1.5b, 8x7b, 4k) or anything that starts
# with a digit or a "v<digit>" version (3.1, 4o, v0.2).
_STOP_TOKEN = re.compile(r"^(\d|v\d)")


def response_lengths(pairs: pl.DataFrame) -> pl.DataFrame:
    """`pairs` with `length_a` / `length_b`: characters of `response_a` / `response_b`."""
    return pairs.with_columns(
        pl.col("response_a").str.len_chars().alias("length_a"),
        pl.col("response_b").str.len_chars().alias("length_b"),
    )


def _require(frame: pl.DataFrame, columns: tuple[str, ...], what: str) -> None:
    if missing := [c for c in columns if c not in frame.columns]:
        raise ValueError(f"{what} needs the columns {list(columns)}; missing: {missing}")


def length_bias(pairs: pl.DataFrame) -> pl.DataFrame:
    """Per label source: how often the chosen response is the longer one, and the base rate.

    `pairs` has `label_source`, `preference` (a / b / tie / failed / unlabelled), `length_a`,
    `length_b`, and optionally `reference`: another labeller's verdict of the same pair (people
    or the oracle; a / b / tie / null). Only decided pairs (a / b) count. Columns of the result:

    - `decided`: decided pairs whose responses differ in length; `same_length`: the others
    - `chosen_longer`, `chosen_longer_share`: of `decided`, the chosen response is the longer
    - `reference_pairs`: of `decided`, those with a decided reference; `chosen_longer_on_reference`
      the label source chose the longer one among them; `longer_better` the reference did
    - `base_rate`: `longer_better / reference_pairs`, or 0.5 without a reference pair
      (`base_rate_from` says which); `excess`: `chosen_longer_share - base_rate`
    """
    _require(pairs, ("label_source", "preference", "length_a", "length_b"), "length_bias")
    reference = pl.col("reference") if "reference" in pairs.columns else pl.lit(None, pl.String)
    a_longer = pl.col("length_a") > pl.col("length_b")
    rows = pairs.filter(pl.col("preference").is_in(DECIDED)).with_columns(
        (pl.col("length_a") == pl.col("length_b")).alias("same"),
        (a_longer == (pl.col("preference") == "a")).alias("chosen_longer"),
        reference.is_in(DECIDED).fill_null(False).alias("has_reference"),
        (a_longer == (reference == "a")).alias("reference_longer"),
    )
    differ = ~pl.col("same")
    on_reference = differ & pl.col("has_reference")
    out = (
        rows.group_by("label_source")
        .agg(
            differ.sum().alias("decided"),
            pl.col("same").sum().alias("same_length"),
            (differ & pl.col("chosen_longer")).sum().alias("chosen_longer"),
            on_reference.sum().alias("reference_pairs"),
            (on_reference & pl.col("chosen_longer")).sum().alias("chosen_longer_on_reference"),
            (on_reference & pl.col("reference_longer")).sum().alias("longer_better"),
        )
        .with_columns(pl.exclude("label_source").cast(pl.Int64))
    )
    share = pl.col("chosen_longer") / pl.col("decided")
    base = (
        pl.when(pl.col("reference_pairs") > 0)
        .then(pl.col("longer_better") / pl.col("reference_pairs"))
        .otherwise(pl.lit(EVEN_ODDS))
    )
    return (
        out.with_columns(
            pl.when(pl.col("decided") > 0).then(share).alias("chosen_longer_share"),
            base.alias("base_rate"),
            pl.when(pl.col("reference_pairs") > 0)
            .then(pl.lit(BASE_FROM_REFERENCE))
            .otherwise(pl.lit(BASE_FROM_EVEN_ODDS))
            .alias("base_rate_from"),
        )
        .with_columns((pl.col("chosen_longer_share") - pl.col("base_rate")).alias("excess"))
        .sort("label_source")
    )


def model_family(model: str) -> str:
    """The family of a model name: the lowercased stem of its last path part, before the size
    or version.

    The name is split into words at '-', '_' and spaces; the family is the words before the
    first that starts with a digit or with 'v' and a digit (a size such as `135m` or `7b`, a
    version such as `3.1` or `v0.2`). A name without such a word is its own family. So
    `HuggingFaceTB/SmolLM2-135M-Instruct` and `smollm2-360m` are both `smollm2`;
    `meta-llama/Llama-3.1-8B-Instruct` is `llama`; `Qwen2.5-7B-Instruct` is `qwen2.5` (a
    generation written into the first word stays: Qwen2.5 and Qwen3 are different families);
    `tiny-llama0` is `tiny-llama0`. Organisation prefixes inside the last part are kept
    (`Meta-Llama-3-8B` is `meta-llama`): pass another rule to `self_preference` if a pool needs
    one.
    """
    last = PurePosixPath(model.strip().rstrip("/")).name.lower()
    words = [w for w in re.split(r"[-_\s]+", last) if w]
    stem: list[str] = []
    for word in words:
        if _STOP_TOKEN.match(word):
            break
        stem.append(word)
    return "-".join(stem) if stem else last


def self_preference(
    verdicts: pl.DataFrame,
    judge_model: str,
    family: Callable[[str], str] = model_family,
) -> pl.DataFrame:
    """Per pool member: its win rate by the judge's verdicts against people's, on the same pairs.

    `verdicts` has `model_a`, `model_b`, `judge_preference` and `people_preference` (a / b /
    tie / ...), and optionally `member_a` / `member_b` (a pool member; the model name when
    absent). Only pairs that both decided (a / b) count. Columns: `member`, `model`, `family`,
    `judge_family` (the family of `judge_model`, for every row), `same_family`, `appearances`,
    `judge_wins`, `people_wins`, `judge_win_rate`, `people_win_rate`, and `judge_minus_people`:
    a member of the judge's family with a clearly positive value is favoured by the judge.
    """
    _require(
        verdicts,
        ("model_a", "model_b", "judge_preference", "people_preference"),
        "self_preference",
    )
    both = verdicts.filter(
        pl.col("judge_preference").is_in(DECIDED) & pl.col("people_preference").is_in(DECIDED)
    )
    sides = []
    for side in ("a", "b"):
        member = f"member_{side}" if f"member_{side}" in verdicts.columns else f"model_{side}"
        sides.append(
            both.select(
                pl.col(member).alias("member"),
                pl.col(f"model_{side}").alias("model"),
                (pl.col("judge_preference") == side).cast(pl.Int64).alias("judge_win"),
                (pl.col("people_preference") == side).cast(pl.Int64).alias("people_win"),
            )
        )
    judge_family = family(judge_model)
    per_member = (
        pl.concat(sides)
        .group_by("member", "model")
        .agg(
            pl.len().cast(pl.Int64).alias("appearances"),
            pl.col("judge_win").sum().alias("judge_wins"),
            pl.col("people_win").sum().alias("people_wins"),
        )
        .with_columns(
            pl.col("model").map_elements(family, return_dtype=pl.String).alias("family"),
            (pl.col("judge_wins") / pl.col("appearances")).alias("judge_win_rate"),
            (pl.col("people_wins") / pl.col("appearances")).alias("people_win_rate"),
        )
        .with_columns(
            pl.lit(judge_family).alias("judge_family"),
            (pl.col("family") == judge_family).alias("same_family"),
            (pl.col("judge_win_rate") - pl.col("people_win_rate")).alias("judge_minus_people"),
        )
    )
    return per_member.select(
        "member",
        "model",
        "family",
        "judge_family",
        "same_family",
        "appearances",
        "judge_wins",
        "people_wins",
        "judge_win_rate",
        "people_win_rate",
        "judge_minus_people",
    ).sort("member")
