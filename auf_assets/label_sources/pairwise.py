"""`pairwise_judge`: the judge model compares the two responses of a pair directly, asked once
with each response first (`core.pairwise`); the averaged answer decides, and the two orders
measure the judge's position bias."""

from __future__ import annotations

import math
import time

import dagster as dg
import numpy as np
import polars as pl

from auf_assets.core.pairwise import position_bias, probability_a_better
from auf_assets.core.verdicts import scalar_score_rows, verdicts_from_scores
from auf_assets.label_sources.base import LabelRequest, Labels, LabelSourceAdapter, judged_items
from auf_assets.reporting import progress_logger
from resources.ledger import StepLedger, ledger_prices
from resources.store import CallCache, utcnow


def label(request: LabelRequest) -> Labels:
    context, judge, store = request.context, request.source.judge, request.store
    round_id, pairs = request.round_id, request.pairs
    items = judged_items(store, round_id, pairs)
    response = dict(zip(items["completion_id"], items["response"], strict=True))
    prompt = dict(zip(items["completion_id"], items["prompt"], strict=True))
    a, b = pairs["completion_a"].to_list(), pairs["completion_b"].to_list()
    n = pairs.height
    context.log.info(f"comparing {n} pairs in both orders with {judge.model}")
    ledger = StepLedger(store, context.run.run_id, round_id, "judgements")
    started = time.perf_counter()
    with ledger.actor(f"pairwise:{judge.model}", judge.model, **judge.placement()) as usage:
        choices = judge.compare(
            [prompt[c] for c in a] * 2,
            [response[c] for c in a] + [response[c] for c in b],
            [response[c] for c in b] + [response[c] for c in a],
            progress=progress_logger(context, "pairwise calls"),
            cache=CallCache(store, round_id, "judgements"),
            usage=usage,
        )
    as_shown = [c.p_first for c in choices[:n]]
    swapped = [c.p_first for c in choices[n:]]
    scores: dict[str, float] = {}
    for first, second, x, y in zip(a, b, as_shown, swapped, strict=True):
        p = probability_a_better(x, y)
        if not math.isnan(p):
            scores[first], scores[second] = p, 1.0 - p
    name = f"pairwise:{judge.model}"
    ids = items["completion_id"].to_list()
    rows = scalar_score_rows(round_id, name, "pairwise", scores, ids, "no A or B in either order")
    verdicts = verdicts_from_scores(
        pairs,
        scores,
        tie_margin=request.tie_margin,
        labeller=name,
        source="pairwise_judge",
        labelled_at=utcnow(),
        a_beats_b=lambda chosen, _rejected: scores[chosen],
    )
    bias = position_bias(as_shown, swapped)
    masses = [c.letter_mass for c in choices]
    metadata = {
        "judge": name,
        "judge_calls": len(choices),
        "position_bias": dg.MetadataValue.json(
            {
                "pairs_in_both_orders": bias.pairs,
                "flip_rate": None if math.isnan(bias.flip_rate) else round(bias.flip_rate, 3),
                "first_position_rate": None
                if math.isnan(bias.first_position_rate)
                else round(bias.first_position_rate, 3),
            }
        ),
        "mean_letter_mass": round(float(np.mean(masses)), 3) if masses else 0.0,
        "judge_seconds": round(time.perf_counter() - started, 2),
        **ledger.metadata(ledger_prices(context)),
    }
    if bias.pairs and bias.flip_rate > 0.2:
        context.log.warning(
            f"the swapped order flipped {bias.flip_rate:.0%} of {bias.pairs} verdicts: the "
            "judge leans on the position; each verdict averages both orders"
        )
    return Labels(verdicts, rows.with_columns(pl.col("attempts").cast(pl.Int32)), metadata)


SOURCE = LabelSourceAdapter(
    name="pairwise_judge",
    description="the judge model compares the two responses directly, in both orders (the "
    "averaged answer decides; the swap measures position bias)",
    label=label,
)
