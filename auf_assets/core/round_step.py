"""One round of the active loop: the steps `auf simulate` and the round assets share.

A round (spec section 1) works on a batch of prompts, each with N responses:

1. **Scores**: every response gets what the method needs (:attr:`SelectionMethod.needs
   <auf_assets.core.methods.SelectionMethod>`): the reward model's ``mu`` and ``sigma``
   (family ``reward_model``; fresh heads in round 1), the DPO policy's implicit rewards (family
   ``policy``), or the oracle scores (family ``oracle``: the simulator only).
2. **Select** (:func:`select_with_model`, :func:`select_with_policy`): the warm-up rule first
   (:func:`warming_up`: the first ``warmup_rounds`` rounds of a reward-model method pick at
   random while the model learns), then the registered method's ``select``. A policy method that
   cannot apply yet (round 1: the policy is its reference, every margin is 0) picks at random
   and says so in ``fallback``, which the pipeline stores with the pairs.
3. **Labels**: a judge (the ``judgements`` asset) or the oracle (the simulator) decides each
   pair. A tie carries no preference: it is never trained on.
4. **Update** (:class:`ReplayBuffer`, :func:`train_on_replay`): the decided pairs enter the FIFO
   replay buffer and the reward model trains ``train_passes`` passes on it; with a policy in the
   loop, its DPO step follows.

The simulator (:func:`auf_assets.core.simulation.simulate`) runs all four in memory; the assets
(``selected_pairs`` and ``reward_model`` in :mod:`auf_assets.round`) run steps 2 and 4,
reading the scores and the decided pairs from the store. Both call the functions here, so a
setting tried in ``auf simulate`` means the same in a real round. No Dagster import here.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl

from .methods import get_method

if TYPE_CHECKING:
    from .ensemble import RewardEnsemble, TrainStats
    from .policy_selection import PolicySelection

__all__ = [
    "ReplayBuffer",
    "select_with_model",
    "select_with_policy",
    "train_on_replay",
    "warming_up",
]

#: The rule a warm-up round picks with.
WARMUP_RULE = "random"


def warming_up(round_number: int, warmup_rounds: int) -> bool:
    """Whether round ``round_number`` (1 = the first) is a warm-up round: its pairs are random
    while the reward model learns (it still trains on them)."""
    return round_number <= warmup_rounds


def select_with_model(
    method: str,
    mu: np.ndarray,
    sigma: np.ndarray,
    mask: np.ndarray | None,
    *,
    round_number: int,
    warmup_rounds: int,
    beta: float,
    seed: int | np.random.Generator,
    options: dict[str, Any] | None = None,
) -> tuple[np.ndarray, str]:
    """Step 2 with the reward model: ``([P, 2] column picks, the rule that picked them)``.

    The rule is ``method``, or :data:`WARMUP_RULE` in a warm-up round (``options`` apply to
    ``method`` only). ``seed``: an int, or a Generator advanced in place.
    """
    rule = WARMUP_RULE if warming_up(round_number, warmup_rounds) else method
    chosen = get_method(rule, families=("reward_model",))
    opts = dict(options or {}) if rule == method else {}
    return chosen.select(mu, sigma, beta=beta, seed=seed, mask=mask, **opts), rule


def select_with_policy(
    method: str, rewards: np.ndarray, mask: np.ndarray | None, **inputs: Any
) -> PolicySelection:
    """Step 2 with the DPO policy: at most one pair per prompt from the implicit ``rewards``.

    ``inputs``: ``seed``, ``identical`` (pairs never chosen), ``gradients`` and ``v_inv`` (when
    the method needs gradients), ``lam``, ``fraction``. The result's ``fallback`` is ``"random"``
    when nothing told the pairs apart (round 1), None otherwise.
    """
    return get_method(method, families=("policy",)).select(rewards, mask, **inputs)


class ReplayBuffer:
    """The FIFO replay buffer (spec section 2): the newest ``capacity`` decided pairs, oldest
    first.

    A pair is one row of a frame: any columns that name it (the simulator: pool rows ``chosen``
    and ``rejected``; the pipeline: the store's decided verdicts with their pair and round ids;
    features themselves work too, as array columns).
    Ties and failed verdicts are not decided: they never enter. The pipeline rebuilds it every
    round from every decided pair so far (:meth:`of`); adding them all at once leaves the same
    rows as adding them round by round, as the simulator does, so both hold the same pairs.
    """

    def __init__(self, capacity: int):
        if isinstance(capacity, bool) or not isinstance(capacity, (int, np.integer)):
            raise ValueError(f"capacity must be an integer >= 1, got {capacity!r}")
        if capacity < 1:
            raise ValueError(f"capacity must be an integer >= 1, got {capacity!r}")
        self.capacity = int(capacity)
        self._rows: pl.DataFrame | None = None

    @classmethod
    def of(cls, decided: pl.DataFrame, capacity: int) -> ReplayBuffer:
        """The buffer after adding ``decided`` (every decided pair so far, oldest first)."""
        buffer = cls(capacity)
        buffer.add(decided)
        return buffer

    def add(self, pairs: pl.DataFrame) -> None:
        """Append a round's decided pairs (oldest first); the oldest pairs leave when full."""
        rows = pairs if self._rows is None else pl.concat([self._rows, pairs])
        self._rows = rows.tail(self.capacity)

    @property
    def rows(self) -> pl.DataFrame:
        """The pairs in the buffer, oldest first (an empty frame before the first add)."""
        return self._rows if self._rows is not None else pl.DataFrame()

    def arrays(self, *columns: str) -> tuple[np.ndarray, ...]:
        """The named columns of the pairs in the buffer as numpy arrays, oldest first."""
        return tuple(self.rows[c].to_numpy() for c in columns)

    def __len__(self) -> int:
        return 0 if self._rows is None else self._rows.height


def train_on_replay(
    model: RewardEnsemble,
    chosen: np.ndarray,
    rejected: np.ndarray,
    prompts_done: int,
    passes: int,
) -> TrainStats:
    """Step 4: ``passes`` training passes over the buffer's pairs (features ``[M, d]`` each).

    Each pass samples the buffer afresh (the model's generator carries over, as does the
    optimiser). The stats are the passes' together: losses before the first pass and after the
    last, steps and seconds summed. ``prompts_done`` sets the anchor strength.
    """
    if passes < 1:
        raise ValueError(f"passes must be >= 1, got {passes}")
    done = [model.train_round(chosen, rejected, prompts_done) for _ in range(passes)]
    return replace(
        done[-1],
        loss_before=done[0].loss_before,
        bt_before=done[0].bt_before,
        steps=sum(s.steps for s in done),
        seconds=sum(s.seconds for s in done),
    )
