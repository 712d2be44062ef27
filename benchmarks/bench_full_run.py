"""A full active-learning run at the reference's shape, features streamed from disk.

UltraFeedback's size is 951 rounds of 64 prompts x 30 responses. With a 2560-dim backbone the
features are 951 * 1920 * 2560 fp16 values (9.3 GB): they live in one .npy file on disk and each
round reads only its own 1920 rows (a memory map), so resident memory stays small. Each round
runs the real loop: score with the ensemble, select one pair per prompt (`select_pairs`), reveal
the synthetic oracle for the pair, add it to the FIFO replay buffer and train.

    .venv/bin/python benchmarks/bench_full_run.py --features /tmp/auf-full-run.npy
    .venv/bin/python benchmarks/bench_full_run.py --rounds 20 --features /tmp/small.npy  # quick

Prints the wall time split (I/O, scoring, selection, training), the peak resident memory and
the held-out accuracy of the final model, and writes them as JSON with --json.
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

import numpy as np
import torch

from auf_assets.core.acquisition import select_pairs
from auf_assets.core.ensemble import EnsembleConfig, ReplayBuffer, RewardEnsemble


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux reports KiB


def write_features(path: Path, rounds: int, rows_per_round: int, dim: int, seed: int) -> None:
    """Synthetic features, one round at a time, straight into an fp16 .npy memory map."""
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float16,
                                    shape=(rounds * rows_per_round, dim))
    rng = np.random.default_rng(seed)
    for r in range(rounds):
        block = rng.standard_normal((rows_per_round, dim), dtype=np.float32)
        out[r * rows_per_round:(r + 1) * rows_per_round] = block
    out.flush()
    del out


def oracle_scores(features: np.ndarray, direction: np.ndarray, rng: np.random.Generator):
    """A hidden linear reward with noise: what the judge would say."""
    return features @ direction + 0.5 * rng.standard_normal(len(features)).astype(np.float32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--features", default="/tmp/auf-full-run.npy",
                        help="fp16 .npy feature file (created on first use)")
    parser.add_argument("--rounds", type=int, default=951)
    parser.add_argument("--prompts", type=int, default=64, help="prompts per round")
    parser.add_argument("--responses", type=int, default=30, help="responses per prompt")
    parser.add_argument("--dim", type=int, default=2560)
    parser.add_argument("--heads", type=int, default=20)
    parser.add_argument("--method", default="deltaucb")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default="")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    rows = args.prompts * args.responses
    path = Path(args.features)
    expected = (args.rounds * rows, args.dim)
    if not path.exists() or np.load(path, mmap_mode="r").shape != expected:
        started = time.perf_counter()
        write_features(path, args.rounds, rows, args.dim, args.seed)
        print(f"wrote {path} ({path.stat().st_size / 2**30:.1f} GiB) in "
              f"{time.perf_counter() - started:.0f}s", flush=True)
    features = np.load(path, mmap_mode="r")

    rng = np.random.default_rng(args.seed + 1)
    direction = (rng.standard_normal(args.dim) / np.sqrt(args.dim)).astype(np.float32)
    model = RewardEnsemble(args.dim, EnsembleConfig(n_heads=args.heads, seed=args.seed))
    buffer = ReplayBuffer(model.config.replay_capacity, args.dim, dtype=np.float32)
    timings = {"io": 0.0, "scoring": 0.0, "selection": 0.0, "training": 0.0}
    per_round = []
    run_started = time.perf_counter()
    for r in range(args.rounds):
        round_started = time.perf_counter()
        t = time.perf_counter()
        x = np.asarray(features[r * rows:(r + 1) * rows], dtype=np.float32)
        timings["io"] += time.perf_counter() - t

        t = time.perf_counter()
        mu, sigma = model.predict(x)
        timings["scoring"] += time.perf_counter() - t

        t = time.perf_counter()
        picks = select_pairs(args.method, mu.reshape(args.prompts, args.responses),
                             sigma.reshape(args.prompts, args.responses), seed=args.seed + r)
        flat = picks + (np.arange(args.prompts) * args.responses)[:, None]
        first, second = x[flat[:, 0]], x[flat[:, 1]]
        score = oracle_scores(np.concatenate([first, second]), direction, rng)
        first_wins = (score[: args.prompts] >= score[args.prompts:])[:, None]
        buffer.add(np.where(first_wins, first, second), np.where(first_wins, second, first))
        timings["selection"] += time.perf_counter() - t

        t = time.perf_counter()
        chosen, rejected = buffer.arrays()
        model.train_round(chosen, rejected, n_done=(r + 1) * args.prompts)
        timings["training"] += time.perf_counter() - t
        per_round.append(time.perf_counter() - round_started)
        if (r + 1) % 50 == 0 or r + 1 == args.rounds:
            print(f"round {r + 1}/{args.rounds}: {per_round[-1]:.2f}s this round, "
                  f"{time.perf_counter() - run_started:.0f}s total, peak RSS "
                  f"{peak_rss_mb():.0f} MB", flush=True)
    total = time.perf_counter() - run_started

    # Held-out accuracy of the final model on fresh synthetic responses.
    test = np.random.default_rng(args.seed + 2).standard_normal((4000, args.dim)).astype(np.float32)
    truth = test @ direction
    mu, _ = model.predict(test)
    i, j = np.random.default_rng(args.seed + 3).integers(0, len(test), size=(2, 20000))
    accuracy = float(np.mean(np.sign(mu[i] - mu[j]) == np.sign(truth[i] - truth[j])))

    result = {
        "rounds": args.rounds, "prompts": args.prompts, "responses": args.responses,
        "dim": args.dim, "heads": args.heads, "method": args.method,
        "threads": torch.get_num_threads(), "total_s": round(total, 1),
        "median_round_s": round(float(np.median(per_round)), 3),
        "split_s": {k: round(v, 1) for k, v in timings.items()},
        "peak_rss_mb": round(peak_rss_mb()), "heldout_accuracy": round(accuracy, 3),
    }
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
