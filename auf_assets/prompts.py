"""The `prompts` group: every prompt the active loop can use, from a file, a Hub dataset or the
built-in demo set (one table, `prompts`; known ids keep their text)."""

from collections import Counter

import dagster as dg
from pydantic import Field

from auf_assets.core.prompts import (
    MAX_PROMPT_CHARS,
    PromptBatch,
    PromptInputError,
    demo_prompts,
    load_hub_prompts,
    load_prompts,
)
from auf_assets.reporting import markdown_preview
from resources.store import DuckDBStore


class PromptPoolConfig(dg.Config):
    path: str = Field(
        default="",
        description="jsonl/json/csv/parquet file or a `datasets` folder; empty (and no dataset) = "
        "the built-in demo set",
    )
    dataset: str = Field(
        default="",
        description="a Hugging Face Hub dataset id (e.g. HuggingFaceH4/ultrafeedback_binarized), "
        "read with datasets.load_dataset; offline it must be in the local cache",
    )
    config_name: str | None = Field(default=None, description="the Hub dataset's config")
    revision: str | None = Field(default=None, description="the Hub dataset's revision")
    prompt_column: str | None = Field(
        default=None,
        description="empty: recognised (a prompt or instruction column, or the first user turn "
        "of a messages chat)",
    )
    id_column: str = "prompt_id"
    source_column: str = "source"
    split: str | None = Field(
        default=None, description="split of a saved DatasetDict or of the Hub dataset (train)"
    )
    limit: int | None = Field(default=None, description="keep only the first N valid prompts")
    max_prompt_chars: int = Field(
        default=MAX_PROMPT_CHARS,
        ge=1,
        description="longer prompts (in characters) are dropped and reported by id; generation "
        "keeps the start and end of any prompt that still exceeds a model's context",
    )


def _read_prompt_pool(config: PromptPoolConfig) -> PromptBatch:
    columns = {
        "prompt_column": config.prompt_column or None,
        "id_column": config.id_column,
        "source_column": config.source_column,
        "limit": config.limit,
        "max_prompt_chars": config.max_prompt_chars,
    }
    if config.path and config.dataset:
        raise dg.Failure(
            "give either path (a local file or folder) or dataset (a Hub id), not both"
        )
    try:
        if config.dataset:
            return load_hub_prompts(
                config.dataset,
                split=config.split or "train",
                config_name=config.config_name,
                revision=config.revision,
                **columns,
            )
        if config.path:
            return load_prompts(config.path, split=config.split, **columns)
    except PromptInputError as exc:
        raise dg.Failure(str(exc)) from None
    return demo_prompts()


@dg.asset(
    group_name="prompts",
    kinds={"duckdb", "polars"},
    code_version="1",
    description="Every prompt available to the active loop, ingested from a file, a Hugging Face "
    "dataset or the demo set.",
)
def prompt_pool(
    context: dg.AssetExecutionContext, config: PromptPoolConfig, store: DuckDBStore
) -> dg.MaterializeResult:
    batch = _read_prompt_pool(config)
    context.log.info(batch.summary())
    too_long = batch.too_long_report()
    if too_long:
        context.log.warning(too_long)
    counts = store.add_prompts(batch.prompts, batch.origin)
    if counts["conflicting"]:
        context.log.warning(
            f"{counts['conflicting']} prompt ids are already stored with another text; the "
            "stored text is kept (pairs and labels may refer to it)"
        )
    total = store.count_rows("prompts")
    return dg.MaterializeResult(
        metadata={
            "origin": batch.origin,
            "dagster/row_count": total,
            "new_prompts": counts["new"],
            "already_stored": counts["known"],
            "conflicting_ids": counts["conflicting"],
            "duplicates_dropped": len(batch.duplicates),
            "empty_dropped": len(batch.empty),
            "too_long_dropped": len(batch.too_long),
            "too_long_ids": dg.MetadataValue.json([e["prompt_id"] for e in batch.too_long[:100]]),
            "max_prompt_chars": config.max_prompt_chars,
            "sources": dg.MetadataValue.json(
                dict(Counter(batch.prompts["source"].to_list()).most_common())
            ),
            "preview": markdown_preview(batch.prompts),
        }
    )
