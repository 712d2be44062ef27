"""Agreement of a judge with people on known tables (`auf_assets.core.judge_vs_people`)."""

import math
from datetime import datetime

import polars as pl
import pytest

from auf_assets.core.judge_vs_people import (
    agreement_by_aspect,
    agreement_by_round,
    agreement_summary,
    aspect_verdicts,
    comparison_frame,
    judge_calibration,
    people_preferences,
    rounded,
)


def frame(rows):
    cols = ("round_id", "pair_id", "route", "judge", "confidence", "people")
    return pl.DataFrame([dict(zip(cols, r, strict=True)) for r in rows], orient="row")


TABLE = frame(
    [
        ("r1", "p1", "unsure", "a", 0.55, "b"),
        ("r1", "p2", "unsure", "tie", None, "tie"),
        ("r1", "p3", "calibration", "b", 0.95, "b"),
        ("r1", "p4", "", "a", 0.9, "unlabelled"),
        ("r2", "p5", "calibration", "a", 0.85, "a"),
        ("r2", "p6", "unsure", "failed", None, "a"),
    ]
)


def test_summary_counts_only_pairs_both_labelled_and_splits_by_route():
    s = agreement_summary(TABLE)
    assert s["all"]["pairs"] == 4 and s["all"]["accuracy"] == pytest.approx(0.75)
    # judge a,tie vs people b,tie: p_o = 1/2, p_e = 1/4 (both say tie half the time)
    assert s["unsure"] == {"pairs": 2, "accuracy": 0.5, "kappa": pytest.approx(1 / 3)}
    assert s["calibration"]["pairs"] == 2 and s["calibration"]["accuracy"] == 1.0
    # judge a,tie,b,a vs people b,tie,b,a: p_o = 3/4, p_e = (2*1 + 1*1 + 1*2)/16 = 5/16
    assert s["all"]["kappa"] == pytest.approx((0.75 - 5 / 16) / (1 - 5 / 16))


def test_by_round_and_empty():
    per = agreement_by_round(TABLE)
    assert per["round_id"].to_list() == ["r1", "r2"]
    assert per["pairs"].to_list() == [3, 1]
    assert per["accuracy"][0] == pytest.approx(2 / 3)
    assert per["calibration_accuracy"].to_list() == [1.0, 1.0]
    empty = agreement_summary(TABLE.filter(pl.col("round_id") == "none"))
    assert empty["all"]["pairs"] == 0 and math.isnan(empty["all"]["accuracy"])
    assert rounded(empty)["all"]["accuracy"] is None


def test_calibration_bins_cover_the_upper_half():
    bins = judge_calibration(TABLE)
    assert [round(b.lower, 1) for b in bins] == [0.5, 0.6, 0.7, 0.8, 0.9]
    counts = {round(b.lower, 1): (b.count, b.observed_agreement) for b in bins if b.count}
    assert counts == {0.5: (1, 0.0), 0.8: (1, 1.0), 0.9: (1, 1.0)}


def test_a_confidence_just_under_half_counts_in_the_first_bin():
    low = TABLE.vstack(frame([("r2", "p7", "unsure", "b", 0.499, "a")]))
    first = judge_calibration(low)[0]
    assert (first.count, first.observed_agreement) == (2, 0.0)


def test_aspect_verdicts_and_agreement():
    scores = pl.DataFrame(
        {
            "completion_id": ["x", "y", "x", "y"],
            "aspect": ["honesty", "honesty", "helpfulness", "helpfulness"],
            "score": [5.0, 3.0, 2.0, None],
            "failed": [False, False, False, True],
        }
    )
    pairs = pl.DataFrame({"pair_id": ["p"], "completion_a": ["x"], "completion_b": ["y"]})
    aspects = aspect_verdicts(scores, pairs)
    assert dict(zip(aspects["aspect"], aspects["judge"], strict=True)) == {
        "helpfulness": "failed",
        "honesty": "a",
    }
    result = agreement_by_aspect(aspects, {"p": "a"})
    assert result["honesty"]["accuracy"] == 1.0 and result["helpfulness"]["pairs"] == 0


def test_people_preferences_resolve_votes_and_comparison_frame():
    t = datetime(2026, 1, 1)
    labels = pl.DataFrame(
        {
            "pair_id": ["p1", "p1", "p1", "p3"],
            "labeller": ["ann", "bob", "cat", "ann"],
            "choice": ["a", "b", "b", "tie"],
            "labelled_at": [t, t, t, t],
        }
    )
    people = people_preferences(labels, "majority")
    assert people == {"p1": "b", "p3": "tie"}
    screening = pl.DataFrame(
        {
            "pair_id": ["p1", "p2"],
            "round_id": ["r", "r"],
            "route": ["unsure", ""],
            "preference": ["a", "b"],
            "confidence": [0.6, 0.9],
            "model_a": ["m1", "m2"],
        }
    )
    out = comparison_frame(screening, people)
    assert out.columns[:6] == ["round_id", "pair_id", "route", "judge", "confidence", "people"]
    assert out["people"].to_list() == ["b", "unlabelled"] and "model_a" in out.columns
    assert comparison_frame(screening, {})["people"].to_list() == ["unlabelled"] * 2


def test_a_reward_judge_screening_fits_its_temperature_to_people():
    from auf_assets.core.judge_vs_people import reward_temperature

    rows = frame([("r", f"p{i}", "unsure", "a", 0.6, "a" if i % 4 else "b") for i in range(40)])
    rows = rows.with_columns(source=pl.lit("reward_model_judge"), score_a=1.0, score_b=0.0)
    fitted = reward_temperature(rows)  # people pick the higher reward 3 times in 4
    assert fitted == pytest.approx(1 / math.log(3), rel=0.05)  # sigmoid(1 / T) = 0.75
    assert reward_temperature(rows.with_columns(source=pl.lit("llm_judge"))) is None
