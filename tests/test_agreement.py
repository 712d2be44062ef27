"""Judge confidence and labeller agreement (`auf_assets.core.agreement`), on hand-made digit
distributions and known tables; and the confidence a verdict carries (`core.verdicts`)."""

from __future__ import annotations

import itertools
import math
from datetime import datetime

import numpy as np
import polars as pl
import pytest

from auf_assets.core.agreement import (
    agreement,
    calibration_bins,
    cohens_kappa,
    confidence_summary,
    mean_digit_distribution,
    reward_confidence,
    win_probability,
)
from auf_assets.core.judging import score_from_text, score_from_top_logprobs
from auf_assets.core.verdicts import verdicts_from_scores


def point(digit: int, n: int = 5) -> list[float]:
    return [1.0 if d == digit else 0.0 for d in range(1, n + 1)]


def test_all_mass_on_one_digit_is_certain_or_a_tie():
    assert win_probability(point(4), point(2)) == 1.0
    assert win_probability(point(2), point(4)) == 0.0
    assert win_probability(point(3), point(3)) == 0.5


def test_ties_count_half_and_rows_are_normalised():
    # A is 3 or 4 (half each), B is 3: A wins half the time and ties the other half.
    assert win_probability([0, 0, 0.5, 0.5, 0], point(3)) == pytest.approx(0.75)
    # The judge's digits rarely carry all the mass: the same distribution unnormalised.
    assert win_probability([0, 0, 0.2, 0.2, 0], [0, 0, 0.4, 0, 0]) == pytest.approx(0.75)
    # Uniform against uniform: a coin.
    assert win_probability(np.ones(5), np.ones(5)) == pytest.approx(0.5)


def test_one_side_beating_the_other_plus_the_reverse_is_one():
    rng = np.random.default_rng(0)
    for _ in range(20):
        a, b = rng.dirichlet(np.ones(5), size=(2, 4))
        assert win_probability(a, b) + win_probability(b, a) == pytest.approx(1.0)


def test_aspects_compare_the_mean_digit():
    # A's aspects are {4 or 5} and 3 (sum 7 or 8), B's are 3 and 4 (sum 7): win 1/2, tie 1/2.
    a = [[0, 0, 0, 0.5, 0.5], point(3)]
    b = [point(3), point(4)]
    assert win_probability(a, b) == pytest.approx(0.75)
    # Means equal although no aspect is: a tie.
    assert win_probability([point(5), point(1)], [point(3), point(3)]) == 0.5
    sums, aspects = mean_digit_distribution(a)
    assert aspects == 2 and sums.tolist() == pytest.approx(
        [0, 0, 0, 0, 0, 0.5, 0.5, 0, 0]
    )  # sums 2..10


def test_different_numbers_of_aspects_compare_means_exactly():
    assert win_probability(point(3), [point(3), point(3)]) == 0.5  # 3 against (3+3)/2
    assert win_probability(point(3), [point(3), point(4)]) == 0.0  # 3 against 3.5
    assert win_probability([point(4), point(3), point(3)], [point(3), point(4)]) == pytest.approx(
        0.0  # 10/3 against 7/2
    )


def test_convolution_matches_brute_force_enumeration():
    rng = np.random.default_rng(1)
    a = rng.dirichlet(np.ones(5), size=2)
    b = rng.dirichlet(np.ones(5), size=3)
    want = 0.0
    for da in itertools.product(range(5), repeat=2):
        for db in itertools.product(range(5), repeat=3):
            p = np.prod([a[i, d] for i, d in enumerate(da)])
            p *= np.prod([b[i, d] for i, d in enumerate(db)])
            mean_a, mean_b = sum(da) / 2, sum(db) / 3
            want += p * (1.0 if mean_a > mean_b else 0.5 if mean_a == mean_b else 0.0)
    assert win_probability(a, b) == pytest.approx(want)


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ([np.nan, 0, 0, 0, 1], "finite"),
        ([0, 0, np.inf, 0, 0], "finite"),
        ([0, 0, 0, 0, 0], "sum to 0"),
        ([0.5, -0.1, 0, 0, 0.6], "negative"),
        ([], "shape"),
        (np.ones((2, 2, 5)), "shape"),
        ([point(3), [0, 0, 0, 0, 0]], "sum to 0"),
    ],
)
def test_degenerate_distributions_are_refused(bad, message):
    with pytest.raises(ValueError, match=message):
        win_probability(bad, point(3))
    with pytest.raises(ValueError, match=message):
        win_probability(point(3), bad)


def test_different_digit_scales_are_refused():
    with pytest.raises(ValueError, match="5 digits and B on 10"):
        win_probability(point(3), point(3, n=10))


def test_the_judge_keeps_the_distribution_its_score_is_the_mean_of():
    scored = score_from_top_logprobs({"3": math.log(0.3), " 4": math.log(0.1), "x": -0.5})
    assert scored.digit_probs == pytest.approx((0, 0, 0.75, 0.25, 0))
    assert scored.score == pytest.approx(float(np.dot(scored.digit_probs, np.arange(1, 6))))
    assert score_from_text("Rating: 4").digit_probs == (0.0, 0.0, 0.0, 1.0, 0.0)
    assert score_from_top_logprobs({"x": 0.0}).digit_probs is None  # failed: nothing to compare


def test_reward_confidence_is_a_sigmoid_of_the_gap():
    assert reward_confidence(0.3, 0.3, temperature=1.0) == 0.5
    assert reward_confidence(1.0, 0.0, temperature=1.0) == pytest.approx(0.7310585786)
    assert reward_confidence(1.0, 0.0, temperature=2.0) == pytest.approx(0.6224593312)
    assert reward_confidence(0.0, 1.0, temperature=1.0) == pytest.approx(1 - 0.7310585786)
    assert reward_confidence(1000.0, 0.0, temperature=0.5) == 1.0  # no overflow
    assert reward_confidence(-1000.0, 0.0, temperature=0.5) == 0.0
    assert math.isnan(reward_confidence(math.nan, 0.0, temperature=1.0))
    for bad in (0.0, -1.0, math.nan, math.inf):
        with pytest.raises(ValueError, match="temperature"):
            reward_confidence(1.0, 0.0, temperature=bad)


def test_kappa_of_the_textbook_two_by_two_table():
    # 50 items: both yes 20, first yes / second no 5, first no / second yes 10, both no 15.
    # p_o = 35/50 = 0.7; p_e = 25/50 * 30/50 + 25/50 * 20/50 = 0.5; kappa = 0.2 / 0.5 = 0.4.
    cells = {("a", "a"): 20, ("a", "b"): 5, ("b", "a"): 10, ("b", "b"): 15}
    first = [u for (u, _), n in cells.items() for _ in range(n)]
    second = [v for (_, v), n in cells.items() for _ in range(n)]
    result = agreement(first, second)
    assert result.n == 50
    assert result.accuracy == pytest.approx(0.7)
    assert result.kappa == pytest.approx(0.4)
    assert cohens_kappa(second, first) == pytest.approx(0.4)  # symmetric


def test_kappa_with_ties_and_the_degenerate_cases():
    assert cohens_kappa(["a", "b", "tie"], ["a", "b", "tie"]) == pytest.approx(1.0)
    assert cohens_kappa(["a", "b"], ["b", "a"]) == pytest.approx(-1.0)
    # One labeller says "a" throughout: agreement is what chance gives, kappa 0.
    assert cohens_kappa(["a", "a"], ["a", "b"]) == pytest.approx(0.0)
    # Both say "a" throughout: chance agreement is 1, kappa is undefined.
    both = agreement(["a", "a", "a"], ["a", "a", "a"])
    assert both.accuracy == 1.0 and math.isnan(both.kappa)
    empty = agreement([], [])
    assert empty.n == 0 and math.isnan(empty.accuracy) and math.isnan(empty.kappa)
    # 3 classes by hand: p_o = 3/4; shares (a .5, b .25, tie .25) and (a .25, b .5, tie .25),
    # p_e = .125 + .125 + .0625 = .3125; kappa = (.75 - .3125) / .6875.
    got = cohens_kappa(["a", "a", "b", "tie"], ["a", "b", "b", "tie"])
    assert got == pytest.approx((0.75 - 0.3125) / 0.6875)


def test_agreement_refuses_bad_labels():
    with pytest.raises(ValueError, match="differ in length"):
        agreement(["a"], ["a", "b"])
    with pytest.raises(ValueError, match=r"unknown labels \['A', 'failed'\]"):
        agreement(["A", "a"], ["failed", "b"])


def test_calibration_bins_count_confidence_against_agreement():
    bins = calibration_bins([0.55, 0.58, 0.95, 1.0, 0.05], [True, False, True, True, False])
    assert len(bins) == 10
    assert [b.count for b in bins] == [1, 0, 0, 0, 0, 2, 0, 0, 0, 2]
    assert bins[5].lower == 0.5 and bins[5].upper == pytest.approx(0.6)
    assert bins[5].mean_confidence == pytest.approx(0.565)
    assert bins[5].observed_agreement == 0.5
    assert bins[9].observed_agreement == 1.0  # 1.0 falls in the last bin
    assert bins[0].observed_agreement == 0.0
    assert math.isnan(bins[1].mean_confidence) and math.isnan(bins[1].observed_agreement)
    assert [b.count for b in calibration_bins([0.2, 0.7], [True, True], n_bins=2)] == [1, 1]
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        calibration_bins([1.2], [True])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        calibration_bins([math.nan], [True])
    with pytest.raises(ValueError, match="2 confidences but 1"):
        calibration_bins([0.5, 0.6], [True])
    with pytest.raises(ValueError, match="n_bins"):
        calibration_bins([0.5], [True], n_bins=0)


def test_confidence_summary_leaves_out_missing_values():
    summary = confidence_summary([0.5, 1.0, math.nan])
    assert summary["n"] == 2 and summary["mean"] == 0.75 and summary["p50"] == 0.75
    assert confidence_summary([math.nan]) == {"n": 0}


def test_a_verdict_carries_the_confidence_of_its_chosen_side():
    pairs = pl.DataFrame(
        {
            "pair_id": ["p1", "p2", "p3", "p4"],
            "round_id": "round-0001",
            "prompt_id": ["q1", "q2", "q3", "q4"],
            "completion_a": ["x", "y", "x", "x"],
            "completion_b": ["y", "x", "z", "gone"],
        }
    )
    scores = {"x": 3.0, "y": 2.0, "z": 3.0}
    beats = {("x", "y"): 0.8, ("y", "x"): 0.2}
    kwargs = dict(tie_margin=0.0, labeller="j", source="s", labelled_at=datetime(2024, 1, 1))
    rows = verdicts_from_scores(
        pairs, scores, a_beats_b=lambda first, second: beats[first, second], **kwargs
    )
    assert rows["preference"].to_list() == ["a", "b", "tie", "failed"]
    # p2 chose its b (x) over y: the probability that x beats y, not that a beats b.
    assert rows["confidence"].to_list() == [0.8, 0.8, None, None]
    nan = verdicts_from_scores(pairs, scores, a_beats_b=lambda *_: math.nan, **kwargs)
    assert nan["confidence"].null_count() == 4  # NaN is stored as null
    assert verdicts_from_scores(pairs, scores, **kwargs)["confidence"].null_count() == 4


def test_the_fitted_temperature_recovers_the_one_that_made_the_choices():
    from auf_assets.core.agreement import fit_temperature

    rng = np.random.default_rng(0)
    gaps = rng.normal(0.0, 2.0, 4000)
    a_won = rng.random(4000) < 1.0 / (1.0 + np.exp(-gaps / 0.5))
    assert fit_temperature(gaps, a_won) == pytest.approx(0.5, rel=0.15)
    # a judge that points the wrong way is told to stay near 0.5
    assert fit_temperature(gaps, ~a_won) == pytest.approx(100.0)
    assert fit_temperature([], []) is None and fit_temperature([0.0, 0.0], [True, False]) is None
