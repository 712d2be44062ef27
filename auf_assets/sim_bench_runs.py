"""The runs of `auf bench` (:mod:`auf_assets.sim_bench`): one simulated run per (method, seed) in a
worker process, on the whole pool or on one half of a protocol split, with the pool and its cached
features loaded once per process. No Dagster import here.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from auf_assets.core.methods import get_method
from auf_assets.core.simulation import (
    SimPool,
    SimulationConfig,
    load_pool,
    pool_half,
    protocol_split,
    simulate,
)

__all__ = [
    "Log",
    "policy_loop",
    "run_one",
    "split_pool",
]

Log = Callable[[str], None]


def _run_for(run: dict[str, Any], method: str, seed: int) -> dict[str, Any]:
    """One run's settings: ``fraction`` (policy-aware methods only) is dropped for the others,
    so one bench compares a policy method at fraction < 1 with the reward-model methods."""
    out = {**run, "method": method, "seed": seed}
    options = dict(out.get("method_options") or {})
    if "fraction" in options and get_method(method).family != "policy":
        options.pop("fraction")
        out["method_options"] = options
    return out


# --------------------------------------------------------------------------------------------------
# workers

_WORKER_CACHE: dict[tuple, tuple[SimPool, np.ndarray]] = {}
_HALF_CACHE: dict[tuple, SimPool] = {}


def _init_worker() -> None:
    import torch

    os.environ["AUF_TORCH_THREADS"] = "1"  # core.devices.choose_device keeps it in the worker
    torch.set_num_threads(1)
    torch.set_num_interop_threads(1)


def _load_inputs(spec: dict[str, Any], root: str | None, allow_compute: bool, log: Log | None):
    from auf_assets.pool_features import pool_features

    key = (spec["pool"], spec["encoder"], spec["pooling"], spec["max_length"], spec["dtype"], root)
    if key not in _WORKER_CACHE:
        pool = load_pool(spec["pool"])
        feats = pool_features(
            pool,
            spec["encoder"],
            pooling=spec["pooling"],
            max_length=spec["max_length"],
            dtype=spec["dtype"],
            device=spec.get("device", "auto"),
            root=Path(root) if root else None,
            allow_compute=allow_compute,
            log=log,
        )
        _WORKER_CACHE.clear()
        _WORKER_CACHE[key] = (pool, feats.matrix)
    return _WORKER_CACHE[key]


def split_pool(pool: SimPool, split: dict[str, Any] | None) -> SimPool:
    """The half of ``pool`` that ``split`` (``kind``, ``seed``, ``index``, ``half``,
    ``stratify_models``) names; ``pool`` itself for ``None``. Cached per process."""
    if split is None:
        return pool
    key = (
        pool.name,
        pool.n_responses,
        split["kind"],
        int(split["seed"]),
        int(split["index"]),
        split["half"],
        bool(split.get("stratify_models", True)),
    )
    if key not in _HALF_CACHE:
        if len(_HALF_CACHE) > 64:
            _HALF_CACHE.clear()
        ps = protocol_split(
            pool,
            split["kind"],
            seed=int(split["seed"]),
            index=int(split["index"]),
            stratify_models=bool(split.get("stratify_models", True)),
        )
        _HALF_CACHE[key] = pool_half(pool, ps, split["half"])
    return _HALF_CACHE[key]


def policy_loop(policy: dict[str, Any] | None, method: str, seed: int, log: Log | None = None):
    """The run's :class:`~auf_assets.core.policy.PolicyLoop`, or None when the run needs none.

    ``policy``: ``base_dir`` (a local HF folder), ``config`` (PolicyLoopConfig fields),
    ``all_methods`` (also train it for methods that do not select with it) and
    ``reference_cache`` (a JSON file of pi_ref's log-probs shared by the runs; may be empty).
    """
    from auf_assets.core.policy import PolicyLoop, PolicyLoopConfig, ReferenceCache

    selects = get_method(method).family == "policy"
    if policy is None or (not selects and not policy.get("all_methods")):
        return None
    base = str(policy["base_dir"])
    cache = ReferenceCache(base, policy.get("reference_cache") or None)
    return PolicyLoop(
        Path(base),
        PolicyLoopConfig(**policy.get("config", {})),
        seed=int(seed),
        reference=cache,
        log=log or (lambda msg: None),
    )


def run_one(
    spec: dict[str, Any],
    run: dict[str, Any],
    root: str | None,
    pairs_path: str | None,
    split: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One simulated run in a worker: features from the cache (``spec``: pool, encoder, ...),
    ``run`` = SimulationConfig settings, on the whole pool or on one half (``split``, see
    :func:`split_pool`). Writes the pairs to ``pairs_path`` (None: not written)."""
    pool, matrix = _load_inputs(spec, root, allow_compute=False, log=None)
    pool = split_pool(pool, split)
    config = SimulationConfig.from_dict(run)
    loop = policy_loop(spec.get("policy"), config.method, config.seed)
    try:
        result = simulate(pool, matrix, config, policy=loop)
    finally:
        if loop is not None:
            loop.close()
    out = result.to_dict()
    if pairs_path is not None:
        Path(pairs_path).parent.mkdir(parents=True, exist_ok=True)
        result.pairs.write_parquet(pairs_path)
    out["pairs_file"] = pairs_path
    out["method"] = config.method
    out["seed"] = config.seed
    if split is not None:
        out["split"] = int(split["index"])
        out["half"] = split["half"]
    return out
