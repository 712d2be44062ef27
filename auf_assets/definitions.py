"""The Dagster code location: everything `dagster dev` shows."""

from __future__ import annotations

import dagster as dg

from auf_assets.assets import ROUND_ASSETS, prompt_pool
from auf_assets.checks import ROUND_CHECKS
from auf_assets.jobs import active_round_job, prompt_ingestion_job
from resources import DuckDBStore, FeatureEncoder, GenerationEngine, RubricJudge
from resources.reward_model import UncertaintyModel


def default_resources() -> dict[str, dg.ConfigurableResource]:
    """The embedded default: DuckDB file, packaged models, CPU or the first GPU found."""
    return {
        "store": DuckDBStore(),
        "engine": GenerationEngine(),
        "encoder": FeatureEncoder(),
        "judge": RubricJudge(),
        "uncertainty_model": UncertaintyModel(),
    }


defs = dg.Definitions(
    assets=[prompt_pool, *ROUND_ASSETS],
    asset_checks=ROUND_CHECKS,
    jobs=[prompt_ingestion_job, active_round_job],
    resources=default_resources(),
)
