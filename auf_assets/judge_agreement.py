"""The judge's agreement with people, read from the store: the screening verdicts of
`judge+people` rounds against people's labels of the same pairs (the measures themselves are
pure, in `core.judge_vs_people`). Read by the `judge_agreement` check, the judgements metadata,
`auf labels status` and the dataset report."""

from __future__ import annotations

from collections.abc import Sequence

import polars as pl

from auf_assets.core.judge_vs_people import (
    agreement_by_aspect,
    aspect_verdicts,
    comparison_frame,
    people_preferences,
)
from resources.store import DuckDBStore


def comparisons(
    store: DuckDBStore, resolution: str, round_ids: Sequence[str] | None = None
) -> pl.DataFrame:
    """One row per screened pair of `round_ids` (None: every round): the judge's verdict and
    confidence, where the pair went, people's resolved verdict (or `unlabelled`), the two
    responses and their models."""
    screening = store.screening_of_rounds(round_ids)
    rounds = screening["round_id"].unique().to_list()
    labels = store.labels_of_rounds(rounds) if rounds else None
    people = people_preferences(labels, resolution) if labels is not None else {}
    return comparison_frame(screening, people)


def aspect_agreement(store: DuckDBStore, frame: pl.DataFrame) -> dict[str, dict[str, float]]:
    """Per rubric aspect of the screening judge, its agreement with people over `frame`'s pairs
    (a `comparisons` frame); empty when the judge scores no aspects (a reward model)."""
    if frame.height == 0:
        return {}
    scores = pl.concat(
        [store.round_rows("judge_scores", r) for r in frame["round_id"].unique().to_list()]
    )
    aspects = aspect_verdicts(scores, frame.select("pair_id", "completion_a", "completion_b"))
    people = dict(zip(frame["pair_id"], frame["people"], strict=True))
    return agreement_by_aspect(aspects, people)
