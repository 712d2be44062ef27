"""Choose the running reward model's defaults by a split protocol that does not overfit one pool.

The experiment behind the defaults (issue 10): on a simulated-oracle pool, split by prompts AND by
models (``--split both``: tune on half the prompts x half the models, confirm on the other halves;
``--splits`` seeded splits, :func:`auf_assets.core.simulation.protocol_split`), run a small grid
of candidate settings of the ensemble (learning rate, training passes per round, heads, anchor
strength) and of the encoder (minilm, text-stats, minilm+text-stats) for the acquisition rules
drts and deltaucb, with random and MaxMin as references, ``--seeds`` run seeds per half, at 2
labels per prompt (one pair per train prompt of the half; every half holds out 25% of its prompts
for the evaluation reward model, as ``auf simulate`` does).

Stages (all choices on the *tuning* halves only):

1. every encoder x learning rate x passes, 20 heads, anchor lambda_0 = 1 (the reference's);
2. around the ``--stage2-top`` best stage-1 settings: heads 8 and 40, anchor lambda_0 1e4 and 1e5.

Choice: a (setting, method) *passes* the bar on the tuning halves when, on every seed's mean over
the splits, its mean selected-pair oracle gap is >= 1.5x random's and the evaluation model trained
on its pairs is at least as accurate on held-out pairs as random's (same features, same split,
half and seed, equal labels). ``--rule accuracy-first`` (default): among passing candidates, the
most accurate reward model (absolute held-out accuracy; candidates within one standard error of
the best are tied, and then the larger worst-seed gap ratio, then the fewest changes from the
reference, win: :func:`choose`). ``delta-first``: the largest accuracy gain over random with the
same features (the first run's rule; it favours weak features, against which random is weak
too). If none passes, the best worst-seed accuracy difference among those meeting the gap half
of the bar. The chosen setting is then reported on the *confirmation* halves, with the other
rule's pick, the reference settings, the previously documented tuned settings and MaxMin (all
labels) beside it, the rank agreement between tuning and confirmation halves over the whole
grid, and (``--validate-seed``) on fresh splits of another split seed where every half is held
out. ``--resume`` reuses the runs of an earlier results.json.

It also measures, per run, what the selected pairs are made of (oracle-gap quantiles, share of
pairs whose two responses come from the same model family, from the strong tier vs the weak tier,
whether the chosen response is the longer one) and breaks the evaluation model's held-out accuracy
down by pair type (strong vs weak model tier; longer-is-better vs shorter-is-better), to answer why
an acquisition rule can lose accuracy against random.

Features are loaded once from the feature cache (``auf simulate``/``auf bench`` fill it) and
snapshotted under ``--work`` so that every run of the experiment sees the same matrices.
Outputs in ``--out``: ``results.json`` (every run's final point and analysis, the per-setting
protocol reports, the choice) and ``results.md`` (the tables).

    nice -n 5 .venv/bin/python benchmarks/bench_defaults.py \\
        --pool ../shared/data/sim_pool_dev.parquet --out bench-out/defaults --jobs 2
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import re
import subprocess
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

ENCODERS = ("minilm", "text-stats", "minilm+text-stats")
LRS = (5e-5, 3e-4, 1e-3, 3e-3)
PASSES = (1, 3)
MIN_STEPS = (0,)
BASE = {"n_heads": 20, "anchor_lambda0": 1.0}
# The anchor term is lambda_t * mean over a head's parameters of (w - w_init)^2: with ~70k
# parameters per head, lambda_0 = 1 (the reference) barely moves Adam's steps; 1e4 and 1e5 are
# where it starts to hold the heads back (1e6 stops learning on the dev pool).
STAGE2 = ({"n_heads": 8}, {"n_heads": 40}, {"anchor_lambda0": 1e4}, {"anchor_lambda0": 1e5})
ACTIVE = ("drts", "deltaucb")
REFERENCE_VARIANT = "minilm lr=5e-05 passes=1 heads=20 anchor=1"
DOC_TUNED_VARIANT = "minilm+text-stats lr=0.001 passes=1 heads=20 anchor=1"
STRONG_TIER = 0.5  # a model whose mean oracle score (over the half) is at least this is "strong"
GAP_FACTOR = 1.5


# --------------------------------------------------------------------------------------------------
# settings


def variant_name(v: dict[str, Any]) -> str:
    # min_steps appears only when set, so the names of earlier results (--resume) stay valid.
    floor = f" min-steps={v['min_steps']}" if v.get("min_steps") else ""
    return (
        f"{v['encoder']} lr={v['lr']:g} passes={v['train_passes']}{floor} "
        f"heads={v['n_heads']} anchor={v['anchor_lambda0']:g}"
    )


def make_variant(encoder: str, lr: float, passes: int, **extra: Any) -> dict[str, Any]:
    v = {"encoder": encoder, "lr": lr, "train_passes": passes, "min_steps": 0, **BASE, **extra}
    v["name"] = variant_name(v)
    return v


def stage1_variants(
    encoders: Sequence[str],
    lrs: Sequence[float],
    passes: Sequence[int],
    min_steps: Sequence[int] = MIN_STEPS,
):
    return [
        make_variant(e, lr, p, min_steps=m)
        for e in encoders
        for lr in lrs
        for p in passes
        for m in min_steps
    ]


def stage2_variants(parents: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for parent in parents:
        for change in STAGE2:
            base = {k: parent[k] for k in ("encoder", "lr", "train_passes")}
            extra = {k: parent[k] for k in BASE}
            extra["min_steps"] = parent.get("min_steps", 0)
            extra.update(change)
            v = make_variant(base["encoder"], base["lr"], base["train_passes"], **extra)
            if v["name"] != parent["name"]:
                out.append(v)
    return out


def run_settings(v: dict[str, Any] | None, args: argparse.Namespace) -> dict[str, Any]:
    settings: dict[str, Any] = {
        "batch_size": args.batch,
        "heldout_fraction": args.heldout,
        "eval_every": 10_000,  # evaluate once, after the last round
    }
    if v is not None:
        settings["train_passes"] = v["train_passes"]
        settings["ensemble"] = {
            "lr": v["lr"],
            "n_heads": v["n_heads"],
            "anchor_lambda0": v["anchor_lambda0"],
            "min_steps": v.get("min_steps", 0),
        }
    return settings


# --------------------------------------------------------------------------------------------------
# what the selected pairs are made of

_FAMILIES = (
    ("fusechat", "fusechat"),
    ("claude", "claude"),
    ("gpt", "openai"),
    ("davinci", "openai"),
    ("mixtral", "mistral"),
    ("mistral", "mistral"),
    ("gemma", "gemma"),
    ("phi-", "phi"),
    ("vicuna", "vicuna"),
    ("alpaca", "alpaca"),
    ("llama", "llama"),
    ("wizardlm", "wizardlm"),
    ("hermes", "hermes"),
    ("minotaur", "minotaur"),
    ("chatglm", "chatglm"),
    ("pythia", "pythia"),
    ("falcon", "falcon"),
    ("qwen", "qwen"),
)


def model_family(name: str) -> str:
    """A model's family from its name (first matching keyword; else the name up to a digit)."""
    low = name.lower()
    for key, family in _FAMILIES:
        if key in low:
            return family
    return re.split(r"[-_\d]", low, maxsplit=1)[0] or low


def _quantiles(x: np.ndarray) -> dict[str, float | None]:
    if x.size == 0:
        return dict.fromkeys(("p10", "p25", "p50", "p75", "p90"))
    q = np.quantile(x, [0.1, 0.25, 0.5, 0.75, 0.9])
    return {k: float(v) for k, v in zip(("p10", "p25", "p50", "p75", "p90"), q, strict=True)}


def _acc(d: np.ndarray) -> float | None:
    if d.size == 0:
        return None
    return float(((d > 0) + 0.5 * (d == 0)).mean())


def pair_analysis(result: Any) -> dict[str, Any]:
    """Composition of a run's selected pairs and its held-out accuracy by pair type."""
    from auf_assets.core.simulation import heldout_pairs, split_prompts

    pool = result.pool
    frame = pool.frame
    models = np.asarray(frame["model"].to_list(), dtype=object)
    lengths = frame["response"].str.len_chars().to_numpy()
    scores = pool.scores
    means: dict[str, float] = {}
    for m in set(models.tolist()):
        means[m] = float(scores[models == m].mean())
    strong = np.array([means[m] >= STRONG_TIER for m in models])
    family = np.array([model_family(m) for m in models], dtype=object)
    row_of = {c: i for i, c in enumerate(frame["completion_id"].to_list())}

    pairs = result.pairs.filter(~result.pairs["tie"])
    c = np.array([row_of[x] for x in pairs["chosen_completion_id"].to_list()], dtype=np.int64)
    r = np.array([row_of[x] for x in pairs["rejected_completion_id"].to_list()], dtype=np.int64)
    gap = scores[c] - scores[r] if c.size else np.empty(0)
    n = max(int(c.size), 1)
    rejected_counts: dict[str, int] = {}
    for m in models[r]:
        rejected_counts[m] = rejected_counts.get(m, 0) + 1
    out: dict[str, Any] = {
        "pairs": int(c.size),
        "ties": int(result.pairs["tie"].sum()),
        "gap": _quantiles(gap),
        "share_gap_ge_0.9": float((gap >= 0.9).sum() / n),
        "share_gap_lt_0.1": float((gap < 0.1).sum() / n),
        "share_same_family": float((family[c] == family[r]).sum() / n),
        "share_same_model": float((models[c] == models[r]).sum() / n),
        "share_strong_vs_weak": float((strong[c] & ~strong[r]).sum() / n),
        "share_weak_vs_weak": float((~strong[c] & ~strong[r]).sum() / n),
        "share_strong_vs_strong": float((strong[c] & strong[r]).sum() / n),
        "share_weak_over_strong": float((~strong[c] & strong[r]).sum() / n),
        "share_chosen_longer": float((lengths[c] > lengths[r]).sum() / n),
        "share_top_rejected_model": float(max(rejected_counts.values()) / n)
        if rejected_counts
        else None,
        "distinct_rejected_models": len(rejected_counts),
        "strong_models": sorted(m for m, v in means.items() if v >= STRONG_TIER),
    }

    # Held-out accuracy of the evaluation model, by the kind of held-out pair.
    mu_rows = result.heldout.get("mu")
    if mu_rows is not None:
        cfg = result.config
        _, held = split_prompts(pool.n_prompts, cfg.heldout_fraction, cfg.seed)
        ri, rj, sign = heldout_pairs(pool, held, scores, cfg.gap_threshold)
        mu = np.zeros(pool.n_responses)
        mu[result.heldout["rows"]] = mu_rows
        d = (mu[ri] - mu[rj]) * sign
        better = np.where(sign > 0, ri, rj)
        worse = np.where(sign > 0, rj, ri)
        kinds = {
            "all": np.ones(ri.size, dtype=bool),
            "strong_vs_weak": strong[better] & ~strong[worse],
            "weak_vs_weak": ~strong[better] & ~strong[worse],
            "strong_vs_strong": strong[better] & strong[worse],
            "weak_over_strong": ~strong[better] & strong[worse],
            "longer_is_better": lengths[better] > lengths[worse],
            "shorter_is_better": lengths[better] < lengths[worse],
        }
        out["heldout_accuracy"] = {k: _acc(d[m]) for k, m in kinds.items()}
        out["heldout_pairs"] = {k: int(m.sum()) for k, m in kinds.items()}
    return out


# --------------------------------------------------------------------------------------------------
# workers

_CACHE: dict[str, Any] = {}


def _init_worker() -> None:
    import torch

    torch.set_num_threads(1)
    torch.set_num_interop_threads(1)


def _job(job: dict[str, Any]) -> dict[str, Any]:
    from auf_assets.core.simulation import SimulationConfig, load_pool, simulate
    from auf_assets.sim_bench_runs import split_pool

    if "pool" not in _CACHE:
        _CACHE["pool"] = load_pool(job["pool"])
    key = f"features:{job['encoder']}"
    if key not in _CACHE:
        _CACHE[key] = np.load(job["features"], mmap_mode="r")
    pool = split_pool(_CACHE["pool"], job["split"])
    config = SimulationConfig.from_dict(
        {**job["run"], "method": job["method"], "seed": job["seed"]}
    )
    t0 = time.perf_counter()
    result = simulate(pool, _CACHE[key], config)
    return {
        "variant": job["variant"],
        "encoder": job["encoder"],
        "method": job["method"],
        "seed": job["seed"],
        "split": job["split"]["index"],
        "half": job["split"]["half"],
        "split_seed": job["split"]["seed"],
        "curve": [result.curve[-1]],
        "info": result.info,
        "analysis": pair_analysis(result),
        "seconds": round(time.perf_counter() - t0, 3),
    }


def run_jobs(jobs: list[dict[str, Any]], workers: int, label: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    every = max(1, len(jobs) // 10)
    print(f"[{label}] {len(jobs)} runs on {workers} worker(s)", flush=True)
    if workers <= 1:
        _init_worker()
        for j in jobs:
            out.append(_job(j))
            if len(out) % every == 0:
                print(f"  {len(out)}/{len(jobs)} {time.perf_counter() - t0:.0f}s", flush=True)
        return out
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker) as ex:
        futures = [ex.submit(_job, j) for j in jobs]
        for fut in as_completed(futures):
            out.append(fut.result())
            if len(out) % every == 0:
                el = time.perf_counter() - t0
                eta = el / len(out) * (len(jobs) - len(out))
                print(f"  {len(out)}/{len(jobs)} {el:.0f}s (eta {eta:.0f}s)", flush=True)
    print(f"[{label}] done in {time.perf_counter() - t0:.0f}s", flush=True)
    return out


# --------------------------------------------------------------------------------------------------
# scoring


def report_for(runs: list[dict[str, Any]], variant: str, encoder: str) -> dict[str, Any]:
    """protocol_report of one setting: its drts/deltaucb runs plus random/maxmin of its encoder."""
    from auf_assets.sim_bench_report import protocol_report

    sel = [
        r
        for r in runs
        if r["variant"] == variant
        or (r["variant"] == f"baseline:{encoder}" and r["method"] in ("random", "maxmin"))
    ]
    return protocol_report(sel, gap_factor=GAP_FACTOR)


#: How a candidate is ranked on the tuning halves. Both first require the bar (every seed-mean:
#: gap ratio >= 1.5 and accuracy >= random's); ``accuracy-first`` then prefers the most accurate
#: reward model (absolute held-out accuracy), ``delta-first`` the largest accuracy gain over
#: random with the same features (the rule of the first run; it favours weak features, against
#: which random is weak too).
RULES = ("accuracy-first", "delta-first")


def choice_key(entry: dict[str, Any], rule: str = "accuracy-first") -> tuple:
    """Sort key (larger = better) of a protocol_report entry on the tuning halves."""
    bar = entry["bar"]
    ratio = bar["min_gap_ratio"] if bar["min_gap_ratio"] is not None else -math.inf
    mind = bar["min_delta_accuracy"] if bar["min_delta_accuracy"] is not None else -math.inf
    mean_d = entry["delta_accuracy"][0] if entry["delta_accuracy"][0] is not None else -math.inf
    acc = entry["accuracy"][0] if entry["accuracy"][0] is not None else -math.inf
    if bar["passes"]:
        return (2, acc, ratio) if rule == "accuracy-first" else (2, mean_d, ratio)
    if ratio >= GAP_FACTOR:
        return (1, mind, ratio)
    return (0, ratio, mind)


_REFERENCE_SETTINGS = {
    "encoder": "minilm",
    "lr": 5e-5,
    "train_passes": 1,
    "n_heads": 20,
    "anchor_lambda0": 1.0,
}


def changes_from_reference(settings: dict[str, Any]) -> int:
    return sum(settings.get(k) != v for k, v in _REFERENCE_SETTINGS.items())


def choose(candidates: list[dict[str, Any]], rule: str) -> dict[str, Any]:
    """The candidate ``rule`` picks (``candidates`` sorted by :func:`choice_key`).

    ``accuracy-first``: among the candidates that pass the bar on the tuning halves, those whose
    tuning accuracy is within one standard error (of the best one's paired accuracy difference
    over its runs) of the best are tied; of these the one with the largest worst-seed gap ratio
    (to 0.01: more margin on the gap half of the bar) wins, then the one that changes fewest
    settings from the reference. ``delta-first``: the first by :func:`choice_key`.
    """
    top = candidates[0]
    if rule != "accuracy-first" or not top["tune"]["bar"]["passes"]:
        return top
    passing = [c for c in candidates if c["tune"]["bar"]["passes"]]
    best_acc = top["tune"]["accuracy"][0]
    std = top["tune"]["delta_accuracy"][1] or 0.0
    se = std / math.sqrt(max(top["tune"]["runs"], 1))
    near = [c for c in passing if c["tune"]["accuracy"][0] >= best_acc - se]
    return max(
        near,
        key=lambda c: (
            round(c["tune"]["bar"]["min_gap_ratio"], 2),
            -changes_from_reference(c["settings"]),
            c["tune"]["accuracy"][0],
        ),
    )


def _ranks(x: Sequence[float]) -> np.ndarray:
    arr = np.asarray(x, dtype=float)
    order = arr.argsort(kind="stable")
    ranks = np.empty(len(arr))
    ranks[order] = np.arange(len(arr))
    return ranks


def spearman(a: Sequence[float], b: Sequence[float]) -> float | None:
    if len(a) < 3:
        return None
    ra, rb = _ranks(a), _ranks(b)
    if ra.std() == 0 or rb.std() == 0:
        return None
    return float(np.corrcoef(ra, rb)[0, 1])


def mean_analysis(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean of the numeric analysis fields over runs (nested dicts averaged per key)."""

    def avg(values: list[Any]) -> Any:
        if values and isinstance(values[0], dict):
            keys = values[0].keys()
            return {k: avg([v.get(k) for v in values]) for k in keys}
        nums = [float(v) for v in values if isinstance(v, (int, float)) and v is not None]
        return float(np.mean(nums)) if nums else None

    fields = [
        k
        for k in runs[0]["analysis"]
        if k not in ("strong_models",) and runs[0]["analysis"][k] is not None
    ]
    return {k: avg([r["analysis"][k] for r in runs]) for k in fields}


def run_key(r: dict[str, Any]) -> tuple:
    return (r["variant"], r["method"], r["seed"], r["split_seed"], r["split"], r["half"])


# --------------------------------------------------------------------------------------------------
# report


def _f(x: float | None, digits: int = 3, sign: bool = False) -> str:
    if x is None:
        return "—"
    return f"{x:+.{digits}f}" if sign else f"{x:.{digits}f}"


def _pm(ms: Sequence[float | None], digits: int = 3, sign: bool = False) -> str:
    m, s = ms
    if m is None:
        return "—"
    return f"{_f(m, digits, sign)} ± {s:.{digits}f}"


def _entry_cells(e: dict[str, Any]) -> str:
    bar = e["bar"]
    verdict = "pass" if bar["passes"] else "fail"
    return (
        f"{_pm(e['accuracy'])} | {_pm(e['delta_accuracy'], sign=True)} | {_pm(e['gap'])} | "
        f"{_f(e['gap_ratio'], 2)}x | {_f(bar['min_gap_ratio'], 2)}x, "
        f"{_f(bar['min_delta_accuracy'], 3, True)} | {verdict}"
    )


_HEAD = (
    "| half | setting | method | accuracy | Δ accuracy | gap | ratio | min over seeds | bar |",
    "|---|---|---|---|---|---|---|---|---|",
)


def write_markdown(result: dict[str, Any], path: Path) -> str:
    p = result["protocol"]
    lines = [
        "# Defaults chosen by the split protocol",
        "",
        f"Pool `{result['pool']}`; split `{p['kind']}` x {p['n_splits']} (seed {p['seed']}, "
        f"models stratified by mean oracle score); run seeds {result['seeds']}; B = "
        f"{result['batch']} prompts per round, {int(result['heldout'] * 100)}% of each half's "
        "prompts held out for the evaluation model; one pair (2 labels) per train prompt. "
        f"{result['n_runs']} runs ({result['n_new_runs']} simulated by this invocation, "
        f"{result['seconds']:.0f} s).",
        "",
        "Columns: accuracy = held-out pairwise accuracy of the evaluation model trained on the "
        "selected pairs; Δ = paired difference to random with the same features (same split, "
        "half and seed, equal labels); gap = mean oracle gap of the selected pairs; ratio = "
        "gap / random's; min over seeds = the worst seed-mean (over splits) of ratio and Δ; "
        f"bar = every seed-mean has ratio >= {GAP_FACTOR} and Δ >= 0. Mean ± std over "
        "splits x seeds.",
        "",
        "## The choice (made on the tuning halves) and its confirmation",
        "",
    ]
    for rule, ch in result["choices"].items():
        mark = " (the recommendation)" if rule == result["rule"] else ""
        lines.append(f"- rule `{rule}`{mark}: **{ch['method']}** with **{ch['variant']}**")
    lines += ["", *_HEAD]
    for label, key in (
        (f"chosen ({result['rule']})", "choice"),
        ("chosen (other rule)", "other_choice"),
        ("reference", "reference"),
        ("doc-tuned", "doc_tuned"),
    ):
        for row in result["headline"][key]:
            lines.append(
                f"| {row['half']} | {label}: {row['variant']} | {row['method']} | "
                f"{_entry_cells(row['entry'])} |"
            )
    lines += [
        "",
        "Random and MaxMin (reads every response's oracle score) with the chosen features:",
        "",
        "| half | method | labels | accuracy | gap |",
        "|---|---|---|---|---|",
    ]
    for row in result["headline"]["baselines"]:
        e = row["entry"]
        lines.append(
            f"| {row['half']} | {row['method']} | {_f(e['labels'], 0)} | {_pm(e['accuracy'])} | "
            f"{_pm(e['gap'])} |"
        )
    st = result["headline"]["stretch"]
    inv = 1 / st["labels_vs_maxmin"] if st["labels_vs_maxmin"] else None
    lines += [
        "",
        f"Stretch (confirm halves): the chosen method's gap is {_f(st['gap_vs_maxmin'], 2)}x "
        f"MaxMin's at {_f(st['labels_vs_maxmin'], 3)} of its labels (1/{_f(inv, 1)}).",
        "",
        "Per seed on the confirmation halves (mean over splits):",
        "",
        "| seed | accuracy | random accuracy | Δ | gap ratio |",
        "|---|---|---|---|---|",
    ]
    for seed, v in result["headline"]["confirm_per_seed"].items():
        lines.append(
            f"| {seed} | {_f(v['accuracy'])} | {_f(v['random_accuracy'])} | "
            f"{_f(v['delta_accuracy'], 3, True)} | {_f(v['gap_ratio'], 2)}x |"
        )
    val = result.get("validation")
    if val:
        lines += [
            "",
            f"## Validation on fresh splits (split seed {val['split_seed']}, both halves held out)",
            "",
            f"The same pool re-split with another seed ({val['n_splits']} splits, both halves "
            "of each used for evaluation, nothing chosen on them): "
            f"{val['n_runs']} runs. Per seed = mean over the {2 * val['n_splits']} halves.",
            "",
            "| setting | method | accuracy | Δ accuracy | gap | ratio | min over seeds | bar |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for row in val["rows"]:
            e = row["entry"]
            if row["variant"].startswith("baseline:"):
                cells = (
                    f"{_pm(e['accuracy'])} | — | {_pm(e['gap'])} | {_f(e['gap_ratio'], 2)}x | — | —"
                )
            else:
                cells = _entry_cells(e)
            lines.append(f"| {row['variant']} | {row['method']} | {cells} |")
    agree = result["agreement"]
    lines += [
        "",
        "## Does the tuning half predict the confirmation half?",
        "",
        f"Over all {agree['n']} (setting, method) candidates, Spearman rank correlation between "
        f"tuning and confirmation halves: gap ratio {_f(agree['gap_ratio'], 2)}, Δ accuracy "
        f"{_f(agree['delta_accuracy'], 2)}, absolute accuracy {_f(agree['accuracy'], 2)}; the "
        f"bar holds on both halves for {agree['pass_both']}, on tuning only for "
        f"{agree['pass_tune_only']}, on confirmation only for {agree['pass_confirm_only']}.",
        "",
        f"## Every candidate (sorted by the `{result['rule']}` rule on the tuning halves)",
        "",
        "| # | setting | method | tune: accuracy | tune: Δ accuracy | tune: ratio | tune: min "
        "ratio, min Δ | tune bar | confirm: accuracy | confirm: Δ accuracy | confirm: ratio | "
        "confirm bar |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    ch = result["choice"]
    for i, row in enumerate(result["candidates"], 1):
        t, c = row["tune"], row["confirm"]
        chosen = row["variant"] == ch["variant"] and row["method"] == ch["method"]
        name = f"**{row['variant']}** (chosen)" if chosen else row["variant"]
        lines.append(
            f"| {i} | {name} | {row['method']} | {_pm(t['accuracy'])} | "
            f"{_pm(t['delta_accuracy'], sign=True)} | {_f(t['gap_ratio'], 2)}x | "
            f"{_f(t['bar']['min_gap_ratio'], 2)}x, {_f(t['bar']['min_delta_accuracy'], 3, True)} "
            f"| {'pass' if t['bar']['passes'] else 'fail'} | {_pm(c['accuracy'])} | "
            f"{_pm(c['delta_accuracy'], sign=True)} | {_f(c['gap_ratio'], 2)}x | "
            f"{'pass' if c['bar']['passes'] else 'fail'} |"
        )
    lines += [
        "",
        "Random's accuracy per encoder (the reference every Δ is taken against):",
        "",
        "| encoder | tune | confirm | MaxMin tune | MaxMin confirm |",
        "|---|---|---|---|---|",
    ]
    for enc, v in result["random_by_encoder"].items():
        lines.append(
            f"| {enc} | {_pm(v['tune']['accuracy'])} | {_pm(v['confirm']['accuracy'])} | "
            f"{_pm(v['maxmin_tune']['accuracy'])} | {_pm(v['maxmin_confirm']['accuracy'])} |"
        )

    lines += [
        "",
        "## What the selected pairs are made of (mean over runs)",
        "",
        "Tiers: a model is *strong* when its mean oracle score over the half is >= "
        f"{STRONG_TIER} (on the dev pool: the FuseChat models, 1 or 2 per half). Families by name "
        "(FuseChat-*, claude-*, gpt/davinci = openai, ...).",
        "",
        "| half | setting | method | Δ accuracy | gap p10 / p50 / p90 | gap >= 0.9 | gap < 0.1 | "
        "same family | strong vs weak | weak vs weak | chosen longer | top rejected model | "
        "ties |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in result["composition"]:
        a = row["analysis"]
        g = a["gap"]
        lines.append(
            f"| {row['half']} | {row['variant']} | {row['method']} | "
            f"{_f(row['delta_accuracy'], 3, True)} | "
            f"{_f(g['p10'], 2)} / {_f(g['p50'], 2)} / {_f(g['p90'], 2)} | "
            f"{_f(a['share_gap_ge_0.9'], 2)} | {_f(a['share_gap_lt_0.1'], 2)} | "
            f"{_f(a['share_same_family'], 2)} | {_f(a['share_strong_vs_weak'], 2)} | "
            f"{_f(a['share_weak_vs_weak'], 2)} | {_f(a['share_chosen_longer'], 2)} | "
            f"{_f(a['share_top_rejected_model'], 2)} | {_f(a['ties'], 1)} |"
        )
    lines += [
        "",
        "Held-out accuracy of the evaluation model by pair type (share of held-out pairs of each "
        "type per half in the header):",
        "",
    ]
    kinds = (
        "all",
        "strong_vs_weak",
        "weak_vs_weak",
        "longer_is_better",
        "shorter_is_better",
    )
    for half in ("tune", "confirm"):
        rows_h = [r for r in result["composition"] if r["half"] == half]
        if not rows_h:
            continue
        hp = rows_h[0]["analysis"]["heldout_pairs"]
        total = hp["all"] or 1
        head = " | ".join(f"{k} ({hp[k] / total:.0%})" for k in kinds)
        lines += [f"| half | setting | method | {head} |", "|---|---|---|" + "---|" * len(kinds)]
        for row in rows_h:
            acc = row["analysis"]["heldout_accuracy"]
            lines.append(
                f"| {half} | {row['variant']} | {row['method']} | "
                + " | ".join(_f(acc[k]) for k in kinds)
                + " |"
            )
        lines.append("")
    text = "\n".join(lines) + "\n"
    path.write_text(text)
    return text


# --------------------------------------------------------------------------------------------------
# main


class Runner:
    """Feature snapshots, job construction and the runs done so far (resumable)."""

    def __init__(self, args: argparse.Namespace, pool: Any, out: Path):
        self.args = args
        self.pool = pool
        self.work = Path(args.work) if args.work else out / ".features"
        self.work.mkdir(parents=True, exist_ok=True)
        self.feature_keys: dict[str, str] = {}
        self.feature_files: dict[str, str] = {}
        self.runs: list[dict[str, Any]] = []
        self.done: set[tuple] = set()
        self.new_runs = 0

    def features(self, encoders: Sequence[str]) -> None:
        from auf_assets.pool_features import pool_features

        for enc in encoders:
            if enc in self.feature_files:
                continue
            path = self.work / f"{enc.replace('+', '_')}.npy"
            feats = pool_features(self.pool, enc, allow_compute=True, log=print)
            np.save(path, np.ascontiguousarray(feats.matrix, dtype=np.float32))
            self.feature_keys[enc] = feats.key
            self.feature_files[enc] = str(path)

    def add_previous(self, runs: list[dict[str, Any]]) -> None:
        for r in runs:
            if run_key(r) not in self.done:
                self.done.add(run_key(r))
                self.runs.append(r)

    def jobs_for(
        self,
        variant: dict[str, Any] | None,
        encoder: str,
        methods: Sequence[str],
        split_seed: int,
    ) -> list[dict[str, Any]]:
        from auf_assets.core.simulation import SPLIT_HALVES

        args = self.args
        name = variant["name"] if variant else f"baseline:{encoder}"
        jobs = []
        for k in range(args.splits):
            for h in SPLIT_HALVES:
                place = {"kind": args.split, "seed": split_seed, "index": k, "half": h}
                for m in methods:
                    for s in args.seeds:
                        key = (name, m, s, split_seed, k, h)
                        if key in self.done:
                            continue
                        jobs.append(
                            {
                                "pool": args.pool,
                                "features": self.feature_files.get(encoder, ""),
                                "encoder": encoder,
                                "variant": name,
                                "run": run_settings(variant, args),
                                "method": m,
                                "seed": s,
                                "split": place,
                            }
                        )
        return jobs

    def run(self, jobs: list[dict[str, Any]], label: str) -> None:
        if not jobs:
            print(f"[{label}] nothing to run (all done before)", flush=True)
            return
        self.features(sorted({j["encoder"] for j in jobs}))
        for j in jobs:
            j["features"] = self.feature_files[j["encoder"]]
        done = run_jobs(sorted(jobs, key=lambda j: j["encoder"]), self.args.jobs, label)
        for r in done:
            self.done.add(run_key(r))
        self.runs += done
        self.new_runs += len(done)

    def cleanup(self) -> None:
        for f in self.work.glob("*.npy"):
            f.unlink()


def _candidates(runs, variants, rule: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    reports = {v["name"]: report_for(runs, v["name"], v["encoder"]) for v in variants}
    out = []
    for v in variants:
        for m in ACTIVE:
            rep = reports[v["name"]]
            out.append(
                {
                    "variant": v["name"],
                    "method": m,
                    "settings": {k: v[k] for k in v if k != "name"},
                    "key": choice_key(rep["tune"][m], rule),
                    "tune": rep["tune"][m],
                    "confirm": rep["confirm"][m],
                }
            )
    out.sort(key=lambda c: c["key"], reverse=True)
    return out, reports


def _parents(candidates: list[dict[str, Any]], by_name, top: int) -> list[dict[str, Any]]:
    parents: list[dict[str, Any]] = []
    for c in candidates:
        v = by_name[c["variant"]]
        is_stage1 = (
            v["anchor_lambda0"] == BASE["anchor_lambda0"] and v["n_heads"] == BASE["n_heads"]
        )
        if is_stage1 and v["name"] not in {p["name"] for p in parents}:
            parents.append(v)
        if len(parents) >= top:
            break
    return parents


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pool", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--work", default=None, help="feature snapshots (default: <out>/.features)")
    ap.add_argument("--split", choices=("prompts", "models", "both"), default="both")
    ap.add_argument("--splits", type=int, default=2)
    ap.add_argument("--split-seed", type=int, default=0)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--heldout", type=float, default=0.25)
    ap.add_argument("--encoders", nargs="+", default=list(ENCODERS))
    ap.add_argument("--lrs", type=float, nargs="+", default=list(LRS))
    ap.add_argument("--passes", type=int, nargs="+", default=list(PASSES))
    ap.add_argument(
        "--min-steps",
        type=int,
        nargs="+",
        default=list(MIN_STEPS),
        help="floors on the training steps per round (EnsembleConfig.min_steps)",
    )
    ap.add_argument("--stage2-top", type=int, default=2, help="stage-1 settings to refine")
    ap.add_argument("--rule", choices=RULES, default="accuracy-first", help="the choice rule")
    ap.add_argument(
        "--validate-seed",
        type=int,
        default=None,
        help="also run the chosen settings (both rules), the reference and the doc-tuned "
        "settings on fresh splits of this split seed, all halves held out",
    )
    ap.add_argument(
        "--also-validate",
        nargs="*",
        default=[],
        help="more 'SETTING|METHOD' candidates for the validation, e.g. "
        "'text-stats lr=5e-05 passes=3 heads=20 anchor=1|deltaucb'",
    )
    ap.add_argument(
        "--resume",
        default=None,
        help="a results.json of an earlier invocation: its runs are reused, only missing runs "
        "are simulated",
    )
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--dry-run", action="store_true", help="print the run counts and exit")
    args = ap.parse_args(argv)

    from auf_assets.core.simulation import SPLIT_HALVES, load_pool, protocol_splits
    from auf_assets.sim_bench_report import protocol_report

    started = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    pool = load_pool(args.pool)
    splits = protocol_splits(pool, args.split, args.splits, seed=args.split_seed)
    runner = Runner(args, pool, out)
    previous_variants: dict[str, dict[str, Any]] = {}
    if args.resume:
        previous = json.loads(Path(args.resume).read_text())
        old_seed = previous["protocol"]["seed"]
        prev_runs = previous["runs"] + previous.get("validation", {}).get("runs", [])
        for r in prev_runs:
            r.setdefault("split_seed", old_seed)
        runner.add_previous(prev_runs)
        runner.feature_keys.update(previous.get("features", {}))
        for c in previous.get("candidates", []):
            previous_variants[c["variant"]] = {**c["settings"], "name": c["variant"]}
        for v in previous.get("variants", []):
            previous_variants[v["name"]] = v
        print(f"resuming: {len(runner.runs)} runs from {args.resume}", flush=True)

    stage1 = stage1_variants(args.encoders, args.lrs, args.passes, args.min_steps)
    jobs = [
        j
        for e in args.encoders
        for j in runner.jobs_for(None, e, ("random", "maxmin"), args.split_seed)
    ]
    for v in stage1:
        jobs += runner.jobs_for(v, v["encoder"], ACTIVE, args.split_seed)
    print(
        f"pool {pool.name}: {pool.n_prompts} prompts; {len(splits)} {args.split} splits; "
        f"stage 1: {len(stage1)} settings, {len(jobs)} runs to simulate",
        flush=True,
    )
    if args.dry_run:
        return 0
    runner.run(jobs, "stage 1")

    def main_runs() -> list[dict[str, Any]]:
        return [r for r in runner.runs if r["split_seed"] == args.split_seed]

    by_name = {v["name"]: v for v in stage1}
    ranked1, _ = _candidates(main_runs(), stage1, args.rule)
    parents = _parents(ranked1, by_name, args.stage2_top)
    stage2 = stage2_variants(parents)
    print("stage 2 around: " + "; ".join(p["name"] for p in parents), flush=True)
    # Earlier stage-2 settings (e.g. around the other rule's parents) are kept as candidates.
    seen = {v["name"] for v in stage1 + stage2}
    done_variants = {r["variant"] for r in main_runs()}
    for name, v in previous_variants.items():
        if name not in seen and name in done_variants:
            stage2.append(v)
            seen.add(name)
    jobs2 = [j for v in stage2 for j in runner.jobs_for(v, v["encoder"], ACTIVE, args.split_seed)]
    runner.run(jobs2, "stage 2")
    variants = stage1 + stage2
    by_name = {v["name"]: v for v in variants}

    # ---- choose on the tuning halves, report on the confirmation halves
    runs = main_runs()
    choices = {}
    for rule in RULES:
        ranked, _ = _candidates(runs, variants, rule)
        b = choose(ranked, rule)
        choices[rule] = {
            "variant": b["variant"],
            "method": b["method"],
            "settings": b["settings"],
            "tier": b["key"][0],
        }
    candidates, reports = _candidates(runs, variants, args.rule)
    best = choose(candidates, args.rule)
    other = next(r for r in RULES if r != args.rule)

    def rows(variant: str, methods: Sequence[str]) -> list[dict[str, Any]]:
        if variant not in reports:
            return []
        return [
            {"half": h, "variant": variant, "method": m, "entry": reports[variant][h][m]}
            for h in SPLIT_HALVES
            for m in methods
        ]

    chosen_rep = reports[best["variant"]]
    baselines = [
        {"half": h, "method": m, "entry": chosen_rep[h][m]}
        for h in SPLIT_HALVES
        for m in ("random", "maxmin")
    ]
    conf = chosen_rep["confirm"]
    per_seed = {}
    for seed, v in conf[best["method"]]["per_seed"].items():
        per_seed[seed] = {**v, "random_accuracy": conf["random"]["per_seed"][seed]["accuracy"]}
    stretch = {
        "gap_vs_maxmin": conf[best["method"]]["gap"][0] / conf["maxmin"]["gap"][0]
        if conf["maxmin"]["gap"][0]
        else None,
        "labels_vs_maxmin": conf[best["method"]]["labels"] / conf["maxmin"]["labels"]
        if conf["maxmin"]["labels"]
        else None,
    }
    headline = {
        "choice": rows(best["variant"], (best["method"],)),
        "other_choice": rows(choices[other]["variant"], (choices[other]["method"],)),
        "reference": rows(REFERENCE_VARIANT, ACTIVE),
        "doc_tuned": rows(DOC_TUNED_VARIANT, ACTIVE),
        "baselines": baselines,
        "stretch": stretch,
        "confirm_per_seed": per_seed,
    }

    def col(half: str, field: str) -> list[float]:
        out_ = []
        for c in candidates:
            v = c[half][field]
            v = v[0] if isinstance(v, (list, tuple)) else v
            out_.append(v if v is not None else 0.0)
        return out_

    pt = [c["tune"]["bar"]["passes"] for c in candidates]
    pc = [c["confirm"]["bar"]["passes"] for c in candidates]
    agreement = {
        "n": len(candidates),
        "gap_ratio": spearman(col("tune", "gap_ratio"), col("confirm", "gap_ratio")),
        "delta_accuracy": spearman(col("tune", "delta_accuracy"), col("confirm", "delta_accuracy")),
        "accuracy": spearman(col("tune", "accuracy"), col("confirm", "accuracy")),
        "pass_both": int(sum(a and b for a, b in zip(pt, pc, strict=True))),
        "pass_tune_only": int(sum(a and not b for a, b in zip(pt, pc, strict=True))),
        "pass_confirm_only": int(sum(b and not a for a, b in zip(pt, pc, strict=True))),
    }
    random_by_encoder = {}
    for e in args.encoders:
        any_v = next(v["name"] for v in variants if v["encoder"] == e)
        rep = reports[any_v]
        random_by_encoder[e] = {
            "tune": rep["tune"]["random"],
            "confirm": rep["confirm"]["random"],
            "maxmin_tune": rep["tune"]["maxmin"],
            "maxmin_confirm": rep["confirm"]["maxmin"],
        }

    # ---- validation on fresh splits: nothing is chosen there, both halves are held out
    validation: dict[str, Any] = {}
    if args.validate_seed is not None and args.validate_seed != args.split_seed:
        picks = [(choices[r]["variant"], choices[r]["method"]) for r in RULES]
        picks += [tuple(x.split("|", 1)) for x in args.also_validate]
        picks += [(REFERENCE_VARIANT, m) for m in ACTIVE] + [(DOC_TUNED_VARIANT, m) for m in ACTIVE]
        picks = [p for p in dict.fromkeys(picks) if p[0] in by_name]
        encs = sorted({by_name[v]["encoder"] for v, _ in picks})
        vjobs = [
            j
            for e in encs
            for j in runner.jobs_for(None, e, ("random", "maxmin"), args.validate_seed)
        ]
        for v, m in picks:
            vjobs += runner.jobs_for(by_name[v], by_name[v]["encoder"], (m,), args.validate_seed)
        runner.run(vjobs, "validation")
        vruns = [r for r in runner.runs if r["split_seed"] == args.validate_seed]
        # Both halves are held-out data here: report each (split, half) as one "split".
        pooled = [
            {k: val for k, val in r.items() if k not in ("half", "split")}
            | {"split": f"{r['split']}-{r['half']}"}
            for r in vruns
        ]
        vrows = []
        for v, m in picks:
            enc = by_name[v]["encoder"]
            sel = [
                r
                for r in pooled
                if (r["variant"] == v and r["method"] == m)
                or (r["variant"] == f"baseline:{enc}" and r["method"] == "random")
            ]
            rep = protocol_report(sel, gap_factor=GAP_FACTOR)["all"]
            vrows.append({"variant": v, "method": m, "entry": rep[m]})
        for e in encs:
            sel = [r for r in pooled if r["variant"] == f"baseline:{e}"]
            rep = protocol_report(sel, gap_factor=GAP_FACTOR)["all"]
            for m in ("random", "maxmin"):
                vrows.append({"variant": f"baseline:{e}", "method": m, "entry": rep[m]})
        validation = {
            "split_seed": args.validate_seed,
            "n_splits": args.splits,
            "n_runs": len(vruns),
            "splits": [
                s.to_dict()
                for s in protocol_splits(pool, args.split, args.splits, seed=args.validate_seed)
            ],
            "rows": vrows,
            "runs": vruns,
        }

    # ---- composition of the selected pairs
    shown = [(f"baseline:{e}", "random", e) for e in args.encoders]
    for v in variants:
        same = all(
            v.get(k, 0) == best["settings"].get(k, 0)
            for k in ("lr", "train_passes", "n_heads", "min_steps")
        )
        same = same and v["anchor_lambda0"] == best["settings"]["anchor_lambda0"]
        if same or v["name"] in (REFERENCE_VARIANT, DOC_TUNED_VARIANT, choices[other]["variant"]):
            for m in ACTIVE:
                shown.append((v["name"], m, v["encoder"]))
    for ts in (
        "text-stats lr=0.001 passes=1 heads=20 anchor=1",
        "text-stats lr=0.003 passes=3 heads=20 anchor=1",
    ):
        if ts in by_name and all(s[0] != ts for s in shown):
            for m in ACTIVE:
                shown.append((ts, m, "text-stats"))
    composition = []
    for half in SPLIT_HALVES:
        for name, m, e in shown:
            rs = [
                r for r in runs if r["variant"] == name and r["method"] == m and r["half"] == half
            ]
            if not rs:
                continue
            delta = None if m == "random" else reports[name][half][m]["delta_accuracy"][0]
            composition.append(
                {
                    "half": half,
                    "variant": name,
                    "method": m,
                    "encoder": e,
                    "delta_accuracy": delta,
                    "analysis": mean_analysis(rs),
                }
            )
    composition.sort(key=lambda r: (r["half"] != "tune", r["encoder"], r["variant"], r["method"]))

    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=False
        ).stdout.strip()
    except OSError:
        commit = ""
    result = {
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "commit": commit,
        "command": " ".join(sys.argv),
        "pool": args.pool,
        "pool_summary": pool.summary(),
        "protocol": {
            "kind": args.split,
            "n_splits": len(splits),
            "seed": args.split_seed,
            "splits": [s.to_dict() for s in splits],
        },
        "seeds": args.seeds,
        "batch": args.batch,
        "heldout": args.heldout,
        "features": runner.feature_keys,
        "feature_scaling_version": _scaling_version(),
        "grid": {
            "encoders": args.encoders,
            "lrs": args.lrs,
            "passes": args.passes,
            "base": BASE,
            "stage2_changes": list(STAGE2),
            "stage2_parents": [p["name"] for p in parents],
        },
        "variants": variants,
        "rule": args.rule,
        "choice": choices[args.rule],
        "choices": choices,
        "headline": headline,
        "validation": validation,
        "agreement": agreement,
        "candidates": candidates,
        "random_by_encoder": random_by_encoder,
        "composition": composition,
        "n_runs": len(runs) + len(validation.get("runs", [])),
        "n_new_runs": runner.new_runs,
        "seconds": round(time.perf_counter() - started, 1),
        "runs": runs,
    }
    (out / "results.json").write_text(json.dumps(result, indent=1, default=_json_default))
    text = write_markdown(result, out / "results.md")
    print(text)
    print(f"wrote {out / 'results.json'} and {out / 'results.md'}")
    runner.cleanup()
    return 0


def _scaling_version() -> int | None:
    try:
        from auf_assets.core.features import SCALING_VERSION
    except ImportError:
        return None
    return int(SCALING_VERSION)


def _json_default(value: Any) -> Any:
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    if isinstance(value, np.bool_):
        return bool(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


if __name__ == "__main__":
    raise SystemExit(main())
