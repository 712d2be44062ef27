"""`round_prompts`: the batch of prompts a round works on, taken once and kept."""

import dagster as dg
from pydantic import Field

from auf_assets.core.settings import (
    DEFAULT_ROUND_PROMPTS,
)
from auf_assets.partitions import round_index, rounds_partitions
from auf_assets.prompts import prompt_pool
from auf_assets.reporting import markdown_preview
from auf_assets.round.shared import GROUP
from auf_assets.round_guard import holds_round_chain
from resources.store import DuckDBStore, StoreError


class RoundPromptsConfig(dg.Config):
    batch_size: int = Field(
        default=DEFAULT_ROUND_PROMPTS, ge=1, description="prompts per round (the paper: 64)"
    )
    shuffle: bool = Field(default=False, description="seeded shuffle instead of ingestion order")
    seed: int = 0
    retake: bool = Field(
        default=False,
        description="draw a new batch for a round that already holds prompts (only while no "
        "later round exists and nobody labelled its pairs; its other rows are cleared)",
    )


@dg.asset(
    partitions_def=rounds_partitions,
    deps=[prompt_pool],
    group_name=GROUP,
    kinds={"duckdb"},
    code_version="2",
    description="The batch of prompts this round works on: taken once from the prompts no other "
    "round holds, and kept when the round is re-run.",
)
@holds_round_chain
def round_prompts(
    context: dg.AssetExecutionContext, config: RoundPromptsConfig, store: DuckDBStore
) -> dg.MaterializeResult:
    round_id = context.partition_key
    try:
        taken = store.take_round_prompts(
            round_id,
            round_index(round_id),
            config.batch_size,
            shuffle=config.shuffle,
            seed=config.seed,
            retake=config.retake,
        )
    except StoreError as exc:
        raise dg.Failure(str(exc)) from exc
    batch = taken.prompts
    if batch.height == 0:
        used = store.count_rows("prompts")
        raise dg.Failure(
            f"the prompt pool is used up: all {used} prompts belong to earlier rounds. Ingest more "
            "prompts (materialise prompt_pool with a new file) before starting another round."
        )
    if taken.kept:
        context.log.info(
            f"{round_id} keeps the {batch.height} prompts it took before (re-running a round "
            "re-runs it on its own prompts; retake=True draws new ones)"
        )
    elif batch.height < config.batch_size:
        context.log.warning(
            f"only {batch.height} unused prompts left for a batch of {config.batch_size}"
        )
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": batch.height,
            "kept_from_before": taken.kept,
            "prompts_left_after_round": taken.left,
            "preview": markdown_preview(batch),
        }
    )
