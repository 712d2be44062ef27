"""The `labels` group: the judge's screening of a `judge+people` round (which pairs go to
people) and the round's pairs handed to people (the annotation batch).

The labels that come back are imported by `auf_assets.label_inbox` (sensor and CLI) and resolved
into verdicts by `judgements` (`auf_assets.round`).
"""

import math

import dagster as dg
import polars as pl
from pydantic import Field

from auf_assets.core.labels import (
    LABEL_STUDIO_CONFIG,
    atomic_write_text,
    balanced_swaps,
    batch_records,
    to_csv,
    to_jsonl,
    to_labelstudio,
)
from auf_assets.core.routing import ROUTE_CALIBRATION, ROUTE_JUDGE, ROUTE_UNSURE, route_to_people
from auf_assets.core.seeding import stable_seed
from auf_assets.label_sources import LabelRequest, get_label_source
from auf_assets.label_sources.mixed import round_screening
from auf_assets.partitions import rounds_partitions
from auf_assets.placement import GPU_POOL, GPU_TAGS
from auf_assets.reporting import markdown_preview
from auf_assets.round import JudgementsConfig, selected_pairs
from auf_assets.round.judgements import confidence_metadata
from auf_assets.round_guard import holds_round_chain
from resources.label_source import LabelSource
from resources.labelling import LabellingSettings
from resources.store import CallCache, DuckDBStore, utcnow

LABELS_GROUP = "labels"


@dg.asset(
    partitions_def=rounds_partitions,
    deps=[selected_pairs],
    group_name=LABELS_GROUP,
    kinds={"transformers", "vllm", "duckdb"},
    code_version="1",
    pool=GPU_POOL,
    op_tags=GPU_TAGS,
    description="judge+people: the screening judge's verdict on every selected pair and where "
    "the pair goes: to people when the judge is unsure (confidence under "
    "labelling.people_threshold, at most labelling.people_budget) or as a calibration pair, "
    "otherwise the judge's verdict stands. Writes nothing for another label source.",
)
@holds_round_chain
def judge_screening(
    context: dg.AssetExecutionContext,
    config: JudgementsConfig,
    label_source: dg.ResourceParam[LabelSource],
    store: DuckDBStore,
) -> dg.MaterializeResult:
    round_id, labelling = context.partition_key, label_source.labelling
    if not labelling.mixed:
        # A round labelled another way keeps no screening (it would hide pairs from people).
        store.replace_round("judge_screening", round_id, pl.DataFrame())
        return dg.MaterializeResult(
            metadata={
                "screened": False,
                "reason": f"label source is {labelling.source!r}; only 'judge+people' screens",
            }
        )
    pairs = store.round_rows("pairs", round_id)
    if pairs.height == 0:
        raise dg.Failure(f"{round_id} has no selected pairs: materialise selected_pairs first")
    pairs = pairs.sort("prompt_id", "pair_id")
    adapter = get_label_source(labelling.screening_judge)
    context.log.info(f"screening {pairs.height} pairs with {adapter.name}")
    verdicts, scores, extra = adapter.label(
        LabelRequest(context, label_source, store, round_id, pairs, config.tie_margin)
    )
    confidence = verdicts["confidence"].fill_null(math.nan).to_numpy()
    rule = labelling.routing_rule
    routes = route_to_people(confidence, rule, seed=stable_seed(round_id))
    rows = verdicts.with_columns(route=pl.Series(routes.tolist(), dtype=pl.String))
    store.replace_round_tables(round_id, {"judge_scores": scores, "judge_screening": rows})
    CallCache(store, round_id, "judgements").clear()
    counts = rows["route"].value_counts()
    count = dict(zip(counts["route"], counts["count"], strict=True))
    sent = count.get(ROUTE_UNSURE, 0) + count.get(ROUTE_CALIBRATION, 0)
    context.log.info(
        f"{sent}/{rows.height} pairs go to people ({count.get(ROUTE_UNSURE, 0)} unsure, "
        f"{count.get(ROUTE_CALIBRATION, 0)} calibration); the judge decides the rest"
    )
    return dg.MaterializeResult(
        metadata={
            "screened": True,
            "dagster/row_count": rows.height,
            "screening_judge": adapter.name,
            "to_people": sent,
            "unsure": count.get(ROUTE_UNSURE, 0),
            "calibration": count.get(ROUTE_CALIBRATION, 0),
            "judge_decides": count.get(ROUTE_JUDGE, 0),
            "routing": dg.MetadataValue.json(
                {
                    "people_threshold": rule.threshold,
                    "people_budget": rule.budget,
                    "calibration_share": rule.calibration_share,
                }
            ),
            **extra,
            **confidence_metadata(rows),
            "preview": markdown_preview(
                rows.select("prompt_id", "preference", "confidence", "route")
            ),
        }
    )


class AnnotationBatchConfig(dg.Config):
    seed: int = Field(default=0, description="seed of the per-round A/B presentation order")


def _routed_to_people(store: DuckDBStore, round_id: str, rows: pl.DataFrame) -> pl.DataFrame:
    """The pairs of `rows` the round's screening sent to people (judge+people)."""
    screening = round_screening(store, round_id, rows["pair_id"].to_list())
    sent = screening.filter(pl.col("route") != ROUTE_JUDGE)["pair_id"].to_list()
    return rows.filter(pl.col("pair_id").is_in(sent))


@dg.asset(
    partitions_def=rounds_partitions,
    deps=[selected_pairs, judge_screening],
    group_name=LABELS_GROUP,
    kinds={"json", "csv"},
    code_version="2",
    description="The round's pairs written to the outbox for people to label (jsonl, csv and a "
    "Label Studio import), each shown as A/B in a seeded, balanced random order: every pair "
    "(label source `people`) or the pairs the judge's screening sent to people "
    "(`judge+people`). Writes nothing for another label source.",
)
@holds_round_chain
def annotation_batch(
    context: dg.AssetExecutionContext,
    config: AnnotationBatchConfig,
    labelling: LabellingSettings,
    store: DuckDBStore,
) -> dg.MaterializeResult:
    round_id = context.partition_key
    if not labelling.people:
        context.log.info(f"label source is {labelling.source}: no annotation batch is written")
        return dg.MaterializeResult(
            metadata={
                "written": False,
                "reason": f"label source is {labelling.source!r}; batches are written only for "
                "'people' and 'judge+people'",
            }
        )
    rows = store.pairs_with_texts(round_id)
    if rows.height == 0:
        raise dg.Failure(f"{round_id} has no selected pairs: materialise selected_pairs first")
    if labelling.mixed:
        rows = _routed_to_people(store, round_id, rows)
    seed = stable_seed(round_id, config.seed)
    swaps = balanced_swaps(rows["pair_id"].to_list(), seed)
    rows = rows.with_columns(
        swapped=pl.col("pair_id").replace_strict(swaps, return_dtype=pl.Boolean)
    )
    new = store.add_presentations(
        rows.select(
            "pair_id",
            "round_id",
            pl.when("swapped").then("completion_b").otherwise("completion_a").alias("shown_as_a"),
            pl.when("swapped").then("completion_a").otherwise("completion_b").alias("shown_as_b"),
            "swapped",
            pl.lit(seed, dtype=pl.Int64).alias("seed"),
            pl.lit(utcnow()).alias("created_at"),
        )
    )
    # A pair shown before keeps its first presentation (files already handed out stay valid).
    stored = store.presentation_swaps(round_id).rename({"swapped": "shown_swapped"})
    rows = rows.join(stored, on="pair_id", how="left").with_columns(swapped=pl.col("shown_swapped"))
    records = batch_records(rows.iter_rows(named=True))
    outbox = labelling.outbox_dir
    paths = {
        "jsonl": outbox / f"{round_id}.jsonl",
        "csv": outbox / f"{round_id}.csv",
        "labelstudio": outbox / f"{round_id}.labelstudio.json",
    }
    atomic_write_text(paths["jsonl"], to_jsonl(records))
    atomic_write_text(paths["csv"], to_csv(records))
    atomic_write_text(paths["labelstudio"], to_labelstudio(records))
    atomic_write_text(outbox / "labelstudio_config.xml", LABEL_STUDIO_CONFIG)

    # The wait for partial labels counts from the first time these pairs were sent out.
    previous = store.round_rows("annotation_batches", round_id)
    now = utcnow()
    written_at = previous["written_at"][0] if previous.height and new == 0 else now
    store.replace_round(
        "annotation_batches",
        round_id,
        pl.DataFrame(
            {
                "round_id": [round_id],
                "pairs": [rows.height],
                # Relative to the home when inside it: a copied or moved home still finds them.
                "jsonl_path": [store.relative(paths["jsonl"])],
                "csv_path": [store.relative(paths["csv"])],
                "labelstudio_path": [store.relative(paths["labelstudio"])],
                "written_at": [written_at],
                "updated_at": [now],
            },
            schema_overrides={"pairs": pl.Int32},
        ),
    )
    context.log.info(f"wrote {rows.height} pairs for labelling to {paths['jsonl']} (and .csv)")
    return dg.MaterializeResult(
        metadata={
            "written": True,
            "dagster/row_count": rows.height,
            "jsonl": dg.MetadataValue.path(str(paths["jsonl"])),
            "csv": dg.MetadataValue.path(str(paths["csv"])),
            "labelstudio": dg.MetadataValue.path(str(paths["labelstudio"])),
            "inbox": dg.MetadataValue.path(str(labelling.inbox_dir)),
            "shown_swapped": int(rows["swapped"].sum()),
            "new_presentations": new,
            "preview": markdown_preview(
                pl.DataFrame(records).select("pair_id", "prompt", "response_A", "response_B")
            ),
        }
    )
