"""Jobs: ingest prompts; run a round end to end, or in the two halves people label between."""

from __future__ import annotations

import dagster as dg

from auf_assets.assets import LABELLED_ASSETS, ROUND_ASSETS, SELECTION_ASSETS, prompt_pool

prompt_ingestion_job = dg.define_asset_job(
    "prompt_ingestion",
    selection=dg.AssetSelection.assets(prompt_pool),
    description="Ingest prompts into the pool (idempotent: known prompt ids are kept).",
)

active_round_job = dg.define_asset_job(
    "active_round",
    selection=dg.AssetSelection.assets(*ROUND_ASSETS),
    description="One active round with an automatic judge: prompts -> completions -> "
    "uncertainty scores -> pairs -> judgements -> reward model.",
)

pair_selection_job = dg.define_asset_job(
    "pair_selection",
    selection=dg.AssetSelection.assets(*SELECTION_ASSETS),
    description="The first half of a round people label: prompts -> completions -> uncertainty "
    "scores -> pairs -> the annotation batch in the outbox.",
)

labelled_round_job = dg.define_asset_job(
    "labelled_round",
    selection=dg.AssetSelection.assets(*LABELLED_ASSETS),
    description="The second half, once the labels are in: judgements (resolved labels) -> "
    "reward model.",
)

ROUND_JOBS = (active_round_job, pair_selection_job, labelled_round_job)
