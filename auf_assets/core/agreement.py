"""How sure a judge is of a verdict, and how well two labellers agree (numpy only, no Dagster).

Confidence of the rubric judge: each aspect's score is the expected digit under the judge's
distribution over the digits 1..N, and a response's overall score is the mean of its aspect scores
(`core.judging`). Reading the aspect digits as independent draws from those distributions, the
overall score is exactly the expectation of the mean digit, so the consistent question is "how
likely is A's mean digit above B's": the distribution of each response's mean comes from
convolving its aspects' distributions, and the two means are compared. A tie (equal means) counts
half, so ``win_probability(a, b) + win_probability(b, a) == 1``.

Confidence of the reward-model judge: the Bradley-Terry reading of two rewards,
``sigmoid((r_a - r_b) / temperature)``.

Agreement of two label sequences over "a" / "b" / "tie": accuracy (share of equal labels),
Cohen's kappa, and calibration bins (the judge's confidence against how often people agreed).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "LABELS",
    "Agreement",
    "CalibrationBin",
    "agreement",
    "calibration_bins",
    "cohens_kappa",
    "confidence_summary",
    "mean_digit_distribution",
    "reward_confidence",
    "win_probability",
]

LABELS = ("a", "b", "tie")


def _aspect_distributions(probs, name: str) -> np.ndarray:
    """``probs`` as a ``[aspects, digits]`` array of distributions, each row normalised.

    A row may be unnormalised (the judge's digits rarely carry all the probability; the score
    normalises them the same way). NaN, infinite or negative entries, and a row with no mass,
    are errors: such a row has no distribution to compare.
    """
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim == 1:
        p = p[None, :]
    if p.ndim != 2 or p.shape[0] == 0 or p.shape[1] == 0:
        raise ValueError(
            f"{name}: expected digit probabilities of shape [digits] or [aspects, digits], "
            f"got {p.shape}"
        )
    if not np.isfinite(p).all():
        raise ValueError(f"{name}: digit probabilities must be finite (a NaN or inf was given)")
    if (p < 0).any():
        raise ValueError(f"{name}: digit probabilities cannot be negative")
    totals = p.sum(axis=1, keepdims=True)
    if (totals <= 0).any():
        raise ValueError(f"{name}: an aspect's digit probabilities sum to 0 (no distribution)")
    return p / totals


def mean_digit_distribution(probs) -> tuple[np.ndarray, int]:
    """The distribution of the sum of independent aspect digits, and the number of aspects.

    ``probs`` is ``[digits]`` (one aspect) or ``[aspects, digits]``, the digits valued 1..N. The
    result ``s`` has ``s[j] = P(sum of digits == aspects + j)``; the mean digit is that sum
    divided by the number of aspects.
    """
    p = _aspect_distributions(probs, "probs")
    total = np.ones(1)
    for row in p:
        total = np.convolve(total, row)
    return total, p.shape[0]


def win_probability(p_a, p_b) -> float:
    """P(A's mean digit > B's) + P(equal) / 2, the digits drawn independently per aspect.

    ``p_a`` and ``p_b`` are digit distributions (scores 1..N) of shape ``[N]`` or
    ``[aspects, N]``; each row is normalised first (see `_aspect_distributions` for what is
    refused). The two may have different numbers of aspects (the means are compared exactly, as
    fractions), but the same N. All mass on one digit on both sides gives 1, 0 or 0.5.
    """
    sum_a, k_a = mean_digit_distribution(p_a)
    sum_b, k_b = mean_digit_distribution(p_b)
    digits_a = np.asarray(p_a).shape[-1]
    digits_b = np.asarray(p_b).shape[-1]
    if digits_a != digits_b:
        raise ValueError(f"A rates on {digits_a} digits and B on {digits_b}: not comparable")
    # Sum S_A over k_a aspects against S_B over k_b: S_A / k_a > S_B / k_b <=> S_A k_b > S_B k_a,
    # compared in integers so equal means are exactly a tie.
    lhs = (k_a + np.arange(sum_a.size))[:, None] * k_b
    rhs = (k_b + np.arange(sum_b.size))[None, :] * k_a
    joint = sum_a[:, None] * sum_b[None, :]
    won = joint[lhs > rhs].sum() + 0.5 * joint[lhs == rhs].sum()
    return float(min(max(won, 0.0), 1.0))


def reward_confidence(reward_a: float, reward_b: float, *, temperature: float) -> float:
    """P(A better than B) from two scalar rewards: ``sigmoid((r_a - r_b) / temperature)``.

    A NaN or infinite reward gives NaN (no verdict to be sure of); a temperature that is not a
    positive finite number is an error.
    """
    t = float(temperature)
    if not (math.isfinite(t) and t > 0):
        raise ValueError(f"temperature must be a positive number, got {temperature}")
    a, b = float(reward_a), float(reward_b)
    if not (math.isfinite(a) and math.isfinite(b)):
        return math.nan
    z = (a - b) / t
    # The two branches keep exp() from overflowing for large gaps.
    if z >= 0:
        return 1.0 / (1.0 + math.exp(-z))
    e = math.exp(z)
    return e / (1.0 + e)


@dataclass(frozen=True)
class Agreement:
    """Two labellers over the same pairs: how many, the share of equal labels, Cohen's kappa.

    With no pairs both numbers are NaN; kappa is NaN as well when chance agreement is certain
    (both labellers gave one and the same label to every pair: kappa is 0/0, undefined).
    """

    n: int
    accuracy: float
    kappa: float


def _checked_labels(first: Sequence[str], second: Sequence[str]) -> tuple[list, list]:
    x, y = list(first), list(second)
    if len(x) != len(y):
        raise ValueError(f"label sequences differ in length: {len(x)} and {len(y)}")
    unknown = sorted({str(v) for v in (*x, *y)} - set(LABELS))
    if unknown:
        raise ValueError(f"unknown labels {unknown}: each label is one of {', '.join(LABELS)}")
    return x, y


def cohens_kappa(first: Sequence[str], second: Sequence[str]) -> float:
    """Cohen's kappa of two label sequences over "a" / "b" / "tie":
    ``(p_o - p_e) / (1 - p_e)`` with ``p_o`` the observed and ``p_e`` the chance agreement
    (from each labeller's label shares). NaN with no pairs or when ``p_e == 1``."""
    x, y = _checked_labels(first, second)
    if not x:
        return math.nan
    table = np.zeros((len(LABELS), len(LABELS)))
    for u, v in zip(x, y, strict=True):
        table[LABELS.index(u), LABELS.index(v)] += 1
    table /= table.sum()
    observed = float(np.trace(table))
    chance = float(table.sum(axis=1) @ table.sum(axis=0))
    if chance >= 1.0:
        return math.nan
    return (observed - chance) / (1.0 - chance)


def agreement(first: Sequence[str], second: Sequence[str]) -> Agreement:
    """Accuracy and Cohen's kappa of two label sequences (pair by pair, same order)."""
    x, y = _checked_labels(first, second)
    if not x:
        return Agreement(0, math.nan, math.nan)
    accuracy = sum(u == v for u, v in zip(x, y, strict=True)) / len(x)
    return Agreement(len(x), accuracy, cohens_kappa(x, y))


@dataclass(frozen=True)
class CalibrationBin:
    """Verdicts whose confidence fell in ``[lower, upper)`` (the last bin includes 1)."""

    lower: float
    upper: float
    count: int
    mean_confidence: float  # NaN when the bin is empty
    observed_agreement: float  # share of these verdicts people agreed with; NaN when empty


def calibration_bins(
    confidence: Sequence[float], agreed: Sequence[bool], n_bins: int = 10
) -> list[CalibrationBin]:
    """Equal-width confidence bins over [0, 1] against the observed agreement in each.

    A calibrated judge's ``observed_agreement`` is close to its ``mean_confidence`` in every
    bin. Confidences outside [0, 1] or NaN are errors (a verdict without a confidence is left
    out by the caller).
    """
    c = np.asarray(confidence, dtype=np.float64).reshape(-1)
    hit = np.asarray(agreed, dtype=bool).reshape(-1)
    if c.size != hit.size:
        raise ValueError(f"{c.size} confidences but {hit.size} agreement flags")
    if n_bins < 1:
        raise ValueError(f"n_bins must be at least 1, got {n_bins}")
    if np.isnan(c).any() or (c < 0).any() or (c > 1).any():
        raise ValueError("confidences must lie in [0, 1] (a NaN or out-of-range value was given)")
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    which = np.minimum((c * n_bins).astype(int), n_bins - 1)
    bins = []
    for i in range(n_bins):
        inside = which == i
        count = int(inside.sum())
        bins.append(
            CalibrationBin(
                float(edges[i]),
                float(edges[i + 1]),
                count,
                float(c[inside].mean()) if count else math.nan,
                float(hit[inside].mean()) if count else math.nan,
            )
        )
    return bins


def confidence_summary(confidence: Sequence[float]) -> dict[str, float]:
    """Count, mean and quantiles (10%, 25%, 50%, 75%, 90%) of verdict confidences, rounded to
    3 places; NaN values (verdicts without one) are left out. Empty: ``{"n": 0}``."""
    c = np.asarray(confidence, dtype=np.float64).reshape(-1)
    c = c[~np.isnan(c)]
    if c.size == 0:
        return {"n": 0}
    summary: dict[str, float] = {"n": int(c.size), "mean": round(float(c.mean()), 3)}
    for q in (10, 25, 50, 75, 90):
        summary[f"p{q}"] = round(float(np.percentile(c, q)), 3)
    return summary


def fit_temperature(
    reward_gaps: Sequence[float], a_won: Sequence[bool], *, grid: int = 241
) -> float | None:
    """The `reward_confidence` temperature that best explains people's choices: the maximum
    likelihood of ``a_won`` under ``sigmoid(gap / T)``, over T from 0.01 to 100 (log grid).

    ``reward_gaps`` are ``r_a - r_b``, ``a_won`` whether people chose a (ties left out by the
    caller). None with no pair, or when every gap is 0 (nothing to fit). A judge whose gaps point
    the wrong way more often than not is fitted with the largest T: its confidence then stays
    near 0.5, which is the honest statement about such a judge.
    """
    gaps = np.asarray(reward_gaps, dtype=np.float64).reshape(-1)
    won = np.asarray(a_won, dtype=bool).reshape(-1)
    if gaps.size != won.size:
        raise ValueError(f"{gaps.size} gaps but {won.size} outcomes")
    keep = np.isfinite(gaps)
    gaps, won = gaps[keep], won[keep]
    if gaps.size == 0 or not np.any(gaps):
        return None
    sign = np.where(won, 1.0, -1.0)
    temperatures = np.logspace(-2, 2, grid)
    # log sigmoid(s * g / T) = -log1p(exp(-s * g / T)), summed over the pairs, per T
    z = -(sign * gaps)[None, :] / temperatures[:, None]
    loglik = -np.logaddexp(0.0, z).sum(axis=1)
    return float(temperatures[int(np.argmax(loglik))])
