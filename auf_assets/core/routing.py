"""Which of a round's judged pairs go to people (the `judge+people` label source), no Dagster.

The judge labels every selected pair; the pairs it is least sure of go to people, chosen by a
confidence threshold, a budget of people labels per round (the k least confident), or both (the
least confident under the threshold, at most k). A calibration share of the pairs the judge is
sure of goes to people too, picked at random, so the judge's agreement with people is measured on
the pairs it decides alone as well, not only on the hard ones.

A verdict's confidence is P(the chosen response is better) (`core.agreement`), mostly in
[0.5, 1]: the rubric judge chooses by expected scores and its confidence compares mean-digit
distributions, so a near-equal pair can come out just under 0.5 (it then counts as very unsure,
as it should). A tie or a failed judgement has none (NaN) and counts as the least sure of all.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

ROUTE_UNSURE = "unsure"  # the judge is not sure enough: people decide
ROUTE_CALIBRATION = "calibration"  # the judge is sure; people label it to measure agreement
ROUTE_JUDGE = ""  # the judge's verdict stands, nobody else labels the pair


@dataclass(frozen=True)
class RoutingRule:
    """How unsure pairs are picked; see the module docstring. Both 0 routes no unsure pair."""

    threshold: float = 0.0  # confidence below this goes to people; 0 = no threshold
    budget: int = 0  # at most this many unsure pairs a round (the least confident); 0 = no cap
    calibration_share: float = 0.0  # of the pairs the judge keeps, at least 1 when > 0

    def __post_init__(self) -> None:
        if not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"routing threshold must be in [0, 1], got {self.threshold}")
        if self.budget < 0:
            raise ValueError(f"people budget must be >= 0, got {self.budget}")
        if not 0.0 <= self.calibration_share <= 1.0:
            raise ValueError(f"calibration share must be in [0, 1], got {self.calibration_share}")

    @property
    def routes_unsure(self) -> bool:
        return self.threshold > 0.0 or self.budget > 0


def least_sure_order(confidence: np.ndarray, seed: int) -> np.ndarray:
    """Indices from the least to the most sure verdict: no confidence first, then ascending;
    equal values in a seeded random order (so a tie in confidence favours no position)."""
    conf = np.asarray(confidence, dtype=float)
    tiebreak = np.random.default_rng(seed).random(len(conf))
    key = np.where(np.isnan(conf), -1.0, conf)
    return np.lexsort((tiebreak, key))


def route_to_people(confidence: np.ndarray, rule: RoutingRule, *, seed: int) -> np.ndarray:
    """Per pair: `ROUTE_UNSURE`, `ROUTE_CALIBRATION` or `ROUTE_JUDGE` (an object array)."""
    conf = np.asarray(confidence, dtype=float)
    routes = np.full(len(conf), ROUTE_JUDGE, dtype=object)
    if len(conf) == 0:
        return routes
    if rule.routes_unsure:
        order = least_sure_order(conf, seed)
        if rule.threshold > 0.0:
            below = np.isnan(conf[order]) | (conf[order] < rule.threshold)
            order = order[below]
        if rule.budget > 0:
            order = order[: rule.budget]
        routes[order] = ROUTE_UNSURE
    kept = np.flatnonzero(routes == ROUTE_JUDGE)
    if rule.calibration_share > 0.0 and len(kept):
        n = min(len(kept), max(1, math.ceil(rule.calibration_share * len(kept))))
        picked = np.random.default_rng([seed, 1]).choice(kept, size=n, replace=False)
        routes[picked] = ROUTE_CALIBRATION
    return routes


def route_at_random(n_pairs: int, n_people: int, *, seed: int) -> np.ndarray:
    """The baseline routing: `n_people` pairs picked uniformly at random (a bool mask)."""
    if not 0 <= n_people <= n_pairs:
        raise ValueError(f"cannot send {n_people} of {n_pairs} pairs to people")
    mask = np.zeros(n_pairs, dtype=bool)
    mask[np.random.default_rng(seed).choice(n_pairs, size=n_people, replace=False)] = True
    return mask
