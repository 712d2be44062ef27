"""`llm_judge`: the rubric LLM judge scores every response per aspect; the pair's verdict
compares the overall scores (spec section 3)."""

from __future__ import annotations

import time

import dagster as dg
import numpy as np
import polars as pl

from auf_assets.core.agreement import win_probability
from auf_assets.core.judging import ASPECTS
from auf_assets.core.verdicts import verdicts_from_scores
from auf_assets.label_sources.base import LabelRequest, Labels, LabelSourceAdapter, judged_items
from auf_assets.reporting import progress_logger
from resources.ledger import StepLedger, ledger_prices
from resources.store import CallCache, utcnow


def label(request: LabelRequest) -> Labels:
    context, judge, store = request.context, request.source.judge, request.store
    round_id, pairs = request.round_id, request.pairs
    items = judged_items(store, round_id, pairs)
    context.log.info(f"judging {items.height} responses x {len(ASPECTS)} aspects with {judge.name}")
    ledger = StepLedger(store, context.run.run_id, round_id, "judgements")
    cache = CallCache(store, round_id, "judgements")
    started = time.perf_counter()
    with ledger.actor(judge.name, judge.model, **judge.placement()) as usage:
        overall_scores, rated = judge.overall(
            items["prompt"].to_list(),
            items["response"].to_list(),
            progress=progress_logger(context, "judge calls"),
            cache=cache,
            usage=usage,
        )
    judge_s = time.perf_counter() - started
    aspect_rows = pl.DataFrame(
        {
            "round_id": round_id,
            "completion_id": [items["completion_id"][r.item] for r in rated],
            "aspect": [r.aspect for r in rated],
            "judge": judge.name,
            "score": [r.result.score for r in rated],
            "failed": [r.result.failed for r in rated],
            "reason": [r.result.reason for r in rated],
            "digit_mass": [r.result.digit_mass for r in rated],
            "attempts": [r.attempts for r in rated],
        },
        schema_overrides={
            "score": pl.Float64,
            "reason": pl.String,
            "digit_mass": pl.Float64,
            "attempts": pl.Int32,
        },
    )
    overall = dict(zip(items["completion_id"], overall_scores, strict=True))
    # Each response's digit distributions of the aspects its overall score averages.
    distributions: dict[str, list] = {}
    for r in rated:
        if not r.result.failed:
            completion = items["completion_id"][r.item]
            distributions.setdefault(completion, []).append(r.result.digit_probs)
    verdicts = verdicts_from_scores(
        pairs,
        overall,
        tie_margin=request.tie_margin,
        labeller=judge.name,
        source="llm_judge",
        labelled_at=utcnow(),
        a_beats_b=lambda first, second: win_probability(
            np.array(distributions[first]), np.array(distributions[second])
        ),
    )
    failures = aspect_rows.group_by("aspect").agg(pl.col("failed").mean()).sort("aspect")
    metadata = {
        "judge": judge.name,
        "judge_calls": aspect_rows.height,
        "aspect_failure_rate": dg.MetadataValue.json(
            {a: round(f, 3) for a, f in failures.iter_rows()}
        ),
        "retried_aspects": int((aspect_rows["attempts"] > 1).sum()),
        # Text-fallback scores carry no digit mass (NaN): averaged over the others, never NaN.
        "mean_digit_mass": float(aspect_rows["digit_mass"].fill_nan(None).mean() or 0.0),
        "judge_seconds": round(judge_s, 2),
        **ledger.metadata(ledger_prices(context)),
    }
    return Labels(verdicts, aspect_rows, metadata)


SOURCE = LabelSourceAdapter(
    name="llm_judge",
    description="the rubric LLM judge: per-aspect scores, the overall score decides",
    label=label,
    score_answers=lambda source, prompts, answers, progress: source.judge.overall(
        prompts, answers, progress=progress
    )[0],
)
