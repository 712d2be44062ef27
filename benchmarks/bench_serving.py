"""Generation throughput of a serving backend, as the pipeline's own client sees it.

Tokens per second at several batch sizes (in-process backends) or concurrency levels (a server):

    # a running OpenAI-compatible server (vllm serve, SGLang, TGI, ...):
    python benchmarks/bench_serving.py --backend openai --base-url http://127.0.0.1:8000/v1 \\
        --model smol --batches 1 8 64 --out bench-out/serving.json
    # vLLM's offline engine, or transformers, in this process:
    python benchmarks/bench_serving.py --backend vllm --model /path/to/checkpoint --batches 1 8 64

Each level runs `--requests` requests (at least the level itself) of `--max-tokens` new tokens
on distinct prompts, after one warm-up request; the table reports completion tokens per second
of wall time, requests per second and the mean completion length.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

PROMPTS = [
    "Explain how a refrigerator keeps food cold.",
    "Write a short story about a lighthouse keeper.",
    "What are the pros and cons of remote work?",
    "Describe the water cycle to a ten-year-old.",
    "Give three tips for learning a new language.",
    "Why is the sky blue?",
    "Summarise the plot of a heist film you invent.",
    "How do vaccines train the immune system?",
]


def conversations(n: int) -> list[list[dict]]:
    return [
        [{"role": "user", "content": f"{PROMPTS[i % len(PROMPTS)]} (variant {i})"}]
        for i in range(n)
    ]


def make_lm(args):
    from resources.engine import ServerSettings, chat_endpoint
    from resources.lm_backends import language_model

    endpoint = None
    if args.backend == "openai":
        settings = ServerSettings(base_url=args.base_url, max_concurrency=max(args.batches))
        endpoint = chat_endpoint(settings)
    return language_model(
        args.backend,
        args.model,
        device=args.device,
        dtype=args.dtype,
        cache_dir=args.cache_dir,
        gpu_memory_utilization=args.gpu_memory_utilization,
        endpoint=endpoint,
    )


def run_level(lm, args, level: int) -> dict:
    from resources.openai_api import ChatEndpoint

    n = max(args.requests, level)
    if isinstance(getattr(lm, "endpoint", None), ChatEndpoint):
        lm.endpoint.max_concurrency = level  # requests in flight = the level
    convs = conversations(n)
    started = time.perf_counter()
    outs = lm.generate(
        convs,
        max_new_tokens=args.max_tokens,
        temperature=args.temperature,
        top_p=1.0,
        seed=0,
        batch_size=level,
    )
    wall = time.perf_counter() - started
    tokens = sum(o.completion_tokens for o in outs)
    return {
        "level": level,
        "requests": n,
        "completion_tokens": tokens,
        "wall_seconds": round(wall, 3),
        "tokens_per_second": round(tokens / wall, 1),
        "requests_per_second": round(n / wall, 2),
        "mean_completion_tokens": round(tokens / n, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", choices=["transformers", "vllm", "openai"], required=True)
    parser.add_argument("--model", required=True, help="model source, or the served model name")
    parser.add_argument("--base-url", default="", help="openai backend: http://host:port/v1")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 64])
    parser.add_argument("--requests", type=int, default=16, help="requests per level (at least)")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--temperature", type=float, default=0.0)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--gpu-memory-utilization", type=float, default=0.85)
    parser.add_argument("--cache-dir", default=None)
    parser.add_argument("--out", default="", help="write the results as JSON here")
    args = parser.parse_args(argv)

    started = time.perf_counter()
    lm = make_lm(args)
    setup = time.perf_counter() - started
    lm.generate(conversations(1), max_new_tokens=4, temperature=0.0, top_p=1.0, seed=0)
    rows = [run_level(lm, args, level) for level in args.batches]
    print(
        f"{args.backend} {args.model}: set-up {setup:.1f} s, {args.max_tokens} new tokens/request"
    )
    print(f"{'level':>6} {'requests':>8} {'tokens':>8} {'wall s':>8} {'tok/s':>8} {'req/s':>7}")
    for r in rows:
        print(
            f"{r['level']:>6} {r['requests']:>8} {r['completion_tokens']:>8} "
            f"{r['wall_seconds']:>8.2f} {r['tokens_per_second']:>8.1f} "
            f"{r['requests_per_second']:>7.2f}"
        )
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "backend": args.backend,
            "model": args.model,
            "setup_seconds": round(setup, 1),
            "max_tokens": args.max_tokens,
            "levels": rows,
        }
        Path(args.out).write_text(json.dumps(payload, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
