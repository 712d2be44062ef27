"""The pairwise judge's position and length bias on a real pool, against the pool's oracle.

Samples `--pairs` pairs from a pool file (prompt_id, prompt, completion_id, response,
oracle_score; e.g. the dev pool of the shared workspace): per sampled prompt, two responses with
different oracle scores, seeded. The judge (`resources.judge.RubricJudge.compare`, the packaged
SmolLM2 by default, the same model and settings as `pairwise_judge`) answers each pair in both
orders. Reported, each against the oracle's preference:

- accuracy of one order alone (response a shown first) and of both orders averaged;
- position bias: the share of pairs whose winner flipped with the order, and how often one
  answer picked the first position (0.5 without a position preference);
- length bias: how often the judge's chosen response is the longer one, against how often the
  oracle's is on the same pairs (the pool's base rate);
- calibration: the averaged verdict's confidence in bins against its accuracy.

    .venv/bin/python benchmarks/bench_judge_bias.py --pool ../shared/data/sim_pool_dev.parquet \\
        --pairs 150 --out bench-out/judge_bias

Writes `judge_bias.json` and `judge_bias.md` under `--out`; the judge's answers are kept in
`answers.parquet` there, so a second run with the same sample reads them instead of asking.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from auf_assets.core.agreement import calibration_bins  # noqa: E402
from auf_assets.core.pairwise import position_bias, probability_a_better  # noqa: E402


def sample_pairs(pool: pl.DataFrame, n: int, seed: int) -> pl.DataFrame:
    """Per prompt (a seeded sample of `n` prompts with two different oracle scores): two
    responses drawn at random among those of different scores; a/b in random order."""
    rng = np.random.default_rng(seed)
    rows = []
    prompts = pool["prompt_id"].unique().sort().to_list()
    for prompt_id in rng.permutation(prompts):
        group = pool.filter(pl.col("prompt_id") == prompt_id)
        if group["oracle_score"].n_unique() < 2:
            continue
        for _ in range(20):
            i, j = rng.choice(group.height, size=2, replace=False)
            if group["oracle_score"][int(i)] != group["oracle_score"][int(j)]:
                break
        a, b = group.row(int(i), named=True), group.row(int(j), named=True)
        rows.append(
            {
                "prompt_id": prompt_id,
                "prompt": a["prompt"],
                "completion_a": a["completion_id"],
                "completion_b": b["completion_id"],
                "response_a": a["response"],
                "response_b": b["response"],
                "oracle_a": a["oracle_score"],
                "oracle_b": b["oracle_score"],
            }
        )
        if len(rows) == n:
            break
    return pl.DataFrame(rows)


def ask_judge(pairs: pl.DataFrame, batch_size: int) -> tuple[pl.DataFrame, float]:
    from resources.judge import RubricJudge

    judge = RubricJudge(device="cpu", batch_size=batch_size)
    n = pairs.height
    done = {"calls": 0}

    def progress(k: int, total: int) -> None:
        if k == total or k - done["calls"] >= 20:
            done["calls"] = k
            print(f"  {k}/{total} judge calls", flush=True)

    started = time.perf_counter()
    choices = judge.compare(
        pairs["prompt"].to_list() * 2,
        pairs["response_a"].to_list() + pairs["response_b"].to_list(),
        pairs["response_b"].to_list() + pairs["response_a"].to_list(),
        progress=progress,
    )
    seconds = time.perf_counter() - started
    answers = pairs.select("prompt_id").with_columns(
        p_first_a_shown=pl.Series([c.p_first for c in choices[:n]], dtype=pl.Float64),
        p_first_b_shown=pl.Series([c.p_first for c in choices[n:]], dtype=pl.Float64),
        mass_a_shown=pl.Series([c.letter_mass for c in choices[:n]]),
        mass_b_shown=pl.Series([c.letter_mass for c in choices[n:]]),
        judge=pl.lit(judge.name),
    )
    return answers, seconds


def measure(pairs: pl.DataFrame, answers: pl.DataFrame) -> dict:
    frame = pairs.join(answers, on="prompt_id")
    as_shown = [None if v is None else float(v) for v in frame["p_first_a_shown"]]
    swapped = [None if v is None else float(v) for v in frame["p_first_b_shown"]]
    p_a = np.array([probability_a_better(x, y) for x, y in zip(as_shown, swapped, strict=True)])
    truth_a = (frame["oracle_a"] > frame["oracle_b"]).to_numpy()
    one = np.array([math.nan if x is None else x for x in as_shown])
    longer_a = (
        frame["response_a"].str.len_chars() > frame["response_b"].str.len_chars()
    ).to_numpy()
    same_length = frame["response_a"].str.len_chars() == frame["response_b"].str.len_chars()
    decided = ~np.isnan(p_a) & (p_a != 0.5)
    single = ~np.isnan(one) & (one != 0.5)
    judge_a = p_a > 0.5
    lengths = decided & ~same_length.to_numpy()
    bias = position_bias(as_shown, swapped)
    confidence = np.where(judge_a, p_a, 1.0 - p_a)
    bins = calibration_bins(confidence[decided], (judge_a == truth_a)[decided], n_bins=10)[5:]
    return {
        "pairs": frame.height,
        "judge": answers["judge"][0],
        "decided_both_orders": int(decided.sum()),
        "accuracy_both_orders": float((judge_a == truth_a)[decided].mean()),
        "accuracy_one_order": float(((one > 0.5) == truth_a)[single].mean()),
        "position_flip_rate": bias.flip_rate,
        "first_position_rate": bias.first_position_rate,
        "judge_chose_longer": float((judge_a == longer_a)[lengths].mean()),
        "oracle_chose_longer": float((truth_a == longer_a)[lengths].mean()),
        "pairs_of_different_length": int(lengths.sum()),
        "mean_letter_mass": float(
            np.mean(np.concatenate([frame["mass_a_shown"], frame["mass_b_shown"]]))
        ),
        "calibration": [
            {
                "confidence": f"{b.lower:.1f}-{b.upper:.1f}",
                "verdicts": b.count,
                "accuracy": None if math.isnan(b.observed_agreement) else b.observed_agreement,
            }
            for b in bins
        ],
    }


def markdown(result: dict) -> str:
    lines = [
        f"Judge `{result['judge']}`, {result['pairs']} pairs, "
        f"{result['judge_seconds']:.0f} s for {2 * result['pairs']} calls.",
        "",
        "| measure | value |",
        "|---|---|",
        f"| accuracy vs oracle, one order (a shown first) | {result['accuracy_one_order']:.3f} |",
        f"| accuracy vs oracle, both orders averaged | {result['accuracy_both_orders']:.3f} |",
        f"| winner flipped by swapping the order | {result['position_flip_rate']:.3f} |",
        f"| single answers picking the first position | {result['first_position_rate']:.3f} |",
        f"| judge chose the longer response | {result['judge_chose_longer']:.3f} |",
        f"| oracle chose the longer response (same pairs) | {result['oracle_chose_longer']:.3f} |",
        f"| probability on the letters A/B | {result['mean_letter_mass']:.3f} |",
        "",
        "| confidence | verdicts | accuracy |",
        "|---|---|---|",
    ]
    for b in result["calibration"]:
        acc = "-" if b["accuracy"] is None else f"{b['accuracy']:.3f}"
        lines.append(f"| {b['confidence']} | {b['verdicts']} | {acc} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pool", required=True, help="pool parquet with oracle_score")
    parser.add_argument("--pairs", type=int, default=150)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--out", default="bench-out/judge_bias")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    pool = pl.read_parquet(args.pool)
    pairs = sample_pairs(pool, args.pairs, args.seed)
    cached = out / "answers.parquet"
    if (
        cached.exists()
        and pl.read_parquet(cached)["prompt_id"].to_list() == pairs["prompt_id"].to_list()
    ):
        answers = pl.read_parquet(cached)
        seconds = json.loads((out / "judge_bias.json").read_text())["judge_seconds"]
    else:
        print(f"asking the judge about {pairs.height} pairs in both orders", flush=True)
        answers, seconds = ask_judge(pairs, args.batch_size)
        answers.write_parquet(cached)
    result = {**measure(pairs, answers), "judge_seconds": seconds, "seed": args.seed}
    (out / "judge_bias.json").write_text(json.dumps(result, indent=2))
    (out / "judge_bias.md").write_text(markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
