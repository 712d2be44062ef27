"""Jobs: ingest prompts, and run one active round (one partition) end to end."""

from __future__ import annotations

import dagster as dg

from auf_assets.assets import ROUND_ASSETS, prompt_pool

prompt_ingestion_job = dg.define_asset_job(
    "prompt_ingestion",
    selection=dg.AssetSelection.assets(prompt_pool),
    description="Ingest prompts into the pool (idempotent: known prompt ids are kept).",
)

active_round_job = dg.define_asset_job(
    "active_round",
    selection=dg.AssetSelection.assets(*ROUND_ASSETS),
    description="One active round: prompts -> completions -> uncertainty scores -> pairs -> "
    "judgements -> reward model.",
)
