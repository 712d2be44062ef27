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
"""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from auf_assets.core.baselines import BASELINE_METHODS
from auf_assets.core.simulation import (
    SimPool,
    SimulationConfig,
    known_methods,
    load_pool,
    simulate,
)

__all__ = [
    "DEFAULT_METHODS",
    "BenchSpec",
    "aggregate_runs",
    "budget_value",
    "markdown_report",
    "plot_curves",
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
METRICS = ("accuracy", "running_accuracy", "mean_gap", "mean_chosen_score", "mean_rejected_score")

Log = Callable[[str], None]


@dataclass
class BenchSpec:
    """What to run: a pool, methods, seeds, the encoder and the shared run settings.

    ``run`` holds :class:`SimulationConfig` fields shared by every run (method and seed are set per
    run); ``jobs`` = worker processes (0: ``min(cores, runs)``); ``budgets`` = label budgets of
    the markdown table (empty: 1/4, 1/2 and all of 2 labels per train prompt).
    """

    pool: str
    methods: list[str] = field(default_factory=lambda: list(DEFAULT_METHODS))
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    encoder: str = "minilm"
    pooling: str = "mean"
    max_length: int = 512
    dtype: str = "bf16"
    device: str = "auto"
    run: dict[str, Any] = field(default_factory=dict)
    jobs: int = 0
    budgets: list[int] = field(default_factory=list)

    def validate(self) -> None:
        unknown = [m for m in self.methods if m not in known_methods()]
        if unknown:
            raise ValueError(f"unknown method(s) {unknown}; known: {', '.join(known_methods())}")
        if not self.methods or not self.seeds:
            raise ValueError("give at least one method and one seed")
        if len(set(self.methods)) != len(self.methods) or len(set(self.seeds)) != len(self.seeds):
            raise ValueError("methods and seeds must not repeat")
        for m in self.methods:  # fail before any work on a bad setting
            SimulationConfig.from_dict({**self.run, "method": m, "seed": self.seeds[0]})


# --------------------------------------------------------------------------------------------------
# workers

_WORKER_CACHE: dict[tuple, tuple[SimPool, np.ndarray]] = {}


def _init_worker() -> None:
    import torch

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


def _run_one(
    spec: dict[str, Any], run: dict[str, Any], root: str | None, pairs_path: str
) -> dict[str, Any]:
    pool, matrix = _load_inputs(spec, root, allow_compute=False, log=None)
    config = SimulationConfig.from_dict(run)
    result = simulate(pool, matrix, config)
    Path(pairs_path).parent.mkdir(parents=True, exist_ok=True)
    result.pairs.write_parquet(pairs_path)
    out = result.to_dict()
    out["pairs_file"] = pairs_path
    out["method"] = config.method
    out["seed"] = config.seed
    return out


# --------------------------------------------------------------------------------------------------
# aggregation


def _labels_per_prompt(method: str) -> str:
    if method in BASELINE_METHODS:
        return BASELINE_METHODS[method].labels_per_prompt
    return "2"


def _mean_std(values: Sequence[float | None]) -> tuple[float | None, float | None]:
    vals = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    if not vals:
        return None, None
    return float(np.mean(vals)), float(np.std(vals))


def aggregate_runs(runs: Sequence[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per method: the mean/std curve over seeds (points aligned by evaluation index), the final
    point's mean/std and the mean wall time."""
    by_method: dict[str, list[dict[str, Any]]] = {}
    for run in runs:
        by_method.setdefault(run["method"], []).append(run)
    out: dict[str, dict[str, Any]] = {}
    for method, group in by_method.items():
        group = sorted(group, key=lambda r: r["seed"])
        n_points = min(len(r["curve"]) for r in group)
        curve = []
        for k in range(n_points):
            pts = [r["curve"][k] for r in group]
            point: dict[str, Any] = {
                "round": pts[0]["round"],
                "prompts": float(np.mean([p["prompts"] for p in pts])),
                "labels": float(np.mean([p["labels"] for p in pts])),
            }
            for metric in METRICS:
                point[f"{metric}_mean"], point[f"{metric}_std"] = _mean_std(
                    [p.get(metric) for p in pts]
                )
            curve.append(point)
        wall = [r["info"]["wall_seconds"] for r in group]
        loop = [r["info"]["loop_seconds"] for r in group]
        out[method] = {
            "labels_per_prompt": _labels_per_prompt(method),
            "seeds": [r["seed"] for r in group],
            "curve": curve,
            "final": curve[-1] if curve else {},
            "wall_seconds_mean": float(np.mean(wall)),
            "wall_seconds_std": float(np.std(wall)),
            "loop_seconds_mean": float(np.mean(loop)),
        }
    return out


def budget_value(curve: Sequence[dict[str, Any]], budget: float, metric: str) -> float | None:
    """The metric at the last evaluation point that spent at most ``budget`` labels."""
    best = None
    for p in curve:
        if p["labels"] <= budget + 1e-9:
            best = p
    if best is None:
        return None
    value = best.get(metric)
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else value


def _default_budgets(runs: Sequence[dict[str, Any]]) -> list[int]:
    n_train = max(int(r["info"]["train_prompts"]) for r in runs)
    full = 2 * n_train
    return sorted({max(1, full // 4), max(1, full // 2), full})


def _fmt(mean: float | None, std: float | None, digits: int = 3) -> str:
    if mean is None:
        return "—"
    if std is None:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def _budget_stats(
    runs: Sequence[dict[str, Any]], method: str, budget: float, metric: str
) -> tuple[float | None, float | None]:
    vals = [budget_value(r["curve"], budget, metric) for r in runs if r["method"] == method]
    if any(v is None for v in vals):
        return None, None
    return _mean_std(vals)


def markdown_report(
    runs: Sequence[dict[str, Any]],
    summary: dict[str, dict[str, Any]],
    budgets: Sequence[int],
    *,
    title: str = "",
) -> str:
    """Markdown tables: accuracy and oracle gap at each budget, and the end-of-pool numbers."""
    methods = list(summary)
    n_seeds = max(len(s["seeds"]) for s in summary.values()) if summary else 0
    lines = []
    if title:
        lines += [title, ""]
    head = " | ".join(f"{b} labels" for b in budgets)
    for metric, label in (
        ("accuracy", "Held-out pairwise accuracy of a reward model trained on the selected pairs"),
        ("mean_gap", "Mean oracle gap (chosen - rejected) of the selected pairs"),
    ):
        lines += [
            f"**{label}** (mean ± std over {n_seeds} seeds; at the last evaluation with at most "
            "that many labels; — = the method spends more on its first round)",
            "",
            f"| method | labels/prompt | {head} |",
            "|---|---|" + "---|" * len(budgets),
        ]
        for m in methods:
            cells = [_fmt(*_budget_stats(runs, m, b, metric)) for b in budgets]
            lines.append(f"| {m} | {summary[m]['labels_per_prompt']} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += [
        "**After all train prompts**",
        "",
        "| method | labels | accuracy | running-model accuracy | mean gap | mean chosen score "
        "| ties | wall s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for m in methods:
        f = summary[m]["final"]
        ties = [r["curve"][-1]["ties"] for r in runs if r["method"] == m and r["curve"]]
        lines.append(
            f"| {m} | {f.get('labels', 0):.0f} | "
            f"{_fmt(f.get('accuracy_mean'), f.get('accuracy_std'))} | "
            f"{_fmt(f.get('running_accuracy_mean'), f.get('running_accuracy_std'))} | "
            f"{_fmt(f.get('mean_gap_mean'), f.get('mean_gap_std'))} | "
            f"{_fmt(f.get('mean_chosen_score_mean'), f.get('mean_chosen_score_std'))} | "
            f"{np.mean(ties) if ties else 0:.1f} | "
            f"{summary[m]['wall_seconds_mean']:.1f} |"
        )
    return "\n".join(lines) + "\n"


def plot_curves(
    summary: dict[str, dict[str, Any]], path: str | Path, *, title: str = "", marker: float = 0
) -> Path:
    """Accuracy, mean gap and mean chosen score vs labels (log x), mean line +- std band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = (
        ("accuracy", "held-out pairwise accuracy"),
        ("mean_gap", "mean oracle gap of selected pairs"),
        ("mean_chosen_score", "mean oracle score of chosen"),
    )
    fig, axes = plt.subplots(1, len(panels), figsize=(15, 4.4))
    cmap = plt.get_cmap("tab10" if len(summary) <= 10 else "tab20")
    for i, (method, s) in enumerate(summary.items()):
        color = "black" if method == "random" else cmap(i % cmap.N)
        style = "--" if method in BASELINE_METHODS else "-"
        lw = 2.2 if method in ("random", "drts", "deltaucb") else 1.2
        x = np.array([p["labels"] for p in s["curve"]], dtype=float)
        for ax, (metric, _) in zip(axes, panels, strict=True):
            y = np.array(
                [np.nan if p[f"{metric}_mean"] is None else p[f"{metric}_mean"] for p in s["curve"]]
            )
            e = np.array(
                [0.0 if p[f"{metric}_std"] is None else p[f"{metric}_std"] for p in s["curve"]]
            )
            ax.plot(x, y, style, color=color, marker="o", markersize=2.5, lw=lw, label=method)
            ax.fill_between(x, y - e, y + e, color=color, alpha=0.15, lw=0)
    for ax, (_, label) in zip(axes, panels, strict=True):
        ax.set_xscale("log")
        ax.set_xlabel("labels spent")
        ax.set_title(label, fontsize=10)
        ax.grid(alpha=0.3)
        if marker:
            ax.axvline(marker, color="grey", lw=0.8, ls=":")
    axes[0].legend(fontsize=7, ncol=2, loc="lower right")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


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

    jobs = [(m, s) for m in spec.methods for s in spec.seeds]
    cores = os.cpu_count() or 1
    workers = min(cores, len(jobs)) if spec.jobs <= 0 else min(spec.jobs, len(jobs))
    runs: list[dict[str, Any]] = []

    def args_for(method: str, seed: int) -> tuple:
        run = {**spec.run, "method": method, "seed": seed}
        pairs = str(out / "pairs" / f"{method}-seed{seed}.parquet")
        return (data, run, root_s, pairs)

    log(f"running {len(jobs)} runs on {workers} worker process(es)")
    if workers <= 1:
        for m, s in jobs:
            runs.append(_run_one(*args_for(m, s)))
            _log_run(log, runs[-1])
    else:
        ctx = multiprocessing.get_context("spawn")
        env_home = os.environ.get("AUF_HOME")
        if root is not None:
            os.environ["AUF_HOME"] = str(root)
        try:
            with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker) as ex:
                futures = [ex.submit(_run_one, *args_for(m, s)) for m, s in jobs]
                for fut in as_completed(futures):
                    runs.append(fut.result())
                    _log_run(log, runs[-1])
        finally:
            if root is not None:
                if env_home is None:
                    os.environ.pop("AUF_HOME", None)
                else:
                    os.environ["AUF_HOME"] = env_home
    order = {(m, s): i for i, (m, s) in enumerate(jobs)}
    runs.sort(key=lambda r: order[(r["method"], r["seed"])])

    summary = aggregate_runs(runs)
    summary = {m: summary[m] for m in spec.methods if m in summary}
    budgets = list(spec.budgets) or _default_budgets(runs)
    info0 = runs[0]["info"]
    title = (
        f"{Path(spec.pool).name}: {pool.n_prompts} prompts ({info0['train_prompts']} train, "
        f"{info0['heldout_prompts']} held-out), K={spec.run.get('responses_per_prompt') or 'all'}, "
        f"B={spec.run.get('batch_size', SimulationConfig().batch_size)}, encoder {spec.encoder}, "
        f"{len(spec.seeds)} seeds"
    )
    markdown = markdown_report(runs, summary, budgets, title=f"### {title}")
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
        "methods": spec.methods,
        "seeds": spec.seeds,
        "run_settings": SimulationConfig.from_dict(
            {**spec.run, "method": spec.methods[0], "seed": spec.seeds[0]}
        ).to_dict(),
        "budgets": budgets,
        "workers": workers,
        "features_seconds": round(features_seconds, 2),
        "total_seconds": round(total, 2),
        "summary": summary,
        "runs": runs,
    }
    json_path = out / "bench.json"
    json_path.write_text(json.dumps(result, indent=1, default=_json_default))
    md_path = out / "bench.md"
    md_path.write_text(markdown)
    png_path = plot_curves(
        summary, out / "bench.png", title=title, marker=2 * info0["train_prompts"]
    )
    log(f"bench done in {total:.1f}s: {json_path}, {md_path}, {png_path}")
    result["markdown"] = markdown
    result["files"] = {"json": str(json_path), "markdown": str(md_path), "plot": str(png_path)}
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
