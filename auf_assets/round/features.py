"""`response_features`: the encoder's vector of every response of the round."""

import time

import dagster as dg

from auf_assets.partitions import rounds_partitions
from auf_assets.placement import GPU_POOL, GPU_TAGS
from auf_assets.round.completions import completions
from auf_assets.round.shared import GROUP, ensure_features
from auf_assets.round_guard import holds_round_chain
from resources.encoder import FeatureEncoder
from resources.store import DuckDBStore


@dg.asset(
    partitions_def=rounds_partitions,
    deps=[completions],
    group_name=GROUP,
    kinds={"pytorch", "numpy"},
    code_version="1",
    pool=GPU_POOL,
    op_tags=GPU_TAGS,
    description="The encoder's feature vector of every response of the round (the reward "
    "model's input), cached under the home and reused by every later use of the response.",
)
@holds_round_chain
def response_features(
    context: dg.AssetExecutionContext, encoder: FeatureEncoder, store: DuckDBStore
) -> dg.MaterializeResult:
    round_id = context.partition_key
    ids = store.completion_ids_of_round(round_id)
    if not ids:
        raise dg.Failure(f"{round_id} has no completions: materialise completions first")
    started = time.perf_counter()
    encoded = ensure_features(context, store, encoder, ids, [round_id])
    seconds = time.perf_counter() - started
    dim = store.feature_dim(round_id, encoder.key)
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": len(ids),
            "encoder": encoder.key,
            "feature_dim": dim or 0,
            "encoded": encoded,
            "reused": len(ids) - encoded,
            "encode_seconds": round(seconds, 2),
            "responses_per_second": round(encoded / seconds, 1) if encoded and seconds else 0.0,
        }
    )
