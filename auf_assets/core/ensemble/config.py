"""The reward ensemble's settings (:class:`EnsembleConfig`), its anchor schedule and what a round
of training reports (:class:`TrainStats`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any, ClassVar

import numpy as np
import torch

from ..settings import EnsembleSettings

_COMPUTE_DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def anchor_lambda(n_done: int, lambda0: float, half_life: float) -> float:
    """Anchor strength after ``n_done`` prompts: ``lambda0 * 0.5 ** (n_done / half_life)``.

    ``half_life = inf`` keeps ``lambda0`` forever.
    """
    if n_done < 0:
        raise ValueError(f"n_done must be >= 0, got {n_done}")
    if math.isinf(half_life):
        return float(lambda0)
    return float(lambda0) * 0.5 ** (n_done / half_life)


def half_life_from_reference(base: float, n_total: int, scaler: float = 4308.0) -> float:
    """Half-life in prompts of the reference schedule ``lambda0 * base ** (scaler * n_done / N)``.

    Solving ``base ** (scaler * n / N) = 1/2`` gives ``n = N * ln(2) / (scaler * -ln(base))``.
    With base 0.99 and UltraFeedback's ~60-64k prompts this is about 1000 prompts, the default of
    :class:`EnsembleConfig`; base 0.9 gives ~100 and base 0.999 ~10,000. ``base == 1`` means no
    decay (``inf``).
    """
    if not 0.0 < base <= 1.0:
        raise ValueError(f"base must be in (0, 1], got {base}")
    if n_total <= 0 or scaler <= 0:
        raise ValueError("n_total and scaler must be positive")
    if base == 1.0:
        return math.inf
    return n_total * math.log(2.0) / (scaler * -math.log(base))


# --------------------------------------------------------------------------------------------------
# configuration


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


@dataclass
class EnsembleConfig(EnsembleSettings):
    """Hyper-parameters of :class:`RewardEnsemble` (defaults: the reference's, spec section 2):
    :class:`~auf_assets.core.settings.EnsembleSettings` (checked there) plus the run's own seed
    and compute options.

    Attributes:
        n_heads: number of independent MLP heads ``H``.
        hidden: hidden layer widths; ``(128, 128)`` is ``d -> 128 -> 128 -> 1`` with ReLU.
        lr: AdamW learning rate (constant; betas 0.9/0.999, eps 1e-8).
        weight_decay: decoupled AdamW weight decay (towards zero; the anchor term is separate).
        anchor_lambda0: anchor strength ``lambda_0`` at ``n_done = 0``.
        anchor_half_life: prompts after which the anchor strength halves:
            ``lambda_t = lambda_0 * 0.5 ** (n_done / anchor_half_life)``. The reference's
            ``base ** (4308 * n_done / N)`` with base 0.99 on UltraFeedback is about a 1000-prompt
            half-life (:func:`half_life_from_reference`); ``inf`` disables the decay.
        center_coef: weight of the reward-centering term ``mean((r_c + r_r)^2)``.
        replay_capacity: FIFO replay-buffer size in pairs (used by the caller's buffer).
        batch_size: pairs per optimizer step.
        max_steps: steps per round; a round samples up to ``max_steps * batch_size`` pairs of the
            buffer without replacement and makes one pass over them.
        min_steps: the fewest steps a round makes (0: no floor, the reference). A buffer smaller
            than ``min_steps * batch_size`` pairs is passed over again, each time in a fresh
            order, until the round has made ``min_steps`` steps: early rounds of a small batch
            (the demo's 8 prompts give one step of 8 pairs) learn as much per round as later
            ones instead of barely moving. It changes nothing once the buffer holds
            ``min_steps * batch_size`` pairs, and never makes more than ``max_steps`` steps.
        seed: seeds the head initialisation and the (persistent) sampling generator.
        compute_dtype: ``"float32"`` or ``"bfloat16"`` for the first-layer GEMMs (see module doc).
        stats_pairs: pairs of each round's sample on which :class:`TrainStats` measures the loss
            before and after the round (0 skips the measurement; the fields are then NaN).

    Between rounds (:meth:`RewardEnsemble.load` with a ``config``) the settings in
    :attr:`CHANGEABLE_FIELDS` may change and take effect from the next round on; the ones in
    :attr:`FIXED_FIELDS` shape the heads themselves and cannot change within a chain of rounds.
    """

    #: Settings that may differ from the checkpoint's when a model is loaded: every one of them is
    #: read when it is used (each training step, round or prediction), none is baked into the
    #: parameters or the optimizer state.
    CHANGEABLE_FIELDS: ClassVar[tuple[str, ...]] = (
        "lr",
        "weight_decay",
        "anchor_lambda0",
        "anchor_half_life",
        "center_coef",
        "replay_capacity",
        "batch_size",
        "max_steps",
        "min_steps",
        "compute_dtype",
        "stats_pairs",
    )
    #: Settings a checkpoint is bound to: the number and shape of the heads, and the seed (it only
    #: draws the initial heads, which are the anchors, and seeds the sampling generator, whose
    #: state the checkpoint carries; a new seed would change neither, so it is refused rather
    #: than silently ignored).
    FIXED_FIELDS: ClassVar[tuple[str, ...]] = ("n_heads", "hidden", "seed")

    seed: int = 0
    compute_dtype: str = "float32"
    stats_pairs: int = 256

    def __post_init__(self) -> None:
        super().__post_init__()
        if not _is_int(self.stats_pairs) or self.stats_pairs < 0:
            raise ValueError(
                f"EnsembleConfig.stats_pairs must be an integer >= 0, got {self.stats_pairs!r}"
            )
        if not _is_int(self.seed) or not 0 <= self.seed < 2**63:
            raise ValueError(
                f"EnsembleConfig.seed must be an integer in [0, 2**63), got {self.seed!r}"
            )
        if self.compute_dtype not in _COMPUTE_DTYPES:
            raise ValueError(
                f"EnsembleConfig.compute_dtype must be one of {sorted(_COMPUTE_DTYPES)}, "
                f"got {self.compute_dtype!r}"
            )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict; an infinite ``anchor_half_life`` is written as ``None``."""
        out = asdict(self)
        out["hidden"] = list(self.hidden)
        if math.isinf(self.anchor_half_life):
            out["anchor_half_life"] = None
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EnsembleConfig:
        """Inverse of :meth:`to_dict`; unknown keys are an error, missing keys take defaults."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown EnsembleConfig keys: {unknown}")
        kwargs = dict(data)
        if "hidden" in kwargs and kwargs["hidden"] is not None:
            kwargs["hidden"] = tuple(kwargs["hidden"])
        if "anchor_half_life" in kwargs and kwargs["anchor_half_life"] in (None, "inf", "Infinity"):
            kwargs["anchor_half_life"] = math.inf
        return cls(**kwargs)


@dataclass
class TrainStats:
    """What one :meth:`RewardEnsemble.train_round` did.

    ``loss_*`` is the total loss (BT + center + anchor at this round's lambda, averaged over heads)
    and ``bt_*`` the Bradley-Terry loss of the ensemble mean, both on the first ``stats_pairs``
    pairs of the round's sample, before and after the round's updates.
    """

    steps: int
    pairs_used: int
    loss_before: float
    loss_after: float
    bt_before: float
    bt_after: float
    seconds: float
    anchor_lambda: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
