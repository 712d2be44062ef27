"""The report of `auf bench` (:mod:`auf_assets.sim_bench`): the runs aggregated per method, the
markdown tables (at label budgets, the split protocol's verdicts, the policy's timings) and the
plot of the curves. No Dagster import here.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from auf_assets.core.methods import get_method
from auf_assets.core.simulation import SPLIT_HALVES

__all__ = [
    "METRICS",
    "aggregate_runs",
    "budget_value",
    "markdown_report",
    "plot_curves",
    "policy_table",
    "protocol_markdown",
    "protocol_report",
]

METRICS = ("accuracy", "running_accuracy", "mean_gap", "mean_chosen_score", "mean_rejected_score")


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
