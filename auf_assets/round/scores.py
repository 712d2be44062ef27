"""`reward_scores`: mu and sigma of every response under the previous round's reward model."""

import dagster as dg
import numpy as np
import polars as pl

from auf_assets.partitions import rounds_partitions
from auf_assets.placement import GPU_POOL, GPU_TAGS
from auf_assets.round.features import response_features
from auf_assets.round.shared import GROUP, previous_model
from auf_assets.round_guard import holds_round_chain
from resources.encoder import FeatureEncoder
from resources.reward_model import UncertaintyModel
from resources.store import DuckDBStore


@dg.asset(
    partitions_def=rounds_partitions,
    deps=[response_features],
    group_name=GROUP,
    kinds={"pytorch", "duckdb"},
    code_version="2",
    pool=GPU_POOL,
    op_tags=GPU_TAGS,
    description="Reward mean and spread of every response, from the previous round's reward "
    "model (fresh heads in round 1). The checkpoint used is recorded with the scores.",
)
@holds_round_chain
def reward_scores(
    context: dg.AssetExecutionContext,
    encoder: FeatureEncoder,
    uncertainty_model: UncertaintyModel,
    store: DuckDBStore,
) -> dg.MaterializeResult:
    round_id = context.partition_key
    rows = store.completions_of_round(round_id)
    if rows.height == 0:
        raise dg.Failure(f"{round_id} has no completions: materialise completions first")
    ids = rows["completion_id"].to_list()
    if store.missing_features(ids, encoder.key):
        raise dg.Failure(
            f"{round_id} has responses without {encoder.key} features: materialise "
            "response_features first"
        )
    features = store.load_features(ids, encoder.key)
    model, previous = previous_model(
        uncertainty_model, store, round_id, encoder.key, features.shape[1]
    )
    mu, sigma = model.predict(features)
    scores = rows.with_columns(
        round_id=pl.lit(round_id),
        reward_model_round=pl.lit(previous and previous["round_id"], dtype=pl.String),
        reward_model_path=pl.lit(previous and previous["path"], dtype=pl.String),
        mu=pl.Series(mu, dtype=pl.Float64),
        sigma=pl.Series(sigma, dtype=pl.Float64),
    )
    store.replace_round("reward_scores", round_id, scores)
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": scores.height,
            "encoder": encoder.key,
            "feature_dim": int(features.shape[1]),
            "reward_model_round": previous["round_id"] if previous else "fresh heads",
            "reward_model_checkpoint": previous["path"] if previous else "",
            "mean_mu": float(np.mean(mu)),
            "mean_sigma": float(np.mean(sigma)),
        }
    )
