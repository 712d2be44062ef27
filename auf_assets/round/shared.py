"""What several round assets share: the group name, encoding the responses that lack
features, and loading the previous round's reward model."""

from collections.abc import Sequence

import dagster as dg

from auf_assets.partitions import round_index
from auf_assets.reporting import progress_logger
from resources.encoder import FeatureEncoder
from resources.store import DuckDBStore, StoreError

GROUP = "active_round"


def ensure_features(
    context: dg.AssetExecutionContext,
    store: DuckDBStore,
    encoder: FeatureEncoder,
    completion_ids: list[str],
    round_ids: Sequence[str],
) -> int:
    """Encode the completions (of `round_ids`) that have no features for this encoder yet;
    returns how many."""
    missing = store.missing_features(completion_ids, encoder.key)
    if not missing:
        return 0
    # The round filter spares a scan of every stored response (3x faster on 614k responses,
    # docs/scaling.md section 2.2 for the cost at 2M).
    todo = store.completion_texts(missing, round_ids)
    context.log.info(f"encoding {todo.height} responses with {encoder.key}")
    vectors = encoder.encode(
        todo["prompt"].to_list(),
        todo["response"].to_list(),
        progress=progress_logger(context, "features"),
    )
    store.add_features(todo["completion_id"].to_list(), encoder.key, vectors)
    return todo.height


def previous_model(uncertainty_model, store, round_id, encoder_key, in_dim):
    try:
        return uncertainty_model.previous_model(
            store, round_id, round_index(round_id), encoder_key, in_dim
        )
    except StoreError as exc:
        raise dg.Failure(str(exc)) from exc
