"""Judge biases on hand-made tables: the length bias against its base rate, the model family
rule, and self-preference (a member's win rate by the judge against people's)."""

from __future__ import annotations

import polars as pl
import pytest

from auf_assets.core.judge_bias import (
    BASE_FROM_EVEN_ODDS,
    BASE_FROM_REFERENCE,
    length_bias,
    model_family,
    response_lengths,
    self_preference,
)


def _pairs(rows: list[tuple]) -> pl.DataFrame:
    return pl.DataFrame(
        rows,
        schema=["label_source", "preference", "length_a", "length_b", "reference"],
        orient="row",
    )


def test_length_bias_counts_the_chosen_longer_against_even_odds_without_a_reference():
    pairs = _pairs(
        [
            ("llm_judge", "a", 10, 5, None),  # chose the longer
            ("llm_judge", "b", 10, 20, None),  # chose the longer
            ("llm_judge", "a", 3, 9, None),  # chose the shorter
            ("llm_judge", "a", 7, 7, None),  # same length: apart
            ("llm_judge", "tie", 1, 50, None),  # not decided: left out
            ("llm_judge", "failed", 50, 1, None),
            ("oracle", "b", 4, 2, None),  # chose the shorter
        ]
    )
    bias = {r["label_source"]: r for r in length_bias(pairs).to_dicts()}
    judge = bias["llm_judge"]
    assert (judge["decided"], judge["same_length"], judge["chosen_longer"]) == (3, 1, 2)
    assert judge["chosen_longer_share"] == pytest.approx(2 / 3)
    assert judge["base_rate"] == 0.5 and judge["base_rate_from"] == BASE_FROM_EVEN_ODDS
    assert judge["excess"] == pytest.approx(2 / 3 - 0.5)
    assert judge["reference_pairs"] == 0
    assert bias["oracle"]["chosen_longer_share"] == 0.0


def test_length_bias_base_rate_comes_from_the_reference_of_the_same_pairs():
    pairs = _pairs(
        [
            ("llm_judge", "a", 10, 5, "b"),  # judge: longer; people: the shorter is better
            ("llm_judge", "b", 10, 20, "b"),  # both: the longer
            ("llm_judge", "b", 30, 20, "a"),  # judge: shorter; people: longer
            ("llm_judge", "a", 3, 9, "tie"),  # a tie of people is no reference
            ("llm_judge", "a", 8, 2, None),
        ]
    )
    judge = length_bias(pairs).row(0, named=True)
    assert judge["decided"] == 5 and judge["chosen_longer"] == 3
    assert judge["reference_pairs"] == 3
    assert judge["chosen_longer_on_reference"] == 2
    assert judge["longer_better"] == 2
    assert judge["base_rate"] == pytest.approx(2 / 3)
    assert judge["base_rate_from"] == BASE_FROM_REFERENCE
    assert judge["excess"] == pytest.approx(3 / 5 - 2 / 3)


def test_length_bias_of_nothing_decided_and_of_missing_columns():
    only_ties = _pairs([("people", "tie", 1, 2, None)])
    assert length_bias(only_ties).height == 0
    same = length_bias(_pairs([("people", "a", 5, 5, None)])).row(0, named=True)
    assert same["decided"] == 0 and same["same_length"] == 1
    assert same["chosen_longer_share"] is None and same["excess"] is None
    with pytest.raises(ValueError, match="missing: \\['length_b'\\]"):
        length_bias(pl.DataFrame({"label_source": ["x"], "preference": ["a"], "length_a": [1]}))


def test_response_lengths_are_characters():
    rows = response_lengths(pl.DataFrame({"response_a": ["héllo", ""], "response_b": ["ab", None]}))
    assert rows["length_a"].to_list() == [5, 0]
    assert rows["length_b"].to_list() == [2, None]


@pytest.mark.parametrize(
    ("name", "family"),
    [
        ("SmolLM2-135M-Instruct", "smollm2"),
        ("HuggingFaceTB/SmolLM2-135M-Instruct", "smollm2"),
        ("smollm2-360m", "smollm2"),
        ("/models/local/SmolLM2-1.7B-Instruct/", "smollm2"),
        ("meta-llama/Llama-3.1-8B-Instruct", "llama"),
        ("Qwen/Qwen2.5-7B-Instruct", "qwen2.5"),
        ("Qwen3-32B", "qwen3"),
        ("mistralai/Mistral-7B-Instruct-v0.2", "mistral"),
        ("google/gemma-2-9b-it", "gemma"),
        ("gpt-4o-mini", "gpt"),
        ("tiny-llama0", "tiny-llama0"),
        ("7b-model", "7b-model"),  # nothing before the size: the whole name
    ],
)
def test_model_family_is_the_name_stem_before_size_or_version(name, family):
    assert model_family(name) == family


def _verdicts() -> pl.DataFrame:
    smol, qwen = "SmolLM2-360M-Instruct", "Qwen2.5-0.5B-Instruct"
    return pl.DataFrame(
        [
            ("smol", "qwen", smol, qwen, "a", "b"),
            ("qwen", "smol", qwen, smol, "b", "b"),
            ("smol", "qwen", smol, qwen, "a", "a"),
            ("qwen", "smol", qwen, smol, "tie", "a"),  # the judge did not decide: left out
            ("smol", "qwen", smol, qwen, "a", None),  # people did not label: left out
        ],
        schema=[
            "member_a",
            "member_b",
            "model_a",
            "model_b",
            "judge_preference",
            "people_preference",
        ],
        orient="row",
    )


def test_self_preference_sets_the_judges_family_against_people_on_the_same_pairs():
    rows = self_preference(_verdicts(), "HuggingFaceTB/SmolLM2-135M-Instruct")
    by = {r["member"]: r for r in rows.to_dicts()}
    smol, qwen = by["smol"], by["qwen"]
    assert (smol["appearances"], smol["judge_wins"], smol["people_wins"]) == (3, 3, 2)
    assert smol["judge_win_rate"] == 1.0 and smol["people_win_rate"] == pytest.approx(2 / 3)
    assert smol["judge_minus_people"] == pytest.approx(1 / 3)
    assert smol["same_family"] is True and smol["family"] == "smollm2"
    assert (qwen["appearances"], qwen["judge_wins"], qwen["people_wins"]) == (3, 0, 1)
    assert qwen["same_family"] is False and qwen["family"] == "qwen2.5"
    assert set(rows["judge_family"]) == {"smollm2"}


def test_self_preference_without_members_uses_models_and_takes_another_family_rule():
    verdicts = _verdicts().drop("member_a", "member_b")
    rows = self_preference(verdicts, "Qwen3-8B", family=lambda m: m.lower()[:4])
    assert set(rows["member"]) == {"SmolLM2-360M-Instruct", "Qwen2.5-0.5B-Instruct"}
    assert rows.filter(pl.col("same_family"))["model"].to_list() == ["Qwen2.5-0.5B-Instruct"]


def test_self_preference_with_no_pair_both_decided_is_empty():
    verdicts = _verdicts().with_columns(pl.lit("tie").alias("judge_preference"))
    assert self_preference(verdicts, "smollm2").height == 0
    with pytest.raises(ValueError, match="people_preference"):
        self_preference(verdicts.drop("people_preference"), "smollm2")
