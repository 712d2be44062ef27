"""Judge confidence routing on a simulated-oracle pool: is it worth sending the pairs the judge is
least sure of to people? (docs/benchmarks.md)

1. **Select**: a simulated active run (`core.simulation.simulate`, the default preset and its
   method, as ``auf simulate`` without flags); the first ``--pairs`` selected pairs in selection
   order, skipping oracle ties (equal oracle scores: no truth to measure against).
2. **Judge**: the rubric judge (`resources.judge.RubricJudge`, from the ``AUF_JUDGE_*``
   environment; by default the packaged SmolLM2-135M-Instruct on the CPU, torch threads sized by
   `core.devices.choose_device`) rates both responses of every pair on the four aspects. Results
   are appended per response to ``--out``/judge_cache.jsonl, so a rerun judges only what is
   missing; ``--judge-minutes`` stops judging in time and analyses the whole pairs judged so far.
3. **Verdicts and confidence** as the `llm_judge` label source makes them
   (`core.verdicts.verdicts_from_scores` with `core.agreement.win_probability`).
4. **People = the oracle**: per share of pairs sent to people and per seed (``--seeds``), a draw
   of ``--sample-share`` of the judged pairs, of which ``round(share x n)`` go to people by the
   judge's confidence (`core.routing.route_to_people`, that budget, no calibration share) or at
   random (`core.routing.route_at_random`). Final label accuracy vs the oracle; a judge tie or
   failure left with the judge counts as wrong. The ideal router (the judge's errors first) is
   the ceiling. Also: raw accuracy, ties, failures, Cohen's kappa, calibration bins, per-aspect
   accuracy and the length bias, all against the oracle.

Writes ``results.json`` and ``results.md`` to ``--out``. Usage (from the repository root)::

    PYTHONPATH=$PWD nice -n 5 .venv/bin/python benchmarks/bench_judge_routing.py \\
        --pool ../shared/data/sim_pool_dev.parquet --out bench-out/judge_routing --pairs 140

A stronger judge: the same command with ``AUF_JUDGE_BACKEND=openai AUF_JUDGE_BASE_URL=...
AUF_JUDGE_MODEL=...`` (a vLLM server) or ``AUF_JUDGE_BACKEND=vllm AUF_JUDGE_MODEL=<repo id>``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import numpy as np  # noqa: E402
import polars as pl  # noqa: E402

DEFAULT_SHARES = (0.0, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0)
CACHE_FILE = "judge_cache.jsonl"
_ORIENTATION_STREAM = 9_101  # which response of a pair is shown as "a"
_SAMPLE_STREAM = 9_102  # which judged pairs a seed draws
_ROUTE_STREAM = 9_103  # the routing's tie-breaks and random picks


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# -- 1. the selected pairs ------------------------------------------------------------------------


def selected_pairs(pool, args) -> tuple[pl.DataFrame, dict[str, Any]]:
    """The simulated run's selected pairs in selection order, with texts, and its summary."""
    from auf_assets.core.presets import DEFAULT_PRESET, get_preset, run_settings
    from auf_assets.core.simulation import SimulationConfig, simulate
    from auf_assets.pool_features import pool_features

    preset = get_preset(DEFAULT_PRESET)
    config = SimulationConfig.from_dict(
        {
            **run_settings(DEFAULT_PRESET, max_rounds=args.rounds or None),
            "method": preset.method,
            "seed": args.sim_seed,
        }
    )
    features = pool_features(pool, preset.encoder, device="cpu", log=log)
    result = simulate(pool, features.matrix, config)
    texts = pool.frame.select("completion_id", "prompt", "response")
    pairs = (
        result.pairs.with_row_index("order")
        .join(
            texts.rename({"completion_id": "chosen_completion_id", "response": "chosen_text"}),
            on="chosen_completion_id",
        )
        .join(
            texts.drop("prompt").rename(
                {"completion_id": "rejected_completion_id", "response": "rejected_text"}
            ),
            on="rejected_completion_id",
        )
        .sort("order")
    )
    info = {
        "method": config.method,
        "preset": DEFAULT_PRESET,
        "encoder": preset.encoder,
        "seed": config.seed,
        "batch_size": config.batch_size,
        "rounds": result.info["rounds"],
        "selected_pairs": result.pairs.height,
        "oracle_ties": int(result.pairs["tie"].sum()),
        "sim_seconds": result.info["wall_seconds"],
    }
    return pairs, info


# -- 2. the judge, with a file cache --------------------------------------------------------------


def load_cache(path: Path) -> dict[str, dict[str, Any]]:
    lines = path.read_text().splitlines() if path.exists() else []
    return {entry["key"]: entry for entry in map(json.loads, filter(str.strip, lines))}


def judge_responses(
    judge, items: pl.DataFrame, cache_path: Path, chunk: int, deadline: float
) -> tuple[dict[str, Any], int]:
    """Per completion id, its cached per-aspect results; the missing ones are judged now, in
    order, ``chunk`` responses a call, each call appended to the cache file, until the clock
    passes ``deadline`` (``time.perf_counter``). Responses not judged by then are left out.
    Also how many responses were judged now."""
    import torch

    from auf_assets.core.seeding import stable_hash

    cache = load_cache(cache_path)
    keys = [
        stable_hash(judge.name, c, p, r)
        for c, p, r in zip(items["completion_id"], items["prompt"], items["response"], strict=True)
    ]
    missing = [i for i, k in enumerate(keys) if k not in cache]
    log(f"{items.height} responses: {items.height - len(missing)} cached, {len(missing)} to judge")
    judged_now = 0
    for start in range(0, len(missing), chunk):
        if time.perf_counter() > deadline:
            log(f"judge time budget spent: {len(missing) - start} responses left unjudged")
            break
        part = missing[start : start + chunk]
        t0 = time.perf_counter()
        _, rated = judge.overall(
            [items["prompt"][i] for i in part], [items["response"][i] for i in part]
        )
        seconds = time.perf_counter() - t0
        per_item: dict[int, list[dict[str, Any]]] = {}
        for r in rated:
            fields = ("score", "failed", "digit_probs", "method")
            per_item.setdefault(r.item, []).append(
                {"aspect": r.aspect, "attempts": r.attempts}
                | {name: getattr(r.result, name) for name in fields}
            )
        with cache_path.open("a") as f:
            for j, i in enumerate(part):
                entry = {
                    "key": keys[i],
                    "judge": judge.name,
                    "completion_id": items["completion_id"][i],
                    "aspects": per_item[j],
                    "seconds": seconds / len(part),
                }
                cache[keys[i]] = entry
                f.write(json.dumps(entry) + "\n")
        done = start + len(part)
        judged_now += len(part)
        log(
            f"judged {done}/{len(missing)} responses: {seconds / (len(part) * 4):.2f} s a call "
            f"({torch.get_num_threads()} torch threads)"
        )
    judged = {items["completion_id"][i]: cache[k] for i, k in enumerate(keys) if k in cache}
    return judged, judged_now


def _interleave(first: pl.Series, second: pl.Series) -> list:
    return [v for pair in zip(first, second, strict=True) for v in pair]


# -- 3. verdicts ----------------------------------------------------------------------------------


def judged_pairs(pairs: pl.DataFrame, judged: dict[str, Any], tie_margin: float) -> pl.DataFrame:
    """One row per pair: the oracle's and the judge's label ("a"/"b"; the judge also "tie" or
    "failed"), the judge's confidence (NaN: none), the texts' lengths, per-aspect labels."""
    from auf_assets.core.agreement import win_probability
    from auf_assets.core.judging import ASPECTS, decide_preference, overall_score
    from auf_assets.core.verdicts import verdicts_from_scores

    # Which response is shown as "a" is a fixed coin per pair, so the oracle says "a" about half
    # the time (with the chosen one always "a", kappa would be 0 by construction).
    swap = np.random.default_rng(_ORIENTATION_STREAM).random(pairs.height) < 0.5
    chosen, rejected = pairs["chosen_completion_id"], pairs["rejected_completion_id"]
    first = [r if s else c for c, r, s in zip(chosen, rejected, swap, strict=True)]
    second = [c if s else r for c, r, s in zip(chosen, rejected, swap, strict=True)]
    frame = pl.DataFrame(
        {
            "pair_id": [f"{a}|{b}" for a, b in zip(first, second, strict=True)],
            "round_id": [str(r) for r in pairs["round"]],
            "prompt_id": pairs["prompt_id"],
            "completion_a": first,
            "completion_b": second,
        }
    )
    aspect_scores = {}
    for c, entry in judged.items():
        by_name = {a["aspect"]: a["score"] for a in entry["aspects"] if not a["failed"]}
        aspect_scores[c] = np.array([by_name.get(name, np.nan) for name in ASPECTS], dtype=float)
    overall = dict(zip(judged, overall_score(np.stack(list(aspect_scores.values()))), strict=True))
    distributions = {
        c: np.array([a["digit_probs"] for a in judged[c]["aspects"] if not a["failed"]])
        for c in judged
    }
    verdicts = verdicts_from_scores(
        frame,
        overall,
        tie_margin=tie_margin,
        labeller="bench",
        source="llm_judge",
        labelled_at=None,
        a_beats_b=lambda x, y: win_probability(distributions[x], distributions[y]),
    )
    length = {
        c: len(t)
        for c, t in zip(
            [*chosen, *rejected], [*pairs["chosen_text"], *pairs["rejected_text"]], strict=True
        )
    }
    out = pl.DataFrame(
        {
            "round": pairs["round"],
            "oracle": np.where(swap, "b", "a"),
            "judge": verdicts["preference"],
            "confidence": verdicts["confidence"].fill_null(np.nan),
            "len_a": [length[c] for c in first],
            "len_b": [length[c] for c in second],
        }
    )
    for k, name in enumerate(ASPECTS):
        labels = []
        for a, b in zip(first, second, strict=True):
            sa, sb = aspect_scores[a][k], aspect_scores[b][k]
            bad = math.isnan(sa) or math.isnan(sb)
            labels.append("failed" if bad else decide_preference(sa, sb, tie_margin=tie_margin))
        out = out.with_columns(pl.Series(f"aspect_{name}", labels))
    return out


# -- 4. the analysis ------------------------------------------------------------------------------


def _spread(values) -> dict[str, float]:
    v = np.asarray(values, dtype=float)
    return {
        "mean": round(float(v.mean()), 4),
        "std": round(float(v.std(ddof=1)) if v.size > 1 else 0.0, 4),
        "min": round(float(v.min()), 4),
        "max": round(float(v.max()), 4),
    }


def response_correlations(pool, judged: dict[str, Any]) -> dict[str, Any]:
    """Spearman rank correlations over the judged responses: the judge's overall score (the
    mean of its aspect scores) against the response's length and its oracle score."""
    frame = pool.frame.filter(pl.col("completion_id").is_in(list(judged))).select(
        pl.col("completion_id"),
        pl.col("response").str.len_chars().alias("length"),
        "oracle_score",
        pl.col("completion_id")
        .map_elements(
            lambda c: float(np.mean([a["score"] for a in judged[c]["aspects"] if not a["failed"]])),
            return_dtype=pl.Float64,
        )
        .alias("judge"),
    )

    def spearman(x: str, y: str) -> float:
        return round(float(np.corrcoef(frame[x].rank(), frame[y].rank())[0, 1]), 3)

    return {
        "responses": frame.height,
        "judge_score_median": round(float(frame["judge"].median()), 3),
        "judge_vs_length": spearman("judge", "length"),
        "judge_vs_oracle": spearman("judge", "oracle_score"),
        "oracle_vs_length": spearman("oracle_score", "length"),
    }


def _share(flags) -> float | None:
    return round(float(np.mean(flags)), 4) if len(flags) else None


def pool_longer_wins(pool) -> dict[str, Any]:
    """The pool's base rate: over every two responses to one prompt with different lengths and
    different oracle scores, how often the better one is the longer one."""
    frame = pool.frame.select(
        "prompt_id",
        "completion_id",
        pl.col("response").str.len_chars().alias("length"),
        "oracle_score",
    )
    both = frame.join(frame, on="prompt_id", suffix="_2").filter(
        (pl.col("completion_id") < pl.col("completion_id_2"))
        & (pl.col("length") != pl.col("length_2"))
        & (pl.col("oracle_score") != pl.col("oracle_score_2"))
    )
    longer_wins = (pl.col("oracle_score") > pl.col("oracle_score_2")) == (
        pl.col("length") > pl.col("length_2")
    )
    rate = both.select(longer_wins.mean()).item()
    return {"pairs": both.height, "better_is_longer": round(rate, 4)}


def judge_quality(rows: pl.DataFrame) -> dict[str, Any]:
    """Raw agreement of the judge with the oracle on every judged pair."""
    from auf_assets.core.agreement import (
        agreement,
        calibration_bins,
        cohens_kappa,
        confidence_summary,
    )
    from auf_assets.core.judging import ASPECTS

    judge, oracle = rows["judge"].to_list(), rows["oracle"].to_list()
    n = rows.height
    labelled = [i for i, j in enumerate(judge) if j != "failed"]
    decided = [i for i, j in enumerate(judge) if j in ("a", "b")]
    conf = rows["confidence"].to_numpy()
    agree = [judge[i] == oracle[i] for i in decided]
    both = agreement([judge[i] for i in labelled], [oracle[i] for i in labelled])
    aspects = {}
    for name in ASPECTS:
        col = rows[f"aspect_{name}"].to_list()
        ok = [i for i, j in enumerate(col) if j != "failed"]
        aspects[name] = {
            "accuracy_all": round(sum(col[i] == oracle[i] for i in range(n)) / n, 4),
            "ties": sum(col[i] == "tie" for i in ok),
            "failed": n - len(ok),
            "kappa": round(cohens_kappa([col[i] for i in ok], [oracle[i] for i in ok]), 4),
        }
    la, lb = rows["len_a"].to_numpy(), rows["len_b"].to_numpy()
    longer = np.where(la > lb, "a", np.where(lb > la, "b", ""))
    unequal = [i for i in decided if longer[i]]
    oracle_longer = [i for i in unequal if oracle[i] == longer[i]]
    oracle_shorter = [i for i in unequal if oracle[i] != longer[i]]
    return {
        "pairs": n,
        "accuracy_all": round(sum(judge[i] == oracle[i] for i in range(n)) / n, 4),
        "accuracy_decided": round(float(np.mean(agree)), 4) if agree else None,
        "decided": len(decided),
        "ties": sum(j == "tie" for j in judge),
        "failed": sum(j == "failed" for j in judge),
        "agreement_labelled": {"n": both.n, "accuracy": round(both.accuracy, 4)},
        "kappa": round(both.kappa, 4),
        "confidence": confidence_summary(conf),
        "calibration": [
            {
                "bin": f"[{b.lower:.1f}, {b.upper:.1f})",
                "count": b.count,
                "mean_confidence": round(b.mean_confidence, 3),
                "observed_agreement": round(b.observed_agreement, 3),
            }
            for b in calibration_bins(conf[decided], agree)
            if b.count
        ],
        "aspects": aspects,
        "length_bias": {
            "pairs": len(unequal),
            "judge_chose_longer": _share([judge[i] == longer[i] for i in unequal]),
            "oracle_chose_longer": _share([oracle[i] == longer[i] for i in unequal]),
            "accuracy_where_oracle_chose_longer": _share(
                [judge[i] == oracle[i] for i in oracle_longer]
            ),
            "accuracy_where_oracle_chose_shorter": _share(
                [judge[i] == oracle[i] for i in oracle_shorter]
            ),
            "pairs_oracle_chose_longer": len(oracle_longer),
        },
    }


def routing_curve(rows: pl.DataFrame, shares, seeds: int, sample_share: float) -> list[dict]:
    """Final label accuracy against the oracle per share sent to people: by the judge's
    confidence, at random, and by the ideal router; spread over seeds."""
    from auf_assets.core.routing import ROUTE_UNSURE, RoutingRule, route_at_random, route_to_people

    correct = (rows["judge"] == rows["oracle"]).to_numpy()
    conf = rows["confidence"].to_numpy()
    n_all = rows.height
    m = max(1, round(sample_share * n_all))
    curve = []
    for share in shares:
        by_conf, by_random, ideal, k = [], [], [], 0
        for seed in range(seeds):
            take = np.random.default_rng([seed, _SAMPLE_STREAM]).choice(n_all, m, replace=False)
            right, c = correct[take], conf[take]
            k = round(share * m)
            routed = route_to_people(c, RoutingRule(budget=k), seed=seed + _ROUTE_STREAM)
            people = routed == ROUTE_UNSURE
            by_conf.append(float(np.mean(right | people)))
            people = route_at_random(m, k, seed=seed + _ROUTE_STREAM)
            by_random.append(float(np.mean(right | people)))
            ideal.append(min(1.0, (right.sum() + k) / m))
        gain = np.array(by_conf) - np.array(by_random)
        curve.append(
            {
                "share": share,
                "people_labels": k,
                "pairs": m,
                "confidence": _spread(by_conf),
                "random": _spread(by_random),
                "gain": _spread(gain),
                "seeds_confidence_ahead": int((gain > 0).sum()),
                "seeds_random_ahead": int((gain < 0).sum()),
                "ideal": _spread(ideal),
            }
        )
    return curve


# -- the report -----------------------------------------------------------------------------------


def markdown(results: dict[str, Any]) -> str:
    sel, q, judge = results["selection"], results["judge_quality"], results["judge"]
    out = [
        f"Judge `{judge['name']}` ({judge['backend']}, {judge['device']}): "
        f"{judge['calls']} calls, {judge['seconds_per_call']:.2f} s a call.",
        f"Pairs: the first {q['pairs']} oracle-untied pairs a `{sel['method']}` run "
        f"(preset `{sel['preset']}`, seed {sel['seed']}, {sel['batch_size']} prompts a round, "
        f"{sel['rounds']} rounds, {sel['selected_pairs']} selected, {sel['oracle_ties']} oracle "
        "ties skipped) selected on the pool.",
        "",
        "| judge vs oracle | value |",
        "|---|---|",
        f"| accuracy, all pairs (tie/failure = wrong) | {q['accuracy_all']:.3f} |",
        f"| accuracy, decided pairs ({q['decided']}) | {_num(q['accuracy_decided'])} |",
        f"| ties / failures | {q['ties']} / {q['failed']} |",
        f"| Cohen's kappa (a/b/tie, {q['agreement_labelled']['n']} pairs) | {_num(q['kappa'])} |",
        f"| confidence p10/p50/p90 | {_quantiles(q['confidence'])} |",
        f"| judge's chosen is the longer one ({q['length_bias']['pairs']} pairs) | "
        f"{_num(q['length_bias']['judge_chose_longer'])} |",
        f"| oracle's chosen is the longer one (same pairs) | "
        f"{_num(q['length_bias']['oracle_chose_longer'])} |",
        f"| pool base rate: the better of two responses is the longer "
        f"({results['pool_length_base_rate']['pairs']} pairs) | "
        f"{_num(results['pool_length_base_rate']['better_is_longer'])} |",
        f"| judge accuracy where the oracle chose the longer "
        f"({q['length_bias']['pairs_oracle_chose_longer']}) / the shorter | "
        f"{_num(q['length_bias']['accuracy_where_oracle_chose_longer'])} / "
        f"{_num(q['length_bias']['accuracy_where_oracle_chose_shorter'])} |",
        f"| Spearman over the {results['response_correlations']['responses']} responses: judge "
        "score vs length / vs oracle score; oracle score vs length | "
        f"{_num(results['response_correlations']['judge_vs_length'])} / "
        f"{_num(results['response_correlations']['judge_vs_oracle'])} / "
        f"{_num(results['response_correlations']['oracle_vs_length'])} |",
        "",
        "| aspect | accuracy (all pairs) | ties | failed | kappa |",
        "|---|---|---|---|---|",
    ]
    for name, a in q["aspects"].items():
        out.append(
            f"| {name} | {a['accuracy_all']:.3f} | {a['ties']} | {a['failed']} | "
            f"{_num(a['kappa'])} |"
        )
    out += [
        "",
        "| confidence bin | verdicts | mean confidence | oracle agreed |",
        "|---|---|---|---|",
    ]
    for b in q["calibration"]:
        out.append(
            f"| {b['bin']} | {b['count']} | {b['mean_confidence']:.3f} | "
            f"{b['observed_agreement']:.3f} |"
        )
    seeds = results["settings"]["seeds"]
    out += [
        "",
        f"Final label accuracy vs the oracle, mean ± sd over {seeds} seeds "
        f"({results['curve'][0]['pairs']} pairs drawn per seed):",
        "",
        "| to people | labels | by confidence | at random | confidence - random "
        "| seeds ahead (conf/random) | ideal router |",
        "|---|---|---|---|---|---|---|",
    ]
    for p in results["curve"]:
        out.append(
            f"| {p['share']:.0%} | {p['people_labels']} | {_ms(p['confidence'])} | "
            f"{_ms(p['random'])} | {p['gain']['mean']:+.3f} ± {p['gain']['std']:.3f} | "
            f"{p['seeds_confidence_ahead']}/{p['seeds_random_ahead']} | {_ms(p['ideal'])} |"
        )
    return "\n".join(out) + "\n"


def _num(v) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"


def _ms(s: dict[str, float]) -> str:
    return f"{s['mean']:.3f} ± {s['std']:.3f}"


def _quantiles(c: dict[str, float]) -> str:
    return "-" if not c.get("n") else f"{c['p10']:.3f} / {c['p50']:.3f} / {c['p90']:.3f}"


# -- main -----------------------------------------------------------------------------------------


def _shares(text: str) -> list[float]:
    values = [float(v) / 100 for v in text.split(",") if v.strip()]
    if not values or any(not 0 <= v <= 1 for v in values):
        raise argparse.ArgumentTypeError(f"shares are percentages 0-100, got {text!r}")
    return values


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pool", required=True, help="simulated-oracle pool (parquet)")
    p.add_argument("--out", default="bench-out/judge_routing", help="results and judge cache")
    p.add_argument("--pairs", type=int, default=256, help="selected pairs to judge")
    p.add_argument("--rounds", type=int, default=0, help="simulated rounds (0: all)")
    p.add_argument("--sim-seed", type=int, default=0, help="the simulated run's seed")
    p.add_argument("--seeds", type=int, default=20, help="seeds of the routing comparison")
    p.add_argument("--sample-share", type=float, default=0.75, help="judged pairs each seed draws")
    p.add_argument(
        "--shares",
        type=_shares,
        default=list(DEFAULT_SHARES),
        help="percent of pairs sent to people, comma separated (default 0,5,10,20,30,50,100)",
    )
    p.add_argument("--chunk", type=int, default=16, help="responses per judge call")
    p.add_argument(
        "--judge-minutes",
        type=float,
        default=0.0,
        help="stop judging after this many minutes and analyse the whole pairs judged so far "
        "(0: no limit); the cache keeps them for the next run",
    )
    args = p.parse_args(argv)
    if args.pairs < 2 or args.seeds < 1 or not 0 < args.sample_share <= 1 or args.chunk < 1:
        p.error("--pairs >= 2, --seeds >= 1, --chunk >= 1 and 0 < --sample-share <= 1")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    from auf_assets.core.simulation import load_pool
    from auf_assets.round.judgements import JudgementsConfig
    from resources.serving import judge_from_env

    judge = judge_from_env()
    judge.check()  # a bad AUF_JUDGE_* value stops here, before any work
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    pool = load_pool(args.pool)

    pairs, selection = selected_pairs(pool, args)
    pairs = pairs.filter(~pl.col("tie")).head(args.pairs)
    if pairs.height < args.pairs:
        log(f"only {pairs.height} untied pairs were selected (asked for {args.pairs})")
    rounds_used = sorted(set(pairs["round"].to_list()))
    log(
        f"{selection['selected_pairs']} pairs selected in {selection['rounds']} rounds "
        f"({selection['oracle_ties']} oracle ties); judging {pairs.height} from rounds "
        f"{rounds_used[0]}-{rounds_used[-1]}"
    )

    # Pair by pair (chosen, rejected, next pair, ...), so whatever the judge finished before its
    # time ran out is a run of whole pairs in selection order.
    items = pl.DataFrame(
        {
            "completion_id": _interleave(
                pairs["chosen_completion_id"], pairs["rejected_completion_id"]
            ),
            "prompt": _interleave(pairs["prompt"], pairs["prompt"]),
            "response": _interleave(pairs["chosen_text"], pairs["rejected_text"]),
        }
    ).unique("completion_id", maintain_order=True)
    started = time.perf_counter()
    deadline = started + 60 * args.judge_minutes if args.judge_minutes else math.inf
    judged, judged_now = judge_responses(judge, items, out / CACHE_FILE, args.chunk, deadline)
    judge_wall = time.perf_counter() - started
    whole = [
        c in judged and r in judged
        for c, r in zip(pairs["chosen_completion_id"], pairs["rejected_completion_id"], strict=True)
    ]
    complete = whole.index(False) if False in whole else len(whole)
    if complete < pairs.height:
        log(f"the judge's time ran out: analysing the first {complete} of {pairs.height} pairs")
        pairs = pairs.head(complete)
        rounds_used = sorted(set(pairs["round"].to_list()))
    if complete < 2:
        raise SystemExit("fewer than 2 pairs judged: nothing to analyse")
    judged = {
        c: judged[c]
        for c in _interleave(pairs["chosen_completion_id"], pairs["rejected_completion_id"])
    }
    judge_seconds = sum(e["seconds"] for e in judged.values())
    calls = 4 * len(judged)

    rows = judged_pairs(pairs, judged, JudgementsConfig().tie_margin)
    results = {
        "settings": {
            "pool": str(args.pool),
            "pairs": args.pairs,
            "judge_minutes": args.judge_minutes,
            "seeds": args.seeds,
            "sample_share": args.sample_share,
            "shares": args.shares,
            "tie_margin": JudgementsConfig().tie_margin,
        },
        "selection": {**selection, "judged_rounds": [rounds_used[0], rounds_used[-1]]},
        "judge": {
            "name": judge.name,
            "backend": judge.backend,
            "device": judge.device,
            "responses": len(judged),
            "calls": calls,
            "seconds_judging": round(judge_seconds, 1),
            "seconds_per_call": round(judge_seconds / calls, 3),
            "seconds_this_run": round(judge_wall, 1),
            "load_average_at_end": [round(v, 2) for v in os.getloadavg()],
            "calls_this_run": 4 * judged_now,
        },
        "judge_quality": judge_quality(rows),
        "pool_length_base_rate": pool_longer_wins(pool),
        "response_correlations": response_correlations(pool, judged),
        "curve": routing_curve(rows, args.shares, args.seeds, args.sample_share),
    }
    (out / "results.json").write_text(json.dumps(results, indent=1))
    report = markdown(results)
    (out / "results.md").write_text(report)
    print(report)
    log(f"wrote {out / 'results.json'} and {out / 'results.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
