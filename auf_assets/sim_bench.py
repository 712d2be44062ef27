"""`auf bench`: many simulated-oracle runs (method x seed), in parallel, and their report.

Shared by the CLI (:mod:`auf_assets.cli.simulate`) and the Dagster assets
(:mod:`auf_assets.bench`); no Dagster import here. The parent process loads the pool and fills
the feature cache once; the runs go to a process pool of ``min(cores, runs)`` spawned workers
(one torch thread each) that memory-map the cached features. Outputs in ``out_dir``:

* ``bench.json``: settings, pool summary, every run's curve, and per method the mean/std curve;
* ``bench.md``: markdown tables at a few label budgets and at the end of the train prompts;
* ``bench.png``: held-out accuracy, mean oracle gap and mean chosen score vs labels spent
  (mean over seeds, band = +-1 std);
* ``pairs/<method>-seed<seed>.parquet``: the selected pairs of every run.

**Split protocol** (``BenchSpec.split``: ``prompts``, ``models`` or ``both``; see
:class:`auf_assets.core.simulation.PoolSplit`): every (method, seed) runs on the tuning and the
confirmation half of each of ``n_splits`` seeded splits, each half with its own held-out
evaluation prompts. ``bench.json`` then also has ``protocol`` (the splits, their prompts and
models), ``groups`` (one summary per split and half), ``halves`` (per half, over splits x seeds)
and ``protocol_report`` (:func:`~auf_assets.sim_bench_report.protocol_report`: per half and
method the final accuracy, the paired difference to random, the mean gap and its ratio to
random's, per seed and overall);
``bench.md`` leads with that table; ``bench.png`` shows the confirmation half, ``bench-tune.png``
the tuning half; pairs go to ``pairs/split<k>-<half>/``. The runs are in
:mod:`auf_assets.sim_bench_runs`, the tables and the plot in :mod:`auf_assets.sim_bench_report`.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from auf_assets.core.features import EncoderBlock
from auf_assets.core.methods import method_names
from auf_assets.core.presets import DEFAULT_PRESET
from auf_assets.core.settings import RoundSettings
from auf_assets.core.simulation import (
    SPLIT_HALVES,
    SPLIT_KINDS,
    SimulationConfig,
    pool_half,
    protocol_split,
)
from auf_assets.sim_bench_report import (
    _default_budgets,
    _fmt,
    aggregate_runs,
    markdown_report,
    plot_curves,
    policy_table,
    protocol_markdown,
    protocol_report,
)
from auf_assets.sim_bench_runs import Log, _init_worker, _load_inputs, _run_for, run_one

__all__ = [
    "DEFAULT_METHODS",
    "DEFAULT_SEEDS",
    "BenchSpec",
    "run_bench",
]

DEFAULT_METHODS = (
    "random",
    "ultrafeedback",
    "ultrafeedback_oracle",
    "maxmin",
    "dts",
    "drts",
    "deltaucb",
    "maxminlcb",
    "infomax",
)
DEFAULT_SEEDS = (0, 1, 2)


@dataclass
class BenchSpec:
    """What to run: a pool, methods, seeds, the encoder and the shared run settings.

    ``run`` holds :class:`SimulationConfig` fields shared by every run (method and seed are set per
    run); ``jobs`` = worker processes (0: ``min(cores, runs)``); ``budgets`` = label budgets of
    the markdown table (empty: 1/4, 1/2 and all of 2 labels per train prompt). ``preset`` only
    names the preset ``run`` and ``encoder`` came from (recorded in bench.json). ``split``
    (``None`` or one of :data:`SPLIT_KINDS`) runs every (method, seed) on both halves of
    ``n_splits`` splits of seed ``split_seed`` (module docstring).
    """

    pool: str
    methods: list[str] = field(default_factory=lambda: list(DEFAULT_METHODS))
    seeds: list[int] = field(default_factory=lambda: list(DEFAULT_SEEDS))
    encoder: str = field(default_factory=lambda: RoundSettings().encoder)  # the default preset's
    pooling: str = EncoderBlock.pooling
    max_length: int = EncoderBlock.max_length
    dtype: str = EncoderBlock.dtype
    device: str = "auto"
    run: dict[str, Any] = field(default_factory=dict)
    jobs: int = 0
    budgets: list[int] = field(default_factory=list)
    preset: str = DEFAULT_PRESET
    split: str | None = None
    n_splits: int = 2
    split_seed: int = 0
    stratify_models: bool = True
    #: The DPO policy in the loop (see :func:`~auf_assets.sim_bench_runs.policy_loop`); needed by
    #: the policy-aware methods.
    policy: dict[str, Any] | None = None

    def validate(self) -> None:
        if self.split is not None and self.split not in SPLIT_KINDS:
            raise ValueError(f"split must be one of {', '.join(SPLIT_KINDS)}; got {self.split!r}")
        if self.split is not None and self.n_splits < 1:
            raise ValueError(f"n_splits must be >= 1, got {self.n_splits}")
        unknown = [m for m in self.methods if m not in method_names()]
        if unknown:
            raise ValueError(f"unknown method(s) {unknown}; known: {', '.join(method_names())}")
        if not self.methods or not self.seeds:
            raise ValueError("give at least one method and one seed")
        if len(set(self.methods)) != len(self.methods) or len(set(self.seeds)) != len(self.seeds):
            raise ValueError("methods and seeds must not repeat")
        for m in self.methods:  # fail before any work on a bad setting
            config = SimulationConfig.from_dict(_run_for(self.run, m, self.seeds[0]))
            if config.is_policy_aware and self.policy is None:
                raise ValueError(f"{m} selects with the DPO policy: give the policy settings")


# --------------------------------------------------------------------------------------------------
# the bench


def run_bench(
    spec: BenchSpec,
    out_dir: str | Path,
    *,
    root: Path | None = None,
    log: Log | None = None,
) -> dict[str, Any]:
    """Run every (method, seed) of ``spec``; write bench.json/.md/.png under ``out_dir``.

    Returns the bench.json content plus ``markdown`` (the report) and ``files`` (written paths).
    """
    log = log or (lambda msg: None)
    spec.validate()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    data = {
        "pool": spec.pool,
        "encoder": spec.encoder,
        "pooling": spec.pooling,
        "max_length": spec.max_length,
        "dtype": spec.dtype,
        "device": spec.device,
        "policy": spec.policy,
    }
    root_s = str(root) if root else None

    t0 = time.perf_counter()
    pool, _ = _load_inputs(data, root_s, allow_compute=True, log=log)
    from auf_assets.pool_features import pool_features  # cached now: provenance only

    feats = pool_features(
        pool,
        spec.encoder,
        pooling=spec.pooling,
        max_length=spec.max_length,
        dtype=spec.dtype,
        root=root,
        allow_compute=False,
    )
    features_seconds = time.perf_counter() - t0
    pool_summary = pool.summary()
    log(
        f"pool {pool.name}: {pool.n_prompts} prompts, {pool.n_responses} responses; features "
        f"{feats.key} dim {feats.dim} ready in {features_seconds:.1f}s"
    )

    splits = []
    if spec.split is not None:
        splits = [
            protocol_split(
                pool,
                spec.split,
                seed=spec.split_seed,
                index=k,
                stratify_models=spec.stratify_models,
            )
            for k in range(spec.n_splits)
        ]
        for ps in splits:
            for half in SPLIT_HALVES:
                sub = pool_half(pool, ps, half)  # fail early on an unusable half
                log(
                    f"{half} half of {ps.label}: {sub.n_prompts} prompts, {sub.n_responses} "
                    f"responses, {len(ps.models(half))} models"
                )
    places: list[tuple[int, str] | None] = (
        [(k, h) for k in range(len(splits)) for h in SPLIT_HALVES] if splits else [None]
    )
    jobs = [(m, s, place) for place in places for m in spec.methods for s in spec.seeds]
    cores = os.cpu_count() or 1
    workers = min(cores, len(jobs)) if spec.jobs <= 0 else min(spec.jobs, len(jobs))
    runs: list[dict[str, Any]] = []

    def args_for(method: str, seed: int, place: tuple[int, str] | None) -> tuple:
        run = _run_for(spec.run, method, seed)
        if place is None:
            pairs = str(out / "pairs" / f"{method}-seed{seed}.parquet")
            return (data, run, root_s, pairs, None)
        k, half = place
        pairs = str(out / "pairs" / f"split{k}-{half}" / f"{method}-seed{seed}.parquet")
        split = {
            "kind": spec.split,
            "seed": spec.split_seed,
            "index": k,
            "half": half,
            "stratify_models": spec.stratify_models,
        }
        return (data, run, root_s, pairs, split)

    log(f"running {len(jobs)} runs on {workers} worker process(es)")
    if workers <= 1:
        for m, s, place in jobs:
            runs.append(run_one(*args_for(m, s, place)))
            _log_run(log, runs[-1])
    else:
        ctx = multiprocessing.get_context("spawn")
        env_home = os.environ.get("AUF_HOME")
        if root is not None:
            os.environ["AUF_HOME"] = str(root)
        try:
            with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker) as ex:
                futures = [ex.submit(run_one, *args_for(m, s, place)) for m, s, place in jobs]
                for fut in as_completed(futures):
                    runs.append(fut.result())
                    _log_run(log, runs[-1])
        finally:
            if root is not None:
                if env_home is None:
                    os.environ.pop("AUF_HOME", None)
                else:
                    os.environ["AUF_HOME"] = env_home

    def place_of(r: dict[str, Any]) -> tuple[int, str] | None:
        return (r["split"], r["half"]) if "half" in r else None

    order = {(m, s, place): i for i, (m, s, place) in enumerate(jobs)}
    runs.sort(key=lambda r: order[(r["method"], r["seed"], place_of(r))])

    def ordered(summary: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        return {m: summary[m] for m in spec.methods if m in summary}

    info0 = runs[0]["info"]
    k_label = spec.run.get("responses_per_prompt") or "all"
    b_label = spec.run.get("batch_size", SimulationConfig().batch_size)
    if not splits:
        summary = ordered(aggregate_runs(runs))
        budgets = list(spec.budgets) or _default_budgets(runs)
        title = (
            f"{Path(spec.pool).name}: {pool.n_prompts} prompts ({info0['train_prompts']} train, "
            f"{info0['heldout_prompts']} held-out), K={k_label}, B={b_label}, encoder "
            f"{spec.encoder}, preset {spec.preset}, {len(spec.seeds)} seeds"
        )
        markdown = markdown_report(runs, summary, budgets, title=f"### {title}")
        if spec.policy is not None:
            markdown += "\n\n" + policy_table(runs, list(summary))
        protocol: dict[str, Any] = {}
        extra: dict[str, Any] = {}
    else:
        groups = {}
        for k in range(len(splits)):
            for half in SPLIT_HALVES:
                sub = [r for r in runs if place_of(r) == (k, half)]
                groups[f"split{k}/{half}"] = ordered(aggregate_runs(sub))
        halves = {
            half: ordered(aggregate_runs([r for r in runs if r.get("half") == half]))
            for half in SPLIT_HALVES
        }
        report = protocol_report(runs)
        title = (
            f"{Path(spec.pool).name}: split protocol '{spec.split}', {len(splits)} split(s) "
            f"(seed {spec.split_seed}), K={k_label}, B={b_label}, encoder {spec.encoder}, "
            f"preset {spec.preset}, {len(spec.seeds)} seeds per half"
        )
        parts = [
            f"### {title}",
            "",
            "Final point of every run (all train prompts of the half); mean ± std over splits x "
            "seeds; Δ = paired difference to random (same split, half and seed, equal labels "
            "for 2-label methods); gap ratio = mean oracle gap / random's; bar = on every seed's "
            "mean over the splits, gap ratio >= 1.5 and Δ accuracy >= 0.",
            "",
            protocol_markdown(report),
            "**Per split and half** (final accuracy / mean gap, mean over seeds)",
            "",
            "| split | half | prompts | models | " + " | ".join(spec.methods) + " |",
            "|---|---|---|---|" + "---|" * len(spec.methods),
        ]
        for k, ps in enumerate(splits):
            for half in SPLIT_HALVES:
                g = groups[f"split{k}/{half}"]
                cells = []
                for m in spec.methods:
                    f = g.get(m, {}).get("final", {})
                    acc, gap = f.get("accuracy_mean"), f.get("mean_gap_mean")
                    cells.append(f"{_fmt(acc, None)} / {_fmt(gap, None)}")
                prompts = next(r["info"]["prompts"] for r in runs if place_of(r) == (k, half))
                parts.append(
                    f"| {k} | {half} | {prompts} | {len(ps.models(half))} | "
                    + " | ".join(cells)
                    + " |"
                )
        parts.append("")
        for half in SPLIT_HALVES:
            half_runs = [r for r in runs if r.get("half") == half]
            budgets = list(spec.budgets) or _default_budgets(half_runs)
            parts.append(
                markdown_report(
                    half_runs,
                    halves[half],
                    budgets,
                    title=f"#### The {half} halves",
                    unit=f"runs ({len(splits)} split(s) x {len(spec.seeds)} seeds)",
                )
            )
        markdown = "\n".join(parts)
        summary = halves["confirm"]
        protocol = {
            "kind": spec.split,
            "n_splits": len(splits),
            "seed": spec.split_seed,
            "stratify_models": spec.stratify_models,
            "splits": [ps.to_dict() for ps in splits],
        }
        extra = {"groups": groups, "halves": halves, "protocol_report": report}
        budgets = list(spec.budgets) or _default_budgets(
            [r for r in runs if r.get("half") == "confirm"]
        )

    total = time.perf_counter() - started
    result = {
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "pool": spec.pool,
        "pool_summary": pool_summary,
        "encoder": {
            "setting": spec.encoder,
            "key": feats.key,
            "dim": feats.dim,
            "blocks": feats.blocks,
        },
        "preset": spec.preset,
        "methods": spec.methods,
        "seeds": spec.seeds,
        "run_settings": SimulationConfig.from_dict(
            _run_for(spec.run, spec.methods[0], spec.seeds[0])
        ).to_dict(),
        "budgets": budgets,
        "workers": workers,
        "features_seconds": round(features_seconds, 2),
        "total_seconds": round(total, 2),
        "summary": summary,
        **({"protocol": protocol} if protocol else {}),
        **extra,
        "runs": runs,
    }
    json_path = out / "bench.json"
    json_path.write_text(json.dumps(result, indent=1, default=_json_default))
    md_path = out / "bench.md"
    md_path.write_text(markdown)
    files = {"json": str(json_path), "markdown": str(md_path)}
    if not splits:
        files["plot"] = str(
            plot_curves(summary, out / "bench.png", title=title, marker=2 * info0["train_prompts"])
        )
    else:
        for half, name in (("confirm", "bench.png"), ("tune", "bench-tune.png")):
            half0 = next(r for r in runs if r.get("half") == half)["info"]
            files["plot" if half == "confirm" else "plot_tune"] = str(
                plot_curves(
                    extra["halves"][half],
                    out / name,
                    title=f"{title}: {half} halves",
                    marker=2 * half0["train_prompts"],
                )
            )
    log(f"bench done in {total:.1f}s: {', '.join(files.values())}")
    result["markdown"] = markdown
    result["files"] = files
    return result


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, float) and math.isinf(value):
        return None
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _log_run(log: Log, run: dict[str, Any]) -> None:
    last = run["curve"][-1] if run["curve"] else {}
    acc = last.get("accuracy")
    gap = last.get("mean_gap")
    log(
        f"  {run['method']:<22} seed {run['seed']}: {last.get('labels', 0)} labels, "
        f"accuracy {acc if acc is None else round(acc, 3)}, "
        f"gap {gap if gap is None else round(gap, 3)}, {run['info']['wall_seconds']:.1f}s"
    )
