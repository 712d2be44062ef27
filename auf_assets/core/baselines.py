"""Static oracle baselines: pair selection that reads the oracle scores of the responses.

These are the comparison points of the paper (spec section 4, "Static baselines"). Unlike the
acquisition rules they see oracle scores, so they are charged for the labels they read:

==========================  =====================================================  ============
name                        pair                                                   labels used
==========================  =====================================================  ============
``random_pair``             two distinct random responses                          2
``ultrafeedback_oracle``    best of 4 random responses vs a random other of the 4  min(4, n)
``maxmin``                  best vs worst of all valid responses                   n
``delta_model``             a named strong model's response vs a weak model's      0
==========================  =====================================================  ============

Every pair is returned as (chosen, rejected), chosen = the higher oracle score.

Tie rules (all drawn from the seeded rng, so results are reproducible):

* several responses sharing the best (or worst) score: one of them uniformly at random;
* the two responses of a pair with exactly equal scores: a fair coin decides which is chosen.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from .acquisition import (
    _as_rng,
    _check_finite,
    _check_mask,
    _check_matrix,
    _check_rows_have_pairs,
    _random_order,
    _random_subset,
    _uniform_pick,
)

__all__ = ["BASELINE_RULES", "select_oracle_pairs"]


def _pick_extreme(
    rng: np.random.Generator, scores: np.ndarray, allowed: np.ndarray, best: bool
) -> np.ndarray:
    """Per row, a best (or worst) allowed column; exact ties resolved uniformly at random."""
    if best:
        target = np.where(allowed, scores, -np.inf).max(axis=1, keepdims=True)
    else:
        target = np.where(allowed, scores, np.inf).min(axis=1, keepdims=True)
    return _uniform_pick(rng, allowed & (scores == target))


def _order_by_score(
    rng: np.random.Generator, scores: np.ndarray, x: np.ndarray, y: np.ndarray
) -> np.ndarray:
    """Stack (chosen, rejected): the higher score first, a fair coin on exact ties."""
    rows = np.arange(len(x))
    sx, sy = scores[rows, x], scores[rows, y]
    coin = rng.random(len(x)) < 0.5
    x_first = (sx > sy) | ((sx == sy) & coin)
    return np.stack([np.where(x_first, x, y), np.where(x_first, y, x)], axis=1)


def _checked_scores(scores: np.ndarray, valid: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Validate the rows a rule reads; return scores with padded entries zeroed."""
    _check_rows_have_pairs(valid, rows)
    read = np.zeros_like(valid)
    read[rows] = valid[rows]
    _check_finite("scores", scores, read)
    return np.where(read, scores, 0.0)


def _random_pair(rng, scores, valid):
    order = _random_order(rng, valid)
    pairs = _order_by_score(rng, scores, order[:, 0], order[:, 1])
    return pairs, np.full(len(pairs), 2, dtype=np.int64)


def _ultrafeedback_oracle(rng, scores, valid):
    subset = _random_subset(rng, valid, 4)
    best = _pick_extreme(rng, scores, subset, best=True)
    rest = subset.copy()
    rest[np.arange(len(best)), best] = False
    other = _uniform_pick(rng, rest)
    pairs = _order_by_score(rng, scores, best, other)
    return pairs, subset.sum(axis=1).astype(np.int64)


def _maxmin(rng, scores, valid):
    best = _pick_extreme(rng, scores, valid, best=True)
    rest = valid.copy()
    rest[np.arange(len(best)), best] = False
    worst = _pick_extreme(rng, scores, rest, best=False)
    pairs = _order_by_score(rng, scores, best, worst)
    return pairs, valid.sum(axis=1).astype(np.int64)


def _check_model_index(name: str, index: Any, valid: np.ndarray) -> np.ndarray:
    p, n = valid.shape
    if index is None:
        raise ValueError(f"delta_model needs {name} (int [P], -1 where the model is missing)")
    arr = np.asarray(index)
    if arr.shape != (p,) or not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(
            f"{name} must be an integer array of shape ({p},), got {arr.dtype} {arr.shape}"
        )
    arr = arr.astype(np.int64)
    bad = (arr < -1) | (arr >= n)
    if bad.any():
        r = int(np.flatnonzero(bad)[0])
        raise ValueError(f"{name}[{r}] = {arr[r]} is out of range (-1 for missing, or 0..{n - 1})")
    present = arr >= 0
    bad = present & ~valid[np.arange(p), np.where(present, arr, 0)]
    if bad.any():
        r = int(np.flatnonzero(bad)[0])
        raise ValueError(f"{name}[{r}] = {arr[r]} points at a masked (missing) response")
    return arr


def _delta_model(rng, scores, valid, strong_index, weak_index):
    strong = _check_model_index("strong_index", strong_index, valid)
    weak = _check_model_index("weak_index", weak_index, valid)
    same = (strong >= 0) & (strong == weak)
    if same.any():
        r = int(np.flatnonzero(same)[0])
        raise ValueError(f"row {r}: strong_index and weak_index are both {strong[r]}")
    # The strong model's response is chosen by assumption: no oracle label is read.
    pairs = np.stack([strong, weak], axis=1)
    labels = np.zeros(len(pairs), dtype=np.int64)
    # A prompt lacking either model's response falls back to a random pair (2 labels).
    fallback = np.flatnonzero((strong < 0) | (weak < 0))
    if fallback.size:
        clean = _checked_scores(scores, valid, fallback)
        pairs[fallback], labels[fallback] = _random_pair(rng, clean[fallback], valid[fallback])
    return pairs, labels


def _reads_all(rule):
    """Wrap a rule that reads the scores of every prompt."""

    def run(rng, scores, valid, strong_index, weak_index):
        clean = _checked_scores(scores, valid, np.arange(len(scores)))
        return rule(rng, clean, valid)

    return run


def _make_select(rule: Callable[..., tuple[np.ndarray, np.ndarray]]):
    def select(
        scores: np.ndarray,
        *,
        seed: int | np.random.Generator = 0,
        mask: np.ndarray | None = None,
        strong_index: np.ndarray | None = None,
        weak_index: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        score_arr = _check_matrix("scores", scores)
        valid = _check_mask(mask, score_arr.shape)
        rng = _as_rng(seed)
        if score_arr.shape[0] == 0:
            return np.empty((0, 2), dtype=np.int64), np.empty(0, dtype=np.int64)
        pairs, labels = rule(rng, score_arr, valid, strong_index, weak_index)
        return pairs.astype(np.int64, copy=False), labels.astype(np.int64, copy=False)

    select.__doc__ = "Oracle baseline selection (see select_oracle_pairs)."
    return select


#: The built-in baselines' checked select functions, by name. The registry
#: (:mod:`auf_assets.core.methods`) lists them with their description and labels per prompt.
BASELINE_RULES: dict[str, Callable[..., tuple[np.ndarray, np.ndarray]]] = {
    "random_pair": _make_select(_reads_all(_random_pair)),
    "ultrafeedback_oracle": _make_select(_reads_all(_ultrafeedback_oracle)),
    "maxmin": _make_select(_reads_all(_maxmin)),
    "delta_model": _make_select(_delta_model),
}


def select_oracle_pairs(
    method: str,
    scores: np.ndarray,
    *,
    seed: int | np.random.Generator = 0,
    mask: np.ndarray | None = None,
    strong_index: np.ndarray | None = None,
    weak_index: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Build one (chosen, rejected) pair per prompt with a static oracle baseline.

    Args:
        method: a key of :data:`BASELINE_RULES`.
        scores: ``[P, N]`` oracle scores (must be finite where the baseline reads them).
        seed: int or ``numpy.random.Generator`` (a Generator is advanced in place).
        mask: ``[P, N]`` bool, True where a response exists; default all True.
        strong_index, weak_index: ``delta_model`` only (ignored otherwise): int ``[P]`` column of
            the strong / weak model's response per prompt, -1 where that model has none; such a
            prompt falls back to ``random_pair`` and is charged 2 labels.

    Returns:
        ``(pairs, labels_used)``: int64 ``[P, 2]`` (chosen, rejected) column indices, distinct and
        valid, chosen = higher score (exact ties: seeded fair coin; ``delta_model``: the strong
        model, by definition); int64 ``[P]`` oracle labels read per prompt (``random_pair`` 2,
        ``ultrafeedback_oracle`` min(4, n_valid), ``maxmin`` n_valid, ``delta_model`` 0).

    Raises:
        ValueError: unknown method; a row needing a pair with fewer than 2 valid responses; a
            non-finite score that would be read; bad shapes; bad or missing model indices.
    """
    try:
        select = BASELINE_RULES[method]
    except (KeyError, TypeError):
        known = ", ".join(BASELINE_RULES)
        raise ValueError(f"unknown baseline method {method!r}; known: {known}") from None
    return select(scores, seed=seed, mask=mask, strong_index=strong_index, weak_index=weak_index)
