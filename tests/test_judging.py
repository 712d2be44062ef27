"""Rubric judge arithmetic: expectations, log-prob parsing, failures, overall, preferences."""

from __future__ import annotations

import math

import numpy as np
import pytest

from auf_assets.core.judging import (
    ASPECTS,
    DIGITS,
    RUBRICS,
    AspectScore,
    decide_preference,
    expected_digit_score,
    judge_messages,
    overall_score,
    score_from_text,
    score_from_top_logprobs,
)

NEG_INF = -np.inf


def test_constants():
    assert ASPECTS == ("instruction_following", "honesty", "truthfulness", "helpfulness")
    assert DIGITS == ("1", "2", "3", "4", "5")
    assert set(RUBRICS) == set(ASPECTS)
    for text in RUBRICS.values():
        for d in DIGITS:
            assert f"{d} =" in text


# ---------------------------------------------------------------------------------------------
# expectation


def test_expected_digit_score_hand_cases():
    lp = np.array(
        [
            [-1.0, -1.0, -1.0, -1.0, -1.0],  # uniform -> 3
            [NEG_INF, NEG_INF, NEG_INF, 0.0, NEG_INF],  # all mass on 4
            [np.log(0.5), NEG_INF, NEG_INF, NEG_INF, np.log(0.5)],  # 1 and 5 half each -> 3
            [np.log(0.1), NEG_INF, NEG_INF, NEG_INF, np.log(0.3)],  # renormalised: .25*1+.75*5
            [NEG_INF] * 5,  # nothing -> nan
            [-20.0, -20.0, np.nan, -20.0, -20.0],  # nan = absent: (1+2+4+5)/4
        ]
    )
    out = expected_digit_score(lp)
    np.testing.assert_allclose(out[:4], [3.0, 4.0, 3.0, 4.0])
    assert math.isnan(out[4])
    assert out[5] == pytest.approx(3.0)


def test_expected_digit_score_shapes_and_stability():
    lp = np.full((2, 3, 5), -1000.0)  # tiny probabilities must not underflow to nan
    lp[..., 1] = -999.0
    out = expected_digit_score(lp)
    assert out.shape == (2, 3)
    e = np.exp(1.0)
    np.testing.assert_allclose(out, (1 + 2 * e + 3 + 4 + 5) / (4 + e))
    assert expected_digit_score(np.log([0.2, 0.2, 0.2, 0.2, 0.2])).shape == ()
    with pytest.raises(ValueError):
        expected_digit_score(np.zeros((3, 4)))


# ---------------------------------------------------------------------------------------------
# top log-probs


def test_score_from_top_logprobs_leading_spaces_and_other_tokens():
    top = {" 4": math.log(0.6), "5": math.log(0.2), "The": math.log(0.1), "10": math.log(0.05)}
    s = score_from_top_logprobs(top)
    assert not s.failed and s.reason is None
    assert s.score == pytest.approx((4 * 0.6 + 5 * 0.2) / 0.8)
    assert s.digit_mass == pytest.approx(0.8)


def test_score_from_top_logprobs_merges_variants_of_one_digit():
    top = {"3": math.log(0.25), " 3": math.log(0.25), "\u01205": math.log(0.5)}
    s = score_from_top_logprobs(top)
    assert s.score == pytest.approx(4.0)
    assert s.digit_mass == pytest.approx(1.0)


@pytest.mark.parametrize(
    "top", [{}, {"Sure": -0.1, " I": -2.5, "0": -3.0, "6": -4.0}, {"4": float("-inf")}]
)
def test_score_from_top_logprobs_no_digit_fails_without_nan(top):
    s = score_from_top_logprobs(top)
    assert isinstance(s, AspectScore)
    assert s.failed and s.score is None
    assert s.reason == "no digit 1-5 among the top-k first-token log-probs"
    assert s.digit_mass == 0.0


def test_score_from_top_logprobs_min_mass():
    top = {"4": math.log(0.05), "Well": math.log(0.9)}
    assert not score_from_top_logprobs(top).failed
    s = score_from_top_logprobs(top, min_digit_mass=0.5)
    assert s.failed and s.score is None and s.digit_mass == pytest.approx(0.05)


# ---------------------------------------------------------------------------------------------
# text fallback


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("4", 4.0),
        ("Rating: 4", 4.0),
        ("**3**", 3.0),
        ("I would give it a 2 out of 5.", 2.0),
        ("Considering items 1-5 of the rubric, my score: 5", 5.0),
        ("It scores 4.5, so overall 3", 3.0),
        ("10 points; final 2", 2.0),
    ],
)
def test_score_from_text(text, expected):
    s = score_from_text(text)
    assert not s.failed and s.score == expected and s.method == "text"


@pytest.mark.parametrize("text", ["", "I cannot rate this.", "Score: 7", "0 or 10"])
def test_score_from_text_failure(text):
    s = score_from_text(text)
    assert s.failed and s.score is None and s.reason


# ---------------------------------------------------------------------------------------------
# overall score and preferences


def test_overall_score_with_failed_aspects():
    scores = np.array(
        [
            [4.0, 5.0, 3.0, 4.0],
            [4.0, np.nan, 3.0, 5.0],
            [np.nan, np.nan, np.nan, np.nan],
            [2.0, np.nan, np.nan, 4.0],
        ]
    )
    strict = overall_score(scores)
    assert strict[0] == pytest.approx(4.0)
    assert np.isnan(strict[1:]).all()
    loose = overall_score(scores, min_aspects=2)
    np.testing.assert_allclose(loose[[0, 1, 3]], [4.0, 4.0, 3.0])
    assert np.isnan(loose[2])
    with pytest.raises(ValueError):
        overall_score(scores, min_aspects=5)
    with pytest.raises(ValueError):
        overall_score(np.array([1.0, 2.0]))


def test_decide_preference():
    assert decide_preference(4.2, 3.1) == "a"
    assert decide_preference(2.0, 3.5) == "b"
    assert decide_preference(3.0, 3.0) == "tie"
    assert decide_preference(3.0, 3.2, tie_margin=0.25) == "tie"
    assert decide_preference(3.0, 3.3, tie_margin=0.25) == "b"
    assert decide_preference(3.25, 3.0, tie_margin=0.25) == "tie"
    for a, b in [(math.nan, 3.0), (3.0, float("nan")), (np.nan, np.nan)]:
        with pytest.raises(ValueError):
            decide_preference(a, b)
    with pytest.raises(ValueError):
        decide_preference(1.0, 2.0, tie_margin=-0.1)


# ---------------------------------------------------------------------------------------------
# messages


@pytest.mark.parametrize("aspect", ASPECTS)
def test_judge_messages_include_rubric(aspect):
    msgs = judge_messages(aspect, "What is 2+2?", "It is 4.")
    assert [m["role"] for m in msgs] == ["system", "user"]
    assert "single digit" in msgs[0]["content"]
    user = msgs[1]["content"]
    assert RUBRICS[aspect] in user
    assert "What is 2+2?" in user and "It is 4." in user
    others = [RUBRICS[a] for a in ASPECTS if a != aspect]
    assert not any(o in user for o in others)


def test_judge_messages_truncate_long_responses():
    response = "x" * 50 + "TAIL"
    user = judge_messages("helpfulness", "p", response, max_response_chars=20)[1]["content"]
    assert "x" * 20 in user and "x" * 21 not in user
    assert "TAIL" not in user
    assert "truncated" in user and "34 more characters" in user
    short = judge_messages("helpfulness", "p", "short", max_response_chars=20)[1]["content"]
    assert "truncated" not in short
    with pytest.raises(ValueError):
        judge_messages("style", "p", "r")
