"""`oracle`: the oracle scores of a precomputed pool file (a simulated labeller)."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import polars as pl

from auf_assets.core.response_pool import PoolFileError, oracle_scores
from auf_assets.core.verdicts import scalar_score_rows, verdicts_from_scores
from auf_assets.label_sources.base import LabelRequest, Labels, LabelSourceAdapter
from resources.store import utcnow


def label(request: LabelRequest) -> Labels:
    labelling, pairs, round_id = request.source.labelling, request.pairs, request.round_id
    if not labelling.oracle_pool:
        raise dg.Failure(
            "label source is 'oracle' but no pool file is set: set labelling.oracle_pool "
            "(AUF_ORACLE_POOL) to a file with completion_id and oracle_score"
        )
    ids = pl.concat([pairs["completion_a"], pairs["completion_b"]]).unique().sort().to_list()
    try:
        scores = oracle_scores(labelling.oracle_pool, ids)
    except PoolFileError as exc:
        raise dg.Failure(str(exc)) from exc
    if not scores:
        raise dg.Failure(
            f"none of {round_id}'s responses are in the oracle pool {labelling.oracle_pool}: "
            "read the round's responses from the same file (completions config pool_path)"
        )
    name = f"oracle:{Path(labelling.oracle_pool).name}"
    rows = scalar_score_rows(round_id, name, "oracle", scores, ids, "not in the oracle pool")
    verdicts = verdicts_from_scores(
        pairs,
        scores,
        tie_margin=request.tie_margin,
        labeller=name,
        source="oracle",
        labelled_at=utcnow(),
    )
    request.context.log.info(
        f"looked up {len(scores)}/{len(ids)} oracle scores in {labelling.oracle_pool}"
    )
    return Labels(
        verdicts,
        rows,
        {"judge": name, "oracle_pool": dg.MetadataValue.path(labelling.oracle_pool)},
    )


SOURCE = LabelSourceAdapter(
    name="oracle",
    description="the oracle scores of a pool file (labelling.oracle_pool): a simulated labeller",
    label=label,
)
