"""How well a judge agrees with people, from the pairs both labelled, no Dagster.

A comparison frame holds one row per pair the judge screened in a `judge+people` round:
``round_id``, ``pair_id``, ``route`` (`core.routing`: where the pair went), ``judge`` (the
judge's verdict: a / b / tie / failed), ``confidence`` (its P(chosen is better), null for a
tie or failure) and ``people`` (people's resolved verdict: a / b / tie, or unlabelled). Only
rows where both gave a / b / tie are compared.

Agreement is reported per route as well as in total: the `unsure` pairs are by construction the
ones the judge is least sure of, so their agreement is lower than the judge's on the pairs it
decides alone; the random `calibration` pairs measure that (unbiased) agreement.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import polars as pl

from auf_assets.core.agreement import (
    LABELS,
    Agreement,
    CalibrationBin,
    agreement,
    calibration_bins,
    fit_temperature,
)
from auf_assets.core.judging import decide_preference
from auf_assets.core.labels import Vote, resolve_votes
from auf_assets.core.routing import ROUTE_CALIBRATION, ROUTE_UNSURE

COMPARISON_SCHEMA = {
    "round_id": pl.String,
    "pair_id": pl.String,
    "route": pl.String,
    "judge": pl.String,
    "confidence": pl.Float64,
    "people": pl.String,
}


def compared(frame: pl.DataFrame) -> pl.DataFrame:
    """The rows where both the judge and people gave a verdict (a, b or tie)."""
    return frame.filter(pl.col("judge").is_in(LABELS) & pl.col("people").is_in(LABELS))


def _agreement(rows: pl.DataFrame) -> Agreement:
    return agreement(rows["judge"].to_list(), rows["people"].to_list())


def agreement_summary(frame: pl.DataFrame) -> dict[str, dict[str, float]]:
    """Agreement of all compared pairs and per route (``all``, ``unsure``, ``calibration``):
    each ``{"pairs", "accuracy", "kappa"}`` (NaN where there is nothing to compare)."""
    rows = compared(frame)
    parts = {
        "all": rows,
        ROUTE_UNSURE: rows.filter(pl.col("route") == ROUTE_UNSURE),
        ROUTE_CALIBRATION: rows.filter(pl.col("route") == ROUTE_CALIBRATION),
    }
    out = {}
    for name, part in parts.items():
        a = _agreement(part)
        out[name] = {"pairs": a.n, "accuracy": a.accuracy, "kappa": a.kappa}
    return out


def agreement_by_round(frame: pl.DataFrame) -> pl.DataFrame:
    """Per round (in the frame's order of first appearance): pairs compared, accuracy and kappa,
    in total and on the calibration pairs alone."""
    rounds = frame["round_id"].unique(maintain_order=True).to_list()
    records = []
    for round_id in rounds:
        summary = agreement_summary(frame.filter(pl.col("round_id") == round_id))
        records.append(
            {
                "round_id": round_id,
                "pairs": summary["all"]["pairs"],
                "accuracy": summary["all"]["accuracy"],
                "kappa": summary["all"]["kappa"],
                "calibration_pairs": summary[ROUTE_CALIBRATION]["pairs"],
                "calibration_accuracy": summary[ROUTE_CALIBRATION]["accuracy"],
            }
        )
    schema = {
        "round_id": pl.String,
        "pairs": pl.Int64,
        "accuracy": pl.Float64,
        "kappa": pl.Float64,
        "calibration_pairs": pl.Int64,
        "calibration_accuracy": pl.Float64,
    }
    return pl.DataFrame(records, schema=schema)


def judge_calibration(frame: pl.DataFrame, n_bins: int = 5) -> list[CalibrationBin]:
    """The judge's confidence against how often people agreed, over the compared decided
    verdicts, in `n_bins` bins over [0.5, 1] (a confidence just under 0.5, see `core.routing`,
    counts in the first)."""
    rows = compared(frame).filter(
        pl.col("confidence").is_not_null() & pl.col("confidence").is_not_nan()
    )
    bins = calibration_bins(
        rows["confidence"].clip(0.5, 1.0).to_list(),
        (rows["judge"] == rows["people"]).to_list(),
        n_bins=2 * n_bins,
    )
    return bins[n_bins:]


def reward_temperature(frame: pl.DataFrame) -> float | None:
    """For a reward-model screening judge: the `confidence_temperature` that fits people's
    choices on the pairs both decided (`core.agreement.fit_temperature`); None for another
    judge or with nothing to fit."""
    if "source" not in frame.columns or "score_a" not in frame.columns:
        return None
    rows = compared(frame).filter(
        (pl.col("source") == "reward_model_judge")
        & pl.col("people").is_in(["a", "b"])
        & pl.col("score_a").is_not_null()
        & pl.col("score_b").is_not_null()
    )
    if rows.height == 0:
        return None
    gaps = (rows["score_a"] - rows["score_b"]).to_numpy()
    return fit_temperature(gaps, (rows["people"] == "a").to_numpy())


def aspect_verdicts(
    judge_scores: pl.DataFrame, pairs: pl.DataFrame, *, tie_margin: float = 0.0
) -> pl.DataFrame:
    """Per pair and rubric aspect, the verdict that aspect's scores alone give (a / b / tie /
    failed): ``pair_id``, ``aspect``, ``judge``. `judge_scores` rows as stored (completion_id,
    aspect, score, failed); `pairs` with pair_id, completion_a, completion_b."""
    scores = {
        (row["completion_id"], row["aspect"]): (
            math.nan if row["failed"] or row["score"] is None else float(row["score"])
        )
        for row in judge_scores.iter_rows(named=True)
    }
    aspects = sorted(judge_scores["aspect"].unique().to_list()) if judge_scores.height else []
    records = []
    for pair in pairs.iter_rows(named=True):
        for aspect in aspects:
            a = scores.get((pair["completion_a"], aspect), math.nan)
            b = scores.get((pair["completion_b"], aspect), math.nan)
            if math.isnan(a) or math.isnan(b):
                verdict = "failed"
            else:
                verdict = decide_preference(a, b, tie_margin=tie_margin)
            records.append({"pair_id": pair["pair_id"], "aspect": aspect, "judge": verdict})
    return pl.DataFrame(
        records, schema={"pair_id": pl.String, "aspect": pl.String, "judge": pl.String}
    )


def agreement_by_aspect(
    aspects: pl.DataFrame, people: Mapping[str, str]
) -> dict[str, dict[str, float]]:
    """Per aspect, the agreement of its verdicts (`aspect_verdicts`) with people's
    (pair id -> a / b / tie / unlabelled)."""
    out = {}
    for aspect in sorted(aspects["aspect"].unique().to_list()) if aspects.height else []:
        rows = aspects.filter(pl.col("aspect") == aspect).with_columns(
            people=pl.col("pair_id").replace_strict(dict(people), default=None)
        )
        a = _agreement(compared(rows))
        out[aspect] = {"pairs": a.n, "accuracy": a.accuracy, "kappa": a.kappa}
    return out


def rounded(summary: Mapping[str, Mapping[str, float]], places: int = 3) -> dict:
    """A summary with its floats rounded and NaN as None (JSON metadata)."""
    return {
        name: {
            k: (None if isinstance(v, float) and np.isnan(v) else round(v, places))
            for k, v in part.items()
        }
        for name, part in summary.items()
    }


def people_preferences(labels: pl.DataFrame, resolution: str) -> dict[str, str]:
    """pair id -> people's resolved verdict, from `labels` rows (pair_id, labeller, choice,
    labelled_at) in the store's order (later rows count as later)."""
    votes: dict[str, list[Vote]] = {}
    for order, row in enumerate(labels.iter_rows(named=True)):
        votes.setdefault(row["pair_id"], []).append(
            Vote(row["labeller"], row["choice"], row["labelled_at"], order)
        )
    return {pair: resolve_votes(v, resolution).preference for pair, v in votes.items()}


def comparison_frame(screening: pl.DataFrame, people: Mapping[str, str]) -> pl.DataFrame:
    """The comparison frame (module docstring) from `judge_screening` rows and people's
    verdicts; other columns of `screening` (completion ids, models) are kept."""
    frame = screening.rename({"preference": "judge"}).with_columns(
        people=pl.col("pair_id").replace_strict(dict(people), default="unlabelled")
    )
    first = [c for c in COMPARISON_SCHEMA if c in frame.columns]
    return frame.select(*first, pl.exclude(first)).cast(
        {c: t for c, t in COMPARISON_SCHEMA.items() if c in frame.columns}
    )
