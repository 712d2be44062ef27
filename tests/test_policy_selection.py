"""Tests of auf_assets.core.policy_selection: scores against their definitions, then the rules."""

from __future__ import annotations

import itertools
import math
import subprocess
import sys

import numpy as np
import pytest

from auf_assets.core.methods import get_method, methods
from auf_assets.core.policy_selection import (
    POLICY_RULES,
    CountSketch,
    candidate_pairs,
    implicit_rewards,
    prompt_entropy,
    select_policy_pairs,
    sharpe_ratio,
    sharpe_ratio_from_probabilities,
    weighted_sharpe_ratio,
    weighted_sharpe_ratio_from_probabilities,
)

# Any numpy RuntimeWarning (division by zero, overflow, invalid) is a failure here.
pytestmark = pytest.mark.filterwarnings("error")

MARGIN_METHODS = ["sharp", "wsharp", "apl"]
MAGNITUDES = [1e-3, 0.1, 1.0, 5.0, 20.0]
DELTAS = np.array([s * m for m in MAGNITUDES for s in (1.0, -1.0)])


def _pair_set(sel) -> set[tuple[int, int, int]]:
    return {(b, int(i), int(j)) for b, (i, j) in enumerate(sel.picks) if sel.selected[b]}


def _ragged_mask(b: int, n: int, seed: int = 0) -> np.ndarray:
    """2..n real responses per row, scattered rather than a padded tail."""
    rng = np.random.default_rng(seed)
    mask = np.zeros((b, n), dtype=bool)
    for row in range(b):
        mask[row, rng.choice(n, size=int(rng.integers(2, n + 1)), replace=False)] = True
    return mask


def _assert_valid_picks(sel, mask, identical=None) -> None:
    for b in np.flatnonzero(sel.selected):
        i, j = sel.picks[b]
        assert 0 <= i < j < mask.shape[1]
        assert mask[b, i] and mask[b, j]
        if identical is not None:
            assert not (identical[b, i, j] or identical[b, j, i])
    assert (sel.picks[~sel.selected] == -1).all()


# ---------------------------------------------------------------------------------------------
# Scores


def test_method_registry_lists_the_four_rules_with_one_line_descriptions():
    assert set(POLICY_RULES) == {"sharp", "wsharp", "activedpo", "apl"}
    registered = methods("policy")
    assert [m.name for m in registered] == list(POLICY_RULES)
    for m in registered:
        assert m.description and "\n" not in m.description
        assert "log_probs" in m.needs
    assert [m.name for m in registered if "gradients" in m.needs] == ["activedpo"]
    # the registry's select is select_policy_pairs of that rule
    rewards = np.array([[0.0, 0.3, 1.0], [0.2, 0.1, -0.4]])
    ours = get_method("wsharp").select(rewards, None, seed=5)
    theirs = select_policy_pairs("wsharp", rewards, None, seed=5)
    np.testing.assert_array_equal(ours.picks, theirs.picks)


def test_implicit_rewards_is_beta_times_log_ratio():
    lp = np.array([[-1.0, -2.0], [-3.0, -0.5]])
    lr = np.array([[-1.5, -1.0], [-3.0, -2.5]])
    np.testing.assert_allclose(implicit_rewards(lp, lr, 0.1), [[0.05, -0.1], [0.0, 0.2]])
    with pytest.raises(ValueError, match="shape"):
        implicit_rewards(lp, lr[:1], 0.1)
    with pytest.raises(ValueError, match="beta"):
        implicit_rewards(lp, lr, 0.0)


@pytest.mark.parametrize("offset", [0.0, 0.37, -4.0])
def test_closed_forms_equal_the_repo_literal_formulas(offset):
    r2 = np.full_like(DELTAS, offset)
    r1 = r2 + DELTAS
    delta = r1 - r2  # the margin actually represented after the offset's rounding
    np.testing.assert_allclose(sharpe_ratio(delta), sharpe_ratio_from_probabilities(r1, r2), 1e-6)
    np.testing.assert_allclose(
        weighted_sharpe_ratio(delta), weighted_sharpe_ratio_from_probabilities(r1, r2), 1e-6
    )


def test_closed_forms_equal_coth_and_one_over_sinh():
    np.testing.assert_allclose(sharpe_ratio(DELTAS), 1.0 / np.tanh(np.abs(DELTAS) / 2), 1e-12)
    np.testing.assert_allclose(
        weighted_sharpe_ratio(DELTAS), 1.0 / np.abs(np.sinh(DELTAS / 2)), 1e-12
    )


def test_zero_margin_scores_infinite_in_closed_and_literal_forms():
    zero = np.array([0.0, -0.0])
    assert np.isposinf(sharpe_ratio(zero)).all()
    assert np.isposinf(weighted_sharpe_ratio(zero)).all()
    assert np.isposinf(sharpe_ratio_from_probabilities(1.5, 1.5))
    assert np.isposinf(weighted_sharpe_ratio_from_probabilities(1.5, 1.5))


def test_closed_forms_are_stable_for_huge_margins():
    big = np.array([50.0, 700.0, 5000.0, -5000.0])
    assert np.array_equal(sharpe_ratio(big), np.ones(4))
    w = weighted_sharpe_ratio(big)
    assert np.all(np.isfinite(w)) and np.all(w >= 0) and w[0] < 1e-10


@pytest.mark.parametrize("fn", [sharpe_ratio, weighted_sharpe_ratio])
def test_sharpe_ratios_fall_strictly_with_abs_margin_and_ignore_sign(fn):
    grid = np.array(MAGNITUDES)
    assert np.all(np.diff(fn(grid)) < 0)
    np.testing.assert_array_equal(fn(grid), fn(-grid))


def test_prompt_entropy_on_ragged_rows():
    rewards = np.array([[0.3, 0.3, np.nan, 0.3], [0.0, 50.0, 0.0, 0.0], [1.0, 2.0, 3.0, 9.0]])
    mask = np.array([[True, True, False, True], [True, True, False, False], [True] * 4])
    h = prompt_entropy(rewards, mask)
    assert h.shape == (3,)
    assert h[0] == pytest.approx(math.log(3))
    assert h[1] == pytest.approx(0.0, abs=1e-15)
    p = np.exp(rewards[2]) / np.exp(rewards[2]).sum()
    assert h[2] == pytest.approx(-(p * np.log(p)).sum(), rel=1e-12)
    with pytest.raises(ValueError, match="not finite"):
        prompt_entropy(rewards, np.ones((3, 4), dtype=bool))


def test_candidate_pairs_lists_each_unordered_pair_once():
    assert candidate_pairs(4).tolist() == [list(p) for p in itertools.combinations(range(4), 2)]
    assert candidate_pairs(1).shape == (0, 2)
    assert candidate_pairs(0).shape == (0, 2)


# ---------------------------------------------------------------------------------------------
# Margin rules


REWARDS = np.array(
    [
        [0.0, 0.2, 1.0, 3.0],  # smallest |D|: (0, 1); largest: (0, 3)
        [5.0, 1.0, 4.9, -2.0],  # smallest: (0, 2); largest: (0, 3)
        [1.0, 4.0, 0.5, 2.5],  # smallest: (0, 2); largest: (1, 2)
    ]
)


@pytest.mark.parametrize("method", ["sharp", "wsharp"])
def test_sharp_rules_pick_the_smallest_margin(method):
    sel = select_policy_pairs(method, REWARDS, np.ones((3, 4), dtype=bool), seed=0)
    assert sel.picks.tolist() == [[0, 1], [0, 2], [0, 2]]
    assert sel.selected.all() and sel.fallback is None and sel.v_inv is None
    fn = sharpe_ratio if method == "sharp" else weighted_sharpe_ratio
    np.testing.assert_allclose(sel.scores, fn(np.array([0.2, 0.1, 0.5])))


def test_apl_picks_the_largest_margin():
    sel = select_policy_pairs("apl", REWARDS, np.ones((3, 4), dtype=bool), seed=0)
    assert sel.picks.tolist() == [[0, 3], [0, 3], [1, 2]]
    np.testing.assert_allclose(sel.scores, [3.0, 7.0, 3.5])
    assert sel.fallback is None


def test_zero_margin_between_distinct_texts_wins_sharp_with_infinite_score():
    rewards = np.array([[1.0, 2.0, 1.0, 5.0], [0.0, 0.4, 3.0, 9.0]])
    sel = select_policy_pairs("sharp", rewards, np.ones((2, 4), dtype=bool), seed=0, fraction=0.5)
    assert sel.selected.tolist() == [True, False]
    assert sel.picks[0].tolist() == [0, 2] and np.isposinf(sel.scores[0])
    assert sel.fallback is None


@pytest.mark.parametrize("method", MARGIN_METHODS)
def test_round_one_all_zero_margins_fall_back_to_seeded_random_pairs(method):
    b, n = 24, 6
    mask = _ragged_mask(b, n, seed=1)
    rewards = np.zeros((b, n))
    identical = np.zeros((b, n, n), dtype=bool)
    identical[:, 0, 1] = True
    runs = {}
    for seed in range(5):
        sel = select_policy_pairs(method, rewards, mask, seed=seed, identical=identical)
        assert sel.fallback == "random"
        assert np.isnan(sel.scores).all()
        _assert_valid_picks(sel, mask, identical)
        runs[seed] = sel.picks.copy()
    again = select_policy_pairs(method, rewards, mask, seed=3, identical=identical)
    np.testing.assert_array_equal(again.picks, runs[3])
    assert len({p.tobytes() for p in runs.values()}) > 1


def test_random_fallback_covers_every_usable_pair():
    mask = np.array([[True, True, True, False, True]])
    seen = {
        tuple(select_policy_pairs("sharp", np.zeros((1, 5)), mask, seed=s).picks[0])
        for s in range(200)
    }
    assert seen == {(0, 1), (0, 2), (0, 4), (1, 2), (1, 4), (2, 4)}


def test_generator_seed_matches_int_seed():
    rewards = np.zeros((10, 5))
    mask = np.ones((10, 5), dtype=bool)
    a = select_policy_pairs("apl", rewards, mask, seed=7)
    b = select_policy_pairs("apl", rewards, mask, seed=np.random.default_rng(7))
    np.testing.assert_array_equal(a.picks, b.picks)


@pytest.mark.parametrize(
    ("method", "expected"),
    [("sharp", [1, 2]), ("wsharp", [1, 2]), ("apl", [1, 3])],
)
def test_identical_responses_are_never_paired_even_when_best(method, expected):
    rewards = np.array([[0.0, 0.001, 3.0, 7.0], [2.0, 2.0, 2.0, 0.0], [1.0, 1.0, 5.0, 0.0]])
    mask = np.array([[True] * 4, [True, True, True, False], [True, True, False, False]])
    identical = np.zeros((3, 4, 4), dtype=bool)
    identical[0, 0, 1] = True  # sharp's favourite
    identical[0, 3, 0] = True  # apl's favourite, given only below the diagonal
    for i, j in itertools.combinations(range(3), 2):  # row 1: three copies of one text
        identical[1, i, j] = True
    identical[2, 0, 1] = True  # row 2: its only two real responses are the same text
    sel = select_policy_pairs(method, rewards, mask, seed=0, identical=identical)
    assert sel.picks[0].tolist() == expected
    assert sel.selected.tolist() == [True, False, False]
    assert sel.picks[1:].tolist() == [[-1, -1], [-1, -1]]
    assert np.isnan(sel.scores[1:]).all()


@pytest.mark.parametrize("method", MARGIN_METHODS)
def test_masked_entries_are_ignored(method):
    # The masked entries (nan, and values that would win if they counted) must never appear.
    rewards = np.array([[0.0, 0.0, 5.0, np.nan], [1.0, 100.0, 1.5, 3.0], [4.0, 0.0, 0.0, 0.0]])
    mask = np.array(
        [[True, False, True, False], [True, False, True, True], [True, False, False, False]]
    )
    sel = select_policy_pairs(method, rewards, mask, seed=0)
    assert sel.selected.tolist() == [True, True, False]
    assert sel.picks[0].tolist() == [0, 2]
    assert sel.picks[1].tolist() == ([0, 2] if method != "apl" else [0, 3])
    _assert_valid_picks(sel, mask)


@pytest.mark.parametrize("method", ["sharp", "wsharp"])
def test_fraction_keeps_prompts_with_the_least_certain_best_pair(method):
    # best |D| per prompt: 0.5, 0.1, 2.0, 0.3; row 4 cannot have a pair
    rewards = np.array(
        [[0.0, 0.5, 3.0], [0.0, 0.1, 4.0], [0.0, 2.0, 9.0], [0.0, 0.3, 1.0], [0.0, 0.0, 0.0]]
    )
    mask = np.ones(rewards.shape, dtype=bool)
    mask[4, 1:] = False
    sel = select_policy_pairs(method, rewards, mask, seed=0, fraction=0.5)
    assert np.flatnonzero(sel.selected).tolist() == [1, 3]  # k = round(0.5 * 4) = 2
    assert sel.picks[[1, 3]].tolist() == [[0, 1], [0, 1]]
    assert np.isnan(sel.scores[[0, 2, 4]]).all()
    assert select_policy_pairs(method, rewards, mask, seed=0, fraction=0.01).selected.sum() == 1
    assert select_policy_pairs(method, rewards, mask, seed=0, fraction=0.625).selected.sum() == 3
    assert select_policy_pairs(method, rewards, mask, seed=0).selected.sum() == 4


def test_apl_fraction_keeps_the_highest_entropy_prompts():
    rewards = np.array([[0.0, 0.5, 3.0], [0.0, 0.1, 4.0], [0.0, 2.0, 9.0], [0.0, 0.3, 1.0]])
    mask = np.ones(rewards.shape, dtype=bool)
    sel = select_policy_pairs(
        "apl", rewards, mask, seed=0, fraction=0.5, entropy=np.array([0.1, 0.9, 0.5, 0.7])
    )
    assert np.flatnonzero(sel.selected).tolist() == [1, 3]
    assert sel.picks[[1, 3]].tolist() == [[0, 2], [0, 2]]
    # Without a given entropy it comes from the rewards: rows 3 (spread 1) and 0 (spread 3).
    sel = select_policy_pairs("apl", rewards, mask, seed=0, fraction=0.5)
    assert np.flatnonzero(sel.selected).tolist() == [0, 3]


def test_input_validation_names_the_problem():
    r = np.zeros((2, 3))
    m = np.ones((2, 3), dtype=bool)
    with pytest.raises(ValueError, match="unknown policy method 'nope'.*sharp.*activedpo"):
        select_policy_pairs("nope", r, m, seed=0)
    with pytest.raises(ValueError, match=r"rewards must be a \[B, N\]"):
        select_policy_pairs("sharp", np.zeros(3), m, seed=0)
    with pytest.raises(ValueError, match="mask has shape"):
        select_policy_pairs("sharp", r, m[:1], seed=0)
    with pytest.raises(ValueError, match="mask must be a boolean"):
        select_policy_pairs("sharp", r, m.astype(int), seed=0)
    with pytest.raises(ValueError, match="identical has shape"):
        select_policy_pairs("sharp", r, m, seed=0, identical=np.zeros((2, 3, 2), dtype=bool))
    for bad in (0.0, 1.5, -0.1, float("nan")):
        with pytest.raises(ValueError, match="fraction"):
            select_policy_pairs("sharp", r, m, seed=0, fraction=bad)
    with pytest.raises(ValueError, match="not finite"):
        select_policy_pairs("sharp", np.array([[0.0, np.inf, 1.0]] * 2), m, seed=0)
    with pytest.raises(ValueError, match="entropy has shape"):
        select_policy_pairs("apl", r + np.arange(3), m, seed=0, entropy=np.zeros(3))
    with pytest.raises(ValueError, match="gradients must be"):
        select_policy_pairs("activedpo", r, m, seed=0, gradients=np.zeros((2, 4, 5)))
    with pytest.raises(ValueError, match="v_inv has shape"):
        select_policy_pairs(
            "activedpo", r, m, seed=0, gradients=np.ones((2, 3, 5)), v_inv=np.eye(4)
        )
    with pytest.raises(ValueError, match="symmetric"):
        select_policy_pairs(
            "activedpo",
            r,
            m,
            seed=0,
            gradients=np.ones((2, 3, 2)),
            v_inv=np.array([[1, 0.5], [0, 1]]),
        )
    with pytest.raises(ValueError, match="lam"):
        select_policy_pairs("activedpo", r, m, seed=0, lam=0.0)
    with pytest.raises(TypeError, match="seed"):
        select_policy_pairs("sharp", r, m, seed=1.5)


# ---------------------------------------------------------------------------------------------
# ActiveDPO


def _phi(gradients: np.ndarray, sel) -> np.ndarray:
    rows = np.flatnonzero(sel.selected)
    i, j = sel.picks[rows, 0], sel.picks[rows, 1]
    phi = gradients[rows, i] - gradients[rows, j]
    return phi / np.linalg.norm(phi, axis=1, keepdims=True)


def test_activedpo_sherman_morrison_matches_direct_inverse_across_rounds():
    rng = np.random.default_rng(0)
    b, n, d, lam = 7, 4, 5, 0.5
    mask = _ragged_mask(b, n, seed=2)
    g1 = rng.normal(size=(b, n, d))
    r = np.zeros((b, n))
    sel1 = select_policy_pairs("activedpo", r, mask, seed=0, gradients=g1, lam=lam)
    assert sel1.selected.all() and sel1.fallback is None
    _assert_valid_picks(sel1, mask)
    phi1 = _phi(g1, sel1)
    np.testing.assert_allclose(
        sel1.v_inv, np.linalg.inv(lam * np.eye(d) + phi1.T @ phi1), rtol=1e-9, atol=1e-12
    )
    assert np.nanmax(sel1.scores) == pytest.approx(math.sqrt(1 / lam))

    g2 = rng.normal(size=(b, n, d))
    sel2 = select_policy_pairs(
        "activedpo", r, mask, seed=1, gradients=g2, v_inv=sel1.v_inv, lam=lam, fraction=0.5
    )
    assert sel2.selected.sum() == 4  # round(0.5 * 7) with half rounded up
    phi = np.vstack([phi1, _phi(g2, sel2)])
    np.testing.assert_allclose(
        sel2.v_inv, np.linalg.inv(lam * np.eye(d) + phi.T @ phi), rtol=1e-9, atol=1e-12
    )


def _reference_greedy(g, usable, v_inv, k):
    """Textbook greedy: re-evaluate every usable pair against a freshly inverted V each step."""
    v = np.linalg.inv(v_inv)
    done: dict[int, tuple[int, int, float]] = {}
    for _ in range(k):
        vinv = np.linalg.inv(v)
        best = None
        for b, i, j in usable:
            if b in done:
                continue
            phi = (g[b, i] - g[b, j]) / np.linalg.norm(g[b, i] - g[b, j])
            score = math.sqrt(phi @ vinv @ phi)
            if best is None or score > best[0]:
                best = (score, b, i, j, phi)
        score, b, i, j, phi = best
        done[b] = (i, j, score)
        v = v + np.outer(phi, phi)
    return done


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_activedpo_greedy_matches_a_brute_force_reference(seed):
    rng = np.random.default_rng(seed)
    b, n, d = 11, 5, 3  # small d: later picks really are steered by earlier ones
    g = rng.normal(size=(b, n, d)) * rng.uniform(0.1, 10, size=(b, n, 1))
    mask = _ragged_mask(b, n, seed=seed)
    identical = rng.random((b, n, n)) < 0.2
    a = rng.normal(size=(d, d))
    v0 = np.linalg.inv(0.5 * np.eye(d) + a @ a.T)
    usable = [
        (r, int(i), int(j))
        for r in range(b)
        for i, j in candidate_pairs(n)
        if mask[r, i] and mask[r, j] and not (identical[r, i, j] or identical[r, j, i])
    ]
    eligible = len({u[0] for u in usable})
    for fraction in (1.0, 0.6):
        sel = select_policy_pairs(
            "activedpo",
            np.zeros((b, n)),
            mask,
            seed=seed,
            identical=identical,
            gradients=g,
            v_inv=v0,
            fraction=fraction,
        )
        ref = _reference_greedy(g, usable, v0, math.floor(fraction * eligible + 0.5))
        assert set(np.flatnonzero(sel.selected)) == set(ref)
        for r, (i, j, score) in ref.items():
            assert sel.picks[r].tolist() == [i, j]
            assert sel.scores[r] == pytest.approx(score, rel=1e-9)


def _one_pair_prompts(directions: list[list[float]]) -> tuple[np.ndarray, np.ndarray]:
    """Prompts with two responses whose gradient difference is the given direction."""
    g = np.zeros((len(directions), 2, len(directions[0])))
    g[:, 0] = np.array(directions)
    return g, np.ones((len(directions), 2), dtype=bool)


def test_activedpo_takes_the_largest_v_norm_first_then_avoids_its_parallel():
    # V^-1 from an earlier round: e2 is the least explored direction, then e3, then e1.
    v_inv = np.diag([1.0, 3.0, 2.0])
    g, mask = _one_pair_prompts([[0, 1, 0], [0.1, 1, 0], [0, 0, 1], [1, 0, 0]])
    g[1] *= 100.0  # magnitude must not matter: phi is normalised
    sel = select_policy_pairs(
        "activedpo", np.zeros((4, 2)), mask, seed=0, gradients=g, v_inv=v_inv, fraction=0.5
    )
    # Before the update prompt 1 (q = 2.98) beats prompt 2 (q = 2); after picking e2 it drops
    # to ~0.75.
    assert np.flatnonzero(sel.selected).tolist() == [0, 2]
    assert sel.scores[0] == pytest.approx(math.sqrt(3.0))
    assert sel.scores[2] == pytest.approx(math.sqrt(2.0))


def test_activedpo_isotropic_start_never_takes_two_parallel_pairs():
    g, mask = _one_pair_prompts([[1, 0], [1, 0.01], [0, 1]])
    outcomes = set()
    for seed in range(30):
        sel = select_policy_pairs(
            "activedpo", np.zeros((3, 2)), mask, seed=seed, gradients=g, fraction=0.67
        )
        chosen = tuple(np.flatnonzero(sel.selected))
        assert len(chosen) == 2 and chosen != (0, 1)
        outcomes.add(chosen)
    assert len(outcomes) > 1  # the first pick is a seeded tie-break


def test_activedpo_one_pair_per_prompt_skipping_identical_and_masked():
    rng = np.random.default_rng(5)
    b, n, d = 5, 5, 3
    g = rng.normal(size=(b, n, d))
    mask = _ragged_mask(b, n, seed=5)
    identical = rng.random((b, n, n)) < 0.3
    sel = select_policy_pairs(
        "activedpo", np.zeros((b, n)), mask, seed=0, gradients=g, identical=identical
    )
    _assert_valid_picks(sel, mask, identical)
    pairs = candidate_pairs(n)
    usable = [
        any(
            mask[r, i] and mask[r, j] and not identical[r, i, j] | identical[r, j, i]
            for i, j in pairs
        )
        for r in range(b)
    ]
    assert sel.selected.tolist() == usable


def test_activedpo_without_usable_gradients_falls_back_to_random():
    mask = np.ones((6, 4), dtype=bool)
    r = np.zeros((6, 4))
    none = select_policy_pairs("activedpo", r, mask, seed=0)
    assert none.fallback == "random" and none.selected.all() and none.v_inv is None
    kept = select_policy_pairs("activedpo", r, mask, seed=0, v_inv=2 * np.eye(3))
    np.testing.assert_array_equal(kept.v_inv, 2 * np.eye(3))
    zero = select_policy_pairs("activedpo", r, mask, seed=0, gradients=np.zeros((6, 4, 3)), lam=4)
    assert zero.fallback == "random"
    np.testing.assert_array_equal(zero.v_inv, np.eye(3) / 4)
    _assert_valid_picks(zero, mask)
    other = select_policy_pairs("activedpo", r, mask, seed=1, gradients=np.zeros((6, 4, 3)))
    assert not np.array_equal(other.picks, zero.picks)


# ---------------------------------------------------------------------------------------------
# CountSketch


def test_countsketch_is_reproducible_for_a_seed_and_differs_otherwise():
    a, b = CountSketch(1000, 32, 7), CountSketch(1000, 32, 7)
    np.testing.assert_array_equal(a.indices, b.indices)
    np.testing.assert_array_equal(a.signs, b.signs)
    assert a.fingerprint == b.fingerprint and len(a.fingerprint) == 16
    c = CountSketch(1000, 32, 8)
    assert c.fingerprint != a.fingerprint
    assert not np.array_equal(c.indices, a.indices)
    assert CountSketch(1000, 33, 7).fingerprint != a.fingerprint
    assert CountSketch(1001, 32, 7).fingerprint != a.fingerprint
    assert set(np.unique(a.signs)) == {-1, 1}
    assert a.indices.min() >= 0 and a.indices.max() < 32
    assert np.unique(a.indices).size == 32  # 1000 coordinates reach every bucket


@pytest.mark.process
def test_countsketch_fingerprint_is_identical_in_another_process():
    code = (
        "from auf_assets.core.policy_selection import CountSketch;"
        "s = CountSketch(12345, 64, 42);"
        "print(s.fingerprint, float(s.project([float(i % 7) for i in range(12345)]).sum()))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    ).stdout.split()
    here = CountSketch(12345, 64, 42)
    assert out[0] == here.fingerprint
    assert float(out[1]) == float(here.project(np.arange(12345) % 7.0).sum())


def test_countsketch_projection_follows_the_definition_and_is_linear():
    s = CountSketch(50, 8, 1)
    for p in (0, 17, 49):
        e = np.zeros(50)
        e[p] = 1.0
        expected = np.zeros(8, dtype=np.float32)
        expected[s.indices[p]] = s.signs[p]
        np.testing.assert_array_equal(s.project(e), expected)
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(2, 50))
    np.testing.assert_allclose(s.project(x + y), s.project(x) + s.project(y), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(s.project(3 * x), 3 * s.project(x), rtol=1e-5)
    batch = s.project(np.stack([x, y]))
    assert batch.shape == (2, 8) and batch.dtype == np.float32
    np.testing.assert_array_equal(batch[1], s.project(y))


def test_countsketch_roughly_preserves_norms_and_inner_products():
    s = CountSketch(20000, 1024, 3)
    x = np.random.default_rng(1).normal(size=(20, 20000))
    ratio = np.linalg.norm(s.project(x), axis=1) ** 2 / np.linalg.norm(x, axis=1) ** 2
    assert np.all((ratio > 0.75) & (ratio < 1.25))
    assert abs(ratio.mean() - 1) < 0.05
    px = s.project(x).astype(np.float64)
    cos = px[0] @ px[1] / np.linalg.norm(px[0]) / np.linalg.norm(px[1])
    assert abs(cos) < 0.15  # independent vectors stay nearly orthogonal


def test_countsketch_rejects_bad_inputs():
    s = CountSketch(10, 4, 0)
    with pytest.raises(ValueError, match=r"\[10\] or \[k, 10\]"):
        s.project(np.zeros(11))
    with pytest.raises(ValueError, match=r"\[10\] or \[k, 10\]"):
        s.project(np.zeros((2, 3, 10)))
    with pytest.raises(ValueError, match="dim"):
        CountSketch(10, 0, 0)
    with pytest.raises(ValueError, match="seed"):
        CountSketch(10, 4, -1)


def test_countsketch_accepts_torch_tensors():
    torch = pytest.importorskip("torch")
    s = CountSketch(64, 8, 2)
    x = np.random.default_rng(0).normal(size=(3, 64)).astype(np.float32)
    np.testing.assert_allclose(s.project(torch.from_numpy(x)), s.project(x))
    np.testing.assert_allclose(
        s.project(torch.from_numpy(x).to(torch.bfloat16)), s.project(x), rtol=0.05, atol=0.1
    )
