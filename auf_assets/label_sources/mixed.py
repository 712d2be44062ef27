"""`judge+people`: the screening judge labels every pair (`judge_screening`, in the pair_selection
job); people label the pairs it sent them, and their verdict decides those. A sent pair people
did not label (a round trained on `min_fraction`) keeps the judge's verdict. Each verdict's
`source` says who decided it."""

from __future__ import annotations

import dagster as dg
import polars as pl

from auf_assets.core.agreement import LABELS
from auf_assets.core.judge_vs_people import agreement_summary, comparison_frame, rounded
from auf_assets.core.routing import ROUTE_JUDGE
from auf_assets.core.verdicts import VERDICT_SCHEMA
from auf_assets.label_sources.base import LabelRequest, Labels, LabelSourceAdapter
from auf_assets.label_sources.people import people_verdicts
from resources.store import DuckDBStore


def round_screening(store: DuckDBStore, round_id: str, pair_ids: list[str]) -> pl.DataFrame:
    """The judge's screening of the round's pairs `pair_ids`; a dg.Failure saying what to run
    when the round has none, or when a pair was selected after it."""
    screening = store.round_rows("judge_screening", round_id)
    if screening.height == 0:
        raise dg.Failure(
            f"label source is 'judge+people' but {round_id} has no judge screening: run the "
            "pair_selection job for this round (its judge_screening step labels every pair and "
            "sends the unsure ones to people), then labelled_round once their labels are in"
        )
    unscreened = len(set(pair_ids) - set(screening["pair_id"]))
    if unscreened:
        raise dg.Failure(
            f"{unscreened} of {round_id}'s pairs were selected after its screening: run "
            "pair_selection for the round again (judge_screening, then a new annotation batch)"
        )
    return screening.filter(pl.col("pair_id").is_in(pair_ids))


def label(request: LabelRequest) -> Labels:
    store, round_id, pairs = request.store, request.round_id, request.pairs
    screening = round_screening(store, round_id, pairs["pair_id"].to_list())
    sent = screening.filter(pl.col("route") != ROUTE_JUDGE)
    people = pl.DataFrame(schema=VERDICT_SCHEMA)
    people_meta: dict = {"labels": 0}
    if sent.height:
        people, _, people_meta = people_verdicts(
            request, pairs.filter(pl.col("pair_id").is_in(sent["pair_id"].to_list()))
        )
    decided = people.filter(pl.col("preference").is_in(LABELS))
    judged = screening.filter(~pl.col("pair_id").is_in(decided["pair_id"].to_list()))
    verdicts = (
        pl.concat([judged.select(list(VERDICT_SCHEMA)).cast(VERDICT_SCHEMA), decided])
        .join(pairs.select("pair_id", pl.int_range(pl.len()).alias("_order")), on="pair_id")
        .sort("_order")
        .drop("_order")
    )
    comparisons = comparison_frame(
        screening, dict(zip(people["pair_id"], people["preference"], strict=True))
    )
    metadata = {
        "judge": f"{screening['labeller'][0]} + people",
        "decided_by_people": decided.height,
        "decided_by_judge": judged.height,
        "sent_to_people": sent.height,
        "sent_but_unlabelled": sent.height - decided.height,
        "agreement": dg.MetadataValue.json(rounded(agreement_summary(comparisons))),
        **people_meta,
    }
    return Labels(verdicts, store.round_rows("judge_scores", round_id), metadata)


SOURCE = LabelSourceAdapter(
    name="judge+people",
    description="a judge labels every pair (labelling.screening_judge); people decide the pairs "
    "it is unsure of, and a calibration share of the rest",
    label=label,
)
