"""`judgements`: one verdict per selected pair from the configured label source (the adapters
and their registry: `auf_assets.label_sources`)."""

from collections import Counter

import dagster as dg
import polars as pl
from pydantic import Field

from auf_assets.core.agreement import confidence_summary
from auf_assets.label_sources import LabelRequest, get_label_source
from auf_assets.partitions import rounds_partitions
from auf_assets.placement import GPU_POOL, GPU_TAGS
from auf_assets.reporting import figure_png, markdown_preview, png_markdown
from auf_assets.round.selection import selected_pairs
from auf_assets.round.shared import GROUP
from auf_assets.round_guard import holds_round_chain
from resources.label_source import LabelSource
from resources.store import CallCache, DuckDBStore


class JudgementsConfig(dg.Config):
    tie_margin: float = Field(
        default=0.0,
        ge=0.0,
        description="scores this close count as a tie (rubric, reward-model and oracle judges)",
    )


def _confidence_histogram(confidence: pl.Series) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4, 2.4), dpi=100)
    ax.hist(confidence.to_numpy(), bins=10, range=(0.0, 1.0), color="#9ab", edgecolor="#567")
    ax.set_xlabel("P(chosen is better)", fontsize=8)
    ax.set_ylabel("verdicts", fontsize=8)
    return figure_png(fig)


def confidence_metadata(rows: pl.DataFrame) -> dict:
    """The judge's confidence over the decided verdicts (none for sources without one)."""
    if "confidence" not in rows.columns:  # a registered source may build its own rows
        return {}
    given = rows["confidence"].drop_nulls().drop_nans()
    if given.len() == 0:
        return {}
    return {
        "confidence": dg.MetadataValue.json(confidence_summary(given.to_numpy())),
        "confidence_histogram": png_markdown(_confidence_histogram(given), "judge confidence"),
    }


@dg.asset(
    partitions_def=rounds_partitions,
    deps=[selected_pairs],
    group_name=GROUP,
    kinds={"transformers", "vllm", "duckdb"},
    code_version="2",
    pool=GPU_POOL,
    op_tags=GPU_TAGS,
    description="One verdict per selected pair from the configured label source: the rubric LLM "
    "judge, a reward-model judge, a simulated oracle, or people's labels (resolved).",
)
@holds_round_chain
def judgements(
    context: dg.AssetExecutionContext,
    config: JudgementsConfig,
    label_source: dg.ResourceParam[LabelSource],
    store: DuckDBStore,
) -> dg.MaterializeResult:
    round_id = context.partition_key
    try:
        adapter = get_label_source(label_source.name)
    except ValueError as exc:
        raise dg.Failure(f"judgements: {exc}") from exc
    pairs = store.round_rows("pairs", round_id)
    if pairs.height == 0:
        raise dg.Failure(f"{round_id} has no selected pairs: materialise selected_pairs first")
    pairs = pairs.sort("prompt_id", "pair_id")
    rows, scores, extra = adapter.label(
        LabelRequest(context, label_source, store, round_id, pairs, config.tie_margin)
    )
    store.replace_round_tables(round_id, {"judge_scores": scores, "judgements": rows})
    CallCache(store, round_id, "judgements").clear()
    prefs = Counter(rows["preference"].to_list())
    preview = ["prompt_id", "preference", "labeller"]
    if adapter.scores_responses:
        preview[1:1] = ["score_a", "score_b"]
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": rows.height,
            "source": adapter.name,
            "labelled_pairs": prefs["a"] + prefs["b"],
            "ties": prefs["tie"],
            "failed_pairs": prefs["failed"],
            "unlabelled_pairs": prefs["unlabelled"],
            **extra,
            **confidence_metadata(rows),
            "preview": markdown_preview(rows.select(preview)),
        }
    )
