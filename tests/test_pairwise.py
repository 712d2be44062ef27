"""The pairwise judge: the A/B question, both orders, position bias (`core.pairwise`), and a
round labelled by it with the tiny model (`pairwise_judge`)."""

import math

import dagster as dg
import pytest
from test_labelling import R1, env, template  # noqa: F401  (fixtures)
from test_round import tiny_resources

from auf_assets.checks import judgements_recorded
from auf_assets.core.pairwise import (
    choice_from_top_logprobs,
    pairwise_messages,
    position_bias,
    probability_a_better,
)
from auf_assets.round import judgements
from resources.labelling import LabellingSettings


def test_the_letters_are_read_from_the_first_token_whatever_their_spelling():
    choice = choice_from_top_logprobs(
        {"A": math.log(0.3), " A": math.log(0.1), "\u0120B": math.log(0.2), "x": math.log(0.4)}
    )
    assert choice.p_first == pytest.approx(0.4 / 0.6) and choice.letter_mass == pytest.approx(0.6)
    assert choice_from_top_logprobs({"x": 0.0}).p_first is None


def test_both_orders_average_in_the_pairs_own_order():
    # a first: P(first) 0.8; b first: P(first) 0.4, i.e. P(a) 0.6 -> mean 0.7
    assert probability_a_better(0.8, 0.4) == pytest.approx(0.7)
    assert probability_a_better(None, 0.4) == pytest.approx(0.6)
    assert math.isnan(probability_a_better(None, None))


def test_position_bias_counts_flips_and_the_first_position():
    # pair 1: first both times (flip); pair 2: a both times (no flip); pair 3: one order failed
    bias = position_bias([0.9, 0.7, None], [0.8, 0.2, 0.5])
    assert bias.pairs == 2 and bias.flip_rate == 0.5 and bias.first_position_rate == 0.75
    assert math.isnan(position_bias([None], [None]).flip_rate)


def test_the_question_shows_both_responses_bounded_in_their_order():
    messages = pairwise_messages("q", "first" * 10, "second", max_response_chars=20)
    user = messages[1]["content"]
    assert user.index("<response_A>\nfirstfirst") < user.index("<response_B>\nsecond")
    assert "truncated here" in user and "one letter, A or B" in user


def test_a_round_labelled_pairwise_in_both_orders(env):  # noqa: F811
    resources = tiny_resources(env.model, LabellingSettings(source="pairwise_judge"))
    result = dg.materialize(
        [judgements, judgements_recorded],
        instance=env.instance,
        partition_key=R1,
        resources=resources,
    )
    assert result.success and result.get_asset_check_evaluations()[0].passed
    verdicts = env.store.round_rows("judgements", R1)
    assert set(verdicts["source"]) == {"pairwise_judge"}
    decided = verdicts.filter(verdicts["preference"].is_in(["a", "b"]))
    for row in decided.iter_rows(named=True):
        assert row["score_a"] + row["score_b"] == pytest.approx(1.0)
        assert row["confidence"] == pytest.approx(max(row["score_a"], row["score_b"]))
    meta = result.asset_materializations_for_node("judgements")[0].metadata
    assert meta["judge_calls"].value == 2 * verdicts.height
    assert meta["position_bias"].value["pairs_in_both_orders"] == verdicts.height
