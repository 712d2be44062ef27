"""`reward_model_judge`: a sequence-classification reward model scores every response; the
higher-scored response of a pair is chosen."""

from __future__ import annotations

import time

import dagster as dg
import numpy as np

from auf_assets.core.agreement import reward_confidence
from auf_assets.core.verdicts import scalar_score_rows, verdicts_from_scores
from auf_assets.label_sources.base import LabelRequest, Labels, LabelSourceAdapter, judged_items
from auf_assets.reporting import progress_logger
from resources.store import utcnow


def label(request: LabelRequest) -> Labels:
    context, reward_judge = request.context, request.source.reward_judge
    items = judged_items(request.store, request.round_id, request.pairs)
    context.log.info(f"scoring {items.height} responses with {reward_judge.name}")
    started = time.perf_counter()
    try:
        rewards = reward_judge.score(
            items["prompt"].to_list(),
            items["response"].to_list(),
            progress=progress_logger(context, "rewards"),
        )
    except ValueError as exc:
        raise dg.Failure(str(exc)) from exc
    scores = {
        c: float(r) for c, r in zip(items["completion_id"], rewards, strict=True) if np.isfinite(r)
    }
    ids = items["completion_id"].to_list()
    rows = scalar_score_rows(
        request.round_id, reward_judge.name, "reward", scores, ids, "non-finite reward"
    )
    verdicts = verdicts_from_scores(
        request.pairs,
        scores,
        tie_margin=request.tie_margin,
        labeller=reward_judge.name,
        source="reward_model_judge",
        labelled_at=utcnow(),
        a_beats_b=lambda first, second: reward_confidence(
            scores[first], scores[second], temperature=reward_judge.confidence_temperature
        ),
    )
    metadata = {
        "judge": reward_judge.name,
        "judge_seconds": round(time.perf_counter() - started, 2),
        "mean_reward": float(np.mean(rewards)) if len(rewards) else 0.0,
    }
    return Labels(verdicts, rows, metadata)


SOURCE = LabelSourceAdapter(
    name="reward_model_judge",
    description="a sequence-classification reward model: the higher reward is chosen",
    label=label,
    score_answers=lambda source, prompts, answers, progress: source.reward_judge.score(
        prompts, answers, progress=progress
    ),
)
