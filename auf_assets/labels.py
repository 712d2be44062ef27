"""The `labels` group: the round's selected pairs handed to people (the annotation batch).

The labels that come back are imported by `auf_assets.label_inbox` (sensor and CLI) and resolved
into verdicts by `judgements` (`auf_assets.round`).
"""

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
from auf_assets.core.seeding import stable_seed
from auf_assets.partitions import rounds_partitions
from auf_assets.reporting import markdown_preview
from auf_assets.round import selected_pairs
from auf_assets.round_guard import holds_round_chain
from resources.labelling import LabellingSettings
from resources.store import DuckDBStore, utcnow

LABELS_GROUP = "labels"


class AnnotationBatchConfig(dg.Config):
    seed: int = Field(default=0, description="seed of the per-round A/B presentation order")


@dg.asset(
    partitions_def=rounds_partitions,
    deps=[selected_pairs],
    group_name=LABELS_GROUP,
    kinds={"json", "csv"},
    code_version="1",
    description="The round's pairs written to the outbox for people to label (jsonl, csv and a "
    "Label Studio import), each shown as A/B in a seeded, balanced random order. Writes nothing "
    "unless the label source is `people`.",
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
                "'people'",
            }
        )
    rows = store.pairs_with_texts(round_id)
    if rows.height == 0:
        raise dg.Failure(f"{round_id} has no selected pairs: materialise selected_pairs first")
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
