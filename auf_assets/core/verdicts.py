"""Verdicts from what a label source gives, no Dagster: a score per response (rubric judge,
reward model, oracle) or people's votes per pair, into one verdict row per pair."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime

import numpy as np
import polars as pl

from auf_assets.core.judging import decide_preference
from auf_assets.core.labels import Vote, resolve_votes

VERDICT_SCHEMA = {
    "pair_id": pl.String,
    "round_id": pl.String,
    "prompt_id": pl.String,
    "score_a": pl.Float64,
    "score_b": pl.Float64,
    "preference": pl.String,
    "chosen_completion_id": pl.String,
    "rejected_completion_id": pl.String,
    "labeller": pl.String,
    "labelled_at": pl.Datetime("us"),
    "source": pl.String,
    "n_labels": pl.Int32,
    "votes": pl.String,
    "raw_choices": pl.String,
    # P(the chosen response really is the better one), from the judge's own uncertainty; null
    # for ties, failures, and sources that give none (people, the oracle).
    "confidence": pl.Float64,
}
SCORE_SCHEMA = {
    "round_id": pl.String,
    "completion_id": pl.String,
    "aspect": pl.String,
    "judge": pl.String,
    "score": pl.Float64,
    "failed": pl.Boolean,
    "reason": pl.String,
    "digit_mass": pl.Float64,
    "attempts": pl.Int32,
}


def chosen_and_rejected(pair: Mapping, pref: str) -> tuple[str | None, str | None]:
    if pref == "a":
        return pair["completion_a"], pair["completion_b"]
    if pref == "b":
        return pair["completion_b"], pair["completion_a"]
    return None, None


def verdicts_from_scores(
    pairs: pl.DataFrame,
    scores: Mapping[str, float],
    *,
    tie_margin: float,
    labeller: str,
    source: str,
    labelled_at: datetime,
    a_beats_b: Callable[[str, str], float] | None = None,
) -> pl.DataFrame:
    """One verdict per pair from a score per response (NaN or absent: the pair failed).

    ``a_beats_b(first, second)``, where the source has it, is the probability that response
    ``first`` is better than ``second``; a decided verdict's ``confidence`` is that probability
    for its chosen side (NaN from it is stored as null).
    """
    verdicts = []
    for pair in pairs.iter_rows(named=True):
        a = scores.get(pair["completion_a"], float("nan"))
        b = scores.get(pair["completion_b"], float("nan"))
        failed = np.isnan(a) or np.isnan(b)
        pref = "failed" if failed else decide_preference(a, b, tie_margin=tie_margin)
        chosen, rejected = chosen_and_rejected(pair, pref)
        confidence = None
        if a_beats_b is not None and chosen is not None:
            p = float(a_beats_b(chosen, rejected))
            confidence = None if math.isnan(p) else p
        verdicts.append(
            {
                "pair_id": pair["pair_id"],
                "round_id": pair["round_id"],
                "prompt_id": pair["prompt_id"],
                "score_a": None if np.isnan(a) else float(a),
                "score_b": None if np.isnan(b) else float(b),
                "preference": pref,
                "chosen_completion_id": chosen,
                "rejected_completion_id": rejected,
                "labeller": labeller,
                "labelled_at": labelled_at,
                "source": source,
                "n_labels": 0 if failed else 1,
                "votes": None,
                "raw_choices": pref,
                "confidence": confidence,
            }
        )
    return pl.DataFrame(verdicts, schema=VERDICT_SCHEMA)


def scalar_score_rows(
    round_id: str,
    judge: str,
    aspect: str,
    scores: Mapping[str, float],
    ids: Sequence[str],
    reason: str,
) -> pl.DataFrame:
    """`judge_scores` rows of a one-number judge: a response without a score failed (`reason`)."""
    return pl.DataFrame(
        {
            "round_id": round_id,
            "completion_id": ids,
            "aspect": aspect,
            "judge": judge,
            "score": [scores.get(c) for c in ids],
            "failed": [c not in scores for c in ids],
            "reason": [None if c in scores else reason for c in ids],
            "digit_mass": None,
            "attempts": 1,
        },
        schema=SCORE_SCHEMA,
    )


def verdicts_from_votes(
    pairs: pl.DataFrame,
    votes: Mapping[str, list[tuple[Vote, Mapping]]],
    resolution: str,
    round_id: str,
) -> pl.DataFrame:
    """One verdict per pair from people's votes (pair id -> (vote, its label row)), resolved
    by `resolution`; a pair nobody labelled is `unlabelled`."""
    verdicts = []
    for pair in pairs.iter_rows(named=True):
        given = votes.get(pair["pair_id"], [])
        res = resolve_votes([v for v, _ in given], resolution)
        chosen, rejected = chosen_and_rejected(pair, res.preference)
        verdicts.append(
            {
                "pair_id": pair["pair_id"],
                "round_id": round_id,
                "prompt_id": pair["prompt_id"],
                "score_a": None,
                "score_b": None,
                "preference": res.preference,
                "chosen_completion_id": chosen,
                "rejected_completion_id": rejected,
                "labeller": "people:" + ",".join(res.voters) if res.voters else "people",
                "labelled_at": max((v.labelled_at for v, _ in given), default=None),
                "source": "people",
                "n_labels": res.n_labels,
                "votes": json.dumps(res.counts) if given else None,
                "raw_choices": ";".join(r["raw_choice"] for _, r in given) or None,
                "confidence": None,
            }
        )
    return pl.DataFrame(verdicts, schema=VERDICT_SCHEMA)
