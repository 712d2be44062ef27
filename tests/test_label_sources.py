"""The label-source registry: a toy source registered at run time labels a round through
`dg.materialize`, with no change to the judgements asset; an unknown source is refused when the
settings are built."""

from __future__ import annotations

import dagster as dg
import pytest
from test_round import materialize_round

from auf_assets.core.verdicts import scalar_score_rows, verdicts_from_scores
from auf_assets.label_sources import (
    LabelRequest,
    Labels,
    LabelSourceAdapter,
    get_label_source,
    register_label_source,
)
from auf_assets.label_sources.base import judged_items
from auf_assets.prompts import prompt_pool
from resources.labelling import LabellingSettings
from resources.store import DuckDBStore, utcnow


def _longer_wins(request: LabelRequest) -> Labels:
    """The longer response is chosen (equal lengths: a tie)."""
    items = judged_items(request.store, request.round_id, request.pairs)
    lengths = {
        c: float(len(r)) for c, r in zip(items["completion_id"], items["response"], strict=True)
    }
    verdicts = verdicts_from_scores(
        request.pairs,
        lengths,
        tie_margin=request.tie_margin,
        labeller="longer-wins",
        source="longer_wins",
        labelled_at=utcnow(),
    )
    ids = items["completion_id"].to_list()
    rows = scalar_score_rows(request.round_id, "longer-wins", "length", lengths, ids, "absent")
    return Labels(verdicts, rows, {"judge": "longer-wins"})


LONGER_WINS = LabelSourceAdapter(
    name="longer_wins",
    description="the longer response wins (a toy for tests)",
    label=_longer_wins,
)


def test_an_unknown_label_source_is_refused_when_the_settings_are_built():
    with pytest.raises(ValueError, match="unknown label source 'nope'.*llm_judge.*people"):
        LabellingSettings(source="nope")
    with pytest.raises(ValueError, match="unknown label source 'nope'"):
        get_label_source("nope")


def test_a_registered_label_source_labels_a_round(auf_home, tiny_lm_dir):
    register_label_source(LONGER_WINS)
    assert get_label_source("longer_wins") is LONGER_WINS
    instance = dg.DagsterInstance.ephemeral()
    store = DuckDBStore()
    assert dg.materialize([prompt_pool], instance=instance, resources={"store": store}).success

    result = materialize_round(
        instance, "round-0001", tiny_lm_dir, labelling=LabellingSettings(source="longer_wins")
    )
    assert result.success
    verdicts = store.round_rows("judgements", "round-0001")
    pairs = store.round_rows("pairs", "round-0001")
    assert verdicts.height == pairs.height == 4
    assert set(verdicts["source"]) == {"longer_wins"}
    texts = store.round_completion_texts("round-0001")
    length = {c: len(r) for c, r in zip(texts["completion_id"], texts["response"], strict=True)}
    for v in verdicts.join(pairs, on="pair_id").iter_rows(named=True):
        a, b = length[v["completion_a"]], length[v["completion_b"]]
        assert v["preference"] == ("a" if a > b else "b" if b > a else "tie"), v
    scores = store.round_rows("judge_scores", "round-0001")
    assert set(scores["aspect"]) == {"length"}
    meta = {
        e.asset_key.to_user_string(): e.step_materialization_data.materialization.metadata
        for e in result.get_asset_materialization_events()
    }
    assert meta["judgements"]["source"].value == "longer_wins"
    assert meta["judgements"]["judge"].value == "longer-wins"
    # The round's reward model trained on the toy source's decided pairs.
    decided = int(verdicts["preference"].is_in(["a", "b"]).sum())
    trained = store.sql_for_tests("SELECT pairs_trained FROM reward_models")
    assert trained["pairs_trained"].to_list() == [decided]
