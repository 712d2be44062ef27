"""What a label-source adapter is given and gives back (see `auf_assets.label_sources`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import dagster as dg
import numpy as np
import polars as pl

from resources.label_source import LabelSource
from resources.lm_types import Progress
from resources.store import DuckDBStore


@dataclass(frozen=True)
class LabelRequest:
    """A round's selected pairs to label (sorted by prompt and pair id)."""

    context: dg.AssetExecutionContext
    source: LabelSource
    store: DuckDBStore
    round_id: str
    pairs: pl.DataFrame
    tie_margin: float  # scores this close are a tie (sources that score responses)


class Labels(NamedTuple):
    verdicts: pl.DataFrame  # one row per pair (`core.verdicts.VERDICT_SCHEMA`)
    scores: pl.DataFrame  # `judge_scores` rows (`core.verdicts.SCORE_SCHEMA`); may be empty
    metadata: dict[str, Any]  # shown on the judgements materialisation


#: scores new (prompt, answer) pairs, e.g. a DPO policy's answers in `policy_eval`
ScoreAnswers = Callable[[LabelSource, Sequence[str], Sequence[str], Progress], np.ndarray]


@dataclass(frozen=True)
class LabelSourceAdapter:
    """One label source: its name (the value of `labelling.source`), what it is, how it labels
    a round's pairs and, where it can, how it scores answers no round generated."""

    name: str
    description: str
    label: Callable[[LabelRequest], Labels]
    score_answers: ScoreAnswers | None = None
    scores_responses: bool = True  # verdicts carry score_a/score_b (shown in the preview)


def judged_items(store: DuckDBStore, round_id: str, pairs: pl.DataFrame) -> pl.DataFrame:
    """The round's responses that appear in `pairs`, with their prompts."""
    wanted = pl.concat([pairs["completion_a"], pairs["completion_b"]]).unique().to_list()
    return store.round_completion_texts(round_id).filter(pl.col("completion_id").is_in(wanted))
