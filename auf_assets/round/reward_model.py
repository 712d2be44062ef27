"""`reward_model`: the round's uncertainty-aware reward model, the previous round's trained on
the replay buffer; its row records what it was trained from (the chain's lineage)."""

import json

import dagster as dg
import numpy as np
import polars as pl

from auf_assets.core.round_step import (
    ReplayBuffer,
    train_on_replay,
)
from auf_assets.core.seeding import stable_hash
from auf_assets.partitions import round_index, rounds_partitions
from auf_assets.placement import GPU_POOL, GPU_TAGS
from auf_assets.round.judgements import judgements
from auf_assets.round.shared import GROUP, ensure_features, previous_model
from auf_assets.round_guard import holds_round_chain
from resources import home
from resources.encoder import FeatureEncoder
from resources.reward_model import UncertaintyModel
from resources.store import DuckDBStore, utcnow


def replay_fingerprint(buffer: pl.DataFrame) -> str:
    """A hash of the replay buffer's pairs and verdicts (what a reward model was trained on)."""
    return stable_hash(
        *(
            f"{p}:{c}>{r}"
            for p, c, r in buffer.select(
                "pair_id", "chosen_completion_id", "rejected_completion_id"
            ).iter_rows()
        )
    )


@dg.asset(
    partitions_def=rounds_partitions,
    deps=[judgements],
    group_name=GROUP,
    kinds={"pytorch", "safetensors"},
    code_version="2",
    # It may encode the replay buffer's responses with the encoder's model: a GPU step.
    pool=GPU_POOL,
    op_tags=GPU_TAGS,
    description="The uncertainty-aware reward model of the round: the previous round's model "
    "trained on the replay buffer (the newest decided pairs of this and earlier rounds).",
)
@holds_round_chain
def reward_model(
    context: dg.AssetExecutionContext,
    encoder: FeatureEncoder,
    uncertainty_model: UncertaintyModel,
    store: DuckDBStore,
) -> dg.MaterializeResult:
    round_id = context.partition_key
    index = round_index(round_id)
    buffer = ReplayBuffer.of(store.decided_pairs(index), uncertainty_model.replay_capacity).rows
    this_round = int((buffer["round_id"] == round_id).sum()) if buffer.height else 0
    dim = store.feature_dim(round_id, encoder.key)
    if dim is None:
        raise dg.Failure(f"{round_id} has no {encoder.key} features: materialise response_features")
    model, previous = previous_model(uncertainty_model, store, round_id, encoder.key, dim)
    prompts_done = store.prompts_judged_through(index)
    replay_rounds = sorted(set(buffer["round_id"]), key=round_index) if buffer.height else []
    metadata: dict[str, object] = {
        "base_model_round": previous["round_id"] if previous else "fresh heads",
        "base_checkpoint": previous["path"] if previous else "",
        "replay_pairs": buffer.height,
        "replay_rounds": dg.MetadataValue.json(replay_rounds),
        "new_pairs": this_round,
        "prompts_done": prompts_done,
    }
    if buffer.height:
        # Pairs of earlier rounds lack features when the encoder setting changed since.
        ensure_features(
            context,
            store,
            encoder,
            buffer["chosen_completion_id"].to_list() + buffer["rejected_completion_id"].to_list(),
            replay_rounds,
        )
        chosen = store.load_features(buffer["chosen_completion_id"].to_list(), encoder.key)
        rejected = store.load_features(buffer["rejected_completion_id"].to_list(), encoder.key)
        context.log.info(f"training {uncertainty_model.n_heads} heads on {buffer.height} pairs")
        stats = train_on_replay(
            model, chosen, rejected, prompts_done, uncertainty_model.train_passes
        )
        mu_c, _ = model.predict(chosen)
        mu_r, _ = model.predict(rejected)
        metadata.update(
            {
                "loss_before": stats.loss_before,
                "loss_after": stats.loss_after,
                "bt_loss_before": stats.bt_before,
                "bt_loss_after": stats.bt_after,
                "train_steps": stats.steps,
                "train_seconds": round(stats.seconds, 3),
                "anchor_lambda": stats.anchor_lambda,
                "replay_accuracy": float(np.mean(mu_c > mu_r)),
            }
        )
        loss_before, loss_after = stats.loss_before, stats.loss_after
    else:
        context.log.warning(
            f"{round_id} has no labelled pairs (all ties or failures): the "
            "previous model is carried forward unchanged"
        )
        loss_before = loss_after = None
    # A new file per save, and the row moved to it in one transaction: a crash at any point
    # leaves the row and the file it names in agreement (the loser file is an orphan, removed).
    path = uncertainty_model.new_checkpoint_path(store, round_id)
    model.save(path)
    stored_path = store.relative(path)
    store.replace_round(
        "reward_models",
        round_id,
        pl.DataFrame(
            {
                "round_id": [round_id],
                "path": [stored_path],
                "encoder": [encoder.key],
                "pairs_trained": [buffer.height],
                "prompts_done": [prompts_done],
                "loss_before": [loss_before],
                "loss_after": [loss_after],
                "created_at": [utcnow()],
                "base_round": [previous["round_id"] if previous else None],
                "base_path": [previous["path"] if previous else None],
                "replay_rounds": [json.dumps(replay_rounds)],
                "replay_sha256": [replay_fingerprint(buffer)],
                "replay_capacity": [uncertainty_model.replay_capacity],
            },
            schema_overrides={
                "loss_before": pl.Float64,
                "loss_after": pl.Float64,
                "base_round": pl.String,
                "base_path": pl.String,
                "replay_capacity": pl.Int32,
            },
        ),
    )
    removed = store.remove_orphan_files(
        [uncertainty_model.checkpoint_folder(store), home.features_dir(store.root)]
    )
    if removed:
        context.log.info(f"removed {removed} files no row refers to (replaced or left by a crash)")
    metadata["checkpoint"] = dg.MetadataValue.path(store.relative(path))  # the home can move
    metadata["orphan_files_removed"] = removed
    return dg.MaterializeResult(metadata=metadata)
