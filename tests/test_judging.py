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


# ---------------------------------------------------------------------------------------------
# the judge resource's fallbacks: retry with an answer prefix, then parse a short greedy answer


class ScriptedLM:
    """A language-model double: what each call returns depends on a marker in the response.

    ``first``/``retry`` map a marker to the top log-probs of the first call and of the retry
    (with the "Rating: " prefix); ``text`` maps it to the greedy answer. Calls are recorded.
    """

    def __init__(self, first: dict, retry: dict, text: dict):
        from resources.lm_types import Usage

        self.first, self.retry, self.text = first, retry, text
        self.calls: list[tuple] = []
        self.usage = Usage()

    @staticmethod
    def _marker(conversation, table: dict):
        user = conversation[-1]["content"]
        hits = [m for m in table if f"<response>\n{m}\n</response>" in user]
        assert len(hits) == 1, user
        return table[hits[0]]

    def first_token_logprobs(
        self,
        conversations,
        *,
        assistant_prefix="",
        top_k=20,
        candidates=(),
        batch_size=8,
        progress=None,
    ):
        self.calls.append(("logprobs", assistant_prefix, len(conversations), top_k))
        table = self.retry if assistant_prefix else self.first
        return [dict(self._marker(c, table)) for c in conversations]

    def generate(
        self,
        conversations,
        *,
        max_new_tokens,
        temperature,
        top_p,
        seed,
        batch_size=8,
        progress=None,
    ):
        from resources.lm_types import Generation

        self.calls.append(("generate", max_new_tokens, temperature, len(conversations)))
        return [Generation(self._marker(c, self.text), 10, 3, "length") for c in conversations]


NO_DIGIT = {"Sure": math.log(0.6), " I": math.log(0.3), "0": math.log(0.05)}
FOUR = {" 4": math.log(0.5), "5": math.log(0.25), "Well": math.log(0.25)}


def _judge(monkeypatch, lm: ScriptedLM, **kw):
    from resources.judge import RubricJudge

    monkeypatch.setattr(RubricJudge, "_lm", lambda self: lm)
    return RubricJudge(top_k=7, **kw)


def _by_item(rated):
    out: dict[int, list] = {}
    for r in rated:
        out.setdefault(r.item, []).append(r)
    return out


def test_judge_retries_with_prefix_when_no_digit(monkeypatch):
    from resources.judge import RETRY_PREFIX

    lm = ScriptedLM(
        first={"GOOD": FOUR, "SHY": NO_DIGIT},
        retry={"GOOD": {}, "SHY": {"2": math.log(0.5), " 3": math.log(0.5)}},
        text={},
    )
    judge = _judge(monkeypatch, lm)
    overall, rated = judge.overall(["p0", "p1"], ["GOOD", "SHY"])
    assert [(r.item, r.aspect) for r in rated] == [(i, a) for i in (0, 1) for a in ASPECTS]
    good, shy = _by_item(rated)[0], _by_item(rated)[1]
    for r in good:
        assert r.attempts == 1 and r.result.method == "logprobs"
        assert r.result.score == pytest.approx((4 * 0.5 + 5 * 0.25) / 0.75)
    for r in shy:  # the first answer had no digit: asked again, answer started for it
        assert r.attempts == 2 and not r.result.failed and r.result.method == "logprobs"
        assert r.result.score == pytest.approx(2.5) and r.result.digit_mass == pytest.approx(1.0)
    # the retry asks only the failed aspects again, with the prefix; no text parse was needed
    assert lm.calls == [("logprobs", "", 8, 7), ("logprobs", RETRY_PREFIX, 4, 7)]
    np.testing.assert_allclose(overall, [(4 * 0.5 + 5 * 0.25) / 0.75, 2.5])


def test_judge_parses_the_text_when_the_digit_probabilities_fail(monkeypatch):
    lm = ScriptedLM(
        first={"GOOD": FOUR, "TALKY": NO_DIGIT, "MUTE": NO_DIGIT},
        retry={"TALKY": {"Hmm": -0.1}, "MUTE": {}},
        text={"TALKY": "Rating: 3 because", "MUTE": "I cannot rate this"},
    )
    judge = _judge(monkeypatch, lm)
    overall, rated = judge.overall(["p"] * 3, ["GOOD", "TALKY", "MUTE"])
    items = _by_item(rated)
    assert all(r.attempts == 1 for r in items[0])
    for r in items[1]:  # score from the text; no digit distribution behind it
        assert r.attempts == 3 and not r.result.failed
        assert r.result.method == "text" and r.result.score == 3.0
        assert math.isnan(r.result.digit_mass)
    for r in items[2]:  # nothing anywhere: an explicit failure that quotes the answer
        assert r.attempts == 3 and r.result.failed and r.result.score is None
        assert "first-token log-probs (twice)" in r.result.reason
        assert "'I cannot rate this'" in r.result.reason
        assert r.result.digit_mass == 0.0
    assert lm.calls[1][1:3] == ("Rating: ", 8)  # both failed items retried
    assert lm.calls[2] == ("generate", 8, 0.0, 8)  # short greedy answers for both
    assert overall[0] == pytest.approx((4 * 0.5 + 5 * 0.25) / 0.75)
    assert overall[1] == 3.0 and math.isnan(overall[2])


def test_judge_fallbacks_can_be_switched_off(monkeypatch):
    lm = ScriptedLM(first={"SHY": NO_DIGIT}, retry={"SHY": FOUR}, text={"SHY": "4"})
    overall, rated = _judge(monkeypatch, lm, retry_with_prefix=False, parse_fallback=False).overall(
        ["p"], ["SHY"]
    )
    assert all(r.attempts == 1 and r.result.failed for r in rated)
    assert len(lm.calls) == 1 and math.isnan(overall[0])

    lm = ScriptedLM(first={"SHY": NO_DIGIT}, retry={"SHY": FOUR}, text={"SHY": "4"})
    _, rated = _judge(monkeypatch, lm, retry_with_prefix=False).overall(["p"], ["SHY"])
    assert [c[0] for c in lm.calls] == ["logprobs", "generate"]  # straight to the text parse
    assert all(
        r.attempts > 1 and r.result.method == "text" and r.result.score == 4.0 for r in rated
    )


def test_judge_reads_the_digits_exactly_on_a_tiny_real_model(tiny_lm_dir, auf_home):
    """A random tiny model puts almost no mass on the digits, and none of them is its most
    likely token (top_k=1): the digits' log-probs are still read exactly, so every aspect is
    scored on the first call, with the (tiny) digit mass as the diagnostic."""
    from resources.judge import RubricJudge
    from resources.lm_types import Usage

    judge = RubricJudge(model=str(tiny_lm_dir), device="cpu", top_k=1, batch_size=4)
    usage = Usage()
    overall, rated = judge.overall(
        ["Explain photosynthesis.", "Write a poem."], ["Light.", "Sea."], usage=usage
    )
    assert len(rated) == 8 and overall.shape == (2,)
    for r in rated:
        assert r.attempts == 1 and not r.result.failed and r.result.method == "logprobs"
        assert 1.0 <= r.result.score <= 5.0 and 0 < r.result.digit_mass < 0.5
    assert np.isfinite(overall).all()
    assert usage.requests == 8 and usage.completion_tokens == 8 and usage.prompt_tokens > 8


def test_tokens_that_read_alike_add_their_probabilities():
    from resources.lm_types import collapse_by_text

    top = collapse_by_text([("4", math.log(0.2)), ("4", math.log(0.3)), ("5", math.log(0.1))])
    assert top["4"] == pytest.approx(math.log(0.5)) and top["5"] == pytest.approx(math.log(0.1))
