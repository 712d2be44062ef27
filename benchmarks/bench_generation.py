"""Generation throughput of the transformers engine: batch 1 vs 8, bf16 autocast vs fp32.

Runs the packaged SmolLM2-135M-Instruct through `resources.transformers_lm.TransformersLM` (the code
path of the `completions` asset) on demo prompts and prints a markdown table of generated
tokens per second. Usage:

    .venv/bin/python benchmarks/bench_generation.py [--prompts 8] [--max-new-tokens 64]
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from auf_assets.core.prompts import demo_prompts
from resources import home
from resources.transformers_lm import TransformersLM


def measure(lm: TransformersLM, convs, batch_size: int, max_new_tokens: int, repeats: int):
    best = None
    for rep in range(repeats):
        started = time.perf_counter()
        outs = lm.generate(
            convs,
            max_new_tokens=max_new_tokens,
            temperature=1.0,
            top_p=1.0,
            seed=rep,
            batch_size=batch_size,
        )
        seconds = time.perf_counter() - started
        tokens = sum(o.completion_tokens for o in outs)
        rate = tokens / seconds
        if best is None or rate > best["tokens_per_s"]:
            best = {"tokens": tokens, "seconds": round(seconds, 2), "tokens_per_s": round(rate, 1)}
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2, help="best of N runs")
    parser.add_argument("--json", default="")
    args = parser.parse_args()

    prompts = demo_prompts().prompts["prompt"].to_list()[: args.prompts]
    convs = [[{"role": "user", "content": p}] for p in prompts]
    rows = []
    for dtype in ("fp32", "bf16"):
        lm = TransformersLM(
            "smollm2-135m-instruct", device="cpu", dtype=dtype, cache_dir=str(home.models_dir())
        )
        lm.generate(convs[:1], max_new_tokens=4, temperature=1.0, top_p=1.0, seed=0)  # warm-up
        for batch in (1, 8):
            result = measure(lm, convs, batch, args.max_new_tokens, args.repeats)
            rows.append({"dtype": dtype, "batch": batch, **result})
            print(rows[-1], flush=True)
    base = {r["batch"]: r["tokens_per_s"] for r in rows if r["dtype"] == "fp32"}
    print(
        f"\n{args.prompts} prompts, up to {args.max_new_tokens} new tokens, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads\n"
    )
    print("| dtype | batch | generated tokens | seconds | tokens/s | vs fp32 |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        ratio = r["tokens_per_s"] / base[r["batch"]]
        print(
            f"| {r['dtype']} | {r['batch']} | {r['tokens']} | {r['seconds']} | "
            f"{r['tokens_per_s']} | {ratio:.2f}x |"
        )
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=2)


if __name__ == "__main__":
    main()
