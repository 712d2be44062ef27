"""Simulated-oracle runs: replay the active loop on a pool of pre-scored responses.

A *pool* has one row per response: ``prompt_id``, ``prompt``, ``completion_id``, ``model``,
``response`` and ``oracle_score`` (optional ``source``); the oracle score plays the judge. A run
(:func:`simulate`) is the pipeline's round logic without the generation and judging cost:

1. **Split** (by seed): a fraction of the prompts is held out for evaluation and never selected
   from; the other (train) prompts are visited in a seeded random order, ``batch_size`` per round.
2. **Score**: the running :class:`~auf_assets.core.ensemble.RewardEnsemble` predicts ``mu, sigma``
   of every response of the round's prompts (fresh heads in round 1, as in the pipeline).
3. **Select**: the method of the registry (:mod:`auf_assets.core.methods`) picks one pair per
   prompt, vectorised over the round (ragged prompts are masked), after the warm-up rule
   (:mod:`auf_assets.core.round_step`, the round logic the pipeline's assets share). Policy-aware
   methods select with a DPO policy; static oracle baselines are selectable too.
4. **Judge**: only the two selected responses' oracle scores are revealed (an :class:`Oracle`
   counts every lookup). ``chosen`` = the higher score. **Ties**: when the two scores are exactly
   equal the first-selected response is recorded as ``chosen``, the row is flagged ``tie``, its
   labels are charged, and the pair is never used for training (it carries no preference).
5. **Update**: non-tied pairs enter the FIFO :class:`~auf_assets.core.round_step.ReplayBuffer`
   and the running model trains on it (:func:`~auf_assets.core.round_step.train_on_replay`,
   optimiser state carried across rounds), as the pipeline's ``reward_model`` asset does.

**Labels**: an acquisition method is charged 2 labels per prompt. A static baseline reads the
oracle scores of the round's responses (it is an oracle baseline by definition) and is charged its
documented ``labels_used``: ``random_pair`` 2, ``ultrafeedback_oracle`` min(4, n), ``maxmin`` n,
``delta_model`` 0.

**Evaluation** (every ``eval_every`` rounds and after the last round): a *fresh* evaluation
ensemble (:class:`EvalModelConfig`: same class, fixed recipe) is trained on **all** non-tied pairs
selected so far, and scored on the held-out prompts: over every pair of their responses whose
oracle scores differ by at least ``gap_threshold``, the fraction ordered correctly by
``sign(mu_i - mu_j)`` (an exact ``mu`` tie counts 1/2). A fresh model with a fixed recipe makes the
number a property of the *selected data* alone: it does not depend on how long the online model
happened to train, and baselines (which need no online model) are measured the same way. The
running model's held-out accuracy is reported beside it (``running_accuracy``). Each point also has
the mean oracle gap ``chosen_score - rejected_score`` and the mean chosen score of all selected
pairs so far, the labels spent and the loop's wall time.

Seeds: the K-of-N response sample, the held-out split and the prompt order depend only on the
run's seed (not the method), so methods run with the same seed see the same prompts in the same
order: comparisons are paired.

**Split protocol** (checking settings without overfitting one pool): :func:`protocol_split`
halves a pool by prompts, by the models that wrote the responses, or both (tune on half the
prompts x half the models, confirm on the other halves), seeded by ``(seed, index)``;
:func:`pool_half` is one half as a pool of its own (rows keep their ``feature_row``, so the full
pool's features serve it), and a run on it holds out its own evaluation prompts as above.
``auf bench --split`` and ``benchmarks/bench_defaults.py`` build on it. No Dagster import here.
"""

from __future__ import annotations

from .config import SimulationConfig
from .evaluation import EvalModelConfig, heldout_pairs, pairwise_accuracy
from .loop import PAIR_COLUMNS, SimulationResult, simulate
from .oracle import Oracle
from .pool import (
    POOL_COLUMNS,
    PoolError,
    SimPool,
    load_pool,
    sample_responses,
    split_prompts,
    validate_pool,
)
from .split_protocol import (
    SPLIT_HALVES,
    SPLIT_KINDS,
    PoolSplit,
    pool_half,
    protocol_split,
    protocol_splits,
)

__all__ = [
    "POOL_COLUMNS",
    "PAIR_COLUMNS",
    "SPLIT_HALVES",
    "SPLIT_KINDS",
    "EvalModelConfig",
    "Oracle",
    "PoolError",
    "PoolSplit",
    "SimPool",
    "SimulationConfig",
    "SimulationResult",
    "heldout_pairs",
    "load_pool",
    "pairwise_accuracy",
    "pool_half",
    "protocol_split",
    "protocol_splits",
    "sample_responses",
    "simulate",
    "split_prompts",
    "validate_pool",
]
