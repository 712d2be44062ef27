"""The DPO value experiment: does active selection give better DPO training data per label?

On a simulated-oracle pool (one row per response with an ``oracle_score``), for every seed:

1. **Select** pairs with each method through :func:`auf_assets.core.simulation.simulate` (by
   default the tuned simulator settings of docs/benchmarks.md: ``minilm+text-stats`` features,
   running-ensemble lr 1e-3, beta 1, B = 32, 25% of the prompts held out) and keep the first
   ``--pairs`` non-tied pairs in selection order (the same count for every method; with one seed
   all methods visit the train prompts in the same order).
2. **Train** on them a LoRA DPO policy (:func:`auf_assets.core.training.train_policy`) and a LoRA
   reward model (:func:`~auf_assets.core.training.train_reward_model`) from the same base model.
3. **Evaluate** both on the simulator's held-out prompts: ``--eval-pairs`` response pairs drawn
   (by seed) from all held-out pairs whose oracle scores differ by at least ``--gap-threshold``,
   chosen = the higher oracle score, the same pairs for every method of a seed. The policy's
   implicit reward ``beta * (log pi - log pi_ref)`` (the reference is the base, computed once per
   seed) and the reward model's score must rank chosen above rejected; ties count half. Each
   held-out response is scored once per model (fp32, batches sorted by length).

Every text (training and evaluation) is cut to fit ``--max-length`` tokens with the chat template
before it reaches TRL: the prompt to at most half of it, the response to what is left. TRL's DPO
trainer would truncate longer pairs itself, but its reward trainer *drops* any pair longer than
``max_length`` (``training.fit_rows`` drops them up front); cutting first keeps the two models on
the same pairs and the same text.

Writes ``results.json`` (settings, every run's numbers and curves, the aggregate) and
``results.md`` (the table) to ``--out``; each finished run is also kept under ``runs/`` and
reused with ``--resume``. Usage (caches under ``$AUF_HOME``)::

    AUF_HOME=/tmp/dpo-value-home nice -n 10 .venv/bin/python benchmarks/bench_dpo_value.py \\
        --pool PATH/sim_pool_dev.parquet --out bench-out/dpo-value --seeds 0 1 2 --pairs 64
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")

import numpy as np  # noqa: E402

DEFAULT_METHODS = ("random", "deltaucb", "maxmin")
_EVAL_STREAM = 7_001


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# -- texts --------------------------------------------------------------------------------------


def _cut(tokenizer, text: str, n_tokens: int) -> str:
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if len(ids) <= n_tokens:
        return text
    return tokenizer.decode(ids[: max(n_tokens, 1)], skip_special_tokens=True)


class Fitter:
    """Cuts (prompt, response) texts so that the whole chat fits ``max_length`` tokens."""

    def __init__(self, tokenizer, max_length: int):
        self.tok = tokenizer
        self.max_length = max_length
        self._prompts: dict[str, tuple[str, int]] = {}
        self._cache: dict[tuple[str, str], str] = {}
        self.cut_responses = 0
        self.cut_prompts = 0

    def prompt(self, text: str) -> tuple[str, int]:
        """(cut prompt, tokens of the templated prompt with the generation header)."""
        if text not in self._prompts:
            cut = _cut(self.tok, text, self.max_length // 2)
            self.cut_prompts += cut != text
            head = self.tok.apply_chat_template(
                [{"role": "user", "content": cut}], add_generation_prompt=True, tokenize=False
            )
            self._prompts[text] = (cut, len(self.tok(head, add_special_tokens=False)["input_ids"]))
        return self._prompts[text]

    def response(self, prompt: str, response: str) -> str:
        key = (prompt, response)
        if key in self._cache:
            return self._cache[key]
        cut_prompt, head = self.prompt(prompt)
        budget = self.max_length - head - 4  # <|im_end|>, newline and decode round-trip slack
        cut = _cut(self.tok, response, budget)
        for _ in range(4):  # a decode/encode round trip can add a token or two
            full = self.tok.apply_chat_template(
                [{"role": "user", "content": cut_prompt}, {"role": "assistant", "content": cut}],
                tokenize=False,
            )
            excess = len(self.tok(full, add_special_tokens=False)["input_ids"]) - self.max_length
            if excess <= 0:
                break
            budget -= excess + 2
            cut = _cut(self.tok, response, budget)
        self.cut_responses += cut != response
        self._cache[key] = cut
        return cut

    def row(self, prompt: str, chosen: str, rejected: str) -> dict[str, Any]:
        return {
            "prompt": [{"role": "user", "content": self.prompt(prompt)[0]}],
            "chosen": [{"role": "assistant", "content": self.response(prompt, chosen)}],
            "rejected": [{"role": "assistant", "content": self.response(prompt, rejected)}],
        }


# -- selection and evaluation pairs ---------------------------------------------------------------


def select(pool, features, method: str, seed: int, args) -> tuple[Any, dict[str, Any]]:
    """Run the simulator and return (its non-tied pairs in selection order, run info)."""
    from auf_assets.core.ensemble import EnsembleConfig
    from auf_assets.core.simulation import SimulationConfig, simulate

    config = SimulationConfig(
        method=method,
        seed=seed,
        batch_size=args.sim_batch,
        heldout_fraction=args.heldout,
        acquisition_width=args.sim_beta,
        gap_threshold=args.gap_threshold,
        eval_every=10_000,  # only the final evaluation point (cheap, kept for reference)
        ensemble=replace(EnsembleConfig(), lr=args.sim_lr),
    )
    result = simulate(pool, features, config)
    pairs = result.pairs.filter(~result.pairs["tie"])
    final = result.curve[-1]
    info = {
        "selected_pairs": result.pairs.height,
        "ties": int(result.pairs["tie"].sum()),
        "labels_all": result.info["labels"],
        "sim_accuracy_all_pairs": final["accuracy"],
        "sim_gap_all_pairs": final["mean_gap"],
        "sim_seconds": result.info["wall_seconds"],
    }
    return pairs, info


def eval_pairs(pool, seed: int, args) -> tuple[list[int], list[int]]:
    """(chosen rows, rejected rows) of the seed's held-out evaluation pairs (pool rows)."""
    from auf_assets.core.simulation import heldout_pairs, split_prompts

    _, heldout = split_prompts(pool.n_prompts, args.heldout, seed)
    ri, rj, sign = heldout_pairs(pool, heldout, pool.scores, args.gap_threshold)
    rng = np.random.default_rng([seed, _EVAL_STREAM])
    take = np.sort(rng.choice(len(ri), size=min(args.eval_pairs, len(ri)), replace=False))
    chosen = np.where(sign[take] > 0, ri[take], rj[take])
    rejected = np.where(sign[take] > 0, rj[take], ri[take])
    return chosen.tolist(), rejected.tolist()


# -- one seed -------------------------------------------------------------------------------------


class EvalSet:
    """The held-out pairs as unique (prompt, response) conversations, sorted by length so that
    batches pad little; every response is scored once per model and looked up per pair."""

    def __init__(self, fit: Fitter, prompts: list[str], texts: list[str], chosen, rejected):
        rows = sorted(set(chosen) | set(rejected))
        convs = {}
        for u in rows:
            row = fit.row(prompts[u], texts[u], texts[u])
            convs[u] = (row["prompt"], row["chosen"])
        self.order = sorted(
            rows, key=lambda u: len(convs[u][0][0]["content"] + convs[u][1][0]["content"])
        )
        self.prompts = [convs[u][0] for u in self.order]
        self.responses = [convs[u][1] for u in self.order]
        position = {u: i for i, u in enumerate(self.order)}
        self.ci = np.array([position[u] for u in chosen], dtype=np.int64)
        self.ri = np.array([position[u] for u in rejected], dtype=np.int64)

    def __len__(self) -> int:
        return len(self.ci)

    def logps(self, model, tokenizer, max_length: int) -> np.ndarray:
        from auf_assets.core.training_evaluation import response_logps

        return response_logps(model, tokenizer, self.prompts, self.responses, max_length=max_length)

    def rewards(self, model, tokenizer, max_length: int) -> np.ndarray:
        from auf_assets.core.training_evaluation import reward_scores

        convs = [p + r for p, r in zip(self.prompts, self.responses, strict=True)]
        return reward_scores(model, tokenizer, convs, max_length=max_length)

    def margins(self, values: np.ndarray) -> np.ndarray:
        """chosen - rejected per pair, from per-response values."""
        return values[self.ci] - values[self.ri]


def _accuracy(margin: np.ndarray) -> float:
    return float(np.mean((margin > 0) + 0.5 * (margin == 0)))


def _curve_summary(curves: dict[str, list[float]], keys: tuple[str, ...]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in keys:
        values = curves.get(key) or []
        if values:
            k = max(1, len(values) // 4)
            out[key] = {
                "first": values[0],
                "last": values[-1],
                "mean_first_quarter": float(np.mean(values[:k])),
                "mean_last_quarter": float(np.mean(values[-k:])),
            }
    return out


def run_seed(seed: int, pool, features, base_dir: Path, args, out: Path) -> list[dict[str, Any]]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from auf_assets.core.training import train_policy, train_reward_model, training_settings
    from auf_assets.core.training_evaluation import load_policy, load_reward_model

    runs_dir = out / "runs"
    runs_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    fit = Fitter(tokenizer, args.max_length)
    frame = pool.frame
    prompt_of = dict(zip(frame["prompt_id"].to_list(), frame["prompt"].to_list(), strict=True))
    text_of = dict(zip(frame["completion_id"].to_list(), frame["response"].to_list(), strict=True))
    texts = frame["response"].to_list()
    prompts = frame["prompt"].to_list()
    scores = pool.scores

    # evaluation pairs and the reference log-probabilities (the base model), once per seed
    ec, er = eval_pairs(pool, seed, args)
    evals = EvalSet(fit, prompts, texts, ec, er)
    heldout_ids = {frame["prompt_id"][c] for c in ec}
    lengths = np.array([len(texts[c]) - len(texts[r]) for c, r in zip(ec, er, strict=True)])
    ref_file = runs_dir / f"reference_seed{seed}.json"
    t0 = time.perf_counter()
    if args.resume and ref_file.is_file():
        ref = json.loads(ref_file.read_text())
    else:
        base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32).eval()
        ref = {
            "order": evals.order,
            "logps": evals.logps(base, tokenizer, args.max_length).tolist(),
        }
        ref_file.write_text(json.dumps(ref))
        del base
    assert ref["order"] == evals.order, "cached reference log-probs are for other pairs"
    ref_margin = evals.margins(np.array(ref["logps"]))
    eval_info = {
        "pairs": len(evals),
        "responses": len(evals.order),
        "prompts": len(heldout_ids),
        "mean_oracle_gap": float(np.mean(scores[ec] - scores[er])),
        "longer_wins_accuracy": _accuracy(lengths.astype(float)),
        "base_logp_accuracy": _accuracy(ref_margin),
        "reference_seconds": round(time.perf_counter() - t0, 1),
    }
    log(
        f"seed {seed}: {len(evals)} held-out pairs over {len(heldout_ids)} prompts "
        f"(mean oracle gap {eval_info['mean_oracle_gap']:.3f}; longer-wins "
        f"{eval_info['longer_wins_accuracy']:.3f}, base log-prob "
        f"{eval_info['base_logp_accuracy']:.3f}); reference log-probs "
        f"{eval_info['reference_seconds']}s"
    )

    results = []
    for method in args.methods:
        run_file = runs_dir / f"{method}_seed{seed}.json"
        if args.resume and run_file.is_file():
            log(f"seed {seed} {method}: reusing {run_file}")
            results.append(json.loads(run_file.read_text()))
            continue
        pairs, sel_info = select(pool, features, method, seed, args)
        if pairs.height < args.pairs:
            raise SystemExit(
                f"{method} seed {seed}: only {pairs.height} non-tied pairs, need {args.pairs}"
            )
        train = pairs.head(args.pairs)
        assert not (set(train["prompt_id"].to_list()) & heldout_ids), "held-out prompt in train"
        gap = (train["chosen_score"] - train["rejected_score"]).to_numpy()
        rows = [
            fit.row(prompt_of[p], text_of[c], text_of[r])
            for p, c, r in zip(
                train["prompt_id"].to_list(),
                train["chosen_completion_id"].to_list(),
                train["rejected_completion_id"].to_list(),
                strict=True,
            )
        ]
        log(
            f"seed {seed} {method}: {len(rows)} training pairs (mean oracle gap "
            f"{gap.mean():.3f}, chosen {train['chosen_score'].mean():.3f}; selection "
            f"{sel_info['sim_seconds']:.1f}s)"
        )
        run: dict[str, Any] = {
            "method": method,
            "seed": seed,
            "train_pairs": len(rows),
            "train_gap": float(gap.mean()),
            "train_chosen_score": float(train["chosen_score"].mean()),
            "train_rejected_score": float(train["rejected_score"].mean()),
            "train_labels": int(train["labels"].sum()),
            "train_rounds": int(train["round"].max()),
            "selection": sel_info,
            "eval": eval_info,
        }

        # the DPO policy
        settings = training_settings(
            "policy",
            "cpu",
            learning_rate=args.policy_lr,
            dpo_beta=args.dpo_beta,
            epochs=args.policy_epochs,
            batch_size=args.batch_size,
            lora_r=args.lora_r,
            lora_alpha=2 * args.lora_r,
            max_length=args.max_length,
            seed=seed,
            bf16=args.bf16,
        )
        ckpt = out / "checkpoints" / f"{method}_seed{seed}"
        t0 = time.perf_counter()
        report = train_policy(
            base_dir, rows, settings, ckpt / "policy", log=lambda m: log(f"  policy: {m}")
        )
        call_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        tok, model = load_policy(base_dir, ckpt / "policy", device="cpu")
        model = model.merge_and_unload()  # the reference is cached: score the merged weights
        policy_margin = evals.margins(evals.logps(model, tok, args.max_length))
        del model
        margin = args.dpo_beta * (policy_margin - ref_margin)
        run["policy"] = {
            "settings": asdict(settings),
            "accuracy": _accuracy(margin),
            "mean_margin": float(margin.mean()),
            "train_seconds": round(report.seconds, 1),
            "call_seconds": round(call_s, 1),
            "eval_seconds": round(time.perf_counter() - t0, 1),
            "steps": report.steps,
            "peak_rss_mb": round(report.peak_rss_mb),
            "curves": _curve_summary(
                report.curves, ("loss", "rewards/accuracies", "rewards/margins", "grad_norm")
            ),
        }
        log(
            f"seed {seed} {method}: policy accuracy {run['policy']['accuracy']:.3f} "
            f"(train {report.seconds:.0f}s, {report.steps} steps, eval "
            f"{run['policy']['eval_seconds']}s)"
        )

        # the reward model
        rm_settings = training_settings(
            "reward_model",
            "cpu",
            learning_rate=args.rm_lr,
            epochs=args.rm_epochs,
            batch_size=args.batch_size,
            lora_r=args.lora_r,
            lora_alpha=2 * args.lora_r,
            max_length=args.max_length,
            seed=seed,
            bf16=args.bf16,
        )
        t0 = time.perf_counter()
        rm_report = train_reward_model(
            base_dir, rows, rm_settings, ckpt / "reward_model", log=lambda m: log(f"  rm: {m}")
        )
        call_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        tok, rm = load_reward_model(base_dir, ckpt / "reward_model", device="cpu")
        rm = rm.merge_and_unload()
        rm_margin = evals.margins(evals.rewards(rm, tok, args.max_length))
        del rm
        run["reward_model"] = {
            "settings": asdict(rm_settings),
            "accuracy": _accuracy(rm_margin),
            "mean_margin": float(rm_margin.mean()),
            "train_seconds": round(rm_report.seconds, 1),
            "call_seconds": round(call_s, 1),
            "eval_seconds": round(time.perf_counter() - t0, 1),
            "steps": rm_report.steps,
            "peak_rss_mb": round(rm_report.peak_rss_mb),
            "curves": _curve_summary(rm_report.curves, ("loss", "accuracy", "margin", "grad_norm")),
        }
        log(
            f"seed {seed} {method}: reward-model accuracy "
            f"{run['reward_model']['accuracy']:.3f} (train {rm_report.seconds:.0f}s, "
            f"{rm_report.steps} steps, eval {run['reward_model']['eval_seconds']}s)"
        )
        run_file.write_text(json.dumps(run, indent=1))
        results.append(run)
    log(
        f"seed {seed}: {fit.cut_responses} responses and {fit.cut_prompts} prompts cut to fit "
        f"{args.max_length} tokens"
    )
    return results


# -- the report -----------------------------------------------------------------------------------


def _stats(values: list[float]) -> dict[str, float]:
    a = np.asarray(values, dtype=float)
    return {
        "mean": float(a.mean()),
        "std": float(a.std(ddof=1)) if len(a) > 1 else 0.0,
        "min": float(a.min()),
        "max": float(a.max()),
        "n": len(a),
    }


METRICS = {
    "policy_accuracy": lambda r: r["policy"]["accuracy"],
    "rm_accuracy": lambda r: r["reward_model"]["accuracy"],
    "train_gap": lambda r: r["train_gap"],
    "train_chosen_score": lambda r: r["train_chosen_score"],
    "train_labels": lambda r: r["train_labels"],
    "policy_train_seconds": lambda r: r["policy"]["train_seconds"],
    "rm_train_seconds": lambda r: r["reward_model"]["train_seconds"],
    "policy_loss_last_quarter": lambda r: r["policy"]["curves"]["loss"]["mean_last_quarter"],
    "rm_loss_last_quarter": lambda r: r["reward_model"]["curves"]["loss"]["mean_last_quarter"],
}


def aggregate(runs: list[dict[str, Any]], methods: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    by = {(r["method"], r["seed"]): r for r in runs}
    seeds = sorted({r["seed"] for r in runs})
    for m in methods:
        mine = [by[(m, s)] for s in seeds if (m, s) in by]
        if not mine:
            continue
        out[m] = {k: _stats([f(r) for r in mine]) for k, f in METRICS.items()}
        if m != "random":
            for key in ("policy_accuracy", "rm_accuracy"):
                diffs = [
                    METRICS[key](by[(m, s)]) - METRICS[key](by[("random", s)])
                    for s in seeds
                    if (m, s) in by and ("random", s) in by
                ]
                if diffs:
                    out[m][f"delta_{key}_vs_random"] = {
                        **_stats(diffs),
                        "ahead": int(sum(d > 0 for d in diffs)),
                    }
    return out


def _pm(s: dict[str, float], digits: int = 3) -> str:
    mean, std, lo, hi = (f"{s[k]:.{digits}f}" for k in ("mean", "std", "min", "max"))
    return f"{mean} ± {std} ({lo}-{hi})"


def markdown(agg: dict[str, Any], runs: list[dict[str, Any]], methods: list[str]) -> str:
    lines = [
        "| method | labels (train pairs) | mean oracle gap | DPO implicit-reward accuracy | "
        "reward-model accuracy | DPO train s/run | RM train s/run |",
        "|---|---|---|---|---|---|---|",
    ]
    for m in methods:
        if m not in agg:
            continue
        a = agg[m]
        lines.append(
            f"| {m} | {a['train_labels']['mean']:.0f} | {_pm(a['train_gap'])} | "
            f"{_pm(a['policy_accuracy'])} | {_pm(a['rm_accuracy'])} | "
            f"{_pm(a['policy_train_seconds'], 0)} | {_pm(a['rm_train_seconds'], 0)} |"
        )
    lines += [
        "",
        "| method | Δ DPO accuracy vs random (ahead) | Δ RM accuracy vs random (ahead) |",
        "|---|---|---|",
    ]
    for m in methods:
        a = agg.get(m, {})
        if "delta_policy_accuracy_vs_random" not in a:
            continue
        dp, dr = a["delta_policy_accuracy_vs_random"], a["delta_rm_accuracy_vs_random"]
        lines.append(
            f"| {m} | {dp['mean']:+.3f} ± {dp['std']:.3f} ({dp['ahead']}/{dp['n']}) | "
            f"{dr['mean']:+.3f} ± {dr['std']:.3f} ({dr['ahead']}/{dr['n']}) |"
        )
    lines += [
        "",
        "| seed | method | gap | DPO acc. | RM acc. | DPO loss first→last quarter | "
        "RM loss first→last quarter | DPO s | RM s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in sorted(runs, key=lambda r: (r["seed"], methods.index(r["method"]))):
        pl_, rl_ = r["policy"]["curves"]["loss"], r["reward_model"]["curves"]["loss"]
        lines.append(
            f"| {r['seed']} | {r['method']} | {r['train_gap']:.3f} | "
            f"{r['policy']['accuracy']:.3f} | {r['reward_model']['accuracy']:.3f} | "
            f"{pl_['mean_first_quarter']:.3f}→{pl_['mean_last_quarter']:.3f} | "
            f"{rl_['mean_first_quarter']:.3f}→{rl_['mean_last_quarter']:.3f} | "
            f"{r['policy']['train_seconds']:.0f} | {r['reward_model']['train_seconds']:.0f} |"
        )
    evals = {r["seed"]: r["eval"] for r in runs}
    lines += [
        "",
        "| seed | eval pairs | prompts | mean oracle gap | longer-wins acc. |",
        "|---|---|---|---|---|",
    ]
    for s, e in sorted(evals.items()):
        lines.append(
            f"| {s} | {e['pairs']} | {e['prompts']} | {e['mean_oracle_gap']:.3f} | "
            f"{e['longer_wins_accuracy']:.3f} |"
        )
    return "\n".join(lines) + "\n"


# -- main -----------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pool", required=True, help="simulation pool (parquet/csv/jsonl)")
    p.add_argument("--out", default="bench-out/dpo-value", help="output folder")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--methods", nargs="+", default=list(DEFAULT_METHODS))
    p.add_argument("--pairs", type=int, default=64, help="training pairs per run (first N)")
    p.add_argument("--eval-pairs", type=int, default=96, help="held-out pairs per seed")
    p.add_argument("--max-length", type=int, default=160, help="tokens per prompt + response")
    p.add_argument("--resume", action="store_true", help="reuse finished runs under OUT/runs")
    sel = p.add_argument_group("selection (the simulator; defaults: the tuned settings)")
    sel.add_argument("--encoder", default="minilm+text-stats")
    sel.add_argument("--sim-lr", type=float, default=1e-3, help="running ensemble lr")
    sel.add_argument("--sim-beta", type=float, default=1.0, help="acquisition width")
    sel.add_argument("--sim-batch", type=int, default=32, help="prompts per round")
    sel.add_argument("--heldout", type=float, default=0.25)
    sel.add_argument("--gap-threshold", type=float, default=0.1)
    tr = p.add_argument_group("training (LoRA on the base model, CPU)")
    tr.add_argument("--base-model", default="smollm2-135m-instruct")
    tr.add_argument("--policy-lr", type=float, default=5e-4)
    tr.add_argument("--policy-epochs", type=float, default=1.0)
    tr.add_argument("--dpo-beta", type=float, default=0.1)
    tr.add_argument("--rm-lr", type=float, default=1e-3)
    tr.add_argument("--rm-epochs", type=float, default=1.0)
    tr.add_argument("--batch-size", type=int, default=4)
    tr.add_argument("--lora-r", type=int, default=8, help="LoRA rank (alpha = 2 r)")
    tr.add_argument(
        "--bf16",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="bf16 autocast in training (default on; evaluation always runs in fp32)",
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    import torch

    from auf_assets.core.simulation import load_pool
    from auf_assets.pool_features import pool_features
    from resources import home
    from resources.model_loading import local_model_dir

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    log(f"torch {torch.__version__}, {torch.get_num_threads()} threads; AUF_HOME {home.auf_home()}")
    pool = load_pool(args.pool)
    feats = pool_features(pool, args.encoder, device="cpu", log=log)
    log(f"pool {pool.name}: {pool.n_prompts} prompts, {pool.n_responses} responses; {feats.key}")
    base_dir = local_model_dir(args.base_model, home.models_dir())
    log(f"base model {base_dir}")

    runs: list[dict[str, Any]] = []
    for seed in args.seeds:
        runs += run_seed(seed, pool, feats.matrix, base_dir, args, out)
        agg = aggregate(runs, args.methods)
        table = markdown(agg, runs, args.methods)
        summary = {
            "args": vars(args),
            "base_model": str(base_dir),
            "features": feats.key,
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "wall_seconds": round(time.perf_counter() - started, 1),
            "aggregate": agg,
            "runs": runs,
        }
        (out / "results.json").write_text(json.dumps(summary, indent=1, default=str))
        (out / "results.md").write_text(table)
        log(f"after seed {seed} ({time.perf_counter() - started:.0f}s):\n{table}")
    log(f"done in {time.perf_counter() - started:.0f}s; wrote {out / 'results.json'}")


if __name__ == "__main__":
    main()
