"""The split protocol: tune a setting on one half of a pool (prompts, models or both) and confirm it
on the other.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl

from .pool import PoolError, SimPool, _build_pool
from .streams import _STREAM_PROTOCOL

# --------------------------------------------------------------------------------------------------
# the split protocol: tune on one half of a pool, confirm on the other

#: What a protocol split divides: the prompts, the models (the responses by the model that wrote
#: them) or both at once.
SPLIT_KINDS = ("prompts", "models", "both")
#: The two halves of a split: settings are chosen on ``tune`` and confirmed on ``confirm``.
SPLIT_HALVES = ("tune", "confirm")


@dataclass(frozen=True)
class PoolSplit:
    """One split of a pool into a *tuning* half and a *confirmation* half.

    ``kind`` ``prompts``: the halves are disjoint prompt sets (every model in both);
    ``models``: the halves are disjoint model sets (every prompt in both, each keeping only the
    responses of its half's models); ``both``: tune = half the prompts x half the models, confirm
    = the other prompts x the other models. Every simulated run inside a half still holds out its
    own evaluation prompts (``heldout_fraction``), from that half's prompts only.

    ``seed`` and ``index`` determine it: split ``k`` of seed ``s`` is the same on every machine,
    and different ``k`` give different splits. Built by :func:`protocol_split`; the sub-pools by
    :func:`pool_half`.
    """

    kind: str
    seed: int
    index: int
    tune_prompts: tuple[str, ...]
    confirm_prompts: tuple[str, ...]
    tune_models: tuple[str, ...]
    confirm_models: tuple[str, ...]

    def prompts(self, half: str) -> tuple[str, ...]:
        _check_half(half)
        return self.tune_prompts if half == "tune" else self.confirm_prompts

    def models(self, half: str) -> tuple[str, ...]:
        _check_half(half)
        return self.tune_models if half == "tune" else self.confirm_models

    @property
    def label(self) -> str:
        return f"{self.kind} split {self.index} (seed {self.seed})"

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "seed": self.seed,
            "index": self.index,
            "tune_prompts": list(self.tune_prompts),
            "confirm_prompts": list(self.confirm_prompts),
            "tune_models": list(self.tune_models),
            "confirm_models": list(self.confirm_models),
        }


def _check_half(half: str) -> None:
    if half not in SPLIT_HALVES:
        raise ValueError(f"half must be one of {', '.join(SPLIT_HALVES)}; got {half!r}")


def _check_kind(kind: str) -> None:
    if kind not in SPLIT_KINDS:
        raise ValueError(f"split must be one of {', '.join(SPLIT_KINDS)}; got {kind!r}")


def _halve(items: list[str], rng: np.random.Generator) -> tuple[list[str], list[str]]:
    order = rng.permutation(len(items))
    first = (len(items) + 1) // 2
    return sorted(items[i] for i in order[:first]), sorted(items[i] for i in order[first:])


def _halve_models_stratified(
    models: list[str], strength: dict[str, float], rng: np.random.Generator
) -> tuple[list[str], list[str]]:
    """Sort the models by strength, cut the ranking into consecutive pairs and send one of each
    pair to each half (a coin per pair; an odd last model goes to a random half): both halves get
    a similar spread of strong and weak models."""
    ranked = sorted(models, key=lambda m: (-strength[m], m))
    a: list[str] = []
    b: list[str] = []
    coins = rng.random(len(ranked) // 2 + 1)
    for k in range(0, len(ranked) - 1, 2):
        first, second = ranked[k], ranked[k + 1]
        if coins[k // 2] < 0.5:
            first, second = second, first
        a.append(first)
        b.append(second)
    if len(ranked) % 2:  # a coin too: neither half is systematically the larger one
        (a if coins[-1] < 0.5 else b).append(ranked[-1])
    return sorted(a), sorted(b)


def protocol_split(
    pool: SimPool, kind: str, *, seed: int = 0, index: int = 0, stratify_models: bool = True
) -> PoolSplit:
    """Split ``pool`` into a tuning and a confirmation half (see :class:`PoolSplit`).

    Prompts are halved uniformly at random (the tuning half gets the odd one). Models are halved
    *stratified by strength* by default: ranked by their mean oracle score over the pool and cut
    into consecutive pairs, one of each pair per half, so that a handful of strong models (the dev
    pool has three far above the rest) is not all in one half. The oracle is used only to balance
    the two halves, never by a method. ``stratify_models=False`` halves them uniformly.

    Random streams: ``(seed, index)`` only; the prompt and the model halves are independent draws.
    Raises ``ValueError`` when a half would have fewer than 2 models (kinds ``models``/``both``)
    or no prompt (kinds ``prompts``/``both``).
    """
    _check_kind(kind)
    if index < 0:
        raise ValueError(f"split index must be >= 0, got {index}")
    prompts = sorted(pool.prompt_ids)
    models = sorted(set(pool.frame["model"].to_list()))
    if kind in ("prompts", "both"):
        if len(prompts) < 2:
            raise ValueError(f"{pool.name}: a prompt split needs at least 2 prompts")
        rng = np.random.default_rng([int(seed), _STREAM_PROTOCOL, int(index), 0])
        tune_p, conf_p = _halve(prompts, rng)
    else:
        tune_p, conf_p = prompts, prompts
    if kind in ("models", "both"):
        if len(models) < 4:
            raise ValueError(
                f"{pool.name}: a model split needs at least 4 models (2 per half), found "
                f"{len(models)}"
            )
        rng = np.random.default_rng([int(seed), _STREAM_PROTOCOL, int(index), 1])
        if stratify_models:
            means = pool.frame.group_by("model").agg(pl.col("oracle_score").mean())
            strength = dict(
                zip(means["model"].to_list(), means["oracle_score"].to_list(), strict=True)
            )
            tune_m, conf_m = _halve_models_stratified(models, strength, rng)
        else:
            tune_m, conf_m = _halve(models, rng)
    else:
        tune_m, conf_m = models, models
    return PoolSplit(
        kind, int(seed), int(index), tuple(tune_p), tuple(conf_p), tuple(tune_m), tuple(conf_m)
    )


def protocol_splits(
    pool: SimPool, kind: str, n_splits: int, *, seed: int = 0, stratify_models: bool = True
) -> list[PoolSplit]:
    """Splits ``0 .. n_splits - 1`` of ``seed`` (:func:`protocol_split`)."""
    if n_splits < 1:
        raise ValueError(f"n_splits must be >= 1, got {n_splits}")
    return [
        protocol_split(pool, kind, seed=seed, index=k, stratify_models=stratify_models)
        for k in range(n_splits)
    ]


def pool_half(pool: SimPool, split: PoolSplit, half: str) -> SimPool:
    """The sub-pool of one half of ``split``: its prompts, each with only its models' responses.

    Prompts left with fewer than 2 responses are dropped (listed in ``dropped_prompts``). The rows
    keep their ``feature_row``, so the full pool's feature matrix serves every half.
    """
    prompts = split.prompts(half)
    models = split.models(half)
    df = pool.frame.filter(
        pl.col("prompt_id").is_in(list(prompts)) & pl.col("model").is_in(list(models))
    )
    counts = df.group_by("prompt_id").len()
    small = sorted(counts.filter(pl.col("len") < 2)["prompt_id"].to_list())
    if small:
        df = df.filter(~pl.col("prompt_id").is_in(small))
    if df.height == 0:
        raise PoolError(f"{pool.name}: the {half} half of {split.label} has no prompt left")
    name = f"{pool.name}[{split.kind} split {split.index} seed {split.seed} {half}]"
    return _build_pool(
        df.sort("prompt_id", "completion_id"),
        name,
        [*pool.dropped_prompts, *small],
        fresh_rows=False,
    )
