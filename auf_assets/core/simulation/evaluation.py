"""How a simulated run is measured: a fresh evaluation reward model with a fixed recipe, trained on
the selected pairs and scored by pairwise accuracy on the held-out prompts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..ensemble import EnsembleConfig, RewardEnsemble
from .pool import SimPool

# --------------------------------------------------------------------------------------------------
# configuration


@dataclass
class EvalModelConfig:
    """The fixed recipe of the evaluation reward model (a fresh :class:`RewardEnsemble`).

    It trains ``epochs`` passes over all non-tied selected pairs (shuffled each pass, batches of
    ``batch_size``), AdamW at ``lr``, anchor ``anchor_lambda0`` without decay. Only the mean over
    heads is used (accuracy), so fewer heads than the running model suffice. The defaults are the
    recipe under which *random* selection scored best on the dev pool among nine tried
    (docs/benchmarks.md): a conservative evaluator for comparisons against random.
    """

    n_heads: int = 8
    hidden: tuple[int, ...] = (128, 128)
    lr: float = 3e-4
    epochs: int = 10
    batch_size: int = 32
    anchor_lambda0: float = 1.0
    center_coef: float = 0.01
    weight_decay: float = 0.0

    def ensemble_config(self, seed: int, n_pairs: int) -> EnsembleConfig:
        return EnsembleConfig(
            n_heads=self.n_heads,
            hidden=tuple(self.hidden),
            lr=self.lr,
            weight_decay=self.weight_decay,
            anchor_lambda0=self.anchor_lambda0,
            anchor_half_life=math.inf,
            center_coef=self.center_coef,
            batch_size=self.batch_size,
            max_steps=max(1, -(-max(n_pairs, 1) // self.batch_size)),
            seed=seed,
            stats_pairs=0,
        )


# --------------------------------------------------------------------------------------------------
# evaluation helpers


def heldout_pairs(
    pool: SimPool, prompts: np.ndarray, scores: np.ndarray, threshold: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All response pairs (i < j) of the given prompts with ``|s_i - s_j| >= threshold``.

    ``scores`` are the oracle scores by pool row. Returns pool rows ``(ri, rj)`` and the sign
    (+1/-1) of ``s_i - s_j``. Exactly equal scores never count (even with threshold 0).
    """
    idx = pool.index[np.asarray(prompts, dtype=np.int64)]
    if idx.size == 0:
        empty = np.empty(0, dtype=np.int64)
        return empty, empty, np.empty(0)
    n = idx.shape[1]
    upper = np.triu(np.ones((n, n), dtype=bool), k=1)[None]
    valid = (idx[:, :, None] >= 0) & (idx[:, None, :] >= 0) & upper
    s = np.where(idx >= 0, scores[np.maximum(idx, 0)], 0.0)
    diff = s[:, :, None] - s[:, None, :]
    keep = valid & (np.abs(diff) >= threshold) & (diff != 0)
    p, i, j = np.nonzero(keep)
    return idx[p, i], idx[p, j], np.sign(diff[p, i, j])


def _finite_or_none(value: float) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)


def pairwise_accuracy(mu: np.ndarray, ri: np.ndarray, rj: np.ndarray, sign: np.ndarray) -> float:
    """Fraction of pairs with ``sign(mu_i - mu_j) == sign``; exact ``mu`` ties count 1/2 (NaN
    when there are no pairs)."""
    if len(ri) == 0:
        return math.nan
    d = mu[ri] - mu[rj]
    correct = (d * sign > 0).astype(np.float64) + 0.5 * (d == 0)
    return float(correct.mean())


def _train_eval_model(
    features: np.ndarray,
    chosen: np.ndarray,
    rejected: np.ndarray,
    config: EvalModelConfig,
    seed: int,
    n_done: int,
) -> RewardEnsemble:
    model = RewardEnsemble(features.shape[1], config.ensemble_config(seed, len(chosen)))
    if len(chosen):
        xc = np.ascontiguousarray(features[chosen], dtype=np.float32)
        xr = np.ascontiguousarray(features[rejected], dtype=np.float32)
        for _ in range(config.epochs):
            model.train_round(xc, xr, n_done)
    return model
