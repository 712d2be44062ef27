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
and ``protocol_report`` (:func:`protocol_report`: per half and method the final accuracy, the
paired difference to random, the mean gap and its ratio to random's, per seed and overall);
``bench.md`` leads with that table; ``bench.png`` shows the confirmation half, ``bench-tune.png``
the tuning half; pairs go to ``pairs/split<k>-<half>/``.
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

from auf_assets.core.features import EncoderBlock
from auf_assets.core.methods import get_method, method_names
from auf_assets.core.presets import DEFAULT_PRESET
from auf_assets.core.settings import RoundSettings
from auf_assets.core.simulation import (
    SPLIT_HALVES,
    SPLIT_KINDS,
    SimPool,
    SimulationConfig,
    load_pool,
    pool_half,
    protocol_split,
    simulate,
)

__all__ = [
    "DEFAULT_METHODS",
    "DEFAULT_SEEDS",
    "BenchSpec",
    "aggregate_runs",
    "budget_value",
    "markdown_report",
    "plot_curves",
    "protocol_markdown",
    "protocol_report",
    "run_bench",
    "run_one",
    "split_pool",
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
METRICS = ("accuracy", "running_accuracy", "mean_gap", "mean_chosen_score", "mean_rejected_score")

Log = Callable[[str], None]


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
    #: The DPO policy in the loop (see :func:`policy_loop`); needed by the policy-aware methods.
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


# --------------------------------------------------------------------------------------------------
# aggregation


def _labels_per_prompt(method: str) -> str:
    return get_method(method).labels_per_prompt


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
        group = sorted(group, key=lambda r: (r.get("split", 0), r["seed"]))
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
    unit: str = "seeds",
) -> str:
    """Markdown tables: accuracy and oracle gap at each budget, and the end-of-pool numbers
    (``unit``: what the runs of a method are, e.g. "seeds" or "runs (splits x seeds)")."""
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
            f"**{label}** (mean ± std over {n_seeds} {unit}; at the last evaluation with at most "
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


def _final(run: dict[str, Any], metric: str) -> float | None:
    if not run["curve"]:
        return None
    value = run["curve"][-1].get(metric)
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else value


def _nanmean(values: Sequence[float | None]) -> float | None:
    vals = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    return float(np.mean(vals)) if vals else None


def protocol_report(
    runs: Sequence[dict[str, Any]],
    *,
    baseline: str = "random",
    gap_factor: float = 1.5,
) -> dict[str, dict[str, dict[str, Any]]]:
    """Per half (``tune``/``confirm``) and method: the final evaluation point compared with
    ``baseline`` run on the same split, half and seed (a paired comparison at equal labels for
    methods that spend 2 per prompt).

    Each entry: ``runs``; ``labels`` (mean); ``accuracy`` and ``gap`` (mean, std over splits x
    seeds); ``delta_accuracy`` (paired difference to the baseline: mean, std); ``gap_ratio``
    (mean gap / the baseline's mean gap); ``per_seed``: per seed, the means over the splits of
    accuracy, paired delta, gap and the gap ratio; ``bar``: ``min_gap_ratio`` and
    ``min_delta_accuracy`` over those seed means, and ``passes`` = every seed's mean has a gap
    ratio >= ``gap_factor`` and a delta >= 0 (the issue's bar). Runs without ``half`` (no split)
    are reported under ``all``.
    """
    base: dict[tuple, dict[str, Any]] = {}
    for r in runs:
        if r["method"] == baseline:
            base[(r.get("half", "all"), r.get("split", 0), r["seed"])] = r
    halves = [h for h in (*SPLIT_HALVES, "all") if any(r.get("half", "all") == h for r in runs)]
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for half in halves:
        in_half = [r for r in runs if r.get("half", "all") == half]
        methods = list(dict.fromkeys(r["method"] for r in in_half))
        out[half] = {}
        for method in methods:
            group = [r for r in in_half if r["method"] == method]
            acc = [_final(r, "accuracy") for r in group]
            gap = [_final(r, "mean_gap") for r in group]
            deltas = []
            base_gap = []
            for r in group:
                b = base.get((half, r.get("split", 0), r["seed"]))
                a_m, a_b = _final(r, "accuracy"), _final(b, "accuracy") if b else None
                deltas.append(None if a_m is None or a_b is None else a_m - a_b)
                base_gap.append(_final(b, "mean_gap") if b else None)
            per_seed: dict[int, dict[str, Any]] = {}
            for seed in sorted({r["seed"] for r in group}):
                idx = [i for i, r in enumerate(group) if r["seed"] == seed]
                g = _nanmean([gap[i] for i in idx])
                bg = _nanmean([base_gap[i] for i in idx])
                per_seed[seed] = {
                    "accuracy": _nanmean([acc[i] for i in idx]),
                    "delta_accuracy": _nanmean([deltas[i] for i in idx]),
                    "gap": g,
                    "gap_ratio": None if g is None or not bg else g / bg,
                }
            g_mean = _nanmean(gap)
            bg_mean = _nanmean(base_gap)
            labels = _nanmean([_final(r, "labels") for r in group])
            base_labels = _nanmean(
                [_final(b, "labels") for b in base.values() if b.get("half", "all") == half]
            )
            equal_labels = labels is not None and labels == base_labels
            ratios = [v["gap_ratio"] for v in per_seed.values()]
            seed_deltas = [v["delta_accuracy"] for v in per_seed.values()]
            known = all(v is not None for v in [*ratios, *seed_deltas]) and bool(per_seed)
            entry: dict[str, Any] = {
                "runs": len(group),
                "labels": labels,
                "accuracy": _mean_std(acc),
                "gap": _mean_std(gap),
                "delta_accuracy": _mean_std(deltas),
                "gap_ratio": None if g_mean is None or not bg_mean else g_mean / bg_mean,
                "per_seed": per_seed,
                "bar": {
                    "gap_factor": gap_factor,
                    "equal_labels": equal_labels,
                    "min_gap_ratio": min(ratios) if known else None,
                    "min_delta_accuracy": min(seed_deltas) if known else None,
                    "passes": bool(
                        known
                        and equal_labels
                        and min(ratios) >= gap_factor
                        and min(seed_deltas) >= 0.0
                        and method != baseline
                    ),
                },
            }
            out[half][method] = entry
    return out


POLICY_PARTS = ("logprobs", "gradients", "selection", "training")


def policy_table(runs: Sequence[dict[str, Any]], methods: Sequence[str]) -> str:
    """The DPO policy in the loop, per method: its held-out implicit-reward accuracy against the
    oracle, the selected pairs' gap and the evaluation model's accuracy (mean ± std over runs),
    and the seconds per round of each part of the policy's work."""

    def ms(values: Sequence[float | None]) -> str:
        m, sd = _mean_std(values)
        return "-" if m is None else f"{m:.3f} ± {sd:.3f}"

    lines = [
        "| method | runs | oracle gap of the pairs | evaluation RM accuracy | DPO policy "
        "accuracy vs oracle | s/round: log-probs | gradients | selection | DPO training |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for m in methods:
        mine = [r for r in runs if r["method"] == m and r["curve"]]
        if not mine:
            continue
        last = [r["curve"][-1] for r in mine]
        per_round = {part: [] for part in POLICY_PARTS}
        for r, point in zip(mine, last, strict=True):
            rounds = max(1, int(r["info"]["rounds"]))
            for part in POLICY_PARTS:
                per_round[part].append((point.get("policy_seconds") or {}).get(part, 0.0) / rounds)
        lines.append(
            f"| {m} | {len(mine)} | {ms([p['mean_gap'] for p in last])} | "
            f"{ms([p['accuracy'] for p in last])} | {ms([p.get('policy_accuracy') for p in last])}"
            " | " + " | ".join(f"{np.mean(per_round[p]):.1f}" for p in POLICY_PARTS) + " |"
        )
    return "\n".join(lines)


def protocol_markdown(report: dict[str, dict[str, dict[str, Any]]], *, baseline: str = "random"):
    """The :func:`protocol_report` as one markdown table (a row per half and method)."""
    lines = [
        f"| half | method | runs | labels | accuracy | Δ accuracy vs {baseline} | mean gap "
        f"| gap / {baseline}'s | min over seeds: gap ratio, Δ accuracy | bar |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for half, methods in report.items():
        for method, e in methods.items():
            bar = e["bar"]
            ratio = "—" if e["gap_ratio"] is None else f"{e['gap_ratio']:.2f}x"
            if bar["min_gap_ratio"] is None or method == baseline:
                mins, verdict = "—", "—"
            else:
                mins = f"{bar['min_gap_ratio']:.2f}x, {bar['min_delta_accuracy']:+.3f}"
                verdict = "pass" if bar["passes"] else "fail"
                if not bar["equal_labels"]:
                    verdict = "— (more labels)"
            delta = "—" if method == baseline else _fmt(*e["delta_accuracy"], digits=3)
            labels = "—" if e["labels"] is None else f"{e['labels']:.0f}"
            lines.append(
                f"| {half} | {method} | {e['runs']} | {labels} | {_fmt(*e['accuracy'])} | "
                f"{delta} | {_fmt(*e['gap'])} | {ratio} | {mins} | {verdict} |"
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
        style = "--" if get_method(method).family == "oracle" else "-"
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
