"""`people`: the labels people gave (imported from the inbox), several per pair resolved into
one verdict by `labelling.resolution`."""

from __future__ import annotations

import dagster as dg
import polars as pl

from auf_assets.core.labels import Vote
from auf_assets.core.verdicts import SCORE_SCHEMA, verdicts_from_votes
from auf_assets.label_sources.base import LabelRequest, Labels, LabelSourceAdapter


def people_verdicts(request: LabelRequest, pairs: pl.DataFrame) -> Labels:
    """People's verdicts on `pairs` (a pair nobody labelled is `unlabelled`), resolved by
    `labelling.resolution`; fails, saying what to do, while no label of the round is in."""
    context, store, labelling = request.context, request.store, request.source.labelling
    round_id = request.round_id
    labels = store.labels_of_round(round_id)
    current = set(pairs["pair_id"])
    orphans = labels.filter(~pl.col("pair_id").is_in(list(current))).height
    votes: dict[str, list[tuple[Vote, dict]]] = {}
    for order, row in enumerate(labels.iter_rows(named=True)):
        if row["pair_id"] in current:
            vote = Vote(row["labeller"], row["choice"], row["labelled_at"], order)
            votes.setdefault(row["pair_id"], []).append((vote, row))
    if not votes and store.count_rows("annotation_batches", round_id) == 0:
        raise dg.Failure(
            f"label source is {labelling.source!r} but {round_id}'s pairs were never sent out: "
            "run the pair_selection job for this round (it writes the annotation batch), not "
            "active_round; labelled_round runs once the labels are in"
        )
    if not votes:
        raise dg.Failure(
            f"{round_id} has no labels yet: people label the pairs in "
            f"{labelling.outbox_dir / (round_id + '.jsonl')} and drop the files in "
            f"{labelling.inbox_dir} (or run `auf labels import FILE`); the labels_landed sensor "
            "starts this step when enough pairs are labelled"
        )
    metadata = {
        "resolution": labelling.resolution,
        "labels": int(sum(len(v) for v in votes.values())),
        "annotators": int(labels["labeller"].n_unique()) if labels.height else 0,
        "labels_of_other_pairs": orphans,
    }
    if orphans:
        context.log.warning(
            f"{orphans} labels of {round_id} name pairs that are not sent to people now "
            "(selected_pairs or the screening was re-materialised); they are kept but not used"
        )
    verdicts = verdicts_from_votes(pairs, votes, labelling.resolution, round_id)
    return Labels(verdicts, pl.DataFrame(schema=SCORE_SCHEMA), metadata)


def label(request: LabelRequest) -> Labels:
    verdicts, scores, metadata = people_verdicts(request, request.pairs)
    return Labels(verdicts, scores, {"judge": "people", **metadata})


SOURCE = LabelSourceAdapter(
    name="people",
    description="people's labels from the inbox, resolved per pair (labelling.resolution)",
    label=label,
    scores_responses=False,
)
