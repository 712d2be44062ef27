"""Principle system prompts: coverage, determinism, and spread over prompts."""

from __future__ import annotations

from collections import Counter

import pytest

from auf_assets.core.principles import (
    PRINCIPLES,
    SOURCE_PRINCIPLE_WEIGHTS,
    choose_system_prompt,
    principle_weights,
)


def test_principles_table():
    assert set(PRINCIPLES) == {"helpfulness", "honesty", "truthfulness", "verbalized_calibration"}
    for prompts in PRINCIPLES.values():
        assert 3 <= len(prompts) <= 5
        assert len(set(prompts)) == len(prompts)
    assert "default" in SOURCE_PRINCIPLE_WEIGHTS
    for weights in SOURCE_PRINCIPLE_WEIGHTS.values():
        assert set(weights) <= set(PRINCIPLES)
        assert all(w >= 0 for w in weights.values()) and sum(weights.values()) > 0


def test_source_lookup():
    assert principle_weights("factual") is SOURCE_PRINCIPLE_WEIGHTS["factual"]
    assert principle_weights(" Factual ") is SOURCE_PRINCIPLE_WEIGHTS["factual"]
    assert principle_weights("flan_v2_cot") is SOURCE_PRINCIPLE_WEIGHTS["flan"]
    assert principle_weights("no-such-source") is SOURCE_PRINCIPLE_WEIGHTS["default"]
    assert principle_weights("") is SOURCE_PRINCIPLE_WEIGHTS["default"]


def test_choose_is_deterministic():
    first = [choose_system_prompt("general", f"p{i}/model", 0) for i in range(50)]
    again = [choose_system_prompt("general", f"p{i}/model", 0) for i in range(50)]
    assert first == again
    # a pinned value guards against an accidental change of the hashing scheme
    assert first[0] == ("helpfulness", PRINCIPLES["helpfulness"][2])
    other_seed = [choose_system_prompt("general", f"p{i}/model", 1) for i in range(50)]
    assert other_seed != first
    for principle, prompt in first:
        assert prompt in PRINCIPLES[principle]


def test_choices_spread_and_follow_weights():
    picks = [choose_system_prompt("default", f"key-{i}", 7) for i in range(4000)]
    prompts = Counter(p for _, p in picks)
    principles = Counter(name for name, _ in picks)
    assert len(prompts) >= 8  # many different system prompts are used
    assert set(principles) == set(PRINCIPLES)
    assert principles["helpfulness"] / len(picks) == pytest.approx(0.7, abs=0.04)
    helpful = [p for name, p in picks if name == "helpfulness"]
    assert set(helpful) == set(PRINCIPLES["helpfulness"])


def test_sources_steer_the_principle():
    creative = {choose_system_prompt("creative", f"k{i}", 0)[0] for i in range(200)}
    assert creative == {"helpfulness"}
    factual = Counter(choose_system_prompt("factual", f"k{i}", 0)[0] for i in range(2000))
    assert factual["truthfulness"] + factual["honesty"] > 0.6 * 2000
    false_qa = {choose_system_prompt("false_qa", f"k{i}", 0)[0] for i in range(200)}
    assert false_qa == {"honesty", "truthfulness"}
